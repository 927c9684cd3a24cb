"""The main job end to end on tiny teachers: convert -> distill -> search -> distill -> search -> extract -> fine-tune
-> the same-budget baselines -> the test split -> eval -> bench -> model card, on the CPU; its settings (presets by
device, explicit values winning), its splits and report, the segmentation-teacher path; and what a user meets around
it: settings checked before any work, a rerun that skips finished stages and says so, a refused rerun with other
settings, `--overwrite`, and Ctrl-C in a training stage, after which the same command continues to the same result."""

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from jetvit_hf import JetViTForDepthEstimation
from jetvit_hf.cli import main
from jetvit_hf.convert import load_jetvit
from jetvit_hf.data.render_stream import SPLITS, render_dataset
from jetvit_hf.errors import JetViTUserError
from jetvit_hf.evaluation.images import load_eval_images
from jetvit_hf.evaluation.probe import (load_linear_probe, make_linear_probe, probe_segmentation_metrics,
                                        save_linear_probe, train_linear_probe)
from jetvit_hf.search.post_training import PipelineConfig, check_output, run_pipeline, start_output, validate_config
from jetvit_hf.search.findings import RANDOM_LAYOUTS, findings_rows
from jetvit_hf.train import TrainConfig, reset_accelerate_state, train
from jetvit_hf.train.checkpoints import StopRequest, TrainingInterrupted, list_checkpoints, stop_on_signals
from jetvit_hf.train.supernet import JetViTSupernet
from helpers import read_train_log

# a hand-written per-layer latency table (full 3, window 2, linear 1 ms, remainder 0.5 ms): every estimate is a
# known sum
LATENCY_TABLE = Path(__file__).parent / "latency_table_6_layers.json"
LAYER_MS = {"full": 3.0, "window": 2.0, "linear": 1.0}
SETTINGS = dict(eval_scenes=4, image_size=56, window_size=2, distill_steps=10, finetune_steps=2, batch_size=2,
                beam_width=2, max_full=1, latency_table=str(LATENCY_TABLE))
INTERRUPTED = "jetvit pipeline: interrupted; rerun the same command to continue"
MODELS = ("searched", "all_linear", "all_window", "all_linear_untrained", "all_window_untrained")
DEPTH_MEASURES = ("abs_rel_vs_teacher", "abs_rel_vs_ground_truth", "delta1_vs_ground_truth")


def pipeline_argv(teacher, output, **overrides) -> list[str]:
    settings = SETTINGS | overrides
    return ["pipeline", "--teacher", str(teacher), "--output", str(output)] + [
        f"--{name.replace('_', '-')}={value}" for name, value in settings.items() if value is not None]


def offline_env(cache: Path) -> dict:
    """No Hub, `datasets` caches under `cache`, and one thread (as the tests run in-process)."""
    return {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(cache),
            "HF_DATASETS_CACHE": str(cache / "datasets"), "OMP_NUM_THREADS": "1"}


