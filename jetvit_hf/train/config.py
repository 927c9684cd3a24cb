"""The settings of one training run (`TrainConfig`), and reading them from a YAML file plus command-line flags.

Every field is typed: values from YAML or flags are coerced to the field's type (strings are parsed), and a bad value,
an unknown key or a missing required setting is a `ValueError` that names the key.
"""

import contextlib
import dataclasses
import difflib
import os
import re
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..layouts import parse_candidates
from .losses import FEATURE_LOSS_KINDS
from .targets import FEATURE_TARGETS

MODES = ("distill", "finetune")
MIXED_PRECISION = ("no", "bf16", "fp16")
REPORT_TO = ("tensorboard", "none")
COMPILE_BACKENDS = ("auto", "inductor", "aot_eager")


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class TrainConfig:
    """Everything one training run needs. Build it from YAML plus CLI flags with `config_from_args`, or directly."""

    mode: str = field(default="distill", metadata=_help("'distill' (supernet) or 'finetune' (a fixed JetViT)."))
    teacher: str | None = field(
        default=None, metadata=_help("The frozen teacher: a source checkpoint dir or Hub id, or a JetViT dir.")
    )
    student: str | None = field(
        default=None,
        metadata=_help(
            "distill: a saved supernet, a JetViT dir or a source checkpoint (default: the teacher); "
            "finetune: the extracted JetViT to train (required)."
        ),
    )
    candidates: list | str | None = field(
        default=None,
        metadata=_help(
            "distill only. The attention types per layer: a list for every layer ('linear,window', the default), "
            "a list of lists, or stage 2: 'stage2:<the stage-1 type of each layer, comma-separated>' "
            "('stage2' alone takes the student's attention_types). In stage 2, full candidates start from the "
            "teacher's layers."
        ),
    )
    student_overrides: dict = field(
        default_factory=dict,
        metadata=_help("JetViTConfig fields for a student built from a source or JetViT dir, e.g. {window_size: 8}."),
    )
    data: str = field(
        default="render:train",
        metadata=_help(
            "The images: 'render:train[:<scenes per epoch>]' for new procedural scenes every epoch, drawn by the "
            "scene renderer on the training device; or an image folder, or a saved or local dataset dir."
        ),
    )
    image_column: str | None = field(default=None, metadata=_help("The dataset's image column (default: found)."))
    image_size: int = field(default=224, metadata=_help("Training crop size; a multiple of the patch size."))
    output_dir: str | None = field(default=None, metadata=_help("Checkpoints, logs and the result go here."))
    targets: str = field(
        default="auto", metadata=_help("Distillation features: 'auto', 'dpt' (4 taps) or 'last' (normed last layer).")
    )
    loss: str = field(default="cosine_smooth_l1", metadata=_help("Feature loss: 'cosine_smooth_l1' or 'mse'."))
    depth_loss_weight: float = field(
        default=0.0,
        metadata=_help("Weight of Depth Anything's L_ssi + 2 L_gm (top 10% trimmed) against the teacher's depth."),
    )
    train_mlp: bool = field(
        default=False,
        metadata=_help(
            "Also train the MLPs. Default: the attention only (q/k/v/o of every candidate and the linear layers' "
            "convolution); embeddings, norms, layer scales and heads are always frozen."
        ),
    )
    lora_rank: int = field(
        default=0,
        metadata=_help(
            "> 0: LoRA (peft) on the q/k/v/o projections (and on the MLPs with train_mlp) instead of full weights; "
            "the linear layers' convolutions train in full; merged into the weights before saving."
        ),
    )
    lora_alpha: float | None = field(default=None, metadata=_help("LoRA alpha (default: lora_rank, scale 1)."))
    max_steps: int = field(default=1000, metadata=_help("Optimizer steps."))
    batch_size: int = field(default=8, metadata=_help("Images per process per micro-batch."))
    gradient_accumulation_steps: int = field(default=1, metadata=_help("Micro-batches per optimizer step."))
    subnets_per_step: int = field(
        default=1, metadata=_help("distill only: subnets per micro-batch; gradients accumulate (OFA).")
    )
    learning_rate: float = field(default=1e-4, metadata=_help("Peak AdamW learning rate."))
    weight_decay: float = field(default=0.05, metadata=_help("AdamW weight decay (matrices only)."))
    warmup_steps: int = field(default=100, metadata=_help("Linear warmup steps, then cosine decay to 0."))
    max_grad_norm: float = field(default=1.0, metadata=_help("Gradient clipping norm (0: no clipping)."))
    mixed_precision: str | None = field(
        default=None,
        metadata=_help("'no', 'bf16' or 'fp16'; null: Accelerate's (the launch config's, else 'no')."),
    )
    gradient_checkpointing: bool = field(default=False, metadata=_help("Recompute layer activations in backward."))
    compile_backend: str | None = field(default="auto", metadata=_help(
        "torch.compile every transformer layer of the student and the teacher in place with this backend ('inductor'; "
        "'aot_eager' to debug): one graph per attention type, shared by all layers, so the supernet's subnets do not "
        "recompile. 'auto' (default): inductor when training on a GPU without gradient checkpointing (1.22x the "
        "images/s of eager for ViT-L distillation on an H200), else eager. null: eager."))
    seed: int = field(default=0, metadata=_help("Seeds the data order, augmentations, subnets and new weights."))
    num_workers: int = field(default=2, metadata=_help("DataLoader worker processes per training process."))
    checkpoint_every: int = field(default=500, metadata=_help("Write a checkpoint every this many optimizer steps."))
    keep_checkpoints: int = field(default=2, metadata=_help("How many of the latest checkpoints to keep (0: all)."))
    max_checkpoint_overhead: float = field(default=0.0, metadata=_help(
        "0: write every due checkpoint. > 0: skip a due checkpoint until the time since the last one is at least the "
        "last write's duration divided by this (0.05: checkpoints take at most ~5% of the run; a ViT-L supernet's "
        "checkpoint is 3 GB). The last step's checkpoint and a stop's are always written."))
    resume: bool | str = field(
        default=False,
        metadata=_help("true: continue from the latest checkpoint in output_dir (if any); or a checkpoint path."),
    )
    log_every: int = field(default=10, metadata=_help(
        "Log scalars (losses, lr, images_per_second, seconds_per_step) every this many optimizer steps."))
    report_to: str = field(default="tensorboard", metadata=_help("'tensorboard' or 'none'."))
    cpu: bool = field(
        default=False, metadata=_help("Train on CPU even with a GPU; needed for several CPU processes (gloo).")
    )

    def __post_init__(self):
        for spec in dataclasses.fields(self):
            setattr(self, spec.name, _coerce(spec.name, getattr(self, spec.name), spec.type))
        self.candidates = parse_candidates(self.candidates)
        self._validate()

    def _validate(self) -> None:
        _check_choice("mode", self.mode, MODES)
        _check_choice("targets", self.targets, FEATURE_TARGETS)
        _check_choice("loss", self.loss, FEATURE_LOSS_KINDS)
        if self.mixed_precision is not None:
            _check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        _check_choice("report_to", self.report_to, REPORT_TO)
        if self.compile_backend is not None:
            _check_choice("compile_backend", self.compile_backend, COMPILE_BACKENDS)
            if self.gradient_checkpointing and self.compile_backend != "auto":
                raise ValueError("compile_backend and gradient_checkpointing cannot be combined yet: choose one.")
        for name in ("teacher", "output_dir"):
            if not getattr(self, name):
                raise ValueError(f"{name} is required (--{name} PATH).")
        if self.mode == "finetune":
            if not self.student:
                raise ValueError("mode 'finetune' needs --student: the extracted JetViT model directory to train.")
            if self.candidates is not None:
                raise ValueError("candidates only apply to mode 'distill' (a fine-tuned model's types are fixed).")
            if self.subnets_per_step != 1:
                raise ValueError("subnets_per_step only applies to mode 'distill'.")
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "subnets_per_step", "image_size",
                     "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("warmup_steps", "num_workers", "keep_checkpoints", "lora_rank", "seed", "weight_decay",
                     "max_grad_norm", "depth_loss_weight", "max_checkpoint_overhead"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}.")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be positive, got {self.lora_alpha}.")

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """A config from a mapping (e.g. parsed YAML); unknown keys are an error."""
        known = {spec.name for spec in dataclasses.fields(cls)}
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"Unknown config key {key!r}.{hint} Known keys: {', '.join(sorted(known))}.")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_BOOLEANS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def _options(annotation) -> tuple:
    return annotation.__args__ if isinstance(annotation, types.UnionType) else (annotation,)


