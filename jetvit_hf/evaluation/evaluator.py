"""Evaluation of a JetViT against its teacher (`evaluate_model`; `run_evaluation` from paths, for `jetvit eval`) and
a plain-text table of the report's headline numbers (`format_report`).

- Depth: AbsRel and delta1..3 after per-image least-squares scale-shift alignment in disparity space, in both modes of
  `metrics.DepthMetrics` ("disparity", Depth Anything's; "depth", MiDaS/Marigold's), against the teacher's predicted
  disparity and, where the data has a `depth` column, against ground truth.
- Ordinal accuracy: DA-2K's annotation format, or pairs sampled where the teacher's disparity ratio exceeds 1.1.
- Segmentation: mIoU and pixel accuracy over the whole dataset (ignore index 255) of a linear probe on the layer-normed
  last-layer patch tokens, trained on frozen features following the DINOv3 protocol (`probe.train_linear_probe`).
- Features: per layer, the cosine between the student's and the teacher's patch tokens after each layer, both normed
  with their final LayerNorm.

Evaluation images are resized for the model (`images.model_input_size`); predictions are compared with ground truth at
the image's original resolution (bilinear upsampling) and with the teacher at the model's resolution. Both models and
the images run on one device, the forwards in one compute dtype (`jetvit_hf.device`: by default a GPU with bfloat16
autocast when there is one, else the CPU in float32); feature and segmentation metrics are computed in float32/float64
on that device, depth metrics in float64 on the CPU through the `evaluate` module `hf_metrics.JetViTDepthMetric`
(segmentation's numbers equal `hf_metrics.JetViTMeanIoU`'s, which the report names). The report records the device,
the dtype and the wall-clock seconds.
"""

import os
import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..convert import load_jetvit
from ..device import Placement, resolve_placement
from ..io import atomic_write_json
from ..models.jetvit.modeling_jetvit import (
    JetViTForDepthEstimation,
    JetViTForSemanticSegmentation,
    JetViTLinearProbeHead,
)
from ..train.targets import check_teacher_student, unwrap
from .depth import (
    ORDINAL_RATIO,
    is_depth_model,
    make_depth_metrics,
    ordinal_accuracy,
    ordinal_hits,
    sample_ordinal_pairs,
)
from .images import (
    IGNORE_INDEX,
    EvalImages,
    default_image_size,
    load_da2k_images,
    load_eval_images,
    model_inputs,
    require_labels,
    resize_map,
    within_ground_truth,
)
from .metrics import DEPTH_MODES, SegmentationMetrics
from .probe import check_probe, load_linear_probe, probe_features, probe_logits, train_linear_probe

EVAL_TASKS = ("features", "depth", "segmentation")
REPORT_SCHEMA = "jetvit-eval/1"


def _layer_outputs(model: torch.nn.Module, pixel_values: torch.Tensor):
    """Every layer's patch tokens normed with the final LayerNorm (`[B, N, C]` each, layer order) and the predicted
    depth (depth models) from one forward pass."""
    base = unwrap(model)
    prefix = base.config.num_prefix_tokens
    if isinstance(base, JetViTForDepthEstimation):
        outputs = base(pixel_values, output_hidden_states=True, return_dict=True)
        layernorm, hidden_states, prediction = base.jetvit.layernorm, outputs.hidden_states, outputs.predicted_depth
    else:
        encoder = base.jetvit if isinstance(base, JetViTForSemanticSegmentation) else base
        outputs = encoder(pixel_values, output_hidden_states=True, return_dict=True)
        layernorm, hidden_states, prediction = encoder.layernorm, outputs.hidden_states, None
    return [layernorm(hidden)[:, prefix:] for hidden in hidden_states[1:]], prediction


def _resolve_tasks(tasks, model, images: EvalImages | None, probe) -> list[str]:
    if tasks is None and images is None:
        return ["depth"]
    if tasks is None:
        tasks = ["features"]
        tasks += ["depth"] if is_depth_model(model) else []
        tasks += ["segmentation"] if probe is not None or (images is not None and images.labels is not None) else []
        return tasks
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    unknown = [task for task in tasks if task not in EVAL_TASKS]
    if unknown:
        raise ValueError(f"Unknown evaluation task(s) {unknown}; allowed: {list(EVAL_TASKS)}.")
    if "depth" in tasks and not is_depth_model(model):
        raise ValueError(f"The depth task needs a depth model (JetViTForDepthEstimation), got "
                         f"{type(unwrap(model)).__name__}.")
    return tasks