@contextlib.contextmanager
def offline(cache: Path):
    """What conftest's `_offline` does for one test, for a module-scoped fixture."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in offline_env(cache).items():
            patch.setenv(name, value)
        patch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", cache / "datasets")
        yield


def run_main(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def trainer_state(stage: Path) -> dict:
    """The trainer state a finished training stage keeps of its last checkpoint: its step and its training config."""
    return json.loads((stage / "trainer_state.json").read_text())


@pytest.fixture(scope="module")
def reference(source_checkpoint, tmp_path_factory):
    """One uninterrupted `jetvit pipeline --overwrite` into a directory holding an earlier run with other settings:
    (teacher, output directory, stdout)."""
    teacher, _ = source_checkpoint("depth_anything_v2")
    base = tmp_path_factory.mktemp("pipeline")
    output = base / "run"
    (output / "stage1" / "supernet").mkdir(parents=True)
    (output / "stage1" / "supernet" / "stale.txt").write_text("from the earlier run")
    earlier = asdict(PipelineConfig(teacher=str(teacher), output_dir=str(output), **(SETTINGS | {"distill_steps": 7})))
    (output / "pipeline_config.json").write_text(json.dumps(earlier))
    with offline(base / "hf"):
        status, out, err = run_main(pipeline_argv(teacher, output) + ["--overwrite"])
    assert status == 0, err[-3000:]
    return teacher, output, out


def test_pipeline_end_to_end(reference):
    _, run, out = reference
    for path in ("stage1/supernet", "search1/search_log.json", "search1/model", "stage2/supernet",
                 "search2/search_log.json", "search2/pareto.png", "finetune/model/README.md", "eval.json",
                 "bench.json", "report.json", "baselines/linear/converted", "baselines/linear/distill/supernet",
                 "baselines/linear/distill/model", "baselines/linear/finetune/model", "baselines/window/converted",
                 "baselines/window/finetune/model"):
        assert (run / path).exists(), path
    assert not (run / "stage1" / "supernet" / "stale.txt").exists()  # --overwrite cleared the earlier run
    assert json.loads((run / "pipeline_config.json").read_text())["distill_steps"] == 10
    summary = json.loads((run / "report.json").read_text())
    final = JetViTForDepthEstimation.from_pretrained(run / "finetune" / "model")
    assert final.config.attention_types == summary["attention_types"]
    stage1_choice = json.loads((run / "search1" / "attention_types.json").read_text())["attention_types"]
    # stage 2 may only have turned stage-1 layers into full attention, and at most max_full of them
    assert all(t in (s, "full") for t, s in zip(summary["attention_types"], stage1_choice))
    assert summary["attention_types"].count("full") <= 1
    truth = summary["depth_vs_ground_truth"]
    assert 0 < truth["teacher"]["delta1"] <= 1 and truth["delta1_retention"] == pytest.approx(
        truth["student"]["delta1"] / truth["teacher"]["delta1"])
    with torch.no_grad():
        depth = final(torch.randn(1, 3, 56, 56)).predicted_depth
    assert depth.shape == (1, 56, 56) and torch.isfinite(depth).all()
    # --latency-table: both searches price every layout they evaluate from the table, a known sum per layout
    for name in ("search1", "search2"):
        log = json.loads((run / name / "search_log.json").read_text())
        assert log["pareto_cost"] == "estimated_latency_ms"
        for record in log["evaluations"]:
            expected = 0.5 + sum(LAYER_MS[kind] for kind in record["assignment"])
            assert record["estimated_latency_ms"] == pytest.approx(expected), record["assignment"]
    # a finished stage keeps its model and its last trainer state, not its checkpoints (4 GB each for a ViT-L)
    for stage in ("stage1", "stage2", "finetune", "baselines/linear/distill", "baselines/window/finetune"):
        assert not (run / stage / "checkpoints").exists() and trainer_state(run / stage)["step"] > 0, stage


def test_summary_says_where_everything_is_and_labels_cpu_timings(reference):
    _, run, out = reference
    summary = json.loads((run / "report.json").read_text())
    assert "[12/12] benchmarking hf, jetvit-full and jetvit on the CPU at 56x56" in out
    assert "CPU smoke test" in summary["speed"]["note"]
    assert summary["speed"]["timing"] == {"statistic": "median", "warmup": 10, "iters": 50, "threads": 1}
    speed_line = next(line for line in out.splitlines() if line.startswith("  speed"))
    assert speed_line.startswith("  speed: CPU smoke test, not a performance number (56x56, batch 1, median of 50")
    for name in ("report", "eval", "bench", "model_card", "settings"):
        assert summary["files"][name] in out and Path(summary["files"][name]).is_file(), name
    assert summary["files"]["baselines"] == {
        "all_linear": str(run / "baselines" / "linear" / "finetune" / "model"),
        "all_window": str(run / "baselines" / "window" / "finetune" / "model"),
        "all_linear_untrained": str(run / "baselines" / "linear" / "converted"),
        "all_window_untrained": str(run / "baselines" / "window" / "converted")}
    assert summary["files"]["plots"] and all(path in out for path in summary["files"]["plots"])
    assert str(run / "search2" / "full_attention_gain.png") in summary["files"]["plots"]


def test_splits_are_the_renderers_disjoint_seed_ranges(reference):
    _, run, out = reference
    summary = json.loads((run / "report.json").read_text())
    splits = summary["splits"]
    assert splits["train"] == {"data": "render:train", "seed_range": [0, 10**9], "scenes_per_epoch": 10000}
    for name in ("search", "test"):
        assert splits[name] == {"seed_range": [SPLITS[name].start, SPLITS[name].stop], "num_scenes": 4}
    assert "by construction" in splits["disjoint"]
    ranges = sorted(tuple(splits[name]["seed_range"]) for name in ("train", "search", "test"))
    assert all(stop <= start for (_, stop), (start, _) in zip(ranges, ranges[1:]))
    for name in ("search1", "search2"):
        log = json.loads((run / name / "search_log.json").read_text())
        assert log["metadata"]["split"] == "search" and log["objective"]["name"] == "depth_abs_rel"
        assert log["objective"]["reference"] == "teacher" and log["objective"]["num_images"] == 4
        assert all(len(record["ci95"]) == 2 for record in log["evaluations"])
        assert all({"se", "threshold"} <= set(r["decision"]) for r in log["rounds"] if "decision" in r)
    assert log["teacher_score"] == 0.0  # stage 2's target: the teacher's own AbsRel against itself
    assert all(r["role"] != "teacher" for r in log["evaluations"])  # not the supernet's all-full subnet
    assert summary["preset"] == "cpu"
    assert f"  test split (scene seeds {2 * 10**9}..{2 * 10**9 + 3}, 4 scenes the search never saw" in out


def test_baselines_get_the_searched_lineages_training(reference):
    _, run, _ = reference
    stage1, stage2, finetune = (trainer_state(run / name) for name in ("stage1", "stage2", "finetune"))
    assert (stage1["step"], stage2["step"], finetune["step"]) == (10, 10, 2)
    for kind in ("linear", "window"):
        converted = load_jetvit(run / "baselines" / kind / "converted")
        assert converted.config.attention_types == [kind] * 6 and converted.config.window_size == 2
        distill = trainer_state(run / "baselines" / kind / "distill")
        assert distill["step"] == distill["config"]["max_steps"] == stage1["step"] + stage2["step"]
        assert distill["config"]["mode"] == "distill" and distill["config"]["candidates"] == [kind]
        assert distill["config"]["student"] == str(run / "baselines" / kind / "converted")
        subnets = [code for entry in json.loads((run / "baselines" / kind / "distill" / "train_log.json").read_text())
                   for code in entry["subnets"]]
        assert len(subnets) == 20 and set(subnets) == {kind[0].upper() * 6}  # one subnet per step: the layout
        tuned = trainer_state(run / "baselines" / kind / "finetune")
        assert tuned["step"] == finetune["step"] and tuned["config"]["mode"] == "finetune"
        assert tuned["config"]["depth_loss_weight"] == finetune["config"]["depth_loss_weight"] == 1.0
        assert tuned["config"]["student"] == str(run / "baselines" / kind / "distill" / "model")
        for name in ("data", "image_size", "batch_size", "learning_rate", "seed"):
            assert tuned["config"][name] == distill["config"][name] == finetune["config"][name], name
        model = load_jetvit(run / "baselines" / kind / "finetune" / "model")
        assert model.config.attention_types == [kind] * 6


def test_report_holds_every_model_with_intervals_and_paired_differences(reference):
    _, run, out = reference
    test = json.loads((run / "report.json").read_text())["test_split"]
    assert test["seed_range"] == [SPLITS["test"].start, SPLITS["test"].stop] and test["num_scenes"] == 4
    assert list(test["measures"]) == list(DEPTH_MEASURES) and list(test["models"]) == list(MODELS)
    assert [test["measures"][name]["higher_is_better"] for name in DEPTH_MEASURES] == [False, False, True]
    assert set(test["teacher"]) == {"abs_rel_vs_ground_truth", "delta1_vs_ground_truth"}
    for name, entry in test["models"].items():
        assert entry["training"] == ({"distill_steps": 0, "finetune_steps": 0} if name.endswith("_untrained")
                                     else {"distill_steps": 20, "finetune_steps": 2}), name
        for measure in DEPTH_MEASURES:
            score = entry["scores"][measure]
            assert score["ci95"][0] <= score["score"] <= score["ci95"][1] and score["se"] >= 0, (name, measure)
        # the paired bootstrap's mean of per-image differences is the difference of the two models' means
        for measure, teacher in test["teacher"].items():
            difference = entry["minus_teacher"][measure]
            assert difference["mean"] == pytest.approx(entry["scores"][measure]["score"] - teacher["score"])
            assert difference["ci95"][0] <= difference["mean"] <= difference["ci95"][1]
        assert set(entry["minus_teacher"]) == set(test["teacher"])
        assert ("searched_minus_this" in entry) == (name != "searched")
        for measure, difference in entry.get("searched_minus_this", {}).items():
            searched = test["models"]["searched"]["scores"][measure]["score"]
            assert difference["mean"] == pytest.approx(searched - entry["scores"][measure]["score"]), (name, measure)
            assert difference["ci95"][0] <= difference["mean"] <= difference["ci95"][1]
    summary = json.loads((run / "report.json").read_text())
    photos = summary["real_photos"]  # the sanity check off the renderer, for a depth teacher
    assert photos["photos"]["student_vs_teacher"]["abs_rel"]["n"] == 4 and "Middlebury motorcycle" in out
    assert test["models"]["searched"]["scores"]["delta1_vs_ground_truth"]["score"] == pytest.approx(
        summary["depth_vs_ground_truth"]["student"]["delta1"])  # eval.json's number, computed apart
    table = [re.split(r"\s{2,}", line.strip())
             for line in out[out.index("  test split"):out.index("  speed")].splitlines()[1:]]
    assert table[0] == ["model", "abs_rel_vs_teacher (lower is better)", "abs_rel_vs_ground_truth (lower is better)",
                        "delta1_vs_ground_truth (higher is better)"]
    rows = {row[0]: row[1:] for row in table[1:]}
    assert list(rows) == ["teacher", *MODELS, "searched - teacher", *(f"searched - {name}" for name in MODELS[1:])]
    assert rows["teacher"][0] == rows["searched - teacher"][0] == "-"  # AbsRel against the teacher: none of its own
    delta1 = test["models"]["all_window"]["searched_minus_this"]["delta1_vs_ground_truth"]
    low, high = delta1["ci95"]
    assert rows["searched - all_window"][2] == f"{delta1['mean']:.4f} [{low:.4f}, {high:.4f}]"
    assert all(cell.count("[") == 1 for name, cells in rows.items() for cell in cells if cell != "-")


def test_rerun_skips_finished_stages_and_says_so(reference, tmp_path):
    teacher, run, _ = reference
    before = (run / "finetune" / "model" / "model.safetensors").stat().st_mtime_ns
    status, out, err = run_main(pipeline_argv(teacher, run))
    assert status == 0, err[-3000:]
    assert (run / "finetune" / "model" / "model.safetensors").stat().st_mtime_ns == before
    stages = ("stage1", "search1", "stage2", "search2", "finetune", "baselines", "baselines/linear/distill",
              "baselines/linear/finetune", "baselines/window/distill", "baselines/window/finetune")
    for step, stage in enumerate(stages, start=1):
        assert f": already done in {run / stage}, skipped" in next(
            line for line in out.splitlines() if line.startswith(f"[{step}/12]")), step


def test_rerun_with_other_settings_is_refused(reference):
    teacher, run, _ = reference
    recorded = (run / "pipeline_config.json").read_text()
    status, out, err = run_main(pipeline_argv(teacher, run, distill_steps=3, objective="feature"))
    assert status == 2 and not out
    assert len(err.strip().splitlines()) == 1
    assert "--distill-steps 10 there, 3 now" in err and "--objective 'auto' there, 'feature' now" in err
    assert "--overwrite" in err and "new --output" in err
    assert (run / "pipeline_config.json").read_text() == recorded


@pytest.mark.parametrize("flag, value, message", [
    ("--objective", "dpeth", "choose one of auto, feature, depth"),
    ("--objective", "segmentation", "needs a linear probe in the teacher directory"),
    ("--bench-resolution", "56y56", "HEIGHTxWIDTH"),
    ("--bench-resolution", "8x8", "smaller than one 14-pixel patch"),
    ("--eval-scenes", "0", "at least 1"),
    ("--image-size", "50", "multiple of the teacher's patch size 14"),
    ("--learning-rate", "-1", "positive"),
    ("--train-data", "scenes:8", "use render:train"),
    ("--train-data", "render:test", "the search and test splits never train"),
    ("--train-data", "render:train:1", "at least --batch-size (2)"),
    ("--train-data", "missing-folder", "no such directory"),
    ("--teacher", "missing-teacher", "not a loadable teacher"),
    ("--device", "tpu", "unknown device 'tpu'"),
    ("--dtype", "float8", "unknown dtype 'float8'"),
    ("--noise-factor", "-1", "at least 0"),
    ("--latency-table", "missing.json", "no such file; write one with `jetvit bench"),
    ("--latency-budget-ms", "5", "below all-linear's estimated 6.500 ms, where the searches start"),
    ("--latency-budget-ms", "-1", "must be a positive number of milliseconds"),
])
def test_bad_settings_fail_before_any_work(source_checkpoint, tmp_path, monkeypatch, flag, value, message):
    teacher, _ = source_checkpoint("depth_anything_v2")
    monkeypatch.chdir(tmp_path)
    status, out, err = run_main(pipeline_argv(teacher, tmp_path / "run") + [f"{flag}={value}"])
    assert status == 2 and not out
    assert err.startswith(f"jetvit pipeline: error: {flag} '{value}'") or err.startswith(
        f"jetvit pipeline: error: {flag} {value}")
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # nothing written, no stage started


def test_a_latency_table_must_fit_the_teacher_and_a_budget_needs_one(source_checkpoint, tmp_path):
    teacher, _ = source_checkpoint("depth_anything_v2")
    twelve = tmp_path / "layers_12.json"
    twelve.write_text(json.dumps({**json.loads(LATENCY_TABLE.read_text()), "num_layers": 12}))
    status, _, err = run_main(pipeline_argv(teacher, tmp_path / "run", latency_table=twelve))
    assert status == 2 and f"--latency-table '{twelve}': not a layer table of a 6-layer model" in err
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    status, _, err = run_main(pipeline_argv(teacher, tmp_path / "run", latency_table=listed))
    assert status == 2 and f"--latency-table '{listed}': not a layer table of a 6-layer model" in err
    argv = [arg for arg in pipeline_argv(teacher, tmp_path / "run") if not arg.startswith("--latency-table")]
    status, _, err = run_main(argv + ["--latency-budget-ms=9"])
    assert status == 2 and "--latency-budget-ms 9.0: needs --latency-table" in err
    assert not (tmp_path / "run").exists()


def test_pipeline_needs_its_teacher(tmp_path):
    with pytest.raises(ValueError, match="--teacher"):
        run_pipeline(PipelineConfig(teacher=str(tmp_path / "missing"), output_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


def test_a_second_run_on_one_output_is_refused_while_the_first_works(source_checkpoint, tmp_path):
    """Two runs on one --output would delete each other's temporary checkpoints: while one holds the directory (here
    a process that took the lock and sleeps) the other stops at once, before any work, naming the holder. A holder
    that dies, even by SIGKILL, leaves the directory free."""
    from jetvit_hf.io import exclusive_use

    teacher, _ = source_checkpoint("depth_anything_v2")
    output = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from jetvit_hf.io import exclusive_use\n"
         f"with exclusive_use({str(output)!r}, 'jetvit pipeline run'):\n print('locked', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        assert holder.stdout.readline().strip() == "locked"
        status, out, err = run_main(pipeline_argv(teacher, output))
        assert status == 2 and not out
        assert f"{output} is in use by another jetvit pipeline run (process {holder.pid})" in err
        assert not output.exists()
    finally:
        holder.kill()
        holder.wait()
    with exclusive_use(output, "jetvit pipeline run"):  # released by the holder's death
        with pytest.raises(JetViTUserError, match=f"process {os.getpid()}"):  # and held again, now by this process
            with exclusive_use(output, "jetvit pipeline run"):
                pass


# ----------------------------------------------------------------------------------------------------------------------
# Presets by device


def fake_cuda(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_presets_follow_the_device_and_explicit_values_win(source_checkpoint, tmp_path, monkeypatch):
    """The tiny Depth Anything teacher's native resolution is 56 px with 14 px patches: 28 px (half, in whole
    patches) on the CPU, 56 on a GPU."""
    teacher, _ = source_checkpoint("depth_anything_v2")
    given = dict(teacher=str(teacher), output_dir=str(tmp_path / "run"))

    def resolved(config):
        return config.image_size, config.eval_scenes, config.distill_steps, config.finetune_steps, config.batch_size

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    on_cpu, _ = validate_config(PipelineConfig(**given))
    assert resolved(on_cpu) == (28, 48, 32, 24, 8)
    explicit, _ = validate_config(PipelineConfig(**given, image_size=42, eval_scenes=5, distill_steps=3))
    assert resolved(explicit) == (42, 5, 3, 24, 8)
    # the recorded settings are the resolved ones: the same values given explicitly are the same run
    start_output(on_cpu)
    assert json.loads((tmp_path / "run" / "pipeline_config.json").read_text())["image_size"] == 28
    check_output(validate_config(PipelineConfig(**given, image_size=28, eval_scenes=48, distill_steps=32,
                                                finetune_steps=24, batch_size=8))[0])
    with pytest.raises(ValueError, match="--eval-scenes 48 there, 5 now"):
        check_output(explicit)

    fake_cuda(monkeypatch)
    on_gpu, _ = validate_config(PipelineConfig(**given))
    assert resolved(on_gpu) == (56, 256, 200, 150, 32)
    explicit, _ = validate_config(PipelineConfig(**given, image_size=28, batch_size=4, finetune_steps=7))
    assert resolved(explicit) == (28, 256, 200, 7, 4)
    with pytest.raises(ValueError, match="--image-size 28 there, 56 now.*--batch-size 8 there, 32 now"):
        check_output(on_gpu)  # the CPU run's output: other resolved settings
    on_cpu_anyway, _ = validate_config(PipelineConfig(**given, device="cpu"))  # --device cpu on a GPU machine
    assert replace(on_cpu_anyway, device="auto") == on_cpu


# ----------------------------------------------------------------------------------------------------------------------
# Segmentation teachers


def add_probe(teacher: Path, probe) -> None:
    """`probe.json` and `probe.safetensors` beside the teacher's weights, as training/train_teacher.py exports a
    segmentation teacher."""
    save_linear_probe(probe, teacher.parent / "probe")
    for path in (teacher.parent / "probe").iterdir():
        shutil.copy(path, teacher / path.name)


@pytest.fixture
def segmentation_teacher(source_checkpoint, tmp_path):
    """The tiny DINOv2 source with a linear probe over the renderer's 10 classes, fitted to its features of 8
    rendered train scenes."""
    source, _ = source_checkpoint("dinov2")
    teacher = tmp_path / "teacher" / "model"
    shutil.copytree(source, teacher)
    add_probe(teacher, train_linear_probe(load_jetvit(source), render_dataset("train", 8, 56, 56), num_labels=10,
                                          steps=30, batch_size=8, progress=False))
    return teacher


def test_a_segmentation_teacher_is_searched_and_reported_on_its_probes_miou(segmentation_teacher, tmp_path):
    run = tmp_path / "run"
    status, out, err = run_main(pipeline_argv(segmentation_teacher, run, distill_steps=2, finetune_steps=1,
                                              latency_table=None))  # the table is for 6 layers, this teacher has 4
    assert status == 0, err[-3000:]
    for name in ("search1", "search2"):
        objective = json.loads((run / name / "search_log.json").read_text())["objective"]
        assert objective["name"] == "segmentation_miou" and objective["probe"] == "given"
    for stage in ("finetune", "baselines/linear/finetune", "baselines/window/finetune"):
        assert trainer_state(run / stage)["config"]["depth_loss_weight"] == 0.0, stage
    test = json.loads((run / "report.json").read_text())["test_split"]
    assert test["measures"] == {"miou_vs_ground_truth": {"higher_is_better": True, "reference": "ground_truth"}}
    assert list(test["models"]) == list(MODELS)
    # every score is the probe's mIoU against the rendered labels of the test scenes, computed apart
    probe = load_linear_probe(segmentation_teacher)
    images = load_eval_images(render_dataset("test", 4, 56, 56), 14, 56)
    directories = {"teacher": segmentation_teacher, **{name: entry["model"] for name, entry in test["models"].items()}}
    expected = {name: probe_segmentation_metrics(load_jetvit(directory), probe, images)["mean_iou"]
                for name, directory in directories.items()}
    assert len(set(expected.values())) > 1  # the models differ, so the checks below can tell them apart
    teacher = test["teacher"]["miou_vs_ground_truth"]
    assert teacher["score"] == pytest.approx(expected["teacher"], abs=1e-6)
    assert teacher["ci95"][0] <= teacher["score"] <= teacher["ci95"][1]
    for name, entry in test["models"].items():
        score = entry["scores"]["miou_vs_ground_truth"]
        assert score["score"] == pytest.approx(expected[name], abs=1e-6)
        assert score["ci95"][0] <= score["score"] <= score["ci95"][1]
        difference = entry["minus_teacher"]["miou_vs_ground_truth"]
        assert difference["mean"] == pytest.approx(expected[name] - expected["teacher"], abs=1e-6)
        assert difference["ci95"][0] <= difference["mean"] <= difference["ci95"][1]
        if name != "searched":
            difference = entry["searched_minus_this"]["miou_vs_ground_truth"]
            assert difference["mean"] == pytest.approx(expected["searched"] - expected[name], abs=1e-6)
            assert difference["ci95"][0] <= difference["mean"] <= difference["ci95"][1]
    assert "    model                            miou_vs_ground_truth (higher is better)" in out


def test_teachers_the_pipeline_cannot_use_fail_before_any_work(source_checkpoint, tmp_path):
    source, _ = source_checkpoint("dinov2")
    other_classes = tmp_path / "other_classes" / "model"
    shutil.copytree(source, other_classes)
    add_probe(other_classes, make_linear_probe(load_jetvit(source).config.hidden_size, 5))
    converted = tmp_path / "converted"
    load_jetvit(source).save_pretrained(converted)
    for teacher, message in ((other_classes, "its linear probe predicts 5 classes, but the rendered scenes have 10"),
                             (converted, "a converted JetViT; pass the source checkpoint it was converted from")):
        status, out, err = run_main(pipeline_argv(teacher, tmp_path / "run"))
        assert status == 2 and not out and len(err.strip().splitlines()) == 1
        assert err.startswith(f"jetvit pipeline: error: --teacher '{teacher}': {message}"), err
        assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------------------------------
# Interruptions


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the pipeline ended (status {process.returncode}) before {path} appeared"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_ctrl_c_in_stage_2_then_the_same_command_continues_to_the_same_result(reference, tmp_path):
    teacher, expected, _ = reference
    run = tmp_path / "run"
    command = [sys.executable, "-m", "jetvit_hf.cli", *pipeline_argv(teacher, run)]
    with open(tmp_path / "stderr", "w") as stderr:  # a file, not a pipe nobody reads while the pipeline runs
        process = subprocess.Popen(command, env=os.environ | offline_env(tmp_path / "hf"), stdout=subprocess.DEVNULL,
                                   stderr=stderr)
        wait_for(run / "stage2" / "train_log.json", process)  # the first checkpoint of stage 2
        process.send_signal(signal.SIGINT)
        process.wait(timeout=300)
    err = (tmp_path / "stderr").read_text()
    assert process.returncode == 130, err[-3000:]
    assert err.strip().splitlines()[-1] == INTERRUPTED and "Traceback" not in err
    stopped = list_checkpoints(run / "stage2" / "checkpoints")[-1]
    step = json.loads((stopped / "trainer_state.json").read_text())["step"]
    assert 0 < step < 10 and not (run / "stage2" / "supernet").exists()

    status, out, err = run_main(pipeline_argv(teacher, run))  # the same command, rerun
    assert status == 0, err[-3000:]
    assert f"[1/12] distilling the stage-1 supernet ({{linear, window}} per layer): already done in " \
           f"{run / 'stage1'}, skipped" in out
    assert f"[3/12] distilling the stage-2 supernet ({{stage-1 choice, full}} per layer): resuming at step {step} " \
           "of 10" in out
    resumed_log, expected_log = read_train_log(run / "stage2"), read_train_log(expected / "stage2")
    assert [entry["subnets"] for entry in resumed_log] == [entry["subnets"] for entry in expected_log]
    assert [entry["loss"] for entry in resumed_log] == pytest.approx([entry["loss"] for entry in expected_log],
                                                                      rel=1e-5)
    for name in ("search1", "search2"):
        assert (json.loads((run / name / "attention_types.json").read_text())["attention_types"]
                == json.loads((expected / name / "attention_types.json").read_text())["attention_types"])
    for weights in ("stage2/supernet/supernet.safetensors", "finetune/model/model.safetensors",
                    "baselines/linear/finetune/model/model.safetensors"):
        actual, wanted = load_file(run / weights), load_file(expected / weights)
        assert actual.keys() == wanted.keys()
        for key in wanted:
            torch.testing.assert_close(actual[key], wanted[key], msg=f"{weights}: {key}")


@pytest.fixture
def images_dir(tmp_path):
    """8 random 28 x 28 images, saved with `save_to_disk`."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)) for _ in range(8)]
    dataset = datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()}))
    dataset.save_to_disk(tmp_path / "images")
    return tmp_path / "images"


class Killed(Exception):
    """What SIGTERM does to a process that does not handle it."""


def test_sigterm_ends_the_step_writes_a_checkpoint_and_resuming_matches(source_checkpoint, images_dir, tmp_path,
                                                                       monkeypatch):
    source, _ = source_checkpoint("dinov2")

    def config(name, **overrides):
        return TrainConfig(teacher=str(source), output_dir=str(tmp_path / name), data=str(images_dir), image_size=28,
                           batch_size=2, max_steps=5, checkpoint_every=100, log_every=4, warmup_steps=1,
                           learning_rate=1e-3, num_workers=0, report_to="none", gradient_accumulation_steps=2,
                           subnets_per_step=2, **overrides)

    uninterrupted = train(config("uninterrupted"))
    reset_accelerate_state()
    sample = JetViTSupernet.sample

    def signalled_in_step_2(self, step, seed=0):
        if step == 5:  # micro-steps 4..7 are step 2's: the signal comes after its first backward
            os.kill(os.getpid(), signal.SIGTERM)
        return sample(self, step, seed)

    def killed(signum, frame):
        raise Killed

    monkeypatch.setattr(JetViTSupernet, "sample", signalled_in_step_2)
    previous = signal.signal(signal.SIGTERM, killed)
    try:
        with pytest.raises(TrainingInterrupted, match="after step 2 of 5") as stopped:
            train(config("interrupted"))
        assert signal.getsignal(signal.SIGTERM) is killed  # the trainer's handler is gone again
    finally:
        signal.signal(signal.SIGTERM, previous)
    monkeypatch.setattr(JetViTSupernet, "sample", sample)
    assert stopped.value.checkpoint == tmp_path / "interrupted" / "checkpoints" / "step-0000002"
    assert [path.name for path in list_checkpoints(tmp_path / "interrupted" / "checkpoints")] == ["step-0000002"]

    reset_accelerate_state()
    resumed = train(config("interrupted", resume=True))
    # the checkpoint cut the log interval of steps 1-4: the resumed log still matches, entry by entry
    assert read_train_log(resumed) == read_train_log(uninterrupted)
    assert [entry["step"] for entry in read_train_log(resumed)] == [4, 5]
    expected = load_file(uninterrupted / "supernet" / "supernet.safetensors")
    actual = load_file(resumed / "supernet" / "supernet.safetensors")
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)


