"""The whole post-training attention search in one call (`jetvit pipeline`), the project's main job.

distill a stage-1 supernet ({linear, window}) -> beam search stage 1 -> distill a stage-2 supernet ({stage-1
choice, full}) -> beam search stage 2 -> fine-tune the extracted model -> evaluate against the teacher -> benchmark ->
model card.

The default teacher is the small Depth Anything-layout checkpoint in `training/default_teacher/` (see
`training/make_default_teacher.py`), with procedural scenes as data and held-out scenes with exact depth for the search
objective and the evaluation, so the whole job runs offline on a CPU in minutes.

Every setting is checked before any work starts (`validate_config`). Every stage writes into its own directory under
`output_dir`, next to `pipeline_config.json`, the settings the stages were made with. A rerun with the same settings
skips the finished stages (and says so), and a training stage resumes from its last checkpoint: one comes at least
every 10% of a stage, and SIGINT / SIGTERM writes one of the current step before stopping (`TrainingInterrupted`). A
rerun with other settings is refused unless `overwrite` clears the directory, so no result mixes stages trained with
different settings.
"""

import json
import os
import shutil
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..io import atomic_write_json

if TYPE_CHECKING:
    from ..models.jetvit.configuration_jetvit import JetViTConfig

DEFAULT_TEACHER = Path(__file__).resolve().parents[2] / "training" / "default_teacher"
CONFIG_FILE = "pipeline_config.json"
NUM_STEPS = 7
CHECKPOINTS_PER_STAGE = 10  # a checkpoint at least every 10% of a training stage
# The CPU benchmark of the pipeline's small model: one thread (a second one only adds scheduling jitter when the
# cores are shared), more iterations than `jetvit bench`'s CPU default, the median; still a smoke test.
CPU_BENCH = {"warmup": 10, "iters": 50, "threads": 1}


@dataclass
class PipelineConfig:
    teacher: str = str(DEFAULT_TEACHER)
    output_dir: str = "runs/default"
    train_data: str = "scenes:600"  # anything the trainer reads: an image folder, a dataset dir, scenes:<count>
    eval_scenes: int = 48  # held-out procedural scenes (exact depth) for the search objective and the evaluation
    eval_seed: int = 1  # the default teacher was trained on scene seed 0 and validated on seed 1
    image_size: int = 64
    window_size: int = 4
    distill_steps: int = 300
    finetune_steps: int = 200
    batch_size: int = 16
    learning_rate: float = 3e-4
    objective: str = "auto"  # depth (delta1 against ground truth) for depth teachers, else feature
    beam_width: int = 2
    max_full: int = 1
    seed: int = 0
    bench_resolution: str | None = None  # default: 1024x1024 on a GPU, the training size on a CPU
    device: str = "auto"  # search and evaluation: auto (the GPU when there is one), cpu, cuda or cuda:N
    dtype: str = "auto"  # search and evaluation: auto (bf16 autocast on a GPU, else float32), float32, bfloat16, float16


def flag(name: str) -> str:
    """The command-line flag of a `PipelineConfig` field."""
    return "--output" if name == "output_dir" else "--" + name.replace("_", "-")


@dataclass
class _Teacher:
    """What validation learns about the teacher from its config alone: its JetViT config and whether it has a depth
    head."""

    config: "JetViTConfig"
    depth: bool


# ----------------------------------------------------------------------------------------------------------------------
# Checking the settings


def _error(name: str, value, reason: str) -> ValueError:
    return ValueError(f"{flag(name)} {value!r}: {reason}")


def _teacher_info(teacher: str) -> _Teacher:
    """The teacher's JetViT config, read from its config.json (a source checkpoint or a JetViT dir) without weights."""
    from transformers import AutoConfig

    from ..convert import jetvit_config_from_source, resolve_source
    from ..models.jetvit.configuration_jetvit import JetViTConfig

    if not (Path(teacher) / "config.json").is_file() and Path(teacher) == DEFAULT_TEACHER:
        raise _error("teacher", teacher, "the default teacher is missing; rebuild it with "
                                         "`python training/make_default_teacher.py`")
    try:
        path = resolve_source(teacher)
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} holds no config.json")
        raw = json.loads((path / "config.json").read_text())
        if raw.get("model_type") == "jetvit":
            config = JetViTConfig.from_pretrained(path)
            return _Teacher(config, (raw.get("architectures") or [""])[0] == "JetViTForDepthEstimation")
        config, _, _, jetvit_class = jetvit_config_from_source(AutoConfig.from_pretrained(path))
    except (ValueError, OSError) as error:
        raise _error("teacher", teacher, f"not a loadable teacher ({' '.join(str(error).split())})") from None
    return _Teacher(config, jetvit_class.__name__ == "JetViTForDepthEstimation")


