"""Attention search: beam search against objectives with a known optimum (stage rules, plateau, teacher score,
max_full, latency budget, memoisation, Pareto front), the real objectives on a tiny depth supernet against independent
references, and `jetvit search` end to end (log, plots, extracted model)."""

import copy
import itertools
import json
import math
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from jetvit_hf import JetViTForDepthEstimation
from jetvit_hf.cli import main as cli_main
from jetvit_hf.convert import convert_to_jetvit, load_jetvit, save_converted
from jetvit_hf.evaluation.bootstrap import bootstrap, paired_bootstrap
from jetvit_hf.evaluation.images import load_eval_images
from jetvit_hf.evaluation.probe import probe_logits
from jetvit_hf.search.beam import beam_search, default_start
from jetvit_hf.search.objectives import Objective, make_objective
from jetvit_hf.search.plots import plot_layer_gain, plot_pareto
from jetvit_hf.search.stage import run_search
from jetvit_hf.train.supernet import JetViTSupernet

NUM_LAYERS = 4  # the tiny dinov2 source
LATENCY_TABLE = {"num_layers": NUM_LAYERS, "per_layer_ms": {"linear": 1.0, "window": 2.0, "full": 5.0},
                 "remainder_ms": 0.5}




class TableObjective(Objective):
    """Scores an assignment from a hidden table (per-layer values plus pairwise bonuses) without running the model;
    records every call."""

    name = "table"

    def __init__(self, values: dict, pairs: dict | None = None, higher_is_better: bool = True):
        self.values, self.pairs, self.higher_is_better = values, pairs or {}, higher_is_better
        self.calls = []

    def table_score(self, assignment) -> float:
        total = sum(self.values.get((layer, kind), 0.0) for layer, kind in enumerate(assignment))
        for ((layer_a, kind_a), (layer_b, kind_b)), bonus in self.pairs.items():
            total += bonus if assignment[layer_a] == kind_a and assignment[layer_b] == kind_b else 0.0
        return total if self.higher_is_better else -total

    def score(self, model) -> float:
        self.calls.append(tuple(model.assignment))
        return self.table_score(model.assignment)


@pytest.fixture(scope="module")
def tiny_jetvit(source_checkpoint):
    directory, _ = source_checkpoint("dinov2")
    return convert_to_jetvit(directory)


def supernet_with(model, candidates) -> JetViTSupernet:
    torch.manual_seed(0)  # a fresh supernet's new modules draw from the global RNG
    return JetViTSupernet(copy.deepcopy(model), candidates)


# Stage 1: window at layer 0 looks best alone, but it conflicts with layer 1; layers 1 and 3 together are best.
TRAP_VALUES = {(0, "window"): 1.0, (1, "window"): 0.8, (2, "window"): -0.5, (3, "window"): 0.9}
TRAP_PAIRS = {((1, "window"), (3, "window")): 2.0, ((0, "window"), (1, "window")): -3.0}


def brute_force_best(objective: TableObjective, candidates) -> tuple[list[str], float]:
    key = (lambda s: s) if objective.higher_is_better else (lambda s: -s)
    best = max(itertools.product(*candidates), key=lambda a: key(objective.table_score(a)))
    return list(best), objective.table_score(best)


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_stage1_beam_of_two_finds_the_optimum_that_greedy_misses(tiny_jetvit, higher_is_better):
    supernet = supernet_with(tiny_jetvit, ["linear", "window"])
    optimum, optimum_score = brute_force_best(TableObjective(TRAP_VALUES, TRAP_PAIRS, higher_is_better),
                                              supernet.candidates)
    assert optimum == ["linear", "window", "linear", "window"]
    greedy = beam_search(supernet, TableObjective(TRAP_VALUES, TRAP_PAIRS, higher_is_better), stage=1, beam_width=1,
                         progress=False)
    assert greedy.best == ["window", "linear", "linear", "window"] and greedy.stop_reason == "plateau"
    for width in (2, 3):
        objective = TableObjective(TRAP_VALUES, TRAP_PAIRS, higher_is_better)
        result = beam_search(supernet, objective, stage=1, beam_width=width, progress=False)
        assert result.best == optimum and result.best_score == pytest.approx(optimum_score)
        assert result.stop_reason == "plateau" and supernet.assignment == optimum
        # stage-1 rules: start all-linear, each round switches exactly one more linear layer to window
        assert result.start == ["linear"] * NUM_LAYERS
        for record in result.evaluations:
            assert set(record["assignment"]) <= {"linear", "window"}
            assert record["assignment"].count("window") == record["round"]
        for round_record in result.rounds:
            assert len(round_record["beam"]) <= width
        # memoisation: every distinct assignment scored exactly once
        assert len(objective.calls) == len(set(objective.calls)) == len(result.evaluations)


