"""Evaluation metrics against float64 numpy references written independently, and hand-computed cases."""

import json
import math

import numpy as np
import pytest
import torch

from jetvit_hf.evaluation.metrics import (
    DepthMetrics,
    SegmentationMetrics,
    align_scale_shift,
    depth_metrics,
    feature_cosine,
    load_da2k_annotations,
    ordinal_pair_accuracy,
)

DEPTH_KEYS = ("abs_rel", "delta1", "delta2", "delta3")


# ---------------------------------------------------------------------------------------------------------- depth


def reference_depth_metrics(prediction, target, mask, mode, target_is_depth=True, min_depth=1e-3, max_depth=None):
    """Per image: lstsq on [p, 1] in disparity, metrics (in disparity, or in clipped depth), then mean over images."""
    per_image = []
    for p, g, m in zip(prediction, target, mask):
        with np.errstate(invalid="ignore"):
            valid = m & np.isfinite(g) & (g > 0)
        if not valid.any():
            continue
        p, g = p[valid], g[valid]
        gt_disparity = 1 / g if target_is_depth else g
        (scale, shift), *_ = np.linalg.lstsq(np.stack([p, np.ones_like(p)], 1), gt_disparity, rcond=None)
        aligned = scale * p + shift
        if mode == "disparity":
            estimate, reference = aligned, gt_disparity
        else:
            estimate = np.clip(1 / np.clip(aligned, 1 / max_depth, None), min_depth, max_depth)
            reference = g if target_is_depth else 1 / g
        ratio = np.maximum(estimate / reference, reference / estimate)
        row = [np.mean(np.abs(estimate - reference) / reference)]
        row += [np.mean((estimate > 0) & (ratio < 1.25**k)) for k in (1, 2, 3)]
        per_image.append(row)
    return dict(zip(DEPTH_KEYS, np.mean(per_image, axis=0)))


def random_depth_batch(seed, batch=3, height=12, width=10):
    """GT depth with NaN and zero holes, a noisy affine disparity prediction (float32), and a random mask."""
    rng = np.random.default_rng(seed)
    depth = rng.uniform(0.5, 8.0, (batch, height, width))
    depth[rng.random(depth.shape) < 0.1] = np.nan
    depth[rng.random(depth.shape) < 0.05] = 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        disparity = 1 / depth
    scale = rng.uniform(0.5, 3.0, (batch, 1, 1))
    shift = rng.uniform(-0.1, 0.3, (batch, 1, 1))
    prediction = scale * np.nan_to_num(disparity, nan=0.2, posinf=0.2) + shift
    prediction = (prediction * np.exp(rng.normal(0, 0.25, prediction.shape))).astype(np.float32)
    mask = rng.random(depth.shape) < 0.8
    mask[-1, :, : width // 2] = False  # images get different numbers of valid pixels
    return prediction, depth, mask


def to_torch(*arrays):
    return [torch.from_numpy(np.asarray(a)) for a in arrays]


def test_align_scale_shift_recovers_exact_affine_per_image():
    rng = np.random.default_rng(0)
    prediction = rng.uniform(0, 5, (3, 6, 7))
    scale, shift = np.array([0.5, 2.0, 7.0]), np.array([-1.0, 0.0, 3.5])
    target = scale[:, None, None] * prediction + shift[:, None, None]
    mask = rng.random(prediction.shape) < 0.7
    target[~mask] = np.nan  # never read
    got_scale, got_shift = align_scale_shift(*to_torch(prediction, target, mask))
    assert got_scale.dtype == torch.float64
    np.testing.assert_allclose(got_scale.numpy(), scale, rtol=1e-12)
    np.testing.assert_allclose(got_shift.numpy(), shift, rtol=1e-12, atol=1e-12)


def test_align_scale_shift_matches_lstsq_on_noisy_data():
    rng = np.random.default_rng(1)
    prediction = rng.uniform(100, 101, (4, 9, 9)).astype(np.float32)  # large offset: normal equations lose digits
    target = rng.normal(size=(4, 9, 9))
    mask = rng.random(prediction.shape) < 0.6
    scale, shift = align_scale_shift(*to_torch(prediction, target, mask))
    for i in range(4):
        p = prediction[i][mask[i]].astype(np.float64)
        (ref_scale, ref_shift), *_ = np.linalg.lstsq(np.stack([p, np.ones_like(p)], 1), target[i][mask[i]], rcond=None)
        assert scale[i].item() == pytest.approx(ref_scale, rel=1e-8)
        assert shift[i].item() == pytest.approx(ref_shift, rel=1e-8)


def test_align_scale_shift_degenerate_prediction_and_empty_mask():
    target = torch.linspace(0.1, 0.9, 13, dtype=torch.float64).square().expand(2, 1, 13)
    # Twelve 0.1s: their float64 mean is not exactly 0.1, so the centred sums are ~1e-33 noise and their ratio ~1.3.
    prediction = torch.full_like(target, 0.1)
    mask = torch.ones_like(target, dtype=torch.bool)
    mask[0, 0, -1] = False
    mask[1] = False
    scale, shift = align_scale_shift(prediction, target, mask)
    assert scale.tolist() == [0.0, 0.0]
    assert shift.tolist() == [pytest.approx(target[0, 0, :12].mean().item(), rel=1e-15), 0.0]


def test_align_scale_shift_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"prediction \(2, 3\).*target \(2, 4\)"):
        align_scale_shift(torch.ones(2, 3), torch.ones(2, 4), torch.ones(2, 3, dtype=torch.bool))


