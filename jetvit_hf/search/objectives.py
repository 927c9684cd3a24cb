"""Search objectives: each scores the subnet a supernet has set (or any JetViT) on a fixed held-out set whose reference
outputs are computed once. `"feature"` (the negated feature-distillation loss against the teacher, the fast proxy),
`"depth"` (a depth metric against ground truth or the teacher's prediction), `"segmentation"` (a linear probe's mIoU)
and `"ordinal"` (pairwise ordinal accuracy in DA-2K's format); `make_objective` builds one by name.

An objective with a teacher runs on one `Placement` (`jetvit_hf.device`; by default a GPU with bfloat16 autocast when
there is one, else the CPU in float32): its images are moved to the device once, the teacher runs over them exactly
once and what is kept of its outputs stays there, so scoring a candidate is one forward of the candidate per batch
plus float32/float64 metrics on the device. The teacher's own score comes from those kept outputs.

Every objective also gives per-image scores (`Objective.assess`), so the search can measure how much of a difference
between two layouts is noise (`evaluation.bootstrap`): one number per image whose mean is the score, or, for
segmentation (a dataset-level mIoU, which is no mean over images), one confusion matrix per image whose sum the mIoU
is computed from.

Scoring is two steps an objective can run apart: `predict(model)` (the model's outputs on the images: disparity maps,
feature maps or task features) and `assess_outputs(outputs)` (the score and per-image scores of those outputs), so that
several measures of the same outputs run the model once (`assess_all`; e.g. `DepthObjective.derived`, another depth
metric or reference on the same teacher pass). The teacher's own score is computed once and kept.
"""

import contextlib
import copy
import os
import time
from collections.abc import Iterable

import torch

from ..device import Placement, resolve_placement
from ..evaluation.depth import is_depth_model, make_depth_metrics, predicted_depth, sample_ordinal_pairs
from ..evaluation.images import (
    IGNORE_INDEX,
    EvalImages,
    default_image_size,
    load_da2k_images,
    load_eval_images,
    model_inputs,
    require_labels,
    resize_map,
    within_ground_truth,
)
from ..evaluation.metrics import DEPTH_METRIC_NAMES, ordinal_pair_accuracy
from ..evaluation.probe import check_probe, fit_linear_probe, probe_feature_maps, probe_map_confusions
from ..train.losses import FeatureDistillationLoss
from ..train.targets import check_teacher_student, resolve_targets, task_features, unwrap

OBJECTIVES = ("feature", "depth", "segmentation", "ordinal")