def test_plateau_tolerance_and_layer_gain(tiny_jetvit):
    supernet = supernet_with(tiny_jetvit, ["linear", "window"])
    values = {(0, "window"): 1.0, (1, "window"): 0.05, (2, "window"): 0.04, (3, "window"): -0.2}
    strict = beam_search(supernet, TableObjective(values), stage=1, beam_width=2, progress=False)
    assert strict.best == ["window", "window", "window", "linear"] and strict.stop_reason == "plateau"
    tolerant = beam_search(supernet, TableObjective(values), stage=1, beam_width=2, tolerance=0.1, progress=False)
    assert tolerant.best == ["window", "linear", "linear", "linear"] and len(tolerant.rounds) == 3
    capped = beam_search(supernet, TableObjective(values), stage=1, beam_width=2, max_changes=1, progress=False)
    assert capped.best == ["window", "linear", "linear", "linear"] and capped.stop_reason == "max_changes"
    assert strict.layer_gain["attention_type"] == "window"
    assert strict.layer_gain["gains"] == pytest.approx([1.0, 0.05, 0.04, -0.2])


FULL_VALUES = {(0, "full"): 0.1, (1, "full"): 0.2, (2, "full"): 1.0, (3, "full"): 0.6}
STAGE1_CHOICE = ["linear", "window", "linear", "window"]


def test_stage2_stops_at_the_teacher_score_or_max_full(tiny_jetvit, tmp_path):
    supernet = supernet_with(tiny_jetvit, [["linear", "full"], ["window", "full"]] * 2)
    assert default_start(supernet.candidates, 2) == STAGE1_CHOICE
    reached = beam_search(supernet, TableObjective(FULL_VALUES), stage=2, beam_width=2, teacher_score=1.6,
                          progress=False)
    assert reached.stop_reason == "reached_teacher"
    assert reached.best == ["linear", "window", "full", "full"] and reached.best_score == pytest.approx(1.6)
    for record in reached.evaluations:  # stage-2 rules: only efficient -> full switches, one more per round
        kept = [a == s for a, s in zip(record["assignment"], STAGE1_CHOICE)]
        assert all(k or a == "full" for k, a in zip(kept, record["assignment"]))
        assert record["num_full_layers"] == record["round"]
    assert reached.layer_gain["attention_type"] == "full"
    assert reached.layer_gain["gains"] == pytest.approx([0.1, 0.2, 1.0, 0.6])  # Fig. 7's per-layer gain
    capped = beam_search(supernet, TableObjective(FULL_VALUES), stage=2, beam_width=2, teacher_score=1.6, max_full=1,
                         progress=False)
    assert capped.stop_reason == "max_full" and capped.best == ["linear", "window", "full", "window"]
    assert max(r["num_full_layers"] for r in capped.evaluations) == 1
    # no all-full subnet (layer 0 has no full candidate) and no teacher score: run until no move is left
    partial = supernet_with(tiny_jetvit, [["linear"], ["window", "full"], ["linear", "full"], ["window", "full"]])
    untargeted = beam_search(partial, TableObjective(FULL_VALUES), stage=2, beam_width=2, progress=False)
    assert untargeted.stop_reason == "no_moves" and untargeted.teacher_score is None
    assert untargeted.best == ["linear", "full", "full", "full"] and untargeted.best_score == pytest.approx(1.8)
    assert np.isnan(untargeted.layer_gain["gains"][0])  # layer 0 cannot become full: a blank cell
    assert Image.open(plot_layer_gain(untargeted, tmp_path / "gain.png")).size[0] > 100
    assert Image.open(plot_pareto(untargeted, tmp_path / "pareto.png")).size[0] > 100
    untargeted.save(tmp_path / "log.json")
    assert json.loads((tmp_path / "log.json").read_text())["layer_gain"]["gains"][0] is None


