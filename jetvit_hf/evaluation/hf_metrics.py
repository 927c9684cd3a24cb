"""The depth and segmentation metrics of `jetvit_hf.evaluation.metrics` as Hugging Face `evaluate.Metric` modules.

`JetViTDepthMetric` (AbsRel and delta1..3 after per-image least-squares scale-shift alignment, `DepthMetrics`) and
`JetViTMeanIoU` (dataset-level mIoU, pixel accuracy and mean class accuracy, `SegmentationMetrics`) are instantiated
directly, need no network (the Hub's metric scripts are not used) and work with `add` / `add_batch` / `compute` and
`evaluate.combine`. Their `_compute` only converts the stored examples to tensors and delegates to `metrics.py`, which
holds the math. Options (depth mode, clipping range, class count, ignore index) are constructor arguments, because
`evaluate.combine` does not forward compute-time keyword arguments.

One example is one image: a prediction map and a reference map of the same shape, each either 2-D (`[H, W]` nested
sequences or arrays) or flattened 1-D (the metrics are per-pixel, so the layout does not matter; a flat array is
stored much faster). Images may differ in size. Depth examples are stored in float64, so float32 inputs are exact.

Instantiate the classes directly rather than through `evaluate.load(path_to_this_file)`: that works offline, but
evaluate imports a copy of the script and returns only its first metric class (`JetViTDepthMetric`).
"""

import datasets
import evaluate
import numpy as np
import pyarrow as pa
import torch

# Absolute, so that a copy of this script made by `evaluate.load` still uses the package's metrics module.
from jetvit_hf.evaluation.metrics import DepthMetrics, SegmentationMetrics

_DEPTH_CITATION = """\
@inproceedings{yang2024depth,
  title={Depth Anything: Unleashing the Power of Large-Scale Unlabeled Data},
  author={Yang, Lihe and Kang, Bingyi and Huang, Zilong and Xu, Xiaogang and Feng, Jiashi and Zhao, Hengshuang},
  booktitle={CVPR},
  year={2024}
}
@article{ranftl2020towards,
  title={Towards Robust Monocular Depth Estimation: Mixing Datasets for Zero-shot Cross-dataset Transfer},
  author={Ranftl, Ren{\\'e} and Lasinger, Katrin and Hafner, David and Schindler, Konrad and Koltun, Vladlen},
  journal={IEEE TPAMI},
  year={2020}
}
"""

_SEGMENTATION_CITATION = """\
@misc{mmseg2020,
  title={{MMSegmentation}: OpenMMLab Semantic Segmentation Toolbox and Benchmark},
  author={MMSegmentation Contributors},
  howpublished={\\url{https://github.com/open-mmlab/mmsegmentation}},
  year={2020}
}
"""

_MAP_INPUTS = """
Args:
    predictions: one map per image, `[H, W]` or flattened, as arrays, tensors or nested sequences.
    references: one map per image, of the same shape as its prediction.
"""


class _MapFeatures(datasets.Features):
    """Features of per-image maps that store a batch of 1-D numpy arrays as it is. The generic encoding first turns
    each array into a list of Python scalars, which costs seconds per ten million pixels (a minute for 256 images at
    448 px in `jetvit eval`); Arrow reads a list of arrays directly and casts it to the feature's type."""

    def encode_batch(self, batch):
        if all(isinstance(value, np.ndarray) and value.ndim == 1 for column in batch.values() for value in column):
            return {name: list(column) for name, column in batch.items()}
        return super().encode_batch(batch)


def _map_features(value_type: str) -> list[datasets.Features]:
    """Feature options for per-image maps, 2-D first, then flattened (evaluate picks the first that fits)."""
    flat = datasets.Sequence(datasets.Value(value_type))
    return [
        _MapFeatures({"predictions": datasets.Sequence(flat), "references": datasets.Sequence(flat)}),
        _MapFeatures({"predictions": flat, "references": flat}),
    ]


