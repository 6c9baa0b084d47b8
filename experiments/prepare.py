"""Write a canonical dataset directory from any dataset source and print its statistics.

Usage::

    rankgym prepare                                  # the synthetic world
    rankgym prepare dataset=obd out=data/obd          # Open Bandit sample
    rankgym prepare dataset=mind dataset.path=MINDsmall_train
    rankgym prepare dataset=table dataset.impressions=log.csv
    rankgym prepare encode=true                       # + BERT embeddings (cached)
    rankgym prepare encode=true encoder=hashing

Bad input ends the run with one readable line on stderr and exit status 2; nothing is written.
"""

from __future__ import annotations

import json
import logging
import time

import hydra
from omegaconf import DictConfig

from rankgym.encoders.encoded_log import encode_log
from rankgym.experiments.sweeps import configure_threads, run_job
from rankgym.logs.atomic import check_replaceable

log = logging.getLogger(__name__)


def prepare(cfg: DictConfig) -> dict:
    """Write ``cfg.dataset`` to ``cfg.out``; with ``encode=true`` also embed its texts.

    Returns the dataset statistics (plus an ``encoding`` entry when encoding).
    """
    configure_threads(cfg)
    log.info("instantiating dataset %s (%s)", cfg.dataset.name, cfg.dataset._target_)
    source = hydra.utils.instantiate(cfg.dataset)
    check_replaceable(cfg.out, "meta.json")  # before any work: never replace a user's files
    if cfg.encode:  # configuration errors surface before anything is written
        log.info("instantiating encoder %s (%s)", cfg.encoder.name, cfg.encoder._target_)
        encoder = hydra.utils.instantiate(cfg.encoder)
        log.info("instantiating embedding store (%s)", cfg.embedding_store._target_)
        store = hydra.utils.instantiate(cfg.embedding_store)
    data = source.write(cfg.out)
    stats = data.stats()
    log.info("wrote %s", cfg.out)
    if cfg.encode:
        start = time.perf_counter()
        encoded = encode_log(data, encoder, store)
        stats["encoding"] = {
            "encoder": encoder.name,
            "fingerprint": encoder.fingerprint,
            "dim": encoded.dim,
            "texts": data.n_items + len(data.query_texts) + data.n_users,
            "newly_encoded": store.last_new,
            "seconds": round(time.perf_counter() - start, 2),
            "store": str(store.directory(encoder)),
        }
    return stats


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    """Hydra entry point of ``rankgym prepare``."""
    stats = run_job(lambda: prepare(cfg))
    if stats is not None:
        print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
