"""Post-training attention search (paper section 3.2.4): greedy, stage-wise beam search over a supernet's per-layer
attention types, scored by a pluggable objective on a fixed held-out set.

- Stage 1 starts all-`"linear"` and, round by round, switches one more linear layer to `"window"`; it stops when the
  best score of a round gains no more than its threshold over the previous round's (plateau) or no move is left.
- Stage 2 starts from stage 1's choice and switches one more layer to `"full"` per round; it stops when the best score
  reaches the teacher's within the threshold, `max_full` layers are full, or no move is left.

The threshold is measured noise: `tolerance + noise_factor * SE`, SE the paired bootstrap standard error over images
of the difference between the two scores (`evaluation.bootstrap`: of the mean per-image difference, or for a
segmentation objective's per-image confusion matrices, of the difference of the two dataset mIoUs; 0 for an objective
without per-image scores, which leaves `tolerance` alone). Every score in the log carries its 95% bootstrap interval
over images (`ci95`, null without per-image scores), and every round its decision: gain (or the gap to the teacher),
SE and threshold. Only the chosen assignment's and the teacher's per-image scores are kept from round to round (a
segmentation objective's are `[N, C, C]`).

Each round expands every member of the beam by one move and keeps the `beam_width` best children. Every distinct
assignment is evaluated once. With a per-layer latency table (`jetvit bench --layer-table`) each assignment gets an
estimated latency, children over `latency_budget_ms` are skipped, and the Pareto front is score against latency
(otherwise against the number of non-linear layers). Scores are the objective's own numbers; "better" follows
`objective.higher_is_better`. The log holds the wall-clock seconds of each candidate, each round and the stage, and
the device and dtype the objective ran on.
"""

import math
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..evaluation.bootstrap import bootstrap, paired_bootstrap
from ..io import atomic_write_json, read_json
from ..train.supernet import JetViTSupernet
from .objectives import Objective

STAGES = (1, 2)
LOG_SCHEMA = "jetvit-search/1"
STAGE_MOVES = {1: ("linear", "window"), 2: (None, "full")}  # stage -> (type a move replaces, None: any other; new type)
# A step must gain more than two paired standard errors: the round's best is the maximum over many children, so its
# gain is biased upwards, and 2 SE is about the half-width of the 95% interval the log reports. Stage 2 has reached
# the teacher when the gap is within the same 2 SE: the teacher's score lies inside the candidate's paired interval.
NOISE_FACTOR = 2.0


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
    noise_factor: float = NOISE_FACTOR
    best_ci95: list[float] | None = None
    teacher_ci95: list[float] | None = None
    max_full: int | None = None
    max_changes: int | None = None
    latency_budget_ms: float | None = None
    timing: dict = field(default_factory=dict)
    device: dict | None = None
    metadata: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"schema": LOG_SCHEMA, "layer_indexing": "0-based", **asdict(self)}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the log atomically as JSON (NaN gains are written as null)."""
        atomic_write_json(path, _json_safe(self.to_dict()))
        return Path(path)

    def timing_summary(self) -> str:
        """Two lines: where the objective ran and the stage's wall-clock seconds (set-up, teacher outputs, per
        candidate), then each round's seconds."""
        timing, where = self.timing, ""
        if self.device is not None:
            gpu = f" ({self.device['gpu']})" if self.device["gpu"] else ""
            where = f" on {self.device['device']}{gpu} in {self.device['dtype']}"
        parts = [f"set-up {timing['setup_seconds']:.1f} s"] if "setup_seconds" in timing else []
        if timing["teacher_outputs_seconds"] is not None:
            parts.append(f"teacher outputs {timing['teacher_outputs_seconds']:.2f} s")
        each = timing["seconds_per_candidate"]
        parts.append(f"stage {timing['stage_seconds']:.1f} s for {timing['num_candidates']} candidates "
                     f"({each['median']:.3f} s each (median), the first {each['first']:.3f} s)")
        rounds = ", ".join(f"{r['round']}: {r['seconds']:.2f}" for r in self.rounds)
        return f"  time{where}: {'; '.join(parts)}\n  seconds per round (0: the start): {rounds}"


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
        table = read_json(table)
    for key in ("num_layers", "per_layer_ms", "remainder_ms"):
        if key not in table:
            raise ValueError(f"The latency table has no {key!r}; write one with `jetvit bench --layer-table`.")
    if table["num_layers"] != num_layers:
        raise ValueError(f"The latency table is for {table['num_layers']} layers but the supernet has {num_layers}.")
    return table


