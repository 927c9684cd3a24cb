"""Search objectives: each scores the subnet a supernet has set (or any JetViT) on a fixed held-out set whose
reference outputs are computed once. `"feature"` (the negated feature-distillation loss against the teacher, the fast
proxy), `"depth"` (a depth metric against ground truth or the teacher's prediction), `"segmentation"` (a linear probe's
mIoU) and `"ordinal"` (pairwise ordinal accuracy in DA-2K's format); `make_objective` builds one by name.
"""

import os

import torch

from ..evaluation.depth import is_depth_model, make_depth_metrics, ordinal_accuracy, sample_ordinal_pairs
from ..evaluation.images import (
    EvalImages,
    default_image_size,
    load_da2k_images,
    load_eval_images,
    model_inputs,
    require_labels,
    resize_map,
)
from ..evaluation.metrics import DEPTH_METRIC_NAMES
from ..evaluation.probe import check_probe, probe_segmentation_metrics, train_linear_probe
from ..train.losses import FeatureDistillationLoss
from ..train.targets import check_teacher_student, resolve_targets, task_features, unwrap

OBJECTIVES = ("feature", "depth", "segmentation", "ordinal")


class Objective:
    """A search objective: `evaluate(model)` scores the subnet a supernet has set (or any JetViT) on a fixed held-out
    set whose reference outputs were computed once. Subclasses set `name`, `higher_is_better` and `score`."""

    name = "objective"
    higher_is_better = True

    def evaluate(self, model: torch.nn.Module) -> float:
        """The score of `model` in eval mode without gradients (its training flag is restored afterwards)."""
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                return float(self.score(model))
        finally:
            model.train(was_training)

    def score(self, model: torch.nn.Module) -> float:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name, "higher_is_better": self.higher_is_better}


class _TeacherObjective(Objective):
    """An objective with a teacher and a fixed `EvalImages` set; students must match the teacher's shape."""

    def __init__(self, teacher: torch.nn.Module, images: EvalImages):
        if len(images) == 0:
            raise ValueError("The evaluation set is empty.")
        self.teacher = teacher.eval()
        self.images = images

    def check(self, model: torch.nn.Module) -> None:
        check_teacher_student(unwrap(self.teacher).config, unwrap(model).config)

    def describe(self) -> dict:
        sizes = sorted({tuple(batch.shape[-2:]) for batch in self.images.batches})
        return {**super().describe(), "num_images": len(self.images), "input_sizes": [list(s) for s in sizes]}


class FeatureObjective(_TeacherObjective):
    """The negated feature-distillation loss between the student's and the teacher's task features (the DPT taps of
    a depth model, else the normed last layer; `train.targets.task_features`): the fast proxy. Higher is better."""

    name = "feature"

    def __init__(self, teacher, images: EvalImages, targets: str = "auto", loss: torch.nn.Module | None = None):
        super().__init__(teacher, images)
        self.targets = resolve_targets(teacher, targets)
        self.loss = loss if loss is not None else FeatureDistillationLoss()
        with torch.inference_mode():
            self.teacher_features = [
                [tap.cpu() for tap in task_features(teacher, model_inputs(pixels, teacher), self.targets).features]
                for pixels in images.batches
            ]

    def score(self, model) -> float:
        self.check(model)
        total = 0.0
        for pixels, reference in zip(self.images.batches, self.teacher_features):
            student = task_features(model, model_inputs(pixels, model), self.targets).features
            total += self.loss(student, [tap.to(s.device) for tap, s in zip(reference, student)]).item() * len(pixels)
        return -total / len(self.images)

    def describe(self) -> dict:
        return {**super().describe(), "targets": self.targets, "loss": repr(self.loss)}


