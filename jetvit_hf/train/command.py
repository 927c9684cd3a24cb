"""The command line of `training/distill.py` and `training/finetune.py`: settings from YAML and flags, then `train`."""

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .checkpoints import TrainingInterrupted
from .config import config_from_args, usage
from .loop import train


def main(argv: Sequence[str] | None = None, mode: str = "distill", default_config=None) -> Path:
    """Command-line entry point of `training/distill.py` and `training/finetune.py`. SIGINT or SIGTERM stops after a
    checkpoint of the current optimizer step, with exit status 130."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        print(usage(mode, default_config))
        raise SystemExit(0)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("jetvit_hf").setLevel(logging.INFO)
    try:
        config = config_from_args(argv, mode, default_config)
    except ValueError as error:
        raise SystemExit(f"{mode}.py: error: {error}") from None
    try:
        return train(config)
    except TrainingInterrupted as stopped:
        print(f"{mode}.py: {stopped}; rerun with --resume true to continue", file=sys.stderr)
        raise SystemExit(130) from None