@pytest.mark.parametrize("mode", ["disparity", "depth"])
def test_depth_metrics_match_numpy_reference(mode):
    prediction, depth, mask = random_depth_batch(seed=2)
    max_depth = 6.0 if mode == "depth" else None  # GT reaches 8, so the depth clip is exercised
    result = depth_metrics(*to_torch(prediction, depth, mask), mode=mode, max_depth=max_depth)
    expected = reference_depth_metrics(prediction.astype(np.float64), depth, mask, mode, max_depth=max_depth)
    assert result["mode"] == mode and result["num_images"] == 3
    for key in DEPTH_KEYS:
        assert result[key] == pytest.approx(expected[key], abs=1e-10), key


def test_depth_metrics_with_disparity_targets_match_reference():
    prediction, depth, mask = random_depth_batch(seed=3)
    with np.errstate(divide="ignore"):
        disparity = 1 / depth
    disparity[depth == 0] = np.nan
    for mode, max_depth in (("disparity", None), ("depth", 10.0)):
        result = depth_metrics(*to_torch(prediction, disparity, mask), mode=mode, target_is_depth=False,
                               max_depth=max_depth)
        expected = reference_depth_metrics(prediction.astype(np.float64), disparity, mask, mode, target_is_depth=False,
                                           max_depth=max_depth)
        for key in DEPTH_KEYS:
            assert result[key] == pytest.approx(expected[key], abs=1e-10), (mode, key)


def test_depth_metrics_hand_computed_constant_prediction():
    # Constant prediction aligns to the mean GT disparity 2.5. Ratios to g = 1, 2, 3, 4: 2.5, 1.25 (not < 1.25),
    # 1.2, 1.6. AbsRel = (1.5/1 + 0.5/2 + 0.5/3 + 1.5/4) / 4.
    target = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    result = depth_metrics(torch.full_like(target, 7.0), target, target_is_depth=False)
    assert result["abs_rel"] == pytest.approx((1.5 + 0.25 + 0.5 / 3 + 0.375) / 4, rel=1e-12)
    assert (result["delta1"], result["delta2"], result["delta3"]) == (0.25, 0.5, 0.75)


