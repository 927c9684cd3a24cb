"""Evaluation of a JetViT against its teacher (evaluation notes, sections 1-3), and DINOv3's linear probe.

- Depth: AbsRel and delta1..3 after per-image least-squares scale-shift alignment in disparity space, in both modes of
  `metrics.DepthMetrics` ("disparity", Depth Anything's; "depth", MiDaS/Marigold's), against the teacher's predicted
  disparity and, where the data has a `depth` column, against ground truth.
- Ordinal accuracy: DA-2K's annotation format, or pairs sampled where the teacher's disparity ratio exceeds 1.1 (tier
  T1 of the notes).
- Segmentation: mIoU and pixel accuracy over the whole dataset (ignore index 255) of a linear probe on the layer-normed
  last-layer patch tokens, trained on frozen features following the DINOv3 protocol (`train_linear_probe`).
- Features: per layer, the cosine between the student's and the teacher's patch tokens after each layer, both normed
  with their final LayerNorm.

Evaluation images are resized for the model (`model_input_size`); predictions are compared with ground truth at the
image's original resolution (bilinear upsampling) and with the teacher at the model's resolution.
"""

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..convert import load_jetvit
from ..io import atomic_directory, atomic_write_json
from ..models.jetvit.configuration_jetvit import JetViTConfig
from ..train.targets import check_teacher_student, task_features, unwrap
from .metrics import (
    DEPTH_MODES,
    DepthMetrics,
    SegmentationMetrics,
    load_da2k_annotations,
    ordinal_pair_accuracy,
)
from ..models.jetvit.modeling_jetvit import (
    JetViTForDepthEstimation,
    JetViTForSemanticSegmentation,
    JetViTLinearProbeHead,
    JetViTPreTrainedModel,
)

IGNORE_INDEX = 255
ORDINAL_RATIO = 1.1  # teacher-sampled pairs: the closer point's disparity exceeds the farther one's by this factor
EVAL_TASKS = ("features", "depth", "segmentation")
PROBE_WEIGHTS = "probe.safetensors"
PROBE_CONFIG = "probe.json"
REPORT_SCHEMA = "jetvit-eval/1"


# ----------------------------------------------------------------------------------------------------------------------
# Models and evaluation images


def is_depth_model(model: torch.nn.Module) -> bool:
    return isinstance(unwrap(model), JetViTForDepthEstimation)


@dataclass
class EvalImages:
    """A fixed evaluation set: model inputs in batches, plus each image's original size and optional ground truth.

    Image `i` (in batch order) has `original_sizes[i] = (H, W)` and, when the data has them, `depth[i]` (`[H, W]`
    float32 metres, 0 or NaN where invalid) and `labels[i]` (`[H, W]` int64 class ids, `IGNORE_INDEX` unlabelled).
    A batch holds consecutive images of one model input size.
    """

    batches: list[torch.Tensor]
    original_sizes: list[tuple[int, int]]
    depth: list[torch.Tensor] | None = None
    labels: list[torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.original_sizes)

    def batch_slices(self):
        """`(pixel_values, first_image_index)` for each batch."""
        start = 0
        for pixel_values in self.batches:
            yield pixel_values, start
            start += len(pixel_values)


def model_input_size(height: int, width: int, image_size, patch_size: int) -> tuple[int, int]:
    """The model input size of a `height` x `width` image: `image_size` (H, W) as given, or an int: the short side
    scaled to `image_size` with the aspect ratio kept, each side rounded to the nearest multiple of `patch_size`."""
    if isinstance(image_size, (tuple, list)):
        return int(image_size[0]), int(image_size[1])
    if not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"image_size must be a positive int or an (height, width) pair, got {image_size!r}.")
    scale = image_size / min(height, width)
    return tuple(max(patch_size, round(side * scale / patch_size) * patch_size) for side in (height, width))


def default_image_size(config: JetViTConfig):
    size = config.image_size
    return size if isinstance(size, int) else tuple(size)


