"""DINOv3's linear segmentation probe on frozen features: a BatchNorm + 1x1 convolution head on the layer-normed
last-layer patch tokens (the head of `JetViTForSemanticSegmentation`), its training (`train_linear_probe` from a model,
`fit_linear_probe` from features already computed), saving and loading (`probe.safetensors` and `probe.json`), and its
mIoU and pixel accuracy over a labelled evaluation set (ignore index 255), with each image's confusion matrix for the
bootstrap. Models run where `jetvit_hf.device` places them.
"""

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..device import Placement, resolve_placement
from ..io import atomic_directory, atomic_write_json, check_safetensors, read_json
from ..models.jetvit.configuration_jetvit import JetViTConfig
from ..models.jetvit.modeling_jetvit import JetViTLinearProbeHead
from ..train.targets import task_features, unwrap
from .images import IGNORE_INDEX, EvalImages, default_image_size, load_eval_images, model_inputs, require_labels
from .metrics import SegmentationMetrics

PROBE_WEIGHTS = "probe.safetensors"
PROBE_CONFIG = "probe.json"


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


def probe_feature_maps(model: torch.nn.Module, images: EvalImages, placement: Placement,
                       progress: bool = False) -> list[torch.Tensor]:
    """Per batch of `images` (already on the placement's device), `model`'s float32 `probe_features`; the forwards run
    without gradients in the placement's autocast."""
    maps = []
    with torch.inference_mode():
        for pixels in tqdm(images.batches, desc="linear probe: features", disable=not progress, leave=False):
            with placement.autocast():
                features = probe_features(model, model_inputs(pixels, model))
            maps.append(features.float())
    return maps


def _check_probe_training(steps: int, batch_size: int) -> None:
    if steps <= 0 or batch_size <= 0:
        raise ValueError(f"steps and batch_size must be positive, got {steps} and {batch_size}.")


def train_linear_probe(model: torch.nn.Module, dataset, num_labels: int | None = None, *, image_size=None,
                       num_images: int | None = None, steps: int = 1000, batch_size: int = 16, lr: float = 1e-3,
                       weight_decay: float = 1e-3, warmup_steps: int | None = None, dropout: float = 0.1,
                       ignore_index: int = IGNORE_INDEX, seed: int = 0, progress: bool = True,
                       placement: Placement | None = None):
    """Train DINOv3's linear segmentation probe on `model`'s frozen, layer-normed last-layer patch tokens
    (`fit_linear_probe` on the features of every image, computed once).

    Args:
        model: Any JetViT (or a supernet with a subnet set); its weights are not changed, it is moved to the device.
        dataset: `EvalImages` or data for `load_eval_images` with a `labels` column. All images must share one model
            input size (pass `image_size=(H, W)` for data of mixed sizes).
        num_labels: Default: one more than the largest label.
        placement: Where the features are computed and the probe trained (default `resolve_placement()`: a GPU when
            there is one); the forwards run in its autocast, the probe trains in float32.

    Returns the trained probe (a `JetViTLinearProbeHead` on the placement's device, in eval mode) with
    `probe.training_info` (a dict).
    """
    base = unwrap(model)
    images = load_eval_images(dataset, base.config.patch_size, image_size or default_image_size(base.config),
                              num_images, batch_size=batch_size)
    require_labels(images, "Linear-probe training")
    _check_probe_training(steps, batch_size)
    placement = placement or resolve_placement()
    images = images.to(placement.device)
    was_training = model.training
    placement.module(model).eval()
    maps = probe_feature_maps(model, images, placement, progress)
    model.train(was_training)
    return fit_linear_probe(maps, images.labels, num_labels, steps=steps, batch_size=batch_size, lr=lr,
                            weight_decay=weight_decay, warmup_steps=warmup_steps, dropout=dropout,
                            ignore_index=ignore_index, seed=seed, progress=progress)


