"""Entry points (thin Hydra / argparse mains), one per ``rankgym <command>`` (see ``cli``)."""