def test_depth_metrics_hand_computed_negative_aligned_disparity():
    # GT disparity [9, 1, 1, 1, 1] against p = [0..4]: slope -1.6, aligned = [5.8, 4.2, 2.6, 1.0, -0.6]. The negative
    # pixel must not pass the delta test (max(p/g, g/p) of a negative p is negative).
    target = torch.tensor([[9.0, 1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    prediction = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]])
    scale, shift = align_scale_shift(prediction[None], target[None], torch.ones(1, 1, 5, dtype=torch.bool))
    assert (scale.item(), shift.item()) == (pytest.approx(-1.6), pytest.approx(5.8))

    result = depth_metrics(prediction, target, target_is_depth=False)
    assert result["abs_rel"] == pytest.approx((3.2 / 9 + 3.2 + 1.6 + 0.0 + 1.6) / 5, rel=1e-12)
    assert (result["delta1"], result["delta2"], result["delta3"]) == (0.2, 0.4, 0.4)

    # Depth mode, max_depth 2: disparity -0.6 is clipped to 0.5 (depth 2); GT depth = 1 / disparity.
    result = depth_metrics(prediction, 1 / target, mode="depth", max_depth=2.0)
    abs_rel = (abs(1 / 5.8 - 1 / 9) * 9 + abs(1 / 4.2 - 1) + abs(1 / 2.6 - 1) + 0.0 + 1.0) / 5
    assert result["abs_rel"] == pytest.approx(abs_rel, rel=1e-12)
    assert (result["delta1"], result["delta2"], result["delta3"]) == (0.2, 0.4, 0.4)

    # min_depth 0.2 lifts the first pixel's depth 1/5.8 to 0.2: ratio to 1/9 becomes 1.8 (passes delta3 only).
    result = depth_metrics(prediction, 1 / target, mode="depth", min_depth=0.2, max_depth=2.0)
    abs_rel = (abs(0.2 - 1 / 9) * 9 + abs(1 / 4.2 - 1) + abs(1 / 2.6 - 1) + 0.0 + 1.0) / 5
    assert result["abs_rel"] == pytest.approx(abs_rel, rel=1e-12)
    assert (result["delta1"], result["delta2"], result["delta3"]) == (0.2, 0.2, 0.4)


def test_depth_metrics_average_per_image_not_per_pixel():
    prediction, depth, mask = random_depth_batch(seed=4)
    batch = depth_metrics(*to_torch(prediction, depth, mask))
    singles = [depth_metrics(*to_torch(prediction[i], depth[i], mask[i])) for i in range(3)]
    for key in DEPTH_KEYS:
        assert batch[key] == pytest.approx(np.mean([s[key] for s in singles]), abs=1e-12)


def test_depth_metrics_accumulator_over_batches_skips_empty_images():
    prediction, depth, mask = random_depth_batch(seed=5, batch=4)
    mask[2] = False  # no valid pixel: skipped, not averaged in as NaN
    metric = DepthMetrics("depth", max_depth=8.0)
    metric.update(*to_torch(prediction[:3], depth[:3], mask[:3]))
    metric.update(*to_torch(prediction[3:], depth[3:], mask[3:]))
    result = metric.compute()
    expected = reference_depth_metrics(prediction.astype(np.float64), depth, mask, "depth", max_depth=8.0)
    assert result["mode"] == "depth" and result["num_images"] == 3
    for key in DEPTH_KEYS:
        assert result[key] == pytest.approx(expected[key], abs=1e-10)

    metric.reset()
    with pytest.raises(RuntimeError, match="at least one image"):
        metric.compute()


def test_depth_metrics_low_precision_prediction_is_upcast():
    prediction, depth, mask = random_depth_batch(seed=6)
    low = torch.from_numpy(prediction).to(torch.bfloat16)
    result = depth_metrics(low, *to_torch(depth, mask))
    expected = reference_depth_metrics(low.double().numpy(), depth, mask, "disparity")
    for key in DEPTH_KEYS:
        assert result[key] == pytest.approx(expected[key], abs=1e-10)


