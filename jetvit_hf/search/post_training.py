"""The whole post-training attention search in one call (`jetvit pipeline`), the project's main job.

distill a stage-1 supernet ({linear, window}) -> beam search stage 1 -> distill a stage-2 supernet ({stage-1
choice, full}) -> beam search stage 2 -> fine-tune the extracted model -> the same-budget baselines -> score every
model on the test split -> evaluate and benchmark the searched model -> model card.

The default teacher is the 12-layer Depth Anything checkpoint in `training/teachers/depth-dinov2-tiny/` (1,024
tokens at its 448 px; see `docs/teachers.md`); the data are procedural scenes from the batched renderer
(`data.render_stream`), so the whole job runs offline. Scenes come in three named splits, each from its own seed
range of `render_stream.SPLITS`, so they are disjoint by construction: training draws new scenes every epoch from
`train` (`--train-data render:train[:<scenes per epoch>]`; an image folder or a dataset dir also works), the search
scores layouts on the first `eval_scenes` scenes of `search`, and every reported number comes from the first
`eval_scenes` scenes of `test`, which nothing before the report sees.

Settings that depend on the machine (`image_size`, `eval_scenes`, `distill_steps`, `finetune_steps`, `batch_size`)
default to `PRESETS["gpu"]` when `--device` resolves to a CUDA GPU, else `PRESETS["cpu"]`; a value given explicitly
always wins. `pipeline_config.json` records the resolved values.

A teacher directory that also holds a linear probe (`probe.json`, `probe.safetensors`, as
`evaluation.probe.save_linear_probe` writes them) is a segmentation teacher: the search objective and the test
measure become the probe's mIoU against the rendered labels, and fine-tuning has no depth loss.

The baselines get exactly the searched model's training: all-linear and all-window conversions of the teacher
(`baselines/<type>/converted`), each distilled for 2 x `distill_steps` (the searched lineage went through two
supernet stages of `distill_steps`; `baselines/<type>/distill`) and fine-tuned for `finetune_steps` with the same
depth-loss weight (`baselines/<type>/finetune`). The untrained conversions are scored too.

`report.json`:
    attention_types, layer_indexing  the searched model's layout (0-based layers)
    preset                           "cpu" or "gpu": the `PRESETS` that filled the settings not given
    depth_vs_ground_truth, depth_vs_teacher, mean_feature_cosine
                                     headline numbers of the searched model from `eval.json` (where they apply)
    speed                            from `bench.json`: device, resolution, latency_ms per model, ratios, timing
    splits                           {"train": {"data", "seed_range", "scenes_per_epoch"} (an image folder: {"data"}),
                                      "search", "test": {"seed_range", "num_scenes"}, "disjoint": why they are};
                                     seed_range is [start, stop) in `render_stream.SPLITS`, of which the evaluation
                                     splits use the first num_scenes
    test_split                       `score_test_split`:
        split, seed_range, num_scenes, interval
        measures: {measure: {"higher_is_better", "reference": "teacher" | "ground_truth"}}, the search objective's
            `TEST_MEASURES` (depth: abs_rel_vs_teacher, abs_rel_vs_ground_truth, delta1_vs_ground_truth;
            segmentation: miou_vs_ground_truth)
        teacher: {measure: {"score", "ci95", "se"}}  (measures against ground truth only)
        models: {"searched" | "all_linear" | "all_window" | "all_linear_untrained" | "all_window_untrained": {
            "model": its directory,
            "training": {"distill_steps", "finetune_steps"}  (the same for all but the untrained ones: 0),
            "scores": {measure: {"score", "ci95", "se"}},
            "minus_teacher": {measure: {"mean", "ci95", "se"}}  (measures against ground truth only),
            "searched_minus_this": {measure: {"mean", "ci95", "se"}}  (the baselines only)}}
    files                            report, eval, bench, plots, model, model_card, baselines {name: dir}, settings

Intervals are 95% percentile bootstraps over the test scenes, differences paired (`evaluation.bootstrap`); a
measure without per-image scores has null `ci95` and `se`, and its difference is the difference of the scores.

Every setting is checked before any work starts (`validate_config`). Every stage writes into its own directory under
`output_dir`, next to `pipeline_config.json`, the settings the stages were made with. A rerun with the same settings
skips the finished stages (and says so), and a training stage resumes from its last checkpoint: one comes at least
every 10% of a stage, and SIGINT / SIGTERM writes one of the current step before stopping (`TrainingInterrupted`). A
rerun with other settings, or an output of an earlier `PROTOCOL`, is refused unless `overwrite` clears the directory,
so no result mixes stages trained with different settings.
"""

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..io import atomic_write_json, exclusive_use, read_json
from .beam import NOISE_FACTOR

if TYPE_CHECKING:
    from ..models.jetvit.configuration_jetvit import JetViTConfig

