"""Post-training attention search (paper section 3.2.4; DESIGN.md, "Search"): greedy, stage-wise beam search over a
supernet's per-layer attention types, scored by a pluggable objective on a fixed held-out set.

- Stage 1 starts all-`"linear"` and, round by round, switches one more linear layer to `"window"`; it stops when the
  best score of a round gains no more than `tolerance` over the previous round's (plateau) or no move is left.
- Stage 2 starts from stage 1's choice and switches one more layer to `"full"` per round; it stops when the best score
  reaches the teacher's (within `tolerance`), `max_full` layers are full, or no move is left.

Each round expands every member of the beam by one move and keeps the `beam_width` best children. Every distinct
assignment is evaluated once. With a per-layer latency table (`jetvit bench --layer-table`) each assignment gets an
estimated latency, children over `latency_budget_ms` are skipped, and the Pareto front is score against latency
(otherwise against the number of non-linear layers). Scores are the objective's own numbers; "better" follows
`objective.higher_is_better`.
"""

import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..io import atomic_directory, atomic_write_json
from ..evaluation.evaluator import (
    EvalImages,
    check_probe,
    default_image_size,
    is_depth_model,
    load_da2k_images,
    load_eval_images,
    make_depth_metrics,
    model_inputs,
    ordinal_accuracy,
    probe_segmentation_metrics,
    require_labels,
    resize_map,
    sample_ordinal_pairs,
    train_linear_probe,
)
from ..train.targets import check_teacher_student, resolve_targets, task_features, unwrap
from ..train.losses import FeatureDistillationLoss
from ..evaluation.metrics import DEPTH_METRIC_NAMES
from ..convert import load_jetvit
from ..layouts import read_attention_types, stage2_candidates
from ..train.supernet import JetViTSupernet

OBJECTIVES = ("feature", "depth", "segmentation", "ordinal")
STAGES = (1, 2)
LOG_SCHEMA = "jetvit-search/1"
STAGE_MOVES = {1: ("linear", "window"), 2: (None, "full")}  # stage -> (type a move replaces, None: any other; new type)


