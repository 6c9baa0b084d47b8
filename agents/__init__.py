"""Ranking agents: the candidate scorer, masked SB3 policies, baselines, training, evaluation."""