def test_stage2_plots_tell_window_and_full_layers_apart(tiny_jetvit, tmp_path, monkeypatch):
    """Without a latency table the cost is the count of non-linear layers, in which a window and a full layer weigh
    the same: the Pareto plot labels its points with their window and full layers, the gain plot each layer with its
    start type."""
    supernet = supernet_with(tiny_jetvit, [["linear", "full"], ["window", "full"]] * 2)
    result = beam_search(supernet, TableObjective(FULL_VALUES), stage=2, beam_width=2, teacher_score=1.6,
                         progress=False)
    assert result.pareto_cost == "num_nonlinear_layers"
    axes = {}
    monkeypatch.setattr("jetvit_hf.search.plots._save_figure",
                        lambda figure, path: axes.setdefault(Path(path).stem, figure.axes[0]))
    plot_pareto(result, tmp_path / "pareto.png")
    plot_layer_gain(result, tmp_path / "gain.png")
    pareto = axes["pareto"]
    assert "window + full" in pareto.get_xlabel()
    # at a cost of 2, both window layers made full (0w 2f) "costs" what the start (2w 0f) does
    assert [text.get_text() for text in pareto.texts] == ["0w 2f", "1w 2f"]
    assert [label.get_text() for label in axes["gain"].get_xticklabels()] == ["0\nl", "1\nw", "2\nl", "3\nw"]


def test_stage2_scores_the_all_full_teacher_once_when_the_supernet_has_it(tiny_jetvit):
    supernet = supernet_with(tiny_jetvit, ["linear", "window", "full"])
    objective = TableObjective(FULL_VALUES)
    result = beam_search(supernet, objective, stage=2, start=STAGE1_CHOICE, beam_width=3, tolerance=0.35,
                         progress=False)
    assert result.teacher_score == pytest.approx(1.9)  # all four full layers
    assert [r["role"] for r in result.evaluations].count("teacher") == 1
    assert result.stop_reason == "reached_teacher" and result.best == ["linear", "window", "full", "full"]
    assert len(objective.calls) == len(set(objective.calls)) == len(result.evaluations)
    with pytest.raises(ValueError, match="several efficient candidates"):
        default_start(supernet.candidates, 2)


def test_latency_budget_and_pareto_front(tiny_jetvit):
    supernet = supernet_with(tiny_jetvit, ["linear", "window"])
    objective = TableObjective({(i, "window"): 1.0 + i for i in range(NUM_LAYERS)})
    budget = 0.5 + 4 * 1.0 + 2 * 1.0  # at most two window layers
    result = beam_search(supernet, objective, stage=1, beam_width=2, latency_table=LATENCY_TABLE,
                         latency_budget_ms=budget, progress=False)
    assert result.stop_reason == "no_moves_within_budget" and result.best == ["linear", "linear", "window", "window"]
    for record in result.evaluations:
        windows = record["assignment"].count("window")
        assert record["estimated_latency_ms"] == pytest.approx(0.5 + (NUM_LAYERS - windows) * 1.0 + windows * 2.0)
        assert record["estimated_latency_ms"] <= budget
    assert len(result.rounds) == 3 and result.best_latency_ms == pytest.approx(6.5)
    assert result.pareto_cost == "estimated_latency_ms"
    # the front, checked by pairwise dominance over every evaluation
    points = [(r["estimated_latency_ms"], r["score"]) for r in result.evaluations]
    front = [(r["estimated_latency_ms"], r["score"]) for r in result.pareto]
    for cost, score in points:
        dominated = any(c <= cost and s >= score and (c, s) != (cost, score) for c, s in points)
        assert ((cost, score) in front) != dominated
    assert [c for c, _ in front] == sorted(c for c, _ in front)
    with pytest.raises(ValueError, match="exceeds the budget"):
        beam_search(supernet, objective, stage=1, latency_table=LATENCY_TABLE, latency_budget_ms=4.0, progress=False)


class PerImageObjective(TableObjective):
    """`TableObjective` with per-image scores: image i scores the table's value plus `spread[i]` times the number of
    layers switched to `noisy_type` (a difference between two layouts that varies from image to image)."""

    def __init__(self, values: dict, spread: torch.Tensor, noisy_type: str = "window"):
        super().__init__(values)
        self.spread, self.noisy_type = spread, noisy_type

    def per_image(self, assignment) -> torch.Tensor:
        count = list(assignment).count(self.noisy_type)
        return self.table_score(assignment) + (self.spread * count if count else torch.zeros_like(self.spread))

    def score_images(self, model):
        self.calls.append(tuple(model.assignment))
        per_image = self.per_image(model.assignment)
        return per_image.mean().item(), per_image


ALTERNATING = torch.tensor([1.0, -1.0] * 24, dtype=torch.float64)  # mean 0, SD 1 over 48 images: SE about 0.14


