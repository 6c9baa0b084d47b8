"""Environments over logged sessions; ``envs.logs`` holds the data layer."""
