"""Experiment: the window kernel with windows clipped to the grid (`_clipped_window` in `kernels_jetvit_window.py`)
against the kernel before it, which numbered every window's patches over the whole 16x16 box and masked the rest.

Where the grid is not a multiple of the window, the edge windows are smaller: at 518 px a DINOv2 grid of 37x37 in
windows of 16 has 4 whole windows, 4 of 5x16 and one of 5x5; Depth Anything V2 at 1022x1358 (73x97) a column of
windows one patch wide and a row nine patches high. The box kernel ran 2 query blocks x 2 key blocks of 128 for every
window (36 block pairs per head at 518 px, 140 at 1022x1358); clipped, a window runs the blocks its patches fill (21
and 125). Whole-window grids (DINOv3 at 1024x2048) take the same code path as before (`EVEN`), the control. The
backward kernels (64 x 64 blocks) clip the same way; they are timed at the training shapes, 518 px at batch 32 and
DINOv3's 512 px (32x32, whole windows: the control).

    git show 4935d59:jetvit_hf/models/jetvit/kernels_jetvit_window.py \\
        | sed 's/from \\.kernels_jetvit_linear/from jetvit_hf.models.jetvit.kernels_jetvit_linear/' \\
        > benchmarks/experiments/kernels_window_box.py
    git show 4935d59:jetvit_hf/models/jetvit/kernels_jetvit_window_backward.py \\
        | sed -e 's/from \\.kernels_jetvit_linear/from jetvit_hf.models.jetvit.kernels_jetvit_linear/' \\
              -e 's/from \\.kernels_jetvit_window import/from benchmarks.experiments.kernels_window_box import/' \\
        > benchmarks/experiments/kernels_window_box_backward.py
    python benchmarks/experiments/window_clipped.py --output window_clipped.json   # on a CUDA GPU
    PYTHONPATH=.:benchmarks python benchmarks/experiments/window_clipped.py --compile-only   # sm_90, CPU
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `benchmarks.*`

from benchmarks.experiments import kernels_window_box as box  # noqa: E402
from benchmarks.experiments import kernels_window_box_backward as box_backward  # noqa: E402
from benchmarks.experiments.common import (  # noqa: E402
    experiment_record,
    kernel_experiment_parser,
    print_sm90_resources,
    timed_against,
    vit_l_inputs,
)
from jetvit_hf.io import atomic_write_json  # noqa: E402
from jetvit_hf.models.jetvit.kernels_jetvit_window import window_attention_triton  # noqa: E402
from jetvit_hf.models.jetvit.kernels_jetvit_window_backward import window_attention_backward_triton  # noqa: E402

# name: (patch grid, prefix tokens, RoPE)
SHAPES = {
    "dinov2_518": ((37, 37), 1, False),
    "dav2_1022x1358": ((73, 97), 1, False),
    "dinov3_1022x1358_rope": ((63, 84), 5, True),
    "dinov3_1024x2048_rope_whole_windows": ((64, 128), 5, True),
}
# name: (patch grid, prefix tokens, RoPE, batch)
BACKWARD_SHAPES = {
    "dinov2_518_bs32": ((37, 37), 1, False, 32),
    "dinov3_512_rope_bs32": ((32, 32), 5, True, 32),
}


def variants(q, k, v, cos, sin, num_prefix, grid) -> dict:
    return {"box": lambda: box.window_attention_triton(q, k, v, cos, sin, num_prefix, grid, 16, 0.125),
            "clipped": lambda: window_attention_triton(q, k, v, cos, sin, num_prefix, grid, 16, 0.125)}


def backward_variants(q, k, v, cos, sin, num_prefix, grid) -> dict:
    out = window_attention_triton(q, k, v, cos, sin, num_prefix, grid, 16, 0.125)
    grad = torch.randn_like(out)
    return {"box": lambda: box_backward.window_attention_backward_triton(q, k, v, out, grad, cos, sin, num_prefix,
                                                                         grid, 16, 0.125),
            "clipped": lambda: window_attention_backward_triton(q, k, v, out, grad, cos, sin, num_prefix, grid, 16,
                                                                0.125)}


def compile_only() -> int:
    for shape, (grid, prefix, rope) in SHAPES.items():
        q, k, v = torch.randn(1, prefix + grid[0] * grid[1], 3, 16, 64).bfloat16().unbind(2)
        angles = torch.rand(grid[0] * grid[1], 32)
        tables = (torch.cos(angles).repeat(1, 2).bfloat16(), torch.sin(angles).repeat(1, 2).bfloat16())
        print_sm90_resources(variants(q, k, v, *(tables if rope else (None, None)), prefix, grid), shape)
    return 0


def main(argv=None) -> int:
    args = kernel_experiment_parser(__doc__.split("\n\n")[0]).parse_args(argv)
    if args.compile_only:
        return compile_only()
    torch.manual_seed(0)
    result = experiment_record(args.rounds, window_size=16)
    with torch.inference_mode():
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            for shape, (grid, prefix, rope) in SHAPES.items():
                q, k, v, cos, sin, _ = vit_l_inputs(batch, grid, prefix)
                timed = variants(q, k, v, *((cos, sin) if rope else (None, None)), prefix, grid)
                result["runs"][f"{shape}_batch_{batch}"] = timed_against(
                    timed, "box", args.rounds, f"{shape} bs{batch}", grid=grid, num_prefix=prefix, rope=rope)
        for shape, (grid, prefix, rope, batch) in BACKWARD_SHAPES.items():
            q, k, v, cos, sin, _ = vit_l_inputs(batch, grid, prefix)
            timed = backward_variants(q, k, v, *((cos, sin) if rope else (None, None)), prefix, grid)
            result["runs"][f"backward_{shape}"] = timed_against(
                timed, "box", args.rounds, f"backward {shape}", grid=grid, num_prefix=prefix, rope=rope, batch=batch)
    if args.output:
        atomic_write_json(args.output, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
