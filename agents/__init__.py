"""Ranking agents: scoring networks, SB3 policies, baselines, evaluation and export."""
