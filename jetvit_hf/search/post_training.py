"""The whole post-training attention search in one call (`jetvit pipeline`), the project's main job.

distill a stage-1 supernet ({linear, window}) -> beam search stage 1 -> distill a stage-2 supernet ({stage-1
choice, full}) -> beam search stage 2 -> fine-tune the extracted model -> evaluate against the teacher -> benchmark ->
model card.

The default teacher is the small Depth Anything-layout checkpoint in `training/default_teacher/` (see
`training/make_default_teacher.py`), with procedural scenes as data and held-out scenes with exact depth for the search
objective and the evaluation, so the whole job runs offline on a CPU in minutes. Every stage writes into its own
directory under `output_dir`; a stage whose result already exists is skipped, and training stages resume from their
last checkpoint, so an interrupted run continues where it stopped.
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..io import atomic_write_json

DEFAULT_TEACHER = Path(__file__).resolve().parents[2] / "training" / "default_teacher"


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


def _train(stage_dir: Path, result: str, **fields) -> Path:
    from ..train import TrainConfig, reset_accelerate_state, train

    if (stage_dir / result).is_dir():
        return stage_dir / result
    reset_accelerate_state()
    train(TrainConfig(output_dir=str(stage_dir), resume=True, num_workers=0, **fields))
    return stage_dir / result


def _search(stage_dir: Path, **kwargs) -> Path:
    from .stage import run_search

    if not (stage_dir / "search_log.json").is_file():
        run_search(output=stage_dir, overwrite=True, **kwargs)
    return stage_dir / "model"


def run_pipeline(config: PipelineConfig) -> dict:
    """Run every stage (skipping finished ones) and return the summary also written to `output_dir/report.json`."""
    from ..bench import benchmark
    from ..convert import load_jetvit
    from ..data.scenes import scene_dataset
    from ..evaluation.depth import is_depth_model
    from ..evaluation.evaluator import run_evaluation
    from ..model_card import write_model_card

    teacher_path = Path(config.teacher)
    if not (teacher_path / "config.json").is_file() and teacher_path == DEFAULT_TEACHER:
        raise FileNotFoundError(
            f"The default teacher is missing from {DEFAULT_TEACHER}; rebuild it with "
            "`python training/make_default_teacher.py`."
        )
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output / "pipeline_config.json", asdict(config))
    teacher = load_jetvit(config.teacher)
    objective = config.objective if config.objective != "auto" else ("depth" if is_depth_model(teacher) else "feature")
    held_out = scene_dataset(config.eval_scenes, config.image_size, config.image_size, seed=config.eval_seed)
    training = dict(
        teacher=config.teacher, data=config.train_data, image_size=config.image_size, batch_size=config.batch_size,
        learning_rate=config.learning_rate, seed=config.seed, warmup_steps=max(1, config.distill_steps // 10),
    )
    searching = dict(teacher=teacher, data=held_out, objective=objective, beam_width=config.beam_width,
                     image_size=config.image_size)

    print("[1/7] distilling the stage-1 supernet ({linear, window} per layer)")
    stage1 = _train(output / "stage1", "supernet", mode="distill", max_steps=config.distill_steps,
                    student_overrides={"window_size": config.window_size}, **training)
    print("[2/7] beam search, stage 1 (linear -> window while it helps)")
    choice1 = _search(output / "search1", supernet=stage1, stage=1, **searching)
    print("[3/7] distilling the stage-2 supernet ({stage-1 choice, full} per layer)")
    stage2 = _train(output / "stage2", "supernet", mode="distill", student=str(choice1), candidates="stage2",
                    max_steps=config.distill_steps, **training)
    print("[4/7] beam search, stage 2 (-> full attention until the teacher's score)")
    choice2 = _search(output / "search2", supernet=stage2, stage=2, max_full=config.max_full, **searching)
    print("[5/7] fine-tuning the extracted model")
    finetuned = _train(output / "finetune", "model", mode="finetune", student=str(choice2),
                       max_steps=config.finetune_steps, depth_loss_weight=1.0 if is_depth_model(teacher) else 0.0,
                       **{**training, "warmup_steps": max(1, config.finetune_steps // 10)})
    provenance = finetuned / "jetvit_conversion.json"
    if not provenance.exists():  # names the source, so `jetvit bench` can time transformers' own model beside it
        from ..convert import convert_to_jetvit

        _, info = convert_to_jetvit(config.teacher, output_loading_info=True)
        atomic_write_json(provenance, info.to_dict())
    print("[6/7] evaluating against the teacher on held-out scenes")
    report = run_evaluation(finetuned, teacher, held_out, output=output / "eval.json", image_size=config.image_size)
    print("[7/7] benchmarking")
    on_gpu = torch.cuda.is_available()
    resolution = config.bench_resolution or ("1024x1024" if on_gpu else f"{config.image_size}x{config.image_size}")
    speed = benchmark(model=finetuned, resolution=resolution, device="cuda" if on_gpu else "cpu", progress=False)
    atomic_write_json(output / "bench.json", speed)
    write_model_card(finetuned, search_logs=[output / "search1" / "search_log.json",
                                             output / "search2" / "search_log.json"],
                     eval_report=report, bench_report=speed)
    summary = summarize(json.loads((finetuned / "config.json").read_text())["attention_types"], report, speed)
    atomic_write_json(output / "report.json", summary)
    print(format_summary(summary, finetuned))
    return summary


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
    summary["speed"] = {"device": speed.get("gpu") or speed.get("device"), "note": speed.get("note"),
                        "resolution": speed.get("resolution"), "latency_ms": latency, "ratios": speed.get("ratios")}
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
    speed = summary["speed"]
    timings = ", ".join(f"{name} {ms:.2f} ms" for name, ms in speed["latency_ms"].items())
    lines.append(f"  speed ({speed['device']}, {'x'.join(map(str, speed['resolution'] or []))}, batch 1): {timings}"
                 + (f"  [{speed['note']}]" if speed.get("note") else ""))
    return "\n".join(lines)


def config_from_cli(args) -> PipelineConfig:
    fields = {name: getattr(args, name) for name in PipelineConfig.__dataclass_fields__
              if getattr(args, name, None) is not None}
    return PipelineConfig(**fields)


__all__ = ["DEFAULT_TEACHER", "PipelineConfig", "run_pipeline", "config_from_cli"]