DEFAULT_TEACHER = Path(__file__).resolve().parents[2] / "training" / "teachers" / "depth-dinov2-tiny"
CONFIG_FILE = "pipeline_config.json"
# Bumped when what the stages are trained or scored on changes, so that an output of an earlier protocol is never
# reused: 2 = rendered splits (render_stream.SPLITS) and the same-budget baselines.
PROTOCOL = 2
NUM_STEPS = 12
CHECKPOINTS_PER_STAGE = 10  # a checkpoint every 10% of a training stage, fewer when they cost more than:
CHECKPOINT_OVERHEAD = 0.05  # of a stage's time (a ViT-L's 3 GB checkpoint took 6 s: 10 of them outlasted a short stage)
# The CPU benchmark of the pipeline's small model: one thread (a second one only adds scheduling jitter when the
# cores are shared), more iterations than `jetvit bench`'s CPU default, the median; still a smoke test.
CPU_BENCH = {"warmup": 10, "iters": 50, "threads": 1}
# The settings that depend on where the run happens, by the type of the resolved --device ("gpu" for CUDA). An
# explicitly given value always wins. image_scale: the training and evaluation size as a fraction of the teacher's
# native resolution (its config's image_size), rounded to a multiple of the patch size. Measured with the default
# teacher: the CPU preset takes about 7 minutes on 2 cores (224 px); the GPU preset took 9 minutes on one H200 (448
# px, batch 32): 4 of training, 1 of start-up and searches, 3.5 of scoring the test split (most of it the `evaluate`
# modules' storage, since made four times faster) and half a minute of benchmark.
PRESETS = {
    "cpu": {"image_scale": 0.5, "eval_scenes": 48, "distill_steps": 32, "finetune_steps": 24, "batch_size": 8},
    "gpu": {"image_scale": 1.0, "eval_scenes": 256, "distill_steps": 200, "finetune_steps": 150, "batch_size": 32},
}
BASELINES = ("linear", "window")  # the fixed layouts trained with the searched model's budget, all-<type>


@dataclass
class PipelineConfig:
    teacher: str = str(DEFAULT_TEACHER)
    output_dir: str = "runs/default"
    train_data: str = "render:train"  # render:train[:<scenes per epoch>], an image folder or a dataset dir
    eval_scenes: int | None = None  # rendered scenes in each of the search and the test split; default: PRESETS
    image_size: int | None = None  # default: PRESETS' image_scale of the teacher's native resolution
    window_size: int = 8
    distill_steps: int | None = None  # per supernet stage; the baselines distil for twice this; default: PRESETS
    finetune_steps: int | None = None  # default: PRESETS
    batch_size: int | None = None  # default: PRESETS
    learning_rate: float = 3e-4
    objective: str = "auto"  # depth (AbsRel against the teacher), segmentation (probe teachers), else feature
    noise_factor: float = NOISE_FACTOR  # a search step must gain more than this many paired bootstrap SEs
    beam_width: int = 2
    max_full: int = 1
    seed: int = 0  # seeds the training stages (data order, subnets, new weights)
    bench_resolution: str | None = None  # default: 1024x1024 on a GPU, the training size on a CPU
    latency_table: str | None = None  # `jetvit bench --layer-table` JSON: the searches' cost axis in estimated ms
    latency_budget_ms: float | None = None  # the searches skip layouts estimated slower than this (needs the table)
    device: str = "auto"  # search and evaluation: auto (the GPU when there is one), cpu, cuda or cuda:N
    dtype: str = "auto"  # search and evaluation: auto (bf16 autocast on a GPU, else float32), float32, bfloat16, float16


def flag(name: str) -> str:
    """The command-line flag of a `PipelineConfig` field."""
    return "--output" if name == "output_dir" else "--" + name.replace("_", "-")


@dataclass
class _Teacher:
    """What validation learns about the teacher without loading its weights: its JetViT config, whether it has a depth
    head, and the directory of its linear probe (a segmentation teacher) or None."""

    config: "JetViTConfig"
    depth: bool
    probe: Path | None


# ----------------------------------------------------------------------------------------------------------------------
# Checking the settings


def _error(name: str, value, reason: str) -> ValueError:
    return ValueError(f"{flag(name)} {value!r}: {reason}")


def _teacher_info(teacher: str) -> _Teacher:
    """The teacher's JetViT config, read from its config.json without weights, and its probe, checked against the
    renderer's classes. The teacher must be a source checkpoint: the baselines are converted from it."""
    from transformers import AutoConfig

    from ..convert import jetvit_config_from_source, resolve_source
    from ..data.render_layouts import CLASS_NAMES
    from ..evaluation.probe import PROBE_CONFIG, load_linear_probe

    if not (Path(teacher) / "config.json").is_file() and Path(teacher) == DEFAULT_TEACHER:
        raise _error("teacher", teacher, "the default teacher is missing; rebuild it with "
                                         "`python training/train_teacher.py depth --output "
                                         "training/teachers/depth-dinov2-tiny` on a GPU")
    try:
        path = resolve_source(teacher)
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} holds no config.json")
        converted = read_json(path / "config.json").get("model_type") == "jetvit"
        if not converted:
            config, _, _, jetvit_class = jetvit_config_from_source(AutoConfig.from_pretrained(path))
            probe = load_linear_probe(path) if (path / PROBE_CONFIG).is_file() else None
    except (ValueError, OSError) as error:
        raise _error("teacher", teacher, f"not a loadable teacher ({' '.join(str(error).split())})") from None
    if converted:
        raise _error("teacher", teacher, "a converted JetViT; pass the source checkpoint it was converted from (the "
                                         "all-linear and all-window baselines are converted from it)")
    if probe is not None:
        if probe.classifier.out_channels != len(CLASS_NAMES):
            raise _error("teacher", teacher, f"its linear probe predicts {probe.classifier.out_channels} classes, but "
                                             f"the rendered scenes have {len(CLASS_NAMES)} ({', '.join(CLASS_NAMES)})")
        if probe.classifier.in_channels != config.hidden_size:
            raise _error("teacher", teacher, f"its linear probe reads {probe.classifier.in_channels} channels, the "
                                             f"teacher's features have {config.hidden_size}")
    return _Teacher(config, jetvit_class.__name__ == "JetViTForDepthEstimation", path if probe is not None else None)


def _preset(device: str) -> str:
    """`"gpu"` when `device` resolves to a CUDA GPU, else `"cpu"` (the key of `PRESETS`)."""
    from ..device import check_device

    return "gpu" if check_device(device).type == "cuda" else "cpu"


def resolve_presets(config: PipelineConfig, teacher_config: "JetViTConfig") -> PipelineConfig:
    """`config` with each setting left at None filled from `PRESETS` for its device; image_size is the preset's
    `image_scale` of the teacher's native resolution, rounded to a multiple of its patch size (at least one patch)."""
    preset = PRESETS[_preset(config.device)]
    patch = teacher_config.patch_size
    scaled = preset["image_scale"] * teacher_config.image_size / patch
    defaults = {"image_size": max(1, int(scaled + 0.5)) * patch,
                **{name: preset[name] for name in ("eval_scenes", "distill_steps", "finetune_steps", "batch_size")}}
    return replace(config, **{name: value for name, value in defaults.items() if getattr(config, name) is None})


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


def _check_train_data(config: PipelineConfig) -> None:
    from ..data.render_stream import SPLITS

    data = config.train_data
    if data.startswith("scenes:"):
        raise _error("train_data", data, "procedural scenes come from the batched renderer now: use render:train "
                                         "(or render:train:<scenes per epoch>)")
    if data.startswith("render:"):
        split, _, count = data.removeprefix("render:").partition(":")
        if split != "train" or not (count == "" or count.isdigit()
                                    and config.batch_size <= int(count) <= len(SPLITS["train"])):
            raise _error("train_data", data, "write render:train or render:train:<scenes per epoch, at least "
                                             f"--batch-size ({config.batch_size})>; the search and test splits never "
                                             "train")
    elif not Path(data).is_dir():
        raise _error("train_data", data, "no such directory; pass an image folder, a dataset dir or render:train")


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
    if config.objective == "segmentation" and teacher.probe is None:
        raise _error("objective", config.objective, "needs a linear probe in the teacher directory (probe.json and "
                                                    "probe.safetensors, e.g. from training/linear_probe.py)")
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


def _check_latency(config: PipelineConfig, teacher: _Teacher) -> None:
    """The layer table must be for the teacher's depth; a budget needs the table and must admit all-linear, where
    both searches start."""
    from ..bench import estimate_latency

    budget = config.latency_budget_ms
    if budget is not None and (not isinstance(budget, (int, float)) or not budget > 0):
        raise _error("latency_budget_ms", budget, "must be a positive number of milliseconds")
    if config.latency_table is None:
        if budget is not None:
            raise _error("latency_budget_ms", budget, "needs --latency-table (write one with `jetvit bench "
                                                      "--model <converted teacher> --layer-table OUT.json`)")
        return
    if not Path(config.latency_table).is_file():
        raise _error("latency_table", config.latency_table, "no such file; write one with `jetvit bench --model "
                                                            "<converted teacher> --layer-table OUT.json`")
    table, layers = read_json(config.latency_table), teacher.config.num_hidden_layers
    keys = {"num_layers", "per_layer_ms", "remainder_ms"}
    if not isinstance(table, dict) or not keys <= set(table) or table["num_layers"] != layers:
        raise _error("latency_table", config.latency_table,
                     f"not a layer table of a {layers}-layer model (`jetvit bench --layer-table` of the teacher)")
    linear = estimate_latency(table, ["linear"] * layers)
    if budget is not None and linear > budget:
        raise _error("latency_budget_ms", budget, f"below all-linear's estimated {linear:.3f} ms, where the searches "
                                                  "start")


def validate_config(config: PipelineConfig) -> tuple[PipelineConfig, _Teacher]:
    """Check every setting before any work: the device and dtype, the teacher (it must exist and its config and probe
    load), then, with the settings not given filled from `PRESETS` (`resolve_presets`), the counts, the training
    data, the objective and the resolutions against the teacher, the latency table and budget. A `ValueError` names the
    flag. Returns the resolved config, with a local teacher path and the latency table made absolute (so the recorded
    settings name them wherever the command runs), and the teacher's info."""
    _check_placement(config)
    teacher = _teacher_info(config.teacher)
    config = resolve_presets(config, teacher.config)
    _check_counts(config)
    _check_train_data(config)
    _check_against_teacher(config, teacher)
    _check_latency(config, teacher)
    if Path(config.teacher).expanduser().is_dir():
        config = replace(config, teacher=str(Path(config.teacher).expanduser().resolve()))
    if config.latency_table is not None:
        config = replace(config, latency_table=str(Path(config.latency_table).resolve()))
    return config, teacher


def data_splits(config: PipelineConfig) -> dict:
    """The run's three named splits, as recorded in `report.json`: for each its seed range `[start, stop)` in
    `render_stream.SPLITS` and how many scenes it gives (training from an image folder or dataset dir: its path)."""
    from ..data.render_stream import SPLITS
    from ..train.loader import RENDER_SCENES_PER_EPOCH

    def seeds(name: str) -> list[int]:
        return [SPLITS[name].start, SPLITS[name].stop]

    evaluation = {name: {"seed_range": seeds(name), "num_scenes": config.eval_scenes} for name in ("search", "test")}
    if config.train_data.startswith("render:"):
        count = config.train_data.removeprefix("render:train").removeprefix(":")
        train = {"data": config.train_data, "seed_range": seeds("train"),
                 "scenes_per_epoch": int(count or RENDER_SCENES_PER_EPOCH)}
        disjoint = "by construction: each split renders scenes from its own seed range, and the ranges do not overlap"
    else:
        train = {"data": config.train_data}
        disjoint = ("by construction: search and test render scenes from their own, non-overlapping seed ranges; "
                    "training reads the images in train.data")
    return {"train": train, **evaluation, "disjoint": disjoint}


