"""Entry points (thin Hydra / argparse mains): prepare, bench, and later train, compare, export."""
