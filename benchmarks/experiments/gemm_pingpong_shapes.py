"""Experiment: the shipped ping-pong Gluon GEMM (`kernels_jetvit_mlp.linear_gluon`) with a bias-only epilogue on
every ViT-L layer GEMM, against cuBLAS, at two consumer tiles (128x128, shipped; 64x256).

Why: in the batch-1 DINOv3-L hybrid profile cuBLAS's q/k/v + output projections take 2.99 ms a forward (125 us a
layer) and its down-projection 75 us a layer for the same FLOPs: the short-K GEMMs (K = 1024) run far below the long
one (K = 4096). The output projection (N = 1024, K = 1024) measured 333 TFLOP/s on an H100 (`gemm_shapes.py`).
A ping-pong schedule hides each tile's epilogue behind the other consumer's main loop, which matters most when the
main loop is short. If it beats cuBLAS on a shape, the model can route that projection through it.

    python benchmarks/experiments/gemm_pingpong_shapes.py --output gemm_pingpong.json        # on a Hopper GPU
    PYTHONPATH=.:benchmarks python benchmarks/experiments/gemm_pingpong_shapes.py --compile-only   # sm_90 on the CPU
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `benchmarks.*`

from benchmarks.bench_linear_attention import graph_ms  # noqa: E402
from benchmarks.experiments.common import interleaved_medians, max_abs_diffs  # noqa: E402
from jetvit_hf.io import atomic_write_json  # noqa: E402
from jetvit_hf.models.jetvit.kernels_jetvit_mlp import linear_gluon  # noqa: E402

# (N, K) of the ViT-L layer GEMMs, and whether the model applies the GELU after it
SHAPES = {"qkv": (3072, 1024, False), "o_proj": (1024, 1024, False), "fc1": (4096, 1024, True),
          "fc2": (1024, 4096, False)}
# consumer tile (rows, columns), ring stages and K per stage: each fits the 227 KiB of shared memory. K = 128 halves
# the ring waits and releases per tile, each of which Gluon precedes with a warpgroup barrier (`gluon_loop_barriers.py`)
TILES = {"pp128x128": ((128, 128), 5, 64), "pp64x256": ((64, 256), 4, 64), "pp128x128_k128": ((128, 128), 2, 128)}


def variants(x, weight, bias, gelu: bool) -> dict:
    """The callables timed for one shape: cuBLAS (+ PyTorch's GELU) and the ping-pong kernel at each tile."""
    timed = {"cublas": (lambda: F.gelu(F.linear(x, weight, bias))) if gelu else (lambda: F.linear(x, weight, bias))}
    for name, (tile, stages, block_k) in TILES.items():
        timed[name] = lambda tile=tile, stages=stages, block_k=block_k: linear_gluon(x, weight, bias, gelu, tile, stages,
                                                                                      block_k)
    return timed


def compile_only() -> int:
    from sm90_compile import compile_only_for_sm90, resource_usage

    x, w, b = torch.randn(8197, 1024).bfloat16(), torch.randn(1024, 1024).bfloat16(), torch.randn(1024).bfloat16()
    for name, (tile, stages, block_k) in TILES.items():
        for gelu in (False, True):
            with compile_only_for_sm90() as compiled:
                linear_gluon(x, w, b, gelu, tile, stages, block_k)
            (_, kernel), = compiled
            print(name, "gelu" if gelu else "bias", resource_usage(kernel), flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compile-only", action="store_true", help="compile the variants for sm_90 on the CPU")
    parser.add_argument("--tokens", default="8197,7082,65576", help="rows M: DINOv3-L 1024x2048, DA-V2-L, bs8")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if args.compile_only:
        return compile_only()
    import triton

    torch.manual_seed(0)
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "command": " ".join(sys.argv), "timing": "CUDA graph of 20 calls, median of 50 replays, per call; "
              f"{args.rounds} interleaved rounds, median", "runs": {}}
    with torch.inference_mode():
        for m in (int(t) for t in args.tokens.split(",")):
            for shape, (n, k, gelu) in SHAPES.items():
                x = torch.randn(m, k, device="cuda").bfloat16()
                weight = (torch.randn(n, k, device="cuda") / k ** 0.5).bfloat16()
                bias = (torch.randn(n, device="cuda") / 4).bfloat16()
                timed = variants(x, weight, bias, gelu)
                errors = max_abs_diffs(timed, "cublas")
                medians, spreads = interleaved_medians(
                    {name: (lambda fn=fn: 1e3 * graph_ms(fn)) for name, fn in timed.items()}, args.rounds)
                flops = 2 * m * n * k
                run = {"m": m, "n": n, "k": k, "gelu": gelu, "median_us": medians, "spread_us": spreads,
                       "tflops": {name: round(flops / us / 1e6, 1) for name, us in medians.items()},
                       "max_abs_diff_vs_cublas": errors}
                result["runs"][f"{shape}_m{m}"] = run
                print(shape, m, medians, run["tflops"], errors, flush=True)
    if args.output:
        atomic_write_json(args.output, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
