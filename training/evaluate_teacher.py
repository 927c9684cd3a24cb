"""Score a teacher made by `train_teacher.py` on the renderer's test split, with 95% bootstrap intervals over scenes.

The teacher is loaded with transformers' own classes (not through this package's conversion), the scenes are the
first `--scenes` of the test split (`data.render_stream.SPLITS`), rendered at the teacher's training resolution:

- depth: AbsRel and delta1 of the predicted disparity against the true disparity, after per-image least-squares scale
  and shift in disparity ("DA mode", `evaluation.metrics.DepthMetrics`), and AbsRel of the calibrated prediction
  without alignment (how far the teacher's own disparity in 1/m is from the truth), on pixels with ground truth
  within 80 m (`evaluation.images.MAX_EVAL_DEPTH`);
- segmentation: mIoU over the renderer's 10 classes (dataset-level, from per-scene confusion matrices).

The result goes to `test_metrics.json` in the teacher's directory (atomically) and is printed.

    python training/evaluate_teacher.py depth training/teachers/depth-dinov2-tiny
"""

import argparse
import sys
from pathlib import Path

import torch
from torchmetrics.functional.classification import multiclass_confusion_matrix
from tqdm.auto import tqdm

from jetvit_hf.data.render_layouts import CLASS_NAMES
from jetvit_hf.data.render_stream import RenderedBatches
from jetvit_hf.evaluation.bootstrap import bootstrap
from jetvit_hf.evaluation.images import MAX_EVAL_DEPTH
from jetvit_hf.evaluation.metrics import DepthMetrics
from jetvit_hf.io import atomic_write_json, read_json

from train_teacher import REPORT_FILE, TASKS, disparity_target, load_teacher

RESULT_FILE = "test_metrics.json"


def depth_scores(prediction: torch.Tensor, depth: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-scene `abs_rel`, `delta1` (aligned, DA mode) and `abs_rel_raw` (unaligned) of `[B, H, W]` disparities,
    on the pixels with ground truth within `MAX_EVAL_DEPTH`, as every depth measure of the package."""
    scores = {"abs_rel": [], "delta1": [], "abs_rel_raw": []}
    depth = torch.where(depth <= MAX_EVAL_DEPTH, depth, 0.0)
    for one_prediction, one_depth in zip(prediction.double(), depth.double()):
        metric = DepthMetrics("disparity", target_is_depth=True)
        metric.update(one_prediction, one_depth)
        aligned = metric.compute()
        scores["abs_rel"].append(aligned["abs_rel"])
        scores["delta1"].append(aligned["delta1"])
        valid = one_depth > 0
        truth = disparity_target(one_depth)[valid]
        scores["abs_rel_raw"].append(((one_prediction[valid] - truth).abs() / truth).mean().item())
    return {name: torch.tensor(values) for name, values in scores.items()}


def confusions(prediction: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """`[B, C, C]` per-scene confusion counts, rows = label, columns = prediction (what `bootstrap` resamples)."""
    return torch.stack([multiclass_confusion_matrix(one_prediction, one_labels, num_classes, validate_args=False)
                        for one_prediction, one_labels in zip(prediction, labels)])


@torch.inference_mode()
def evaluate_teacher(task: str, directory: Path, num_scenes: int, batch_size: int, device: str) -> dict:
    report = read_json(directory / REPORT_FILE)
    size = report["settings"]["image_size"]
    model = load_teacher(task, directory).to(device).eval()
    stream = RenderedBatches("test", batch_size, size, size, device=device)
    per_scene: dict[str, list[torch.Tensor]] = {}
    for index in tqdm(range(-(-num_scenes // batch_size)), desc=f"{task} teacher on the test split"):
        batch = stream.batch(index)
        if task == "depth":
            scores = depth_scores(model(batch["pixel_values"]).predicted_depth.cpu(), batch["depth"].cpu())
        else:
            prediction = model(batch["pixel_values"]).argmax(1)
            scores = {"miou": confusions(prediction.cpu(), batch["labels"].cpu(), len(CLASS_NAMES))}
        for name, values in scores.items():
            per_scene.setdefault(name, []).append(values)
    metrics = {}
    for name, values in per_scene.items():
        result = bootstrap(torch.cat(values)[:num_scenes])
        metrics[name] = {"value": result["mean"], "ci95": result["ci95"], "se": result["se"]}
    return {"task": task, "split": "test", "num_scenes": num_scenes, "image_size": size,
            "interval": "95% percentile bootstrap over scenes (2000 resamples, seed 0)",
            "metrics": metrics, "command": " ".join(["python"] + sys.argv)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=TASKS)
    parser.add_argument("teacher", help="a directory written by train_teacher.py")
    parser.add_argument("--scenes", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.scenes < 1 or args.batch_size < 1:
        parser.error("--scenes and --batch-size must be at least 1")
    directory = Path(args.teacher)
    if not (directory / REPORT_FILE).is_file():
        parser.error(f"{directory} holds no {REPORT_FILE}: not a teacher written by train_teacher.py")
    result = evaluate_teacher(args.task, directory, args.scenes, args.batch_size, args.device)
    atomic_write_json(directory / RESULT_FILE, result)
    for name, entry in result["metrics"].items():
        print(f"{name}: {entry['value']:.4f} [{entry['ci95'][0]:.4f}, {entry['ci95'][1]:.4f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
