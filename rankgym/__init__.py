"""rankgym: reinforcement learning for search and recommendation ranking on logged sessions.

The subpackages live in the repository's top-level folders (``pyproject.toml`` maps them):

- :mod:`rankgym.logs`: the data layer (canonical logged sessions, validation, adapters, the
  synthetic world); imports nothing else of rankgym.
- :mod:`rankgym.encoders`: text encoders, the embedding store, user-state pooling.
- :mod:`rankgym.envs`: reward (click) models and the replay environments.
- :mod:`rankgym.agents`: scoring networks, SB3 policies, baselines, evaluation, OPE, export.
- :mod:`rankgym.experiments`: the entry points (``rankgym <command>``).

Each layer imports only the layers above it in this list. Every layer may use
:mod:`rankgym.threads`, which sets torch's CPU threads from the machine's load.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rankgym")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0"
