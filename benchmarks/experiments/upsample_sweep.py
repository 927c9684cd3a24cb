"""Experiment: the bilinear upsampling kernel (`kernels_jetvit_upsample.py`) at each launch setting, against ATen's
`F.interpolate` and against what `torch.compile` makes of it, at the five upsamplings of Depth Anything V2-L's neck
and head at 1022x1358 (channels-last, bf16, `align_corners=True`).

Each timing is the median per call of CUDA graphs of back-to-back calls (no launch gaps); `gbs` counts the bytes read
once and written once. `max_abs_difference` compares each kernel setting with ATen's output (the same arithmetic in
fp32, rounded once: a few differ by one bf16 rounding). The best setting (least total time over the five shapes) is
printed last, as `best BLOCK_W NUM_WARPS`.

    python benchmarks/experiments/upsample_sweep.py --output upsample_sweep.json
"""

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.bench_linear_attention import graph_ms  # noqa: E402
from jetvit_hf.io import atomic_write_json  # noqa: E402
from jetvit_hf.models.jetvit import kernels_jetvit_upsample  # noqa: E402

# (channels, input size, output size): the four fusion layers (coarse to fine) and the head, 73x97 patches
SHAPES = [(256, (37, 49), (73, 97)), (256, (73, 97), (146, 194)), (256, (146, 194), (292, 388)),
          (256, (292, 388), (584, 776)), (128, (584, 776), (1022, 1358))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--block-w", default="16,32,64,128")
    parser.add_argument("--num-warps", default="2,4,8")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("upsample_sweep: needs a CUDA GPU", file=sys.stderr)
        return 2
    settings = list(itertools.product([int(b) for b in args.block_w.split(",")],
                                      [int(w) for w in args.num_warps.split(",")]))
    rows, totals = [], {f"{b},{w}": 0.0 for b, w in settings}
    for channels, size_in, size_out in SHAPES:
        x = torch.randn(args.batch, channels, *size_in, device="cuda", dtype=torch.bfloat16)
        x = x.contiguous(memory_format=torch.channels_last)
        gigabytes = (x.numel() + args.batch * channels * size_out[0] * size_out[1]) * x.element_size() / 1e9

        def aten():
            return F.interpolate(x, size=size_out, mode="bilinear", align_corners=True)

        inductor = torch.compile(aten, dynamic=False)
        reference = aten()
        row = {"channels": channels, "size_in": size_in, "size_out": size_out, "aten_ms": graph_ms(aten)}
        inductor()
        row["inductor_ms"] = graph_ms(inductor)
        row["kernel"] = {}
        for block_w, warps in settings:
            kernels_jetvit_upsample.BLOCK_W, kernels_jetvit_upsample.NUM_WARPS = block_w, warps
            out = kernels_jetvit_upsample.upsample_bilinear_triton(x, size_out)
            ms = graph_ms(lambda: kernels_jetvit_upsample.upsample_bilinear_triton(x, size_out))
            row["kernel"][f"{block_w},{warps}"] = {
                "ms": ms, "gbs": gigabytes / ms * 1e3,
                "max_abs_difference": (out.float() - reference.float()).abs().max().item()}
            totals[f"{block_w},{warps}"] += ms
        best = min(row["kernel"], key=lambda k: row["kernel"][k]["ms"])
        print(f"{channels}x{size_in}->{size_out}: aten {row['aten_ms']:.4f} inductor {row['inductor_ms']:.4f} "
              f"kernel best {best} {row['kernel'][best]['ms']:.4f} ms ({row['kernel'][best]['gbs']:.0f} GB/s)",
              file=sys.stderr)
        rows.append(row)
    best = min(totals, key=totals.get)
    result = {"command": " ".join(sys.argv), "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "batch": args.batch, "dtype": "bfloat16", "shapes": rows,
              "total_ms": {"aten": sum(r["aten_ms"] for r in rows), "inductor": sum(r["inductor_ms"] for r in rows),
                           "kernel": totals}, "best": best}
    print(json.dumps(result["total_ms"], indent=1), file=sys.stderr)
    if args.output:
        atomic_write_json(args.output, result)
    print("best", *best.split(","))
    return 0


if __name__ == "__main__":
    sys.exit(main())
