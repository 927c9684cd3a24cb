"""The nonparametric bootstrap over images: the standard error and the 95% percentile interval of a mean score, and of
the mean of paired per-image differences between two models scored on the same images.

Resampling is vectorised (one `[num_resamples, n]` index tensor) and deterministic: the same inputs and `seed` give
the same numbers on every run. Values are float64 on the CPU.
"""

import torch

NUM_RESAMPLES = 2000
CONFIDENCE = 0.95


def bootstrap(values, num_resamples: int = NUM_RESAMPLES, seed: int = 0, confidence: float = CONFIDENCE) -> dict:
    """`{"mean", "se", "ci95": [low, high], "num_images", "num_resamples"}` of the mean of `values` (one number per
    image): `se` is the standard deviation of the means of `num_resamples` resamples of the images with replacement,
    the interval their `(1 - confidence) / 2` and `(1 + confidence) / 2` quantiles. One value has SE 0."""
    values = torch.as_tensor(values, dtype=torch.float64).flatten().cpu()
    if values.numel() == 0:
        raise ValueError("The bootstrap needs at least one value.")
    if not torch.isfinite(values).all():
        raise ValueError("The bootstrap needs finite values.")
    if num_resamples < 2:
        raise ValueError(f"num_resamples must be at least 2, got {num_resamples}.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}.")
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randint(0, values.numel(), (num_resamples, values.numel()), generator=generator)
    means = values[indices].mean(1)
    alpha = (1 - confidence) / 2
    low, high = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return {"mean": values.mean().item(), "se": means.std().item(), "ci95": [low, high],
            "num_images": values.numel(), "num_resamples": num_resamples}


def paired_bootstrap(candidate, reference, num_resamples: int = NUM_RESAMPLES, seed: int = 0,
                     confidence: float = CONFIDENCE) -> dict:
    """`bootstrap` of the per-image differences `candidate - reference` (two models' scores on the same images, in the
    same order): resampling images keeps each image's pair together, so what both models find hard cancels out."""
    candidate = torch.as_tensor(candidate, dtype=torch.float64).flatten()
    reference = torch.as_tensor(reference, dtype=torch.float64).flatten()
    if candidate.shape != reference.shape:
        raise ValueError(f"Paired scores need one value per image for both, got {candidate.numel()} and "
                         f"{reference.numel()}.")
    return bootstrap(candidate - reference, num_resamples, seed, confidence)
