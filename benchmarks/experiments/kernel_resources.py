"""Shared memory, registers and spills of JetViT's Triton kernels compiled for sm_90, on a CPU (no GPU needed), at
ViT-L shapes (16 heads of 64, a 32 x 32 patch grid, 5 prefix tokens, RoPE, bf16): the forwards and backwards at
their launch settings, and the backwards at the launch settings `bench_window_attention.py --sweep-backward` and
`bench_linear_attention.py --sweep-backward` time. These bound how many programs fit on a multiprocessor
(228 KiB of shared memory, 64K registers), which is what to read beside the sweep's timings.

    pip install triton==3.6.0   # on a CPU machine; TRITON_INTERPRET unset
    python benchmarks/experiments/kernel_resources.py --output kernel_resources.json
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.bench_linear_attention import OUTPUT_BACKWARD_SETTINGS, STATE_BACKWARD_SETTINGS  # noqa: E402
from benchmarks.bench_window_attention import BACKWARD_SETTINGS  # noqa: E402
from benchmarks.sm90_compile import compile_only_for_sm90, resource_usage  # noqa: E402
from jetvit_hf.io import atomic_write_json  # noqa: E402
from jetvit_hf.models.jetvit.kernels_jetvit_linear import (  # noqa: E402
    linear_attention_output_triton,
    linear_attention_state_triton,
)
from jetvit_hf.models.jetvit.kernels_jetvit_linear_backward import (  # noqa: E402
    linear_attention_output_backward_triton,
    linear_attention_state_backward_triton,
)
from jetvit_hf.models.jetvit.kernels_jetvit_window import window_attention_triton  # noqa: E402
from jetvit_hf.models.jetvit.kernels_jetvit_window_backward import window_attention_backward_triton  # noqa: E402

SM90_REGISTERS = 64 * 1024
SM90_SHARED_PER_SM = 228 * 1024


def programs_per_sm(usage: dict) -> int:
    """How many programs of this kernel fit on one sm_90 multiprocessor (by registers and shared memory)."""
    threads = usage["num_warps"] * 32
    by_registers = SM90_REGISTERS // (usage["registers"] * threads)
    by_shared = SM90_SHARED_PER_SM // max(usage["shared_bytes"], 1)
    return min(by_registers, by_shared, 64 // usage["num_warps"])


def rows(label: str, compiled: list) -> list[dict]:
    out = []
    for name, kernel in compiled:
        usage = resource_usage(kernel)
        out.append({"case": label, "kernel": name, **usage, "programs_per_sm": programs_per_sm(usage)})
        print(f"{label:26s} {name:26s} warps {usage['num_warps']} stages {usage['num_stages']} shared "
              f"{usage['shared_bytes'] // 1024:4d} KiB regs {usage['registers']:3d} stack {usage['stack_bytes']:3d} "
              f"programs/SM {out[-1]['programs_per_sm']}", flush=True)
    compiled.clear()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    grid, prefix, dtype = (32, 32), 5, torch.bfloat16
    qkv = torch.randn(1, prefix + grid[0] * grid[1], 3, 16, 64).to(dtype)
    q, k, v = qkv.unbind(2)
    cos, sin = torch.randn(grid[0] * grid[1], 64), torch.randn(grid[0] * grid[1], 64)
    conv_weight = torch.randn(1, 16 * 64, 3, 3)
    results = []
    with compile_only_for_sm90() as compiled:
        state, key_sum, value_sum = linear_attention_state_triton(k, v, cos, sin, prefix)
        out = linear_attention_output_triton(q, v, state, key_sum, conv_weight, cos, sin, prefix, grid, 1e-6)
        results += rows("linear forward", compiled)
        linear_grad = torch.randn(out.shape).to(dtype)
        linear_attention_state_backward_triton(k, v, cos, sin, prefix, state, key_sum, value_sum)
        linear_attention_output_backward_triton(q, v, state, key_sum, conv_weight, cos, sin, prefix, grid, 1e-6,
                                                linear_grad)
        results += rows("linear backward", compiled)
        for pre in (False, True):
            suffix = " pre-rotated" if pre else ""
            for block_n, warps in sorted({(n, w) for n, w, _ in STATE_BACKWARD_SETTINGS}):
                linear_attention_state_backward_triton(k, v, cos, sin, prefix, state, key_sum, value_sum,
                                                       block_n=block_n, num_warps=warps, pre_rotate=pre)
                results += rows(f"state bwd n{block_n} w{warps}{suffix}", compiled)
            for block_n, warps in sorted({(n, w) for n, w, _ in OUTPUT_BACKWARD_SETTINGS}):
                linear_attention_output_backward_triton(q, v, state, key_sum, conv_weight, cos, sin, prefix, grid,
                                                        1e-6, linear_grad, block_n=block_n, num_warps=warps,
                                                        pre_rotate=pre)
                results += rows(f"output bwd n{block_n} w{warps}{suffix}", compiled)
        out = window_attention_triton(q, k, v, cos, sin, prefix, grid, 16, 0.125)
        results += rows("window forward", compiled)
        grad = torch.randn(out.shape).to(dtype)
        for block_m, block_n, warps, stages, pre in [(None, None, None, None, None), *BACKWARD_SETTINGS]:
            window_attention_backward_triton(q, k, v, out, grad, cos, sin, prefix, grid, 16, 0.125, block_m=block_m,
                                             block_n=block_n, num_warps=warps, num_stages=stages, pre_rotate=pre)
            compiled[:] = [entry for entry in compiled if "_bwd_" in entry[0]]
            label = "window backward default" if block_m is None else \
                f"window bwd m{block_m} n{block_n} w{warps} s{stages}" + (" pre-rotated" if pre else "")
            results += rows(label, compiled)
    if args.output:
        atomic_write_json(args.output, {"target": "sm_90", "dtype": "bfloat16", "kernels": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
