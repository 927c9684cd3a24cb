"""Train the two proxy teachers from scratch on rendered scenes, in transformers' own architectures.

No DINOv2, DINOv3 or Depth Anything weights can be downloaded here, so accuracy is shown on teachers trained here, big
enough in tokens that attention types matter (>= 1,000 patch tokens) and small enough to commit (<= 12 MB in bf16):

- `depth`: `DepthAnythingForDepthEstimation` with a DINOv2 backbone (12 layers, width 192, 3 heads, patch 14) at
  448 x 448 (1,024 tokens), trained on disparity with Depth Anything V2's loss (scale-and-shift-invariant +
  2 x gradient matching). A last step folds the least-squares scale and shift from the predictions to the true
  disparity of training scenes into the head's last convolution, so the teacher predicts disparity in 1/m.
- `segmentation`: a `DINOv3ViTModel` backbone (12 layers, width 192, 3 heads, patch 16, RoPE, 4 registers) at
  512 x 512 (1,024 tokens) with DINOv3's linear-probe head (BatchNorm + 1x1 conv on the normed last-layer patch
  tokens) over the renderer's 10 classes, trained with cross-entropy on logits upsampled to the label map.

Scenes stream from the renderer's train split, rendered on the training device (`data.render_stream`): batch k is
always the same scenes, so a run is a pure function of its settings and the number of steps. `--minutes` plans the
number of steps from the measured step time (recorded, so a resumed run keeps its schedule); `--steps` fixes it.

Every `--save-minutes` the teacher is exported atomically (bf16 safetensors, `training_report.json` with the step) to
`--output`, and with `--archive` also as one tar file: a device command that is cut off loses at most one interval.
`--resume` continues from the export in `--output`: the weights and the step carry over, the AdamW moments do not
(they restart with a short warm-up), so resuming across device commands only needs the exported files.

    python training/train_teacher.py depth --output training/teachers/depth-dinov2-tiny --minutes 8
    python training/train_teacher.py segmentation --output training/teachers/seg-dinov3-tiny --minutes 8

The exports load without this package: `DepthAnythingForDepthEstimation.from_pretrained(dir)`, and
`DINOv3ViTModel.from_pretrained(dir)` plus the probe in `probe.safetensors` (`batchnorm.*`, `classifier.*`: a
`BatchNorm2d(192)` then a `Conv2d(192, 10, 1)`, see the teacher's README).
"""

import argparse
import copy
import math
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import (DepthAnythingConfig, DepthAnythingForDepthEstimation, DINOv3ViTConfig, DINOv3ViTModel,
                          DPTImageProcessorPil)

from jetvit_hf.data.images import IMAGENET_MEAN, IMAGENET_STD
from jetvit_hf.data.render_layouts import CLASS_NAMES
from jetvit_hf.data.render_stream import RenderedBatches
from jetvit_hf.evaluation.probe import load_linear_probe, make_linear_probe, save_linear_probe
from jetvit_hf.io import atomic_directory, atomic_write_json, read_json
from jetvit_hf.train.losses import depth_anything_loss

TASKS = ("depth", "segmentation")
REPORT_FILE = "training_report.json"
IMAGE_SIZE = {"depth": 448, "segmentation": 512}  # 32 x 32 = 1,024 patch tokens at patch 14 / 16
RESUME_WARMUP_STEPS = 100  # AdamW's moments restart on resume: a short warm-up keeps the first steps small
CALIBRATION_BATCHES = 8