def pareto_front(evaluations: Sequence[dict], cost: str, higher_is_better: bool) -> list[dict]:
    """The evaluations that no other beats on both `cost` (lower is better) and score, by increasing cost; exact ties
    (two models with the same cost and score) are both on it."""
    ordered = sorted(evaluations, key=lambda r: (r[cost], -_goodness(r["score"], higher_is_better)))
    front, best = [], -math.inf
    for record in ordered:
        goodness = _goodness(record["score"], higher_is_better)
        tie = bool(front) and goodness == best and record[cost] == front[-1][cost]
        if goodness > best or tie:
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
                tolerance: float = 0.0, noise_factor: float = NOISE_FACTOR, teacher_score: float | None = None,
                teacher_image_scores=None, latency_table=None, latency_budget_ms: float | None = None,
                progress: bool = True) -> SearchResult:
    """One stage of the greedy, stage-wise beam search; leaves `supernet` set to the chosen assignment.

    Args:
        supernet: The supernet whose candidates define the moves.
        objective: Scores the subnet the supernet has set (`Objective.evaluate`; one with a placement moves the
            supernet to its device once and leaves it there).
        stage: 1 (linear -> window) or 2 (-> full).
        beam_width: How many assignments each round keeps (k).
        start: The first assignment; default `default_start(supernet.candidates, stage)`.
        max_changes: At most this many rounds (moves from `start`).
        max_full: Stage 2: at most this many `"full"` layers in an assignment (counting any the start has).
        tolerance: A fixed margin added to the noise threshold.
        noise_factor: Stage 1 takes a round only if its best score improves on the previous round's by more than
            `tolerance + noise_factor * SE` (SE: paired bootstrap standard error of the per-image differences);
            stage 2 stops once the best score is within `tolerance + noise_factor * SE` of the teacher's.
        teacher_score: Stage 2's target (the teacher's own score, `Objective.teacher_score`). Default: the all-full
            assignment's score when every layer has a `"full"` candidate (evaluated once), else none (stage 2 then
            runs until `max_full` or no move is left).
        teacher_image_scores: The teacher's per-image scores behind `teacher_score`
            (`Objective.teacher_image_scores`: `[N]` numbers or `[N, C, C]` confusions), for the paired SE of the gap
            to it.
        latency_table: A `jetvit bench --layer-table` result (dict or JSON path): every evaluated assignment gets
            `estimated_latency_ms`, and the Pareto front is against it.
        latency_budget_ms: Skip assignments whose estimated latency exceeds this (needs `latency_table`).

    The chosen assignment is, in stage 1, the best of the last round that gained more than its threshold; in stage 2,
    the first round's best that reaches the teacher's score, else the best round best (the earliest on ties).
    """
    from ..bench import estimate_latency

    _check_search_options(stage, beam_width, tolerance, max_full, max_changes, latency_table, latency_budget_ms)
    if not noise_factor >= 0:
        raise ValueError(f"noise_factor must be >= 0, got {noise_factor}.")
    candidates = supernet.candidates
    table = _load_latency_table(latency_table, len(candidates))
    start = list(start) if start is not None else default_start(candidates, stage)
    supernet.check_assignment(start)

    def latency(assignment: list[str]) -> float | None:
        return estimate_latency(table, assignment) if table is not None else None

    if latency_budget_ms is not None and latency(start) > latency_budget_ms:
        raise ValueError(f"The start assignment's estimated latency {latency(start):.3f} ms exceeds the budget "
                         f"{latency_budget_ms} ms.")
    search = _StageSearch(supernet, objective, stage, beam_width, (tolerance, noise_factor), max_changes, max_full,
                          latency_budget_ms, latency,
                          "estimated_latency_ms" if table is not None else "num_nonlinear_layers", progress)
    teacher = None
    if teacher_score is not None:
        per_image = None if teacher_image_scores is None else torch.as_tensor(teacher_image_scores).double().cpu()
        teacher = {"score": teacher_score, "ci95": _ci95(per_image)}
        search.image_scores["teacher"] = per_image
    return search.run(start, teacher)


