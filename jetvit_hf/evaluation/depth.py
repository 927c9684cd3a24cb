"""Depth evaluation: a depth model's predicted disparity (`predicted_depth`, in a placement's autocast), `DepthMetrics`
set up for a set of targets, and ordinal accuracy on pairs of pixels in DA-2K's format, from DA-2K's annotations or
sampled where the teacher's disparities differ by more than `ORDINAL_RATIO`.
"""

from collections.abc import Iterable, Sequence

import torch
from tqdm.auto import tqdm

from ..device import Placement, resolve_placement
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


def predicted_depth(model: torch.nn.Module, pixel_values: torch.Tensor, placement: Placement) -> torch.Tensor:
    """`[B, H, W]` float32 predicted disparity of a depth model at its input resolution, on the model's device; the
    forward runs in `placement`'s autocast."""
    with placement.autocast():
        prediction = task_features(model, model_inputs(pixel_values, model), with_prediction=True).prediction
    return prediction.float()


def ordinal_hits(predictions: Iterable[torch.Tensor], images: EvalImages, pairs: list[list[dict]]) -> tuple[float, int]:
    """(correctly ranked pairs, pairs) of `[B, H, W]` disparity batches in the order of `images`, each map upsampled to
    its image's original resolution, where the pairs (DA-2K format, one list per image) lie."""
    correct, total, index = 0.0, 0, 0
    for batch in predictions:
        for prediction in batch:
            if pairs[index]:
                disparity = resize_map(prediction, images.original_sizes[index])
                correct += ordinal_pair_accuracy(disparity, pairs[index]) * len(pairs[index])
                total += len(pairs[index])
            index += 1
    return correct, total


def ordinal_accuracy(model: torch.nn.Module, images: EvalImages, pairs: list[list[dict]], progress: bool = False,
                     placement: Placement | None = None) -> float:
    """Fraction of all pairs (DA-2K format, per image, at its original resolution) that `model`'s disparity, upsampled
    to the original resolution, ranks right. The model (put in eval mode) and the images run on `placement` (default:
    `resolve_placement()`, a GPU when there is one)."""
    placement = placement or resolve_placement()
    placement.module(model).eval()
    images = images.to(placement.device)
    with torch.inference_mode():
        batches = tqdm(images.batches, desc="ordinal accuracy", disable=not progress, leave=False)
        correct, total = ordinal_hits((predicted_depth(model, pixels, placement) for pixels in batches), images, pairs)
    if total == 0:
        raise ValueError("Ordinal accuracy needs at least one pair.")
    return correct / total
