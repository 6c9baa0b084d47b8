"""A neural click model: attractiveness from query, user and item text features, under a PBM or
a cascade with abandonment (chosen by held-out likelihood).

``attractiveness = sigmoid(MLP([q, u, i, q * i, u * i, p, p * i, q.i, u.i, p.i]) + bias[item])``
where ``q``, ``u``, ``i``, ``p`` are text vectors of the request's query, the user's state, the
item and the user's profile (the last two blocks and ``p.i`` only with ``profile``; the dot
products only with ``match``). Unlike the pair-counting models it generalises to (query, item)
pairs never logged, and it reacts to the user's state and taste.

Text features (``features``): ``lexical`` (default) embeds the log's texts with the
:class:`~rankgym.encoders.hashing.HashingEncoder` (hashed words and character n-grams), whatever
encoder the policy observes; ``encoder`` uses the run's text embeddings
(:class:`rankgym.encoders.encoded_log.EncodedLog`). The simulator is then one fixed object that
policies with different encoders are compared in, and lexical matches (brand names, colours, exact
product words) rank policies closer to the truth than MiniLM's embeddings do (BENCHMARKS.md).
The dataset's item and user feature columns (``use_features``) and how often the log showed each
item (``item_stats``) join the inputs.

User state: the user's history pooled with the :class:`~rankgym.encoders.pooling.UserPooling`
given to :meth:`NeuralClickModel.fit` (the run setup passes the environment's), over the model's
own item vectors, with the clicks of the session's earlier requests appended as the environment
appends them: the model is fitted on the states it is served. The environment passes the current
history; without it the logged request's own history is used.

The parts, one concern each:

- :mod:`.settings`: :class:`NeuralSettings`, every option with its measured default
  (``conf/reward/neural.yaml`` mirrors it);
- :mod:`.tables`: the model's own input vectors and the user states pooled over them;
- :mod:`.network`: one member's MLP, item biases and structure parameters, and the members
  stacked into one serving pass;
- :mod:`.structure`: the likelihood of logged requests under a PBM or a cascade, and the PBM's
  examination fixed from the log;
- :mod:`.calibration`: the level (and the cascade's abandonment) set on held-out sessions;
- :mod:`.fitting`: the loop that fits each member;
- :mod:`.model`: :class:`NeuralClickModel`, which composes them.
"""

from rankgym.envs.click_models.neural.model import NeuralClickModel
from rankgym.envs.click_models.neural.settings import NeuralSettings

__all__ = ["NeuralClickModel", "NeuralSettings"]