def evaluate_model(model: torch.nn.Module, teacher: torch.nn.Module, images: EvalImages | None = None, *,
                   tasks=None, depth_modes: Sequence[str] = DEPTH_MODES, da2k: str | os.PathLike | None = None,
                   probe: JetViTLinearProbeHead | None = None, num_labels: int | None = None,
                   probe_steps: int = 1000, pairs_per_image: int = 64, seed: int = 0, progress: bool = True,
                   device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
                   batch_size: int | None = None) -> dict:
    """Evaluate `model` against `teacher` (both JetViT models of one source) on `images`; returns the report dict.

    Args:
        tasks: Any of `EVAL_TASKS`. Default: features; depth (with ordinal accuracy) for depth models; segmentation
            when a probe is given or the images have labels.
        depth_modes: `DepthMetrics` modes to report (`"disparity"`: DA mode, `"depth"`: MiDaS/Marigold mode).
        da2k: A DA-2K `annotations.json` (images beside it): ordinal accuracy on its pairs (depth models). Without it,
            ordinal accuracy uses `pairs_per_image` pairs sampled where the teacher's disparity ratio exceeds 1.1.
        probe: A linear probe (`load_linear_probe`), applied to both models. Without one, a probe is trained on the
            teacher's features of `images` (against their labels) for `probe_steps` steps.
        device, dtype: Where the models run and the dtype of their forwards (`device.resolve_placement`).
        batch_size: DA-2K images per forward (default `Placement.batch_size()`); `images` come batched.

    Both models (and the probe) are put in eval mode and moved to the device.
    """
    check_teacher_student(unwrap(teacher).config, unwrap(model).config)
    tasks = _resolve_tasks(tasks, model, images, probe)
    if da2k is not None and not is_depth_model(model):
        raise ValueError("DA-2K ordinal accuracy needs a depth model (JetViTForDepthEstimation).")
    if images is None and (da2k is None or any(task != "depth" for task in tasks)):
        raise ValueError("Evaluation needs images (--data) unless it is only the depth task with --da2k.")
    placement = resolve_placement(device, dtype)
    began = time.perf_counter()
    for network in (model, teacher):
        placement.module(network).eval()
    images = images.to(placement.device) if images is not None else None
    report = {"schema": REPORT_SCHEMA, "tasks": tasks, "attention_types": list(unwrap(model).config.attention_types),
              "layer_indexing": "0-based", "device": placement.describe()}
    if "segmentation" in tasks:
        if probe is None:
            require_labels(images, "Segmentation without a given probe")
            probe = train_linear_probe(teacher, images, num_labels, steps=probe_steps, seed=seed, progress=progress,
                                       placement=placement)
            source = f"trained on the teacher's features of the evaluation images ({probe_steps} steps)"
        else:
            source = "given"
        check_probe(probe, model)
        report["segmentation"] = _segmentation_report(model, teacher, images, probe.to(placement.device).eval(),
                                                      source, progress, placement)
    if images is not None:
        report["num_images"] = len(images)
    if images is not None and ("features" in tasks or "depth" in tasks):
        report.update(_main_pass(model, teacher, images, tasks, depth_modes, da2k is None, pairs_per_image, seed,
                                 progress, placement))
    if da2k is not None:
        report["ordinal"] = _da2k_report(model, teacher, da2k, progress, placement, placement.batch_size(batch_size))
    report["seconds"] = time.perf_counter() - began
    return report


def _main_pass(model, teacher, images: EvalImages, tasks, depth_modes, teacher_pairs: bool, pairs_per_image: int,
               seed: int, progress: bool, placement: Placement) -> dict:
    """Per-layer cosine, depth metrics and teacher-pair ordinal accuracy, from one forward of each model per batch."""
    cosine_sums = torch.zeros(unwrap(model).config.num_hidden_layers, dtype=torch.float64, device=placement.device)
    token_count = 0
    student_depth, teacher_depth = [], []
    with torch.inference_mode():
        for pixel_values in tqdm(images.batches, desc="jetvit eval", disable=not progress):
            with placement.autocast():
                student_layers, student_prediction = _layer_outputs(model, model_inputs(pixel_values, model))
                teacher_layers, teacher_prediction = _layer_outputs(teacher, model_inputs(pixel_values, teacher))
            for layer, (student, reference) in enumerate(zip(student_layers, teacher_layers)):
                cosine_sums[layer] += F.cosine_similarity(student.double(), reference.double(), dim=-1).sum()
            token_count += student_layers[0].shape[0] * student_layers[0].shape[1]
            if "depth" in tasks:
                student_depth += list(student_prediction.float())
                teacher_depth += list(teacher_prediction.float())
    result = {}
    if "features" in tasks:
        per_layer = (cosine_sums / token_count).tolist()
        result["features"] = {
            "per_layer_cosine": per_layer,
            "mean_cosine": float(np.mean(per_layer)),
            "definition": "per layer (0-based), mean over patch tokens and images of the cosine between the "
                          "student's and the teacher's hidden states after that layer, each normed with its final "
                          "LayerNorm",
        }
    if "depth" in tasks:
        result["depth"] = _depth_report(student_depth, teacher_depth, images, depth_modes)
    if "depth" in tasks and teacher_pairs:
        result["ordinal"] = _teacher_pair_ordinal(student_depth, teacher_depth, images, pairs_per_image, seed)
    return result


