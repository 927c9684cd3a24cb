"""Input resolutions: parsing `HEIGHTxWIDTH`, a model's default resolution, and the token count of a resolution."""

from __future__ import annotations

from ..models.jetvit.configuration_jetvit import JetViTConfig
from .specs import ModelSpec


def parse_resolution(text) -> tuple[int, int]:
    """`"1024x2048"` (height x width), `"518"` (square), an int or an (H, W) pair."""
    if isinstance(text, int):
        return (text, text)
    if isinstance(text, (tuple, list)):
        if len(text) != 2:
            raise ValueError(f"resolution must be (height, width), got {text!r}")
        return (int(text[0]), int(text[1]))
    parts = str(text).lower().replace("*", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"bad resolution {text!r}; write HEIGHTxWIDTH, e.g. 1024x2048, or one number") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 1:
        raise ValueError(f"bad resolution {text!r}; write HEIGHTxWIDTH, e.g. 1024x2048, or one number")
    return (values[0], values[1])


def num_tokens(config: JetViTConfig, resolution) -> int:
    return config.num_prefix_tokens + (resolution[0] // config.patch_size) * (resolution[1] // config.patch_size)


def _check_resolution(config: JetViTConfig, resolution) -> None:
    if min(resolution) < config.patch_size:
        raise ValueError(
            f"resolution {resolution[0]}x{resolution[1]} is smaller than one {config.patch_size}-pixel patch"
        )


def _default_resolution(spec: ModelSpec) -> tuple[int, int]:
    size = spec.jetvit_config.image_size
    return (size, size)