def test_depth_metrics_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mode must be one of"):
        DepthMetrics("log")
    with pytest.raises(ValueError, match="min_depth"):
        DepthMetrics("depth", min_depth=10.0, max_depth=1.0)
    with pytest.raises(ValueError, match=r"prediction \(1, 4, 4\), target \(1, 4, 5\)"):
        depth_metrics(torch.ones(1, 4, 4), torch.ones(1, 4, 5))


# --------------------------------------------------------------------------------------------------- segmentation


def reference_segmentation(predictions, labels, num_labels, ignore_index=255, reduce_zero_label=False):
    """mmseg: per-image bincount areas summed over the dataset, then IoU / accuracies with NaN for empty classes."""
    intersection, prediction_area, label_area = (np.zeros(num_labels) for _ in range(3))
    for prediction, label in zip(predictions, labels):
        label = label.astype(np.int64)
        if reduce_zero_label:
            label = np.where(label == 0, ignore_index, np.where(label == ignore_index, ignore_index, label - 1))
        keep = label != ignore_index
        prediction, label = prediction[keep], label[keep]
        intersection += np.bincount(prediction[prediction == label], minlength=num_labels)
        prediction_area += np.bincount(prediction, minlength=num_labels)
        label_area += np.bincount(label, minlength=num_labels)
    union = prediction_area + label_area - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        iou, accuracy = intersection / union, intersection / label_area
    return {
        "mean_iou": np.nanmean(iou),
        "pixel_accuracy": intersection.sum() / label_area.sum(),
        "mean_accuracy": np.nanmean(accuracy),
        "per_class_iou": iou,
    }


def assert_segmentation_close(result, expected):
    assert result["mean_iou"] == pytest.approx(expected["mean_iou"], rel=1e-6)  # torchmetrics divides in float32
    assert result["pixel_accuracy"] == pytest.approx(expected["pixel_accuracy"], rel=1e-12)
    assert result["mean_accuracy"] == pytest.approx(expected["mean_accuracy"], rel=1e-12)
    np.testing.assert_allclose(result["per_class_iou"], expected["per_class_iou"], rtol=1e-12)  # NaN == NaN


@pytest.mark.parametrize("reduce_zero_label", [False, True])
def test_segmentation_matches_dataset_level_reference(reduce_zero_label):
    rng = np.random.default_rng(7)
    num_labels = 7
    low = 1 if reduce_zero_label else 0
    batches = []
    for _ in range(3):
        label = rng.integers(low, low + 5, (2, 16, 12)).astype(np.uint8)  # the last two classes never labelled
        label[rng.random(label.shape) < 0.15] = 255
        if reduce_zero_label:
            label[rng.random(label.shape) < 0.1] = 0
        # Class 5 is only predicted, class 6 absent everywhere; ignored pixels get predictions too (then dropped).
        right = label.astype(np.int64) - low
        prediction = np.clip(np.where(rng.random(label.shape) < 0.6, right, rng.integers(0, 6, label.shape)), 0, 5)
        batches.append((prediction, label))

    metric = SegmentationMetrics(num_labels, reduce_zero_label=reduce_zero_label)
    for prediction, label in batches:
        metric.update(*to_torch(prediction, label))
    result = metric.compute()
    expected = reference_segmentation(
        [p for batch, _ in batches for p in batch], [lab for _, batch in batches for lab in batch], num_labels,
        reduce_zero_label=reduce_zero_label,
    )
    assert math.isnan(result["per_class_iou"][6]) and result["per_class_iou"][5] == 0.0
    assert_segmentation_close(result, expected)


