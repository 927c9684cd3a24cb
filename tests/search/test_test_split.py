"""Scoring the test split (`post_training.score_test_split`) without running anything twice: the depth measures share
one pass of the teacher (`DepthObjective.derived`) and one forward of each model (`objectives.assess_all`), and give
exactly the numbers of building and assessing every measure on its own; an objective's `predict` + `assess_outputs`
is its `assess`, and the teacher's own scores are computed once."""

from pathlib import Path

import pytest
import torch

from jetvit_hf import convert
from jetvit_hf.convert import convert_to_jetvit, load_jetvit
from jetvit_hf.data.render_stream import render_dataset
from jetvit_hf.search import objectives as objectives_module
from jetvit_hf.search.objectives import assess_all, make_objective
from jetvit_hf.search.post_training import (TEST_MEASURES, PipelineConfig, _difference, _interval, score_test_split,
                                            validate_config)

SCENES = 10  # two batches on the CPU (8 + 2)
BATCHES = 2
MODELS = {"searched": ("window", 1), "all_linear": ("linear", 2), "all_window_untrained": ("window", 3)}
COMPARE = {"all_linear": "all_window_untrained"}


def encoder_calls(model: torch.nn.Module, counts: dict, name: str) -> torch.nn.Module:
    """`model` with its encoder's forwards counted in `counts[name]` (one per batch a depth model predicts)."""
    counts[name] = 0

    def hook(*_):
        counts[name] += 1

    model.jetvit.register_forward_hook(hook)
    return model


@pytest.fixture(scope="module")
def split(source_checkpoint, tmp_path_factory):
    """(config, teacher directory, teacher info, model directories, test set) of a tiny depth run."""
    teacher, _ = source_checkpoint("depth_anything_v2")
    base = tmp_path_factory.mktemp("test-split")
    config, info = validate_config(PipelineConfig(
        teacher=str(teacher), output_dir=str(base / "run"), eval_scenes=SCENES, image_size=56, window_size=2,
        distill_steps=1, finetune_steps=1, batch_size=2, device="cpu"))
    models = {}
    for name, (kind, seed) in MODELS.items():
        torch.manual_seed(seed)
        model = convert_to_jetvit(teacher, kind, window_size=2)
        with torch.no_grad():  # three different models
            for parameter in model.parameters():  # drawn in logical order, whatever the memory format
                parameter.add_(0.01 * torch.randn(parameter.shape, dtype=parameter.dtype))
        model.save_pretrained(base / name)
        models[name] = base / name
    return config, teacher, info, models, render_dataset("test", SCENES, 56, 56)


@pytest.fixture(scope="module")
def scored(split):
    """score_test_split's report, the per-image scores it was built from (`assess_all`'s answer) and the forwards of
    the teacher and of each model it ran."""
    config, teacher_dir, info, models, test_set = split
    counts, captured = {}, {}
    teacher = encoder_calls(load_jetvit(teacher_dir), counts, "teacher")

    def counted_load(directory, **kwargs):
        name = next(name for name, path in models.items() if Path(directory) == path)
        return encoder_calls(load_jetvit(directory, **kwargs), counts, name)

    def spied_assess_all(objectives, loaded):
        captured.update(assess_all(objectives, loaded))
        return captured

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(convert, "load_jetvit", counted_load)
        patch.setattr(objectives_module, "assess_all", spied_assess_all)
        report = score_test_split(config, teacher, info, models, test_set, compare=COMPARE)
    return report, captured, counts


def assess_each_measure(split) -> tuple[dict, dict, dict]:
    """The per-measure path score_test_split took before: a new objective (and teacher pass) per measure and
    `assess` of every model per measure. ({measure: {model: (score, per-image)}}, {measure: teacher's}, forwards)."""
    config, teacher_dir, _, models, test_set = split
    counts = {}
    teacher = encoder_calls(load_jetvit(teacher_dir), counts, "teacher")
    loaded = {name: encoder_calls(load_jetvit(directory), counts, name) for name, directory in models.items()}
    assessed, own = {}, {}
    for label, settings in TEST_MEASURES["depth"].items():
        settings = dict(settings)
        objective = make_objective(settings.pop("objective"), teacher, test_set, image_size=config.image_size,
                                   device=config.device, dtype=config.dtype, progress=False, **settings)
        assessed[label] = {name: objective.assess(model) for name, model in loaded.items()}
        own[label] = (objective.teacher_score(), objective.teacher_image_scores())
    return assessed, own, counts