class Objective:
    """A search objective: `evaluate(model)` scores the subnet a supernet has set (or any JetViT) on a fixed held-out
    set whose reference outputs were computed once, `assess(model)` also gives the per-image scores. Subclasses set
    `name`, `higher_is_better` and `score` (or `score_images`, where the score is a mean over images); one with a
    `placement` runs the models it scores there. One that computes the model's outputs apart from scoring them
    implements `model_outputs` and `score_outputs`, which gives `predict` and `assess_outputs`."""

    name = "objective"
    higher_is_better = True
    placement: Placement | None = None  # where `evaluate` moves the model first; None: it runs where it is
    reference_seconds: float | None = None  # wall-clock seconds of the one pass of the teacher, where there is one

    def evaluate(self, model: torch.nn.Module) -> float:
        """The score of `model` (`assess`)."""
        return self.assess(model)[0]

    def assess(self, model: torch.nn.Module) -> tuple[float, torch.Tensor | None]:
        """The score of `model` in eval mode without gradients (its training flag is restored afterwards) and its
        float64 CPU per-image scores, what `evaluation.bootstrap` takes: `[N]` numbers whose mean is the score, or
        `[N, C, C]` confusion matrices whose summed mIoU is the score (segmentation); None for an objective without
        them. With a `placement`, the model is moved to its device first and left there."""
        with self._scoring(model):
            score, per_image = self.score_images(model)
        return _assessment(score, per_image)

    def predict(self, model: torch.nn.Module) -> list:
        """`model`'s outputs on the objective's images, one entry per batch (`model_outputs`), computed as `assess`
        runs the model (placed, in eval mode without gradients, its training flag restored), to be scored by
        `assess_outputs` of this objective or of any that `shares_outputs` with it."""
        with self._scoring(model):
            return list(self.model_outputs(model))

    def assess_outputs(self, outputs) -> tuple[float, torch.Tensor | None]:
        """What `assess` gives for the model whose outputs `predict` gave: the score and the float64 CPU per-image
        scores (`score_outputs`, without gradients)."""
        with torch.inference_mode():
            score, per_image = self.score_outputs(outputs)
        return _assessment(score, per_image)

    def shares_outputs(self, other: "Objective") -> bool:
        """Whether `other.predict(model)` is `self.predict(model)` for every model, so that one of them may run the
        model for both (`assess_all`). Here: only for the objective itself."""
        return other is self

    def score(self, model: torch.nn.Module) -> float:
        """The score of `model` (already in eval mode, without gradients)."""
        return self.score_images(model)[0]

    def score_images(self, model: torch.nn.Module) -> tuple[float, torch.Tensor | None]:
        """The score and the per-image scores (None here: an objective that only overrides `score` has none)."""
        return self.score(model), None

    def model_outputs(self, model: torch.nn.Module) -> Iterable:
        """`model`'s outputs on the objective's images, batch by batch in the order of the images (the model already
        placed and in eval mode, without gradients); what `score_outputs` takes."""
        raise NotImplementedError(f"{type(self).__name__} scores models only as a whole (score_images).")

    def score_outputs(self, outputs: Iterable) -> tuple[float, torch.Tensor | None]:
        """The score and the per-image scores of a model's outputs (`model_outputs`)."""
        raise NotImplementedError(f"{type(self).__name__} scores models only as a whole (score_images).")

    def teacher_score(self) -> float | None:
        """The score of the teacher the objective was built with, from its kept outputs (no forward pass); None for an
        objective without a teacher."""
        return None

    def teacher_image_scores(self) -> torch.Tensor | None:
        """The teacher's per-image scores (as `assess` gives them) from its kept outputs, float64 on the CPU; None
        where there are none."""
        return None

    def describe(self) -> dict:
        return {"name": self.name, "higher_is_better": self.higher_is_better}

    @contextlib.contextmanager
    def _scoring(self, model: torch.nn.Module):
        """`model` on the placement (where there is one), in eval mode, without gradients; its training flag is
        restored afterwards."""
        if self.placement is not None:
            self.placement.module(model)
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            model.train(was_training)


def _assessment(score, per_image: torch.Tensor | None) -> tuple[float, torch.Tensor | None]:
    """`(score, per-image scores)` as `Objective.assess` gives them: a float and float64 CPU numbers (or None)."""
    return float(score), None if per_image is None else per_image.double().cpu()


def assess_all(objectives: dict[str, Objective], models: dict[str, torch.nn.Module]) -> dict[str, dict[str, tuple]]:
    """`{label: {model name: objectives[label].assess(model)}}` for every objective and model, the same numbers, but
    each model runs once for every group of objectives that share their outputs (`Objective.shares_outputs`; grouped
    with the first of the group): its `predict`, which every objective of the group scores (`assess_outputs`). A
    group of one scores through `assess` (batch by batch, without keeping the outputs of the whole set)."""
    groups: list[list[str]] = []
    for label, objective in objectives.items():
        group = next((group for group in groups if objectives[group[0]].shares_outputs(objective)), None)
        if group is None:
            groups.append([label])
        else:
            group.append(label)
    assessed: dict[str, dict[str, tuple]] = {label: {} for label in objectives}
    for group in groups:
        leader = objectives[group[0]]
        for model_name, model in models.items():
            if len(group) == 1:
                assessed[group[0]][model_name] = leader.assess(model)
                continue
            outputs = leader.predict(model)
            for label in group:
                assessed[label][model_name] = objectives[label].assess_outputs(outputs)
    return assessed