def check_output(config: PipelineConfig, overwrite: bool = False) -> None:
    """Refuse an `output_dir` this run cannot use: a file, a non-empty directory without `pipeline_config.json` (not a
    pipeline output, so never cleared), or, unless `overwrite`, one whose recorded settings differ from `config`'s
    (both resolved: see `validate_config`)."""
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
    `pipeline_config.json` (the resolved settings and `PROTOCOL`): a rerun with the same settings reuses its finished
    stages."""
    output = Path(config.output_dir)
    if overwrite and output.is_dir():
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output / CONFIG_FILE, {**asdict(config), "protocol": PROTOCOL})
    return output


def _check_same_settings(config: PipelineConfig, recorded: Path) -> None:
    try:
        before = json.loads(recorded.read_text())
    except ValueError as error:
        raise _error("output_dir", config.output_dir,
                     f"{CONFIG_FILE} is unreadable ({error}); pass --overwrite to clear it") from None
    now, defaults = asdict(config), asdict(PipelineConfig())
    protocol = before.pop("protocol", 1)
    retired = sorted(set(before) - set(now))
    if retired or protocol != PROTOCOL:  # e.g. eval_seed: that run searched and reported on one set of scenes
        what = f"it records {', '.join(retired)}, which no longer exist" if retired else (
            f"it was made with protocol {protocol}; this version, protocol {PROTOCOL}, trains and scores on other "
            "data")
        raise _error("output_dir", config.output_dir,
                     f"holds a run from an earlier version of the pipeline ({what}); pass --overwrite to rerun it, or "
                     "choose a new --output")
    # a setting added since that run was recorded had its default value then
    changed = [f"{flag(name)} {before.get(name, defaults[name])!r} there, {now[name]!r} now" for name in now
               if name != "output_dir" and before.get(name, defaults[name]) != now[name]]
    if changed:
        raise _error("output_dir", config.output_dir,
                     f"holds a run with other settings ({'; '.join(changed)}); rerun with those, pass --overwrite to "
                     "clear it, or choose a new --output")


# ----------------------------------------------------------------------------------------------------------------------
# The stages


_STARTED = time.monotonic()  # each announcement says how long the run has taken so far (restart_clock)


def restart_clock() -> None:
    """Count the elapsed time in the announcements from now: the start of a pipeline or findings run."""
    global _STARTED
    _STARTED = time.monotonic()


def _announce(step: int, title: str, note: str = "", total: int = NUM_STEPS) -> None:
    minutes, seconds = divmod(int(time.monotonic() - _STARTED), 60)
    print(f"[{step}/{total}] {title}{note} (at {minutes}:{seconds:02d})", flush=True)


def train_stage(step: int, title: str, stage_dir: Path, result: str, max_steps: int, total: int = NUM_STEPS,
           **settings) -> Path:
    """One training stage into `stage_dir` (skipped when `stage_dir/result` exists, else resumed from its last
    checkpoint), checkpointing every `1 / CHECKPOINTS_PER_STAGE` of it unless that would spend more than
    `CHECKPOINT_OVERHEAD` of its time writing them, with a linear warm-up over its first 10%. Once `result` is saved,
    the last checkpoint's `trainer_state.json` (the step and the training config) is kept as
    `stage_dir/trainer_state.json` and the checkpoints are deleted: nothing resumes from them, and for a ViT-L each
    holds 3 GB (fp32 weights and AdamW state), so the pipeline's seven stages filled a 64 GB disk.
    Stages train eagerly: whether compiling pays for itself over a stage's length has not been measured."""
    from ..train import TrainConfig, reset_accelerate_state, train
    from ..train.checkpoints import CHECKPOINTS_DIR, TRAINER_STATE_FILE, list_checkpoints, saved_step

    if (stage_dir / result).is_dir():
        _announce(step, title, f": already done in {stage_dir}, skipped", total)
        return stage_dir / result
    checkpoints = list_checkpoints(stage_dir / CHECKPOINTS_DIR)
    _announce(step, title, f": resuming at step {saved_step(checkpoints[-1])} of {max_steps}" if checkpoints else "",
              total)
    reset_accelerate_state()
    train(TrainConfig(output_dir=str(stage_dir), resume=True, num_workers=_loader_workers(), max_steps=max_steps,
                      warmup_steps=max(1, max_steps // 10), compile_backend=None,
                      checkpoint_every=max(1, max_steps // CHECKPOINTS_PER_STAGE),
                      max_checkpoint_overhead=CHECKPOINT_OVERHEAD, **settings))
    last = list_checkpoints(stage_dir / CHECKPOINTS_DIR)[-1]  # train() always checkpoints its last step
    atomic_write_json(stage_dir / TRAINER_STATE_FILE, read_json(last / TRAINER_STATE_FILE))
    shutil.rmtree(stage_dir / CHECKPOINTS_DIR, ignore_errors=True)
    return stage_dir / result


def _search(step: int, title: str, stage_dir: Path, **kwargs) -> Path:
    from .stage import run_search

    if (stage_dir / "search_log.json").is_file():
        _announce(step, title, f": already done in {stage_dir}, skipped")
    else:
        _announce(step, title)
        run_search(output=stage_dir, overwrite=True, **kwargs)
    return stage_dir / "model"


def objective_name(config: PipelineConfig, teacher: _Teacher) -> str:
    """`--objective`, with auto resolved: segmentation for a teacher with a probe, depth for a depth teacher, else
    feature."""
    if config.objective != "auto":
        return config.objective
    return "segmentation" if teacher.probe is not None else "depth" if teacher.depth else "feature"


def search_objective(config: PipelineConfig, teacher: _Teacher) -> dict:
    """The search's objective options. Depth: AbsRel against the teacher's own prediction, lower is better (it
    separates layouts about ten times more than delta1 against ground truth, which saturates). Segmentation: the
    mIoU of the teacher's probe against the rendered labels."""
    name = objective_name(config, teacher)
    if name == "depth":
        return {"objective": "depth", "metric": "abs_rel", "reference": "teacher"}
    if name == "segmentation":
        return {"objective": "segmentation", "probe": str(teacher.probe)}
    return {"objective": name}


def finetune_depth_weight(teacher: _Teacher) -> float:
    """Fine-tuning's depth-loss weight: 1 for a depth teacher, 0 for a segmentation (probe) teacher or none."""
    return 1.0 if teacher.depth and teacher.probe is None else 0.0


def training_settings(config: PipelineConfig) -> dict:
    return dict(teacher=config.teacher, data=config.train_data, image_size=config.image_size,
                batch_size=config.batch_size, learning_rate=config.learning_rate, seed=config.seed)


def _train_and_search(config: PipelineConfig, output: Path, teacher, info: _Teacher, search_set) -> Path:
    """Steps 1-5: both supernets and their searches (scored on `search_set`), then the fine-tuned model; returns its
    directory."""
    training = training_settings(config)
    searching = dict(teacher=teacher, data=search_set, split="search", beam_width=config.beam_width,
                     noise_factor=config.noise_factor, image_size=config.image_size, device=config.device,
                     dtype=config.dtype, latency_table=config.latency_table,
                     latency_budget_ms=config.latency_budget_ms, **search_objective(config, info))
    stage1 = train_stage(1, "distilling the stage-1 supernet ({linear, window} per layer)", output / "stage1",
                         "supernet", config.distill_steps, mode="distill",
                         student_overrides={"window_size": config.window_size}, **training)
    choice1 = _search(2, "beam search, stage 1 (linear -> window while it helps)", output / "search1",
                      supernet=stage1, stage=1, **searching)
    stage2 = train_stage(3, "distilling the stage-2 supernet ({stage-1 choice, full} per layer)", output / "stage2",
                         "supernet", config.distill_steps, mode="distill", student=str(choice1), candidates="stage2",
                         **training)
    choice2 = _search(4, "beam search, stage 2 (-> full attention until the teacher's score)", output / "search2",
                      supernet=stage2, stage=2, max_full=config.max_full, **searching)
    return train_stage(5, "fine-tuning the extracted model", output / "finetune", "model", config.finetune_steps,
                       mode="finetune", student=str(choice2), depth_loss_weight=finetune_depth_weight(info),
                       **training)


def _convert_baselines(config: PipelineConfig, output: Path) -> dict[str, Path]:
    """Step 6: the teacher converted to all-linear and all-window (`--window-size`), untrained:
    `baselines/<type>/converted`, skipped when both exist."""
    from ..convert import convert_to_jetvit, save_converted

    converted = {kind: output / "baselines" / kind / "converted" for kind in BASELINES}
    title = "converting the teacher to all-linear and all-window attention (the baselines)"
    if all((directory / "config.json").is_file() for directory in converted.values()):
        _announce(6, title, f": already done in {output / 'baselines'}, skipped")
        return converted
    _announce(6, title)
    for kind, directory in converted.items():
        with torch.random.fork_rng(devices=[]):  # the new convolutions' initial weights follow --seed
            torch.manual_seed(config.seed)
            model, conversion = convert_to_jetvit(config.teacher, kind, window_size=config.window_size,
                                                  output_loading_info=True)
        save_converted(model, directory, config.teacher, conversion, overwrite=True)
    return converted


def extract_model(supernet: Path) -> Path:
    """The one model a single-candidate supernet holds, as a JetViT directory beside it (what fine-tuning trains);
    kept when it exists."""
    from ..io import atomic_directory
    from ..train.supernet import JetViTSupernet

    model = supernet.parent / "model"
    if not (model / "config.json").is_file():
        with atomic_directory(model, overwrite=True) as staging:
            JetViTSupernet.from_pretrained(supernet).extract().save_pretrained(staging)
    return model


def _train_baselines(config: PipelineConfig, converted: dict[str, Path], info: _Teacher) -> dict[str, Path]:
    """Steps 7-10: each baseline gets the searched model's training: distilled (the fixed layout as the supernet's
    only candidate) for 2 x `distill_steps`, the searched lineage's two supernet stages, then fine-tuned for
    `finetune_steps` with the same depth-loss weight. Returns the fine-tuned models."""
    training = training_settings(config)
    steps = 2 * config.distill_steps
    finetuned = {}
    for index, (kind, start) in enumerate(converted.items()):
        directory = start.parent
        title = f"distilling the all-{kind} baseline ({steps} steps: the two supernet stages')"
        distilled = train_stage(7 + 2 * index, title, directory / "distill", "supernet", steps, mode="distill",
                                student=str(start), candidates=[kind], **training)
        finetuned[kind] = train_stage(8 + 2 * index, f"fine-tuning the all-{kind} baseline", directory / "finetune",
                                      "model", config.finetune_steps, mode="finetune",
                                      student=str(extract_model(distilled)),
                                      depth_loss_weight=finetune_depth_weight(info), **training)
    return finetuned


def _benchmark(config: PipelineConfig, model: Path) -> dict:
    """Step 12: transformers' model, JetViT all-full and the hybrid, timed one after the other with a progress bar. On
    a CPU a smoke test: the training size, batch 1, `CPU_BENCH` (one thread, more iterations, the median)."""
    from ..bench import CPU_SMOKE_NOTE, benchmark

    if torch.cuda.is_available():
        resolution = config.bench_resolution or "1024x1024"
        _announce(12, f"benchmarking hf, jetvit-full and jetvit on the GPU at {resolution}")
        return benchmark(model=model, resolution=resolution, device="cuda", progress=True)
    resolution = config.bench_resolution or f"{config.image_size}x{config.image_size}"
    _announce(12, f"benchmarking hf, jetvit-full and jetvit on the CPU at {resolution}, batch 1 ({CPU_SMOKE_NOTE}: "
                  f"median of {CPU_BENCH['iters']} after {CPU_BENCH['warmup']} warm-up, {CPU_BENCH['threads']} thread)")
    threads = torch.get_num_threads()
    torch.set_num_threads(CPU_BENCH["threads"])
    try:
        return benchmark(model=model, resolution=resolution, device="cpu", batch_size=1, warmup=CPU_BENCH["warmup"],
                         iters=CPU_BENCH["iters"], progress=True)
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------------------------------
# The test split

# The test split's measures by search objective: measure -> make_objective's name and options. "reference" says what
# a measure compares with: the teacher's own output (the teacher has no score of its own then) or ground truth.
TEST_MEASURES = {
    "depth": {"abs_rel_vs_teacher": {"objective": "depth", "metric": "abs_rel", "reference": "teacher"},
              "abs_rel_vs_ground_truth": {"objective": "depth", "metric": "abs_rel", "reference": "ground_truth"},
              "delta1_vs_ground_truth": {"objective": "depth", "metric": "delta1", "reference": "ground_truth"}},
    "segmentation": {"miou_vs_ground_truth": {"objective": "segmentation", "reference": "ground_truth"}},
    "feature": {"feature_vs_teacher": {"objective": "feature", "reference": "teacher"}},
    "ordinal": {"ordinal_vs_teacher": {"objective": "ordinal", "reference": "teacher"}},
}


def _interval(score: float, per_image: torch.Tensor | None) -> dict:
    """`{"score", "ci95", "se"}`: the score with the bootstrap of its per-image scores (nulls without them)."""
    from ..evaluation.bootstrap import bootstrap

    if per_image is None:
        return {"score": score, "ci95": None, "se": None}
    result = bootstrap(per_image)
    return {"score": score, "ci95": result["ci95"], "se": result["se"]}


def _difference(first: tuple, second: tuple) -> dict:
    """`{"mean", "ci95", "se"}` of first - second, two `(score, per-image scores)` on the same images: the paired
    bootstrap, or without per-image scores the difference of the scores with null interval."""
    from ..evaluation.bootstrap import paired_bootstrap

    if first[1] is None or second[1] is None:
        return {"mean": first[0] - second[0], "ci95": None, "se": None}
    difference = paired_bootstrap(first[1], second[1])
    return {key: difference[key] for key in ("mean", "ci95", "se")}


def score_test_split(config: PipelineConfig, teacher, info: _Teacher, models: dict[str, Path], test_set,
                     compare: dict[str, str] | None = None) -> dict:
    """Every model of `models` (`"searched"` first, then the baselines) on the test split, for each of the search
    objective's `TEST_MEASURES`: each score with its 95% bootstrap interval over scenes, and the paired differences
    model - teacher (measures against ground truth, where the teacher has a score) and searched - baseline. See the
    module docstring for the structure. `compare` (`{model: other model}`) adds `minus_compared`, the paired
    difference model - other, to those models' entries. The depth measures share one pass of the teacher
    (`DepthObjective.derived`) and one forward of each model (`objectives.assess_all`): the same numbers as building
    and assessing each measure on its own."""
    from ..convert import load_jetvit
    from ..data.render_stream import SPLITS
    from ..evaluation.bootstrap import NUM_RESAMPLES
    from ..evaluation.probe import load_linear_probe
    from .objectives import DepthObjective, assess_all, make_objective

    options = dict(image_size=config.image_size, device=config.device, dtype=config.dtype, progress=False)
    probe = load_linear_probe(info.probe) if info.probe is not None else None
    loaded = {name: load_jetvit(directory) for name, directory in models.items()}
    scores = {"split": "test", "seed_range": [SPLITS["test"].start, SPLITS["test"].stop],
              "num_scenes": config.eval_scenes,
              "interval": f"95% percentile bootstrap over scenes ({NUM_RESAMPLES} resamples, seed 0), differences "
                          "paired",
              "measures": {}, "teacher": {}, "models": {}}
    for name, directory in models.items():
        trained = not name.endswith("_untrained")
        scores["models"][name] = {"model": str(directory),
                                  "training": {"distill_steps": 2 * config.distill_steps if trained else 0,
                                               "finetune_steps": config.finetune_steps if trained else 0},
                                  "scores": {}, "minus_teacher": {}}
        if name != "searched":
            scores["models"][name]["searched_minus_this"] = {}
    objectives, references = {}, {}
    for label, settings in TEST_MEASURES[objective_name(config, info)].items():
        settings = dict(settings)
        name = settings.pop("objective")
        references[label] = settings["reference"]
        depth = next((o for o in objectives.values() if isinstance(o, DepthObjective)), None)
        if name == "depth" and depth is not None:  # the first depth measure's teacher pass serves them all
            objectives[label] = depth.derived(**settings)
        else:
            objectives[label] = make_objective(name, teacher, test_set, probe=probe, **options, **settings)
    all_assessed = assess_all(objectives, loaded)  # one forward of each model for all the depth measures
    for label, objective in objectives.items():
        assessed = all_assessed[label]
        against_truth = references[label] == "ground_truth"
        scores["measures"][label] = {"higher_is_better": objective.higher_is_better, "reference": references[label]}
        if against_truth:
            own = (objective.teacher_score(), objective.teacher_image_scores())
            scores["teacher"][label] = _interval(*own)
        for model_name, result in assessed.items():
            entry = scores["models"][model_name]
            entry["scores"][label] = _interval(*result)
            if against_truth:
                entry["minus_teacher"][label] = _difference(result, own)
            if "searched_minus_this" in entry:
                entry["searched_minus_this"][label] = _difference(assessed["searched"], result)
            if model_name in (compare or {}):
                other = compare[model_name]
                entry.setdefault("minus_compared", {"model": other})[label] = _difference(result, assessed[other])
    return scores


# ----------------------------------------------------------------------------------------------------------------------
# The whole run


def run_pipeline(config: PipelineConfig, overwrite: bool = False) -> dict:
    """Check the settings, then run every stage (announcing and skipping finished ones) and return the summary also
    written to `output_dir/report.json`. `overwrite` clears an earlier run in `output_dir` first. A second run on the
    same `output_dir` while this one works is refused (`io.exclusive_use`)."""
    restart_clock()
    config, info = validate_config(config)
    with exclusive_use(config.output_dir, "jetvit pipeline run"):
        return _run_stages(config, info, overwrite)


def _run_stages(config: PipelineConfig, info: _Teacher, overwrite: bool) -> dict:
    from ..convert import load_jetvit
    from ..data.render_stream import render_dataset
    from ..device import resolve_placement
    from ..evaluation.evaluator import run_evaluation
    from ..evaluation.real_photos import real_photo_report
    from ..model_card import write_model_card
    from .summary import format_summary, summarize

    check_output(config, overwrite)
    teacher = load_jetvit(config.teacher)
    output = start_output(config, overwrite)
    render_on = resolve_placement(config.device, config.dtype).device  # the GPU renders a scene in milliseconds
    search_set, test_set = (render_dataset(split, config.eval_scenes, config.image_size, config.image_size,
                                           device=render_on) for split in ("search", "test"))
    finetuned = _train_and_search(config, output, teacher, info, search_set)
    converted = _convert_baselines(config, output)
    baselines = _train_baselines(config, converted, info)
    _announce(11, f"scoring every model on the test split ({config.eval_scenes} scenes the search never saw) and "
                  "evaluating the searched one against the teacher")
    models = {"searched": finetuned, **{f"all_{kind}": baselines[kind] for kind in BASELINES},
              **{f"all_{kind}_untrained": converted[kind] for kind in BASELINES}}
    test_scores = score_test_split(config, teacher, info, models, test_set)
    # segmentation only through the teacher's own probe: no probe is fitted to the test split's labels
    tasks = ["features", *(["depth"] if info.depth else []), *(["segmentation"] if info.probe else [])]
    report = run_evaluation(finetuned, teacher, test_set, output=output / "eval.json", tasks=tasks,
                            image_size=config.image_size, probe=info.probe, device=config.device, dtype=config.dtype)
    speed = _benchmark(config, finetuned)
    atomic_write_json(output / "bench.json", speed)
    search_logs = [output / "search1" / "search_log.json", output / "search2" / "search_log.json"]
    write_model_card(finetuned, search_logs=search_logs, eval_report=report, bench_report=speed)
    summary = summarize(json.loads((finetuned / "config.json").read_text())["attention_types"], report, speed)
    summary["preset"] = _preset(config.device)
    if info.depth:  # a sanity check off the renderer: scikit-image's photos and the Middlebury motorcycle pair
        summary["real_photos"] = real_photo_report(load_jetvit(finetuned), teacher, image_size=config.image_size,
                                                   device=config.device, dtype=config.dtype)
    summary["splits"], summary["test_split"] = data_splits(config), test_scores
    summary["files"] = _result_files(output, models)
    atomic_write_json(output / "report.json", summary)
    print(format_summary(summary, finetuned))
    return summary


# ----------------------------------------------------------------------------------------------------------------------
# The summary


def _result_files(output: Path, models: dict[str, Path]) -> dict:
    return {
        "report": str(output / "report.json"),
        "eval": str(output / "eval.json"),
        "bench": str(output / "bench.json"),
        "plots": [str(path) for stage in ("search1", "search2") for path in sorted((output / stage).glob("*.png"))],
        "model": str(models["searched"]),
        "model_card": str(models["searched"] / "README.md"),
        "baselines": {name: str(directory) for name, directory in models.items() if name != "searched"},
        "settings": str(output / CONFIG_FILE),
    }


def config_from_cli(args) -> PipelineConfig:
    fields_given = {spec.name: getattr(args, spec.name) for spec in fields(PipelineConfig)
                    if getattr(args, spec.name, None) is not None}
    return PipelineConfig(**fields_given)


__all__ = ["CONFIG_FILE", "DEFAULT_TEACHER", "PRESETS", "TEST_MEASURES", "PipelineConfig", "check_output",
           "config_from_cli", "data_splits", "flag", "objective_name", "resolve_presets", "run_pipeline",
           "score_test_split", "search_objective", "start_output", "validate_config"]