def _check_search_options(stage: int, beam_width, tolerance: float, max_full: int | None, max_changes: int | None,
                          latency_table, latency_budget_ms: float | None) -> None:
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


class _StageSearch:
    """One stage of `beam_search` once its options are checked: every distinct assignment is scored once (`records`
    by assignment, `evaluations` in evaluation order), with a progress bar counting the evaluations."""

    def __init__(self, supernet: JetViTSupernet, objective: Objective, stage: int, beam_width: int,
                 thresholds: tuple[float, float], max_changes: int | None, max_full: int | None,
                 latency_budget_ms: float | None, latency, cost: str, progress: bool):
        self.supernet, self.objective, self.stage = supernet, objective, stage
        self.candidates = supernet.candidates
        self.beam_width, self.max_changes, self.max_full = beam_width, max_changes, max_full
        self.tolerance, self.noise_factor = thresholds
        # assignment (or "teacher") -> per-image scores (None where there are none); only those a later comparison reads
        self.image_scores: dict = {}
        self.latency_budget_ms, self.latency, self.cost = latency_budget_ms, latency, cost
        self.replaced, self.new_type = STAGE_MOVES[stage]
        self.records: dict[tuple[str, ...], dict] = {}
        self.evaluations: list[dict] = []
        self.bar = tqdm(total=0, desc=f"jetvit search stage {stage}", unit="eval", disable=not progress)

    def goodness(self, record: dict) -> float:
        return _goodness(record["score"], self.objective.higher_is_better)

    def evaluate(self, assignment: list[str], round_index: int, role: str, changed_layer: int | None = None) -> dict:
        """The record of `assignment`, scored (and logged) on its first evaluation only."""
        key = tuple(assignment)
        if key not in self.records:
            start = time.perf_counter()
            self.supernet.set(assignment)
            score, self.image_scores[key] = self.objective.assess(self.supernet)
            record = {
                "assignment": list(assignment),
                "score": score,
                "ci95": _ci95(self.image_scores[key]),
                "stage": self.stage,
                "round": round_index,
                "role": role,
                "changed_layer": changed_layer,
                "estimated_latency_ms": self.latency(assignment),
                "num_nonlinear_layers": sum(t != "linear" for t in assignment),
                "num_full_layers": assignment.count("full"),
            }
            record["seconds"] = time.perf_counter() - start
            self.records[key] = record
            self.evaluations.append(record)
            self.bar.update(1)
        return self.records[key]

    def run(self, start: list[str], teacher: dict | None) -> SearchResult:
        """Score the start (and, in stage 2 without a `teacher` (`{"score", "ci95"}`), the all-full assignment where
        every layer has one), run the rounds, set the supernet to the chosen assignment and return the stage's
        result."""
        began = time.perf_counter()
        self.bar.total += 1
        start_record = self.evaluate(start, 0, "start")
        if self.stage == 2 and teacher is None and all("full" in layer for layer in self.candidates):
            self.bar.total += 1
            teacher = self.evaluate(["full"] * len(self.candidates), 0, "teacher")
        target = teacher if self.stage == 2 else None
        chosen, rounds, stop_reason = self.run_rounds(start_record, target, time.perf_counter() - began)
        self.bar.close()
        self.supernet.set(chosen["assignment"])
        result = self.result(start_record, chosen, rounds, stop_reason, teacher)
        result.timing = _timing(self.evaluations, time.perf_counter() - began, self.objective.reference_seconds)
        return result

    def compare(self, record: dict, reference: dict) -> dict:
        """How much better `record` scores than `reference` (an evaluation record, or the teacher's `{"score", ...}`):
        the gain, the paired bootstrap SE of the per-image differences (0 unless both have per-image scores) and the
        threshold `tolerance + noise_factor * SE` a gain must exceed to be more than noise."""
        gain = self.goodness(record) - self.goodness(reference)
        ours, theirs = (self.image_scores[_scores_key(r)] for r in (record, reference))
        se = paired_bootstrap(ours, theirs)["se"] if _finite(ours) and _finite(theirs) else 0.0
        return {"gain": gain, "se": se, "threshold": self.tolerance + self.noise_factor * se}

    def run_rounds(self, start_record: dict, target: dict | None,
                   start_seconds: float) -> tuple[dict, list[dict], str]:
        """The chosen record, one record per round (round 0: the start, which took `start_seconds`) and why the
        search stopped. `target`: stage 2's teacher (`{"score", ...}`), or None."""
        beam, chosen = [start_record], start_record
        rounds = [_round_record(0, beam, 0, 0, start_seconds)]
        round_index = 0
        while True:
            stop_reason = self.limit_reached(chosen, beam, round_index, target, rounds[-1])
            if stop_reason is not None:
                break
            round_index += 1
            began = time.perf_counter()
            children, over_budget = self.moves(beam)
            if not children:
                stop_reason = "no_moves_within_budget" if over_budget else "no_moves"
                break
            new_before = len(self.evaluations)
            self.bar.total += sum(key not in self.records for key in children)
            scored = [self.evaluate(list(child), round_index, "move", layer) for child, layer in children.items()]
            # best first; ties go to the cheaper assignment, then to the order of generation (stable sort)
            beam = sorted(scored, key=lambda r: (-self.goodness(r), r[self.cost]))[:self.beam_width]
            rounds.append(_round_record(round_index, beam, len(self.evaluations) - new_before, len(over_budget),
                                        time.perf_counter() - began))
            self.report_round(rounds[-1])
            top = beam[0]
            if self.stage == 1:
                decision = self.compare(top, chosen)
                rounds[-1]["decision"] = {**decision, "taken": decision["gain"] > decision["threshold"],
                                          "definition": "take the round if gain (best of the round over the chosen "
                                                        "assignment, positive = better) > threshold = tolerance + "
                                                        "noise_factor * se (paired bootstrap SE over images)"}
                if not rounds[-1]["decision"]["taken"]:
                    stop_reason = "plateau"
                    break
            if self.goodness(top) > self.goodness(chosen):
                chosen = top
            kept = {_scores_key(r) for r in (chosen, target) if r is not None}
            self.image_scores = {key: value for key, value in self.image_scores.items() if key in kept}
            self.bar.set_postfix_str(f"best {chosen['score']:.4g}")
        return chosen, rounds, stop_reason

    def report_round(self, record: dict) -> None:
        """One line per round under the progress bar (when it is shown): candidates, seconds, best score."""
        if self.bar.disable:
            return
        each = record["seconds"] / record["evaluated"] if record["evaluated"] else math.nan
        self.bar.write(f"stage {self.stage} round {record['round']}: {record['evaluated']} candidates in "
                       f"{record['seconds']:.2f} s ({each:.3f} s each), best {record['best_score']:.6g}")

    def limit_reached(self, chosen: dict, beam: list[dict], round_index: int, target: dict | None,
                      last_round: dict) -> str | None:
        """The stop reason that holds before round `round_index + 1`, or None to go on. With a stage-2 `target` (the
        teacher), `last_round` records the gap of the chosen assignment to it."""
        if target is not None:
            behind = self.compare(target, chosen)
            reached = behind["gain"] <= behind["threshold"]
            last_round["decision"] = {"gap_to_teacher": behind["gain"], "se": behind["se"],
                                      "threshold": behind["threshold"], "reached_teacher": reached,
                                      "definition": "the teacher is reached when gap_to_teacher (the teacher's score "
                                                    "over the chosen assignment's, positive = the teacher is better) "
                                                    "<= threshold = tolerance + noise_factor * se (paired bootstrap "
                                                    "SE over images)"}
            if reached:
                return "reached_teacher"
        if self.max_changes is not None and round_index >= self.max_changes:
            return "max_changes"
        if self.max_full is not None and beam[0]["num_full_layers"] >= self.max_full:
            return "max_full"
        return None

    def moves(self, beam: list[dict]) -> tuple[dict[tuple[str, ...], int], set[tuple[str, ...]]]:
        """Every distinct child of the beam one move away (-> the layer it changed, in order of generation) within the
        latency budget, and the children over it."""
        children, over_budget = {}, set()
        for member in beam:
            for layer, current in enumerate(member["assignment"]):
                movable = current == self.replaced if self.replaced is not None else current != self.new_type
                if not movable or self.new_type not in self.candidates[layer]:
                    continue
                child = member["assignment"][:layer] + [self.new_type] + member["assignment"][layer + 1 :]
                if tuple(child) in children or tuple(child) in over_budget:
                    continue
                if self.latency_budget_ms is not None and self.latency(child) > self.latency_budget_ms:
                    over_budget.add(tuple(child))
                    continue
                children[tuple(child)] = layer
        return children, over_budget

    def layer_gains(self, start_record: dict) -> list[float]:
        """Per layer, the gain of switching only that layer of the start to the stage's new type (NaN: not
        evaluated)."""
        start, gains = start_record["assignment"], []
        for layer in range(len(self.candidates)):
            child = start[:layer] + [self.new_type] + start[layer + 1 :]
            record = self.records.get(tuple(child)) if child != start else None
            gains.append(self.goodness(record) - self.goodness(start_record) if record is not None else math.nan)
        return gains

    def result(self, start_record: dict, chosen: dict, rounds: list[dict], stop_reason: str,
               teacher: dict | None) -> SearchResult:
        new_type, stage = self.new_type, self.stage
        return SearchResult(
            stage=stage,
            objective=self.objective.describe(),
            beam_width=self.beam_width,
            tolerance=self.tolerance,
            start=list(start_record["assignment"]),
            best=list(chosen["assignment"]),
            best_score=chosen["score"],
            best_latency_ms=chosen["estimated_latency_ms"],
            teacher_score=teacher["score"] if teacher is not None else None,
            noise_factor=self.noise_factor,
            best_ci95=chosen["ci95"],
            teacher_ci95=teacher["ci95"] if teacher is not None else None,
            stop_reason=stop_reason,
            candidates=[list(layer) for layer in self.candidates],
            evaluations=self.evaluations,
            rounds=rounds,
            layer_gain={
                "attention_type": new_type,
                "definition": f"improvement of the objective (positive = better) from switching only that layer of "
                              f"the start to {new_type!r} (stage {stage}, round 1); null where not evaluated",
                "gains": self.layer_gains(start_record),
            },
            pareto_cost=self.cost,
            pareto=pareto_front(self.evaluations, self.cost, self.objective.higher_is_better),
            max_full=self.max_full,
            max_changes=self.max_changes,
            latency_budget_ms=self.latency_budget_ms,
            device=self.objective.placement.describe() if self.objective.placement is not None else None,
        )