def test_a_forwarded_signal_is_the_same_request_and_a_later_one_stops_at_once():
    request = StopRequest()
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a job started in the background
    with stop_on_signals(request):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: the terminal's copy ...
        os.kill(os.getpid(), signal.SIGINT)  # ... and the one `accelerate launch` forwards: still one request
        assert request.signal == signal.SIGINT
        request.at -= 2  # seconds later: the user means it
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGINT) is before


def test_a_run_recorded_before_a_setting_existed_is_still_the_same_run(reference, tmp_path):
    """Settings added later (here --device and --dtype) count as their defaults in an older pipeline_config.json."""
    teacher, run, _ = reference
    old = json.loads((run / "pipeline_config.json").read_text())
    for name in ("device", "dtype"):
        del old[name]
    older = tmp_path / "older"
    older.mkdir()
    (older / "pipeline_config.json").write_text(json.dumps({**old, "output_dir": str(older)}))
    del old["protocol"]
    check_output(replace(PipelineConfig(**old), output_dir=str(older)))
    with pytest.raises(ValueError, match="--dtype 'auto' there, 'bfloat16' now"):
        check_output(replace(PipelineConfig(**old), output_dir=str(older), dtype="bfloat16"))


@pytest.mark.parametrize("earlier, recorded", [
    ({"eval_seed": 1}, "eval_seed, which no longer exist"),  # the search and the report shared one set of scenes
    ({"protocol": None}, "protocol 1"),  # before the rendered splits and the baselines
])
def test_a_run_of_an_earlier_pipeline_version_is_not_reused(reference, tmp_path, earlier, recorded):
    """An output of another protocol (it records a setting that no longer exists, or no or another protocol) must
    not have its stages reused."""
    teacher, run, _ = reference
    old = json.loads((run / "pipeline_config.json").read_text())
    record = {key: value for key, value in {**old, **earlier}.items() if value is not None}
    older = tmp_path / "older"
    older.mkdir()
    (older / "pipeline_config.json").write_text(json.dumps({**record, "output_dir": str(older)}))
    del old["protocol"]
    with pytest.raises(ValueError, match=f"earlier version of the pipeline .*{recorded}"):
        check_output(replace(PipelineConfig(**old), output_dir=str(older)))


