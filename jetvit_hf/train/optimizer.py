"""The optimizer of a run, AdamW with weight decay on matrices only, and its learning-rate schedule: linear warmup over
`warmup_steps`, then cosine decay to 0 at `max_steps`."""

import math

import torch
from torch import nn

from .config import TrainConfig


def build_optimizer(trainable: list[nn.Parameter], config: TrainConfig) -> torch.optim.AdamW:
    decay = [parameter for parameter in trainable if parameter.ndim >= 2]
    no_decay = [parameter for parameter in trainable if parameter.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
    )


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule, stepped once per optimizer step. Do not let Accelerate prepare it: Accelerate steps a prepared
    scheduler once per process, and `max_steps` counts optimizer steps."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config))


def _lr_lambda(config: TrainConfig):
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor
