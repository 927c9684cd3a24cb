"""The exact GELU as its own pass after the MLP's up-projection: where its time goes, and whether a cheaper exact
formula closes the gap to the tanh-GELU GEMM epilogue.

In the H200 profiles the pass Inductor generates (`triton_poi_fused_gelu_view`) takes 1.57 ms over the 24 layers of
DA-V2-L at 7082 tokens: 65 us a layer for 58 MB in and 58 MB out, 1.8 TB/s, well under the copy bandwidth. A guess
to test here: the pass is bound by the erf, whose libdevice version takes one of two polynomials per element, so a
warp with inputs on both sides of the switch runs both. Abramowitz & Stegun 7.1.26 writes erfc(z) as a degree-5
polynomial in t = 1 / (1 + p z) times exp(-z^2), with no branch; this file's kernel computes Phi(x) = erfc(-x/sqrt 2)/2
from it on |x| with the sign chosen last, so the negative tail has no cancellation.

It times, on bf16 [tokens, 4096] activations (CUDA graphs of 20 back-to-back calls, interleaved medians): a copy (the
floor), PyTorch's exact GELU eager and compiled, the tanh GELU compiled, Triton passes with libdevice's erf and with
the A&S formula, and the A&S formula as PyTorch ops compiled (what the model would use). It also scores every finite bf16 input (but subnormals) against the float64 GELU rounded to bf16 (bit-identical
share and worst distance in bf16 steps, for |x| < 4 and for all), for PyTorch's exact and tanh GELU and both Triton
passes, so "exact" is measured, not assumed.

`--model-bench` also runs `jetvit bench` (baselines none: the hybrid and nothing else, CUDA graphs) three times in
this process: with PyTorch's exact GELU, with `torch.nn.functional.gelu` replaced by the A&S formula while the models
are built (the MLPs take it at construction), and with PyTorch's again, so the two plain runs bound the drift.

    PYTHONPATH=. python benchmarks/experiments/gelu_pass.py --output h200_gelu_pass.json          # GPU
    PYTHONPATH=. python benchmarks/experiments/gelu_pass.py --model-bench dinov3-l:1024x2048      # + the whole model
    TRITON_INTERPRET=1 PYTHONPATH=. python benchmarks/experiments/gelu_pass.py --accuracy-only   # CPU: the scores
"""

import argparse
import contextlib
import math
import sys
import tempfile
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.bench_linear_attention import graph_ms  # noqa: E402
from benchmarks.experiments.common import hybrid_bench_runs, interleaved_medians  # noqa: E402
from jetvit_hf.io import atomic_write_json  # noqa: E402

# Abramowitz & Stegun 7.1.26: erfc(z) = t (a1 + t (a2 + ... + t a5)) exp(-z^2), t = 1 / (1 + p z), z >= 0, absolute
# error <= 1.5e-7
AS_P = 0.3275911
AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
SHAPES = {"dinov3-l bs1": 8197, "da-v2-l bs1": 7082, "dinov3-l bs8": 8 * 8197}


@triton.jit
def _gelu_kernel(x_ptr, out_ptr, n, FORMULA: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    if FORMULA == "copy":
        y = x
    elif FORMULA == "libdevice":
        y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    else:  # Abramowitz & Stegun: Phi from erfc(|x| / sqrt 2), the sign chosen last
        z = tl.abs(x) * 0.7071067811865476
        t = 1.0 / (1.0 + 0.3275911 * z)
        poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
        half_erfc = 0.5 * poly * tl.exp(-z * z)
        y = x * tl.where(x >= 0, 1.0 - half_erfc, half_erfc)
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def gelu_as_torch(x: torch.Tensor) -> torch.Tensor:
    """The A&S formula as PyTorch ops in fp32: what a model would write for Inductor to fuse into one pass."""
    x32 = x.float()
    z = x32.abs() * 0.7071067811865476
    t = 1.0 / (1.0 + AS_P * z)
    poly = t * (AS_A[0] + t * (AS_A[1] + t * (AS_A[2] + t * (AS_A[3] + t * AS_A[4]))))
    half_erfc = 0.5 * poly * torch.exp(-z * z)
    return (x32 * torch.where(x32 >= 0, 1.0 - half_erfc, half_erfc)).to(x.dtype)


def gelu_triton(x: torch.Tensor, formula: str, out_dtype=None, block: int = 2048, num_warps: int = 8) -> torch.Tensor:
    out = torch.empty_like(x, dtype=out_dtype or x.dtype)
    n = x.numel()
    _gelu_kernel[(triton.cdiv(n, block),)](x, out, n, FORMULA=formula, BLOCK=block, num_warps=num_warps)
    return out


def all_bf16(device) -> torch.Tensor:
    """Every finite bf16 value whose GELU is not subnormal, once: Triton flushes subnormals to zero (its interpreter
    and, by default, its GPU code), which says nothing about the formula, and activations never live there."""
    values = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    values = values[torch.isfinite(values.float())].double()
    gelu = values * 0.5 * torch.special.erfc(-values / math.sqrt(2))
    tiny = torch.finfo(torch.bfloat16).tiny
    return values[(values.abs() >= 2 * tiny) & ((gelu == 0) | (gelu.abs() >= tiny))].to(torch.bfloat16).to(device)


def bf16_steps(actual: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """Distance in bf16 steps along the ordered number line (sign-magnitude bits made monotonic)."""
    def ordered(values):
        bits = values.cpu().view(torch.int16).long()
        return torch.where(bits < 0, -(bits & 0x7FFF), bits)

    return (ordered(actual) - ordered(expected)).abs()


def accuracy(device) -> dict:
    x = all_bf16(device)
    x64 = x.double().cpu()
    expected = (x64 * 0.5 * torch.special.erfc(-x64 / math.sqrt(2))).to(torch.bfloat16)  # no cancellation
    candidates = {
        "torch exact": F.gelu(x),
        "torch tanh": F.gelu(x, approximate="tanh"),
        # fp32 out, rounded to bf16 by torch: the interpreter truncates where the GPU rounds to nearest even
        "triton libdevice erf": gelu_triton(x, "libdevice", torch.float32).to(torch.bfloat16),
        "triton A&S erfc": gelu_triton(x, "as", torch.float32).to(torch.bfloat16),
        "torch A&S erfc": gelu_as_torch(x),
    }
    scores = {}
    for name, actual in candidates.items():
        steps = bf16_steps(actual, expected)
        scores[name] = {}
        for label, mask in (("|x| < 4", x64.abs() < 4), ("all", torch.ones_like(x64, dtype=torch.bool))):
            scores[name][label] = {"identical_share": (steps[mask] == 0).double().mean().item(),
                                   "max_steps": steps[mask].max().item(), "over_1_step": int((steps[mask] > 1).sum())}
        print(f"{name:22s} " + "; ".join(f"{label}: {100 * s['identical_share']:.3f}% identical, max {s['max_steps']} "
                                           f"steps" for label, s in scores[name].items()), flush=True)
    return {"inputs": x.numel(), "reference": "float64 x * erfc(-x / sqrt 2) / 2 rounded to bf16", "scores": scores}


def timings(rounds: int) -> dict:
    exact = torch.compile(lambda x: F.gelu(x))
    tanh = torch.compile(lambda x: F.gelu(x, approximate="tanh"))
    as_compiled = torch.compile(gelu_as_torch)
    results = {}
    for shape, tokens in SHAPES.items():
        x = torch.randn(tokens, 4096, device="cuda", dtype=torch.bfloat16)
        exact(x), tanh(x), as_compiled(x)
        timers = {
            "copy (triton)": lambda: graph_ms(lambda: gelu_triton(x, "copy")) * 1e3,
            "torch exact eager": lambda: graph_ms(lambda: F.gelu(x)) * 1e3,
            "torch exact compiled": lambda: graph_ms(lambda: exact(x)) * 1e3,
            "torch tanh compiled": lambda: graph_ms(lambda: tanh(x)) * 1e3,
            "triton libdevice erf": lambda: graph_ms(lambda: gelu_triton(x, "libdevice")) * 1e3,
            "triton A&S erfc": lambda: graph_ms(lambda: gelu_triton(x, "as")) * 1e3,
            "torch A&S erfc compiled": lambda: graph_ms(lambda: as_compiled(x)) * 1e3,
        }
        medians, spreads = interleaved_medians(timers, rounds)
        bytes_moved = 2 * x.numel() * x.element_size()
        results[shape] = {"tokens": tokens, "us": medians, "spread_us": spreads,
                          "tb_per_s": {name: round(bytes_moved / (us * 1e-6) / 1e12, 2) for name, us in medians.items()}}
        print(shape, medians, flush=True)
    return results


def model_bench(preset: str, resolution: str, directory: Path) -> dict:
    """The hybrid's `jetvit bench` latency (bs1) and batch-8 time: PyTorch's GELU, the A&S GELU, PyTorch's again."""
    exact_gelu = F.gelu

    def as_gelu(x, approximate="none"):
        return gelu_as_torch(x) if approximate == "none" else exact_gelu(x, approximate=approximate)

    plain = (contextlib.nullcontext(), [])
    return hybrid_bench_runs(preset, resolution, directory, {
        "torch exact": plain, "A&S erfc": (mock.patch.object(F, "gelu", as_gelu), []), "torch exact again": plain})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accuracy-only", action="store_true", help="only the exhaustive bf16 scores (CPU: set "
                        "TRITON_INTERPRET=1)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model-bench", default=None, metavar="PRESET:HxW",
                        help="also time the hybrid with each GELU through `jetvit bench` (e.g. dinov3-l:1024x2048)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    record = {"command": " ".join(sys.argv), "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "torch": torch.__version__, "triton": triton.__version__, "accuracy": accuracy(device)}
    if not args.accuracy_only:
        record["timings"] = timings(args.rounds)
    if args.model_bench:
        preset, resolution = args.model_bench.split(":")
        with tempfile.TemporaryDirectory() as directory:
            record["model_bench"] = model_bench(preset, resolution, Path(directory))
    if args.output:
        atomic_write_json(args.output, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
