"""The `evaluate` modules of `jetvit_hf.evaluation.hf_metrics` against float64 long-hand references (least squares and
confusion matrices written out here), in one `compute`, over several `add_batch` calls and through `evaluate.combine`;
and the evaluator's depth numbers through them equal `DepthMetrics`'."""

import evaluate
import numpy as np
import pytest
import torch

from jetvit_hf.evaluation.depth import make_depth_metrics
from jetvit_hf.evaluation.evaluator import _depth_module_result
from jetvit_hf.evaluation.hf_metrics import JetViTDepthMetric, JetViTMeanIoU
from jetvit_hf.evaluation.metrics import SegmentationMetrics

DEPTH_KEYS = ("abs_rel", "delta1", "delta2", "delta3")
SIZES = [(7, 9), (5, 5), (8, 6), (4, 11), (6, 6)]


def depth_images(seed: int = 0):
    """Disparity-like predictions and depth references of several sizes; some reference pixels NaN or 0 (invalid)."""
    rng = np.random.default_rng(seed)
    predictions, references = [], []
    for height, width in SIZES:
        depth = rng.uniform(0.5, 8.0, (height, width))
        prediction = 3.0 / depth + 0.2 + rng.normal(0, 0.08, depth.shape)
        depth[rng.random(depth.shape) < 0.1] = np.nan
        depth[rng.random(depth.shape) < 0.05] = 0.0
        predictions.append(prediction)
        references.append(depth)
    return predictions, references


def longhand_depth(predictions, references, mode, min_depth, max_depth):
    """Mean over images of AbsRel and delta1..3 after a float64 least-squares fit of [p, 1] to 1 / depth."""
    rows = []
    for prediction, depth in zip(predictions, references):
        valid = np.isfinite(depth) & (depth > 0)
        p, d = prediction[valid], depth[valid]
        (scale, shift), *_ = np.linalg.lstsq(np.stack([p, np.ones_like(p)], 1), 1 / d, rcond=None)
        aligned = scale * p + shift
        if mode == "disparity":
            estimate, truth = aligned, 1 / d
        else:
            estimate, truth = np.clip(1 / np.maximum(aligned, 1 / max_depth), min_depth, max_depth), d
        ratio = np.maximum(estimate / truth, truth / estimate)
        rows.append([np.mean(np.abs(estimate - truth) / truth)]
                    + [np.mean((estimate > 0) & (ratio < 1.25**k)) for k in (1, 2, 3)])
    return dict(zip(DEPTH_KEYS, np.mean(rows, axis=0)))


def label_maps(num_labels: int, seed: int = 0):
    """Noisy copies of random label maps (255: ignored) of several sizes; the last class never appears."""
    rng = np.random.default_rng(seed)
    predictions, references = [], []
    for height, width in SIZES:
        reference = rng.integers(0, num_labels - 1, (height, width))
        prediction = np.where(rng.random(reference.shape) < 0.7, reference, rng.integers(0, num_labels - 1, (1,)))
        reference[rng.random(reference.shape) < 0.1] = 255
        predictions.append(prediction)
        references.append(reference)
    return predictions, references


def longhand_segmentation(predictions, references, num_labels):
    """mIoU, aAcc and mean class accuracy from one float64 confusion matrix over all images (rows: label)."""
    confusion = np.zeros((num_labels, num_labels))
    for prediction, reference in zip(predictions, references):
        kept = reference != 255
        np.add.at(confusion, (reference[kept], prediction[kept]), 1)
    intersection, label_area = np.diag(confusion), confusion.sum(1)
    union = confusion.sum(0) + label_area - intersection
    with np.errstate(invalid="ignore"):
        iou, accuracy = intersection / union, intersection / label_area
    return {"mean_iou": np.nanmean(iou), "pixel_accuracy": intersection.sum() / label_area.sum(),
            "mean_accuracy": np.nanmean(accuracy), "per_class_iou": iou}


def test_depth_metric_matches_longhand_in_one_compute_and_over_batches():
    predictions, references = depth_images()
    for mode, max_depth in (("disparity", None), ("depth", 10.0)):
        expected = longhand_depth(predictions, references, mode, 1e-3, max_depth)
        whole = JetViTDepthMetric(mode, max_depth=max_depth, keep_in_memory=True)
        result = whole.compute(predictions=predictions, references=references)
        assert result["mode"] == mode and result["num_images"] == len(SIZES)
        assert [result[key] for key in DEPTH_KEYS] == pytest.approx([expected[key] for key in DEPTH_KEYS], rel=1e-9)
        batched = JetViTDepthMetric(mode, max_depth=max_depth)
        for first in range(0, len(SIZES), 2):
            batched.add_batch(predictions=predictions[first:first + 2], references=references[first:first + 2])
        assert batched.compute() == result


