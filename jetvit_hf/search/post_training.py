"""The whole post-training attention search in one call (`jetvit pipeline`), the project's main job.

distill a stage-1 supernet ({linear, window}) -> beam search stage 1 -> distill a stage-2 supernet ({stage-1
choice, full}) -> beam search stage 2 -> fine-tune the extracted model -> evaluate against the teacher -> benchmark ->
model card.

The default teacher is the small Depth Anything-layout checkpoint in `training/default_teacher/` (see
`training/make_default_teacher.py`), with procedural scenes as data, so the whole job runs offline on a CPU in minutes.
Scenes come in three disjoint splits (`SCENE_SEEDS`, checked scene by scene and recorded in `report.json`): training
draws `scenes:<count>` from `--seed`, the search scores layouts on the search split, and the evaluation and the
reported numbers (with 95% bootstrap intervals over scenes) come from the test split, which the search never sees.

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

from ..io import atomic_write_json, read_json
from .beam import NOISE_FACTOR

if TYPE_CHECKING:
    from ..models.jetvit.configuration_jetvit import JetViTConfig

DEFAULT_TEACHER = Path(__file__).resolve().parents[2] / "training" / "default_teacher"
CONFIG_FILE = "pipeline_config.json"
NUM_STEPS = 7
CHECKPOINTS_PER_STAGE = 10  # a checkpoint at least every 10% of a training stage
# The CPU benchmark of the pipeline's small model: one thread (a second one only adds scheduling jitter when the
# cores are shared), more iterations than `jetvit bench`'s CPU default, the median; still a smoke test.
CPU_BENCH = {"warmup": 10, "iters": 50, "threads": 1}
# `scene_dataset` seeds of the evaluation splits; training's scenes:<count> come from --seed (default 0). The default
# teacher was trained on seed 0 and validated and calibrated on seed 1, so the test split is seed 2, which nothing
# before the report has seen.
SCENE_SEEDS = {"search": 1, "test": 2}


@dataclass
class PipelineConfig:
    teacher: str = str(DEFAULT_TEACHER)
    output_dir: str = "runs/default"
    train_data: str = "scenes:600"  # anything the trainer reads: an image folder, a dataset dir, scenes:<count>
    eval_scenes: int = 48  # procedural scenes (exact depth) in each of the search and the test split
    image_size: int = 64
    window_size: int = 4
    distill_steps: int = 300
    finetune_steps: int = 200
    batch_size: int = 16
    learning_rate: float = 3e-4
    objective: str = "auto"  # depth (AbsRel against the teacher's prediction) for depth teachers, else feature
    noise_factor: float = NOISE_FACTOR  # a search step must gain more than this many paired bootstrap SEs
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
        raw = read_json(path / "config.json")
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
    for name in ("max_full", "seed"):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _error(name, value, "must be a whole number of at least 0")
    if not isinstance(config.learning_rate, (int, float)) or not config.learning_rate > 0:
        raise _error("learning_rate", config.learning_rate, "must be a positive number")
    if not isinstance(config.noise_factor, (int, float)) or not config.noise_factor >= 0:
        raise _error("noise_factor", config.noise_factor, "must be a number of at least 0")


def scene_splits(config: PipelineConfig) -> dict:
    """The three splits of the run, `{"train", "search", "test"}`, each with its `scene_dataset` seed and scene count
    (training from an image folder: its path), after checking scene by scene (`data.scenes.scene_seed`) that no scene
    is in two of them; a clash (e.g. `--seed` equal to a split's seed) is an error naming `--seed`."""
    from ..data.scenes import scene_seed

    splits = {name: {"seed": seed, "num_scenes": config.eval_scenes} for name, seed in SCENE_SEEDS.items()}
    if config.train_data.startswith("scenes:"):
        splits = {"train": {"seed": config.seed, "num_scenes": int(config.train_data.removeprefix("scenes:"))},
                  **splits}
    seen: dict[int, str] = {}
    for name, split in splits.items():
        for index in range(split["num_scenes"]):
            other = seen.setdefault(scene_seed(split["seed"], index), name)
            if other != name:
                raise _error("seed", config.seed, f"the {other} and {name} splits share scenes; scene seeds "
                                                  f"{SCENE_SEEDS} are taken by the search and test splits")
    splits.setdefault("train", {"data": config.train_data})
    return {**splits, "disjoint": "checked scene by scene (data.scenes.scene_seed)"}


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
    scene_splits(config)
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
    retired = sorted(set(before) - set(now))
    if retired:  # e.g. eval_seed: that run searched and reported on one set of scenes
        raise _error("output_dir", config.output_dir,
                     f"holds a run from an earlier version of the pipeline (it records {', '.join(retired)}, which no "
                     "longer exist); pass --overwrite to rerun it, or choose a new --output")
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


def search_objective(config: PipelineConfig, depth: bool) -> dict:
    """The search's objective options: for a depth teacher (`--objective auto` or `depth`) AbsRel against the teacher's
    own prediction, lower is better (it separates layouts about ten times more than delta1 against ground truth,
    which saturates); else `--objective` (auto: the feature-distillation proxy)."""
    name = config.objective if config.objective != "auto" else ("depth" if depth else "feature")
    if name == "depth":
        return {"objective": "depth", "metric": "abs_rel", "reference": "teacher"}
    return {"objective": name}


def _train_and_search(config: PipelineConfig, output: Path, teacher, depth: bool, search_set) -> Path:
    """Steps 1-5: both supernets and their searches (scored on `search_set`), then the fine-tuned model; returns its
    directory."""
    training = dict(
        teacher=config.teacher, data=config.train_data, image_size=config.image_size, batch_size=config.batch_size,
        learning_rate=config.learning_rate, seed=config.seed, warmup_steps=max(1, config.distill_steps // 10),
    )
    searching = dict(teacher=teacher, data=search_set, split="search", beam_width=config.beam_width,
                     noise_factor=config.noise_factor, image_size=config.image_size, device=config.device,
                     dtype=config.dtype, **search_objective(config, depth))
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


# The test split's measures for a depth teacher: the search objective, then accuracy against ground truth.
DEPTH_TEST_MEASURES = {"abs_rel_vs_teacher": {"metric": "abs_rel", "reference": "teacher"},
                       "abs_rel_vs_ground_truth": {"metric": "abs_rel", "reference": "ground_truth"},
                       "delta1_vs_ground_truth": {"metric": "delta1", "reference": "ground_truth"}}


def _interval(score: float, per_image: torch.Tensor | None) -> dict:
    """`{"score", "ci95", "se"}`: the score with the bootstrap of its per-image scores (nulls without them)."""
    from ..evaluation.bootstrap import bootstrap

    if per_image is None:
        return {"score": score, "ci95": None, "se": None}
    result = bootstrap(per_image)
    return {"score": score, "ci95": result["ci95"], "se": result["se"]}


def score_test_split(config: PipelineConfig, teacher, model_dir: Path, test_set, depth: bool) -> dict:
    """The final model's scores on the test split, each with its 95% bootstrap interval over scenes (null for an
    objective without per-image scores). For a depth teacher `DEPTH_TEST_MEASURES` (against ground truth also the
    teacher's score and the paired student - teacher difference), else the search objective."""
    from ..convert import load_jetvit
    from ..evaluation.bootstrap import NUM_RESAMPLES, paired_bootstrap
    from .objectives import make_objective

    model = load_jetvit(model_dir)
    options = dict(image_size=config.image_size, device=config.device, dtype=config.dtype, progress=False)
    if depth:
        measures = {name: {"name": "depth", **settings} for name, settings in DEPTH_TEST_MEASURES.items()}
    else:
        name = search_objective(config, depth)["objective"]
        measures = {name: {"name": name}}
    scores = {"split": "test", "seed": SCENE_SEEDS["test"], "num_scenes": config.eval_scenes,
              "interval": f"95% percentile bootstrap over scenes ({NUM_RESAMPLES} resamples, seed 0)"}
    for label, settings in measures.items():
        objective = make_objective(settings.pop("name"), teacher, test_set, **options, **settings)
        student, student_images = objective.assess(model)
        entry = {"higher_is_better": objective.higher_is_better, "student": _interval(student, student_images)}
        if settings.get("reference") != "teacher":
            teacher_images = objective.teacher_image_scores()
            entry["teacher"] = _interval(objective.teacher_score(), teacher_images)
            if student_images is not None and teacher_images is not None:
                difference = paired_bootstrap(student_images, teacher_images)
                entry["student_minus_teacher"] = {key: difference[key] for key in ("mean", "ci95", "se")}
        scores[label] = entry
    return scores


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
    splits = scene_splits(config)
    search_set, test_set = (scene_dataset(config.eval_scenes, config.image_size, config.image_size,
                                          seed=SCENE_SEEDS[name]) for name in ("search", "test"))
    finetuned = _train_and_search(config, output, teacher, info.depth, search_set)
    _announce(6, f"evaluating against the teacher on the test split ({config.eval_scenes} scenes the search never "
                 "saw)")
    report = run_evaluation(finetuned, teacher, test_set, output=output / "eval.json", image_size=config.image_size,
                            device=config.device, dtype=config.dtype)
    test_scores = score_test_split(config, teacher, finetuned, test_set, info.depth)
    speed = _benchmark(config, finetuned)
    atomic_write_json(output / "bench.json", speed)
    search_logs = [output / "search1" / "search_log.json", output / "search2" / "search_log.json"]
    write_model_card(finetuned, search_logs=search_logs, eval_report=report, bench_report=speed)
    summary = summarize(json.loads((finetuned / "config.json").read_text())["attention_types"], report, speed)
    summary["splits"], summary["test_split"] = splits, test_scores
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
    if "test_split" in summary:
        lines += _format_test_split(summary["test_split"])
    lines.append(_format_speed(summary["speed"]))
    files = summary.get("files")
    if files:
        lines += ["  files:"] + [f"    {label}: {files[key]}" for key, label in (
            ("report", "report"), ("eval", "evaluation"), ("bench", "benchmark"), ("model_card", "model card"),
            ("settings", "settings"))]
        lines += [f"    plot: {path}" for path in files["plots"]]
    return "\n".join(lines)


def _with_interval(entry: dict) -> str:
    """A score (or a paired difference's mean) and, where it has one, its 95% interval in brackets."""
    value = entry["score"] if "score" in entry else entry["mean"]
    return f"{value:.4f}" + (f" [{entry['ci95'][0]:.4f}, {entry['ci95'][1]:.4f}]" if entry["ci95"] else "")


def _format_test_split(test: dict) -> list[str]:
    """One line per measure of `score_test_split`: student, teacher and their difference, each with its 95% CI."""
    lines = [f"  test split (scene seed {test['seed']}, {test['num_scenes']} scenes the search never saw; "
             f"in brackets the {test['interval']}):"]
    for label, entry in test.items():
        if not isinstance(entry, dict):
            continue
        parts = [f"student {_with_interval(entry['student'])}"]
        if "teacher" in entry:
            parts.append(f"teacher {_with_interval(entry['teacher'])}")
        if "student_minus_teacher" in entry:
            parts.append(f"student - teacher {_with_interval(entry['student_minus_teacher'])}")
        direction = "higher" if entry["higher_is_better"] else "lower"
        lines.append(f"    {label} ({direction} is better): {'; '.join(parts)}")
    return lines


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


__all__ = ["CONFIG_FILE", "DEFAULT_TEACHER", "SCENE_SEEDS", "PipelineConfig", "check_output", "config_from_cli",
           "flag", "run_pipeline", "scene_splits", "score_test_split", "search_objective", "start_output",
           "validate_config"]