def test_segmentation_accumulates_over_the_dataset_not_per_image():
    # Image 1: all class 0, predicted right. Image 2: labels [0, 1, 1, 1], all predicted 1. Summed: class 0 I=4, U=5;
    # class 1 I=3, U=4 -> mIoU (0.8 + 0.75) / 2. Averaging per-image mIoUs would give (1 + (0 + 0.75) / 2) / 2.
    metric = SegmentationMetrics(2)
    metric.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long))
    metric.update(torch.ones(1, 2, 2, dtype=torch.long), torch.tensor([[[0, 1], [1, 1]]]))
    result = metric.compute()
    assert result["mean_iou"] == pytest.approx(0.775, rel=1e-6)
    assert result["pixel_accuracy"] == pytest.approx(7 / 8, rel=1e-12)
    assert result["mean_accuracy"] == pytest.approx((4 / 5 + 3 / 3) / 2, rel=1e-12)

    metric.reset()
    metric.update(torch.ones(1, 2, 2, dtype=torch.long), torch.tensor([[[0, 1], [1, 1]]]))
    assert metric.compute()["mean_iou"] == pytest.approx(0.375, rel=1e-6)


LABEL_3X3 = [[0, 0, 1], [0, 1, 1], [255, 1, 1]]
PREDICTION_3X3 = [[0, 1, 1], [0, 1, 2], [2, 1, 1]]


@pytest.mark.parametrize("reduce_zero_label", [False, True])
def test_segmentation_hand_computed_3x3(reduce_zero_label):
    # 8 labelled pixels. Class 0: I=2, P=2, L=3 -> IoU 2/3, acc 2/3. Class 1: I=4, P=5, L=5 -> IoU 4/6, acc 4/5.
    # Class 2: only predicted, I=0, U=1 -> IoU 0, acc 0/0 excluded. Class 3: absent -> excluded from both means.
    label = torch.tensor([LABEL_3X3])
    if reduce_zero_label:
        label = torch.where(label == 255, 0, label + 1)
    metric = SegmentationMetrics(4, reduce_zero_label=reduce_zero_label)
    metric.update(torch.tensor([PREDICTION_3X3]), label)
    result = metric.compute()
    assert result["mean_iou"] == pytest.approx(4 / 9, rel=1e-6)
    assert result["pixel_accuracy"] == pytest.approx(6 / 8, rel=1e-12)
    assert result["mean_accuracy"] == pytest.approx((2 / 3 + 4 / 5) / 2, rel=1e-12)
    np.testing.assert_allclose(result["per_class_iou"], [2 / 3, 2 / 3, 0.0, np.nan], rtol=1e-12)


def test_segmentation_rejects_bad_arguments():
    with pytest.raises(ValueError, match="outside the class range"):
        SegmentationMetrics(10, ignore_index=0)
    with pytest.raises(RuntimeError, match="before any update"):
        SegmentationMetrics(3).compute()
    with pytest.raises(ValueError, match=r"prediction \(1, 3, 3\), target \(1, 3, 4\)"):
        SegmentationMetrics(3).update(torch.zeros(1, 3, 3, dtype=torch.long), torch.zeros(1, 3, 4, dtype=torch.long))


# ------------------------------------------------------------------------------------------------------------ DA-2K


def test_ordinal_pair_accuracy_hand_computed():
    disparity = torch.tensor([[5.0, 1.0, 2.0, 3.0], [4.0, 4.0, 0.5, 9.0]])  # 2x4: [h, w] order matters
    pairs = [
        {"point1": [0, 0], "point2": [1, 2], "closer_point": "point1"},  # 5 > 0.5: right
        {"point1": [0, 1], "point2": [1, 3], "closer_point": "point1"},  # 1 < 9: wrong
        {"point1": [1, 3], "point2": [0, 3], "closer_point": "point2"},  # closer is 3 < 9: wrong
        {"point1": [1, 0], "point2": [1, 1], "closer_point": "point1"},  # tie 4 == 4: wrong
        {"point1": [0, 2], "point2": [0, 3], "closer_point": "point2"},  # closer is 3 > 2: right
    ]
    assert ordinal_pair_accuracy(disparity, pairs) == pytest.approx(2 / 5)
    assert ordinal_pair_accuracy(disparity.to(torch.bfloat16), pairs[:1]) == 1.0


