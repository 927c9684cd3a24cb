"""Tiny random transformers checkpoints of every supported source family, saved with `save_pretrained`.

Weights are perturbed away from their init (LayerScale, norms, biases, large q/k) so that attention is far from
uniform and every parameter influences the output: an equivalence test against such a model can fail.
"""

import torch
from transformers import (
    DepthAnythingConfig,
    DepthAnythingForDepthEstimation,
    Dinov2Backbone,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersBackbone,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    DINOv3ViTBackbone,
    DINOv3ViTConfig,
    DINOv3ViTModel,
)

WIDTH, HEADS, LAYERS = 32, 4, 4


def perturb_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith(("q_proj.weight", "k_proj.weight", "query.weight", "key.weight")):
                param.copy_(noise * 0.35)  # sharp attention
            elif "lambda1" in name or (param.ndim == 1 and "norm" in name and name.endswith("weight")):
                param.copy_(1.0 + 0.3 * noise)
            else:
                param.add_(0.1 * noise)
        if hasattr(model, "head") and hasattr(model.head, "conv3"):  # keep the relative head's final ReLU mostly open
            model.head.conv3.bias.fill_(1.0)
    return model.eval()


def dinov2_config(**overrides) -> Dinov2Config:
    kwargs = dict(
        hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=HEADS, image_size=56, patch_size=14,
        layerscale_value=0.5,
    )
    kwargs.update(overrides)
    return Dinov2Config(**kwargs)


def dinov3_config(**overrides) -> DINOv3ViTConfig:
    kwargs = dict(
        hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        image_size=64, patch_size=16, num_register_tokens=4, layerscale_value=0.5,
    )
    kwargs.update(overrides)
    return DINOv3ViTConfig(**kwargs)


def depth_anything_config(out_indices, backbone_overrides=None, **overrides) -> DepthAnythingConfig:
    backbone = dict(
        model_type="dinov2", hidden_size=WIDTH, num_hidden_layers=6, num_attention_heads=HEADS, image_size=56,
        patch_size=14, out_indices=out_indices, reshape_hidden_states=False, layerscale_value=0.5,
    )
    backbone.update(backbone_overrides or {})
    kwargs = dict(
        backbone_config=backbone, reassemble_hidden_size=WIDTH, neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16, head_hidden_size=8,
    )
    kwargs.update(overrides)
    return DepthAnythingConfig(**kwargs)


# name -> (model class, config factory, the pixel size it was "trained" at)
SOURCES = {
    "dinov2": (Dinov2Model, lambda: dinov2_config(), 56),
    "dinov2_swiglu": (Dinov2Model, lambda: dinov2_config(use_swiglu_ffn=True), 56),
    "dinov2_backbone": (Dinov2Backbone, lambda: dinov2_config(out_indices=[1, 2, 4]), 56),
    "dinov2_backbone_unreshaped": (
        Dinov2Backbone, lambda: dinov2_config(out_indices=[2, 3], reshape_hidden_states=False), 56,
    ),
    "dinov2_registers": (Dinov2WithRegistersModel, lambda: Dinov2WithRegistersConfig(**_registers_kwargs()), 56),
    "dinov2_registers_backbone": (
        Dinov2WithRegistersBackbone, lambda: Dinov2WithRegistersConfig(**_registers_kwargs(out_indices=[3, 4])), 56,
    ),
    "dinov3": (DINOv3ViTModel, lambda: dinov3_config(), 64),
    "dinov3_gated": (DINOv3ViTModel, lambda: dinov3_config(use_gated_mlp=True, hidden_act="silu"), 64),
    "dinov3_7b_biases": (
        DINOv3ViTModel,
        lambda: dinov3_config(use_gated_mlp=True, hidden_act="silu", query_bias=False, value_bias=False),
        64,
    ),
    "dinov3_backbone": (
        DINOv3ViTBackbone, lambda: dinov3_config(out_indices=[1, 3, 4], return_class_token=True), 64,
    ),
    # V1 taps the last four layers, V2 spreads its taps over the depth (e.g. ViT-S [3, 6, 9, 12])
    "depth_anything_v1": (DepthAnythingForDepthEstimation, lambda: depth_anything_config([3, 4, 5, 6]), 56),
    "depth_anything_v2": (DepthAnythingForDepthEstimation, lambda: depth_anything_config([1, 3, 4, 6]), 56),
    "depth_anything_v2_metric": (
        DepthAnythingForDepthEstimation,
        lambda: depth_anything_config([1, 3, 4, 6], depth_estimation_type="metric", max_depth=20),
        56,
    ),
    "depth_anything_swiglu": (
        DepthAnythingForDepthEstimation,
        lambda: depth_anything_config([1, 3, 4, 6], backbone_overrides={"use_swiglu_ffn": True}),
        56,
    ),
}


def _registers_kwargs(**overrides) -> dict:
    kwargs = dict(
        hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=HEADS, image_size=56, patch_size=14,
        num_register_tokens=3, layerscale_value=0.5,
    )
    kwargs.update(overrides)
    return kwargs


def build_source(name: str, directory, seed: int = 0):
    """Save the named tiny source checkpoint into `directory`; return the (perturbed, eval-mode) source model."""
    model_class, make_config, _ = SOURCES[name]
    torch.manual_seed(seed)
    model = perturb_(model_class(make_config()), seed=seed)
    model.save_pretrained(directory)
    return model
