"""Reward (click) models: attractiveness x position structure; see ``envs.click_models.base``."""

from envs.click_models.base import ClickModel, log_fingerprint
from envs.click_models.fitted import CascadeClickModel, DCMClickModel, PBMClickModel
from envs.click_models.neural import NeuralClickModel
from envs.click_models.simple import LoggedClickModel, TruthClickModel

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