def _check_counts(config: PipelineConfig) -> None:
    for name in ("eval_scenes", "image_size", "window_size", "distill_steps", "finetune_steps", "batch_size",
                 "beam_width"):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _error(name, value, "must be a whole number of at least 1")
    for name in ("max_full", "eval_seed", "seed"):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _error(name, value, "must be a whole number of at least 0")
    if not isinstance(config.learning_rate, (int, float)) or not config.learning_rate > 0:
        raise _error("learning_rate", config.learning_rate, "must be a positive number")


def _check_train_data(config: PipelineConfig) -> None:
    data = config.train_data
    if data.startswith("scenes:"):
        count = data.removeprefix("scenes:")
        if not count.isdigit() or int(count) < config.batch_size:
            raise _error("train_data", data, f"write scenes:<count> with a count of at least --batch-size "
                                             f"({config.batch_size}), e.g. scenes:600")
    elif not Path(data).is_dir():
        raise _error("train_data", data, "no such directory; pass an image folder, a dataset dir or scenes:<count>")


def _check_placement(config: PipelineConfig) -> None:
    from ..device import check_device, resolve_dtype

    try:
        device = check_device(config.device)
    except ValueError as error:
        raise _error("device", config.device, str(error)) from None
    try:
        resolve_dtype(config.dtype, device)
    except ValueError as error:
        raise _error("dtype", config.dtype, str(error)) from None