def test_depth_metric_takes_arrays_tensors_nested_lists_and_flat_maps():
    predictions, references = depth_images(1)
    expected = JetViTDepthMetric().compute(predictions=predictions, references=references)
    as_tensors = JetViTDepthMetric().compute(predictions=[torch.tensor(p, dtype=torch.float32) for p in predictions],
                                             references=[torch.tensor(r) for r in references])
    assert [as_tensors[key] for key in DEPTH_KEYS] == pytest.approx([expected[key] for key in DEPTH_KEYS], rel=1e-6)
    as_lists = JetViTDepthMetric().compute(predictions=[p.tolist() for p in predictions],
                                           references=[r.tolist() for r in references])
    flat = JetViTDepthMetric()
    for prediction, reference in zip(predictions, references):
        flat.add(prediction=prediction.ravel(), reference=reference.ravel())
    assert as_lists == flat.compute() == expected
    # a batch of flat arrays is stored without conversion to Python floats, still exactly in float64
    rounded = [prediction.astype(np.float32) for prediction in predictions]
    as_float32 = JetViTDepthMetric().compute(predictions=[p.ravel() for p in rounded],
                                             references=[r.ravel() for r in references])
    assert as_float32 == JetViTDepthMetric().compute(predictions=[p.astype(np.float64) for p in rounded],
                                                     references=[r.tolist() for r in references])
    with pytest.raises(ValueError, match="Shapes must match"):
        JetViTDepthMetric().compute(predictions=[predictions[0]], references=[references[1]])
    with pytest.raises(ValueError, match="mode must be one of"):
        JetViTDepthMetric("metric")


def test_mean_iou_matches_longhand_confusion_matrix_and_streaming_segmentation_metrics():
    num_labels = 5
    predictions, references = label_maps(num_labels)
    expected = longhand_segmentation(predictions, references, num_labels)
    metric = JetViTMeanIoU(num_labels, keep_in_memory=True)
    for first in range(0, len(SIZES), 2):
        metric.add_batch(predictions=predictions[first:first + 2], references=references[first:first + 2])
    result = metric.compute()
    assert result["mean_iou"] == pytest.approx(expected["mean_iou"], rel=1e-6)  # torchmetrics' float32 division
    for key in ("pixel_accuracy", "mean_accuracy"):
        assert result[key] == pytest.approx(expected[key], rel=1e-12)
    assert np.isnan(result["per_class_iou"][-1])
    np.testing.assert_allclose(result["per_class_iou"], expected["per_class_iou"], rtol=1e-12)
    # the evaluator's report streams SegmentationMetrics per image instead and names this module: same numbers
    streaming = SegmentationMetrics(num_labels)
    for prediction, reference in zip(predictions, references):
        streaming.update(torch.from_numpy(prediction), torch.from_numpy(reference))
    reported = streaming.compute()
    np.testing.assert_array_equal(reported.pop("per_class_iou"), result.pop("per_class_iou"))
    assert reported == result


def test_mean_iou_reduce_zero_label_and_option_checks():
    predictions, references = label_maps(6, seed=2)
    shifted = [np.where((r == 0) | (r == 255), 255, r - 1) for r in references]
    result = JetViTMeanIoU(5, reduce_zero_label=True).compute(predictions=predictions, references=references)
    expected = longhand_segmentation(predictions, shifted, 5)
    assert result["mean_iou"] == pytest.approx(expected["mean_iou"], rel=1e-6)
    assert result["pixel_accuracy"] == pytest.approx(expected["pixel_accuracy"], rel=1e-12)
    with pytest.raises(ValueError, match="ignore_index"):
        JetViTMeanIoU(5, ignore_index=3)


def test_combine_prefixes_each_mode_and_matches_the_single_modules():
    predictions, references = depth_images(3)
    combined = evaluate.combine({"da": JetViTDepthMetric("disparity"),
                                 "midas": JetViTDepthMetric("depth", max_depth=10.0)})
    for first in range(0, len(SIZES), 3):
        combined.add_batch(predictions=predictions[first:first + 3], references=references[first:first + 3])
    result = combined.compute()
    for prefix, mode, max_depth in (("da", "disparity", None), ("midas", "depth", 10.0)):
        expected = longhand_depth(predictions, references, mode, 1e-3, max_depth)
        assert result[f"{prefix}_mode"] == mode
        assert [result[f"{prefix}_{key}"] for key in DEPTH_KEYS] == pytest.approx(list(expected.values()), rel=1e-9)


def test_evaluator_depth_through_the_module_equals_depth_metrics():
    predictions, references = depth_images(4)
    predictions = [torch.tensor(p, dtype=torch.float32) for p in predictions]
    references = [torch.tensor(r, dtype=torch.float32) for r in references]
    disparities = [1 / r for r in references]
    for mode in ("disparity", "depth"):
        for targets, target_is_depth in ((references, True), (disparities, False)):
            direct = make_depth_metrics(mode, targets, target_is_depth)
            for prediction, target in zip(predictions, targets):
                direct.update(prediction, target)
            assert _depth_module_result(mode, predictions, targets, target_is_depth) == direct.compute()
