"""The training loop for supernet distillation and fine-tuning, run by `training/distill.py` and `training/finetune.py`.

- `mode="distill"`: the student is a `JetViTSupernet`. Each forward runs one subnet, `supernet.sample(micro_step,
  seed)`: it depends only on the step, so every process draws the same one. The loss is feature distillation against
  the frozen teacher.
- `mode="finetune"`: the student is a fixed JetViT (an extracted subnet). For depth models the loss also includes
  Depth Anything's disparity loss against the teacher's prediction.

Teacher and student go through `task_features`, so the loss compares the features the task head reads. The run uses
Accelerate: DDP, mixed precision, gradient accumulation and trackers. It writes atomic checkpoints, and `resume`
continues a run exactly: the same weights, optimizer and RNG states, the same data order, and the same subnets.
"""

import contextlib
import dataclasses
import difflib
import json
import logging
import math
import os
import re
import shutil
import sys
import types
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..io import atomic_directory, atomic_write_json
from ..convert import SUPERNET_FILE, load_jetvit
from ..layouts import parse_candidates, stage2_candidates
from .targets import FEATURE_TARGETS, check_teacher_student, resolve_targets, task_features
from .losses import FEATURE_LOSS_KINDS, FeatureDistillationLoss, depth_anything_loss
from ..models.jetvit.modeling_jetvit import JetViTForDepthEstimation, JetViTPreTrainedModel, JetViTRopePositionEmbedding
from .supernet import JetViTSupernet

MODES = ("distill", "finetune")
MIXED_PRECISION = ("no", "bf16", "fp16")
REPORT_TO = ("tensorboard", "none")
CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE_FILE = "trainer_state.json"
TRAIN_LOG_FILE = "train_log.json"
_CHECKPOINT_NAME = re.compile(r"step-(\d{7,})")
# DINOv3's train-time RoPE augmentation (see `_disable_rope_augmentation`)
_ROPE_AUGMENTATION = ("pos_embed_shift", "pos_embed_jitter", "pos_embed_rescale")
# Config fields that may differ when a run is resumed: they do not change the math or the data order.
_RESUME_MAY_CHANGE = frozenset(
    {"teacher", "student", "data", "output_dir", "resume", "max_steps", "checkpoint_every", "keep_checkpoints",
     "log_every", "report_to", "num_workers", "gradient_checkpointing", "cpu"}
)