class _TeacherObjective(Objective):
    """An objective with a teacher and a fixed `EvalImages` set on one placement (default `resolve_placement()`);
    students must match the teacher's shape. Subclasses compute what they keep of the teacher (`teacher_outputs`,
    what `predict(teacher)` would give) in `reference_pass`, and score outputs in `score_outputs`; the teacher's own
    score comes from its kept outputs, computed once."""

    def __init__(self, teacher: torch.nn.Module, images: EvalImages, placement: Placement | None = None):
        if len(images) == 0:
            raise ValueError("The evaluation set is empty.")
        self.placement = placement or resolve_placement()
        self.teacher = self.placement.module(teacher).eval()
        self.images = images.to(self.placement.device)
        self._teacher_assessment = None

    @contextlib.contextmanager
    def reference_pass(self):
        """The one pass of the teacher over the images: without gradients, its wall-clock time in
        `reference_seconds`."""
        start = time.perf_counter()
        with torch.inference_mode():
            yield
        self.placement.synchronize()
        self.reference_seconds = time.perf_counter() - start

    @property
    def teacher_outputs(self) -> list:
        """The teacher's kept outputs, one entry per batch: what `predict(teacher)` gives."""
        raise NotImplementedError

    def check(self, model: torch.nn.Module) -> None:
        check_teacher_student(unwrap(self.teacher).config, unwrap(model).config)

    def model_outputs(self, model: torch.nn.Module) -> Iterable:
        self.check(model)
        return self._outputs(model)

    def _outputs(self, model: torch.nn.Module) -> Iterable:
        """`model`'s outputs batch by batch, lazily where the scoring allows (unchecked: the teacher's, too)."""
        raise NotImplementedError

    def score_images(self, model) -> tuple[float, torch.Tensor]:
        return self.score_outputs(self.model_outputs(model))

    def _teacher_scores(self) -> tuple[float, torch.Tensor | None]:
        """The teacher's score and float64 CPU per-image scores from its kept outputs: one scoring, kept."""
        if self._teacher_assessment is None:
            self._teacher_assessment = self.assess_outputs(self.teacher_outputs)
        return self._teacher_assessment

    def teacher_score(self) -> float:
        return self._teacher_scores()[0]

    def teacher_image_scores(self) -> torch.Tensor | None:
        per_image = self._teacher_scores()[1]
        return None if per_image is None else per_image.clone()  # the kept one stays as computed

    def describe(self) -> dict:
        sizes = sorted({tuple(batch.shape[-2:]) for batch in self.images.batches})
        return {**super().describe(), "num_images": len(self.images), "input_sizes": [list(s) for s in sizes],
                "batch_size": max(len(batch) for batch in self.images.batches)}


class FeatureObjective(_TeacherObjective):
    """The negated feature-distillation loss between the student's and the teacher's task features (the DPT taps of
    a depth model, else the normed last layer; `train.targets.task_features`): the fast proxy. Higher is better."""

    name = "feature"

    def __init__(self, teacher, images: EvalImages, targets: str = "auto", loss: torch.nn.Module | None = None,
                 placement: Placement | None = None):
        super().__init__(teacher, images, placement)
        self.targets = resolve_targets(teacher, targets)
        self.loss = loss if loss is not None else FeatureDistillationLoss()
        with self.reference_pass():
            self.teacher_features = list(self._outputs(self.teacher))

    @property
    def teacher_outputs(self) -> list[list[torch.Tensor]]:
        return self.teacher_features

    def _features(self, model: torch.nn.Module, pixels: torch.Tensor) -> list[torch.Tensor]:
        """`model`'s float32 task features of one batch (the forward in the placement's autocast)."""
        with self.placement.autocast():
            features = task_features(model, model_inputs(pixels, model), self.targets).features
        return [tap.float() for tap in features]

    def _outputs(self, model) -> Iterable[list[torch.Tensor]]:
        return (self._features(model, pixels) for pixels in self.images.batches)

    def score_outputs(self, outputs: Iterable[list[torch.Tensor]]) -> tuple[float, torch.Tensor]:
        """The negated loss of every image (the loss of its slice of each tap, in float64) and their mean."""
        per_image = []
        for student, reference in zip(outputs, self.teacher_features):
            for index in range(len(student[0])):
                pick = slice(index, index + 1)
                per_image.append(-self.loss([tap[pick].double() for tap in student],
                                            [tap[pick].double() for tap in reference]).item())
        per_image = torch.tensor(per_image, dtype=torch.float64)
        return per_image.mean().item(), per_image

    def describe(self) -> dict:
        return {**super().describe(), "targets": self.targets, "loss": repr(self.loss)}


