"""Does fusing the MLP's GELU into the up-projection's GEMM epilogue pay, and what does each variant cost in accuracy?
(ViT-L MLP, 1024 -> 4096 -> 1024, at 8197 tokens per image, bf16.)

Times `down(gelu(up(x)))`, as CUDA-graph medians, as:
- `plain`: PyTorch ops with the exact (erf) GELU, as DINOv2/DINOv3/Depth Anything were trained;
- `compiled`: `torch.compile` (default mode) of `plain`;
- `addmm_tanh_epilogue`: `torch._addmm_activation(use_gelu=True)`, cuBLASLt's bias+GELU epilogue, which computes the
  tanh approximation (the model's opt-in `fuse_gelu_epilogue()`, `jetvit bench --tanh-gelu-epilogue`);
- `triton_erf_epilogue`: `experiments/triton_gelu_gemm.py`, a Triton GEMM with bias and exact GELU in its epilogue
  (measured slower than `plain` on an H200, so not shipped in the model); `triton_erfc_as_epilogue` the same with
  the branch-free Abramowitz & Stegun erfc for the GELU;
- `triton_tma_erfc_as_epilogue` (Hopper): the persistent TMA version of that GEMM with the A&S GELU (as fast as
  cuBLAS without the GELU, but its epilogue adds a quarter: still slower than the tanh epilogue, so not shipped
  either; `experiments/README.md`);
- `gluon_erf_epilogue` (Hopper, Triton with Gluon): the shipped kernel (`kernels_jetvit_mlp.py`, what
  `fuse_gelu_epilogue()` runs for exact-GELU models), a ping-pong GEMM with the exact GELU in logistic form;
and the up-projection alone (`up_projection_ms`): cuBLAS's GEMM with bias and no GELU (the floor a fused epilogue can
reach), the same plus PyTorch's GELU, the fused epilogues, and the Triton GEMMs without their GELU. Each variant's
relative error (Frobenius norm) is against a float64 computation with the exact GELU from the same half-precision
inputs. `--sweep` also times the Triton kernels' launch settings (`SWEEP`, `TMA_SWEEP`).

    python benchmarks/bench_mlp.py --output mlp.json
    python benchmarks/bench_mlp.py --batch 8 --sweep --output mlp_b8.json
    python benchmarks/bench_mlp.py --model-bench dinov3-l:1024x2048 --output mlp_model.json   # + the whole hybrid

`--model-bench` also runs `jetvit bench` of the hybrid three times in this process (`experiments/common.py`): with
PyTorch's exact GELU, with the model's GELU-epilogue path (`--tanh-gelu-epilogue`) patched to the TMA kernel's exact
A&S GELU, and with PyTorch's again.
"""

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python benchmarks/bench_mlp.py` from anywhere

from benchmarks.bench_linear_attention import graph_ms  # noqa: E402
from jetvit_hf.io import atomic_write_json  # noqa: E402
from jetvit_hf.models.jetvit import kernels_jetvit_mlp  # noqa: E402
from benchmarks.experiments import triton_gelu_gemm  # noqa: E402
from benchmarks.experiments.common import hybrid_bench_runs  # noqa: E402

# (block_m, block_n, block_k, warps, stages, epilogue split, programs per SM (0: one program per tile), group_m)
SWEEP = [
    (128, 256, 64, 8, 3, 2, 0, 8), (128, 256, 64, 8, 3, 1, 0, 8), (128, 256, 64, 8, 4, 2, 0, 8),
    (128, 256, 64, 8, 3, 2, 1, 8), (128, 256, 64, 8, 3, 2, 0, 4), (128, 256, 64, 8, 3, 2, 0, 16),
    (256, 128, 64, 8, 3, 2, 0, 8), (128, 128, 64, 8, 3, 1, 0, 8), (128, 128, 64, 8, 4, 1, 0, 8),
    (128, 128, 64, 4, 4, 1, 0, 8), (128, 128, 64, 8, 3, 1, 2, 8), (64, 256, 64, 4, 4, 2, 0, 8),
    (128, 256, 32, 8, 4, 2, 0, 8),
]
# the TMA kernel, A&S GELU: (block_m, block_n, block_k, warps, stages, epilogue split, programs per SM, warp specialize)
TMA_SWEEP = [
    (128, 256, 64, 8, 3, 2, 1, False), (128, 256, 64, 8, 3, 2, 1, True), (128, 256, 64, 8, 4, 2, 1, False),
    (128, 256, 64, 8, 3, 1, 1, False), (128, 256, 64, 8, 4, 2, 1, True), (128, 128, 64, 8, 4, 1, 1, False),
    (128, 128, 64, 8, 4, 1, 2, False), (128, 128, 64, 4, 4, 1, 2, True), (256, 128, 64, 8, 3, 2, 1, False),
    # two programs per SM for real (sm_90: <= 112 KiB, <= 128 registers at 8 warps), so one's epilogue can run
    # beside the other's main loop
    (128, 128, 64, 8, 3, 2, 2, False), (128, 128, 64, 8, 2, 1, 2, False), (128, 128, 64, 8, 2, 2, 2, False),
    (128, 128, 64, 8, 3, 2, 2, True), (128, 128, 64, 4, 3, 2, 2, False), (64, 256, 64, 4, 2, 2, 2, False),
]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected).norm() / expected.norm()).item()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=8197, help="tokens per image (1024x2048 / 16 + 5 = 8197)")
    parser.add_argument("--batch", type=int, default=1, help="images (8: 8 x 8197 tokens)")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument("--sweep", action="store_true", help="also time the Triton kernel's launch settings")
    parser.add_argument("--model-bench", default=None, metavar="PRESET:HxW",
                        help="also time the hybrid with PyTorch's GELU and the TMA kernel's (e.g. dinov3-l:1024x2048)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_mlp: needs a CUDA GPU", file=sys.stderr)
        return 2
    has_triton = triton_gelu_gemm.triton is not None
    if not has_triton:
        print("bench_mlp: triton is not installed; the Triton variants are left out", file=sys.stderr)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    with torch.device("cuda"):
        x = torch.randn(args.batch, args.tokens, args.hidden, dtype=dtype)
        up = torch.nn.Linear(args.hidden, 4 * args.hidden).to(dtype)
        down = torch.nn.Linear(4 * args.hidden, args.hidden).to(dtype)
    flat = x.view(-1, args.hidden)

    def plain():
        return down(F.gelu(up(x)))

    def tanh_epilogue_up():
        return torch._addmm_activation(up.bias, flat, up.weight.t(), use_gelu=True).view(*x.shape[:-1], -1)

    def tanh_epilogue():
        return down(tanh_epilogue_up())

    def triton_up(gelu="erf"):
        return triton_gelu_gemm.linear_gelu_triton(x, up.weight, up.bias, gelu=gelu)

    def triton_tma_up(gelu="erfc_as"):
        return triton_gelu_gemm.linear_gelu_triton_tma(x, up.weight, up.bias, gelu=gelu)

    mlp = {"plain": plain, "compiled": torch.compile(plain), "addmm_tanh_epilogue": tanh_epilogue}
    up_only = {"cublas_gemm_bias_no_gelu": lambda: up(x), "cublas_gemm_bias_then_gelu": lambda: F.gelu(up(x)),
               "addmm_tanh_epilogue": tanh_epilogue_up}
    if has_triton:
        mlp["triton_erf_epilogue"] = lambda: down(triton_up())
        mlp["triton_erfc_as_epilogue"] = lambda: down(triton_up("erfc_as"))
        up_only["triton_erf_epilogue"] = triton_up
        up_only["triton_erfc_as_epilogue"] = lambda: triton_up("erfc_as")
        up_only["triton_gemm_bias_no_gelu"] = lambda: triton_up(gelu="")
        if torch.cuda.get_device_capability()[0] >= 9:  # TMA
            mlp["triton_tma_erfc_as_epilogue"] = lambda: down(triton_tma_up())
            up_only["triton_tma_erfc_as_epilogue"] = triton_tma_up
            up_only["triton_tma_gemm_bias_no_gelu"] = lambda: triton_tma_up(gelu="")
    if kernels_jetvit_mlp.gluon_linear_gelu_supported(x, up.weight, up.bias):
        mlp["gluon_erf_epilogue"] = lambda: down(kernels_jetvit_mlp.linear_gelu_gluon(x, up.weight, up.bias))
        up_only["gluon_erf_epilogue"] = lambda: kernels_jetvit_mlp.linear_gelu_gluon(x, up.weight, up.bias)
    with torch.inference_mode():
        hidden64 = F.gelu(x.double() @ up.weight.double().T + up.bias.double())  # exact GELU, float64
        out64 = hidden64 @ down.weight.double().T + down.bias.double()
        errors = {name: relative_error(fn(), out64) for name, fn in mlp.items()}  # also compiles before timing
        up_errors = {name: relative_error(up_only[name](), hidden64)
                     for name in ("cublas_gemm_bias_then_gelu", "addmm_tanh_epilogue", "triton_erf_epilogue",
                                  "triton_erfc_as_epilogue", "triton_tma_erfc_as_epilogue", "gluon_erf_epilogue")
                     if name in up_only}
        ms = {name: graph_ms(fn) for name, fn in mlp.items()}
        up_ms = {name: graph_ms(fn) for name, fn in up_only.items()}
        sweep = run_sweep(x, up, hidden64) if args.sweep and has_triton else []
    del hidden64, out64
    tokens = args.batch * args.tokens
    flops = 4 * tokens * args.hidden * 4 * args.hidden  # two GEMMs
    config = None
    if has_triton:
        config = triton_gelu_gemm.launch_config(tokens, 4 * args.hidden, args.hidden, dtype, x.device)
    result = {
        "command": " ".join(sys.argv),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton_gelu_gemm.triton.__version__ if has_triton else None,
        "shape": {"batch": args.batch, "tokens_per_image": args.tokens, "hidden": args.hidden,
                  "intermediate": 4 * args.hidden, "dtype": args.dtype},
        "triton_launch_config": dict(zip(("block_m", "block_n", "block_k", "warps", "stages", "epilogue_split"),
                                         config)) if config else None,
        "ms": ms,
        "tflops": {k: flops / (v * 1e-3) / 1e12 for k, v in ms.items()},
        "relative_error_vs_float64_erf_gelu": errors,
        "up_projection_ms": up_ms,
        "up_projection_tflops": {k: flops / 2 / (v * 1e-3) / 1e12 for k, v in up_ms.items()},
        "up_projection_relative_error_vs_float64_erf_gelu": up_errors,
        "sweep": sweep,
    }
    if args.model_bench:
        preset, resolution = args.model_bench.split(":")
        plain = (contextlib.nullcontext(), [])
        tma = (mock.patch.object(torch, "_addmm_activation", triton_gelu_gemm.tma_addmm_activation),
               ["--tanh-gelu-epilogue"])
        with tempfile.TemporaryDirectory() as directory:
            result["model_bench"] = hybrid_bench_runs(preset, resolution, Path(directory), {
                "torch exact": plain, "triton tma, A&S GELU epilogue": tma, "torch exact again": plain})
    print(json.dumps(result, indent=1))
    if args.output:
        atomic_write_json(args.output, result)
    return 0


def run_sweep(x, up, hidden64) -> list[dict]:
    """The Triton up-projection (bias + exact GELU) under each launch setting of SWEEP (libdevice erf) and, on Hopper,
    TMA_SWEEP (the TMA kernel, A&S erfc), fastest first; each timing is printed as it is taken."""
    runs = [("pointer", triton_gelu_gemm.linear_gelu_triton,
             dict(block_m=m, block_n=n, block_k=k, num_warps=w, num_stages=st, epilogue_split=sp, programs_per_sm=p,
                  group_m=g)) for m, n, k, w, st, sp, p, g in SWEEP]
    if torch.cuda.get_device_capability()[0] >= 9:
        runs += [("tma", triton_gelu_gemm.linear_gelu_triton_tma,
                  dict(block_m=m, block_n=n, block_k=k, num_warps=w, num_stages=st, epilogue_split=sp,
                       programs_per_sm=p, warp_specialize=ws)) for m, n, k, w, st, sp, p, ws in TMA_SWEEP]
    rows = []
    for kernel, launcher, settings in runs:
        def fn(launcher=launcher, settings=settings):
            return launcher(x, up.weight, up.bias, **settings)

        try:
            error = relative_error(fn(), hidden64)
            rows.append({"kernel": kernel, **settings, "ms": graph_ms(fn), "relative_error": error})
        except Exception as exc:  # e.g. out of shared memory for this setting
            rows.append({"kernel": kernel, **settings, "failed": f"{type(exc).__name__}: {exc}"[:300]})
        print("sweep: " + ", ".join(f"{k}={v}" for k, v in rows[-1].items()), file=sys.stderr, flush=True)
    rows.sort(key=lambda row: row.get("ms", float("inf")))
    return rows


if __name__ == "__main__":
    sys.exit(main())
