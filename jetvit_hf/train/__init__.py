"""Supernet distillation and fine-tuning of JetViT students against their teacher (`training/distill.py`,
`training/finetune.py`): build a `TrainConfig`, then `train` it, or run `main` with command-line flags."""

from .command import main
from .config import TrainConfig
from .loop import reset_accelerate_state, train

__all__ = ["TrainConfig", "main", "reset_accelerate_state", "train"]