def test_the_test_split_is_exactly_what_assessing_each_measure_apart_gives(split, scored):
    report, captured, _ = scored
    assessed, own, _ = assess_each_measure(split)
    assert list(captured) == list(assessed) == list(report["measures"])
    for label, results in assessed.items():
        assert list(captured[label]) == list(results) == list(MODELS)
        for name, (score, per_image) in results.items():  # bit for bit: the same floats, the same per-image tensors
            assert captured[label][name][0] == score and torch.equal(captured[label][name][1], per_image), (label, name)
            entry = report["models"][name]
            assert entry["scores"][label] == _interval(score, per_image)
            if label in report["teacher"]:
                assert entry["minus_teacher"][label] == _difference((score, per_image), own[label])
            if name != "searched":
                assert entry["searched_minus_this"][label] == _difference(results["searched"], (score, per_image))
            if name in COMPARE:
                assert entry["minus_compared"][label] == _difference((score, per_image), results[COMPARE[name]])
    assert set(report["teacher"]) == {"abs_rel_vs_ground_truth", "delta1_vs_ground_truth"}
    for label, teacher in report["teacher"].items():
        assert teacher == _interval(*own[label])
    assert len({entry["scores"]["abs_rel_vs_teacher"]["score"] for entry in report["models"].values()}) == 3


def test_each_model_and_the_teacher_run_once_over_the_test_split(split, scored):
    _, _, counts = scored
    assert counts == {"teacher": BATCHES, **{name: BATCHES for name in MODELS}}  # one forward per batch
    _, _, before = assess_each_measure(split)  # a teacher pass and a forward of every model per measure
    measures = len(TEST_MEASURES["depth"])
    assert before == {"teacher": measures * BATCHES, **{name: measures * BATCHES for name in MODELS}}


def test_a_derived_depth_objective_is_a_new_one_without_the_teachers_pass(split):
    config, teacher_dir, _, models, test_set = split
    counts = {}
    teacher = encoder_calls(load_jetvit(teacher_dir), counts, "teacher")
    model = load_jetvit(models["searched"])
    options = dict(image_size=56, device="cpu", progress=False)
    first = make_objective("depth", teacher, test_set, metric="abs_rel", reference="teacher", **options)
    derived = first.derived(metric="delta1", reference="ground_truth")
    assert counts["teacher"] == BATCHES and derived.reference_seconds == first.reference_seconds
    assert first.shares_outputs(derived) and derived.shares_outputs(first)
    assert (first.metric, first.reference, first.name) == ("abs_rel", "teacher", "depth_abs_rel")  # left as it was
    fresh = make_objective("depth", teacher, test_set, metric="delta1", reference="ground_truth", **options)
    assert derived.describe() == fresh.describe() and derived.higher_is_better and not first.higher_is_better
    assert not fresh.shares_outputs(derived)  # other images (equal, but loaded apart)
    assert derived.teacher_score() == fresh.teacher_score()
    assert torch.equal(derived.teacher_image_scores(), fresh.teacher_image_scores())
    outputs = first.predict(model)
    for objective in (first, derived):
        score, per_image = objective.assess_outputs(outputs)
        expected = objective.assess(model)
        assert score == expected[0] and torch.equal(per_image, expected[1])
    score, per_image = derived.assess(model)
    assert score == fresh.evaluate(model) and torch.equal(per_image, fresh.assess(model)[1])
    with pytest.raises(ValueError, match="Unknown depth metric"):
        first.derived(metric="rmse")


@pytest.mark.parametrize("name", ["feature", "ordinal", "segmentation"])
def test_predict_then_assess_outputs_is_assess_and_the_teacher_is_scored_once(split, name, monkeypatch):
    _, _, _, models, test_set = split
    # a perturbed model as the teacher: the random teacher's flat disparity has no ordinal pair
    teacher, model = load_jetvit(models["all_linear"]), load_jetvit(models["searched"])
    objective = make_objective(name, teacher, test_set, image_size=56, device="cpu", probe_steps=10, progress=False)
    model.train()
    score, per_image = objective.assess_outputs(objective.predict(model))
    assert model.training  # predict restores the training flag, as assess does
    expected = objective.assess(model)
    assert score == expected[0] and torch.equal(per_image, expected[1]) and per_image.dtype == torch.float64
    assert not objective.shares_outputs(make_objective(name, teacher, test_set, image_size=56, device="cpu",
                                                       probe_steps=10, progress=False))
    calls = []
    original = type(objective).score_outputs
    monkeypatch.setattr(type(objective), "score_outputs", lambda self, outputs: calls.append(1) or original(self,
                                                                                                           outputs))
    own = objective.teacher_score(), objective.teacher_image_scores(), objective.teacher_image_scores()
    assert len(calls) == 1 and torch.equal(own[1], own[2]) and own[1] is not own[2]
    assert own[0] == objective.assess(teacher)[0] and torch.equal(own[1], objective.assess(teacher)[1])
