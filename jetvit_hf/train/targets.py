"""The features a task head reads, for distillation targets, search objectives and evaluation: a student is trained
and scored on what its head consumes.

- `"dpt"`: the four layer-normed, reshaped taps at `config.out_indices` that the depth head's DPT neck reads;
- `"last"`: the layer-normed last-layer patch tokens a linear probe reads (`[batch, patches, hidden]`).
`"auto"` picks `"dpt"` for depth models and `"last"` otherwise. Teacher and student go through the same function, so
their features line up one to one.
"""

from dataclasses import dataclass

import torch

from ..models.jetvit.configuration_jetvit import JetViTConfig
from ..models.jetvit.modeling_jetvit import (
    JetViTBackbone,
    JetViTForDepthEstimation,
    JetViTForSemanticSegmentation,
    JetViTModel,
    JetViTPreTrainedModel,
    check_pixel_values,
)

FEATURE_TARGETS = ("auto", "dpt", "last")
# what must agree between a teacher and a student for their features to be comparable
MATCHING_FIELDS = ("hidden_size", "num_hidden_layers", "patch_size", "num_register_tokens", "position_embedding_type")


@dataclass
class TaskOutputs:
    features: list[torch.Tensor]
    prediction: torch.Tensor | None = None  # predicted depth [B, H, W] or segmentation logits, when asked for


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The JetViT model inside a supernet, a PEFT wrapper or a DDP / torch.compile wrapper."""
    while not isinstance(model, JetViTPreTrainedModel):
        for attribute in ("module", "_orig_mod", "model", "base_model"):  # DDP, compile, supernet / PEFT, PEFT
            inner = getattr(model, attribute, None)
            if isinstance(inner, torch.nn.Module) and inner is not model:
                model = inner
                break
        else:
            raise TypeError(f"Expected a JetViT model (or a wrapper of one), got {type(model).__name__}.")
    return model


def resolve_targets(model: torch.nn.Module, targets: str = "auto") -> str:
    if targets not in FEATURE_TARGETS:
        raise ValueError(f"Unknown feature target {targets!r}; allowed: {list(FEATURE_TARGETS)}.")
    if targets != "auto":
        return targets
    return "dpt" if isinstance(unwrap(model), JetViTForDepthEstimation) else "last"


def task_features(model: torch.nn.Module, pixel_values: torch.Tensor, targets: str = "auto",
                  with_prediction: bool = False) -> TaskOutputs:
    """The distillation features of `model` (any JetViT head class, a supernet or a wrapper) for `pixel_values`."""
    base = unwrap(model)
    targets = resolve_targets(base, targets)
    config = base.config
    grid_size = check_pixel_values(pixel_values, config)
    if isinstance(base, JetViTForDepthEstimation):
        encoder = base.jetvit
        outputs = encoder(pixel_values, output_hidden_states=targets == "last", return_dict=True)
        prediction = base.head(base.neck(outputs.feature_maps), grid_size) if with_prediction else None
        if targets == "dpt":
            return TaskOutputs(list(outputs.feature_maps), prediction)
        last = encoder.layernorm(outputs.hidden_states[-1])[:, config.num_prefix_tokens :]
        return TaskOutputs([last], prediction)
    if isinstance(base, JetViTBackbone):
        if targets == "dpt":
            return TaskOutputs(list(base(pixel_values, return_dict=True).feature_maps))
        outputs = base(pixel_values, output_hidden_states=True, return_dict=True)
        return TaskOutputs([base.layernorm(outputs.hidden_states[-1])[:, config.num_prefix_tokens :]])
    if isinstance(base, JetViTForSemanticSegmentation):
        encoder = base.jetvit
    elif isinstance(base, JetViTModel):
        encoder = base
    else:
        raise TypeError(f"task_features needs a JetViT model, got {type(base).__name__}.")
    if targets == "dpt":
        outputs = encoder(pixel_values, output_hidden_states=True, return_dict=True)
        taps = [encoder.layernorm(outputs.hidden_states[i])[:, config.num_prefix_tokens :] for i in config.out_indices]
        return TaskOutputs(taps)
    last = encoder(pixel_values, return_dict=True).last_hidden_state[:, config.num_prefix_tokens :]
    prediction = None
    if with_prediction and isinstance(base, JetViTForSemanticSegmentation):
        feature_map = last.reshape(last.shape[0], *grid_size, -1).permute(0, 3, 1, 2)
        prediction = base.head(feature_map)
    return TaskOutputs([last], prediction)


def check_teacher_student(teacher_config: JetViTConfig, student_config: JetViTConfig) -> None:
    """A clear error when a teacher's and a student's features cannot be compared (other family or shape)."""
    for field in MATCHING_FIELDS:
        teacher_value, student_value = getattr(teacher_config, field), getattr(student_config, field)
        if teacher_value != student_value:
            raise ValueError(
                f"Teacher and student do not match: {field} is {teacher_value!r} for the teacher and {student_value!r} "
                "for the student. Distill a student converted from the same checkpoint as the teacher."
            )
    if list(teacher_config.out_indices) != list(student_config.out_indices):
        raise ValueError(
            f"Teacher and student tap different layers (out_indices {teacher_config.out_indices} vs "
            f"{student_config.out_indices})."
        )
