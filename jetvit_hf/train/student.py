"""The student a run trains: a supernet (distill) or a fixed JetViT (finetune), checked against the teacher, with only
the attention (and optionally the MLPs, or LoRA adapters on them) trainable.

`build_student` returns a `Student`: the model, the `TaskFeatureStudent` that Accelerate prepares (each forward gives
the features the task head reads, and the prediction for the depth loss), and what turns it back into the model that is
saved (`Student.trained_model`: LoRA merged, DINOv3's RoPE augmentation settings restored).
"""

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..convert import SUPERNET_FILE, load_jetvit
from ..layouts import stage2_candidates
from ..models.jetvit.modeling_jetvit import JetViTForDepthEstimation, JetViTPreTrainedModel
from ..models.jetvit.modeling_jetvit_embeddings import JetViTRopePositionEmbedding
from .config import TrainConfig
from .supernet import JetViTSupernet, encoder_layers
from .targets import check_teacher_student, resolve_targets, task_features

# DINOv3's train-time RoPE augmentation (see `_disable_rope_augmentation`)
_ROPE_AUGMENTATION = ("pos_embed_shift", "pos_embed_jitter", "pos_embed_rescale")


@dataclass
class Student:
    """The model a run trains, and what the training loop needs to know about it."""

    model: JetViTPreTrainedModel  # the JetViT being trained (distill: the supernet's model)
    supernet: JetViTSupernet | None  # distill: sets the subnet of each forward; finetune: None
    module: "TaskFeatureStudent"  # what Accelerate prepares
    targets: str  # the features compared with the teacher's
    use_depth_loss: bool
    trainable: list[nn.Parameter]
    peft_model: nn.Module | None  # with lora_rank: the PEFT model holding the adapters
    rope_augmentation: dict  # the original RoPE augmentation settings, switched off while training

    def trained_model(self) -> JetViTPreTrainedModel:
        """The model as it is saved: LoRA merged into the weights (the supernet then holds the merged model) and the
        RoPE augmentation settings restored."""
        model = self.model
        if self.peft_model is not None:
            model = self.peft_model.merge_and_unload()
            if self.supernet is not None:
                self.supernet.model = model
        _restore_rope_augmentation(model, self.rope_augmentation)
        return model


def load_teacher(config: TrainConfig) -> JetViTPreTrainedModel:
    """The frozen teacher, in eval mode."""
    return load_jetvit(config.teacher).eval().requires_grad_(False)


def build_student(config: TrainConfig, teacher: JetViTPreTrainedModel) -> Student:
    """The student of `config.mode`, checked against `teacher`, with only the parameters to train unfrozen."""
    from accelerate.logging import get_logger

    if config.mode == "distill":
        supernet = build_supernet(config, teacher)
        model = supernet.model
    else:
        supernet = None
        model = _load_fixed_student(config)
    check_teacher_student(teacher.config, model.config)
    if type(teacher) is not type(model):
        raise ValueError(
            f"Teacher and student do not match: the teacher is a {type(teacher).__name__}, the student a "
            f"{type(model).__name__}. Distill a student converted from the same checkpoint as the teacher."
        )
    rope_augmentation = _disable_rope_augmentation(model)
    targets = resolve_targets(model, config.targets)
    use_depth_loss = config.depth_loss_weight > 0 and isinstance(model, JetViTForDepthEstimation)
    if config.depth_loss_weight > 0 and not use_depth_loss:
        get_logger(__name__).warning(f"depth_loss_weight is ignored: a {type(model).__name__} predicts no depth.")

    peft_model = _select_trainable(model, config)
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    if not trainable:
        raise ValueError("Nothing to train: the student has no attention (or MLP) parameters.")
    if config.gradient_checkpointing:
        _enable_gradient_checkpointing(model)
    module = TaskFeatureStudent(supernet if supernet is not None else model, targets, use_depth_loss).train()
    return Student(model, supernet, module, targets, use_depth_loss, trainable, peft_model, rope_augmentation)


def _load_fixed_student(config: TrainConfig) -> JetViTPreTrainedModel:
    if _is_supernet(config.student):
        raise ValueError(
            f"{config.student} is a supernet, but fine-tuning trains a fixed model: extract one first "
            "(JetViTSupernet.extract, or the search's result)."
        )
    return load_jetvit(config.student, **config.student_overrides)


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
            if ".attention." in name and (".dynamic_conv." in name or ".static_conv." in name):
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


def compile_layers(model: JetViTPreTrainedModel, backend: str) -> None:
    """`torch.compile` each transformer layer of `model` (a JetViT, or a supernet's model) in place: regional
    compilation. Layers of one attention type share a graph (Dynamo treats the layers' weights as inputs), so a
    supernet's sampled subnets reuse the graphs of its candidate types instead of recompiling the whole model for each
    layout; parameter names and the state dict stay as they are."""
    for layer in encoder_layers(model):
        layer.compile(backend=backend, dynamic=False)


def _enable_gradient_checkpointing(model: JetViTPreTrainedModel) -> None:
    # transformers 5.23 renamed gradient_checkpointing_enable (now a deprecated alias); 5.17 only has the old name
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


def subnet_code(assignment: Sequence[str]) -> str:
    """A subnet as one letter per layer: F(ull), W(indow), L(inear)."""
    return "".join(attention_type[0].upper() for attention_type in assignment)