# ----------------------------------------------------------------------------------------------------------------------
# Configuration


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
        default="scenes:1000",
        metadata=_help(
            "The images: an image folder, a saved or local dataset dir, or 'scenes:<count>' for procedural scenes."
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
    train_mlp: bool = field(default=False, metadata=_help("Also train the MLPs (default: attention only)."))
    lora_rank: int = field(
        default=0,
        metadata=_help(
            "> 0: LoRA (peft) on the q/k/v/o projections (and on the MLPs with train_mlp) instead of full weights; "
            "merged into the weights before saving."
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
    seed: int = field(default=0, metadata=_help("Seeds the data order, augmentations, subnets and new weights."))
    num_workers: int = field(default=2, metadata=_help("DataLoader worker processes per training process."))
    checkpoint_every: int = field(default=500, metadata=_help("Write a checkpoint every this many optimizer steps."))
    keep_checkpoints: int = field(default=2, metadata=_help("How many of the latest checkpoints to keep (0: all)."))
    resume: bool | str = field(
        default=False,
        metadata=_help("true: continue from the latest checkpoint in output_dir (if any); or a checkpoint path."),
    )
    log_every: int = field(default=10, metadata=_help("Log scalars every this many optimizer steps."))
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
                     "max_grad_norm", "depth_loss_weight"):
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


def main(argv: Sequence[str] | None = None, mode: str = "distill", default_config=None) -> Path:
    """Command-line entry point of `training/distill.py` and `training/finetune.py`."""
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
    return train(config)


# ----------------------------------------------------------------------------------------------------------------------
# Models


def _is_supernet(source: str | os.PathLike) -> bool:
    return (Path(source) / SUPERNET_FILE).is_file()


def build_supernet(config: TrainConfig, teacher: JetViTPreTrainedModel) -> JetViTSupernet:
    """The distillation student: a saved supernet continued as is, or a new one from a model and `candidates`."""
    source = config.student or config.teacher
    spec = config.candidates
    stage2 = isinstance(spec, str)
    if _is_supernet(source):
        if config.student_overrides:
            raise ValueError("student_overrides cannot change a saved supernet; they apply to a model being converted.")
        if spec is None:
            return JetViTSupernet.from_pretrained(source)
        if spec == "stage2" or not stage2:
            raise ValueError(
                f"{source} is a saved supernet: name the stage-1 choice to start stage 2 from it "
                "(candidates: stage2:<type of layer 0>,<type of layer 1>,...), or set candidates to null to continue "
                "training it."
            )
        choice = spec.removeprefix("stage2:").split(",")
        base = JetViTSupernet.from_pretrained(source).extract(choice)
    else:
        base = load_jetvit(source, **config.student_overrides)
        if not stage2:
            return JetViTSupernet(base, spec, inherit_full_from=teacher)
        choice = base.config.attention_types if spec == "stage2" else spec.removeprefix("stage2:").split(",")
        if list(base.config.attention_types) != list(choice):
            raise ValueError(
                f"The student's attention types {base.config.attention_types} differ from the stage-1 choice {choice}; "
                "pass the extracted stage-1 model or the stage-1 supernet as --student."
            )
    return JetViTSupernet(base, stage2_candidates(choice), inherit_full_from=teacher)


def _rope_configs(model: nn.Module) -> list:
    configs = {id(m.config): m.config for m in model.modules() if isinstance(m, JetViTRopePositionEmbedding)}
    return list(configs.values())


def _disable_rope_augmentation(model: nn.Module) -> dict:
    """Switch off DINOv3's train-time RoPE augmentation (random shift, jitter and rescale of the patch coordinates).

    The student trains in train mode while the teacher runs in eval mode: with the augmentation on, the student would
    see other, random RoPE coordinates than the teacher, and its targets would be noise. Returns the original values,
    which the saved model keeps.
    """
    configs = _rope_configs(model)
    original = {name: getattr(configs[0], name) for name in _ROPE_AUGMENTATION} if configs else {}
    for config in configs:
        for name in _ROPE_AUGMENTATION:
            setattr(config, name, None)
    return original


def _restore_rope_augmentation(model: nn.Module, original: dict) -> None:
    for config in _rope_configs(model):
        for name, value in original.items():
            setattr(config, name, value)


def _select_trainable(model: JetViTPreTrainedModel, config: TrainConfig):
    """Freeze all but the attention modules (q/k/v/o of every candidate and the dynamic-conv generators), plus the MLPs
    with `train_mlp`. With `lora_rank`, LoRA adapters replace the trained projections; returns the PEFT model then."""
    if config.lora_rank:
        from peft import LoraConfig, get_peft_model

        pattern = r".*\.attention\.(?:candidates\.[a-z]+\.)?(?:q_proj|k_proj|v_proj|o_proj)"
        if config.train_mlp:
            pattern = rf"(?:{pattern}|.*\.mlp\.(?:gate_proj|up_proj|down_proj))"
        lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha or config.lora_rank, target_modules=pattern)
        with warnings.catch_warnings():  # peft 0.21 calls a transformers 5.23 deprecated alias
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
            peft_model = get_peft_model(model, lora)  # freezes everything but the adapters, in place
        for name, parameter in model.named_parameters():
            if ".attention." in name and ".dynamic_conv." in name:
                parameter.requires_grad_(True)
        return peft_model
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(".attention." in name or (config.train_mlp and ".mlp." in name))
    return None


class TaskFeatureStudent(nn.Module):
    """What Accelerate prepares (and DDP wraps): the student's task features and prediction, so each forward goes
    through DDP."""

    def __init__(self, model: nn.Module, targets: str, with_prediction: bool):
        super().__init__()
        self.model = model
        self.targets = targets
        self.with_prediction = with_prediction

    def forward(self, pixel_values: torch.Tensor):
        outputs = task_features(self.model, pixel_values, self.targets, self.with_prediction)
        return outputs.features, outputs.prediction


def _enable_gradient_checkpointing(model: JetViTPreTrainedModel) -> None:
    # transformers 5.23 renamed gradient_checkpointing_enable (now a deprecated alias); 5.17 only has the old name
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


def subnet_code(assignment: Sequence[str]) -> str:
    """A subnet as one letter per layer: F(ull), W(indow), L(inear)."""
    return "".join(attention_type[0].upper() for attention_type in assignment)


# ----------------------------------------------------------------------------------------------------------------------
# Data


def load_training_images(config: TrainConfig):
    """The training images, checked to decode; errors name the source."""
    from ..data.images import load_images

    if config.data.startswith("scenes:"):
        from ..data.scenes import scene_dataset

        count = config.data.removeprefix("scenes:")
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"data {config.data!r}: write scenes:<number of scenes>, e.g. scenes:1000.")
        dataset = scene_dataset(int(count), config.image_size, config.image_size, seed=config.seed)
        return load_images(dataset, image_column=config.image_column or "image")
    dataset = load_images(config.data, image_column=config.image_column)
    try:
        dataset[0]
    except Exception as error:  # PIL raises several types for unreadable files
        raise ValueError(f"Could not read the images of {config.data}: {type(error).__name__}: {error}") from error
    return dataset


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints


@dataclass
class _Progress:
    """Where the run is: optimizer steps done, the next batch (epoch, index per process) and the subnets drawn."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    micro_step: int = 0
    log_history: list = field(default_factory=list)


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under `directory`, oldest first. Staging dirs of unfinished writes are never listed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [
        path for path in directory.iterdir()
        if _CHECKPOINT_NAME.fullmatch(path.name) and (path / TRAINER_STATE_FILE).is_file()
    ]
    return sorted(found, key=lambda path: int(_CHECKPOINT_NAME.fullmatch(path.name).group(1)))


def _find_resume_checkpoint(config: TrainConfig, output_dir: Path) -> Path | None:
    existing = list_checkpoints(output_dir / CHECKPOINTS_DIR)
    if config.resume is False:
        if existing:
            raise ValueError(
                f"{output_dir} already holds checkpoints of an earlier run ({existing[-1].name}); pass --resume to "
                "continue it, or choose another --output_dir."
            )
        return None
    if config.resume is True:
        return existing[-1] if existing else None
    path = Path(config.resume)
    if (path / TRAINER_STATE_FILE).is_file():
        return path
    found = list_checkpoints(path) or list_checkpoints(path / CHECKPOINTS_DIR)
    if not found:
        raise ValueError(f"resume: {path} is neither a complete checkpoint nor a directory holding one.")
    return found[-1]


def _check_resumable(saved: dict, config: TrainConfig, num_processes: int) -> None:
    current = config.to_dict() | {"num_processes": num_processes}
    saved = saved["config"] | {"num_processes": saved["num_processes"]}
    changed = [
        f"{key}: {saved.get(key)!r} -> {current[key]!r}"
        for key in current if key not in _RESUME_MAY_CHANGE and saved.get(key) != current[key]
    ]
    if changed:
        raise ValueError(
            "Cannot resume exactly: these settings differ from the checkpoint's (checkpoint -> now): "
            + "; ".join(changed) + ". Use the original settings, or start a new run in another output_dir."
        )


def _save_checkpoint(accelerator, output_dir: Path, progress: _Progress, config: TrainConfig) -> Path:
    """Accelerate's state (model, optimizer, scheduler, RNG) plus `trainer_state.json`, written into a staging dir that
    becomes `checkpoints/step-XXXXXXX` only when complete; then older checkpoints beyond `keep_checkpoints` go."""
    from accelerate.utils import broadcast_object_list

    checkpoints = output_dir / CHECKPOINTS_DIR
    target = checkpoints / f"step-{progress.step:07d}"
    with contextlib.ExitStack() as stack:
        staging = stack.enter_context(atomic_directory(target, overwrite=True)) if accelerator.is_main_process else None
        staging = broadcast_object_list([staging])[0]  # every process writes its RNG state into the same dir
        accelerator.save_state(str(staging))
        if accelerator.is_main_process:
            trainer_state = dataclasses.asdict(progress) | {
                "num_processes": accelerator.num_processes, "config": config.to_dict()
            }
            atomic_write_json(staging / TRAINER_STATE_FILE, trainer_state)
        accelerator.wait_for_everyone()  # all files are in before the main process renames the dir
    if accelerator.is_main_process:
        atomic_write_json(output_dir / TRAIN_LOG_FILE, progress.log_history)
        complete = list_checkpoints(checkpoints)
        stale = complete[: -config.keep_checkpoints] if config.keep_checkpoints else []
        stale += [path for path in checkpoints.iterdir() if path.name.startswith(".step-")]  # killed writes
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
    return target


# ----------------------------------------------------------------------------------------------------------------------
# Training


def _lr_lambda(config: TrainConfig):
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _make_accelerator(config: TrainConfig, output_dir: Path):
    import importlib.util

    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    log_with = None
    if config.report_to == "tensorboard":
        if importlib.util.find_spec("tensorboard") is not None:
            log_with = "tensorboard"
        else:
            logging.getLogger(__name__).warning("tensorboard is not installed; logging to train_log.json only.")
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=log_with,
        project_dir=str(output_dir),
        cpu=config.cpu,
        # inactive candidates get no gradient in a step (nor do layers after the last feature tap)
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise ValueError(
            f"{launched} processes were launched, but Accelerate runs this one alone (no GPU found): to train on "
            "CPU processes over gloo, pass --cpu (or set ACCELERATE_USE_CPU=1)."
        )
    return accelerator


def _tracker_config(config: TrainConfig) -> dict:
    """The config as scalars, which is all tensorboard's hparams take."""
    return {
        key: value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
        for key, value in config.to_dict().items()
    }


