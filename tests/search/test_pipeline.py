"""The main job end to end on a tiny teacher: convert -> distill -> search -> distill -> search -> extract ->
fine-tune -> eval -> bench -> model card, on the CPU; and what a user meets around it: settings checked before any
work, a rerun that skips finished stages and says so, a refused rerun with other settings, `--overwrite`, and Ctrl-C
in a training stage, after which the same command continues to the same result."""

import contextlib
import io
import json
import os
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
from jetvit_hf.search.post_training import PipelineConfig, check_output, run_pipeline
from jetvit_hf.train import TrainConfig, reset_accelerate_state, train
from jetvit_hf.train.checkpoints import StopRequest, TrainingInterrupted, list_checkpoints, stop_on_signals
from jetvit_hf.train.supernet import JetViTSupernet

SETTINGS = dict(train_data="scenes:8", eval_scenes=4, image_size=56, window_size=2, distill_steps=30,
                finetune_steps=2, batch_size=2, beam_width=2, max_full=1)
INTERRUPTED = "jetvit pipeline: interrupted; rerun the same command to continue"


def pipeline_argv(teacher, output, **overrides) -> list[str]:
    settings = SETTINGS | overrides
    return ["pipeline", "--teacher", str(teacher), "--output", str(output)] + [
        f"--{name.replace('_', '-')}={value}" for name, value in settings.items()]


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
                 "bench.json", "report.json"):
        assert (run / path).exists(), path
    assert not (run / "stage1" / "supernet" / "stale.txt").exists()  # --overwrite cleared the earlier run
    assert json.loads((run / "pipeline_config.json").read_text())["distill_steps"] == 30
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
    # 10 checkpoints per stage (the last 2 kept): an interruption loses at most 10% of a stage
    assert [path.name for path in list_checkpoints(run / "stage2" / "checkpoints")] == ["step-0000027",
                                                                                        "step-0000030"]


def test_summary_says_where_everything_is_and_labels_cpu_timings(reference):
    _, run, out = reference
    summary = json.loads((run / "report.json").read_text())
    assert "[7/7] benchmarking hf, jetvit-full and jetvit on the CPU at 56x56" in out
    assert "CPU smoke test" in summary["speed"]["note"]
    assert summary["speed"]["timing"] == {"statistic": "median", "warmup": 10, "iters": 50, "threads": 1}
    speed_line = next(line for line in out.splitlines() if line.startswith("  speed"))
    assert speed_line.startswith("  speed: CPU smoke test, not a performance number (56x56, batch 1, median of 50")
    for name in ("report", "eval", "bench", "model_card", "settings"):
        assert summary["files"][name] in out and Path(summary["files"][name]).is_file(), name
    assert summary["files"]["plots"] and all(path in out for path in summary["files"]["plots"])
    assert str(run / "search2" / "full_attention_gain.png") in summary["files"]["plots"]


def test_search_and_report_use_disjoint_splits_and_report_intervals(reference):
    _, run, out = reference
    summary = json.loads((run / "report.json").read_text())
    splits = summary["splits"]
    assert {name: splits[name]["seed"] for name in ("train", "search", "test")} == {"train": 0, "search": 1, "test": 2}
    assert splits["test"]["num_scenes"] == splits["search"]["num_scenes"] == 4 and "checked" in splits["disjoint"]
    for name in ("search1", "search2"):
        log = json.loads((run / name / "search_log.json").read_text())
        assert log["metadata"]["split"] == "search" and log["objective"]["name"] == "depth_abs_rel"
        assert log["objective"]["reference"] == "teacher" and log["objective"]["num_images"] == 4
        assert all(len(record["ci95"]) == 2 for record in log["evaluations"])
        assert all({"se", "threshold"} <= set(r["decision"]) for r in log["rounds"] if "decision" in r)
    assert log["teacher_score"] == 0.0  # stage 2's target: the teacher's own AbsRel against itself
    assert all(r["role"] != "teacher" for r in log["evaluations"])  # not the supernet's all-full subnet
    test = summary["test_split"]
    assert test["seed"] == 2 and test["num_scenes"] == 4
    for measure in ("abs_rel_vs_teacher", "abs_rel_vs_ground_truth", "delta1_vs_ground_truth"):
        low, high = test[measure]["student"]["ci95"]
        assert low <= test[measure]["student"]["score"] <= high
    truth = test["delta1_vs_ground_truth"]
    difference = truth["student"]["score"] - truth["teacher"]["score"]
    assert truth["student_minus_teacher"]["mean"] == pytest.approx(difference)
    assert truth["student"]["score"] == pytest.approx(summary["depth_vs_ground_truth"]["student"]["delta1"])
    line = next(line for line in out.splitlines() if "delta1_vs_ground_truth" in line)
    assert line.startswith("    delta1_vs_ground_truth (higher is better): student ") and line.count("[") == 3
    assert "  test split (scene seed 2, 4 scenes the search never saw" in out


def test_rerun_skips_finished_stages_and_says_so(reference, tmp_path):
    teacher, run, _ = reference
    before = (run / "finetune" / "model" / "model.safetensors").stat().st_mtime_ns
    status, out, err = run_main(pipeline_argv(teacher, run))
    assert status == 0, err[-3000:]
    assert (run / "finetune" / "model" / "model.safetensors").stat().st_mtime_ns == before
    for step, stage in ((1, "stage1"), (2, "search1"), (3, "stage2"), (4, "search2"), (5, "finetune")):
        assert f": already done in {run / stage}, skipped" in next(
            line for line in out.splitlines() if line.startswith(f"[{step}/7]")), step