def _depth_report(student_depth: list[torch.Tensor], teacher_depth: list[torch.Tensor], images: EvalImages,
                  depth_modes) -> dict:
    """Depth metrics of the student against the teacher and, where the images have depth, of both against it."""
    references = teacher_depth
    if images.depth is not None:  # compare where the scene has measurable depth, not in the sky
        references = [within_ground_truth(target, depth) for target, depth in zip(teacher_depth, images.depth)]
    depth = {"vs_teacher": {mode: _depth_module_result(mode, student_depth, references, False)
                            for mode in depth_modes}}
    if images.depth is not None:
        depth["vs_ground_truth"] = {}
        for model_name, predictions in (("student", student_depth), ("teacher", teacher_depth)):
            resized = [resize_map(prediction, target.shape) for prediction, target in zip(predictions, images.depth)]
            depth["vs_ground_truth"][model_name] = {
                mode: _depth_module_result(mode, resized, images.depth, True) for mode in depth_modes
            }
    return depth


def _depth_module_result(mode: str, predictions: list[torch.Tensor], targets: list[torch.Tensor],
                         target_is_depth: bool) -> dict:
    """`hf_metrics.JetViTDepthMetric` (set up by `make_depth_metrics`) of per-image predictions against targets."""
    # Imported here: `evaluate` (the training extra) is needed only once depth metrics are computed.
    from .hf_metrics import JetViTDepthMetric

    metric = JetViTDepthMetric.like(make_depth_metrics(mode, targets, target_is_depth), keep_in_memory=True)
    metric.add_batch(predictions=[prediction.flatten().double().cpu().numpy() for prediction in predictions],
                     references=[target.flatten().double().cpu().numpy() for target in targets])
    return metric.compute()


def _teacher_pair_ordinal(student_depth: list[torch.Tensor], teacher_depth: list[torch.Tensor], images: EvalImages,
                          pairs_per_image: int, seed: int) -> dict:
    """Ordinal accuracy of the student on pairs sampled (at the original resolution, as DA-2K's) where the teacher's
    disparity ratio exceeds `ORDINAL_RATIO`. Without any pair (a nearly flat teacher) the accuracy is undefined."""
    generator = torch.Generator().manual_seed(seed)
    pairs = [sample_ordinal_pairs(resize_map(reference, size), pairs_per_image, generator)
             for reference, size in zip(teacher_depth, images.original_sizes)]
    correct, total = ordinal_hits([student_depth], images, pairs)
    return {"source": f"pairs sampled where the teacher's disparity ratio > {ORDINAL_RATIO}",
            "accuracy": correct / total if total else None, "num_pairs": total}


def _segmentation_report(model, teacher, images: EvalImages, probe, source: str, progress: bool,
                         placement: Placement) -> dict:
    num_labels = probe.classifier.out_channels
    names = ("student", "teacher", "student_vs_teacher") if images.labels is not None else ("student_vs_teacher",)
    metrics = {name: SegmentationMetrics(num_labels, IGNORE_INDEX) for name in names}
    with torch.inference_mode():
        for pixel_values, first in tqdm(list(images.batch_slices()), desc="jetvit eval: segmentation",
                                        disable=not progress):
            with placement.autocast():
                student_maps = probe_features(model, model_inputs(pixel_values, model))
                teacher_maps = probe_features(teacher, model_inputs(pixel_values, teacher))
            for offset, (student_map, teacher_map) in enumerate(zip(student_maps.float(), teacher_maps.float())):
                size = images.original_sizes[first + offset]
                student = probe_logits(probe, student_map, size).argmax(0)
                reference = probe_logits(probe, teacher_map, size).argmax(0)
                metrics["student_vs_teacher"].update(student, reference)
                if images.labels is not None:
                    metrics["student"].update(student, images.labels[first + offset])
                    metrics["teacher"].update(reference, images.labels[first + offset])
    # The numbers are those of `hf_metrics.JetViTMeanIoU`, accumulated here per batch on the device with the
    # `SegmentationMetrics` it delegates to rather than by storing every label map in its Arrow table.
    report = {"probe": source, "num_labels": num_labels, "ignore_index": IGNORE_INDEX,
              "metric_module": "JetViTMeanIoU"}
    for name, metric in metrics.items():
        computed = metric.compute()
        report[name] = {key: computed[key] for key in ("mean_iou", "pixel_accuracy", "mean_accuracy")}
    return report