# ----------------------------------------------------------------------------------------------------------------------
# `jetvit findings`: the paper's ablations at a finished run's budget


def test_findings_train_rows_at_the_runs_budget_and_score_them_on_its_test_split(reference, tmp_path):
    _, finished, _ = reference
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    with offline(tmp_path / "hf"):
        status, out, err = run_main(["findings", "--run", str(run), "--tables", "conv,inheritance"])
    assert status == 0, err[-3000:]
    result = json.loads((run / "findings" / "findings.json").read_text())
    rows = ["all_linear_conv_none", "all_linear_conv_static", "searched_inherit_all", "searched_inherit_mlp_only"]
    assert list(result["rows"]) == rows
    searched_layout = json.loads((run / "report.json").read_text())["attention_types"]
    for name in rows:
        model = load_jetvit(run / "findings" / name / "finetune" / "model")
        layout = ["linear"] * 6 if name.startswith("all_linear") else searched_layout
        assert model.config.attention_types == layout, name
        assert trainer_state(run / "findings" / name / "distill")["step"] == 2 * SETTINGS["distill_steps"]
        assert trainer_state(run / "findings" / name / "finetune")["step"] == SETTINGS["finetune_steps"]
    assert load_jetvit(run / "findings" / "all_linear_conv_none" / "converted").config.linear_attention_conv == "none"
    provenance = json.loads((run / "findings" / "searched_inherit_mlp_only" / "converted" /
                             "jetvit_conversion.json").read_text())
    assert provenance["inherit"] == "mlp_only"
    # the run's own models score exactly as in its report: the same test scenes, the same measures
    report = json.loads((run / "report.json").read_text())["test_split"]["models"]
    for name in ("searched", "all_linear", "all_window"):
        assert result["test_split"]["models"][name]["scores"] == report[name]["scores"], name
    models = result["test_split"]["models"]
    for name in rows:
        for score in models[name]["scores"].values():
            assert score["ci95"][0] <= score["score"] <= score["ci95"][1]
    # each row's paired difference to what it is compared with: the mean of per-scene differences = the difference
    for name, other in (("all_linear_conv_none", "all_linear"), ("searched_inherit_mlp_only", "searched_inherit_all")):
        compared = models[name]["minus_compared"]
        assert compared["model"] == other
        for measure, score in models[name]["scores"].items():
            expected = score["score"] - models[other]["scores"][measure]["score"]
            assert compared[measure]["mean"] == pytest.approx(expected, abs=1e-12), (name, measure)
    assert "### conv" in out and "### inheritance" in out and "| all_linear_conv_static | LLLLLL |" in out
    _check_latency_front(result, searched_layout)
    assert (run / "findings" / "pareto.png").stat().st_size > 0 and "### pareto" in out
    # a rerun skips finished rows; stage 2's round-0 layout is the stage-1 layout, trained once and reported twice
    with offline(tmp_path / "hf"):
        status, out, err = run_main(["findings", "--run", str(run), "--tables", "conv,stage1,full_layers"])
    assert status == 0 and "all_linear_conv_none: distilling" in out and "already done" in out, err[-2000:]
    again = json.loads((run / "findings" / "findings.json").read_text())
    stage1 = next(name for name in again["rows"] if name.startswith("stage1_"))
    full0 = next(name for name in again["rows"] if name.startswith("full0_"))
    models = again["test_split"]["models"]
    assert not (run / "findings" / full0).exists()
    assert models[full0]["model"] == models[stage1]["model"] and models[full0]["scores"] == models[stage1]["scores"]
    if again["rows"][stage1]["attention_types"] == ["linear"] * 6:  # then it is the all-linear baseline itself
        assert models[stage1]["model"] == str(run / "baselines" / "linear" / "finetune" / "model")
    # the first call's rows stay, not trained again, with the same scores (the same models on the same scenes)
    assert set(rows) < set(again["rows"]) and "### inheritance" in out
    for name in rows:
        assert models[name]["scores"] == result["test_split"]["models"][name]["scores"], name
    # --tables pareto alone trains and scores nothing: it prices the rows already scored
    before = {path: path.stat().st_mtime_ns for path in (run / "findings").rglob("*.safetensors")}
    with offline(tmp_path / "hf"):
        status, out, err = run_main(["findings", "--run", str(run), "--tables", "pareto"])
    assert status == 0 and "distilling" not in out and "### pareto" in out, err[-2000:]
    priced = json.loads((run / "findings" / "findings.json").read_text())
    assert priced["test_split"] == again["test_split"] and priced["rows"] == again["rows"]
    _check_latency_front(priced, searched_layout)
    assert {path: path.stat().st_mtime_ns for path in (run / "findings").rglob("*.safetensors")} == before


