"""Evaluation metrics: affine-invariant relative depth (AbsRel and delta1..3 after per-image least-squares scale-shift
alignment, in Depth Anything's disparity mode or MiDaS/Marigold's depth mode), dataset-level semantic segmentation
(mIoU, pixel accuracy and mean class accuracy, as mmseg and DINOv3 compute them), DA-2K ordinal accuracy and feature
cosine similarity.

Everything takes torch tensors on any device and of any float dtype; sums and ratios are computed in float64.
"""

import json
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F

DEPTH_MODES = ("disparity", "depth")
DELTA_THRESHOLDS = (1.25, 1.25**2, 1.25**3)
DEPTH_METRIC_NAMES = ("abs_rel", "delta1", "delta2", "delta3")


def _check_same_shape(**tensors: torch.Tensor | None) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items() if t is not None}
    if len(set(shapes.values())) > 1:
        raise ValueError("Shapes must match, got " + ", ".join(f"{name} {shape}" for name, shape in shapes.items()))


def align_scale_shift(
    prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image least squares `scale, shift = argmin sum_mask (scale * prediction + shift - target)^2`.

    Inputs are `[B, ...]`, one image per leading index; returns two float64 tensors of shape `[B]`. This is the
    closed-form solution of MiDaS' 2x2 normal equations (`compute_scale_and_shift`), written with centred sums so that
    it stays accurate when the prediction has a large offset. An image whose masked prediction is constant (singular
    system) gets scale 0 and shift = masked mean of the target; an image with an empty mask gets scale 0 and shift 0.
    Values outside the mask are never read, so they may be NaN or infinite.
    """
    _check_same_shape(prediction=prediction, target=target, mask=mask)
    mask = mask.flatten(1).bool()
    prediction = torch.where(mask, prediction.flatten(1).double(), 0.0)
    target = torch.where(mask, target.flatten(1).double(), 0.0)
    count = mask.sum(1).clamp_min(1)
    mean_prediction = prediction.sum(1) / count
    mean_target = target.sum(1) / count
    centred_prediction = torch.where(mask, prediction - mean_prediction[:, None], 0.0)
    variance = centred_prediction.square().sum(1)
    covariance = (centred_prediction * (target - mean_target[:, None])).sum(1)
    # Exact test on the inputs: a constant prediction's centred sums are rounding noise, not zero. An empty mask
    # gives max = -inf < min = inf, so it is degenerate too.
    degenerate = ~(
        prediction.masked_fill(~mask, float("-inf")).amax(1) > prediction.masked_fill(~mask, float("inf")).amin(1)
    )
    scale = torch.where(degenerate, 0.0, covariance / torch.where(degenerate, 1.0, variance))
    shift = mean_target - scale * mean_prediction
    return scale, shift


def _per_image_depth_metrics(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`[B, 4]` AbsRel and delta1..3 per image over `mask` (`[B, N]` float64 inputs, target > 0 on the mask).

    A pixel counts towards delta_k only if the prediction there is positive: max(p/g, g/p) of a negative p is
    negative and would otherwise pass the threshold.
    """
    count = mask.sum(1).clamp_min(1).double()
    prediction = torch.where(mask, prediction, 1.0)
    target = torch.where(mask, target, 1.0)
    abs_rel = torch.where(mask, (prediction - target).abs() / target, 0.0).sum(1) / count
    ratio = torch.maximum(prediction / target, target / prediction)
    accurate = mask & (prediction > 0)
    deltas = [(accurate & (ratio < threshold)).sum(1) / count for threshold in DELTA_THRESHOLDS]
    return torch.stack([abs_rel, *deltas], dim=1)


class DepthMetrics:
    """AbsRel and delta1..3 of relative (affine-invariant) depth, per image and then averaged over all images seen.

    The prediction is always disparity-like (Depth Anything's relative output). Per image, it is least-squares aligned
    to the ground-truth disparity (`1 / target` if `target_is_depth`, else `target`) over the valid pixels, then:

    - `mode="disparity"` ("DA mode", how Depth Anything's authors describe their evaluation): metrics between the
      aligned disparity and the ground-truth disparity.
    - `mode="depth"` ("MiDaS/Marigold mode"): the aligned disparity is clipped to >= 1 / `max_depth` (to > 0 without
      `max_depth`: floored at float64 eps, i.e. a huge but finite depth), inverted, clipped to [`min_depth`,
      `max_depth`], and compared with the ground-truth depth.

    The two modes give different numbers, so `compute()` reports the mode. Valid pixels are `mask` AND a finite
    target AND target > 0; put a dataset's evaluation range and crop (e.g. NYUv2 (1e-3, 10) m with the Eigen crop)
    into `mask`. The prediction must already be resized to the target's resolution. Images without a valid pixel are
    skipped (`num_images` counts the evaluated ones).

    Args:
        mode: `"disparity"` or `"depth"`.
        target_is_depth: whether targets are depth (True) or disparity (False).
        min_depth, max_depth: clipping range of the predicted depth in `"depth"` mode (`None`: no bound).
    """

    def __init__(
        self,
        mode: str = "disparity",
        *,
        target_is_depth: bool = True,
        min_depth: float | None = 1e-3,
        max_depth: float | None = None,
    ):
        if mode not in DEPTH_MODES:
            raise ValueError(f"mode must be one of {DEPTH_MODES}, got {mode!r}.")
        if max_depth is not None and max_depth <= 0:
            raise ValueError(f"max_depth must be positive, got {max_depth}.")
        if min_depth is not None and max_depth is not None and min_depth >= max_depth:
            raise ValueError(f"min_depth ({min_depth}) must be smaller than max_depth ({max_depth}).")
        self.mode = mode
        self.target_is_depth = target_is_depth
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.reset()

    def reset(self) -> None:
        self._sums = torch.zeros(len(DEPTH_METRIC_NAMES), dtype=torch.float64)
        self.num_images = 0

    def update(self, prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Add a batch: `[B, H, W]` (or one `[H, W]` image) prediction, target and optional boolean mask."""
        _check_same_shape(prediction=prediction, target=target, mask=mask)
        if prediction.ndim not in (2, 3):
            raise ValueError(f"Expected [B, H, W] or [H, W] depth maps, got shape {tuple(prediction.shape)}.")
        if prediction.ndim == 2:
            prediction, target = prediction[None], target[None]
            mask = None if mask is None else mask[None]
        prediction = prediction.flatten(1).double()
        target = target.flatten(1).double()
        valid = torch.isfinite(target) & (target > 0)
        if mask is not None:
            valid &= mask.flatten(1).bool()
        safe_target = torch.where(valid, target, 1.0)
        target_disparity = 1.0 / safe_target if self.target_is_depth else safe_target
        scale, shift = align_scale_shift(prediction, target_disparity, valid)
        aligned = scale[:, None] * prediction + shift[:, None]
        if self.mode == "disparity":
            per_image = _per_image_depth_metrics(aligned, target_disparity, valid)
        else:
            # The disparity floor 1 / max_depth is the depth cap.
            min_disparity = 1.0 / self.max_depth if self.max_depth is not None else torch.finfo(torch.float64).eps
            depth = 1.0 / aligned.clamp_min(min_disparity)
            if self.min_depth is not None:
                depth = depth.clamp_min(self.min_depth)
            target_depth = safe_target if self.target_is_depth else 1.0 / safe_target
            per_image = _per_image_depth_metrics(depth, target_depth, valid)
        evaluated = valid.any(1)
        self._sums += per_image[evaluated].sum(0).cpu()
        self.num_images += int(evaluated.sum())

    def compute(self) -> dict:
        """`{"mode", "num_images", "abs_rel", "delta1", "delta2", "delta3"}`, metrics as fractions (not x100)."""
        if self.num_images == 0:
            raise RuntimeError("DepthMetrics.compute() needs at least one image with a valid pixel.")
        means = (self._sums / self.num_images).tolist()
        return {"mode": self.mode, "num_images": self.num_images, **dict(zip(DEPTH_METRIC_NAMES, means))}


def depth_metrics(
    prediction: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    mode: str = "disparity",
    target_is_depth: bool = True,
    min_depth: float | None = 1e-3,
    max_depth: float | None = None,
) -> dict:
    """`DepthMetrics` on one batch: `{"mode", "num_images", "abs_rel", "delta1", "delta2", "delta3"}`."""
    metric = DepthMetrics(mode, target_is_depth=target_is_depth, min_depth=min_depth, max_depth=max_depth)
    metric.update(prediction, target, mask)
    return metric.compute()


class SegmentationMetrics:
    """mIoU, pixel accuracy (aAcc) and mean class accuracy over a whole dataset, as mmseg and DINOv3 compute them.

    Per-class intersection I, prediction area P and label area L are summed over every pixel of every image before any
    ratio is taken. IoU_c = I_c / U_c with U_c = P_c + L_c - I_c; `mean_iou` is the mean over classes with U_c > 0;
    `pixel_accuracy` = sum(I) / sum(L); `mean_accuracy` is the mean of I_c / L_c over classes with L_c > 0. Pixels
    labelled `ignore_index` are dropped; `reduce_zero_label` (ADE20K) first maps label 0 to `ignore_index` and every
    other label k to k - 1. Results are fractions (not x100); `per_class_iou` is NaN for classes with U_c = 0.

    `mean_iou` is torchmetrics' `MulticlassJaccardIndex(average="macro", ignore_index=...)`: it accumulates one
    confusion matrix over all updates, drops ignored pixels, and gives classes with zero union weight 0 in the macro
    mean, which is this formula (its final division is in float32, as is the reference's `torch.histc`; the other
    outputs are computed here in float64 from the same confusion matrix). torchmetrics' macro `MulticlassAccuracy`
    is not used for `mean_accuracy`: it scores a class that is predicted but absent from the labels as 0, where the
    protocol excludes it (I_c / L_c = 0 / 0).

    Args:
        num_labels: number of classes (after `reduce_zero_label`).
        ignore_index: label of pixels to ignore; must lie outside [0, num_labels) (inside it, torchmetrics would drop
            that class from the mean even where it is predicted, which the protocol does not).
        reduce_zero_label: treat label 0 as "other" (ignored) and shift the remaining labels down by one.
    """

    def __init__(self, num_labels: int, ignore_index: int = 255, reduce_zero_label: bool = False):
        try:
            from torchmetrics.classification import MulticlassJaccardIndex
        except ImportError as error:
            raise ImportError("SegmentationMetrics needs torchmetrics: pip install torchmetrics") from error
        if num_labels < 1:
            raise ValueError(f"num_labels must be positive, got {num_labels}.")
        if 0 <= ignore_index < num_labels:
            raise ValueError(f"ignore_index ({ignore_index}) must lie outside the class range [0, {num_labels}).")
        self.num_labels = num_labels
        self.ignore_index = ignore_index
        self.reduce_zero_label = reduce_zero_label
        self._jaccard = MulticlassJaccardIndex(num_labels, average="macro", ignore_index=ignore_index)

    def reset(self) -> None:
        self._jaccard.reset()

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predicted class indices and labels, both `[B, H, W]` (or `[H, W]`) integer maps."""
        _check_same_shape(prediction=prediction, target=target)
        prediction, target = prediction.long(), target.long()
        if self.reduce_zero_label:
            ignored = (target == 0) | (target == self.ignore_index)
            target = torch.where(ignored, self.ignore_index, target - 1)
        self._jaccard = self._jaccard.to(prediction.device)
        self._jaccard.update(prediction, target)

    def compute(self) -> dict:
        """`{"mean_iou", "pixel_accuracy", "mean_accuracy", "per_class_iou"}`."""
        if not self._jaccard.update_called:
            raise RuntimeError("SegmentationMetrics.compute() called before any update().")
        mean_iou = float(self._jaccard.compute())
        with self._jaccard.sync_context():  # the summed confusion matrix when running distributed, as compute() uses
            confusion = self._jaccard.confmat.double()  # rows: label, columns: prediction
        intersection = confusion.diagonal()
        label_area = confusion.sum(1)
        union = confusion.sum(0) + label_area - intersection
        return {
            "mean_iou": mean_iou,
            "pixel_accuracy": float(intersection.sum() / label_area.sum()),
            "mean_accuracy": float((intersection / label_area).nanmean()),
            "per_class_iou": (intersection / union).tolist(),
        }


def _is_pixel_index(value) -> bool:
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    return whole and not isinstance(value, bool) and value >= 0


def _pair_problem(pair) -> str | None:
    """Why `pair` is not a DA-2K annotation (`{"point1": [h, w], "point2": [h, w], "closer_point": ...}`), or None."""
    if not isinstance(pair, dict):
        return f"expected an object with point1, point2 and closer_point, got {type(pair).__name__}"
    for key in ("point1", "point2"):
        point = pair.get(key)
        if not (
            isinstance(point, (list, tuple))
            and len(point) == 2
            and all(_is_pixel_index(c) for c in point)
        ):
            return f"{key} must be [h, w] with two non-negative integer pixel coordinates, got {point!r}"
    if pair.get("closer_point") not in ("point1", "point2"):
        return f'closer_point must be "point1" or "point2", got {pair.get("closer_point")!r}'
    return None


def load_da2k_annotations(path: str | os.PathLike) -> dict[str, list[dict]]:
    """Read DA-2K's `annotations.json` (`image_path -> [{"point1": [h, w], "point2": [h, w], "closer_point"}, ...]`).

    Every entry is validated; coordinates are returned as ints (whole-number floats are accepted).
    """
    with open(path) as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error}).") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object mapping image paths to lists of pairs.")
    annotations = {}
    for image_path, pairs in data.items():
        if not isinstance(pairs, list):
            raise ValueError(f"{path}: entry {image_path!r}: expected a list of pairs, got {type(pairs).__name__}.")
        for index, pair in enumerate(pairs):
            problem = _pair_problem(pair)
            if problem is not None:
                raise ValueError(f"{path}: entry {image_path!r}, pair {index}: {problem}.")
        annotations[image_path] = [
            {
                "point1": [int(c) for c in pair["point1"]],
                "point2": [int(c) for c in pair["point2"]],
                "closer_point": pair["closer_point"],
            }
            for pair in pairs
        ]
    return annotations


