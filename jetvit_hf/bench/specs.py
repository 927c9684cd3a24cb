"""What a benchmark builds: a `ModelSpec` resolved from a named preset or a converted checkpoint (the source config
of the transformers baseline, the JetViT config and class, the checkpoint), and the hybrid's attention types."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..convert import source_config_from_jetvit
from ..io import read_json
from ..layouts import LAYOUTS, resolve_attention_types
from ..models.jetvit.configuration_jetvit import JetViTConfig
from .presets import get_preset


@dataclass
class ModelSpec:
    name: str
    jetvit_config: JetViTConfig  # attention types as in the source/checkpoint (replaced per model)
    jetvit_class: type
    source_config: object | None = None
    source_architecture: str | None = None
    checkpoint: Path | None = None
    notes: list[str] = field(default_factory=list)
    source_config_origin: str | None = None
    config_overrides: dict = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return self.jetvit_config.num_hidden_layers


def _config_with(config: JetViTConfig, **changes) -> JetViTConfig:
    """A new JetViTConfig equal to `config` but for `changes` (e.g. attention_types, num_hidden_layers)."""
    data = config.to_dict()
    for key in ("stage_names", "transformers_version", "dtype"):
        data.pop(key, None)
    if "num_hidden_layers" in changes:  # backbone outputs must fit the new depth
        data["out_features"], data["out_indices"] = None, None
    data.update(changes)
    return JetViTConfig.from_dict(data)


_COMPUTE_FIELDS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "use_gated_mlp", "patch_size",
    "num_register_tokens", "position_embedding_type", "query_bias", "key_bias", "value_bias",
)


def _compute_mismatch(a: JetViTConfig, b: JetViTConfig) -> list[str]:
    return [f"{k}: {getattr(a, k)!r} != {getattr(b, k)!r}" for k in _COMPUTE_FIELDS if getattr(a, k) != getattr(b, k)]


def _spec_from_preset(name: str, window_size: int | None) -> ModelSpec:
    from ..convert import jetvit_config_from_source

    preset = get_preset(name)
    source_config = preset.source_config()
    overrides = dict(preset.jetvit_overrides)
    if window_size is not None:
        overrides["window_size"] = window_size
    config, _, architecture, jetvit_class = jetvit_config_from_source(source_config, None, **overrides)
    return ModelSpec(
        name=preset.name, jetvit_config=config, jetvit_class=jetvit_class, source_config=source_config,
        source_architecture=architecture, source_config_origin=f"preset {preset.name}",
    )


def _spec_from_checkpoint(path: str | os.PathLike, window_size: int | None) -> ModelSpec:
    from ..models.jetvit import modeling_jetvit
    from ..convert import jetvit_config_from_source

    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise ValueError(f"--model {path}: no config.json there; pass a directory written by `jetvit convert`.")
    config = JetViTConfig.from_pretrained(path)
    if window_size is not None:
        config = _config_with(config, window_size=window_size)
    architecture = (getattr(config, "architectures", None) or ["JetViTModel"])[0]
    jetvit_class = getattr(modeling_jetvit, architecture, modeling_jetvit.JetViTModel)
    spec = ModelSpec(name=str(path), jetvit_config=config, jetvit_class=jetvit_class, checkpoint=path)

    info_path = path / "jetvit_conversion.json"
    if not info_path.is_file():
        spec.notes.append(f"no {info_path.name} in {path}: the transformers (hf) baseline is skipped")
        return spec
    info = read_json(info_path)
    family, source_architecture, source = info.get("family"), info.get("source_architecture"), info.get("source")
    source_config, origin = None, None
    if source:
        from transformers import AutoConfig

        source_path = Path(str(source)).expanduser()
        try:
            if (source_path / "config.json").is_file():
                source_config, origin = AutoConfig.from_pretrained(source_path), f"source directory {source_path}"
            else:  # a Hub id: only the local cache (the benchmark machine may have no network)
                source_config = AutoConfig.from_pretrained(str(source), local_files_only=True)
                origin = f"cached Hub config {source}"
        except Exception:  # unreachable source: rebuild from the JetViT config below
            source_config = None
    if source_config is None and family and source_architecture:
        try:
            source_config = source_config_from_jetvit(config, family, source_architecture)
            origin = f"rebuilt from the JetViT config ({family}, {source_architecture})"
        except ValueError as error:
            spec.notes.append(f"hf baseline skipped: {error}")
    if source_config is not None:
        rebuilt, _, architecture, _ = jetvit_config_from_source(source_config, None)
        mismatch = _compute_mismatch(rebuilt, config)
        if mismatch:
            spec.notes.append(f"hf baseline skipped: the source config ({origin}) differs from the checkpoint: "
                              + "; ".join(mismatch))
        else:
            spec.source_config, spec.source_architecture = source_config, architecture
            spec.source_config_origin = origin
            spec.notes.append(f"hf baseline: {architecture} with random weights, config from {origin}")
    elif not spec.notes:
        spec.notes.append("hf baseline skipped: jetvit_conversion.json names no usable source")
    return spec


def resolve_model_spec(preset: str | None = None, model: str | os.PathLike | None = None,
                       window_size: int | None = None, config_overrides: dict | None = None) -> ModelSpec:
    """What to build: the source config (hf baseline), the JetViT config and class, and the checkpoint if any.

    `config_overrides` sets JetViTConfig fields of every JetViT model of the run (e.g. a switch between kernel
    implementations); fields JetViTConfig does not define are set as plain attributes, with a note.
    """
    if (preset is None) == (model is None):
        raise ValueError("pass exactly one of preset (a named architecture) or model (a converted checkpoint dir)")
    spec = _spec_from_preset(preset, window_size) if preset is not None else _spec_from_checkpoint(model, window_size)
    if config_overrides:
        import inspect

        known = set(inspect.signature(JetViTConfig.__init__).parameters) - {"self", "kwargs"}
        protected = {"num_hidden_layers", "attention_types"} & set(config_overrides)
        if protected:
            raise ValueError(f"config overrides cannot change {sorted(protected)}; use attention_types / presets")
        spec.jetvit_config = _config_with(spec.jetvit_config, **config_overrides)
        spec.config_overrides = dict(config_overrides)
        unknown = sorted(set(config_overrides) - known)
        if unknown:
            spec.notes.append(f"config overrides {unknown} are not JetViTConfig arguments; set as plain attributes")
    return spec


def _hybrid_types(spec: ModelSpec, attention_types) -> tuple[list[str], str]:
    """The hybrid's types and a layout label: default `paper-2full` for a preset, the checkpoint's own for a model."""
    if attention_types is None:
        if spec.checkpoint is not None:
            return list(spec.jetvit_config.attention_types), "checkpoint"
        attention_types = "paper-2full"
    named = isinstance(attention_types, str) and attention_types.strip() in LAYOUTS
    layout = attention_types.strip() if named else "custom"
    return resolve_attention_types(attention_types, spec.num_layers), layout