def fit_linear_probe(maps: Sequence[torch.Tensor], labels: Sequence[torch.Tensor], num_labels: int | None = None, *,
                     steps: int = 1000, batch_size: int = 16, lr: float = 1e-3, weight_decay: float = 1e-3,
                     warmup_steps: int | None = None, dropout: float = 0.1, ignore_index: int = IGNORE_INDEX,
                     seed: int = 0, progress: bool = True):
    """DINOv3's linear segmentation probe fitted to frozen feature maps (`[B, C, h, w]` batches of one size, one
    `[H, W]` label map per image, on one device), trained there in float32.

    Each step draws `batch_size` images (a seeded permutation per epoch), upsamples the probe's logits bilinearly to
    each image's label size and minimises the cross-entropy over labelled pixels (`ignore_index` dropped), with AdamW
    (`lr`, `weight_decay`, betas (0.9, 0.999)), linear warm-up for `warmup_steps` (default DINOv3's 1500 of 40k,
    scaled to `steps`) then cosine decay to 0. Returns the probe in eval mode with `probe.training_info` (a dict).
    """
    if len({tuple(batch.shape[-2:]) for batch in maps}) > 1:
        raise ValueError("Linear-probe training needs one model input size for every image; pass image_size=(H, W).")
    _check_probe_training(steps, batch_size)
    features = torch.cat(list(maps))
    num_labels = num_labels or infer_num_labels(labels, ignore_index)
    warmup_steps = round(steps * 1500 / 40000) if warmup_steps is None else warmup_steps
    generator = torch.Generator().manual_seed(seed)
    probe = make_linear_probe(features.shape[1], num_labels, dropout).to(features.device)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999))

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, steps - warmup_steps)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    labelled = [int((label != ignore_index).sum()) for label in labels]
    order, position, losses = torch.randperm(len(labels), generator=generator), 0, []
    probe.train()
    for _ in tqdm(range(steps), desc="linear probe: training", disable=not progress, leave=False):
        if position + batch_size > len(order):
            order, position = torch.randperm(len(labels), generator=generator), 0
        indices = order[position : position + batch_size].tolist()
        position += batch_size
        loss_sum = 0.0
        for map_logits, index in zip(probe(features[indices]), indices):
            upsampled = F.interpolate(map_logits[None], size=labels[index].shape, mode="bilinear", align_corners=False)
            loss_sum = loss_sum + F.cross_entropy(upsampled, labels[index][None], ignore_index=ignore_index,
                                                  reduction="sum")
        loss = loss_sum / max(sum(labelled[index] for index in indices), 1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    probe.eval()
    probe.training_info = {
        "features": "layer-normed last-layer patch tokens (frozen)",
        "num_images": len(labels), "steps": steps, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
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
    meta = read_json(directory / PROBE_CONFIG)
    check_safetensors([directory / PROBE_WEIGHTS])
    probe = make_linear_probe(meta["hidden_size"], meta["num_labels"], meta["dropout"])
    probe.load_state_dict(load_file(directory / PROBE_WEIGHTS), strict=True)
    probe.training_info = meta["training"]
    return probe.eval()


def check_probe(probe: JetViTLinearProbeHead, model: torch.nn.Module) -> None:
    hidden_size = unwrap(model).config.hidden_size
    if probe.classifier.in_channels != hidden_size:
        raise ValueError(f"The probe reads {probe.classifier.in_channels} channels but the model's features have "
                         f"{hidden_size}.")


def probe_segmentation_metrics(model: torch.nn.Module, probe: JetViTLinearProbeHead, images: EvalImages,
                               placement: Placement | None = None) -> dict:
    """`{"mean_iou", "pixel_accuracy", "mean_accuracy"}` over the whole set of `probe` applied to `model`'s features
    (logits upsampled to each label map), against the labels (ignore index 255). `model` should be in eval mode; it,
    the probe and the images are moved to `placement` (default `resolve_placement()`: a GPU when there is one)."""
    require_labels(images, "Segmentation metrics")
    check_probe(probe, model)
    placement = placement or resolve_placement()
    images = images.to(placement.device)
    maps = probe_feature_maps(placement.module(model), images, placement)
    return probe_map_metrics(probe.to(placement.device), maps, images)


def probe_map_metrics(probe: JetViTLinearProbeHead, maps: Sequence[torch.Tensor], images: EvalImages) -> dict:
    """`{"mean_iou", "pixel_accuracy", "mean_accuracy"}` of `probe` on per-batch feature maps of `images` (on the
    probe's device), against the labels (ignore index 255)."""
    return probe_map_confusions(probe, maps, images)[0]


def probe_map_confusions(probe: JetViTLinearProbeHead, maps: Sequence[torch.Tensor],
                         images: EvalImages) -> tuple[dict, torch.Tensor]:
    """`probe_map_metrics` and each image's confusion matrix: `[N, C, C]` int64 pixel counts on the probe's device
    (rows: label, columns: prediction; pixels labelled 255 left out), whose sum is the matrix the metrics are
    computed from; what `evaluation.bootstrap` resamples for an interval on the mIoU."""
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    num_labels = probe.classifier.out_channels
    metrics = SegmentationMetrics(num_labels, IGNORE_INDEX)  # first: it checks that torchmetrics is installed
    confusions = []
    with torch.inference_mode():
        for feature_maps, (_, first) in zip(maps, images.batch_slices()):
            for offset, feature_map in enumerate(feature_maps):
                index = first + offset
                prediction = probe_logits(probe, feature_map, images.original_sizes[index]).argmax(0)
                metrics.update(prediction, images.labels[index])  # checks the labels, so the next call need not
                confusions.append(multiclass_confusion_matrix(prediction, images.labels[index], num_labels,
                                                              ignore_index=IGNORE_INDEX, validate_args=False))
    computed = metrics.compute()
    return {key: computed[key] for key in ("mean_iou", "pixel_accuracy", "mean_accuracy")}, torch.stack(confusions)
