"""Distillation losses: dense feature distillation (AM-RADIO / Theia style) and Depth Anything's disparity losses.

Inputs of any float dtype are computed in at least float32 (bf16 features and disparities are upcast).
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

FEATURE_LOSS_KINDS = ("cosine_smooth_l1", "mse")


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


class FeatureDistillationLoss(nn.Module):
    """Distance between student and teacher features, averaged over taps (e.g. the normed last layer, or the DPT taps).

    `kind="cosine_smooth_l1"` (AM-RADIO's spatial loss): per tap, `cosine_weight * mean over tokens of
    (1 - cos(student, teacher))` along channels `+ smooth_l1_weight * SmoothL1(student, teacher, beta)` (mean over
    elements). `kind="mse"`: the elementwise MSE. Each tap is `[B, N, C]` tokens or `[B, C, H, W]` maps; teacher
    features are targets and receive no gradient.
    """

    def __init__(
        self,
        kind: str = "cosine_smooth_l1",
        cosine_weight: float = 0.9,
        smooth_l1_weight: float = 0.1,
        beta: float = 1.0,
    ):
        super().__init__()
        if kind not in FEATURE_LOSS_KINDS:
            raise ValueError(f"kind must be one of {FEATURE_LOSS_KINDS}, got {kind!r}.")
        self.kind = kind
        self.cosine_weight = cosine_weight
        self.smooth_l1_weight = smooth_l1_weight
        self.beta = beta

    def extra_repr(self) -> str:
        if self.kind == "mse":
            return "kind='mse'"
        return (
            f"kind={self.kind!r}, cosine_weight={self.cosine_weight}, smooth_l1_weight={self.smooth_l1_weight}, "
            f"beta={self.beta}"
        )

    def forward(
        self,
        student_features: Sequence[torch.Tensor] | torch.Tensor,
        teacher_features: Sequence[torch.Tensor] | torch.Tensor,
    ) -> torch.Tensor:
        # A bare tensor is one tap; iterating it would silently split the batch instead.
        if isinstance(student_features, torch.Tensor):
            student_features = [student_features]
        if isinstance(teacher_features, torch.Tensor):
            teacher_features = [teacher_features]
        if len(student_features) != len(teacher_features):
            raise ValueError(
                f"Got {len(student_features)} student feature taps but {len(teacher_features)} teacher feature taps."
            )
        if not student_features:
            raise ValueError("FeatureDistillationLoss needs at least one feature tap.")
        losses = []
        for index, (student, teacher) in enumerate(zip(student_features, teacher_features)):
            if student.shape != teacher.shape:
                raise ValueError(
                    f"Tap {index}: student shape {tuple(student.shape)} != teacher shape {tuple(teacher.shape)}."
                )
            if student.ndim not in (3, 4):
                raise ValueError(f"Tap {index}: expected [B, N, C] or [B, C, H, W], got shape {tuple(student.shape)}.")
            dtype = _compute_dtype(student, teacher)
            student, teacher = student.to(dtype), teacher.detach().to(dtype)
            if self.kind == "mse":
                losses.append(F.mse_loss(student, teacher))
                continue
            channel_dim = -1 if student.ndim == 3 else 1
            cosine_distance = 1 - F.cosine_similarity(student, teacher, dim=channel_dim).mean()
            smooth_l1 = F.smooth_l1_loss(student, teacher, beta=self.beta)
            losses.append(self.cosine_weight * cosine_distance + self.smooth_l1_weight * smooth_l1)
        return torch.stack(losses).mean()


def _check_disparity_inputs(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> None:
    shapes = [tuple(t.shape) for t in (prediction, target, mask) if t is not None]
    if len(set(shapes)) > 1 or prediction.ndim != 3:
        raise ValueError(f"Expected [B, H, W] prediction, target and mask of one shape, got {shapes}.")


def normalize_disparity(disparity: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """Depth Anything V1's scale-and-shift normalisation, per image over `mask`: `(d - median) / mean|d - median|`.

    `disparity` is `[B, H, W]`. The median of an even number of pixels is the lower of the two middle values
    (`torch.median`'s convention). The spread is clamped to `eps`, so a constant map normalises to zeros. Pixels
    outside the mask are set to 0.
    """
    if disparity.ndim != 3:
        raise ValueError(f"Expected a [B, H, W] disparity, got shape {tuple(disparity.shape)}.")
    disparity = disparity.to(_compute_dtype(disparity))
    valid = torch.ones_like(disparity, dtype=torch.bool) if mask is None else mask.bool()
    flat_valid = valid.flatten(1)
    count = flat_valid.sum(1)
    median = torch.where(flat_valid, disparity.flatten(1), float("nan")).nanmedian(dim=1).values
    median = torch.where(count > 0, median, 0.0)[:, None, None]
    centred = torch.where(valid, disparity - median, 0.0)
    spread = centred.abs().sum((1, 2)) / count.clamp_min(1)
    return centred / spread.clamp_min(eps)[:, None, None]


def _normalized_residual(
    prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised prediction minus normalised target (0 off the mask), and the valid mask (mask AND finite target)."""
    _check_disparity_inputs(prediction, target, mask)
    valid = torch.isfinite(target)
    if mask is not None:
        valid &= mask.bool()
    dtype = _compute_dtype(prediction, target)
    target = torch.where(valid, target.to(dtype), 0.0)
    return normalize_disparity(prediction.to(dtype), valid) - normalize_disparity(target, valid), valid


def _images_mean(per_image: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over the images that have at least one valid pixel (0 when none has)."""
    return per_image.sum() / valid.flatten(1).any(1).sum().clamp_min(1)


def _trimmed_ssi(residual: torch.Tensor, valid: torch.Tensor, trim: float) -> torch.Tensor:
    if not 0 <= trim < 1:
        raise ValueError(f"trim must be in [0, 1), got {trim}.")
    loss = residual.abs().flatten(1)
    flat_valid = valid.flatten(1)
    count = flat_valid.sum(1).double()
    keep = count if trim == 0 else torch.ceil((count - 1) * (1 - trim)).clamp_min(1)
    keep = torch.where(count > 0, keep, 0.0)
    sorted_loss = torch.where(flat_valid, loss, math.inf).sort(dim=1).values
    kept = torch.arange(loss.shape[1], device=loss.device) < keep[:, None]
    per_image = torch.where(kept, sorted_loss, 0.0).sum(1) / keep.clamp_min(1).to(loss.dtype)
    return _images_mean(per_image, valid)


def _gradient_matching(residual: torch.Tensor, valid: torch.Tensor, scales: int) -> torch.Tensor:
    if scales < 1:
        raise ValueError(f"scales must be at least 1, got {scales}.")
    per_image = residual.new_zeros(residual.shape[0])
    for scale in range(scales):
        step = 2**scale
        r = residual[:, ::step, ::step]
        m = valid[:, ::step, ::step].to(residual.dtype)
        mask_x = m[:, :, 1:] * m[:, :, :-1]
        mask_y = m[:, 1:, :] * m[:, :-1, :]
        grad_x = (r[:, :, 1:] - r[:, :, :-1]).abs() * mask_x
        grad_y = (r[:, 1:, :] - r[:, :-1, :]).abs() * mask_y
        per_image = per_image + (grad_x.sum((1, 2)) + grad_y.sum((1, 2))) / m.sum((1, 2)).clamp_min(1)
    return _images_mean(per_image, valid)


def scale_shift_invariant_loss(
    prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, trim: float = 0.1
) -> torch.Tensor:
    """Depth Anything's L_ssi with V2's per-image trimming of the largest-loss pixels.

    Per image, over the valid pixels (`mask` AND finite target): both disparities are normalised with
    `normalize_disparity`, the per-pixel loss is `|pred_n - target_n|`, and the mean is taken over the
    `k = ceil((n - 1) * (1 - trim))` smallest losses of the `n` valid pixels (at least 1; all of them when
    `trim == 0`). With distinct losses this is exactly DA-V2's `L[L < quantile(L, 1 - trim)].mean()` (linear
    quantile); with ties at the quantile it still keeps k pixels, where the strict `<` would drop every tied pixel
    (and give NaN when 90% of the losses are equal, e.g. a perfect prediction). The batch loss is the mean over images
    with at least one valid pixel.
    """
    residual, valid = _normalized_residual(prediction, target, mask)
    return _trimmed_ssi(residual, valid, trim)


def gradient_matching_loss(
    prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, scales: int = 4
) -> torch.Tensor:
    """MiDaS' multi-scale gradient-matching loss on the residual of the normalised disparities.

    With R = normalised prediction - normalised target, per image and for k = 0..scales-1: R and the valid mask are
    subsampled as `[::2**k, ::2**k]`, and the loss adds `(sum |dx R| m_x + sum |dy R| m_y) / sum(mask)` with m_x, m_y
    the products of horizontally / vertically adjacent mask pixels. The batch loss is the mean over images (MiDaS'
    default divides batch sums instead; the two agree when every image has the same number of valid pixels).
    """
    residual, valid = _normalized_residual(prediction, target, mask)
    return _gradient_matching(residual, valid, scales)


def depth_anything_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    gradient_weight: float = 2.0,
    trim: float = 0.1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Depth Anything V2's disparity loss `L_ssi + gradient_weight * L_gm`; its training weights them 1 : 2, the default.

    Returns the total and its detached components `{"ssi", "gradient_matching"}`. Trimming applies to L_ssi only.
    """
    residual, valid = _normalized_residual(prediction, target, mask)
    ssi = _trimmed_ssi(residual, valid, trim)
    gradient_matching = _gradient_matching(residual, valid, scales=4)
    total = ssi + gradient_weight * gradient_matching
    return total, {"ssi": ssi.detach(), "gradient_matching": gradient_matching.detach()}