class _MapMetric(evaluate.Metric):
    """A metric over per-image maps, whose stored maps reach `_compute` as an Arrow column (`_stored_maps` views each
    as a numpy array) rather than as lists of Python floats, which take seconds per ten million pixels. `MetricInfo`
    takes a format only for scalar features, and its "numpy" format would round to float32, so "arrow" is set once
    the module exists."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.info.format = "arrow"


def _stored_maps(column: pa.ChunkedArray, dtype: torch.dtype) -> list[torch.Tensor]:
    """Each map of a stored list column (1-D or 2-D per image) as a `[1, N]` tensor (one image of the `metrics.py`
    classes), viewed on the stored values."""
    maps = []
    for stored in column:
        values = stored.values
        while pa.types.is_list(values.type):
            values = values.flatten()
        maps.append(torch.tensor(values.to_numpy(zero_copy_only=False), dtype=dtype).reshape(1, -1))
    return maps


class JetViTDepthMetric(_MapMetric):
    """AbsRel and delta1..3 of relative depth after per-image least-squares scale-shift alignment (`DepthMetrics`).

    Predictions are disparity-like (Depth Anything's relative output). `mode="disparity"` compares the aligned
    disparity with the reference disparity; `mode="depth"` inverts the aligned disparity, clips it to
    [`min_depth`, `max_depth`] and compares it with the reference depth. Reference pixels that are not finite or not
    positive are ignored, so a mask is applied by setting the reference to NaN outside it. `compute()` returns
    `{"mode", "num_images", "abs_rel", "delta1", "delta2", "delta3"}` (fractions, not x100).

    Args:
        mode: `"disparity"` or `"depth"`.
        target_is_depth: whether references are depth (True) or disparity (False).
        min_depth, max_depth: clipping range of the predicted depth in `"depth"` mode (`None`: no bound).
        **kwargs: `evaluate.EvaluationModule` arguments (`keep_in_memory`, `cache_dir`, `experiment_id`, ...).
    """

    def __init__(self, mode: str = "disparity", *, target_is_depth: bool = True, min_depth: float | None = 1e-3,
                 max_depth: float | None = None, **kwargs):
        self.depth_options = {"mode": mode, "target_is_depth": target_is_depth, "min_depth": min_depth,
                              "max_depth": max_depth}
        DepthMetrics(**self.depth_options)  # validates the options now rather than at compute()
        super().__init__(**kwargs)

    @classmethod
    def like(cls, metrics: DepthMetrics, **kwargs) -> "JetViTDepthMetric":
        """A `JetViTDepthMetric` with the options of `metrics` (e.g. from `depth.make_depth_metrics`)."""
        return cls(metrics.mode, target_is_depth=metrics.target_is_depth, min_depth=metrics.min_depth,
                   max_depth=metrics.max_depth, **kwargs)

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="AbsRel and delta1..3 of affine-invariant relative depth after per-image least-squares "
                        "scale-shift alignment in disparity space (Depth Anything's disparity mode or "
                        "MiDaS/Marigold's depth mode), averaged over images.",
            citation=_DEPTH_CITATION,
            inputs_description=_MAP_INPUTS + "Non-finite or non-positive reference pixels are ignored.\n",
            features=_map_features("float64"),
        )

    def _compute(self, predictions, references) -> dict:
        metric = DepthMetrics(**self.depth_options)
        for prediction, reference in zip(_stored_maps(predictions, torch.float64),
                                         _stored_maps(references, torch.float64)):
            metric.update(prediction, reference)
        return metric.compute()


class JetViTMeanIoU(_MapMetric):
    """Dataset-level mIoU, pixel accuracy and mean class accuracy, as mmseg and DINOv3 compute them
    (`SegmentationMetrics`): per-class intersections and unions summed over every pixel of every image first.

    `compute()` returns `{"mean_iou", "pixel_accuracy", "mean_accuracy", "per_class_iou"}` (fractions; NaN IoU for a
    class that is neither predicted nor labelled).

    Args:
        num_labels: number of classes (after `reduce_zero_label`).
        ignore_index: label of ignored pixels, outside [0, num_labels).
        reduce_zero_label: treat label 0 as ignored and shift the other labels down by one (ADE20K).
        **kwargs: `evaluate.EvaluationModule` arguments (`keep_in_memory`, `cache_dir`, `experiment_id`, ...).
    """

    def __init__(self, num_labels: int, ignore_index: int = 255, reduce_zero_label: bool = False, **kwargs):
        self.segmentation_options = {"num_labels": num_labels, "ignore_index": ignore_index,
                                     "reduce_zero_label": reduce_zero_label}
        SegmentationMetrics(**self.segmentation_options)  # validates the options now rather than at compute()
        super().__init__(**kwargs)

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Semantic segmentation mIoU, pixel accuracy (aAcc) and mean class accuracy over a whole "
                        "dataset, from one confusion matrix accumulated over all images (mmseg / DINOv3 protocol).",
            citation=_SEGMENTATION_CITATION,
            inputs_description=_MAP_INPUTS + "Both are integer class-index maps; `ignore_index` pixels are dropped.\n",
            features=_map_features("int64"),
        )

    def _compute(self, predictions, references) -> dict:
        metric = SegmentationMetrics(**self.segmentation_options)
        for prediction, reference in zip(_stored_maps(predictions, torch.long), _stored_maps(references, torch.long)):
            metric.update(prediction, reference)
        return metric.compute()