def ordinal_pair_accuracy(disparity: torch.Tensor, pairs: Sequence[dict]) -> float:
    """Fraction of DA-2K pairs whose closer point has the strictly larger predicted disparity (ties are wrong).

    Coordinates index the image at its original resolution, so `disparity` (`[H, W]`) must already be resized to it
    (Depth Anything's `infer_image` upsamples bilinearly with `align_corners=True`).
    """
    if disparity.ndim != 2:
        raise ValueError(f"Expected an [H, W] disparity map, got shape {tuple(disparity.shape)}.")
    if not pairs:
        raise ValueError("ordinal_pair_accuracy needs at least one pair.")
    height, width = disparity.shape
    closer, farther = [], []
    for index, pair in enumerate(pairs):
        problem = _pair_problem(pair)
        if problem is not None:
            raise ValueError(f"pair {index}: {problem}.")
        for key in ("point1", "point2"):
            h, w = pair[key]
            if h >= height or w >= width:
                raise ValueError(f"pair {index}: {key} {[h, w]} lies outside the {height}x{width} disparity map.")
        other = "point2" if pair["closer_point"] == "point1" else "point1"
        closer.append([int(c) for c in pair[pair["closer_point"]]])
        farther.append([int(c) for c in pair[other]])
    closer = torch.tensor(closer, device=disparity.device)
    farther = torch.tensor(farther, device=disparity.device)
    correct = disparity[closer[:, 0], closer[:, 1]] > disparity[farther[:, 0], farther[:, 1]]
    return correct.double().mean().item()


def feature_cosine(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """Mean cosine similarity along channels over all tokens and images: `[B, N, C]` tokens or `[B, C, H, W]` maps."""
    _check_same_shape(student=student, teacher=teacher)
    if student.ndim not in (3, 4):
        raise ValueError(f"Expected [B, N, C] tokens or [B, C, H, W] maps, got shape {tuple(student.shape)}.")
    channel_dim = -1 if student.ndim == 3 else 1
    return F.cosine_similarity(student.double(), teacher.double(), dim=channel_dim).mean().item()