def _predicted_depth(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """`[B, H, W]` float32 predicted disparity on the CPU, at the model's input resolution."""
    return task_features(model, model_inputs(pixel_values, model), with_prediction=True).prediction.float().cpu()


class DepthObjective(_TeacherObjective):
    """A `DepthMetrics` metric (`"delta1"`, `"delta2"`, `"delta3"` or `"abs_rel"`) of the model's predicted disparity
    against ground truth (images with `depth`; at the original resolution) or the teacher's prediction (at the model's
    resolution), in `mode` `"disparity"` (Depth Anything's) or `"depth"` (MiDaS/Marigold's)."""

    def __init__(self, teacher, images: EvalImages, metric: str = "delta1", mode: str = "disparity",
                 reference: str = "auto"):
        super().__init__(teacher, images)
        if not is_depth_model(teacher):
            raise ValueError(f"The depth objective needs a depth model (JetViTForDepthEstimation), got "
                             f"{type(unwrap(teacher)).__name__}.")
        if metric not in DEPTH_METRIC_NAMES:
            raise ValueError(f"Unknown depth metric {metric!r}; allowed: {list(DEPTH_METRIC_NAMES)}.")
        if reference == "auto":
            reference = "ground_truth" if images.depth is not None else "teacher"
        if reference not in ("teacher", "ground_truth"):
            raise ValueError(f"reference must be 'auto', 'teacher' or 'ground_truth', got {reference!r}.")
        if reference == "ground_truth" and images.depth is None:
            raise ValueError("reference='ground_truth' needs a `depth` column in the data.")
        self.metric, self.mode, self.reference = metric, mode, reference
        self.name = f"depth_{metric}"
        self.higher_is_better = metric != "abs_rel"
        if reference == "teacher":
            with torch.inference_mode():
                self.targets = [
                    prediction
                    for pixels in images.batches
                    for prediction in _predicted_depth(teacher, pixels)
                ]
        else:
            self.targets = images.depth
        self.metrics = make_depth_metrics(mode, self.targets, target_is_depth=reference == "ground_truth")

    def score(self, model) -> float:
        self.check(model)
        self.metrics.reset()
        for pixels, first in self.images.batch_slices():
            for offset, prediction in enumerate(_predicted_depth(model, pixels)):
                target = self.targets[first + offset]
                self.metrics.update(resize_map(prediction, target.shape), target)
        return self.metrics.compute()[self.metric]

    def describe(self) -> dict:
        return {**super().describe(), "metric": self.metric, "mode": self.mode, "reference": self.reference}


class SegmentationObjective(_TeacherObjective):
    """mIoU (against the ground-truth `labels`, ignore index 255, over the whole set) of a linear probe applied to the
    model's normed last-layer patch tokens. The probe is given, or trained once on the TEACHER's features."""

    name = "segmentation_miou"

    def __init__(self, teacher, images: EvalImages, probe=None, num_labels: int | None = None,
                 probe_steps: int = 1000, seed: int = 0, progress: bool = True):
        super().__init__(teacher, images)
        require_labels(images, "The segmentation objective")
        self.probe_source = "given" if probe is not None else f"trained on the teacher's features ({probe_steps} steps)"
        if probe is None:
            probe = train_linear_probe(teacher, images, num_labels, steps=probe_steps, seed=seed, progress=progress)
        check_probe(probe, teacher)
        self.probe = probe.eval()

    def score(self, model) -> float:
        self.check(model)
        return probe_segmentation_metrics(model, self.probe, self.images)["mean_iou"]

    def describe(self) -> dict:
        return {**super().describe(), "probe": self.probe_source, "num_labels": self.probe.classifier.out_channels}


class OrdinalObjective(_TeacherObjective):
    """Pairwise ordinal accuracy in DA-2K's format: the given pairs (one list per image), or `pairs_per_image` pairs
    per image sampled where the teacher's disparity (at the original resolution) differs by more than 10%."""

    name = "ordinal_accuracy"

    def __init__(self, teacher, images: EvalImages, pairs: list[list[dict]] | None = None, pairs_per_image: int = 64,
                 seed: int = 0):
        super().__init__(teacher, images)
        if not is_depth_model(teacher):
            raise ValueError("The ordinal objective needs a depth model (JetViTForDepthEstimation).")
        self.pairs_source = "given (DA-2K format)" if pairs is not None else "sampled from the teacher's disparity"
        if pairs is None:
            generator = torch.Generator().manual_seed(seed)
            pairs = []
            with torch.inference_mode():
                for pixels, first in images.batch_slices():
                    for offset, prediction in enumerate(_predicted_depth(teacher, pixels)):
                        size = images.original_sizes[first + offset]
                        pairs.append(sample_ordinal_pairs(resize_map(prediction, size), pairs_per_image, generator))
            if not any(pairs):
                raise ValueError("No ordinal pair: the teacher's disparity never differs by more than 10% between "
                                 "two pixels.")
        if len(pairs) != len(images) or not any(pairs):
            raise ValueError(f"Expected one list of pairs per image ({len(images)}), at least one pair in all; got "
                             f"{len(pairs)} lists with {sum(map(len, pairs))} pairs.")
        self.pairs = pairs

    def score(self, model) -> float:
        self.check(model)
        return ordinal_accuracy(model, self.images, self.pairs)

    def describe(self) -> dict:
        return {**super().describe(), "pairs": self.pairs_source, "num_pairs": sum(len(p) for p in self.pairs)}


def make_objective(name: str, teacher: torch.nn.Module, data=None, *, image_size=None, num_images: int | None = None,
                   batch_size: int = 8, metric: str = "delta1", depth_mode: str = "disparity",
                   reference: str = "auto", da2k: str | os.PathLike | None = None, probe=None,
                   num_labels: int | None = None, probe_steps: int = 1000, feature_targets: str = "auto",
                   seed: int = 0, progress: bool = True) -> Objective:
    """The objective `name` (one of `OBJECTIVES`) for `teacher` on `data` (anything `evaluation.images.load_eval_images`
    reads; for `"ordinal"`, a DA-2K `annotations.json` in `da2k` replaces it)."""
    if name not in OBJECTIVES:
        raise ValueError(f"Unknown objective {name!r}; allowed: {list(OBJECTIVES)}.")
    config = unwrap(teacher).config
    image_size = image_size or default_image_size(config)
    if name == "ordinal" and da2k is not None:
        images, pairs = load_da2k_images(da2k, config.patch_size, image_size, batch_size)
        return OrdinalObjective(teacher, images, pairs)
    if data is None:
        raise ValueError(f"The {name} objective needs evaluation images (data).")
    images = load_eval_images(data, config.patch_size, image_size, num_images, batch_size)
    if name == "feature":
        return FeatureObjective(teacher, images, feature_targets)
    if name == "depth":
        return DepthObjective(teacher, images, metric, depth_mode, reference)
    if name == "segmentation":
        return SegmentationObjective(teacher, images, probe, num_labels, probe_steps, seed, progress)
    return OrdinalObjective(teacher, images, seed=seed)
