"""Train the small teacher that ships with the repo (`training/default_teacher/`), the embedded default of the main job.

A real, supported source checkpoint is needed offline, and no pretrained DINOv2 / Depth Anything weights can be
downloaded here. So this trains a small transformers `DepthAnythingForDepthEstimation` (a DINOv2-style ViT backbone
with Depth Anything's DPT neck and head: 6 layers, width 128, 8x8-pixel patches) from scratch on procedural scenes with exact
depth (`jetvit_hf.data.scenes`), with Depth Anything's scale-shift-invariant + gradient-matching loss on disparity. Its
attention is learned, not random, so the search has something real to preserve. 64x64 images keep it trainable on
a laptop CPU in well under an hour. Deterministic given `--seed`.

    python training/make_default_teacher.py --output training/default_teacher

The scale-and-shift-invariant loss leaves the output's scale free (the head's final ReLU starts open with a bias of 1,
so raw predictions sit near 1 with small variations). A last step folds the least-squares scale and shift that map
the predictions to the true disparity of the training scenes into the head's last convolution, so the teacher
predicts disparity in 1/m: affine-invariant metrics do not change, while ratios between pixels (ordinal pairs,
AbsRel against the teacher) become meaningful. `--calibrate DIR` applies only that step to a saved teacher.
"""

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, DPTImageProcessorPil

from jetvit_hf.io import atomic_directory, atomic_write_json
from jetvit_hf.data.images import IMAGENET_MEAN, IMAGENET_STD, to_normalized_tensor
from jetvit_hf.train.losses import depth_anything_loss
from jetvit_hf.evaluation.metrics import depth_metrics
from jetvit_hf.data.scenes import scene_dataset

IMAGE_SIZE = 64
PATCH_SIZE = 8


def teacher_config() -> DepthAnythingConfig:
    backbone = dict(
        model_type="dinov2", hidden_size=128, num_hidden_layers=6, num_attention_heads=4, mlp_ratio=4,
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, out_indices=[2, 3, 5, 6], reshape_hidden_states=False,
    )
    return DepthAnythingConfig(
        backbone_config=backbone, patch_size=PATCH_SIZE, reassemble_hidden_size=128,
        neck_hidden_sizes=[32, 64, 128, 128], fusion_hidden_size=32, head_hidden_size=16,
    )