def build_eval_images(images, patch_size: int, image_size, batch_size: int = 8, depth=None,
                      labels=None) -> EvalImages:
    """`EvalImages` from PIL images (and optional per-image ground-truth arrays), resized by `model_input_size`."""
    from ..data.images import make_transform

    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    batches, current, current_size, original_sizes = [], [], None, []
    for image in images:
        size = model_input_size(image.height, image.width, image_size, patch_size)
        if current and (size != current_size or len(current) == batch_size):
            batches.append(torch.stack(current))
            current = []
        current.append(make_transform(size, patch_size, train=False)(image))
        current_size = size
        original_sizes.append((image.height, image.width))
    if current:
        batches.append(torch.stack(current))
    for name, maps in (("depth", depth), ("labels", labels)):
        for index, (array, size) in enumerate(zip(maps or [], original_sizes)):
            if tuple(array.shape) != size:
                raise ValueError(f"Image {index}: its {name} map is {tuple(array.shape)} but the image is {size}.")
    return EvalImages(batches, original_sizes, depth, labels)


def load_eval_images(data, patch_size: int, image_size, num_images: int | None = None, batch_size: int = 8,
                     image_column: str | None = None) -> EvalImages:
    """The first `num_images` images of `data` (anything `data.load_images` reads, e.g. `scenes.scene_dataset`),
    with its `depth` and `labels` columns as ground truth when it has them."""
    from ..data.images import find_image_column, load_images

    if isinstance(data, EvalImages):
        return data
    dataset = load_images(data, image_column=image_column)
    column = find_image_column(dataset, image_column)
    if num_images is not None:
        if num_images <= 0:
            raise ValueError(f"num_images must be positive, got {num_images}.")
        dataset = dataset.select(range(min(num_images, len(dataset))))
    truth = [name for name in ("depth", "labels") if name in dataset.column_names]
    rows = dataset.select_columns([column, *truth]).with_format("numpy", columns=truth, output_all_columns=True)
    images, depth, labels = [], [], []
    for row in rows:
        images.append(row[column].convert("RGB"))
        if "depth" in truth:
            depth.append(torch.as_tensor(np.asarray(row["depth"], dtype=np.float32)))
        if "labels" in truth:
            labels.append(torch.as_tensor(np.asarray(row["labels"], dtype=np.int64)))
    return build_eval_images(images, patch_size, image_size, batch_size, depth or None, labels or None)


def load_da2k_images(annotations_path: str | os.PathLike, patch_size: int, image_size,
                     batch_size: int = 8) -> tuple[EvalImages, list[list[dict]]]:
    """DA-2K's images (paths relative to the annotation file's folder) and each image's pairs, in the same order."""
    from PIL import Image

    annotations = load_da2k_annotations(annotations_path)
    if not annotations:
        raise ValueError(f"{annotations_path}: no annotated images.")
    root = Path(annotations_path).parent
    images = []
    for name in annotations:
        if not (root / name).is_file():
            raise ValueError(f"{annotations_path}: image {name!r} not found under {root}.")
        images.append(Image.open(root / name).convert("RGB"))
    eval_images = build_eval_images(images, patch_size, image_size, batch_size)
    return eval_images, list(annotations.values())


