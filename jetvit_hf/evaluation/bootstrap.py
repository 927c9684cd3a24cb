"""The nonparametric bootstrap over images: the standard error and the 95% percentile interval of a score, and of the
difference between two models' scores on the same images (paired: both are resampled with the same images).

Per-image scores come in two kinds:

- one number per image, `[N]`: the statistic is their mean (a depth metric, an ordinal accuracy, a feature loss);
- one confusion matrix per image, `[N, C, C]`: pixel counts, rows the label and columns the prediction, ignored pixels
  left out, as `SegmentationMetrics` accumulates them. The statistic is the dataset-level mIoU of the summed matrix
  (IoU_c = I_c / U_c, the mean over the classes with U_c > 0, as `SegmentationMetrics.mean_iou`), which is no mean
  over images: a resample sums its images' matrices before the mIoU is taken. Images without a labelled pixel (an
  all-zero matrix) add nothing to any sum and are left out of the resampling.

Resampling is vectorised (one `[num_resamples, N]` index tensor; for confusions, its per-image counts times the
per-class pixel areas) and deterministic: the same inputs and `seed` give the same numbers on every run. Values are
float64 on the CPU.
"""

import torch

NUM_RESAMPLES = 2000
CONFIDENCE = 0.95


def bootstrap(values, num_resamples: int = NUM_RESAMPLES, seed: int = 0, confidence: float = CONFIDENCE) -> dict:
    """`{"mean", "se", "ci95": [low, high], "num_images", "num_resamples"}` of per-image `values`: one number per image
    (`[N]`; `mean` is their mean) or one confusion matrix per image (`[N, C, C]`; `mean` is the dataset mIoU of
    their sum). `se` is the standard deviation of the statistic over `num_resamples` resamples of the images with
    replacement, the interval their `(1 - confidence) / 2` and `(1 + confidence) / 2` quantiles, `num_images` the
    number of images resampled (for confusions, those with a labelled pixel). One image has SE 0."""
    values = _per_image(values)
    if values.ndim == 3:
        values = values[_labelled(values)]
    indices = _resample_indices(len(values), num_resamples, seed, confidence)
    full, resampled = _statistic(values, indices)
    return _summary(full, resampled, indices, confidence)


def paired_bootstrap(candidate, reference, num_resamples: int = NUM_RESAMPLES, seed: int = 0,
                     confidence: float = CONFIDENCE) -> dict:
    """`bootstrap` of the difference candidate - reference between two models' per-image scores on the same images,
    in the same order (both `[N]` or both `[N, C, C]`): every resample draws the same images for both, so what both
    models find hard cancels out. For numbers this is the bootstrap of the per-image differences; for confusions,
    `mean` is mIoU(candidate) - mIoU(reference) on the full set and each resample's statistic the difference of the
    two mIoUs of its images. Paired confusions must count the same labelled pixels image by image (equal row sums)."""
    candidate, reference = _per_image(candidate), _per_image(reference)
    if candidate.shape != reference.shape:
        raise ValueError(f"Paired scores need the same images (and classes) for both, got shapes "
                         f"{tuple(candidate.shape)} and {tuple(reference.shape)}.")
    if candidate.ndim == 1:
        return bootstrap(candidate - reference, num_resamples, seed, confidence)
    if not torch.equal(candidate.sum(2), reference.sum(2)):
        raise ValueError("Paired confusion matrices must count the same labelled pixels of each class image by image "
                         "(equal row sums): these come from different images or labels.")
    labelled = _labelled(candidate)
    candidate, reference = candidate[labelled], reference[labelled]
    indices = _resample_indices(len(candidate), num_resamples, seed, confidence)
    candidate_full, candidate_resampled = _statistic(candidate, indices)
    reference_full, reference_resampled = _statistic(reference, indices)
    return _summary(candidate_full - reference_full, candidate_resampled - reference_resampled, indices, confidence)


def _per_image(values) -> torch.Tensor:
    """`values` as float64 on the CPU, checked: `[N]` numbers (a scalar is one) or `[N, C, C]` pixel counts."""
    values = torch.as_tensor(values, dtype=torch.float64).cpu()
    if values.ndim <= 1:
        values = values.reshape(-1)
    elif values.ndim != 3 or values.shape[1] != values.shape[2]:
        raise ValueError(f"The bootstrap needs one number per image [N] or one confusion matrix per image [N, C, C], "
                         f"got shape {tuple(values.shape)}.")
    if len(values) == 0:
        raise ValueError("The bootstrap needs at least one value.")
    if not torch.isfinite(values).all():
        raise ValueError("The bootstrap needs finite values.")
    if values.ndim == 3 and (values < 0).any():
        raise ValueError("Confusion matrices hold pixel counts; got a negative entry.")
    return values


def _labelled(confusions: torch.Tensor) -> torch.Tensor:
    """`[N]` mask of the images with a labelled pixel; an error if there is none (the mIoU would be 0 / 0)."""
    labelled = confusions.flatten(1).sum(1) > 0
    if not labelled.any():
        raise ValueError("The bootstrap of confusion matrices needs at least one labelled pixel; every matrix is 0.")
    return labelled


def _resample_indices(num_images: int, num_resamples: int, seed: int, confidence: float) -> torch.Tensor:
    """`[num_resamples, num_images]` image indices drawn with replacement from a generator seeded with `seed`."""
    if num_resamples < 2:
        raise ValueError(f"num_resamples must be at least 2, got {num_resamples}.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}.")
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_images, (num_resamples, num_images), generator=generator)


def _statistic(values: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The statistic of checked per-image `values` on the full set (0-d) and on each resample (`[R]`, one per row of
    `indices`): the mean of numbers, or the mIoU of summed confusions (per-class areas summed with the number of times
    a resample draws each image as weights)."""
    if values.ndim == 1:
        return values.mean(), values[indices].mean(1)
    areas = _class_areas(values).flatten(1)  # [N, 3 * C]
    draws = torch.zeros(indices.shape, dtype=torch.float64).scatter_add_(
        1, indices, torch.ones(indices.shape, dtype=torch.float64))
    return _mean_iou(areas.sum(0).unflatten(0, (3, -1))), _mean_iou((draws @ areas).unflatten(1, (3, -1)))


def _class_areas(confusions: torch.Tensor) -> torch.Tensor:
    """`[..., 3, C]` per-class intersection I, label area L (row sums) and prediction area P (column sums) of
    `[..., C, C]` confusion matrices: all that the mIoU reads."""
    return torch.stack([confusions.diagonal(dim1=-2, dim2=-1), confusions.sum(-1), confusions.sum(-2)], dim=-2)


def _mean_iou(areas: torch.Tensor) -> torch.Tensor:
    """`[...]` mIoU of `[..., 3, C]` class areas: IoU_c = I_c / U_c, U_c = L_c + P_c - I_c, the mean over the classes
    with U_c > 0 (`SegmentationMetrics.mean_iou`, computed here in float64 and batched over resamples)."""
    intersection, label_area, prediction_area = areas.unbind(-2)
    union = label_area + prediction_area - intersection
    present = union > 0
    iou = torch.where(present, intersection / torch.where(present, union, 1.0), 0.0)
    return iou.sum(-1) / present.sum(-1)


def _summary(full: torch.Tensor, resampled: torch.Tensor, indices: torch.Tensor, confidence: float) -> dict:
    alpha = (1 - confidence) / 2
    low, high = torch.quantile(resampled, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    num_resamples, num_images = indices.shape
    return {"mean": full.item(), "se": resampled.std().item(), "ci95": [low, high], "num_images": num_images,
            "num_resamples": num_resamples}