def scene_tensors(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images [N, 3, H, W] and disparity targets [N, H, W] (1 / planar depth; 0 for the sky)."""
    images = torch.stack([to_normalized_tensor(row["image"], IMAGENET_MEAN, IMAGENET_STD) for row in dataset])
    depth = torch.from_numpy(np.stack([np.asarray(row["depth"], dtype=np.float32) for row in dataset]))
    disparity = torch.where(depth > 0, 1.0 / depth.clamp_min(1e-6), torch.zeros_like(depth))
    return images, disparity


@torch.no_grad()
def calibrate_output_scale(model, images: torch.Tensor, disparity: torch.Tensor) -> tuple[float, float]:
    """Fold the least-squares (scale, shift) from the predictions to `disparity` into the head's last convolution."""
    model.eval()
    prediction = torch.cat([model(chunk).predicted_depth for chunk in images.split(64)]).double().flatten()
    target = disparity.double().flatten()
    design = torch.stack((prediction, torch.ones_like(prediction)), dim=1)
    scale, shift = torch.linalg.lstsq(design, target[:, None]).solution.flatten().tolist()
    head = model.head.conv3
    head.weight.mul_(scale)
    head.bias.mul_(scale).add_(shift)
    return scale, shift


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="training/default_teacher")
    parser.add_argument("--train-scenes", type=int, default=1200)
    parser.add_argument("--eval-scenes", type=int, default=100)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (small models thrash with more)")
    parser.add_argument("--calibrate", default=None, help="only calibrate the output scale of this saved teacher")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    if args.calibrate:
        return calibrate_saved(args)

    start = time.time()
    train = scene_dataset(args.train_scenes, IMAGE_SIZE, IMAGE_SIZE, seed=args.seed, num_proc=args.num_proc)
    held_out = scene_dataset(args.eval_scenes, IMAGE_SIZE, IMAGE_SIZE, seed=args.seed + 1, num_proc=args.num_proc)
    images, disparity = scene_tensors(train)
    eval_images, eval_disparity = scene_tensors(held_out)
    print(f"rendered {len(train)} + {len(held_out)} scenes in {time.time() - start:.0f} s")

    model = DepthAnythingForDepthEstimation(teacher_config()).train()
    with torch.no_grad():  # start the head's final ReLU open: a head that outputs 0 everywhere never recovers
        model.head.conv3.bias.fill_(1.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    warmup = args.steps // 20
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
    )
    generator = torch.Generator().manual_seed(args.seed)
    progress = tqdm(range(args.steps), desc="teacher", mininterval=5)
    for step in progress:
        index = torch.randint(0, len(images), (args.batch_size,), generator=generator)
        batch, target = images[index], disparity[index]
        flip = torch.rand(args.batch_size, generator=generator) < 0.5
        batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        target = torch.where(flip[:, None, None], target.flip(-1), target)
        loss, _ = depth_anything_loss(model(batch).predicted_depth, target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 100 == 0:
            progress.set_postfix(loss=f"{loss.item():.4f}")

    scale, shift = calibrate_output_scale(model, images, disparity)
    print(f"output calibrated to disparity in 1/m: scale {scale:.4g}, shift {shift:.4g}")
    with torch.no_grad():
        prediction = torch.cat([model(chunk).predicted_depth for chunk in eval_images.split(32)])
    metrics = depth_metrics(prediction, eval_disparity, eval_disparity > 0, mode="disparity", target_is_depth=False)
    print(f"held-out scenes (DA mode, disparity aligned by least squares): {metrics}")

    with atomic_directory(args.output, overwrite=True) as staging:
        model.save_pretrained(staging)
        DPTImageProcessorPil(
            size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, keep_aspect_ratio=True, ensure_multiple_of=PATCH_SIZE,
            image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
        ).save_pretrained(staging)
        atomic_write_json(staging / "training_report.json", {
            "command": " ".join(["python"] + sys.argv),
            "train_scenes": args.train_scenes, "eval_scenes": args.eval_scenes, "steps": args.steps,
            "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "image_size": IMAGE_SIZE,
            "held_out_metrics": metrics, "output_calibration": {"scale": scale, "shift": shift},
            "torch": torch.__version__, "seconds": round(time.time() - start),
        })
    print(f"saved the teacher to {args.output} ({time.time() - start:.0f} s)")
    return 0


def calibrate_saved(args) -> int:
    """The calibration step alone, on a teacher saved by an earlier run (its report gains the calibration)."""
    directory = Path(args.calibrate)
    model = DepthAnythingForDepthEstimation.from_pretrained(directory)
    train = scene_dataset(args.train_scenes, IMAGE_SIZE, IMAGE_SIZE, seed=args.seed, num_proc=args.num_proc)
    held_out = scene_dataset(args.eval_scenes, IMAGE_SIZE, IMAGE_SIZE, seed=args.seed + 1, num_proc=args.num_proc)
    scale, shift = calibrate_output_scale(model, *scene_tensors(train))
    eval_images, eval_disparity = scene_tensors(held_out)
    with torch.no_grad():
        prediction = torch.cat([model(chunk).predicted_depth for chunk in eval_images.split(32)])
    metrics = depth_metrics(prediction, eval_disparity, eval_disparity > 0, mode="disparity", target_is_depth=False)
    report = json.loads((directory / "training_report.json").read_text())
    report.update(held_out_metrics=metrics, output_calibration={"scale": scale, "shift": shift},
                  calibration_command=" ".join(["python"] + sys.argv))
    with atomic_directory(directory, overwrite=True) as staging:
        model.save_pretrained(staging)
        for name in ("preprocessor_config.json", "README.md"):
            if (directory / name).is_file():
                shutil.copy(directory / name, staging / name)
        atomic_write_json(staging / "training_report.json", report)
    print(f"calibrated {directory}: scale {scale:.4g}, shift {shift:.4g}; held-out {metrics}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
