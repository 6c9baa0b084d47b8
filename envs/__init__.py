"""Environments over logged sessions; ``rankgym.logs`` holds the data layer.

Importing ``envs`` registers the Gymnasium ids under ``rankgym/``.
"""

import gymnasium

RANKGYM_ENV_IDS = ("rankgym/SessionReplay-v0",)

if "rankgym/SessionReplay-v0" not in gymnasium.registry:
    gymnasium.register(
        id="rankgym/SessionReplay-v0",
        entry_point="rankgym.envs.session_replay:make_synthetic_env",
    )
