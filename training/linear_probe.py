"""Linear-probe semantic segmentation on frozen JetViT features, following DINOv3's protocol.

A BatchNorm + 1x1 convolution head (`JetViTLinearProbeHead`) reads the layer-normed last-layer patch tokens; its logits
are upsampled bilinearly to the label size and trained with cross-entropy (ignore index 255) by AdamW (lr 1e-3, weight
decay 1e-3) with linear warm-up and cosine decay. The probe is saved atomically (`probe.safetensors`, `probe.json`) for
`jetvit eval --probe` and `jetvit search --objective segmentation --probe`.

    python training/linear_probe.py --model DIR --data SCENES_DIR --steps 1000 --output probe/ \
        [--eval-data HELD_OUT_DIR]

`--data` is anything `jetvit_hf.data.images.load_images` reads with a `labels` column of [H, W] class ids (e.g. a
`jetvit_hf.data.render_stream.render_dataset` saved with `save_to_disk`). The training logic is
`jetvit_hf.evaluation.probe.train_linear_probe`.
"""

import argparse
import json
import sys

from jetvit_hf.cli import parse_image_size
from jetvit_hf.convert import load_jetvit
from jetvit_hf.evaluation.images import default_image_size, load_eval_images
from jetvit_hf.evaluation.probe import probe_segmentation_metrics, save_linear_probe, train_linear_probe


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="JetViT directory or source checkpoint (frozen backbone)")
    parser.add_argument("--data", required=True, help="training images with a `labels` column")
    parser.add_argument("--eval-data", default=None, help="held-out images with labels: report mIoU / aAcc")
    parser.add_argument("--num-labels", type=int, default=None, help="classes (default: largest label + 1)")
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps (DINOv3: 40k)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per step (DINOv3: 16)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=None, help="default: DINOv3's 1500/40k of --steps")
    parser.add_argument("--dropout", type=float, default=0.1, help="Dropout2d before BatchNorm while training")
    parser.add_argument("--image-size", type=parse_image_size, default=None,
                        help="model input size: 518 (short side, aspect kept) or HxW (default: the config's)")
    parser.add_argument("--num-images", type=int, default=None, help="use the first N images of --data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True, help="directory for the probe")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return train(args)
    except (ValueError, FileExistsError) as error:
        print(f"linear_probe: error: {error}", file=sys.stderr)
        return 2


def train(args: argparse.Namespace) -> int:
    model = load_jetvit(args.model)
    probe = train_linear_probe(
        model, args.data, args.num_labels, image_size=args.image_size, num_images=args.num_images, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
        dropout=args.dropout, seed=args.seed, progress=not args.no_progress,
    )
    if args.eval_data is not None:
        image_size = args.image_size or default_image_size(model.config)
        images = load_eval_images(args.eval_data, model.config.patch_size, image_size)
        probe.training_info["evaluation"] = {"data": args.eval_data, **probe_segmentation_metrics(model, probe, images)}
    save_linear_probe(probe, args.output, overwrite=args.overwrite)
    print(json.dumps(probe.training_info, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