def model_inputs(pixel_values: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """`pixel_values` on the device and in the dtype of `model`'s parameters."""
    parameter = next(model.parameters())
    return pixel_values.to(device=parameter.device, dtype=parameter.dtype)


def resize_map(values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """An `[H, W]` map or `[C, H, W]` maps resized bilinearly to `size` (`align_corners=True`, as Depth Anything's
    `infer_image`; for logits DINOv3 uses `False`, see `probe_logits`)."""
    if tuple(values.shape[-2:]) == tuple(size):
        return values
    batched = values[None, None] if values.ndim == 2 else values[None]
    resized = F.interpolate(batched.float(), size=size, mode="bilinear", align_corners=True)
    return resized[0, 0] if values.ndim == 2 else resized[0]


# ----------------------------------------------------------------------------------------------------------------------
# Depth and ordinal accuracy


def depth_range(targets: Sequence[torch.Tensor], target_is_depth: bool) -> tuple[float, float]:
    """The (min, max) valid depth over all targets: the clipping range of `DepthMetrics(mode="depth")`, as a dataset's
    evaluation range (e.g. NYUv2's 1e-3..10 m) would be."""
    values = []
    for target in targets:
        valid = target[torch.isfinite(target) & (target > 0)].double()
        if valid.numel():
            values += [valid.min(), valid.max()]
    if not values:
        raise ValueError("No valid (finite, positive) depth target in the evaluation set.")
    low, high = torch.stack(values).min().item(), torch.stack(values).max().item()
    return (low, high) if target_is_depth else (1.0 / high, 1.0 / low)


def make_depth_metrics(mode: str, targets: Sequence[torch.Tensor], target_is_depth: bool) -> DepthMetrics:
    """`DepthMetrics` for these targets; in `"depth"` mode the prediction is clipped to their depth range."""
    if mode not in DEPTH_MODES:
        raise ValueError(f"depth mode must be one of {DEPTH_MODES}, got {mode!r}.")
    if mode == "disparity":
        return DepthMetrics("disparity", target_is_depth=target_is_depth, min_depth=None)
    min_depth, max_depth = depth_range(targets, target_is_depth)
    return DepthMetrics("depth", target_is_depth=target_is_depth, min_depth=min_depth, max_depth=max_depth)


def sample_ordinal_pairs(disparity: torch.Tensor, num_pairs: int, generator: torch.Generator,
                         ratio: float = ORDINAL_RATIO) -> list[dict]:
    """Up to `num_pairs` DA-2K-format pairs of pixels whose disparities (both positive) differ by more than `ratio`;
    `point1` (the closer point, `closer_point: "point1"`) has the larger disparity."""
    height, width = disparity.shape
    disparity = disparity.double().cpu()
    candidates = torch.randint(0, height * width, (4 * num_pairs, 2), generator=generator)
    first, second = disparity.flatten()[candidates[:, 0]], disparity.flatten()[candidates[:, 1]]
    low, high = torch.minimum(first, second), torch.maximum(first, second)
    keep = (low > 0) & (high > ratio * low)
    pairs = []
    for (a, b), a_closer in zip(candidates[keep][:num_pairs].tolist(), (first > second)[keep][:num_pairs].tolist()):
        closer, farther = (a, b) if a_closer else (b, a)
        pairs.append({"point1": list(divmod(closer, width)), "point2": list(divmod(farther, width)),
                      "closer_point": "point1"})
    return pairs


# ----------------------------------------------------------------------------------------------------------------------
# Linear probe (DINOv3 protocol on frozen features)


def make_linear_probe(hidden_size: int, num_labels: int, dropout: float = 0.1) -> JetViTLinearProbeHead:
    """DINOv3's linear head (Dropout2d -> BatchNorm -> 1x1 conv; conv weights N(0, 0.01), bias 0): the module of
    `JetViTForSemanticSegmentation.head`, so a trained probe's state dict loads there too."""
    config = JetViTConfig(hidden_size=hidden_size, num_attention_heads=1, intermediate_size=hidden_size,
                          num_labels=num_labels, semantic_head_dropout=dropout)
    probe = JetViTLinearProbeHead(config)
    torch.nn.init.normal_(probe.classifier.weight, std=0.01)
    torch.nn.init.zeros_(probe.classifier.bias)
    return probe


def probe_features(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The layer-normed last-layer patch tokens of `model` as a `[B, C, H / patch, W / patch]` map."""
    tokens = task_features(model, pixel_values, targets="last").features[0]
    patch_size = unwrap(model).config.patch_size
    grid = (pixel_values.shape[-2] // patch_size, pixel_values.shape[-1] // patch_size)
    return tokens.reshape(tokens.shape[0], *grid, -1).permute(0, 3, 1, 2)


def probe_logits(probe: torch.nn.Module, feature_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`[K, H, W]` logits of one image's `[C, h, w]` feature map, upsampled bilinearly (`align_corners=False`) to
    `size` (DINOv3's training and `predict`)."""
    logits = probe(feature_map[None].to(next(probe.parameters()).dtype))
    return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)[0]


def infer_num_labels(labels: Sequence[torch.Tensor], ignore_index: int = IGNORE_INDEX) -> int:
    """One more than the largest label that is not `ignore_index`."""
    largest = max((int(label[label != ignore_index].max()) for label in labels if (label != ignore_index).any()),
                  default=-1)
    if largest < 0:
        raise ValueError("The labels hold no labelled pixel.")
    return largest + 1


def require_labels(images: EvalImages, what: str) -> None:
    if images.labels is None:
        raise ValueError(f"{what} needs segmentation labels: a `labels` column of [H, W] class ids in the data "
                         "(e.g. jetvit_hf.scenes.scene_dataset).")


def train_linear_probe(model: torch.nn.Module, dataset, num_labels: int | None = None, *, image_size=None,
                       num_images: int | None = None, steps: int = 1000, batch_size: int = 16, lr: float = 1e-3,
                       weight_decay: float = 1e-3, warmup_steps: int | None = None, dropout: float = 0.1,
                       ignore_index: int = IGNORE_INDEX, seed: int = 0, progress: bool = True):
    """Train DINOv3's linear segmentation probe on `model`'s frozen, layer-normed last-layer patch tokens.

    The features of every image are computed once (no augmentation). Each step draws `batch_size` images (a seeded
    permutation per epoch), upsamples the probe's logits bilinearly to each image's label size and minimises the
    cross-entropy over labelled pixels (`ignore_index` dropped), with AdamW (`lr`, `weight_decay`, betas (0.9, 0.999)),
    linear warm-up for `warmup_steps` (default DINOv3's 1500 of 40k, scaled to `steps`) then cosine decay to 0.

    Args:
        model: Any JetViT (or a supernet with a subnet set); it is not changed.
        dataset: `EvalImages` or data for `load_eval_images` with a `labels` column. All images must share one model
            input size (pass `image_size=(H, W)` for data of mixed sizes).
        num_labels: Default: one more than the largest label.

    Returns the trained probe (a `JetViTLinearProbeHead`, in eval mode) with `probe.training_info` (a dict).
    """
    base = unwrap(model)
    images = load_eval_images(dataset, base.config.patch_size, image_size or default_image_size(base.config),
                              num_images, batch_size=batch_size)
    require_labels(images, "Linear-probe training")
    if len({tuple(batch.shape[-2:]) for batch in images.batches}) > 1:
        raise ValueError("Linear-probe training needs one model input size for every image; pass image_size=(H, W).")
    if steps <= 0 or batch_size <= 0:
        raise ValueError(f"steps and batch_size must be positive, got {steps} and {batch_size}.")
    num_labels = num_labels or infer_num_labels(images.labels, ignore_index)
    warmup_steps = round(steps * 1500 / 40000) if warmup_steps is None else warmup_steps
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        batches = tqdm(images.batches, desc="linear probe: features", disable=not progress, leave=False)
        features = torch.cat([probe_features(model, model_inputs(pixels, model)).float().cpu() for pixels in batches])
    model.train(was_training)

    generator = torch.Generator().manual_seed(seed)
    probe = make_linear_probe(features.shape[1], num_labels, dropout)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999))

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, steps - warmup_steps)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    order, position, losses = torch.randperm(len(images), generator=generator), 0, []
    probe.train()
    for _ in tqdm(range(steps), desc="linear probe: training", disable=not progress, leave=False):
        if position + batch_size > len(order):
            order, position = torch.randperm(len(images), generator=generator), 0
        indices = order[position : position + batch_size].tolist()
        position += batch_size
        logits = probe(features[indices])
        loss_sum, count = 0.0, 0
        for map_logits, index in zip(logits, indices):
            label = images.labels[index]
            upsampled = F.interpolate(map_logits[None], size=label.shape, mode="bilinear", align_corners=False)
            loss_sum = loss_sum + F.cross_entropy(upsampled, label[None], ignore_index=ignore_index, reduction="sum")
            count += int((label != ignore_index).sum())
        loss = loss_sum / max(count, 1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    probe.eval()
    probe.training_info = {
        "features": "layer-normed last-layer patch tokens (frozen)",
        "num_images": len(images), "steps": steps, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
        "warmup_steps": warmup_steps, "schedule": "linear warm-up, cosine decay to 0", "optimizer": "AdamW",
        "dropout": dropout, "ignore_index": ignore_index, "seed": seed,
        "final_loss": float(np.mean(losses[-max(1, steps // 20):])),
    }
    return probe


def save_linear_probe(probe: JetViTLinearProbeHead, directory: str | os.PathLike, overwrite: bool = False) -> Path:
    """Atomically write `probe.safetensors` and `probe.json` (sizes and training settings)."""
    from safetensors.torch import save_file

    with atomic_directory(directory, overwrite=overwrite) as staging:
        state = {name: tensor.detach().contiguous().cpu() for name, tensor in probe.state_dict().items()}
        save_file(state, staging / PROBE_WEIGHTS, metadata={"format": "pt"})
        atomic_write_json(staging / PROBE_CONFIG, {
            "hidden_size": probe.classifier.in_channels,
            "num_labels": probe.classifier.out_channels,
            "dropout": probe.dropout.p,
            "training": getattr(probe, "training_info", None),
        })
    return Path(directory)


def load_linear_probe(directory: str | os.PathLike) -> JetViTLinearProbeHead:
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / PROBE_CONFIG).is_file():
        raise ValueError(f"{directory} holds no {PROBE_CONFIG}; save a probe with training/linear_probe.py.")
    meta = json.loads((directory / PROBE_CONFIG).read_text())
    probe = make_linear_probe(meta["hidden_size"], meta["num_labels"], meta["dropout"])
    probe.load_state_dict(load_file(directory / PROBE_WEIGHTS), strict=True)
    probe.training_info = meta["training"]
    return probe.eval()


def check_probe(probe: JetViTLinearProbeHead, model: torch.nn.Module) -> None:
    hidden_size = unwrap(model).config.hidden_size
    if probe.classifier.in_channels != hidden_size:
        raise ValueError(f"The probe reads {probe.classifier.in_channels} channels but the model's features have "
                         f"{hidden_size}.")


def probe_segmentation_metrics(model: torch.nn.Module, probe: JetViTLinearProbeHead, images: EvalImages) -> dict:
    """`{"mean_iou", "pixel_accuracy", "mean_accuracy"}` over the whole set of `probe` applied to `model`'s features
    (logits upsampled to each label map), against the labels (ignore index 255). `model` should be in eval mode."""
    require_labels(images, "Segmentation metrics")
    check_probe(probe, model)
    metrics = SegmentationMetrics(probe.classifier.out_channels, IGNORE_INDEX)
    with torch.inference_mode():
        for pixels, first in images.batch_slices():
            for offset, feature_map in enumerate(probe_features(model, model_inputs(pixels, model)).float().cpu()):
                index = first + offset
                prediction = probe_logits(probe, feature_map, images.original_sizes[index]).argmax(0)
                metrics.update(prediction, images.labels[index])
    computed = metrics.compute()
    return {key: computed[key] for key in ("mean_iou", "pixel_accuracy", "mean_accuracy")}


# ----------------------------------------------------------------------------------------------------------------------
# The evaluation report


def _layer_outputs(model: torch.nn.Module, pixel_values: torch.Tensor):
    """Every layer's patch tokens normed with the final LayerNorm (`[B, N, C]` each, layer order) and the predicted
    depth (depth models) from one forward pass."""
    base = unwrap(model)
    prefix = base.config.num_prefix_tokens
    if isinstance(base, JetViTForDepthEstimation):
        outputs = base(pixel_values, output_hidden_states=True, return_dict=True)
        layernorm, hidden_states, prediction = base.jetvit.layernorm, outputs.hidden_states, outputs.predicted_depth
    else:
        encoder = base.jetvit if isinstance(base, JetViTForSemanticSegmentation) else base
        outputs = encoder(pixel_values, output_hidden_states=True, return_dict=True)
        layernorm, hidden_states, prediction = encoder.layernorm, outputs.hidden_states, None
    return [layernorm(hidden)[:, prefix:] for hidden in hidden_states[1:]], prediction


def _resolve_tasks(tasks, model, images: EvalImages | None, probe) -> list[str]:
    if tasks is None and images is None:
        return ["depth"]
    if tasks is None:
        tasks = ["features"]
        tasks += ["depth"] if is_depth_model(model) else []
        tasks += ["segmentation"] if probe is not None or (images is not None and images.labels is not None) else []
        return tasks
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    unknown = [task for task in tasks if task not in EVAL_TASKS]
    if unknown:
        raise ValueError(f"Unknown evaluation task(s) {unknown}; allowed: {list(EVAL_TASKS)}.")
    if "depth" in tasks and not is_depth_model(model):
        raise ValueError(f"The depth task needs a depth model (JetViTForDepthEstimation), got "
                         f"{type(unwrap(model)).__name__}.")
    return tasks


def evaluate_model(model: torch.nn.Module, teacher: torch.nn.Module, images: EvalImages | None = None, *,
                   tasks=None, depth_modes: Sequence[str] = DEPTH_MODES, da2k: str | os.PathLike | None = None,
                   probe: JetViTLinearProbeHead | None = None, num_labels: int | None = None,
                   probe_steps: int = 1000, pairs_per_image: int = 64, seed: int = 0, progress: bool = True) -> dict:
    """Evaluate `model` against `teacher` (both JetViT models of one source) on `images`; returns the report dict.

    Args:
        tasks: Any of `EVAL_TASKS`. Default: features; depth (with ordinal accuracy) for depth models; segmentation
            when a probe is given or the images have labels.
        depth_modes: `DepthMetrics` modes to report (`"disparity"`: DA mode, `"depth"`: MiDaS/Marigold mode).
        da2k: A DA-2K `annotations.json` (images beside it): ordinal accuracy on its pairs (depth models). Without it,
            ordinal accuracy uses `pairs_per_image` pairs sampled where the teacher's disparity ratio exceeds 1.1.
        probe: A linear probe (`load_linear_probe`), applied to both models. Without one, a probe is trained on the
            teacher's features of `images` (against their labels) for `probe_steps` steps.

    Both models are put in eval mode.
    """
    check_teacher_student(unwrap(teacher).config, unwrap(model).config)
    tasks = _resolve_tasks(tasks, model, images, probe)
    if da2k is not None and not is_depth_model(model):
        raise ValueError("DA-2K ordinal accuracy needs a depth model (JetViTForDepthEstimation).")
    if images is None and (da2k is None or any(task != "depth" for task in tasks)):
        raise ValueError("Evaluation needs images (--data) unless it is only the depth task with --da2k.")
    config = unwrap(model).config
    report = {"schema": REPORT_SCHEMA, "tasks": tasks, "attention_types": list(config.attention_types),
              "layer_indexing": "0-based"}
    if "segmentation" in tasks:
        if probe is None:
            require_labels(images, "Segmentation without a given probe")
            probe = train_linear_probe(teacher, images, num_labels, steps=probe_steps, seed=seed, progress=progress)
            source = f"trained on the teacher's features of the evaluation images ({probe_steps} steps)"
        else:
            source = "given"
        check_probe(probe, model)
        report["segmentation"] = _segmentation_report(model, teacher, images, probe, source, progress)
    if images is not None:
        report["num_images"] = len(images)
    if images is not None and ("features" in tasks or "depth" in tasks):
        report.update(_main_pass(model, teacher, images, tasks, depth_modes, da2k is None, pairs_per_image, seed,
                                 progress))
    if da2k is not None:
        report["ordinal"] = _da2k_report(model, teacher, da2k, progress)
    return report


def _main_pass(model, teacher, images: EvalImages, tasks, depth_modes, teacher_pairs: bool, pairs_per_image: int,
               seed: int, progress: bool) -> dict:
    """Per-layer cosine, depth metrics and teacher-pair ordinal accuracy, from one forward of each model per batch."""
    depth_task = "depth" in tasks
    num_layers = unwrap(model).config.num_hidden_layers
    cosine_sums, token_count = torch.zeros(num_layers, dtype=torch.float64), 0
    student_depth, teacher_depth = [], []
    correct = total = 0
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    teacher.eval()
    with torch.inference_mode():
        for pixel_values, first in tqdm(list(images.batch_slices()), desc="jetvit eval", disable=not progress):
            student_layers, student_prediction = _layer_outputs(model, model_inputs(pixel_values, model))
            teacher_layers, teacher_prediction = _layer_outputs(teacher, model_inputs(pixel_values, teacher))
            for layer, (student, reference) in enumerate(zip(student_layers, teacher_layers)):
                cosine = F.cosine_similarity(student.double().cpu(), reference.double().cpu(), dim=-1)
                cosine_sums[layer] += cosine.sum()
            token_count += student_layers[0].shape[0] * student_layers[0].shape[1]
            if not depth_task:
                continue
            for offset, (prediction, reference) in enumerate(zip(student_prediction, teacher_prediction)):
                prediction, reference = prediction.float().cpu(), reference.float().cpu()
                student_depth.append(prediction)
                teacher_depth.append(reference)
                if teacher_pairs:  # at the original resolution, as DA-2K's pairs
                    size = images.original_sizes[first + offset]
                    pairs = sample_ordinal_pairs(resize_map(reference, size), pairs_per_image, generator)
                    if pairs:
                        correct += ordinal_pair_accuracy(resize_map(prediction, size), pairs) * len(pairs)
                        total += len(pairs)
    result = {}
    if "features" in tasks:
        per_layer = (cosine_sums / token_count).tolist()
        result["features"] = {
            "per_layer_cosine": per_layer,
            "mean_cosine": float(np.mean(per_layer)),
            "definition": "per layer (0-based), mean over patch tokens and images of the cosine between the "
                          "student's and the teacher's hidden states after that layer, each normed with its final "
                          "LayerNorm",
        }
    if not depth_task:
        return result
    depth = {"vs_teacher": {}}
    for mode in depth_modes:
        metric = make_depth_metrics(mode, teacher_depth, target_is_depth=False)
        for prediction, reference in zip(student_depth, teacher_depth):
            metric.update(prediction, reference)
        depth["vs_teacher"][mode] = metric.compute()
    if images.depth is not None:
        depth["vs_ground_truth"] = {}
        for model_name, predictions in (("student", student_depth), ("teacher", teacher_depth)):
            depth["vs_ground_truth"][model_name] = {}
            for mode in depth_modes:
                metric = make_depth_metrics(mode, images.depth, target_is_depth=True)
                for prediction, target in zip(predictions, images.depth):
                    metric.update(resize_map(prediction, target.shape), target)
                depth["vs_ground_truth"][model_name][mode] = metric.compute()
    result["depth"] = depth
    if teacher_pairs:  # without any pair (a nearly flat teacher prediction) the accuracy is undefined, not an error
        result["ordinal"] = {"source": f"pairs sampled where the teacher's disparity ratio > {ORDINAL_RATIO}",
                             "accuracy": correct / total if total else None, "num_pairs": total}
    return result


def _segmentation_report(model, teacher, images: EvalImages, probe, source: str, progress: bool) -> dict:
    num_labels = probe.classifier.out_channels
    names = ("student", "teacher", "student_vs_teacher") if images.labels is not None else ("student_vs_teacher",)
    metrics = {name: SegmentationMetrics(num_labels, IGNORE_INDEX) for name in names}
    model.eval()
    teacher.eval()
    with torch.inference_mode():
        for pixel_values, first in tqdm(list(images.batch_slices()), desc="jetvit eval: segmentation",
                                        disable=not progress):
            student_maps = probe_features(model, model_inputs(pixel_values, model)).cpu()
            teacher_maps = probe_features(teacher, model_inputs(pixel_values, teacher)).cpu()
            for offset, (student_map, teacher_map) in enumerate(zip(student_maps, teacher_maps)):
                size = images.original_sizes[first + offset]
                student = probe_logits(probe, student_map, size).argmax(0)
                reference = probe_logits(probe, teacher_map, size).argmax(0)
                metrics["student_vs_teacher"].update(student, reference)
                if images.labels is not None:
                    metrics["student"].update(student, images.labels[first + offset])
                    metrics["teacher"].update(reference, images.labels[first + offset])
    report = {"probe": source, "num_labels": num_labels, "ignore_index": IGNORE_INDEX}
    for name, metric in metrics.items():
        computed = metric.compute()
        report[name] = {key: computed[key] for key in ("mean_iou", "pixel_accuracy", "mean_accuracy")}
    return report


def _da2k_report(model, teacher, annotations_path, progress: bool) -> dict:
    config = unwrap(model).config
    images, pairs = load_da2k_images(annotations_path, config.patch_size, default_image_size(config))
    result = {"source": f"DA-2K annotations {annotations_path}", "num_pairs": sum(len(p) for p in pairs)}
    for name, network in (("accuracy", model), ("teacher_accuracy", teacher)):
        result[name] = ordinal_accuracy(network, images, pairs, progress)
    return result


def ordinal_accuracy(model: torch.nn.Module, images: EvalImages, pairs: list[list[dict]],
                     progress: bool = False) -> float:
    """Fraction of all pairs (DA-2K format, per image, at its original resolution) that `model`'s disparity, upsampled
    to the original resolution, ranks right."""
    correct = total = 0
    model.eval()
    with torch.inference_mode():
        batches = tqdm(list(images.batch_slices()), desc="ordinal accuracy", disable=not progress, leave=False)
        for pixel_values, first in batches:
            predictions = task_features(model, model_inputs(pixel_values, model), with_prediction=True).prediction
            for offset, prediction in enumerate(predictions):
                image_pairs = pairs[first + offset]
                if image_pairs:
                    disparity = resize_map(prediction.float().cpu(), images.original_sizes[first + offset])
                    correct += ordinal_pair_accuracy(disparity, image_pairs) * len(image_pairs)
                    total += len(image_pairs)
    if total == 0:
        raise ValueError("Ordinal accuracy needs at least one pair.")
    return correct / total


def run_evaluation(model, teacher, data=None, *, output: str | os.PathLike | None = None, tasks=None,
                   depth_modes: Sequence[str] = DEPTH_MODES, da2k=None, probe=None, num_labels: int | None = None,
                   probe_steps: int = 1000, num_images: int | None = None, image_size=None, batch_size: int = 8,
                   pairs_per_image: int = 64, seed: int = 0, progress: bool = True) -> dict:
    """`evaluate_model` from paths (or models): `model` and `teacher` through `load_jetvit`, `data` through
    `load_eval_images` (resized for the model, default size its config's `image_size`), `probe` through
    `load_linear_probe`. The report records its inputs; with `output`, it is written there atomically as JSON."""
    sources = {"model": model, "teacher": teacher, "data": data, "da2k": da2k, "probe": probe}
    model = model if isinstance(model, torch.nn.Module) else load_jetvit(model)
    teacher = teacher if isinstance(teacher, torch.nn.Module) else load_jetvit(teacher)
    config = unwrap(model).config
    image_size = image_size or default_image_size(config)
    images = None
    if data is not None:
        images = load_eval_images(data, config.patch_size, image_size, num_images, batch_size)
    if isinstance(probe, (str, os.PathLike)):
        probe = load_linear_probe(probe)
    report = evaluate_model(model, teacher, images, tasks=tasks, depth_modes=depth_modes, da2k=da2k, probe=probe,
                            num_labels=num_labels, probe_steps=probe_steps, pairs_per_image=pairs_per_image,
                            seed=seed, progress=progress)
    report["inputs"] = {name: str(value) if isinstance(value, (str, os.PathLike)) else type(value).__name__
                        for name, value in sources.items() if value is not None}
    report["image_size"] = list(image_size) if isinstance(image_size, (tuple, list)) else image_size
    if output is not None:
        atomic_write_json(output, report)
    return report


def format_report(report: dict) -> str:
    """A short plain-text table of a report's headline numbers."""
    lines = ["| metric | value |", "|---|---:|"]
    features = report.get("features")
    if features:
        lines.append(f"| feature cosine, mean over layers | {features['mean_cosine']:.4f} |")
        worst = int(np.argmin(features["per_layer_cosine"]))
        lines.append(f"| feature cosine, worst layer ({worst}, 0-based) | {features['per_layer_cosine'][worst]:.4f} |")
    for reference, by_model in report.get("depth", {}).items():
        rows = {"student": by_model} if reference == "vs_teacher" else by_model
        for name, by_mode in rows.items():
            for mode, values in by_mode.items():
                label = f"depth {reference.replace('_', ' ')}" + ("" if reference == "vs_teacher" else f", {name}")
                lines.append(f"| {label} ({mode} mode): AbsRel / delta1 | {values['abs_rel']:.4f} / "
                             f"{values['delta1']:.4f} |")
    ordinal = report.get("ordinal")
    if ordinal:
        teacher = f" (teacher {ordinal['teacher_accuracy']:.4f})" if "teacher_accuracy" in ordinal else ""
        lines.append(f"| ordinal accuracy, {ordinal['num_pairs']} pairs | {ordinal['accuracy']:.4f}{teacher} |")
    segmentation = report.get("segmentation")
    if segmentation:
        for name in ("student", "teacher", "student_vs_teacher"):
            if name in segmentation:
                values = segmentation[name]
                lines.append(f"| segmentation {name.replace('_', ' ')}: mIoU / aAcc | {values['mean_iou']:.4f} / "
                             f"{values['pixel_accuracy']:.4f} |")
    return "\n".join(lines)