def _check_latency_front(result: dict, searched: list[str]) -> None:
    """Every trained model priced from the run's table (a known sum), scored as in the table of rows, and the front
    checked by its definition: nothing on it is beaten on both by another model, and everything off it is."""
    front = result["latency"]
    assert front["measure"] == "abs_rel_vs_teacher" and front["higher_is_better"] is False
    assert front["teacher"]["estimated_latency_ms"] == pytest.approx(0.5 + 6 * LAYER_MS["full"])
    models = result["test_split"]["models"]
    layouts = {"searched": searched, "all_linear": ["linear"] * 6, "all_window": ["window"] * 6,
               **{name: row["attention_types"] for name, row in result["rows"].items()}}
    points = {point["model"]: point for point in front["points"]}
    listed = [name for point in front["points"] for name in (point["model"], *point["same_model"])]
    assert sorted(listed) == sorted(layouts)  # every trained model once; the untrained conversions are not on it
    directories = [models[name]["model"] for name in points]
    assert len(set(directories)) == len(directories)  # one point per trained model
    for point in front["points"]:
        for name in (point["model"], *point["same_model"]):
            assert models[name]["model"] == models[point["model"]]["model"]
            expected = 0.5 + sum(LAYER_MS[kind] for kind in layouts[name])
            assert point["estimated_latency_ms"] == pytest.approx(expected), name
            assert point["score"] == models[name]["scores"]["abs_rel_vs_teacher"]["score"], name

    def beats(a, b):  # a at most as slow as b and strictly better, or as good and strictly faster
        faster, better = a["estimated_latency_ms"] - b["estimated_latency_ms"], b["score"] - a["score"]
        return faster <= 1e-9 and better >= 0 and (better > 0 or faster < -1e-9)

    for point in points.values():
        beaten = any(beats(other, point) for other in points.values() if other is not point)
        assert point["on_front"] is not beaten, point


