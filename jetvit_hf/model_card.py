"""Model cards for JetViT checkpoints, rendered from `model_cards/jetvit.md` into the model directory's README.md.

The card states the base model, the attention layout, a summary of the search logs, metrics against the teacher (from
a `jetvit eval` report), the speed table (from a `jetvit bench` report) and how to load the model.
"""

import json
import os
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from .io import read_json

TEMPLATE = Path(__file__).resolve().parent.parent / "model_cards" / "jetvit.md"
# head class -> (Auto class, pipeline tag)
HEADS = {
    "JetViTForDepthEstimation": ("AutoModelForDepthEstimation", "depth-estimation"),
    "JetViTForSemanticSegmentation": ("AutoModelForSemanticSegmentation", "image-segmentation"),
    "JetViTBackbone": ("AutoBackbone", "image-feature-extraction"),
    "JetViTModel": ("AutoModel", "image-feature-extraction"),
}


def _read_json(path) -> dict | None:
    if path is None:
        return None
    if isinstance(path, dict):
        return path
    return read_json(path)


def _hub_id(source: str | None) -> str | None:
    """`org/name` when `source` looks like a Hub repo id rather than a local path."""
    if not source or os.path.isabs(source) or source.startswith(".") or source.count("/") != 1 or Path(source).exists():
        return None
    return source


def _title(repo_id: str | None, base_name: str | None) -> str:
    """The repo's name, else what the model is: a JetViT hybrid of its base model."""
    if repo_id:
        return repo_id.split("/")[-1]
    return f"JetViT (hybrid of {base_name})" if base_name else "JetViT (hybrid attention)"


def _search_section(logs: list[dict]) -> dict | None:
    if not logs:
        return None
    stages = [
        {
            "name": f"{log['stage']} ({log.get('stop_reason', 'done')})",
            "evaluated": len(log.get("evaluations", [])),
            "best": f"{log['best_score']:.4g}",
            "latency": f"{log['best_latency_ms']:.3f}" if log.get("best_latency_ms") is not None else "-",
        }
        for log in logs
    ]
    final = logs[-1]
    objective = final.get("objective", {}).get("name", "objective")
    summary = (
        f"Greedy beam search (width {final.get('beam_width')}) on the {objective} objective, stage by stage as in the "
        f"paper: stage 1 turns linear-attention layers into window attention while it helps, stage 2 turns layers into "
        f"full attention until the teacher's score is reached. The full log of every evaluated assignment is "
        f"`search_log.json`."
    )
    # a search given a `jetvit bench --layer-table` priced its layouts: the choice's estimated latency gets a column
    priced = any(log.get("best_latency_ms") is not None for log in logs)
    return {"summary": summary, "objective": objective, "stages": stages, "priced": priced}


def _metric(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _evaluation_section(report: dict | None) -> dict | None:
    if not report:
        return None
    rows = []
    depth = report.get("depth", {})
    for mode, metrics in depth.get("vs_ground_truth", {}).get("student", {}).items():
        teacher = depth["vs_ground_truth"]["teacher"][mode]
        for name in ("abs_rel", "delta1"):
            rows.append({"name": f"depth vs ground truth, {mode} mode: {name}",
                         "student": _metric(metrics.get(name)), "teacher": _metric(teacher.get(name))})
    for mode, metrics in depth.get("vs_teacher", {}).items():
        for name in ("abs_rel", "delta1"):
            rows.append({"name": f"depth vs the teacher's prediction, {mode} mode: {name}",
                         "student": _metric(metrics.get(name)), "teacher": "reference"})
    if "ordinal" in report:
        rows.append({"name": "ordinal pair accuracy", "student": _metric(report["ordinal"].get("accuracy")),
                     "teacher": "reference"})
    if "segmentation" in report:
        segmentation = report["segmentation"]
        rows.append({"name": "segmentation mIoU (linear probe)",
                     "student": _metric(segmentation.get("student", {}).get("mean_iou")),
                     "teacher": _metric(segmentation.get("teacher", {}).get("mean_iou"))})
    if "features" in report:
        rows.append({"name": "mean per-layer feature cosine", "student": _metric(report["features"]["mean_cosine"]),
                     "teacher": "1"})
    note = f"From `jetvit eval` on {report.get('num_images', 'the')} held-out images."
    return {"note": note, "rows": rows}


def _speed_section(report: dict | None) -> dict | None:
    if not report or "results" not in report:
        return None
    rows = []
    for name, result in report["results"].items():
        if result.get("status") not in (None, "ok"):
            continue
        latency, throughput = result.get("latency", {}), result.get("throughput", {})
        rows.append({
            "name": name,
            "latency": f"{latency['median_ms']:.2f}" if latency.get("median_ms") is not None else "n/a",
            "throughput": f"{throughput['images_per_s']:.1f} img/s (batch {throughput['batch_size']})"
            if throughput.get("images_per_s") else "n/a",
        })
    resolution = report.get("resolution")
    note = (f"`jetvit bench` on {report.get('gpu') or report.get('device')}, {report.get('dtype')}, "
            f"{'x'.join(map(str, resolution)) if resolution else ''}, all models measured in one run."
            + (f" {report['note']}" if report.get("note") else ""))
    return {"note": note, "rows": rows}


def render_model_card(model_dir: str | os.PathLike, *, repo_id: str | None = None, base_model: str | None = None,
                      search_logs=(), eval_report=None, bench_report=None) -> ModelCard:
    """The card of the JetViT checkpoint in `model_dir`; logs and reports are paths or already-loaded dicts."""
    if not TEMPLATE.is_file():
        raise FileNotFoundError(
            f"The model-card template {TEMPLATE} is missing (install jetvit-hf from its source tree)."
        )
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"{model_dir} is not a model directory (no config.json).")
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") != "jetvit":
        raise ValueError(f"{model_dir} is not a JetViT checkpoint (model_type {config.get('model_type')!r}).")
    conversion_file = model_dir / "jetvit_conversion.json"  # the provenance: which source it was converted from
    conversion = _read_json(conversion_file) if conversion_file.is_file() else {}
    source = conversion.get("source")
    base_model = base_model or _hub_id(source)
    base_name = base_model or (Path(source).name if source else None)  # a local source by its directory's name
    architecture = (config.get("architectures") or ["JetViTModel"])[0]
    auto_class, pipeline_tag = HEADS.get(architecture, HEADS["JetViTModel"])
    attention_types = config.get("attention_types") or ["full"] * config["num_hidden_layers"]
    card_data = ModelCardData(
        library_name="transformers", pipeline_tag=pipeline_tag, base_model=base_model,
        tags=["jetvit", "hybrid-attention", "linear-attention", "vision"],
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        title=_title(repo_id, base_name),
        repo_id=repo_id or str(model_dir),
        base_model=base_model,
        base_name=base_name,
        source_architecture=conversion.get("source_architecture"),
        attention_types=attention_types,
        num_layers=len(attention_types),
        num_linear=attention_types.count("linear"),
        num_window=attention_types.count("window"),
        num_full=attention_types.count("full"),
        window_size=config.get("window_size", 16),
        auto_class=auto_class,
        pipeline_tag=pipeline_tag,
        search=_search_section([_read_json(log) for log in search_logs]),
        evaluation=_evaluation_section(_read_json(eval_report)),
        speed=_speed_section(_read_json(bench_report)),
    )


def write_model_card(model_dir: str | os.PathLike, **kwargs) -> Path:
    """Render the card and write it atomically as `model_dir/README.md`."""
    card = render_model_card(model_dir, **kwargs)
    path = Path(model_dir) / "README.md"
    staging = path.with_name(".README.md.tmp")
    staging.write_text(str(card))
    os.replace(staging, path)
    return path
