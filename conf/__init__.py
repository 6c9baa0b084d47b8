"""Hydra configs of rankgym (a package so that the installed commands find them anywhere)."""