# ----------------------------------------------------------------------------------------------------------------------
# Objectives


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
    a depth model, else the normed last layer; `features.task_features`): the fast proxy. Higher is better."""

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
    """The objective `name` (one of `OBJECTIVES`) for `teacher` on `data` (anything `evaluation.load_eval_images`
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


# ----------------------------------------------------------------------------------------------------------------------
# Beam search


@dataclass
class SearchResult:
    """The outcome of one stage of `beam_search` (see `to_dict` for the JSON log)."""

    stage: int
    objective: dict
    beam_width: int
    tolerance: float
    start: list[str]
    best: list[str]
    best_score: float
    best_latency_ms: float | None
    teacher_score: float | None
    stop_reason: str
    candidates: list[list[str]]
    evaluations: list[dict]
    rounds: list[dict]
    layer_gain: dict
    pareto_cost: str
    pareto: list[dict]
    max_full: int | None = None
    max_changes: int | None = None
    latency_budget_ms: float | None = None
    metadata: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"schema": LOG_SCHEMA, "layer_indexing": "0-based", **asdict(self)}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the log atomically as JSON (NaN gains are written as null)."""
        atomic_write_json(path, _json_safe(self.to_dict()))
        return Path(path)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def default_start(candidates: Sequence[Sequence[str]], stage: int) -> list[str]:
    """Stage 1: `"linear"` where a layer has it, else its first candidate. Stage 2: each layer's one candidate other
    than `"full"` (`"full"` where it is the only one); a layer with several is an error (pass stage 1's choice)."""
    if stage == 1:
        return ["linear" if "linear" in layer else layer[0] for layer in candidates]
    start = []
    for index, layer in enumerate(candidates):
        efficient = [t for t in layer if t != "full"]
        if len(efficient) > 1:
            raise ValueError(f"Layer {index} has several efficient candidates {efficient}; pass start= (stage 1's "
                             "choice) for stage 2.")
        start.append(efficient[0] if efficient else "full")
    return start


def _load_latency_table(table, num_layers: int) -> dict | None:
    if table is None:
        return None
    if not isinstance(table, dict):
        table = json.loads(Path(table).read_text())
    for key in ("num_layers", "per_layer_ms", "remainder_ms"):
        if key not in table:
            raise ValueError(f"The latency table has no {key!r}; write one with `jetvit bench --layer-table`.")
    if table["num_layers"] != num_layers:
        raise ValueError(f"The latency table is for {table['num_layers']} layers but the supernet has {num_layers}.")
    return table


def pareto_front(evaluations: Sequence[dict], cost: str, higher_is_better: bool) -> list[dict]:
    """The evaluations that no other beats on both `cost` (lower is better) and score, by increasing cost."""
    ordered = sorted(evaluations, key=lambda r: (r[cost], -_goodness(r["score"], higher_is_better)))
    front, best = [], -math.inf
    for record in ordered:
        goodness = _goodness(record["score"], higher_is_better)
        if goodness > best:
            front.append(record)
            best = goodness
    return front


def _goodness(score: float, higher_is_better: bool) -> float:
    """The score oriented so that larger is better (NaN is worst)."""
    if math.isnan(score):
        return -math.inf
    return score if higher_is_better else -score


def beam_search(supernet: JetViTSupernet, objective: Objective, *, stage: int, beam_width: int = 3,
                start: Sequence[str] | None = None, max_changes: int | None = None, max_full: int | None = None,
                tolerance: float = 0.0, teacher_score: float | None = None, latency_table=None,
                latency_budget_ms: float | None = None, progress: bool = True) -> SearchResult:
    """One stage of the greedy, stage-wise beam search; leaves `supernet` set to the chosen assignment.

    Args:
        supernet: The supernet whose candidates define the moves.
        objective: Scores the subnet the supernet has set (`Objective.evaluate`).
        stage: 1 (linear -> window) or 2 (-> full).
        beam_width: How many assignments each round keeps (k).
        start: The first assignment; default `default_start(supernet.candidates, stage)`.
        max_changes: At most this many rounds (moves from `start`).
        max_full: Stage 2: at most this many `"full"` layers in an assignment (counting any the start has).
        tolerance: Stage 1 takes a round only if its best score improves on the previous round's by more than
            this; stage 2 stops once the best score is within this of the teacher's.
        teacher_score: Stage 2's target. Default: the all-full assignment's score when every layer has a `"full"`
            candidate (evaluated once), else none (stage 2 then runs until `max_full` or no move is left).
        latency_table: A `jetvit bench --layer-table` result (dict or JSON path): every evaluated assignment gets
            `estimated_latency_ms`, and the Pareto front is against it.
        latency_budget_ms: Skip assignments whose estimated latency exceeds this (needs `latency_table`).

    The chosen assignment is, in stage 1, the best of the last round that gained more than `tolerance`; in stage 2,
    the first round's best that reaches the teacher's score, else the best round best (the earliest on ties).
    """
    from ..bench import estimate_latency

    if stage not in STAGES:
        raise ValueError(f"Unknown search stage {stage!r}; allowed: {list(STAGES)}.")
    if not isinstance(beam_width, int) or beam_width < 1:
        raise ValueError(f"beam_width must be a positive int, got {beam_width!r}.")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}.")
    if max_full is not None and stage != 2:
        raise ValueError("max_full limits stage 2 (full attention); stage 1 does not add full layers.")
    for name, value in (("max_full", max_full), ("max_changes", max_changes)):
        if value is not None and value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}.")
    if latency_budget_ms is not None and latency_table is None:
        raise ValueError("latency_budget_ms needs a latency_table (`jetvit bench --layer-table`).")
    candidates = supernet.candidates
    table = _load_latency_table(latency_table, len(candidates))
    start = list(start) if start is not None else default_start(candidates, stage)
    supernet.check_assignment(start)
    replaced, new_type = STAGE_MOVES[stage]
    higher = objective.higher_is_better

    def goodness(record: dict) -> float:
        return _goodness(record["score"], higher)

    def latency(assignment: list[str]) -> float | None:
        return estimate_latency(table, assignment) if table is not None else None

    if latency_budget_ms is not None and latency(start) > latency_budget_ms:
        raise ValueError(f"The start assignment's estimated latency {latency(start):.3f} ms exceeds the budget "
                         f"{latency_budget_ms} ms.")

    records: dict[tuple[str, ...], dict] = {}
    evaluations: list[dict] = []
    bar = tqdm(total=0, desc=f"jetvit search stage {stage}", unit="eval", disable=not progress)

    def evaluate(assignment: list[str], round_index: int, role: str, changed_layer: int | None = None) -> dict:
        key = tuple(assignment)
        if key not in records:
            supernet.set(assignment)
            record = {
                "assignment": list(assignment),
                "score": objective.evaluate(supernet),
                "stage": stage,
                "round": round_index,
                "role": role,
                "changed_layer": changed_layer,
                "estimated_latency_ms": latency(assignment),
                "num_nonlinear_layers": sum(t != "linear" for t in assignment),
                "num_full_layers": assignment.count("full"),
            }
            records[key] = record
            evaluations.append(record)
            bar.update(1)
        return records[key]

    bar.total += 1
    start_record = evaluate(start, 0, "start")
    if stage == 2 and teacher_score is None and all("full" in layer for layer in candidates):
        bar.total += 1
        teacher_score = evaluate(["full"] * len(candidates), 0, "teacher")["score"]
    beam, chosen = [start_record], start_record
    rounds = [_round_record(0, beam, 0, 0)]
    cost = "estimated_latency_ms" if table is not None else "num_nonlinear_layers"
    target = _goodness(teacher_score, higher) - tolerance if stage == 2 and teacher_score is not None else None
    round_index = 0
    while True:
        if target is not None and goodness(chosen) >= target:
            stop_reason = "reached_teacher"
            break
        if max_changes is not None and round_index >= max_changes:
            stop_reason = "max_changes"
            break
        if max_full is not None and beam[0]["num_full_layers"] >= max_full:
            stop_reason = "max_full"
            break
        round_index += 1
        children, over_budget = {}, set()
        for member in beam:
            for layer, current in enumerate(member["assignment"]):
                movable = current == replaced if replaced is not None else current != new_type
                if not movable or new_type not in candidates[layer]:
                    continue
                child = member["assignment"][:layer] + [new_type] + member["assignment"][layer + 1 :]
                if tuple(child) in children or tuple(child) in over_budget:
                    continue
                if latency_budget_ms is not None and latency(child) > latency_budget_ms:
                    over_budget.add(tuple(child))
                    continue
                children[tuple(child)] = layer
        if not children:
            stop_reason = "no_moves_within_budget" if over_budget else "no_moves"
            break
        new_before = len(evaluations)
        bar.total += sum(key not in records for key in children)
        scored = [evaluate(list(child), round_index, "move", layer) for child, layer in children.items()]
        # best first; ties go to the cheaper assignment, then to the order of generation (stable sort)
        beam = sorted(scored, key=lambda r: (-goodness(r), r[cost]))[:beam_width]
        rounds.append(_round_record(round_index, beam, len(evaluations) - new_before, len(over_budget)))
        top = beam[0]
        if stage == 1 and goodness(top) - goodness(chosen) <= tolerance:
            stop_reason = "plateau"
            break
        if goodness(top) > goodness(chosen):
            chosen = top
        bar.set_postfix_str(f"best {chosen['score']:.4g}")
    bar.close()
    supernet.set(chosen["assignment"])

    gains = []
    for layer in range(len(candidates)):
        child = start[:layer] + [new_type] + start[layer + 1 :]
        record = records.get(tuple(child)) if child != start else None
        gains.append(goodness(record) - goodness(start_record) if record is not None else math.nan)
    return SearchResult(
        stage=stage,
        objective=objective.describe(),
        beam_width=beam_width,
        tolerance=tolerance,
        start=start,
        best=list(chosen["assignment"]),
        best_score=chosen["score"],
        best_latency_ms=chosen["estimated_latency_ms"],
        teacher_score=teacher_score,
        stop_reason=stop_reason,
        candidates=[list(layer) for layer in candidates],
        evaluations=evaluations,
        rounds=rounds,
        layer_gain={
            "attention_type": new_type,
            "definition": f"improvement of the objective (positive = better) from switching only that layer of the "
                          f"start to {new_type!r} (stage {stage}, round 1); null where not evaluated",
            "gains": gains,
        },
        pareto_cost=cost,
        pareto=pareto_front(evaluations, cost, higher),
        max_full=max_full,
        max_changes=max_changes,
        latency_budget_ms=latency_budget_ms,
    )