def test_a_gain_within_the_noise_is_not_taken_and_one_above_it_is(tiny_jetvit):
    supernet = supernet_with(tiny_jetvit, ["linear", "window"])
    noisy = beam_search(supernet, PerImageObjective({(0, "window"): 0.05}, ALTERNATING), stage=1, beam_width=1,
                        progress=False)
    decision = noisy.rounds[1]["decision"]
    assert decision["gain"] == pytest.approx(0.05) and decision["se"] == pytest.approx(1 / math.sqrt(48), rel=0.15)
    assert decision["threshold"] == pytest.approx(2.0 * decision["se"]) and not decision["taken"]
    assert noisy.stop_reason == "plateau" and noisy.best == ["linear"] * NUM_LAYERS
    # without the noise threshold the same positive mean gain is a step
    naive = beam_search(supernet, PerImageObjective({(0, "window"): 0.05}, ALTERNATING), stage=1, beam_width=1,
                        noise_factor=0.0, progress=False)
    assert naive.best == ["window", "linear", "linear", "linear"]
    # a gain well above the noise (1.0 against a threshold of about 0.29) is taken
    clear = beam_search(supernet, PerImageObjective({(0, "window"): 1.0}, ALTERNATING), stage=1, beam_width=1,
                        progress=False)
    assert clear.rounds[1]["decision"]["taken"] and clear.best == ["window", "linear", "linear", "linear"]
    assert clear.rounds[2]["decision"]["gain"] == pytest.approx(0.0) and clear.stop_reason == "plateau"
    # every score carries its 95% interval over images (the start scores 0 on every image: a zero-width interval)
    for record in clear.evaluations:
        low, high = record["ci95"]
        assert low <= record["score"] <= high and (high > low) == (record["assignment"].count("window") > 0)
    assert clear.best_ci95 == next(r["ci95"] for r in clear.evaluations if r["assignment"] == clear.best)


def test_a_nan_score_is_the_worst_and_has_no_interval(tiny_jetvit):
    supernet = supernet_with(tiny_jetvit, ["linear", "window"])
    spread = ALTERNATING.clone()
    spread[0] = math.nan  # any layout with a window layer scores NaN on image 0
    result = beam_search(supernet, PerImageObjective({}, spread), stage=1, beam_width=1, progress=False)
    assert result.stop_reason == "plateau" and result.best == ["linear"] * NUM_LAYERS
    assert [r["ci95"] is None for r in result.evaluations] == [False] + [True] * NUM_LAYERS
    assert result.rounds[1]["decision"]["se"] == 0.0


def test_stage2_stops_once_the_teacher_is_reached_within_the_noise(tiny_jetvit):
    supernet = supernet_with(tiny_jetvit, [["linear", "full"], ["window", "full"]] * 2)
    values = {(2, "full"): 1.0, (3, "full"): 0.6, (0, "full"): 0.1, (1, "full"): 0.2}
    objective = PerImageObjective(values, ALTERNATING, noisy_type="full")
    teacher = 1.2 + 2 * ALTERNATING  # 0.2 above layer 2 made full (1.0 + ALTERNATING), image by image 0.2 +- 1
    result = beam_search(supernet, objective, stage=2, beam_width=1, max_full=3, teacher_score=teacher.mean().item(),
                         teacher_image_scores=teacher, progress=False)
    assert result.stop_reason == "reached_teacher" and result.best == ["linear", "window", "full", "window"]
    assert result.teacher_score == pytest.approx(1.2) and result.teacher_ci95 is not None
    reached = result.rounds[1]["decision"]
    assert reached["gap_to_teacher"] == pytest.approx(0.2) and reached["reached_teacher"]
    assert reached["gap_to_teacher"] <= reached["threshold"] == pytest.approx(2 * reached["se"])
    assert not result.rounds[0]["decision"]["reached_teacher"]  # the start is 1.2 behind: far outside the noise
    # a noise-free comparison needs the teacher's exact score: the same search then spends one more full layer
    exact = beam_search(supernet, objective, stage=2, beam_width=1, max_full=3, teacher_score=teacher.mean().item(),
                        teacher_image_scores=teacher, noise_factor=0.0, progress=False)
    assert exact.stop_reason == "reached_teacher" and exact.best == ["linear", "window", "full", "full"]


class ConfusionObjective(TableObjective):
    """`TableObjective` with per-image confusion matrices (12 images of one 2-class matrix): a layout with a window
    layer scores NaN, with a NaN count in image 0."""

    def score_images(self, model):
        self.calls.append(tuple(model.assignment))
        confusions = torch.tensor([[8.0, 2.0], [1.0, 9.0]]).repeat(12, 1, 1)
        if "window" not in model.assignment:
            return self.table_score(model.assignment), confusions
        confusions[0, 0, 0] = math.nan
        return math.nan, confusions


