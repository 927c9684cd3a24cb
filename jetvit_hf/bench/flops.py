"""Analytic forward FLOPs of the transformer layers, to report a measured latency as achieved TFLOP/s.

A multiply-add counts as 2 FLOPs. Per layer of n tokens and width d: 8*n*d^2 for the q, k, v and output projections,
2*n*d*w*(2, or 3 for a gated MLP) for an MLP of width w, and the attention of the layer's type: 4*n^2*d for full
attention, the same within each window (plus the prefix tokens) for window attention, and linear in n for linear
attention (its state, normaliser and depthwise convolution). Embeddings and task heads are not counted.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from ..models.jetvit.configuration_jetvit import JetViTConfig


def backbone_flops(config: JetViTConfig, attention_types: Sequence[str], resolution, batch_size: int = 1) -> float:
    """Forward FLOPs of the transformer layers (projections, MLP, attention; embeddings and heads excluded)."""
    gh, gw = resolution[0] // config.patch_size, resolution[1] // config.patch_size
    patches, prefix, d = gh * gw, config.num_prefix_tokens, config.hidden_size
    n = patches + prefix
    mlp = 2 * n * d * config.intermediate_size * (3 if config.use_gated_mlp else 2)
    proj = 8 * n * d * d
    ws = config.window_size
    windows = math.ceil(gh / ws) * math.ceil(gw / ws)
    attention = {
        "full": 4 * n * n * d,
        "window": 4 * windows * ws * ws * (ws * ws + prefix) * d + 4 * prefix * n * d,
        "linear": 4 * n * d * (config.head_dim + 1) + 2 * patches * d * config.dynamic_conv_kernel_size**2,
    }
    return float(batch_size * sum(proj + mlp + attention[t] for t in attention_types))
