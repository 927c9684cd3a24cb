"""The search and the evaluation on a device: `--device` / `--dtype` resolution and its errors, bfloat16 autocast (the
same choice as float32 where the margins are large, and numbers that differ from float32's, so autocast ran), one
pass of the teacher per image set, timings and the device in the search log and the eval report, the search
benchmark's smoke run, and (with a GPU) everything on CUDA."""

import json
import sys

import pytest
import torch

from jetvit_hf.cli import main as cli_main
from jetvit_hf.convert import convert_to_jetvit, load_jetvit, save_converted
from jetvit_hf.device import DeviceUnavailableError, resolve_placement
from jetvit_hf.evaluation.evaluator import run_evaluation
from jetvit_hf.evaluation.images import EvalImages
from jetvit_hf.search.beam import beam_search
from jetvit_hf.search.objectives import make_objective
from jetvit_hf.search.stage import run_search
from jetvit_hf.train.supernet import JetViTSupernet
from helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import bench_search  # noqa: E402

LAYERS = 6  # the tiny Depth Anything source's


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def scene_data(request):
    """The six procedural scenes of `conftest.scenes`; skipped where `datasets` is missing (e.g. a GPU machine)."""
    pytest.importorskip("datasets")
    return request.getfixturevalue("scenes")


@pytest.fixture(scope="module")
def teacher(depth_source):
    return load_jetvit(depth_source[0])


def random_images(count: int = 4, batch_size: int = 4, seed: int = 0) -> EvalImages:
    generator = torch.Generator().manual_seed(seed)
    batches = [torch.randn(min(batch_size, count - i), 3, 56, 56, generator=generator)
               for i in range(0, count, batch_size)]
    return EvalImages(batches, [(56, 56)] * count)


def supernet(depth_source, window_size: int) -> JetViTSupernet:
    torch.manual_seed(0)
    return JetViTSupernet.from_pretrained(depth_source[0], candidates=["linear", "window"], window_size=window_size)


