"""Entry points (thin Hydra / argparse mains): prepare, train, compare, bench."""