def _round_record(round_index: int, beam: list[dict], evaluated: int, skipped: int, seconds: float) -> dict:
    return {
        "round": round_index,
        "beam": [{"assignment": r["assignment"], "score": r["score"], "ci95": r["ci95"]} for r in beam],
        "best_score": beam[0]["score"],
        "best_ci95": beam[0]["ci95"],
        "evaluated": evaluated,
        "skipped_over_budget": skipped,
        "seconds": seconds,
    }


def _scores_key(record: dict):
    """Where `image_scores` keeps the per-image scores of an evaluation record or of the given teacher's score."""
    return tuple(record["assignment"]) if "assignment" in record else "teacher"


def _finite(per_image: torch.Tensor | None) -> bool:
    """Whether there are per-image scores (`[N]` numbers or `[N, C, C]` confusions) and every entry is finite (a NaN
    score is the worst, with no interval)."""
    return per_image is not None and bool(torch.isfinite(per_image).all())


def _ci95(per_image: torch.Tensor | None) -> list[float] | None:
    """The 95% bootstrap interval of the score over images (the mean of `[N]` numbers, the dataset mIoU of `[N, C, C]`
    confusions); None without per-image scores (or with a non-finite entry)."""
    return bootstrap(per_image)["ci95"] if _finite(per_image) else None


def _timing(evaluations: list[dict], stage_seconds: float, reference_seconds: float | None) -> dict:
    """The stage's wall-clock times: the whole stage, the objective's one teacher pass (made before the stage) and the
    candidates' (setting the subnet and scoring it on every image; the first also warms the device up)."""
    seconds = [record["seconds"] for record in evaluations]
    return {
        "stage_seconds": stage_seconds,
        "teacher_outputs_seconds": reference_seconds,
        "num_candidates": len(seconds),
        "seconds_per_candidate": {"first": seconds[0], "mean": statistics.fmean(seconds),
                                  "median": statistics.median(seconds), "max": max(seconds)},
        "definition": "wall-clock seconds: stage = every evaluation of the stage and the moves between them; a "
                      "candidate = setting the subnet and scoring it on every image (the first includes the "
                      "device's warm-up); teacher outputs = the objective's one pass of the teacher, made before the "
                      "stage",
    }