def test_auto_is_the_cpu_in_float32_without_cuda_and_the_gpu_in_bfloat16_with_it(no_cuda, monkeypatch):
    placement = resolve_placement()
    assert (placement.device, placement.dtype) == (torch.device("cpu"), torch.float32)
    assert placement.describe() == {"device": "cpu", "dtype": "float32", "autocast": False, "gpu": None}
    assert placement.batch_size() == 8 and placement.batch_size(3) == 3
    assert resolve_placement("cpu", "bfloat16").describe()["autocast"] is True
    assert resolve_placement("auto", torch.float16).dtype == torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'int8'; allowed: auto, float32, bfloat16, float16"):
        resolve_placement("cpu", "int8")
    with pytest.raises(DeviceUnavailableError, match="unknown device 'gpu0'"):
        resolve_placement("gpu0")
    with pytest.raises(DeviceUnavailableError, match="'mps' is not supported"):
        resolve_placement("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    gpu = resolve_placement()
    assert (gpu.device, gpu.dtype, gpu.batch_size()) == (torch.device("cuda", 0), torch.bfloat16, 16)
    assert resolve_placement("cuda:1", "float32").device == torch.device("cuda", 1)
    with pytest.raises(DeviceUnavailableError, match="--device cuda:2: only 2 GPU"):
        resolve_placement("cuda:2")


def test_explicit_cuda_without_cuda_is_one_clear_error_before_anything_loads(no_cuda, tmp_path, capsys):
    with pytest.raises(DeviceUnavailableError, match="--device cuda was requested but no CUDA GPU is available"):
        resolve_placement("cuda")
    missing = str(tmp_path / "missing")  # never read: the device is refused first
    with pytest.raises(DeviceUnavailableError, match="--device cuda:0 was requested"):
        run_search(missing, missing, output=tmp_path / "api", device="cuda:0")
    with pytest.raises(DeviceUnavailableError, match="--device cuda was requested"):
        run_evaluation(missing, missing, missing, device="cuda")
    for command in (["search", "--supernet", missing, "--teacher", missing, "--stage", "1"],
                    ["eval", "--model", missing, "--teacher", missing, "--data", missing]):
        assert cli_main([*command, "--device", "cuda", "--output", str(tmp_path / "out")]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and "--device cuda was requested but no CUDA GPU is available" in error[0]
        assert "--device cpu" in error[0]
    assert not (tmp_path / "api").exists() and not (tmp_path / "out").exists()


def test_bfloat16_search_on_the_cpu_makes_float32s_choices_and_records_its_dtype(depth_source, teacher):
    # 4x4 windows cover the 4x4 patch grid: window layers are full attention, so every round gains by far more than
    # bfloat16's rounding and the search ends all-window
    results = {}
    for dtype in ("float32", "bfloat16"):
        objective = make_objective("depth", teacher, random_images(), metric="abs_rel", device="cpu", dtype=dtype)
        results[dtype] = beam_search(supernet(depth_source, window_size=4), objective, stage=1, beam_width=2,
                                     progress=False)
        assert results[dtype].device == {"device": "cpu", "dtype": dtype, "autocast": dtype != "float32",
                                         "gpu": None}
    full, half = results["float32"], results["bfloat16"]
    assert full.best == half.best == ["window"] * LAYERS and full.stop_reason == half.stop_reason == "no_moves"
    assert [r["beam"][0]["assignment"] for r in full.rounds] == [r["beam"][0]["assignment"] for r in half.rounds]
    for a, b in zip(full.evaluations, half.evaluations):  # bfloat16 ran (other numbers), close to float32's
        assert a["assignment"] == b["assignment"] and a["score"] != b["score"]
        assert b["score"] == pytest.approx(a["score"], abs=3e-3)


def count_teacher_passes(teacher) -> list:
    """A list that grows by one at every forward of the teacher's encoder (one per batch of images)."""
    calls = []
    teacher.jetvit.embeddings.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_the_teacher_runs_once_per_image_set(depth_source, scene_data, tmp_path):
    scenes = scene_data
    teacher = load_jetvit(depth_source[0])  # its own copy: the hook stays on it
    calls = count_teacher_passes(teacher)
    subnet = supernet(depth_source, window_size=2)
    for name in ("feature", "depth", "ordinal", "segmentation"):
        objective = make_objective(name, teacher, scenes, image_size=56, batch_size=4, probe_steps=20,
                                   progress=False)
        assert len(calls) == 2, name  # six scenes in batches of four
        objective.evaluate(subnet)
        objective.teacher_score()
        assert len(calls) == 2, name
        calls.clear()
    common = dict(data=scenes, objective="depth", metric="abs_rel", image_size=56, batch_size=4, progress=False)
    run_search(subnet, teacher, output=tmp_path / "s1", stage=1, beam_width=2, **common)
    assert len(calls) == 2
    start = tmp_path / "s1" / "attention_types.json"
    stage2 = run_search(subnet, teacher, output=tmp_path / "s2", stage=2, start=start, max_full=1, **common)
    assert len(calls) == 4  # the stage-2 target is the teacher's score, from the outputs of its one pass
    fresh = make_objective("depth", teacher, scenes, metric="abs_rel", image_size=56, batch_size=4)
    assert stage2.teacher_score == pytest.approx(fresh.evaluate(teacher), abs=1e-12)


def test_timings_and_the_device_are_in_the_search_log_and_printed(depth_source, tmp_path):
    converted = tmp_path / "teacher"
    model, info = convert_to_jetvit(depth_source[0], window_size=2, output_loading_info=True)
    save_converted(model, converted, depth_source[0], info)
    result = run_search(supernet(depth_source, window_size=2), converted, random_images(count=6, batch_size=3),
                        output=tmp_path / "s1", objective="depth", metric="abs_rel", stage=1, beam_width=2,
                        device="cpu", progress=False)
    log = json.loads((tmp_path / "s1" / "search_log.json").read_text())
    assert log["device"] == {"device": "cpu", "dtype": "float32", "autocast": False, "gpu": None}
    assert log["objective"]["batch_size"] == 3 and log["objective"]["num_images"] == 6
    timing = log["timing"]
    assert timing["num_candidates"] == len(log["evaluations"]) == len(result.evaluations)
    seconds = [record["seconds"] for record in log["evaluations"]]
    assert all(s > 0 for s in seconds) and timing["seconds_per_candidate"]["first"] == seconds[0]
    assert timing["seconds_per_candidate"]["max"] == max(seconds)
    assert min(seconds) <= timing["seconds_per_candidate"]["median"] <= max(seconds)
    assert [r["round"] for r in log["rounds"]] == list(range(len(log["rounds"]))) and len(log["rounds"]) >= 2
    for record in log["rounds"][1:]:  # a round's time covers its candidates'
        own = [e["seconds"] for e in log["evaluations"] if e["round"] == record["round"]]
        assert len(own) == record["evaluated"] and sum(own) <= record["seconds"]
    assert sum(r["seconds"] for r in log["rounds"]) <= timing["stage_seconds"]
    assert timing["teacher_outputs_seconds"] > 0 and timing["setup_seconds"] > timing["teacher_outputs_seconds"]
    printed = result.timing_summary()
    assert printed.startswith("  time on cpu in float32: set-up ") and "teacher outputs" in printed
    assert f"for {timing['num_candidates']} candidates" in printed
    assert "seconds per round (0: the start): 0: " in printed


def test_cli_search_and_eval_print_device_dtype_and_timings(depth_source, scene_data, tmp_path, capsys):
    scenes = scene_data
    torch.manual_seed(0)
    JetViTSupernet.from_pretrained(depth_source[0], window_size=2).save_pretrained(tmp_path / "supernet")
    assert cli_main(["search", "--supernet", str(tmp_path / "supernet"), "--teacher", str(depth_source[0]),
                     "--data", str(scenes), "--image-size", "56", "--objective", "depth", "--metric", "abs_rel",
                     "--stage", "1", "--max-changes", "1", "--dtype", "bfloat16", "--batch-size", "4",
                     "--output", str(tmp_path / "s1"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "time on cpu in bfloat16: set-up " in out and "seconds per round (0: the start): 0: " in out
    log = json.loads((tmp_path / "s1" / "search_log.json").read_text())
    assert log["device"]["dtype"] == "bfloat16" and log["objective"]["batch_size"] == 4
    assert cli_main(["eval", "--model", str(tmp_path / "s1" / "model"), "--teacher", str(depth_source[0]),
                     "--data", str(scenes), "--task", "depth", "--dtype", "bfloat16", "--output",
                     str(tmp_path / "eval.json"), "--no-progress"]) == 0
    assert " on cpu in bfloat16, " in capsys.readouterr().out
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["device"] == {"device": "cpu", "dtype": "bfloat16", "autocast": True, "gpu": None}
    assert report["batch_size"] == 8 and report["seconds"] > 0


def test_eval_in_bfloat16_is_close_to_float32_and_records_its_device(depth_source, teacher):
    student = load_jetvit(depth_source[0], attention_types=["linear", "window"] * 3, window_size=2)
    images = random_images(count=6, batch_size=4)
    reports = {dtype: run_evaluation(student, teacher, images, tasks=["features", "depth"], progress=False,
                                     device="cpu", dtype=dtype) for dtype in ("float32", "bfloat16")}
    full, half = reports["float32"], reports["bfloat16"]
    assert full["device"]["dtype"] == "float32" and half["device"] == {"device": "cpu", "dtype": "bfloat16",
                                                                       "autocast": True, "gpu": None}
    assert half["features"]["per_layer_cosine"] != full["features"]["per_layer_cosine"]  # autocast ran
    assert half["features"]["per_layer_cosine"] == pytest.approx(full["features"]["per_layer_cosine"], abs=2e-2)
    for mode in ("disparity", "depth"):
        assert half["depth"]["vs_teacher"][mode]["abs_rel"] == pytest.approx(
            full["depth"]["vs_teacher"][mode]["abs_rel"], abs=5e-3)


def test_search_benchmark_smoke_run(tmp_path, capsys):
    output = tmp_path / "results.json"
    assert bench_search.main(["--layers", "2", "--images", "2", "--resolution", "28", "--device", "cpu",
                              "--max-rounds", "1", "--no-progress", "--output", str(output)]) == 0
    record = json.loads(output.read_text())
    assert record["command"].startswith("python benchmarks/bench_search.py --layers 2 --images 2 --resolution 28")
    assert record["device"]["device"] == "cpu" and record["note"] == "CPU smoke test, not a performance number"
    assert record["environment"]["torch"] == torch.__version__ and "transformers" in record["environment"]
    assert record["settings"]["objective"]["reference"] == "teacher" and record["settings"]["beam_width"] == 2
    assert record["candidates"] == 3 and [r["round"] for r in record["rounds"]] == [1]  # the start, then 2 moves
    assert record["rounds"][0]["candidates"] == 2 and record["stop_reason"] in ("max_changes", "plateau")
    assert record["total_seconds"] == pytest.approx(record["teacher_outputs_seconds"] + record["stage_seconds"])
    assert record["full_search"]["max_candidates"] == 4
    assert set(record["layout_seconds_per_candidate"]) == {"all_linear", "all_window"}
    assert record["full_search"]["bound_seconds"] >= record["full_search"]["estimated_seconds"] > 0
    assert "a full search (4 candidates at most)" in capsys.readouterr().out


def test_full_search_candidate_bound():
    assert bench_search.max_candidates(24, 2) == 576  # the start, 24, then 2 * (25 - r) for r = 2..23, then 1
    assert bench_search.max_candidates(4, 2) == 16  # every assignment of four layers
    assert bench_search.max_candidates(5, 1) == 1 + 5 + 4 + 3 + 2 + 1


@pytest.mark.gpu
def test_search_and_eval_run_on_the_gpu_in_bfloat16(depth_source, tmp_path):
    teacher = load_jetvit(depth_source[0])
    images = random_images(count=8, batch_size=8)
    objective = make_objective("depth", teacher, images, metric="abs_rel")
    assert objective.placement.device.type == "cuda" and objective.placement.dtype == torch.bfloat16
    assert all(batch.is_cuda for batch in objective.images.batches)
    assert all(prediction.is_cuda for prediction in objective.teacher_predictions)
    on_gpu = run_search(supernet(depth_source, window_size=4), teacher, output=tmp_path / "gpu", objective=objective,
                        stage=1, beam_width=2, progress=False)
    on_cpu = run_search(supernet(depth_source, window_size=4), load_jetvit(depth_source[0]), images,
                        output=tmp_path / "cpu", objective="depth", metric="abs_rel", stage=1, beam_width=2,
                        device="cpu", dtype="float32", progress=False)
    assert on_gpu.device["device"].startswith("cuda") and on_gpu.device["gpu"]
    assert on_gpu.best == on_cpu.best == ["window"] * LAYERS
    for a, b in zip(on_cpu.evaluations, on_gpu.evaluations):
        assert a["assignment"] == b["assignment"] and b["score"] == pytest.approx(a["score"], abs=3e-3)
    report = run_evaluation(tmp_path / "gpu" / "model", teacher, images, tasks=["features", "depth"], progress=False)
    assert report["device"]["device"].startswith("cuda") and report["device"]["dtype"] == "bfloat16"
    assert min(report["features"]["per_layer_cosine"]) > 0.99  # the all-window model is the teacher here