def _da2k_report(model, teacher, annotations_path, progress: bool, placement: Placement, batch_size: int) -> dict:
    config = unwrap(model).config
    images, pairs = load_da2k_images(annotations_path, config.patch_size, default_image_size(config), batch_size)
    images = images.to(placement.device)
    result = {"source": f"DA-2K annotations {annotations_path}", "num_pairs": sum(len(p) for p in pairs)}
    for name, network in (("accuracy", model), ("teacher_accuracy", teacher)):
        result[name] = ordinal_accuracy(network, images, pairs, progress, placement)
    return result


def run_evaluation(model, teacher, data=None, *, output: str | os.PathLike | None = None, tasks=None,
                   depth_modes: Sequence[str] = DEPTH_MODES, da2k=None, probe=None, num_labels: int | None = None,
                   probe_steps: int = 1000, num_images: int | None = None, image_size=None,
                   batch_size: int | None = None, pairs_per_image: int = 64, seed: int = 0, progress: bool = True,
                   device: str | torch.device = "auto", dtype: str | torch.dtype = "auto") -> dict:
    """`evaluate_model` from paths (or models): `model` and `teacher` through `load_jetvit`, `data` through
    `load_eval_images` (resized for the model, default size its config's `image_size`; `batch_size` images per
    forward, default 16 on a GPU, 8 on the CPU), `probe` through `load_linear_probe`, on `device` in `dtype`
    (`device.resolve_placement`; an unusable device fails before anything is loaded). The report records its inputs;
    with `output`, it is written there atomically as JSON."""
    placement = resolve_placement(device, dtype)
    batch_size = placement.batch_size(batch_size)
    sources = {"model": model, "teacher": teacher, "data": data, "da2k": da2k, "probe": probe}
    model = model if isinstance(model, torch.nn.Module) else load_jetvit(model)
    teacher = teacher if isinstance(teacher, torch.nn.Module) else load_jetvit(teacher)
    config = unwrap(model).config
    image_size = image_size or default_image_size(config)
    images = None
    if data is not None:
        images = load_eval_images(data, config.patch_size, image_size, num_images, batch_size)
    if isinstance(probe, (str, os.PathLike)):
        probe = load_linear_probe(probe)
    report = evaluate_model(model, teacher, images, tasks=tasks, depth_modes=depth_modes, da2k=da2k, probe=probe,
                            num_labels=num_labels, probe_steps=probe_steps, pairs_per_image=pairs_per_image,
                            seed=seed, progress=progress, device=placement.device, dtype=placement.dtype,
                            batch_size=batch_size)
    report["inputs"] = {name: str(value) if isinstance(value, (str, os.PathLike)) else type(value).__name__
                        for name, value in sources.items() if value is not None}
    report["image_size"] = list(image_size) if isinstance(image_size, (tuple, list)) else image_size
    report["batch_size"] = batch_size
    if output is not None:
        atomic_write_json(output, report)
    return report


def format_report(report: dict) -> str:
    """A short plain-text table of a report's headline numbers."""
    lines = ["| metric | value |", "|---|---:|"]
    features = report.get("features")
    if features:
        lines.append(f"| feature cosine, mean over layers | {features['mean_cosine']:.4f} |")
        worst = int(np.argmin(features["per_layer_cosine"]))
        lines.append(f"| feature cosine, worst layer ({worst}, 0-based) | {features['per_layer_cosine'][worst]:.4f} |")
    for reference, by_model in report.get("depth", {}).items():
        rows = {"student": by_model} if reference == "vs_teacher" else by_model
        for name, by_mode in rows.items():
            for mode, values in by_mode.items():
                label = f"depth {reference.replace('_', ' ')}" + ("" if reference == "vs_teacher" else f", {name}")
                lines.append(f"| {label} ({mode} mode): AbsRel / delta1 | {values['abs_rel']:.4f} / "
                             f"{values['delta1']:.4f} |")
    ordinal = report.get("ordinal")
    if ordinal:
        teacher = f" (teacher {ordinal['teacher_accuracy']:.4f})" if "teacher_accuracy" in ordinal else ""
        lines.append(f"| ordinal accuracy, {ordinal['num_pairs']} pairs | {ordinal['accuracy']:.4f}{teacher} |")
    segmentation = report.get("segmentation")
    if segmentation:
        for name in ("student", "teacher", "student_vs_teacher"):
            if name in segmentation:
                values = segmentation[name]
                lines.append(f"| segmentation {name.replace('_', ' ')}: mIoU / aAcc | {values['mean_iou']:.4f} / "
                             f"{values['pixel_accuracy']:.4f} |")
    return "\n".join(lines)
