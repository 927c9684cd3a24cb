"""The bootstrap against known answers: the SE of a mean of normal values is sd / sqrt(n), a constant has SE 0, pairing
cancels what both models share, and the same seed gives the same numbers. Per-image confusion matrices: the dataset
mIoU of every resample against a float64 long-hand loop over the same resampled images, and the full set's against
`SegmentationMetrics`."""

import math
import statistics

import numpy as np
import pytest
import torch

from jetvit_hf.evaluation.bootstrap import bootstrap, paired_bootstrap
from jetvit_hf.evaluation.metrics import SegmentationMetrics


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
    with pytest.raises(ValueError, match=r"same images \(and classes\) for both, got shapes \(3,\) and \(2,\)"):
        paired_bootstrap([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least one value"):
        bootstrap([])
    with pytest.raises(ValueError, match="finite"):
        bootstrap([1.0, float("nan")])


NUM_CLASSES = 6  # labels 0-3; class 4 only ever predicted (IoU 0); class 5 nowhere (zero union: left out of the mean)


def segmentation_maps(seed: int, count: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` 12 x 12 label maps (classes 0-3, some pixels 255) and predictions (classes 0-4) that agree with the
    labels on about half the pixels."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (count, 12, 12), generator=generator)
    labels[torch.rand(labels.shape, generator=generator) < 0.1] = 255
    guesses = torch.randint(0, 5, labels.shape, generator=generator)
    predictions = torch.where((torch.rand(labels.shape, generator=generator) < 0.5) & (labels != 255), labels, guesses)
    return labels, predictions


def long_hand_confusions(labels: torch.Tensor, predictions: torch.Tensor) -> np.ndarray:
    """Per image, pixel by pixel: confusion[label, prediction] += 1 for every pixel not labelled 255."""
    confusions = np.zeros((len(labels), NUM_CLASSES, NUM_CLASSES))
    for image, (label_map, prediction_map) in enumerate(zip(labels.tolist(), predictions.tolist())):
        for label_row, prediction_row in zip(label_map, prediction_map):
            for label, prediction in zip(label_row, prediction_row):
                if label != 255:
                    confusions[image, label, prediction] += 1
    return confusions


def long_hand_miou(confusion: np.ndarray) -> float:
    """IoU_c = I_c / (L_c + P_c - I_c) class by class; the mean over the classes with a non-zero union."""
    ious = []
    for c in range(len(confusion)):
        intersection = float(confusion[c, c])
        union = float(sum(confusion[c, :])) + float(sum(confusion[:, c])) - intersection
        if union > 0:
            ious.append(intersection / union)
    return sum(ious) / len(ious)


def long_hand_bootstrap(statistic, num_images: int, num_resamples: int, seed: int) -> dict:
    """`statistic(image indices)` on every resample, the images drawn as the bootstrap draws them (one seeded
    `[num_resamples, num_images]` randint); the sample SD and the linearly interpolated 2.5% and 97.5% quantiles."""
    draws = torch.randint(0, num_images, (num_resamples, num_images),
                          generator=torch.Generator().manual_seed(seed)).tolist()
    resampled = [statistic(images) for images in draws]
    return {"mean": statistic(list(range(num_images))), "se": statistics.stdev(resampled),
            "ci95": np.quantile(resampled, [0.025, 0.975]).tolist()}


def test_the_miou_bootstrap_of_confusions_matches_a_long_hand_loop_and_segmentation_metrics():
    labels, predictions = segmentation_maps(0)
    other_predictions = segmentation_maps(1)[1]
    confusions, other = (long_hand_confusions(labels, p) for p in (predictions, other_predictions))

    def miou(images, matrices=confusions):
        return long_hand_miou(sum(matrices[i] for i in images))

    result = bootstrap(torch.tensor(confusions), num_resamples=300, seed=5)
    expected = long_hand_bootstrap(miou, len(labels), 300, seed=5)
    assert result["mean"] == pytest.approx(expected["mean"], rel=1e-12)
    assert result["se"] == pytest.approx(expected["se"], rel=1e-9) and result["se"] > 0.005
    assert result["ci95"] == pytest.approx(expected["ci95"], rel=1e-12)
    assert result["num_images"] == 10 and result["num_resamples"] == 300
    metrics = SegmentationMetrics(NUM_CLASSES)  # the full set's statistic is the protocol's mIoU (float32 there)
    metrics.update(predictions, labels)
    assert result["mean"] == pytest.approx(metrics.compute()["mean_iou"], abs=1e-6)

    paired = paired_bootstrap(torch.tensor(confusions), torch.tensor(other), num_resamples=300, seed=5)
    expected = long_hand_bootstrap(lambda images: miou(images) - miou(images, other), len(labels), 300, seed=5)
    assert paired["mean"] == pytest.approx(expected["mean"], rel=1e-12)
    assert paired["se"] == pytest.approx(expected["se"], rel=1e-9)
    assert paired["ci95"] == pytest.approx(expected["ci95"], rel=1e-12)


def test_confusions_with_no_resampling_noise_have_se_zero():
    confusions = torch.tensor(long_hand_confusions(*segmentation_maps(0)))
    itself = paired_bootstrap(confusions, confusions)
    assert itself["mean"] == 0.0 and itself["se"] == 0.0 and itself["ci95"] == [0.0, 0.0]
    # identical images: every resample sums N copies of one matrix, whose mIoU is (3/4 + 2/3) / 2
    identical = bootstrap(torch.tensor([[3.0, 1.0], [0.0, 2.0]]).expand(20, 2, 2))
    assert identical["mean"] == pytest.approx(17 / 24) and identical["se"] == 0.0
    assert identical["ci95"] == pytest.approx([17 / 24, 17 / 24])


def test_images_without_a_labelled_pixel_are_left_out_of_the_resampling():
    labels, predictions = segmentation_maps(0)
    confusions, other = (torch.tensor(long_hand_confusions(labels, p)) for p in (predictions, segmentation_maps(1)[1]))

    def padded(matrices):
        return torch.cat([torch.zeros(3, NUM_CLASSES, NUM_CLASSES), matrices, torch.zeros(2, NUM_CLASSES, NUM_CLASSES)])

    assert bootstrap(padded(confusions)) == bootstrap(confusions) and bootstrap(padded(confusions))["num_images"] == 10
    assert paired_bootstrap(padded(confusions), padded(other)) == paired_bootstrap(confusions, other)


def test_confusion_inputs_are_checked():
    confusions = torch.tensor(long_hand_confusions(*segmentation_maps(0)))
    broken = confusions.clone()
    broken[0, 1, 2] = math.nan
    with pytest.raises(ValueError, match="finite"):
        bootstrap(broken)
    with pytest.raises(ValueError, match="finite"):
        paired_bootstrap(confusions, broken)
    broken[0, 1, 2] = -1.0
    with pytest.raises(ValueError, match="negative"):
        bootstrap(broken)
    with pytest.raises(ValueError, match=r"one confusion matrix per image \[N, C, C\], got shape \(10, 6, 5\)"):
        bootstrap(confusions[:, :, :5])
    with pytest.raises(ValueError, match=r"got shape \(10, 36\)"):
        bootstrap(confusions.flatten(1))
    with pytest.raises(ValueError, match="at least one labelled pixel"):
        bootstrap(torch.zeros(4, 3, 3))
    with pytest.raises(ValueError, match=r"got shapes \(10, 6, 6\) and \(10,\)"):
        paired_bootstrap(confusions, torch.ones(10))
    with pytest.raises(ValueError, match="same labelled pixels"):  # other labels: other row sums
        paired_bootstrap(confusions, confusions.roll(1, dims=0))