def _loader_workers() -> int:
    """DataLoader worker processes for the training stages: none on a CPU (the cores train), else up to 8, so image
    decoding and augmentation stay off the GPU's critical path."""
    return min(8, max(1, (os.cpu_count() or 2) // 2)) if torch.cuda.is_available() else 0


def _check_against_teacher(config: PipelineConfig, teacher: _Teacher) -> None:
    from ..bench import parse_resolution
    from .objectives import OBJECTIVES

    patch = teacher.config.patch_size
    if config.objective not in ("auto", *OBJECTIVES):
        raise _error("objective", config.objective, f"choose one of {', '.join(('auto', *OBJECTIVES))}")
    if config.objective in ("depth", "ordinal") and not teacher.depth:
        raise _error("objective", config.objective, "needs a teacher with a depth head; use feature or segmentation")
    if config.image_size % patch:
        raise _error("image_size", config.image_size, f"must be a multiple of the teacher's patch size {patch}")
    if config.bench_resolution is not None:
        try:
            resolution = parse_resolution(config.bench_resolution)
        except ValueError:
            raise _error("bench_resolution", config.bench_resolution,
                         "write HEIGHTxWIDTH in pixels, e.g. 1024x1024") from None
        if min(resolution) < patch:
            raise _error("bench_resolution", config.bench_resolution, f"smaller than one {patch}-pixel patch")


def validate_config(config: PipelineConfig) -> tuple[PipelineConfig, _Teacher]:
    """Check every setting before any work: counts, the training data, the teacher (it must exist and its config
    load), the objective and the resolutions against it. A `ValueError` names the flag. Returns the config with a local
    teacher path made absolute (so the recorded settings name it wherever the command runs), and the teacher's info."""
    _check_counts(config)
    _check_train_data(config)
    _check_placement(config)
    teacher = _teacher_info(config.teacher)
    _check_against_teacher(config, teacher)
    if Path(config.teacher).expanduser().is_dir():
        config = replace(config, teacher=str(Path(config.teacher).expanduser().resolve()))
    return config, teacher


def check_output(config: PipelineConfig, overwrite: bool = False) -> None:
    """Refuse an `output_dir` this run cannot use: a file, a non-empty directory without `pipeline_config.json` (not a
    pipeline output, so never cleared), or, unless `overwrite`, one whose recorded settings differ from `config`'s."""
    output = Path(config.output_dir)
    if output.exists() and not output.is_dir():
        raise _error("output_dir", config.output_dir, "exists and is not a directory")
    if output.is_dir() and any(output.iterdir()):
        if not (output / CONFIG_FILE).is_file():
            raise _error("output_dir", config.output_dir, f"is not empty and holds no {CONFIG_FILE}, so it is not "
                                                          "a jetvit pipeline output; choose a new --output")
        if not overwrite:
            _check_same_settings(config, output / CONFIG_FILE)


def start_output(config: PipelineConfig, overwrite: bool = False) -> Path:
    """`output_dir` (checked by `check_output`), cleared first with `overwrite`, with this run's
    `pipeline_config.json`: a rerun with the same settings reuses its finished stages."""
    output = Path(config.output_dir)
    if overwrite and output.is_dir():
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output / CONFIG_FILE, asdict(config))
    return output


def _check_same_settings(config: PipelineConfig, recorded: Path) -> None:
    try:
        before = json.loads(recorded.read_text())
    except ValueError as error:
        raise _error("output_dir", config.output_dir,
                     f"{CONFIG_FILE} is unreadable ({error}); pass --overwrite to clear it") from None
    now, defaults = asdict(config), asdict(PipelineConfig())
    # a setting added since that run was recorded had its default value then
    changed = [f"{flag(name)} {before.get(name, defaults[name])!r} there, {now[name]!r} now" for name in now
               if name != "output_dir" and before.get(name, defaults[name]) != now[name]]
    if changed:
        raise _error("output_dir", config.output_dir,
                     f"holds a run with other settings ({'; '.join(changed)}); rerun with those, pass --overwrite to "
                     "clear it, or choose a new --output")


# ----------------------------------------------------------------------------------------------------------------------
# The stages


def _announce(step: int, title: str, note: str = "") -> None:
    print(f"[{step}/{NUM_STEPS}] {title}{note}", flush=True)


def _train(step: int, title: str, stage_dir: Path, result: str, max_steps: int, **settings) -> Path:
    """One training stage into `stage_dir` (skipped when `stage_dir/result` exists, else resumed from its last
    checkpoint), checkpointing at least every `1 / CHECKPOINTS_PER_STAGE` of it."""
    from ..train import TrainConfig, reset_accelerate_state, train
    from ..train.checkpoints import CHECKPOINTS_DIR, list_checkpoints, saved_step

    if (stage_dir / result).is_dir():
        _announce(step, title, f": already done in {stage_dir}, skipped")
        return stage_dir / result
    checkpoints = list_checkpoints(stage_dir / CHECKPOINTS_DIR)
    _announce(step, title, f": resuming at step {saved_step(checkpoints[-1])} of {max_steps}" if checkpoints else "")
    reset_accelerate_state()
    train(TrainConfig(output_dir=str(stage_dir), resume=True, num_workers=_loader_workers(), max_steps=max_steps,
                      checkpoint_every=max(1, max_steps // CHECKPOINTS_PER_STAGE), **settings))
    return stage_dir / result


def _search(step: int, title: str, stage_dir: Path, **kwargs) -> Path:
    from .stage import run_search

    if (stage_dir / "search_log.json").is_file():
        _announce(step, title, f": already done in {stage_dir}, skipped")
    else:
        _announce(step, title)
        run_search(output=stage_dir, overwrite=True, **kwargs)
    return stage_dir / "model"


def _train_and_search(config: PipelineConfig, output: Path, teacher, depth: bool, objective: str, held_out) -> Path:
    """Steps 1-5: both supernets and their searches, then the fine-tuned model; returns its directory."""
    training = dict(
        teacher=config.teacher, data=config.train_data, image_size=config.image_size, batch_size=config.batch_size,
        learning_rate=config.learning_rate, seed=config.seed, warmup_steps=max(1, config.distill_steps // 10),
    )
    searching = dict(teacher=teacher, data=held_out, objective=objective, beam_width=config.beam_width,
                     image_size=config.image_size, device=config.device, dtype=config.dtype)
    stage1 = _train(1, "distilling the stage-1 supernet ({linear, window} per layer)", output / "stage1", "supernet",
                    config.distill_steps, mode="distill", student_overrides={"window_size": config.window_size},
                    **training)
    choice1 = _search(2, "beam search, stage 1 (linear -> window while it helps)", output / "search1",
                      supernet=stage1, stage=1, **searching)
    stage2 = _train(3, "distilling the stage-2 supernet ({stage-1 choice, full} per layer)", output / "stage2",
                    "supernet", config.distill_steps, mode="distill", student=str(choice1), candidates="stage2",
                    **training)
    choice2 = _search(4, "beam search, stage 2 (-> full attention until the teacher's score)", output / "search2",
                      supernet=stage2, stage=2, max_full=config.max_full, **searching)
    return _train(5, "fine-tuning the extracted model", output / "finetune", "model", config.finetune_steps,
                  mode="finetune", student=str(choice2), depth_loss_weight=1.0 if depth else 0.0,
                  **{**training, "warmup_steps": max(1, config.finetune_steps // 10)})


def _benchmark(config: PipelineConfig, model: Path) -> dict:
    """Step 7: transformers' model, JetViT all-full and the hybrid, timed one after the other with a progress bar. On a
    CPU a smoke test: the training size, batch 1, `CPU_BENCH` (one thread, more iterations, the median)."""
    from ..bench import CPU_SMOKE_NOTE, benchmark

    if torch.cuda.is_available():
        resolution = config.bench_resolution or "1024x1024"
        _announce(7, f"benchmarking hf, jetvit-full and jetvit on the GPU at {resolution}")
        return benchmark(model=model, resolution=resolution, device="cuda", progress=True)
    resolution = config.bench_resolution or f"{config.image_size}x{config.image_size}"
    _announce(7, f"benchmarking hf, jetvit-full and jetvit on the CPU at {resolution}, batch 1 ({CPU_SMOKE_NOTE}: "
                 f"median of {CPU_BENCH['iters']} after {CPU_BENCH['warmup']} warm-up, {CPU_BENCH['threads']} thread)")
    threads = torch.get_num_threads()
    torch.set_num_threads(CPU_BENCH["threads"])
    try:
        return benchmark(model=model, resolution=resolution, device="cpu", batch_size=1, warmup=CPU_BENCH["warmup"],
                         iters=CPU_BENCH["iters"], progress=True)
    finally:
        torch.set_num_threads(threads)


def run_pipeline(config: PipelineConfig, overwrite: bool = False) -> dict:
    """Check the settings, then run every stage (announcing and skipping finished ones) and return the summary also
    written to `output_dir/report.json`. `overwrite` clears an earlier run in `output_dir` first."""
    from ..convert import load_jetvit
    from ..data.scenes import scene_dataset
    from ..evaluation.evaluator import run_evaluation
    from ..model_card import write_model_card

    config, info = validate_config(config)
    check_output(config, overwrite)
    teacher = load_jetvit(config.teacher)
    output = start_output(config, overwrite)
    objective = config.objective if config.objective != "auto" else ("depth" if info.depth else "feature")
    held_out = scene_dataset(config.eval_scenes, config.image_size, config.image_size, seed=config.eval_seed)
    finetuned = _train_and_search(config, output, teacher, info.depth, objective, held_out)
    _announce(6, "evaluating against the teacher on held-out scenes")
    report = run_evaluation(finetuned, teacher, held_out, output=output / "eval.json", image_size=config.image_size,
                            device=config.device, dtype=config.dtype)
    speed = _benchmark(config, finetuned)
    atomic_write_json(output / "bench.json", speed)
    search_logs = [output / "search1" / "search_log.json", output / "search2" / "search_log.json"]
    write_model_card(finetuned, search_logs=search_logs, eval_report=report, bench_report=speed)
    summary = summarize(json.loads((finetuned / "config.json").read_text())["attention_types"], report, speed)
    summary["files"] = _result_files(output, finetuned)
    atomic_write_json(output / "report.json", summary)
    print(format_summary(summary, finetuned))
    return summary


# ----------------------------------------------------------------------------------------------------------------------
# The summary


def _result_files(output: Path, model: Path) -> dict:
    return {
        "report": str(output / "report.json"),
        "eval": str(output / "eval.json"),
        "bench": str(output / "bench.json"),
        "plots": [str(path) for stage in ("search1", "search2") for path in sorted((output / stage).glob("*.png"))],
        "model": str(model),
        "model_card": str(model / "README.md"),
        "settings": str(output / CONFIG_FILE),
    }


def summarize(attention_types: list[str], report: dict, speed: dict) -> dict:
    """Accuracy retention (student against the teacher, both against ground truth) and speed, from one run."""
    summary = {"attention_types": attention_types, "layer_indexing": "0-based"}
    truth = report.get("depth", {}).get("vs_ground_truth")
    if truth:
        student, teacher = truth["student"]["disparity"], truth["teacher"]["disparity"]
        summary["depth_vs_ground_truth"] = {
            "mode": "disparity (least-squares scale and shift, DA mode)",
            "student": {k: student[k] for k in ("abs_rel", "delta1")},
            "teacher": {k: teacher[k] for k in ("abs_rel", "delta1")},
            "delta1_retention": student["delta1"] / teacher["delta1"],
        }
    if "depth" in report:
        summary["depth_vs_teacher"] = {k: report["depth"]["vs_teacher"]["disparity"][k] for k in ("abs_rel", "delta1")}
    if "features" in report:
        summary["mean_feature_cosine"] = report["features"]["mean_cosine"]
    latency = {name: result["latency"]["median_ms"] for name, result in speed["results"].items()
               if result.get("status") in (None, "ok") and result.get("latency", {}).get("median_ms")}
    timing = speed.get("timing", {})
    summary["speed"] = {"device": speed.get("gpu") or speed.get("device"), "note": speed.get("note"),
                        "resolution": speed.get("resolution"), "latency_ms": latency, "ratios": speed.get("ratios"),
                        "timing": {"statistic": timing.get("statistic"), "warmup": timing.get("warmup"),
                                   "iters": timing.get("iters"),
                                   "threads": speed.get("environment", {}).get("cpu_threads")}}
    return summary


def format_summary(summary: dict, model_dir: Path) -> str:
    lines = ["", f"JetViT pipeline result: {model_dir}",
             "  attention types: " + ", ".join(f"{i}:{t}" for i, t in enumerate(summary["attention_types"]))]
    truth = summary.get("depth_vs_ground_truth")
    if truth:
        lines.append(f"  depth vs ground truth ({truth['mode']}): student AbsRel {truth['student']['abs_rel']:.4f} "
                     f"delta1 {truth['student']['delta1']:.4f}; teacher AbsRel {truth['teacher']['abs_rel']:.4f} "
                     f"delta1 {truth['teacher']['delta1']:.4f}; "
                     f"delta1 retention {100 * truth['delta1_retention']:.1f}%")
    if "depth_vs_teacher" in summary:
        lines.append(f"  depth vs the teacher's prediction: AbsRel {summary['depth_vs_teacher']['abs_rel']:.4f}, "
                     f"delta1 {summary['depth_vs_teacher']['delta1']:.4f}")
    if "mean_feature_cosine" in summary:
        lines.append(f"  mean per-layer feature cosine to the teacher: {summary['mean_feature_cosine']:.4f}")
    lines.append(_format_speed(summary["speed"]))
    files = summary.get("files")
    if files:
        lines += ["  files:"] + [f"    {label}: {files[key]}" for key, label in (
            ("report", "report"), ("eval", "evaluation"), ("bench", "benchmark"), ("model_card", "model card"),
            ("settings", "settings"))]
        lines += [f"    plot: {path}" for path in files["plots"]]
    return "\n".join(lines)


def _format_speed(speed: dict) -> str:
    timings = ", ".join(f"{name} {ms:.2f} ms" for name, ms in speed["latency_ms"].items())
    timing = speed.get("timing") or {}
    how = f"median of {timing['iters']} after {timing['warmup']} warm-up" if timing.get("iters") else ""
    if speed.get("note"):  # a CPU run: a smoke test
        threads = timing.get("threads")
        how += f", {threads} thread{'s' if threads != 1 else ''}" if threads else ""
        return f"  speed: {speed['note']} ({'x'.join(map(str, speed['resolution'] or []))}, batch 1, {how}): {timings}"
    return f"  speed ({speed['device']}, {'x'.join(map(str, speed['resolution'] or []))}, batch 1, {how}): {timings}"


def config_from_cli(args) -> PipelineConfig:
    fields_given = {spec.name: getattr(args, spec.name) for spec in fields(PipelineConfig)
                    if getattr(args, spec.name, None) is not None}
    return PipelineConfig(**fields_given)


__all__ = ["CONFIG_FILE", "DEFAULT_TEACHER", "PipelineConfig", "check_output", "config_from_cli", "flag",
           "run_pipeline", "start_output", "validate_config"]
