"""Reward (click) models: attractiveness x position structure; see
``rankgym.envs.click_models.base``."""

from rankgym.envs.click_models.base import ClickModel, log_fingerprint
from rankgym.envs.click_models.fitted import CascadeClickModel, DCMClickModel, PBMClickModel
from rankgym.envs.click_models.neural import NeuralClickModel
from rankgym.envs.click_models.simple import LoggedClickModel, TruthClickModel

__all__ = [
    "CascadeClickModel",
    "ClickModel",
    "DCMClickModel",
    "LoggedClickModel",
    "NeuralClickModel",
    "PBMClickModel",
    "TruthClickModel",
    "log_fingerprint",
]