def resolve_compile_backend(config: TrainConfig, device) -> str | None:
    """The backend `compile_layers` gets on `device` (None: eager). 'auto' compiles only where it was measured to pay:
    on a GPU, and not beside gradient checkpointing, which cannot be combined with it yet."""
    if config.compile_backend != "auto":
        return config.compile_backend
    return "inductor" if torch.device(device).type == "cuda" and not config.gradient_checkpointing else None


def _coerce(name: str, value, annotation):
    """`value` as the field's type; strings (from the command line) are parsed. A clear error otherwise."""
    options = _options(annotation)
    if value is None or (isinstance(value, str) and value.lower() in ("null", "none") and type(None) in options):
        if type(None) in options:
            return None
        raise ValueError(f"{name} cannot be empty.")
    for option in options:
        if option is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in _BOOLEANS:
                return _BOOLEANS[value.lower()]
        elif option is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
                return int(value)
        elif option is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str):
                with contextlib.suppress(ValueError):
                    return float(value)
        elif option in (str, list, dict) and isinstance(value, option):
            return value
    expected = " or ".join("null" if option is type(None) else option.__name__ for option in options)
    raise ValueError(f"{name} must be {expected}, got {value!r}.")


def _check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}.")


def config_from_args(argv: Sequence[str], mode: str, default_config: str | os.PathLike | None = None) -> TrainConfig:
    """`--config FILE` (YAML; default `default_config`) and then `--key value` / `--key=value` flags override.

    A bare `--flag` sets a boolean field to true; `-` and `_` are interchangeable in keys. Lists and mappings are
    YAML (`--candidates "[linear, window]"`, `--student_overrides "{window_size: 8}"`). `mode` is the script's.
    """
    import yaml

    flags = _split_flags(argv)
    config_file = flags.pop("config", default_config)
    values = {}
    if config_file is not None:
        config_file = Path(str(config_file))
        if not config_file.is_file():
            raise ValueError(f"Config file {config_file} does not exist.")
        values = yaml.safe_load(config_file.read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"Config file {config_file} must hold a mapping of keys, got a {type(values).__name__}.")
    structured = {spec.name for spec in dataclasses.fields(TrainConfig) if {list, dict} & set(_options(spec.type))}
    for key, value in flags.items():
        values[key] = yaml.safe_load(value) if key in structured and isinstance(value, str) else value
    if values.setdefault("mode", mode) != mode:
        raise ValueError(f"This script trains mode {mode!r}, but the config sets mode {values['mode']!r}.")
    return TrainConfig.from_dict(values)


def _split_flags(argv: Sequence[str]) -> dict:
    flags = {}
    tokens = list(argv)
    while tokens:
        token = tokens.pop(0)
        if not token.startswith("--") or token == "--":
            raise ValueError(f"Unexpected argument {token!r}; flags look like --key value or --key=value.")
        key, has_value, value = token[2:].partition("=")
        key = key.replace("-", "_")
        if not has_value:
            value = tokens.pop(0) if tokens and not tokens[0].startswith("--") else True
        flags[key] = value
    return flags


def usage(mode: str, default_config=None) -> str:
    lines = [
        f"usage: {mode}.py [--config FILE.yaml] [--key value ...]",
        f"Settings: these defaults, then the config file (default: {default_config}), then the flags.",
        "",
    ]
    for spec in dataclasses.fields(TrainConfig):
        default = spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
        lines.append(f"  --{spec.name} (default: {default!r})\n      {spec.metadata['help']}")
    return "\n".join(lines)