def reset_accelerate_state() -> None:
    """Forget Accelerate's process-wide state, as a new process would: each `train` builds its own `Accelerator`
    (a resumed run, or the next stage of `jetvit pipeline`, in the same process)."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    for state in (PartialState, AcceleratorState, GradientState):
        state._shared_state.clear()


def train(config: TrainConfig) -> Path:
    """Run the training `config` describes; returns `output_dir`.

    Writes `output_dir/supernet` (distill) or `output_dir/model` (finetune: a complete HF model directory),
    `train_log.json` (the logged scalars and, for distill, the subnets of each step), tensorboard logs under
    `tensorboard/` and `checkpoints/step-XXXXXXX`.
    """
    from accelerate.logging import get_logger
    from accelerate.utils import gather_object, set_seed
    from tqdm.auto import tqdm

    from ..data.images import DistillationImages, build_dataloader, make_transform

    logger = get_logger(__name__)
    output_dir = Path(config.output_dir)
    accelerator = _make_accelerator(config, output_dir)
    if not accelerator.is_local_main_process:  # one copy of the info lines (model conversion, resume)
        logging.getLogger("jetvit_hf").setLevel(logging.WARNING)
    checkpoint = _find_resume_checkpoint(config, output_dir)
    set_seed(config.seed)  # new weights (dynamic-conv generators, LoRA) start the same in every run

    teacher = load_jetvit(config.teacher).eval().requires_grad_(False)
    if config.mode == "distill":
        supernet = build_supernet(config, teacher)
        student_model = supernet.model
    else:
        if _is_supernet(config.student):
            raise ValueError(
                f"{config.student} is a supernet, but fine-tuning trains a fixed model: extract one first "
                "(JetViTSupernet.extract, or the search's result)."
            )
        supernet = None
        student_model = load_jetvit(config.student, **config.student_overrides)
    check_teacher_student(teacher.config, student_model.config)
    if type(teacher) is not type(student_model):
        raise ValueError(
            f"Teacher and student do not match: the teacher is a {type(teacher).__name__}, the student a "
            f"{type(student_model).__name__}. Distill a student converted from the same checkpoint as the teacher."
        )
    rope_augmentation = _disable_rope_augmentation(student_model)
    targets = resolve_targets(student_model, config.targets)
    use_depth_loss = config.depth_loss_weight > 0 and isinstance(student_model, JetViTForDepthEstimation)
    if config.depth_loss_weight > 0 and not use_depth_loss:
        logger.warning(f"depth_loss_weight is ignored: a {type(student_model).__name__} predicts no depth.")

    peft_model = _select_trainable(student_model, config)
    trainable = [parameter for parameter in student_model.parameters() if parameter.requires_grad]
    if not trainable:
        raise ValueError("Nothing to train: the student has no attention (or MLP) parameters.")
    if config.gradient_checkpointing:
        _enable_gradient_checkpointing(student_model)
    student = TaskFeatureStudent(supernet if supernet is not None else student_model, targets, use_depth_loss).train()
    teacher.to(accelerator.device)

    with accelerator.main_process_first():  # one process renders or caches the dataset, the others reuse it
        dataset = load_training_images(config)
    images = DistillationImages(
        dataset,
        make_transform(config.image_size, student_model.config.patch_size, train=True),
        seed=config.seed,
        image_column=config.image_column,
    )
    loader = build_dataloader(images, config.batch_size, seed=config.seed, num_workers=config.num_workers)
    decay = [parameter for parameter in trainable if parameter.ndim >= 2]
    no_decay = [parameter for parameter in trainable if parameter.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
    )
    # Not prepared: Accelerate steps a prepared scheduler once per process, and max_steps counts optimizer steps.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config))
    student, optimizer, loader = accelerator.prepare(student, optimizer, loader)
    accelerator.register_for_checkpointing(scheduler)
    feature_loss = FeatureDistillationLoss(kind=config.loss)

    progress = _Progress()
    if checkpoint is not None:
        saved = json.loads((checkpoint / TRAINER_STATE_FILE).read_text())
        _check_resumable(saved, config, accelerator.num_processes)
        accelerator.load_state(str(checkpoint))  # weights, optimizer, scheduler, RNG states, accumulation counter
        progress = _Progress(**{key: saved[key] for key in ("step", "epoch", "batch", "micro_step", "log_history")})
        logger.info(f"Resuming from {checkpoint}: step {progress.step}, epoch {progress.epoch}, batch {progress.batch}")
    elif config.resume is True:
        logger.info(f"No checkpoint in {output_dir / CHECKPOINTS_DIR}; starting from scratch.")
    accelerator.init_trackers("tensorboard", config=_tracker_config(config))

    bar = tqdm(total=config.max_steps, initial=progress.step, desc=config.mode,
               disable=not accelerator.is_local_main_process)
    sums, forwards, subnets = {}, 0, []  # since the last log line
    while progress.step < config.max_steps:
        # The data order of an epoch depends only on (seed, epoch); a resumed run skips what it already saw.
        loader.set_epoch(progress.epoch)
        batches = accelerator.skip_first_batches(loader, progress.batch) if progress.batch else loader
        for batch in batches:
            pixel_values = batch["pixel_values"]
            with accelerator.accumulate(student):
                with torch.no_grad(), accelerator.autocast():
                    target = task_features(teacher, pixel_values, targets, with_prediction=use_depth_loss)
                for index in range(config.subnets_per_step):
                    if supernet is not None:
                        supernet.set(supernet.sample(progress.micro_step, config.seed))
                        subnets.append(subnet_code(supernet.assignment))
                    progress.micro_step += 1
                    last = index == config.subnets_per_step - 1  # only the last subnet's backward may all-reduce
                    with contextlib.nullcontext() if last else accelerator.no_sync(student):
                        features, prediction = student(pixel_values)
                        loss = feature_loss(features, target.features)
                        parts = {"feature_loss": loss.detach()}
                        if use_depth_loss:
                            depth, depth_parts = depth_anything_loss(prediction, target.prediction)
                            loss = loss + config.depth_loss_weight * depth
                            parts |= {"depth_loss": depth.detach(), **depth_parts}
                        accelerator.backward(loss / config.subnets_per_step)
                    for name, value in (parts | {"loss": loss.detach()}).items():
                        sums[name] = sums.get(name, 0.0) + value.float()
                    forwards += 1
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
                optimizer.step()  # a no-op until the last micro-batch of the step
                optimizer.zero_grad(set_to_none=True)
            progress.batch += 1
            if progress.batch == len(loader):
                progress.epoch, progress.batch = progress.epoch + 1, 0
            if not accelerator.sync_gradients:
                continue

            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            progress.step += 1
            bar.update(1)
            checkpoint_now = progress.step % config.checkpoint_every == 0 or progress.step == config.max_steps
            if checkpoint_now or progress.step % config.log_every == 0:  # a checkpoint never splits a log interval
                names = sorted(sums)
                means = accelerator.reduce(torch.stack([sums[name] for name in names]) / forwards, "mean")
                scalars = {name: value.item() for name, value in zip(names, means, strict=True)} | {"lr": lr}
                accelerator.log(scalars, step=progress.step)
                entry = {"step": progress.step} | scalars
                if supernet is not None:
                    everyone = gather_object([subnets])
                    if any(other != subnets for other in everyone):
                        raise RuntimeError(f"Processes sampled different subnets by step {progress.step}: {everyone}")
                    entry["subnets"] = subnets
                    bar.set_postfix(loss=f"{scalars['loss']:.4f}", lr=f"{lr:.2e}", subnet=subnets[-1])
                else:
                    bar.set_postfix(loss=f"{scalars['loss']:.4f}", lr=f"{lr:.2e}")
                progress.log_history.append(entry)
                sums, forwards, subnets = {}, 0, []
            if checkpoint_now:
                _save_checkpoint(accelerator, output_dir, progress, config)
            if progress.step >= config.max_steps:
                break
    bar.close()

    accelerator.wait_for_everyone()
    if peft_model is not None:
        student_model = peft_model.merge_and_unload()
        if supernet is not None:
            supernet.model = student_model
    _restore_rope_augmentation(student_model, rope_augmentation)
    if accelerator.is_main_process:
        _save_result(config, output_dir, supernet, student_model)
        atomic_write_json(output_dir / TRAIN_LOG_FILE, progress.log_history)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return output_dir


def _save_result(config: TrainConfig, output_dir: Path, supernet, model: JetViTPreTrainedModel) -> None:
    from ..convert import resolve_source

    if supernet is not None:
        supernet.save_pretrained(output_dir / "supernet", overwrite=True)
        return
    processors = [Path(config.student) / "preprocessor_config.json",
                  resolve_source(config.teacher) / "preprocessor_config.json"]
    with atomic_directory(output_dir / "model", overwrite=True) as staging:
        model.save_pretrained(staging)
        for processor in processors:
            if processor.is_file():
                shutil.copyfile(processor, staging / processor.name)
                break