def test_findings_rows_skip_stage1_and_random_orders_keep_the_searched_layouts_types(tmp_path):
    searched = ["full", "linear", "window", "linear", "window", "linear"]
    (tmp_path / "finetune" / "model").mkdir(parents=True)
    (tmp_path / "finetune" / "model" / "config.json").write_text(json.dumps({"attention_types": searched}))
    (tmp_path / "pipeline_config.json").write_text(json.dumps({"seed": 0}))
    rows = findings_rows(tmp_path, ["skip_stage1", "random"])
    fixed = "searched_FLWLWL"
    assert rows[fixed] == {"table": "skip_stage1", "attention_types": searched, "convert": {},
                           "compare": "all_linear"}
    assert rows["linear_full_FLLLLL"]["attention_types"] == ["full"] + ["linear"] * 5
    assert rows["window_full_FWWWWW"]["attention_types"] == ["full"] + ["window"] * 5
    orders = [row["attention_types"] for name, row in rows.items() if name.startswith("random_")]
    assert len(orders) == RANDOM_LAYOUTS and len({tuple(order) for order in orders}) == RANDOM_LAYOUTS
    assert all(sorted(order) == sorted(searched) and order != searched for order in orders)
    assert all(rows[name]["compare"] == fixed for name in rows if name.startswith(("random_", "linear_full",
                                                                                   "window_full")))
    assert findings_rows(tmp_path, ["random"]) == {**{fixed: {**rows[fixed], "table": "random"}},
                                                   **{n: r for n, r in rows.items() if n.startswith("random_")}}
    # a layout with a single order has no other
    (tmp_path / "finetune" / "model" / "config.json").write_text(json.dumps({"attention_types": ["linear"] * 6}))
    assert [name for name in findings_rows(tmp_path, ["random"]) if name.startswith("random_")] == []


def test_findings_refuse_an_unfinished_run_and_unknown_tables(reference, tmp_path):
    _, finished, _ = reference
    status, _, err = run_main(["findings", "--run", str(tmp_path)])
    assert status == 2 and f"--run {tmp_path}: not a finished jetvit pipeline run (no report.json)" in err
    status, _, err = run_main(["findings", "--run", str(finished), "--tables", "conv,table9"])
    assert status == 2 and "--tables: unknown table9; choose from conv, stage1, full_layers, inheritance, skip_stage1, random, pareto" in err
    status, _, err = run_main(["findings", "--run", str(finished), "--tables", "pareto"])  # nothing scored yet
    assert status == 2 and "no rows scored yet" in err
    settings = json.loads((finished / "pipeline_config.json").read_text())
    unpriced = tmp_path / "unpriced"
    shutil.copytree(finished, unpriced, ignore=shutil.ignore_patterns("*.safetensors", "checkpoints"))
    (unpriced / "pipeline_config.json").write_text(json.dumps({**settings, "latency_table": None}))
    status, _, err = run_main(["findings", "--run", str(unpriced), "--tables", "pareto"])
    assert status == 2 and "--tables pareto needs --latency-table" in err
