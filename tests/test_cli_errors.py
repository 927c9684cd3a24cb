"""Errors a user can cause: one line that names the flag or file, a non-zero exit, nothing half-written; a traceback
only with `--debug`. Broken checkpoints and image folders are named; an output that would replace its source is refused;
every output file, plots included, has ordinary permissions."""

import argparse
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import safetensors
from PIL import Image

from jetvit_hf import cli
from jetvit_hf.cli import main as cli_main
from jetvit_hf.convert import convert_to_jetvit, load_jetvit, save_converted
from jetvit_hf.errors import JetViTUserError
from jetvit_hf.layouts import parse_attention_types


def copy_checkpoint(directory, target):
    shutil.copytree(directory, target)
    return target


def truncate(file, keep: int = 1000):
    file.write_bytes(file.read_bytes()[:keep])


def error_lines(captured) -> list[str]:
    return captured.err.strip().splitlines()


def image_folder(path, extra: dict[str, bytes] | None = None, count: int = 3):
    """`count` small PNG images and the files in `extra` (name -> content)."""
    path.mkdir()
    generator = np.random.default_rng(0)
    for index in range(count):
        Image.fromarray(generator.integers(0, 256, (28, 42, 3), dtype=np.uint8)).save(path / f"{index}.png")
    for name, content in (extra or {}).items():
        (path / name).write_bytes(content)
    return path


def snapshot(directory) -> dict[str, bytes]:
    return {file.name: file.read_bytes() for file in sorted(directory.iterdir())}


# ----------------------------------------------------------------------------------------------------------------------
# `jetvit` as the user runs it: a fresh process, everything it prints


@pytest.fixture(scope="module")
def cli_runs(source_checkpoint, tmp_path_factory):
    """Exit status and output of `jetvit` commands run in their own processes, started together: each process spends
    seconds importing, which the cores overlap."""
    directory, _ = source_checkpoint("dinov2")
    root = tmp_path_factory.mktemp("cli")
    truncated = copy_checkpoint(directory, root / "truncated")
    truncate(truncated / "model.safetensors")
    commands = {
        "negative-repeat": ["convert", "--source", directory, "--output", root / "never",
                            "--attention-types", "linear*-1,full"],
        "truncated-weights": ["convert", "--source", truncated, "--output", root / "from-truncated"],
    }
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_HOME": str(root / "hf"), "OMP_NUM_THREADS": "1"}
    processes = {
        name: subprocess.Popen([sys.executable, "-m", "jetvit_hf.cli", *map(str, argv)], cwd=root, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, argv in commands.items()
    }
    results = {}
    for name, process in processes.items():
        out, err = process.communicate(timeout=300)
        results[name] = SimpleNamespace(returncode=process.returncode, out=out, err=err)
    return SimpleNamespace(root=root, truncated=truncated, results=results)


def test_negative_repeat_count_is_a_one_line_usage_error(cli_runs):
    run = cli_runs.results["negative-repeat"]
    assert run.returncode == 2 and run.out == ""
    assert error_lines(run) == [
        "jetvit convert: error: argument --attention-types: bad repeat count in 'linear*-1': write a whole number "
        ">= 1, e.g. linear*4 (see jetvit convert --help)"
    ]
    assert not (cli_runs.root / "never").exists()


def test_zero_repeat_count_is_refused():
    with pytest.raises(ValueError, match=r"bad repeat count in 'linear\*0'"):
        parse_attention_types("linear*0")
    with pytest.raises(argparse.ArgumentTypeError, match="whole number >= 1"):
        cli.attention_types_argument("window*0,full")


def test_truncated_safetensors_is_one_line_naming_the_file(cli_runs):
    run = cli_runs.results["truncated-weights"]
    assert run.returncode == 2 and "Traceback" not in run.err
    [line] = error_lines(run)
    assert line.startswith(f"jetvit convert: error: {cli_runs.truncated / 'model.safetensors'}: not a complete "
                           "safetensors file")
    assert sorted(p.name for p in cli_runs.root.iterdir() if "from-truncated" in p.name) == []  # nothing half-written


# ----------------------------------------------------------------------------------------------------------------------
# `main()`: how each kind of error is reported


@pytest.mark.parametrize("debug_flag", [None, "before", "after"])
def test_unexpected_error_is_one_line_and_debug_adds_the_traceback(debug_flag, monkeypatch, capsys):
    def crash(args):
        raise RuntimeError("kernel failed\nwith details on a second line")

    monkeypatch.setattr(cli, "run_convert", crash)
    argv = ["convert", "--source", "s", "--output", "o"]
    argv = {None: argv, "before": ["--debug", *argv], "after": [*argv, "--debug"]}[debug_flag]
    assert cli_main(argv) == 1
    lines = error_lines(capsys.readouterr())
    if debug_flag is None:
        assert lines == ["jetvit convert: error: unexpected RuntimeError: kernel failed [...] (rerun with --debug for "
                         "the traceback)"]
    else:
        assert lines[0] == "Traceback (most recent call last):" and "RuntimeError: kernel failed" in lines
        assert lines[-1] == "jetvit convert: error: unexpected RuntimeError: kernel failed [...]"


@pytest.mark.parametrize("error, expected", [
    (FileNotFoundError(2, "No such file or directory", "/data/annotations.json"),
     "/data/annotations.json: No such file or directory"),
    (PermissionError(13, "Permission denied", "/models/jet"), "/models/jet: Permission denied"),
    (JetViTUserError("--data /d: expected images"), "--data /d: expected images"),
    # a full disk: named as such, not as a broken file (what safetensors raised on an H200 when a pipeline filled it)
    (OSError(28, "No space left on device", "/runs/stage1/checkpoints/optimizer.bin"),
     "out of disk space writing /runs/stage1/checkpoints/optimizer.bin; free some or write to a larger disk, then rerun "
     "the same command (a pipeline continues where it stopped)"),
    (safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
     "out of disk space; free some or write to a larger disk, then rerun the same command (a pipeline continues where "
     "it stopped)"),
    (safetensors.SafetensorError("Error while serializing: I/O error: Permission denied (os error 13)"),
     "could not write a safetensors file (Error while serializing: I/O error: Permission denied (os error 13))"),
])
def test_user_errors_are_one_line_with_status_2(error, expected, monkeypatch, capsys):
    def fail(args):
        raise error

    monkeypatch.setattr(cli, "run_convert", fail)
    assert cli_main(["convert", "--source", "s", "--output", "o"]) == 2
    assert error_lines(capsys.readouterr()) == [f"jetvit convert: error: {expected}"]


def test_interrupt_exits_130_with_the_subcommand_message(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    def interrupted_with_a_message(args):
        args.interrupted = "interrupted; rerun the same command to resume"  # what `set_defaults` gives a subcommand
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_convert", interrupted)
    assert cli_main(["convert", "--source", "s", "--output", "o"]) == 130
    assert error_lines(capsys.readouterr()) == ["jetvit convert: interrupted"]
    monkeypatch.setattr(cli, "run_convert", interrupted_with_a_message)
    assert cli_main(["convert", "--source", "s", "--output", "o"]) == 130
    assert error_lines(capsys.readouterr()) == ["jetvit convert: interrupted; rerun the same command to resume"]


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["convert", "--source", "s"])
    assert exit_info.value.code == 2
    assert error_lines(capsys.readouterr()) == [
        "jetvit convert: error: the following arguments are required: --output (see jetvit convert --help)"
    ]


# ----------------------------------------------------------------------------------------------------------------------
# Broken checkpoints


def test_invalid_config_json_is_named(source_checkpoint, tmp_path, capsys):
    directory, _ = source_checkpoint("dinov2")
    broken = copy_checkpoint(directory, tmp_path / "broken")
    (broken / "config.json").write_text('{"model_type": "dinov2",')
    assert cli_main(["convert", "--source", str(broken), "--output", str(tmp_path / "out")]) == 2
    [line] = error_lines(capsys.readouterr())
    assert line.startswith(f"jetvit convert: error: {broken / 'config.json'}: not valid JSON (")
    (broken / "config.json").write_text("[1, 2]")
    with pytest.raises(JetViTUserError, match="config.json: expected a JSON object"):
        convert_to_jetvit(broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]


def test_unreadable_pytorch_weights_are_named(source_checkpoint, tmp_path):
    directory, _ = source_checkpoint("dinov2")
    broken = tmp_path / "bin"
    broken.mkdir()
    shutil.copy(directory / "config.json", broken)
    (broken / "pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(JetViTUserError, match=r"pytorch_model.bin: not a readable PyTorch weights file"):
        convert_to_jetvit(broken)


def test_broken_jetvit_checkpoint_is_named_by_the_loader_and_eval(source_checkpoint, tmp_path, capsys):
    directory, _ = source_checkpoint("dinov2")
    model, info = convert_to_jetvit(directory, "linear", output_loading_info=True)
    jet = save_converted(model, tmp_path / "jet", directory, info)
    truncate(jet / "model.safetensors", keep=200_000)  # a whole header, not all the tensors
    with pytest.raises(JetViTUserError, match="model.safetensors: not a complete safetensors file"):
        load_jetvit(jet)
    assert cli_main(["eval", "--model", str(jet), "--teacher", str(directory), "--data", str(tmp_path),
                     "--output", str(tmp_path / "report.json"), "--no-progress"]) == 2
    [line] = error_lines(capsys.readouterr())
    assert line.startswith(f"jetvit eval: error: {jet / 'model.safetensors'}: not a complete safetensors file")
    (jet / "preprocessor_config.json").write_text("")
    with pytest.raises(JetViTUserError, match="preprocessor_config.json: not valid JSON"):
        load_jetvit(jet)


@pytest.mark.parametrize("where", ["same", "inside", "contains", "link"])
def test_output_that_is_inside_around_or_linked_to_the_source_is_refused(where, source_checkpoint, tmp_path, capsys):
    """With --overwrite, `--output` equal to `--source` used to replace the source checkpoint."""
    directory, _ = source_checkpoint("dinov2")
    source = copy_checkpoint(directory, tmp_path / "models" / "source")
    outputs = {"same": source, "inside": source / "jet", "contains": tmp_path / "models", "link": tmp_path / "link"}
    output = outputs[where]
    if where == "link":
        output.symlink_to(source, target_is_directory=True)
    relation = {"same": "is", "inside": "is inside", "contains": "contains", "link": "is"}[where]
    assert cli_main(["convert", "--source", str(source), "--output", str(output), "--overwrite"]) == 2
    assert error_lines(capsys.readouterr()) == [
        f"jetvit convert: error: the output directory {output} {relation} the source checkpoint {source}: writing it "
        "would replace or alter the source; choose a directory outside it"
    ]
    assert snapshot(source) == snapshot(directory)


# ----------------------------------------------------------------------------------------------------------------------
# Image folders


def test_image_folder_ignores_stray_files_with_a_warning(tmp_path, caplog):
    from jetvit_hf.data.images import load_images

    folder = image_folder(tmp_path / "images", {"README": b"photos from the lab", "notes.txt": b"",
                                                ".DS_Store": b"\0"})
    with caplog.at_level(logging.WARNING, logger="jetvit_hf.data.images"):
        assert len(load_images(folder)) == 3
    assert [record.getMessage() for record in caplog.records if record.name == "jetvit_hf.data.images"] == [
        f"{folder}: ignoring 2 file(s) that are not images: README, notes.txt"
    ]


def test_file_with_an_image_suffix_that_is_no_image_is_named(source_checkpoint, tmp_path, capsys):
    from jetvit_hf.data.images import load_images

    folder = image_folder(tmp_path / "images", {"broken.png": b"<html>404 Not Found</html>"})
    with pytest.raises(JetViTUserError, match=rf"^{folder / 'broken.png'}: not an image \(cannot identify"):
        load_images(folder)
    directory, _ = source_checkpoint("dinov2")
    assert cli_main(["eval", "--model", str(directory), "--teacher", str(directory), "--data", str(folder),
                     "--output", str(tmp_path / "report.json"), "--no-progress"]) == 2
    [line] = error_lines(capsys.readouterr())
    assert line.startswith(f"jetvit eval: error: {folder / 'broken.png'}: not an image (cannot identify image file")
    assert not (tmp_path / "report.json").exists()


def test_truncated_image_is_named_when_decoded(tmp_path):
    from jetvit_hf.data.images import DistillationImages, load_images, make_transform
    from jetvit_hf.evaluation.images import load_eval_images

    folder = image_folder(tmp_path / "images", count=2)
    whole = (folder / "1.png").read_bytes()
    (folder / "1.png").write_bytes(whole[: len(whole) // 2])  # a whole header: found by decoding only
    with pytest.raises(JetViTUserError, match=rf"^{folder / '1.png'}: not a readable image \(image file is truncated"):
        load_eval_images(folder, patch_size=14, image_size=28)
    images = DistillationImages(load_images(folder), make_transform(28, 14))
    images[0]
    with pytest.raises(JetViTUserError, match=rf"^{folder / '1.png'}: not a readable image"):
        images[1]


# ----------------------------------------------------------------------------------------------------------------------
# Outputs: ordinary permissions, nothing half-written


@pytest.fixture
def umask_022():
    umask = os.umask(0o022)
    yield
    os.umask(umask)


def test_plots_have_ordinary_permissions(umask_022, tmp_path):
    from jetvit_hf.bench.plot import plot_sweep
    from jetvit_hf.search.beam import SearchResult
    from jetvit_hf.search.plots import plot_layer_gain, plot_pareto

    point = {"num_tokens": 21, "resolution": [64, 64], "results": {"jetvit": {"status": "ok", "median_ms": 1.5}},
             "ratios": {}}
    sweep = {"points": [point], "gpu": None, "model": {"name": "tiny"}, "attention_summary": "linear:4",
             "dtype": "float32"}
    record = {"assignment": ["linear", "full"], "score": 0.5, "estimated_latency_ms": 2.0}
    search = SearchResult(
        stage=2, objective={"name": "feature", "higher_is_better": True}, beam_width=1, tolerance=0.0,
        start=["linear", "linear"], best=record["assignment"], best_score=0.5, best_latency_ms=2.0,
        teacher_score=None, stop_reason="no_moves", candidates=[["linear", "full"]] * 2, evaluations=[record],
        rounds=[], layer_gain={"attention_type": "full", "gains": [float("nan"), 0.25]},
        pareto_cost="estimated_latency_ms", pareto=[record],
    )
    written = [plot_sweep(sweep, tmp_path / "sweep.png"), plot_layer_gain(search, tmp_path / "gain.png"),
               plot_pareto(search, tmp_path / "pareto.png")]
    assert [stat.S_IMODE(os.stat(path).st_mode) for path in written] == [0o644] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gain.png", "pareto.png", "sweep.png"]


def test_converted_model_files_have_ordinary_permissions(umask_022, source_checkpoint, tmp_path):
    directory, _ = source_checkpoint("dinov2")
    model, info = convert_to_jetvit(directory, output_loading_info=True)
    output = save_converted(model, tmp_path / "jet", directory, info)
    modes = {file.name: stat.S_IMODE(file.stat().st_mode) for file in output.iterdir()}
    assert modes["model.safetensors"] == 0o644  # safetensors itself writes 0600
    assert set(modes.values()) == {0o644}


def test_an_interrupted_atomic_file_leaves_the_old_file(tmp_path):
    from jetvit_hf.io import atomic_file

    target = tmp_path / "plot.png"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(target) as staging:
            staging.write_bytes(b"half")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_broken_layout_and_latency_files_are_named(tmp_path):
    from jetvit_hf.bench import estimate_latency
    from jetvit_hf.layouts import read_attention_types

    broken = tmp_path / "attention_types.json"
    broken.write_text("[linear,")
    with pytest.raises(ValueError, match="attention_types.json: not valid JSON"):
        read_attention_types(broken, 4)
    with pytest.raises(ValueError, match="attention_types.json: not valid JSON"):
        estimate_latency(broken, "all-linear")


def test_weights_that_do_not_match_their_config_are_a_user_error_naming_the_directory(source_checkpoint, tmp_path,
                                                                                      capsys):
    directory, _ = source_checkpoint("dinov2")
    model = tmp_path / "model"
    converted, info = convert_to_jetvit(directory, output_loading_info=True)
    save_converted(converted, model, directory, info)
    config = json.loads((model / "config.json").read_text())
    config["intermediate_size"] += 8  # every MLP weight now has another shape than the config implies
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(JetViTUserError, match="its weights do not match its config.json"):
        load_jetvit(model)
    assert cli_main(["eval", "--model", str(model), "--teacher", str(directory), "--data", str(tmp_path),
                     "--output", str(tmp_path / "eval.json")]) == 2
    assert error_lines(capsys.readouterr()) == [
        f"jetvit eval: error: {model}: its weights do not match its config.json (a tensor has another size than the "
        "config implies; were the config or the weights replaced?)"]