def test_a_nan_confusion_is_the_worst_and_has_no_interval(tiny_jetvit):
    supernet = supernet_with(tiny_jetvit, ["linear", "window"])
    result = beam_search(supernet, ConfusionObjective({}), stage=1, beam_width=1, progress=False)
    assert result.stop_reason == "plateau" and result.best == ["linear"] * NUM_LAYERS
    assert result.evaluations[0]["ci95"] == pytest.approx([(8 / 11 + 9 / 12) / 2] * 2)  # identical images: no noise
    assert [r["ci95"] is None for r in result.evaluations] == [False] + [True] * NUM_LAYERS
    assert result.rounds[1]["decision"]["se"] == 0.0


def test_searching_on_the_test_split_is_refused(depth_teacher, depth_supernet, scenes, tmp_path, capsys):
    with pytest.raises(ValueError, match="--split 'test'"):
        run_search(depth_supernet, depth_teacher, scenes, output=tmp_path / "s", split="test", progress=False)
    with pytest.raises(ValueError, match="--split 'validation': unknown split"):
        run_search(depth_supernet, depth_teacher, scenes, output=tmp_path / "s", split="validation", progress=False)
    assert cli_main(["search", "--supernet", "unused", "--teacher", "unused", "--data", str(scenes), "--stage", "1",
                     "--split", "test", "--output", str(tmp_path / "s")]) == 2
    assert "--split 'test'" in capsys.readouterr().err and not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(stage=3), "Unknown search stage"),
        (dict(stage=1, beam_width=0), "beam_width must be a positive int"),
        (dict(stage=1, max_full=2), "max_full limits stage 2"),
        (dict(stage=1, latency_budget_ms=5.0), "needs a latency_table"),
        (dict(stage=1, tolerance=-1.0), "tolerance must be >= 0"),
        (dict(stage=1, noise_factor=-1.0), "noise_factor must be >= 0"),
        (dict(stage=1, start=["full"] * NUM_LAYERS), "not among its candidates"),
        (dict(stage=1, latency_table={**LATENCY_TABLE, "num_layers": 7}), "for 7 layers"),
    ],
)
def test_bad_search_settings_are_clear_errors(tiny_jetvit, kwargs, message):
    supernet = supernet_with(tiny_jetvit, ["linear", "window"])
    with pytest.raises(ValueError, match=message):
        beam_search(supernet, TableObjective({}), progress=False, **kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# Real objectives on a tiny depth supernet



@pytest.fixture(scope="module")
def depth_teacher(depth_source):
    return load_jetvit(depth_source[0])


@pytest.fixture(scope="module")
def depth_supernet(depth_source):
    torch.manual_seed(0)
    return JetViTSupernet.from_pretrained(depth_source[0], candidates=["linear", "window", "full"], window_size=2)


def reference_delta1(predictions, depths) -> float:
    """Independent DA-mode delta1: per image, prediction upsampled to the ground truth, least squares on [p, 1]
    against 1 / depth over 0 < depth <= 80 m (rendered ground runs to the horizon), positive aligned values within
    1.25x of the target; mean over images."""
    values = []
    for prediction, depth in zip(predictions, depths):
        p = F.interpolate(prediction[None, None].double(), size=depth.shape, mode="bilinear", align_corners=True)
        truth = (depth > 0) & (depth <= 80)
        p, g = p[0, 0].numpy()[truth], 1.0 / depth[truth].astype(np.float64)
        (scale, shift), *_ = np.linalg.lstsq(np.stack([p, np.ones_like(p)], 1), g, rcond=None)
        aligned = scale * p + shift
        values.append(np.mean((aligned > 0) & (np.maximum(aligned / g, g / aligned) < 1.25)))
    return float(np.mean(values))


def test_depth_objectives_against_ground_truth_and_the_teacher(depth_teacher, depth_supernet, scenes):
    rows = datasets.load_from_disk(str(scenes)).with_format("numpy")[:]
    objective = make_objective("depth", depth_teacher, scenes, image_size=56, progress=False)
    assert objective.describe()["reference"] == "ground_truth" and objective.higher_is_better
    pixels = torch.cat(load_eval_images(scenes, 14, 56).batches)
    with torch.no_grad():
        teacher_prediction = depth_teacher(pixels).predicted_depth
    assert objective.evaluate(depth_teacher) == pytest.approx(reference_delta1(teacher_prediction, rows["depth"]),
                                                              abs=1e-9)
    versus_teacher = make_objective("depth", depth_teacher, scenes, image_size=56, metric="abs_rel",
                                    reference="teacher", progress=False)
    assert not versus_teacher.higher_is_better
    score, per_image = objective.assess(depth_teacher)  # one score per image, whose mean is the score
    assert per_image.shape == (len(rows["depth"]),) and per_image.mean().item() == pytest.approx(score, abs=1e-12)
    assert objective.teacher_image_scores().mean().item() == pytest.approx(objective.teacher_score(), abs=1e-12)
    depth_supernet.set(["full"] * 6)  # the all-full subnet is the teacher
    assert versus_teacher.evaluate(depth_supernet) == pytest.approx(0.0, abs=1e-6)
    depth_supernet.set(["linear"] * 6)
    assert versus_teacher.evaluate(depth_supernet) > 1e-3


def test_feature_ordinal_and_segmentation_objectives(depth_teacher, depth_supernet, scenes, tmp_path):
    feature = make_objective("feature", depth_teacher, scenes, image_size=56)
    ordinal = make_objective("ordinal", depth_teacher, scenes, image_size=56, progress=False)
    segmentation = make_objective("segmentation", depth_teacher, scenes, image_size=56, probe_steps=60,
                                  progress=False)
    assert feature.describe()["targets"] == "dpt" and ordinal.describe()["num_pairs"] > 100
    depth_supernet.set(["full"] * 6)
    assert feature.evaluate(depth_supernet) == pytest.approx(0.0, abs=1e-6)
    assert ordinal.evaluate(depth_supernet) == 1.0  # pairs sampled from the teacher, ratio > 1.1
    assert segmentation.evaluate(depth_supernet) == pytest.approx(segmentation.evaluate(depth_teacher), abs=1e-6)
    depth_supernet.set(["linear"] * 6)
    assert feature.evaluate(depth_supernet) < -1e-3
    for objective in (feature, ordinal):  # per-image scores whose mean is the score
        score, per_image = objective.assess(depth_supernet)
        assert per_image.mean().item() == pytest.approx(score, abs=1e-12)
    # a dataset-level mIoU: one confusion matrix per image, the score the mIoU of their sum
    score, confusions = segmentation.assess(depth_supernet)
    classes = int(np.max(datasets.load_from_disk(str(scenes)).with_format("numpy")["labels"])) + 1  # the probe's
    assert confusions.shape == (6, classes, classes) and confusions.dtype == torch.float64
    assert long_hand_miou(confusions.sum(0)) == pytest.approx(score, abs=1e-6)
    teacher_confusions = segmentation.teacher_image_scores()
    assert long_hand_miou(teacher_confusions.sum(0)) == pytest.approx(segmentation.teacher_score(), abs=1e-6)
    labels = load_eval_images(scenes, 14, 56).labels
    teacher_maps = torch.cat(segmentation.teacher_maps)
    for image, (label, confusion) in enumerate(zip(labels, teacher_confusions)):
        prediction = probe_logits(segmentation.probe, teacher_maps[image], tuple(label.shape)).argmax(0)
        expected = np.zeros((classes, classes))
        np.add.at(expected, (label.numpy(), prediction.numpy()), 1)  # row: label, column: prediction
        np.testing.assert_array_equal(confusion.numpy(), expected)
    assert 0.0 <= ordinal.evaluate(depth_supernet) <= 1.0 and 0.0 < segmentation.evaluate(depth_supernet) <= 1.0
    with torch.no_grad():  # a student whose head outputs zero disparity everywhere ranks no pair right (ties are wrong)
        head = depth_supernet.model.head.conv3
        head.weight.zero_()
        head.bias.fill_(-1.0)
    assert ordinal.evaluate(depth_supernet) == 0.0

    # DA-2K format: two scenes with pairs from the ground truth (closer = smaller depth), counted independently
    rows = datasets.load_from_disk(str(scenes)).with_format("numpy")[:2]
    annotations, rng = {}, np.random.default_rng(0)
    for index, (image, depth) in enumerate(zip(datasets.load_from_disk(str(scenes))[:2]["image"], rows["depth"])):
        image.save(tmp_path / f"scene{index}.png")
        pairs = []
        while len(pairs) < 20:
            a, b = (rng.integers(0, 42), rng.integers(0, 56)), (rng.integers(0, 42), rng.integers(0, 56))
            if depth[a] > 0 and depth[b] > 0 and depth[a] != depth[b]:
                closer, farther = (a, b) if depth[a] < depth[b] else (b, a)
                pairs.append({"point1": [int(c) for c in farther], "point2": [int(c) for c in closer],
                              "closer_point": "point2"})
        annotations[f"scene{index}.png"] = pairs
    (tmp_path / "annotations.json").write_text(json.dumps(annotations))
    da2k = make_objective("ordinal", depth_teacher, da2k=tmp_path / "annotations.json", image_size=56)
    correct = 0
    for name, pairs in annotations.items():
        pixels = load_eval_images([Image.open(tmp_path / name)], 14, 56).batches[0]
        with torch.no_grad():
            disparity = depth_teacher(pixels).predicted_depth
        disparity = F.interpolate(disparity[None], size=(42, 56), mode="bilinear", align_corners=True)[0, 0]
        correct += sum(bool(disparity[tuple(p["point2"])] > disparity[tuple(p["point1"])]) for p in pairs)
    assert da2k.evaluate(depth_teacher) == pytest.approx(correct / 40)


def long_hand_miou(confusion) -> float:
    """IoU = I / (L + P - I) class by class in float64 (rows: label, columns: prediction); the mean over the classes
    with a non-zero union."""
    confusion = np.asarray(confusion, dtype=np.float64)
    intersection = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - intersection
    return float(np.mean(intersection[union > 0] / union[union > 0]))


def test_an_miou_search_has_intervals_and_a_noise_threshold(depth_teacher, depth_source, scenes, tmp_path):
    objective = make_objective("segmentation", depth_teacher, scenes, image_size=56, probe_steps=30, progress=False)
    torch.manual_seed(0)
    supernet = JetViTSupernet.from_pretrained(depth_source[0], candidates=["linear", "window", "full"], window_size=2)

    def confusions(assignment):
        supernet.set(assignment)
        return objective.assess(supernet)[1]

    stage1 = beam_search(supernet, objective, stage=1, beam_width=1, max_changes=1, progress=False)
    for record in stage1.evaluations:  # every mIoU carries its interval over images
        low, high = record["ci95"]
        assert record["ci95"] == bootstrap(confusions(record["assignment"]))["ci95"]
        assert low - 1e-6 <= record["score"] <= high + 1e-6 and high > low
    start, top = stage1.start, stage1.rounds[1]["beam"][0]
    decision = stage1.rounds[1]["decision"]  # the step's noise: the paired bootstrap of the two mIoUs
    assert decision["se"] == paired_bootstrap(confusions(top["assignment"]), confusions(start))["se"] > 0
    assert decision["gain"] == pytest.approx(top["score"] - stage1.evaluations[0]["score"])
    assert decision["threshold"] == pytest.approx(2 * decision["se"])
    assert decision["taken"] == (decision["gain"] > decision["threshold"])
    stage1.save(tmp_path / "log.json")
    assert json.loads((tmp_path / "log.json").read_text())["rounds"][1]["decision"]["se"] == decision["se"]

    teacher = objective.teacher_image_scores()
    stage2 = beam_search(supernet, objective, stage=2, start=["linear"] * 6, beam_width=1, max_full=1,
                         teacher_score=objective.teacher_score(), teacher_image_scores=teacher, progress=False)
    assert stage2.teacher_ci95 == bootstrap(teacher)["ci95"]
    gap = stage2.rounds[0]["decision"]  # the all-linear start against the teacher, on the same images
    assert gap["se"] == paired_bootstrap(teacher, confusions(["linear"] * 6))["se"] > 0
    assert gap["threshold"] == pytest.approx(2 * gap["se"])
    assert gap["reached_teacher"] == (gap["gap_to_teacher"] <= gap["threshold"])


def test_unknown_objective_is_a_clear_error(depth_teacher, scenes, tiny_jetvit):
    with pytest.raises(ValueError, match="Unknown objective 'miou'"):
        make_objective("miou", depth_teacher, scenes)
    with pytest.raises(ValueError, match="needs a depth model"):
        make_objective("depth", tiny_jetvit, scenes, image_size=56)
    with pytest.raises(ValueError, match="Unknown depth metric"):
        make_objective("depth", depth_teacher, scenes, image_size=56, metric="rmse")
    with pytest.raises(ValueError, match="needs segmentation labels"):
        make_objective("segmentation", tiny_jetvit, [Image.new("RGB", (56, 56))], image_size=56)
    unlabelled = datasets.Dataset.from_dict(
        {"image": [Image.new("RGB", (56, 56))], "labels": [np.full((56, 56), 255, np.uint8)]},
        features=datasets.Features({"image": datasets.Image(), "labels": datasets.Array2D((56, 56), "uint8")}))
    with pytest.raises(ValueError, match="needs a labelled pixel; every label is 255"):
        make_objective("segmentation", tiny_jetvit, unlabelled, image_size=56)


def test_run_search_writes_log_plots_and_an_extracted_model_equal_to_the_subnet(depth_teacher, depth_source, scenes,
                                                                                tmp_path):
    torch.manual_seed(0)
    supernet = JetViTSupernet.from_pretrained(depth_source[0], window_size=2)
    output = tmp_path / "stage1"
    result = run_search(supernet, depth_teacher, scenes, output=output, objective="depth", metric="abs_rel",
                        stage=1, beam_width=2, image_size=56, latency_table={**LATENCY_TABLE, "num_layers": 6},
                        progress=False)
    log = json.loads((output / "search_log.json").read_text())
    assert log["schema"] == "jetvit-search/1" and log["stage"] == 1 and log["best"] == result.best
    assert log["objective"]["name"] == "depth_abs_rel" and log["objective"]["higher_is_better"] is False
    assignments = [tuple(r["assignment"]) for r in log["evaluations"]]
    assert len(assignments) == len(set(assignments)) == sum(r["evaluated"] for r in log["rounds"]) + 1
    assert {tuple(r["assignment"]) for r in log["pareto"]} <= set(assignments)
    assert next(r["score"] for r in log["evaluations"] if r["assignment"] == log["best"]) == log["best_score"]
    assert all(r["estimated_latency_ms"] is not None for r in log["evaluations"])
    assert json.loads((output / "attention_types.json").read_text())["attention_types"] == result.best
    for plot in ("window_attention_gain.png", "pareto.png"):
        assert Image.open(output / plot).size[0] > 100
    extracted = JetViTForDepthEstimation.from_pretrained(output / "model").eval()
    assert extracted.config.attention_types == result.best == supernet.assignment
    pixels = torch.cat(load_eval_images(scenes, 14, 56).batches)
    with torch.no_grad():
        torch.testing.assert_close(extracted(pixels).predicted_depth, supernet(pixels).predicted_depth, rtol=0, atol=0)
    assert not (output / "model" / "preprocessor_config.json").exists()  # a bare source checkpoint has none
    with pytest.raises(FileExistsError, match="already exists"):
        run_search(supernet, depth_teacher, scenes, output=output, stage=1, image_size=56, progress=False)


def test_cli_search_both_stages(depth_source, scenes, tmp_path, capsys):
    converted = tmp_path / "converted"
    model, info = convert_to_jetvit(depth_source[0], window_size=2, output_loading_info=True)
    save_converted(model, converted, depth_source[0], info)
    torch.manual_seed(0)
    JetViTSupernet.from_pretrained(converted).save_pretrained(tmp_path / "supernet")
    common = ["--teacher", str(depth_source[0]), "--data", str(scenes), "--image-size", "56", "--no-progress"]
    assert cli_main(["search", "--supernet", str(tmp_path / "supernet"), "--objective", "feature", "--stage", "1",
                     "--beam-width", "2", "--output", str(tmp_path / "s1"), *common]) == 0
    stage1 = json.loads((tmp_path / "s1" / "attention_types.json").read_text())["attention_types"]
    assert "stopped: plateau" in capsys.readouterr().out
    # the converted directory is the same teacher, and brings its preprocessor_config.json; the feature objective
    # never reaches the teacher's exact score, so round 1 always runs and measures every layer's gain
    assert cli_main(["search", "--supernet", str(tmp_path / "supernet"), "--objective", "feature", "--stage", "2",
                     "--start", str(tmp_path / "s1" / "attention_types.json"), "--max-full", "1",
                     "--output", str(tmp_path / "s2"), *common, "--teacher", str(converted)]) == 0
    log = json.loads((tmp_path / "s2" / "search_log.json").read_text())
    assert log["start"] == stage1 and log["teacher_score"] == pytest.approx(0.0, abs=1e-9)  # the teacher vs itself
    assert all(r["num_full_layers"] <= 1 for r in log["evaluations"] if r["role"] != "teacher")
    assert log["stop_reason"] in ("reached_teacher", "max_full")
    assert sum(g is not None for g in log["layer_gain"]["gains"]) == sum(t != "full" for t in stage1)
    assert (tmp_path / "s2" / "full_attention_gain.png").is_file()
    assert (tmp_path / "s2" / "model" / "preprocessor_config.json").is_file()
    assert JetViTForDepthEstimation.from_pretrained(tmp_path / "s2" / "model").config.attention_types == log["best"]
    assert cli_main(["search", "--supernet", str(tmp_path / "supernet"), "--stage", "2", "--output",
                     str(tmp_path / "s3"), *common]) == 2
    assert "needs start" in capsys.readouterr().err