def _round_record(round_index: int, beam: list[dict], evaluated: int, skipped: int) -> dict:
    return {
        "round": round_index,
        "beam": [{"assignment": r["assignment"], "score": r["score"]} for r in beam],
        "best_score": beam[0]["score"],
        "evaluated": evaluated,
        "skipped_over_budget": skipped,
    }


# ----------------------------------------------------------------------------------------------------------------------
# Plots


def _save_figure(figure, path: str | os.PathLike) -> Path:
    """Save through a temporary file beside `path` and `os.replace`, so a reader never sees a partial image."""
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        figure.savefig(tmp, dpi=150, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def plot_layer_gain(result: SearchResult, path: str | os.PathLike) -> Path:
    """A 1 x L heatmap like the paper's Fig. 7: per layer (0-based), the objective's gain from switching only that
    layer of the start to the stage's new type (full attention in stage 2); blank where not evaluated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    gains = np.array(result.layer_gain["gains"], dtype=float)
    num_layers = len(gains)
    figure, axes = plt.subplots(figsize=(max(6.0, 0.42 * num_layers + 2.5), 2.0))
    image = axes.imshow(np.ma.masked_invalid(gains)[None], cmap="viridis", aspect="equal")
    axes.set_xticks(range(num_layers), [str(i) for i in range(num_layers)], fontsize=8)
    axes.set_yticks([])
    axes.set_xlabel("layer (0-based)")
    kind = result.layer_gain["attention_type"]
    axes.set_title(f"Gain of {kind} attention per layer (stage {result.stage}, {result.objective['name']})",
                   fontsize=10)
    if num_layers <= 32:
        finite = gains[np.isfinite(gains)]
        middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
        for index, gain in enumerate(gains):
            if np.isfinite(gain):
                color = "black" if gain > middle else "white"
                axes.text(index, 0, f"{gain:.2g}", ha="center", va="center", fontsize=6, color=color)
    figure.colorbar(image, ax=axes, pad=0.02, fraction=0.04, label="gain")
    try:
        return _save_figure(figure, path)
    finally:
        plt.close(figure)


def plot_pareto(result: SearchResult, path: str | os.PathLike) -> Path:
    """Score against cost (estimated latency, or the number of non-linear layers) of every evaluated assignment, the
    Pareto front, and the chosen assignment."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    cost = result.pareto_cost
    figure, axes = plt.subplots(figsize=(6.0, 4.2))
    axes.scatter([r[cost] for r in result.evaluations], [r["score"] for r in result.evaluations], s=14,
                 color="0.6", label="evaluated")
    axes.plot([r[cost] for r in result.pareto], [r["score"] for r in result.pareto], "o-", color="tab:blue",
              markersize=5, drawstyle="steps-post", label="Pareto front")
    chosen = next(r for r in result.evaluations if r["assignment"] == result.best)
    axes.scatter([chosen[cost]], [chosen["score"]], marker="*", s=180, color="tab:red", zorder=3, label="chosen")
    if result.teacher_score is not None:
        axes.axhline(result.teacher_score, color="tab:green", linestyle="--", linewidth=1, label="teacher")
    if result.latency_budget_ms is not None:
        axes.axvline(result.latency_budget_ms, color="tab:orange", linestyle=":", linewidth=1, label="budget")
    if cost == "estimated_latency_ms":
        axes.set_xlabel("estimated latency (ms)")
    else:
        axes.set_xlabel("non-linear layers")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    direction = "higher" if result.objective["higher_is_better"] else "lower"
    axes.set_ylabel(f"{result.objective['name']} ({direction} is better)")
    axes.set_title(f"Attention search, stage {result.stage}: accuracy / cost", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    try:
        return _save_figure(figure, path)
    finally:
        plt.close(figure)


# ----------------------------------------------------------------------------------------------------------------------
# End to end: `jetvit search`


def prepare_supernet(supernet, teacher: torch.nn.Module, stage: int, start=None) -> tuple[JetViTSupernet, list | None]:
    """The supernet to search and its start. For stage 2 on a supernet without any `"full"` candidate (a stage-1
    supernet), builds the stage-2 supernet from `start` (stage 1's choice, required): each layer keeps its choice or
    becomes full attention inherited from the teacher's own layer."""
    if not isinstance(supernet, JetViTSupernet):
        supernet = JetViTSupernet.from_pretrained(supernet)
    num_layers = len(supernet.candidates)
    start = read_attention_types(start, num_layers) if start is not None else None
    if stage == 2 and not any("full" in layer for layer in supernet.candidates):
        if start is None:
            raise ValueError("Stage 2 on a supernet without full-attention candidates needs start (stage 1's choice, "
                             "e.g. its attention_types.json).")
        supernet = JetViTSupernet(supernet.extract(start), stage2_candidates(start), inherit_full_from=teacher)
    return supernet, start


def _processor_config(*sources) -> Path | None:
    for source in sources:
        if isinstance(source, (str, os.PathLike)) and (Path(source) / "preprocessor_config.json").is_file():
            return Path(source) / "preprocessor_config.json"
    return None


def run_search(supernet, teacher, data=None, *, output: str | os.PathLike, objective="feature", stage: int = 1,
               beam_width: int = 3, start=None, max_changes: int | None = None, max_full: int | None = None,
               tolerance: float = 0.0, latency_table=None, latency_budget_ms: float | None = None,
               metric: str = "delta1", depth_mode: str = "disparity", da2k=None, probe=None,
               num_labels: int | None = None, probe_steps: int = 1000, num_images: int | None = None,
               image_size=None, batch_size: int = 8, overwrite: bool = False, progress: bool = True) -> SearchResult:
    """Search one stage and write `output` atomically: `search_log.json` (`SearchResult.to_dict`),
    `attention_types.json`, `<type>_attention_gain.png` (`full_attention_gain.png` in stage 2), `pareto.png` and
    `model/` (the chosen subnet extracted as an ordinary JetViT, with the source's `preprocessor_config.json`).

    `supernet` is a `JetViTSupernet` or a directory for `JetViTSupernet.from_pretrained` (a saved supernet, a converted
    JetViT or a source checkpoint); `teacher` a JetViT model or a directory for `convert.load_jetvit`; `objective`
    an `Objective` or a name for `make_objective` (with `data` and the remaining options). Stage 2 without a
    teacher-score-giving all-full subnet scores the teacher model itself as the target.
    """
    from ..evaluation.evaluator import load_linear_probe

    if stage not in STAGES:
        raise ValueError(f"Unknown search stage {stage!r}; allowed: {list(STAGES)}.")
    if isinstance(objective, str) and objective not in OBJECTIVES:
        raise ValueError(f"Unknown objective {objective!r}; allowed: {list(OBJECTIVES)}.")
    sources = {"supernet": supernet, "teacher": teacher, "data": data}
    with atomic_directory(output, overwrite=overwrite) as staging:
        teacher_model = teacher if isinstance(teacher, torch.nn.Module) else load_jetvit(teacher)
        search_supernet, start = prepare_supernet(supernet, teacher_model, stage, start)
        check_teacher_student(unwrap(teacher_model).config, search_supernet.config)
        if isinstance(objective, str):
            objective = make_objective(
                objective, teacher_model, data, image_size=image_size, num_images=num_images, batch_size=batch_size,
                metric=metric, depth_mode=depth_mode, da2k=da2k,
                probe=load_linear_probe(probe) if isinstance(probe, (str, os.PathLike)) else probe,
                num_labels=num_labels, probe_steps=probe_steps, progress=progress,
            )
        teacher_score = None
        if stage == 2 and not all("full" in layer for layer in search_supernet.candidates):
            teacher_score = objective.evaluate(teacher_model)
        result = beam_search(
            search_supernet, objective, stage=stage, beam_width=beam_width, start=start, max_changes=max_changes,
            max_full=max_full, tolerance=tolerance, teacher_score=teacher_score, latency_table=latency_table,
            latency_budget_ms=latency_budget_ms, progress=progress,
        )
        result.metadata = {name: str(value) if isinstance(value, (str, os.PathLike)) else type(value).__name__
                           for name, value in sources.items() if value is not None}
        result.save(staging / "search_log.json")
        atomic_write_json(staging / "attention_types.json", {
            "attention_types": result.best, "score": result.best_score, "objective": result.objective["name"],
            "stage": stage, "estimated_latency_ms": result.best_latency_ms,
        })
        plot_layer_gain(result, staging / f"{result.layer_gain['attention_type']}_attention_gain.png")
        plot_pareto(result, staging / "pareto.png")
        extracted = search_supernet.extract(result.best).eval()
        extracted.save_pretrained(staging / "model")
        processor = _processor_config(supernet, teacher)
        if processor is not None:
            shutil.copyfile(processor, staging / "model" / "preprocessor_config.json")
    return result
