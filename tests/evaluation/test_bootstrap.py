"""The bootstrap against known answers: the SE of a mean of normal values is sd / sqrt(n), a constant has SE 0, pairing
cancels what both models share, and the same seed gives the same numbers."""

import math

import pytest
import torch

from jetvit_hf.evaluation.bootstrap import bootstrap, paired_bootstrap


def test_the_se_of_a_mean_of_normal_values_is_sd_over_sqrt_n():
    values = torch.randn(400, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3.0 + 5.0
    result = bootstrap(values, num_resamples=4000)
    expected = values.std().item() / math.sqrt(len(values))
    assert result["se"] == pytest.approx(expected, rel=0.06)
    assert result["mean"] == pytest.approx(values.mean().item())
    low, high = result["ci95"]  # the percentile interval of a near-normal mean: mean +- 1.96 SE
    assert low == pytest.approx(result["mean"] - 1.96 * expected, abs=0.25 * expected)
    assert high == pytest.approx(result["mean"] + 1.96 * expected, abs=0.25 * expected)
    assert result["num_images"] == 400 and result["num_resamples"] == 4000


def test_a_constant_difference_has_se_zero():
    candidate = torch.linspace(0, 10, 48)
    result = paired_bootstrap(candidate + 0.25, candidate)
    assert result["se"] == 0.0 and result["ci95"] == pytest.approx([0.25, 0.25]) and result["mean"] == pytest.approx(
        0.25)
    assert bootstrap([7.0])["se"] == 0.0


def test_pairing_cancels_what_both_models_share():
    generator = torch.Generator().manual_seed(0)
    hardness = torch.randn(200, generator=generator, dtype=torch.float64) * 10  # per-image difficulty, shared
    noise = torch.randn(200, generator=generator, dtype=torch.float64) * 0.1
    paired = paired_bootstrap(hardness + noise, hardness)
    assert paired["se"] == pytest.approx(noise.std().item() / math.sqrt(200), rel=0.1)
    assert paired["se"] < bootstrap(hardness)["se"] / 50


def test_deterministic_by_seed_and_checked_inputs():
    values = torch.rand(30, generator=torch.Generator().manual_seed(2))
    assert bootstrap(values, seed=3) == bootstrap(values, seed=3)
    assert bootstrap(values, seed=3)["se"] != bootstrap(values, seed=4)["se"]
    with pytest.raises(ValueError, match="one value per image for both, got 3 and 2"):
        paired_bootstrap([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least one value"):
        bootstrap([])
    with pytest.raises(ValueError, match="finite"):
        bootstrap([1.0, float("nan")])