def test_ordinal_pair_accuracy_rejects_out_of_bounds_and_bad_pairs():
    disparity = torch.zeros(2, 4)
    with pytest.raises(ValueError, match=r"pair 0: point2 \[3, 1\] lies outside the 2x4"):
        ordinal_pair_accuracy(disparity, [{"point1": [0, 0], "point2": [3, 1], "closer_point": "point1"}])
    with pytest.raises(ValueError, match="pair 0: closer_point"):
        ordinal_pair_accuracy(disparity, [{"point1": [0, 0], "point2": [1, 1], "closer_point": "left"}])
    with pytest.raises(ValueError, match="at least one pair"):
        ordinal_pair_accuracy(disparity, [])


def test_load_da2k_annotations(tmp_path):
    data = {
        "images/indoor/a.jpg": [
            {"point1": [10, 20], "point2": [30, 40], "closer_point": "point1"},
            {"point1": [1.0, 2], "point2": [3, 4], "closer_point": "point2"},
        ],
        "images/aerial/b.png": [],
    }
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(data))
    annotations = load_da2k_annotations(path)
    assert list(annotations) == list(data)
    assert annotations["images/indoor/a.jpg"][1] == {"point1": [1, 2], "point2": [3, 4], "closer_point": "point2"}
    assert all(isinstance(c, int) for c in annotations["images/indoor/a.jpg"][1]["point1"])


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "not valid JSON"),
        ([], "expected a JSON object"),
        ({"x.jpg": {"point1": [0, 0]}}, r"entry 'x.jpg': expected a list of pairs"),
        ({"x.jpg": [{"point1": [0, 0], "point2": [1, 1]}]}, r"entry 'x.jpg', pair 0: closer_point"),
        ({"x.jpg": [{"point1": [0, 0], "point2": [1.5, 1], "closer_point": "point1"}]}, r"pair 0: point2 must be"),
        ({"x.jpg": [{"point1": [-1, 0], "point2": [1, 1], "closer_point": "point1"}]}, r"pair 0: point1 must be"),
        ({"x.jpg": [{"point1": [0, 0], "point2": [1, 1], "closer_point": "point1"}, 7]}, r"pair 1: expected an obj"),
    ],
)
def test_load_da2k_annotations_errors_name_file_and_entry(tmp_path, content, message):
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(content) if content is not None else '{"x.jpg": [')
    with pytest.raises(ValueError, match=message) as error:
        load_da2k_annotations(path)
    assert str(path) in str(error.value)


# ------------------------------------------------------------------------------------------------- feature cosine


def reference_cosine(student, teacher, channel_axis):
    dot = np.sum(student * teacher, axis=channel_axis)
    norms = np.linalg.norm(student, axis=channel_axis) * np.linalg.norm(teacher, axis=channel_axis)
    return np.mean(dot / norms)


def test_feature_cosine_tokens_and_maps_match_reference():
    rng = np.random.default_rng(8)
    student = rng.normal(size=(2, 5, 8)).astype(np.float32)
    teacher = (student + rng.normal(scale=0.7, size=student.shape)).astype(np.float32)
    expected = reference_cosine(student.astype(np.float64), teacher.astype(np.float64), channel_axis=-1)
    assert feature_cosine(*to_torch(student, teacher)) == pytest.approx(expected, abs=1e-12)

    maps = [torch.from_numpy(x).permute(0, 2, 1).reshape(2, 8, 5, 1) for x in (student, teacher)]  # [B, C, H, W]
    assert feature_cosine(*maps) == pytest.approx(expected, abs=1e-12)
    assert feature_cosine(maps[0], -maps[0]) == pytest.approx(-1.0, abs=1e-12)


def test_feature_cosine_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"student \(2, 5, 8\), teacher \(2, 5, 9\)"):
        feature_cosine(torch.ones(2, 5, 8), torch.ones(2, 5, 9))
    with pytest.raises(ValueError, match=r"\[B, N, C\]"):
        feature_cosine(torch.ones(5, 8), torch.ones(5, 8))