def _one_batch(maps: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """`[B, H, W]` when the maps share a size (one metric update per batch), else the maps."""
    return torch.stack(maps) if len({tuple(m.shape) for m in maps}) == 1 else maps


class _DisparityObjective(_TeacherObjective):
    """An objective scored on a depth model's predicted disparity, batch by batch; the teacher's is kept in
    `teacher_predictions`."""

    @property
    def teacher_outputs(self) -> list[torch.Tensor]:
        return self.teacher_predictions

    def _outputs(self, model) -> Iterable[torch.Tensor]:
        return (predicted_depth(model, pixels, self.placement) for pixels in self.images.batches)


class DepthObjective(_DisparityObjective):
    """A `DepthMetrics` metric (`"delta1"`, `"delta2"`, `"delta3"` or `"abs_rel"`) of the model's predicted disparity
    against ground truth (images with `depth`; at the original resolution) or the teacher's prediction (at the model's
    resolution), in `mode` `"disparity"` (Depth Anything's) or `"depth"` (MiDaS/Marigold's). `derived` gives another
    of these measures on the same teacher pass, and all of them score the same `predict` (`shares_outputs`)."""

    def __init__(self, teacher, images: EvalImages, metric: str = "delta1", mode: str = "disparity",
                 reference: str = "auto", placement: Placement | None = None):
        if not is_depth_model(teacher):
            raise ValueError(f"The depth objective needs a depth model (JetViTForDepthEstimation), got "
                             f"{type(unwrap(teacher)).__name__}.")
        reference = self._check_measure(images, metric, reference)
        super().__init__(teacher, images, placement)
        with self.reference_pass():
            self.teacher_predictions = list(self._outputs(self.teacher))
        self._set_measure(metric, mode, reference)

    @staticmethod
    def _check_measure(images: EvalImages, metric: str, reference: str) -> str:
        """The reference (`"auto"` resolved) of a valid measure on `images`; a ValueError for an invalid one."""
        if metric not in DEPTH_METRIC_NAMES:
            raise ValueError(f"Unknown depth metric {metric!r}; allowed: {list(DEPTH_METRIC_NAMES)}.")
        if reference == "auto":
            reference = "ground_truth" if images.depth is not None else "teacher"
        if reference not in ("teacher", "ground_truth"):
            raise ValueError(f"reference must be 'auto', 'teacher' or 'ground_truth', got {reference!r}.")
        if reference == "ground_truth" and images.depth is None:
            raise ValueError("reference='ground_truth' needs a `depth` column in the data.")
        return reference

    def _set_measure(self, metric: str, mode: str, reference: str) -> None:
        """The metric, mode and (resolved) reference, with the per-batch targets and metrics they need, from the
        teacher's kept predictions."""
        self.metric, self.mode, self.reference = metric, mode, reference
        self.name = f"depth_{metric}"
        self.higher_is_better = metric != "abs_rel"
        if reference == "teacher":
            targets = [prediction for batch in self.teacher_predictions for prediction in batch]
            if self.images.depth is not None:  # compare where the scene has measurable depth, not in the sky
                targets = [within_ground_truth(target, depth) for target, depth in zip(targets, self.images.depth)]
        else:
            targets = self.images.depth
        self.batch_targets = [_one_batch(targets[first : first + len(pixels)])
                              for pixels, first in self.images.batch_slices()]
        self.metrics = make_depth_metrics(mode, targets, target_is_depth=reference == "ground_truth")
        self._teacher_assessment = None

    def derived(self, *, metric: str | None = None, mode: str | None = None,
                reference: str | None = None) -> "DepthObjective":
        """The depth objective of `metric`, `mode` and `reference` (each by default this one's) on the same teacher,
        images and placement, built from this one's kept teacher predictions without running the teacher again (its
        `reference_seconds` is this one's pass). It scores what this one's `predict` gives (`shares_outputs`)."""
        reference = self._check_measure(self.images, metric or self.metric, reference or self.reference)
        other = copy.copy(self)  # shares the teacher, the images and its predictions; the measure is replaced
        other._set_measure(metric or self.metric, mode or self.mode, reference)
        return other

    def shares_outputs(self, other: Objective) -> bool:
        """True for a depth objective on the same images and placement (this one's `derived`): its `predict` is the
        model's disparity on the same batches."""
        return (isinstance(other, DepthObjective) and other.images is self.images
                and other.placement == self.placement)

    def score_outputs(self, outputs: Iterable[torch.Tensor]) -> tuple[float, torch.Tensor]:
        """The metric of every image with a valid pixel and their mean (the metric over the whole set), from
        `[B, H, W]` disparity batches in the order of the images."""
        per_image = []
        for prediction, target in zip(outputs, self.batch_targets):
            for image_prediction, image_target in zip(prediction, target):
                self.metrics.reset()
                self.metrics.update(resize_map(image_prediction, image_target.shape[-2:]), image_target)
                if self.metrics.num_images:
                    per_image.append(self.metrics.compute()[self.metric])
        if not per_image:
            raise ValueError("No image of the evaluation set has a valid depth pixel.")
        per_image = torch.tensor(per_image, dtype=torch.float64)
        return per_image.mean().item(), per_image

    def describe(self) -> dict:
        return {**super().describe(), "metric": self.metric, "mode": self.mode, "reference": self.reference}


class SegmentationObjective(_TeacherObjective):
    """mIoU (against the ground-truth `labels`, ignore index 255, over the whole set) of a linear probe applied to the
    model's normed last-layer patch tokens. The probe is given, or fitted once to the TEACHER's features. A
    dataset-level mIoU is no mean over images: the per-image scores are each image's `[C, C]` confusion matrix (rows:
    label, columns: prediction), `[N, C, C]` in all, which `evaluation.bootstrap` resamples."""

    name = "segmentation_miou"

    def __init__(self, teacher, images: EvalImages, probe=None, num_labels: int | None = None,
                 probe_steps: int = 1000, seed: int = 0, progress: bool = True, placement: Placement | None = None):
        require_labels(images, "The segmentation objective")
        if not any(bool((label != IGNORE_INDEX).any()) for label in images.labels):
            raise ValueError(f"The segmentation objective needs a labelled pixel; every label is {IGNORE_INDEX}.")
        super().__init__(teacher, images, placement)
        self.probe_source = "given" if probe is not None else f"trained on the teacher's features ({probe_steps} steps)"
        with self.reference_pass():
            self.teacher_maps = probe_feature_maps(self.teacher, self.images, self.placement, progress)
        if probe is None:
            probe = fit_linear_probe(self.teacher_maps, self.images.labels, num_labels, steps=probe_steps, seed=seed,
                                     progress=progress)
        check_probe(probe, teacher)
        self.probe = probe.to(self.placement.device).eval()

    @property
    def teacher_outputs(self) -> list[torch.Tensor]:
        return self.teacher_maps

    def _outputs(self, model) -> list[torch.Tensor]:
        return probe_feature_maps(model, self.images, self.placement)

    def score_outputs(self, outputs: Iterable[torch.Tensor]) -> tuple[float, torch.Tensor]:
        """The probe's mIoU on per-batch feature maps and the `[N, C, C]` per-image confusions it comes from."""
        metrics, confusions = probe_map_confusions(self.probe, outputs, self.images)
        return metrics["mean_iou"], confusions

    def describe(self) -> dict:
        return {**super().describe(), "probe": self.probe_source, "num_labels": self.probe.classifier.out_channels}


class OrdinalObjective(_DisparityObjective):
    """Pairwise ordinal accuracy in DA-2K's format: the given pairs (one list per image), or `pairs_per_image` pairs
    per image sampled where the teacher's disparity (at the original resolution) differs by more than 10%."""

    name = "ordinal_accuracy"

    def __init__(self, teacher, images: EvalImages, pairs: list[list[dict]] | None = None, pairs_per_image: int = 64,
                 seed: int = 0, placement: Placement | None = None):
        if not is_depth_model(teacher):
            raise ValueError("The ordinal objective needs a depth model (JetViTForDepthEstimation).")
        super().__init__(teacher, images, placement)
        self.pairs_source = "given (DA-2K format)" if pairs is not None else "sampled from the teacher's disparity"
        with self.reference_pass():
            self.teacher_predictions = list(self._outputs(self.teacher))
        if pairs is None:
            pairs = self._sample_pairs(pairs_per_image, seed)
        if len(pairs) != len(images) or not any(pairs):
            raise ValueError(f"Expected one list of pairs per image ({len(images)}), at least one pair in all; got "
                             f"{len(pairs)} lists with {sum(map(len, pairs))} pairs.")
        self.pairs = pairs

    def _sample_pairs(self, pairs_per_image: int, seed: int) -> list[list[dict]]:
        generator = torch.Generator().manual_seed(seed)
        pairs = []
        for batch, (_, first) in zip(self.teacher_predictions, self.images.batch_slices()):
            for offset, prediction in enumerate(batch):
                size = self.images.original_sizes[first + offset]
                pairs.append(sample_ordinal_pairs(resize_map(prediction, size), pairs_per_image, generator))
        if not any(pairs):
            raise ValueError("No ordinal pair: the teacher's disparity never differs by more than 10% between two "
                             "pixels.")
        return pairs

    def score_outputs(self, outputs: Iterable[torch.Tensor]) -> tuple[float, torch.Tensor]:
        """The accuracy over all pairs and each image's share of it: its correctly ranked pairs times the number of
        images over the number of pairs, so that the mean over images is the accuracy."""
        correct, index = [], 0
        for batch in outputs:
            for prediction in batch:
                pairs = self.pairs[index]
                disparity = resize_map(prediction, self.images.original_sizes[index]) if pairs else None
                correct.append(ordinal_pair_accuracy(disparity, pairs) * len(pairs) if pairs else 0.0)
                index += 1
        per_image = torch.tensor(correct, dtype=torch.float64) * len(correct) / sum(map(len, self.pairs))
        return per_image.mean().item(), per_image

    def describe(self) -> dict:
        return {**super().describe(), "pairs": self.pairs_source, "num_pairs": sum(len(p) for p in self.pairs)}


def make_objective(name: str, teacher: torch.nn.Module, data=None, *, image_size=None, num_images: int | None = None,
                   batch_size: int | None = None, metric: str = "delta1", depth_mode: str = "disparity",
                   reference: str = "auto", da2k: str | os.PathLike | None = None, probe=None,
                   num_labels: int | None = None, probe_steps: int = 1000, feature_targets: str = "auto",
                   seed: int = 0, progress: bool = True, device: str | torch.device = "auto",
                   dtype: str | torch.dtype = "auto") -> Objective:
    """The objective `name` (one of `OBJECTIVES`) for `teacher` on `data` (anything `evaluation.images.load_eval_images`
    reads; for `"ordinal"`, a DA-2K `annotations.json` in `da2k` replaces it), running on `device` in `dtype`
    (`device.resolve_placement`), `batch_size` images per forward (default: `Placement.batch_size()`)."""
    if name not in OBJECTIVES:
        raise ValueError(f"Unknown objective {name!r}; allowed: {list(OBJECTIVES)}.")
    placement = resolve_placement(device, dtype)
    batch_size = placement.batch_size(batch_size)
    config = unwrap(teacher).config
    image_size = image_size or default_image_size(config)
    if name == "ordinal" and da2k is not None:
        images, pairs = load_da2k_images(da2k, config.patch_size, image_size, batch_size)
        return OrdinalObjective(teacher, images, pairs, placement=placement)
    if data is None:
        raise ValueError(f"The {name} objective needs evaluation images (data).")
    images = load_eval_images(data, config.patch_size, image_size, num_images, batch_size)
    if name == "feature":
        return FeatureObjective(teacher, images, feature_targets, placement=placement)
    if name == "depth":
        return DepthObjective(teacher, images, metric, depth_mode, reference, placement=placement)
    if name == "segmentation":
        return SegmentationObjective(teacher, images, probe, num_labels, probe_steps, seed, progress, placement)
    return OrdinalObjective(teacher, images, seed=seed, placement=placement)