def depth_teacher_config(image_size: int = IMAGE_SIZE["depth"], hidden_size: int = 192, num_layers: int = 12,
                         num_heads: int = 3) -> DepthAnythingConfig:
    """Depth Anything's layout at ViT-Tiny width: DPT taps after layers 3, 6, 9 and 12 (as Depth Anything's ViT-S)
    and a narrow neck, so the bf16 checkpoint stays under 12 MB."""
    taps = [num_layers * k // 4 for k in range(1, 5)]
    backbone = dict(model_type="dinov2", hidden_size=hidden_size, num_hidden_layers=num_layers,
                    num_attention_heads=num_heads, mlp_ratio=4, image_size=image_size, patch_size=14,
                    out_indices=taps, reshape_hidden_states=False)
    return DepthAnythingConfig(backbone_config=backbone, patch_size=14, reassemble_hidden_size=hidden_size,
                               neck_hidden_sizes=[24, 48, 96, 96], fusion_hidden_size=32, head_hidden_size=16)


def segmentation_teacher_config(image_size: int = IMAGE_SIZE["segmentation"], hidden_size: int = 192,
                                num_layers: int = 12, num_heads: int = 3) -> DINOv3ViTConfig:
    return DINOv3ViTConfig(hidden_size=hidden_size, intermediate_size=4 * hidden_size, num_hidden_layers=num_layers,
                           num_attention_heads=num_heads, patch_size=16, image_size=image_size,
                           num_register_tokens=4)


class SegmentationTeacher(torch.nn.Module):
    """A DINOv3 backbone and DINOv3's linear probe on its normed last-layer patch tokens (what
    `jetvit_hf.evaluation.probe.probe_features` reads from the converted model)."""

    def __init__(self, backbone: DINOv3ViTModel, probe: torch.nn.Module):
        super().__init__()
        self.backbone, self.probe = backbone, probe

    def feature_map(self, pixel_values: torch.Tensor) -> torch.Tensor:
        config = self.backbone.config
        tokens = self.backbone(pixel_values).last_hidden_state[:, 1 + config.num_register_tokens:]
        grid = (pixel_values.shape[-2] // config.patch_size, pixel_values.shape[-1] // config.patch_size)
        return tokens.reshape(tokens.shape[0], *grid, -1).permute(0, 3, 1, 2)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Logits `[B, classes, H, W]` at the input's resolution (bilinear, as DINOv3's probe training)."""
        logits = self.probe(self.feature_map(pixel_values))
        return F.interpolate(logits.float(), size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)


def build_teacher(task: str, image_size: int, hidden_size: int, num_layers: int, num_heads: int) -> torch.nn.Module:
    if task == "depth":
        model = DepthAnythingForDepthEstimation(depth_teacher_config(image_size, hidden_size, num_layers, num_heads))
        with torch.no_grad():  # start the head's final ReLU open: a head that outputs 0 everywhere never recovers
            model.head.conv3.bias.fill_(1.0)
        return model
    config = segmentation_teacher_config(image_size, hidden_size, num_layers, num_heads)
    return SegmentationTeacher(DINOv3ViTModel(config), make_linear_probe(hidden_size, len(CLASS_NAMES)))


def load_teacher(task: str, directory: Path) -> torch.nn.Module:
    """A teacher exported by this script, in float32."""
    if task == "depth":
        return DepthAnythingForDepthEstimation.from_pretrained(directory, dtype=torch.float32)
    return SegmentationTeacher(DINOv3ViTModel.from_pretrained(directory, dtype=torch.float32),
                               load_linear_probe(directory).float())


def disparity_target(depth: torch.Tensor) -> torch.Tensor:
    """1 / planar depth, 0 for the sky (infinitely far)."""
    return torch.where(depth > 0, 1.0 / depth.clamp_min(1e-6), torch.zeros_like(depth))


def mirrored(batch: dict) -> dict:
    """The batch flipped left-right (every other step: the renderer's scenes have no preferred side otherwise)."""
    return {**batch, **{key: batch[key].flip(-1) for key in ("pixel_values", "depth", "labels")}}


def teacher_loss(task: str, model: torch.nn.Module, batch: dict) -> torch.Tensor:
    if task == "depth":
        prediction = model(batch["pixel_values"]).predicted_depth
        return depth_anything_loss(prediction.float(), disparity_target(batch["depth"]))[0]
    return F.cross_entropy(model(batch["pixel_values"]), batch["labels"])


@torch.no_grad()
def calibrate_output_scale(model: DepthAnythingForDepthEstimation, batches) -> tuple[float, float]:
    """Fold the least-squares (scale, shift) from the predictions to the true disparity into the head's last conv."""
    model.eval()
    predictions, targets = [], []
    for batch in batches:
        predictions.append(model(batch["pixel_values"]).predicted_depth.double().flatten())
        targets.append(disparity_target(batch["depth"]).double().flatten())
    prediction, target = torch.cat(predictions), torch.cat(targets)
    design = torch.stack((prediction, torch.ones_like(prediction)), dim=1)
    scale, shift = torch.linalg.lstsq(design.cpu(), target.cpu()[:, None]).solution.flatten().tolist()
    model.head.conv3.weight.mul_(scale)
    model.head.conv3.bias.mul_(scale).add_(shift)
    return scale, shift


def export_teacher(task: str, model: torch.nn.Module, output: Path, report: dict, archive: Path | None) -> None:
    """Atomically write the bf16 teacher (and the probe in float32) with its report; with `archive`, also one tar."""
    with atomic_directory(output, overwrite=True) as staging:
        if task == "depth":
            copy.deepcopy(model).to(torch.bfloat16).save_pretrained(staging)
            size = report["settings"]["image_size"]
            DPTImageProcessorPil(size={"height": size, "width": size}, keep_aspect_ratio=True,
                                 ensure_multiple_of=model.config.patch_size, image_mean=IMAGENET_MEAN,
                                 image_std=IMAGENET_STD).save_pretrained(staging)
        else:
            copy.deepcopy(model.backbone).to(torch.bfloat16).save_pretrained(staging)
            save_linear_probe(model.probe, staging / "probe", overwrite=True)
            for path in (staging / "probe").iterdir():
                path.rename(staging / path.name)
            (staging / "probe").rmdir()
        atomic_write_json(staging / REPORT_FILE, report)
    if archive is not None:
        archive.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=archive.parent, prefix=f".{archive.name}.")
        os.close(handle)
        with tarfile.open(temporary, "w") as tar:
            tar.add(output, arcname=output.name)
        os.replace(temporary, archive)


def lr_factor(step: int, total_steps: int, warmup_steps: int, resumed_at: int | None) -> float:
    """Linear warm-up then cosine decay to 0 over `total_steps`; after a resume a fresh warm-up from `resumed_at`."""
    factor = 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    factor *= min(1.0, (step + 1) / warmup_steps)
    if resumed_at is not None:
        factor *= min(1.0, (step - resumed_at + 1) / RESUME_WARMUP_STEPS)
    return factor


def synchronized_time(device: torch.device) -> float:
    """`time.time()` once the device has finished its queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.time()


def plan_steps(step_seconds: float, minutes: float, elapsed: float, reserve: float) -> int:
    """How many steps fit in `minutes` after `elapsed` seconds, keeping `reserve` seconds for the final export."""
    return max(1, int((minutes * 60 - elapsed - reserve) / step_seconds))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=TASKS)
    parser.add_argument("--output", required=True, help="the teacher directory (exported here, resumed from here)")
    parser.add_argument("--archive", default=None, help="also write the export as one tar file here")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: planned from --minutes)")
    parser.add_argument("--minutes", type=float, default=8.0, help="wall-clock budget when --steps is not given")
    parser.add_argument("--save-minutes", type=float, default=1.5, help="export at least this often")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup-steps", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=None, help="default: 448 (depth), 512 (segmentation)")
    parser.add_argument("--hidden-size", type=int, default=192)
    parser.add_argument("--num-layers", type=int, default=12)
    parser.add_argument("--num-heads", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--resume", action="store_true", help="continue the run exported in --output")
    args = parser.parse_args(argv)
    args.image_size = args.image_size or IMAGE_SIZE[args.task]
    for name in ("batch_size", "image_size", "hidden_size", "num_layers", "num_heads", "warmup_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if not args.minutes > 0 or not args.save_minutes > 0 or not args.lr > 0:
        parser.error("--minutes, --save-minutes and --lr must be positive")
    patch = 14 if args.task == "depth" else 16
    if args.image_size % patch:
        parser.error(f"--image-size {args.image_size} must be a multiple of the {args.task} teacher's patch {patch}")
    if args.task == "depth" and args.num_layers < 4:
        parser.error("--num-layers must be at least 4 for the depth teacher (its DPT neck taps four layers)")
    if args.hidden_size % args.num_heads:
        parser.error(f"--hidden-size {args.hidden_size} must be divisible by --num-heads {args.num_heads}")
    return args


def resume_state(args) -> tuple[torch.nn.Module, dict]:
    """The exported teacher and its report, checked to be this run's (same task and settings)."""
    output = Path(args.output)
    if not (output / REPORT_FILE).is_file():
        raise SystemExit(f"--resume: {output} holds no {REPORT_FILE}; start without --resume")
    report = read_json(output / REPORT_FILE)
    settings = {key: getattr(args, key) for key in ("task", "batch_size", "lr", "image_size", "hidden_size",
                                                    "num_layers", "num_heads")}
    differing = {key: (report["settings"].get(key), value) for key, value in settings.items()
                 if report["settings"].get(key) != value}
    if differing:
        raise SystemExit(f"--resume: {output} was trained with other settings (there, now): {differing}")
    if report.get("finished"):
        raise SystemExit(f"--resume: {output} holds a finished teacher; nothing to resume")
    return load_teacher(args.task, output), report


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(0)
    device = torch.device(args.device)
    output, archive = Path(args.output), (Path(args.archive) if args.archive else None)
    start = time.time()
    if args.resume:
        model, report = resume_state(args)
        step, resumed_at = report["step"], report["step"]
        report["resumed_at"] = report.get("resumed_at", []) + [step]
    else:
        model = build_teacher(args.task, args.image_size, args.hidden_size, args.num_layers, args.num_heads)
        step, resumed_at = 0, None
        report = {"task": args.task, "command": " ".join(["python"] + sys.argv), "step": 0, "total_steps": args.steps,
                  "settings": {key: getattr(args, key) for key in ("task", "batch_size", "lr", "warmup_steps",
                                                                    "image_size", "hidden_size", "num_layers",
                                                                    "num_heads")},
                  "data": "render_stream train split, batch k = scenes k*B .. (k+1)*B-1", "loss_log": [],
                  "torch": torch.__version__, "device": torch.cuda.get_device_name(device)
                  if device.type == "cuda" else "cpu", "seconds": 0.0}
    if args.steps is not None:
        report["total_steps"] = args.steps
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05, betas=(0.9, 0.99))
    stream = RenderedBatches("train", args.batch_size, args.image_size, args.image_size, device=device,
                             compiled=device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    total = report["total_steps"]
    timed_from = None  # (time, step) after the first compiled steps, to plan the schedule
    last_export, recent = time.time(), []
    progress = tqdm(total=total, initial=step, desc=f"{args.task} teacher", mininterval=10)
    while total is None or step < total:
        batch = mirrored(stream.batch(step)) if step % 2 else stream.batch(step)
        for group in optimizer.param_groups:
            group["lr"] = args.lr * lr_factor(step, total or 10**9, args.warmup_steps, resumed_at)
        with autocast:
            loss = teacher_loss(args.task, model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        recent.append(loss.detach())
        if step % 50 == 0:
            mean = torch.stack(recent).mean().item()
            report["loss_log"].append([step, round(mean, 5)])
            progress.set_postfix(loss=f"{mean:.4f}")
            recent = []
        progress.update(1)
        if total is None:  # plan the schedule from the step time after 20 warm-up steps (compilation, autotuning)
            if step - (resumed_at or 0) == 20:
                timed_from = (synchronized_time(device), step)
            elif timed_from and step - timed_from[1] == 30:
                seconds = (synchronized_time(device) - timed_from[0]) / 30
                total = report["total_steps"] = step + plan_steps(seconds, args.minutes, time.time() - start, 45)
                report["planned"] = {"step_seconds": round(seconds, 4), "minutes": args.minutes}
                progress.total = total
                print(f"planned {total} steps at {seconds * 1000:.0f} ms a step", flush=True)
        if time.time() - last_export > args.save_minutes * 60 and (total is None or step < total):
            report.update(step=step, seconds=report["seconds"] + time.time() - last_export)
            export_teacher(args.task, model, output, report, archive)
            last_export = time.time()
    progress.close()
    report.update(step=step, seconds=round(report["seconds"] + time.time() - last_export, 1))
    if args.task == "depth":
        calibration = (stream.batch(total + index) for index in range(CALIBRATION_BATCHES))
        scale, shift = calibrate_output_scale(model, calibration)
        report["calibration"] = {"scale": scale, "shift": shift, "batches": CALIBRATION_BATCHES,
                                 "scenes": "train split, the batches after the last training step"}
    else:
        report["calibration"] = None
    report["finished"] = True
    export_teacher(args.task, model.cpu().float(), output, report, archive)
    print(f"saved the {args.task} teacher to {output} after {step} steps ({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
