"""Architecture presets: the exact transformers source config of each real DINOv3, DINOv2 and Depth Anything V2
checkpoint (built with random weights, so a benchmark needs no download), plus tiny ones for tests."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Preset:
    """A named source architecture: transformers config class and arguments, plus JetViT config overrides."""

    name: str
    architecture: str  # transformers model class, e.g. "DINOv3ViTModel"
    config_class: str  # transformers config class, e.g. "DINOv3ViTConfig"
    config_kwargs: dict
    description: str
    jetvit_overrides: dict = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    def source_config(self):
        import transformers

        kwargs = copy.deepcopy(self.config_kwargs)
        return getattr(transformers, self.config_class)(architectures=[self.architecture], **kwargs)


def _dinov3(name, hidden, inter, layers, heads, gated=False, aliases=(), **extra) -> Preset:
    kwargs = dict(
        hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
        patch_size=16, image_size=224, num_register_tokens=4, layer_norm_eps=1e-5, rope_theta=100.0,
        use_gated_mlp=gated, hidden_act="silu" if gated else "gelu", key_bias=False, **extra,
    )
    mlp = "gated SiLU MLP" if gated else "GELU MLP"
    desc = f"DINOv3 ViT-{name}/16: {hidden} wide, {layers} layers, {heads} heads, {mlp} {inter}, 4 registers"
    return Preset(f"dinov3-{name.lower()}", "DINOv3ViTModel", "DINOv3ViTConfig", kwargs, desc, aliases=aliases)


def _dinov2_kwargs(hidden, layers, heads, swiglu=False, **extra) -> dict:
    return dict(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, mlp_ratio=4, patch_size=14,
        image_size=518, layer_norm_eps=1e-6, layerscale_value=1.0, qkv_bias=True, use_swiglu_ffn=swiglu, **extra,
    )


def _dinov2(name, hidden, layers, heads, swiglu=False, aliases=()) -> Preset:
    desc = f"DINOv2 ViT-{name}/14: {hidden} wide, {layers} layers, {heads} heads{', SwiGLU' if swiglu else ''}"
    return Preset(
        f"dinov2-{name.lower()}", "Dinov2Model", "Dinov2Config", _dinov2_kwargs(hidden, layers, heads, swiglu), desc,
        aliases=aliases,
    )


def _depth_anything_v2(name, hidden, layers, heads, out_indices, fusion, neck, swiglu=False, aliases=()) -> Preset:
    backbone = dict(
        model_type="dinov2", **_dinov2_kwargs(hidden, layers, heads, swiglu), out_indices=list(out_indices),
        reshape_hidden_states=False, apply_layernorm=True,
    )
    kwargs = dict(
        backbone_config=backbone, patch_size=14, reassemble_hidden_size=hidden, reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=list(neck), fusion_hidden_size=fusion, head_hidden_size=32, head_in_index=-1,
        depth_estimation_type="relative",
    )
    desc = (
        f"Depth Anything V2-{name}: DINOv2 ViT-{name}/14 backbone (taps {list(out_indices)}) + DPT "
        f"(neck {list(neck)}, fusion {fusion})"
    )
    return Preset(
        f"depth-anything-v2-{name.lower()}", "DepthAnythingForDepthEstimation", "DepthAnythingConfig", kwargs, desc,
        aliases=aliases,
    )


def _tiny_presets() -> list[Preset]:
    tiny_window = {"window_size": 2}
    return [
        Preset(
            "tiny", "DINOv3ViTModel", "DINOv3ViTConfig",
            dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, patch_size=16,
                 image_size=64, num_register_tokens=4),
            "tiny DINOv3-like ViT for tests (64 wide, 4 layers, RoPE, 4 registers)", tiny_window,
        ),
        Preset(
            "tiny-dinov2", "Dinov2Model", "Dinov2Config",
            dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, patch_size=14, image_size=56),
            "tiny DINOv2-like ViT for tests (64 wide, 4 layers, learned positions)", tiny_window,
        ),
        Preset(
            "tiny-depth", "DepthAnythingForDepthEstimation", "DepthAnythingConfig",
            dict(backbone_config=dict(model_type="dinov2", hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                                      patch_size=14, image_size=56, out_indices=[1, 2, 3, 4],
                                      reshape_hidden_states=False),
                 patch_size=14, reassemble_hidden_size=64, neck_hidden_sizes=[16, 32, 64, 64], fusion_hidden_size=16,
                 head_hidden_size=8),
            "tiny Depth Anything-like model for tests", tiny_window,
        ),
    ]


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        _dinov3("S", 384, 1536, 12, 6, aliases=("dinov3-vits16",)),
        _dinov3("S+", 384, 1536, 12, 6, gated=True, aliases=("dinov3-vits16plus",)),
        _dinov3("B", 768, 3072, 12, 12, aliases=("dinov3-vitb16",)),
        _dinov3("L", 1024, 4096, 24, 16, aliases=("dinov3-vitl16",)),
        _dinov3("H+", 1280, 5120, 32, 20, gated=True, aliases=("dinov3-vith16plus",)),
        _dinov3("7B", 4096, 8192, 40, 32, gated=True, aliases=("dinov3-vit7b16",), query_bias=False,
                value_bias=False),
        _dinov2("S", 384, 12, 6, aliases=("dinov2-small",)),
        _dinov2("B", 768, 12, 12, aliases=("dinov2-base",)),
        _dinov2("L", 1024, 24, 16, aliases=("dinov2-large",)),
        _dinov2("g", 1536, 40, 24, swiglu=True, aliases=("dinov2-giant",)),
        _depth_anything_v2("S", 384, 12, 6, [3, 6, 9, 12], 64, [48, 96, 192, 384],
                           aliases=("depth-anything-v2-small",)),
        _depth_anything_v2("B", 768, 12, 12, [3, 6, 9, 12], 128, [96, 192, 384, 768],
                           aliases=("depth-anything-v2-base",)),
        _depth_anything_v2("L", 1024, 24, 16, [5, 12, 18, 24], 256, [256, 512, 1024, 1024],
                           aliases=("depth-anything-v2-large",)),
        _depth_anything_v2("G", 1536, 40, 24, [10, 20, 30, 40], 384, [1536] * 4, swiglu=True,
                           aliases=("depth-anything-v2-giant",)),
        *_tiny_presets(),
    ]
}
PRESET_ALIASES = {alias: p.name for p in PRESETS.values() for alias in p.aliases}


def get_preset(name: str) -> Preset:
    key = name.strip().lower()
    key = PRESET_ALIASES.get(key, key)
    for preset_name, preset in PRESETS.items():  # case-insensitive ("dinov2-g" / "dinov3-7B")
        if preset_name.lower() == key:
            return preset
    raise ValueError(
        f"Unknown preset {name!r}; available: {', '.join(PRESETS)} (aliases: {', '.join(PRESET_ALIASES)})."
    )