def test_rerun_with_other_settings_is_refused(reference):
    teacher, run, _ = reference
    recorded = (run / "pipeline_config.json").read_text()
    status, out, err = run_main(pipeline_argv(teacher, run, distill_steps=3, objective="feature"))
    assert status == 2 and not out
    assert len(err.strip().splitlines()) == 1
    assert "--distill-steps 30 there, 3 now" in err and "--objective 'auto' there, 'feature' now" in err
    assert "--overwrite" in err and "new --output" in err
    assert (run / "pipeline_config.json").read_text() == recorded


@pytest.mark.parametrize("flag, value, message", [
    ("--objective", "dpeth", "choose one of auto, feature, depth"),
    ("--bench-resolution", "56y56", "HEIGHTxWIDTH"),
    ("--bench-resolution", "8x8", "smaller than one 14-pixel patch"),
    ("--eval-scenes", "0", "at least 1"),
    ("--image-size", "50", "multiple of the teacher's patch size 14"),
    ("--learning-rate", "-1", "positive"),
    ("--train-data", "scenes:many", "scenes:<count>"),
    ("--train-data", "missing-folder", "no such directory"),
    ("--teacher", "missing-teacher", "not a loadable teacher"),
    ("--device", "tpu", "unknown device 'tpu'"),
    ("--dtype", "float8", "unknown dtype 'float8'"),
    ("--seed", "2", "the train and test splits share scenes"),
    ("--noise-factor", "-1", "at least 0"),
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


def test_pipeline_needs_its_teacher(tmp_path):
    with pytest.raises(ValueError, match="--teacher"):
        run_pipeline(PipelineConfig(teacher=str(tmp_path / "missing"), output_dir=str(tmp_path / "run")))
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
    assert 0 < step < 30 and not (run / "stage2" / "supernet").exists()

    status, out, err = run_main(pipeline_argv(teacher, run))  # the same command, rerun
    assert status == 0, err[-3000:]
    assert f"[1/7] distilling the stage-1 supernet ({{linear, window}} per layer): already done in {run / 'stage1'}, " \
           "skipped" in out
    assert f"[3/7] distilling the stage-2 supernet ({{stage-1 choice, full}} per layer): resuming at step {step} of " \
           "30" in out
    resumed_log = json.loads((run / "stage2" / "train_log.json").read_text())
    expected_log = json.loads((expected / "stage2" / "train_log.json").read_text())
    assert [entry["subnets"] for entry in resumed_log] == [entry["subnets"] for entry in expected_log]
    assert [entry["loss"] for entry in resumed_log] == pytest.approx([entry["loss"] for entry in expected_log],
                                                                      rel=1e-5)
    for name in ("search1", "search2"):
        assert (json.loads((run / name / "attention_types.json").read_text())["attention_types"]
                == json.loads((expected / name / "attention_types.json").read_text())["attention_types"])
    for weights in ("stage2/supernet/supernet.safetensors", "finetune/model/model.safetensors"):
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
    read = lambda directory: json.loads((directory / "train_log.json").read_text())  # noqa: E731
    # the checkpoint cut the log interval of steps 1-4: the resumed log still matches, entry by entry
    assert read(resumed) == read(uninterrupted) and [entry["step"] for entry in read(resumed)] == [4, 5]
    expected = load_file(uninterrupted / "supernet" / "supernet.safetensors")
    actual = load_file(resumed / "supernet" / "supernet.safetensors")
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)


def test_a_forwarded_signal_is_the_same_request_and_a_later_one_stops_at_once():
    request = StopRequest()
    with stop_on_signals(request):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: the terminal's copy ...
        os.kill(os.getpid(), signal.SIGINT)  # ... and the one `accelerate launch` forwards: still one request
        assert request.signal == signal.SIGINT
        request.at -= 2  # seconds later: the user means it
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_run_recorded_before_a_setting_existed_is_still_the_same_run(reference, tmp_path):
    """Settings added later (here --device and --dtype) count as their defaults in an older pipeline_config.json."""
    teacher, run, _ = reference
    old = json.loads((run / "pipeline_config.json").read_text())
    for name in ("device", "dtype"):
        del old[name]
    older = tmp_path / "older"
    older.mkdir()
    (older / "pipeline_config.json").write_text(json.dumps({**old, "output_dir": str(older)}))
    check_output(replace(PipelineConfig(**old), output_dir=str(older)))
    with pytest.raises(ValueError, match="--dtype 'auto' there, 'bfloat16' now"):
        check_output(replace(PipelineConfig(**old), output_dir=str(older), dtype="bfloat16"))


def test_a_run_of_an_earlier_pipeline_version_is_not_reused(reference, tmp_path):
    """An output recording a setting that no longer exists (eval_seed: the search and the report shared one set of
    scenes) comes from another protocol: its stages must not be reused."""
    teacher, run, _ = reference
    old = json.loads((run / "pipeline_config.json").read_text())
    older = tmp_path / "older"
    older.mkdir()
    (older / "pipeline_config.json").write_text(json.dumps({**old, "output_dir": str(older), "eval_seed": 1}))
    with pytest.raises(ValueError, match="earlier version of the pipeline .*eval_seed"):
        check_output(replace(PipelineConfig(**old), output_dir=str(older)))
