"""Depth evaluation: `DepthMetrics` set up for a set of targets, and ordinal accuracy on pairs of pixels in DA-2K's
format, from DA-2K's annotations or sampled where the teacher's disparities differ by more than `ORDINAL_RATIO`.
"""

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ..models.jetvit.modeling_jetvit import JetViTForDepthEstimation
from ..train.targets import task_features, unwrap
from .images import EvalImages, model_inputs, resize_map
from .metrics import DEPTH_MODES, DepthMetrics, ordinal_pair_accuracy

ORDINAL_RATIO = 1.1  # teacher-sampled pairs: the closer point's disparity exceeds the farther one's by this factor


def is_depth_model(model: torch.nn.Module) -> bool:
    return isinstance(unwrap(model), JetViTForDepthEstimation)


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
