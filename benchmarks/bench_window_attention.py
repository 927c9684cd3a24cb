"""Microbenchmark of window attention at a ViT-L shape: JetViT's module against its parts and alternatives.

Times (CUDA-graph replays, CUDA-event medians), for q/k/v given as views of one fused projection output:
- `module`: `JetViTWindowAttention` (projections included), eager and compiled;
- `triton_*`: the fused window kernel alone (patch queries, RoPE on load) per launch setting, and
  `reference_compiled`: the PyTorch path (RoPE, partition, prefix keys, SDPA, unpartition) under torch.compile;
- `sdpa_windows_261` / `sdpa_windows_256`: SDPA alone on pre-partitioned windows with and without the 5 prefix keys,
  per backend (cuDNN, flash, efficient), to show what the prefix keys and the backend cost;
- `sdpa_full`: full attention on the same tokens.

and, per batch size of `--train-batch-sizes` (default 1 and 8; `train_ms` in the JSON), forward + backward with q/k/v
as leaf views of one projection output and a fixed output gradient:
- `fused`: the `jetvit::window_attention` op, Triton forward and fused Triton backward
  (`kernels_jetvit_window_backward.py`), and `fused_backward_only`: the backward kernels alone;
- `recompute`: the Triton forward and the backward the op had before, the PyTorch path recomputed under autograd;
- `reference_compiled`: the PyTorch path under torch.compile, forward and backward;
- `sdpa_windows_261` / `sdpa_windows_256`: SDPA on pre-partitioned windows with and without the prefix keys, per
  backend, forward and backward (partitioning not included);
- `sdpa_full`: full attention on the same tokens, forward and backward.
Each is a CUDA-graph replay where capture works, else CUDA-event medians of eager calls (`train_timing` says which).
`train_grad_rel_error` compares the fused backward's gradients with the recompute path's. `--sweep-backward` also
times the backward kernels' launch settings, and `--training-only` skips the forward-only timings.

    python benchmarks/bench_window_attention.py --height 1024 --width 2048 --output window.json
    python benchmarks/bench_window_attention.py --training-only --sweep-backward --output window_backward.json
"""

import argparse
import itertools
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks.bench_linear_attention import cuda_median_ms, graph_ms
from jetvit_hf import JetViTConfig
from jetvit_hf.models.jetvit import kernels_jetvit_window, kernels_jetvit_window_backward, ops_jetvit, torch_jetvit
from jetvit_hf.io import atomic_write_json
from jetvit_hf.models.jetvit.modeling_jetvit import JetViTRopePositionEmbedding, JetViTWindowAttention

# (block_m, block_n, warps, key stages, register cap): the kernel is latency-bound at 1-2 programs per multiprocessor,
# so the sweep includes register caps that fit more programs per multiprocessor
WINDOW_SETTINGS = [
    (128, 128, 8, 1, None), (128, 128, 4, 1, None), (128, 64, 8, 1, None), (128, 64, 8, 2, None),
    (128, 128, 8, 1, 128), (128, 64, 8, 1, 128), (64, 64, 4, 1, None), (64, 64, 4, 1, 128), (64, 64, 4, 1, 96),
    (64, 128, 4, 1, None), (64, 128, 4, 1, 168), (256, 64, 16, 1, None), (256, 64, 8, 1, None),
]


# backward (block_m, block_n, warps, pipeline stages, pre_rotate) for --sweep-backward; not 8 warps with 3 stages,
# which the backward refuses (an illegal memory access, which would also poison every later setting of the sweep)
BACKWARD_SETTINGS = [(m, n, warps, stages, pre) for (m, n), warps, stages, pre in itertools.product(
    ((64, 64), (32, 64), (64, 32), (128, 64), (64, 128), (32, 32)), (4, 8), (1, 2, 3), (False, True))
    if warps * stages < 24]
SDPA_BACKENDS = (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION),
                 ("efficient", SDPBackend.EFFICIENT_ATTENTION))


def timed_ms(fn):
    """`(ms, method)`: a CUDA graph of 5 back-to-back calls of `fn` (autograd included) where it can be captured, else
    CUDA-event medians of eager calls."""
    try:
        return graph_ms(fn, repeats=5), "cuda_graph"
    except Exception as error:  # e.g. an op that cannot be captured
        torch.cuda.synchronize()
        print(f"  (no CUDA graph: {str(error)[:80]}; timing eager calls)")
        return cuda_median_ms(fn), "cuda_events"


def relative_error(actual, expected) -> float:
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def time_training(batch: int, grid, ws: int, position_embeddings, dtype, sweep: bool):
    """Forward + backward timings at one batch size (see the module docstring): `(ms, timing methods, grad errors)`."""
    cos, sin = position_embeddings
    tokens, heads, dim, scale = 5 + grid[0] * grid[1], 16, 64, 0.125
    base = torch.randn(batch, tokens, 3, heads, dim, device="cuda", dtype=dtype)
    q, k, v = (base[:, :, i].requires_grad_(True) for i in range(3))  # leaf views, the projection's layout
    grad_out = torch.randn(batch, tokens, heads * dim, device="cuda", dtype=dtype)
    window_args = (cos, sin, 5, grid, ws, scale)
    ms, methods = {}, {}

    def record(name, fn):
        ms[name], methods[name] = timed_ms(fn)

    def fused():
        out = ops_jetvit.window_attention(q, k, v, 5, grid, ws, scale, cos=cos, sin=sin)
        return torch.autograd.grad(out, (q, k, v), grad_out)

    def recompute():  # what the op did before the fused backward
        out = kernels_jetvit_window.window_attention_triton(q, k, v, *window_args)
        return out, ops_jetvit.window_attention_backward_recompute(q, k, v, cos, sin, grad_out, *window_args[2:])

    with torch.no_grad():
        output = kernels_jetvit_window.window_attention_triton(q, k, v, *window_args)

    def backward_only(**launch):
        return kernels_jetvit_window_backward.window_attention_backward_triton(
            q, k, v, output, grad_out, *window_args, **launch)

    errors = {name: relative_error(a, b) for name, a, b in zip("qkv", fused(), recompute()[1])}
    record("fused", fused)
    record("fused_backward_only", backward_only)
    record("recompute", recompute)
    reference = torch.compile(torch_jetvit.window_attention_torch)

    def reference_step():
        return torch.autograd.grad(reference(q, k, v, *window_args), (q, k, v), grad_out)

    reference_step()
    record("reference_compiled", reference_step)

    windows = batch * (grid[0] // ws) * (grid[1] // ws)
    wq = torch.randn(windows, heads, ws * ws, dim, device="cuda", dtype=dtype, requires_grad=True)
    k261 = torch.randn(windows, heads, ws * ws + 5, dim, device="cuda", dtype=dtype, requires_grad=True)
    v261 = torch.randn_like(k261, requires_grad=True)
    k256, v256 = (x[:, :, 5:].detach().contiguous().requires_grad_(True) for x in (k261, v261))
    window_grad = torch.randn(windows, heads, ws * ws, dim, device="cuda", dtype=dtype)
    for name, backend in SDPA_BACKENDS:
        for keys, (wk, wv) in (("261", (k261, v261)), ("256", (k256, v256))):
            def sdpa_step(wk=wk, wv=wv, backend=backend):
                with sdpa_kernel([backend]):
                    out = F.scaled_dot_product_attention(wq, wk, wv)
                return torch.autograd.grad(out, (wq, wk, wv), window_grad)
            try:
                sdpa_step()
                record(f"sdpa_windows_{keys}_{name}", sdpa_step)
            except RuntimeError as error:
                ms[f"sdpa_windows_{keys}_{name}"] = f"unsupported: {str(error)[:80]}"
    qf = torch.randn(batch, heads, tokens, dim, device="cuda", dtype=dtype, requires_grad=True)
    full_grad = torch.randn_like(qf)

    def full_step():
        return torch.autograd.grad(F.scaled_dot_product_attention(qf, qf, qf), qf, full_grad)

    record("sdpa_full", full_step)
    if sweep:
        for block_m, block_n, warps, stages, pre_rotate in BACKWARD_SETTINGS:
            name = f"fused_backward_m{block_m}_n{block_n}_w{warps}_s{stages}" + ("_pre_rotated" if pre_rotate else "")
            try:
                record(name, lambda: backward_only(block_m=block_m, block_n=block_n, num_warps=warps,
                                                   num_stages=stages, pre_rotate=pre_rotate))
                print(f"  {name}: {ms[name] * 1e3:.1f} us", flush=True)
            except Exception as error:  # e.g. out of shared memory for this setting
                print(f"backward setting {name} failed: {str(error)[:100]}")
    return ms, methods, errors


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--window-size", type=int, default=16)
    parser.add_argument("--train-batch-sizes", default="1,8", help="forward + backward timings at these batch sizes")
    parser.add_argument("--sweep-backward", action="store_true", help="also time the backward's launch settings")
    parser.add_argument("--training-only", action="store_true",
                        help="only the forward + backward timings (skip the forward-only ones and their sweep)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() or kernels_jetvit_window.triton is None:
        print("bench_window_attention: needs a CUDA GPU and triton", file=sys.stderr)
        return 2
    config = JetViTConfig(
        hidden_size=1024, num_hidden_layers=1, num_attention_heads=16, intermediate_size=4096, patch_size=16,
        num_register_tokens=4, position_embedding_type="rope", window_size=args.window_size,
    )
    grid = (args.height // 16, args.width // 16)
    tokens = 5 + grid[0] * grid[1]
    dtype = torch.bfloat16
    with torch.device("cuda"):
        module = JetViTWindowAttention(config).to(dtype).eval()
        rope = JetViTRopePositionEmbedding(config)
        position_embeddings = rope(grid, dtype)
        hidden = torch.randn(1, tokens, 1024, dtype=dtype)
    ws = args.window_size
    windows = (grid[0] // ws) * (grid[1] // ws)
    results = {}
    if not args.training_only:  # the forward: the module, the kernel's launch settings, SDPA
        with torch.inference_mode():
            results["module_eager"] = graph_ms(lambda: module(hidden, position_embeddings, grid))
            compiled = torch.compile(module)
            compiled(hidden, position_embeddings, grid)
            results["module_compiled"] = graph_ms(lambda: compiled(hidden, position_embeddings, grid))
            qkv = torch.randn(1, tokens, 3, 16, 64, device="cuda", dtype=dtype)
            tq, tk, tv = qkv.unbind(2)
            cos, sin = position_embeddings
            args_ = (tq, tk, tv, cos, sin, 5, grid, ws, 0.125)
            reference = torch.compile(torch_jetvit.window_attention_torch)
            reference(*args_)
            results["reference_compiled"] = graph_ms(lambda: reference(*args_))
            results["triton_default_without_rope"] = graph_ms(
                lambda: kernels_jetvit_window.window_attention_triton(tq, tk, tv, None, None, 5, grid, ws, 0.125))
            for block_m, block_n, warps, stages, registers in WINDOW_SETTINGS:
                name = f"triton_m{block_m}_n{block_n}_w{warps}_s{stages}" + (f"_r{registers}" if registers else "")
                try:
                    results[name] = graph_ms(lambda: kernels_jetvit_window.window_attention_triton(
                        *args_, block_m=block_m, block_n=block_n, num_warps=warps, key_stages=stages,
                        max_registers=registers))
                except Exception as error:  # e.g. out of shared memory for this setting
                    print(f"window setting {name} failed: {str(error)[:100]}")
            q = torch.randn(windows, 16, ws * ws, 64, device="cuda", dtype=dtype)
            k261 = torch.randn(windows, 16, ws * ws + 5, 64, device="cuda", dtype=dtype)
            v261 = torch.randn_like(k261)
            k256, v256 = k261[:, :, 5:].contiguous(), v261[:, :, 5:].contiguous()
            for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION),
                                  ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
                for keys, (k, v) in (("261", (k261, v261)), ("256", (k256, v256))):
                    try:
                        with sdpa_kernel([backend]):
                            results[f"sdpa_windows_{keys}_{name}"] = graph_ms(
                                lambda: F.scaled_dot_product_attention(q, k, v))
                    except RuntimeError as error:
                        results[f"sdpa_windows_{keys}_{name}"] = f"unsupported: {str(error)[:80]}"
            qf = torch.randn(1, 16, tokens, 64, device="cuda", dtype=dtype)
            results["sdpa_full"] = graph_ms(lambda: F.scaled_dot_product_attention(qf, qf, qf))
    train, train_timing, train_errors = {}, {}, {}
    for batch in (int(b) for b in args.train_batch_sizes.split(",") if b):
        key = f"batch_{batch}"
        train[key], train_timing[key], train_errors[key] = time_training(
            batch, grid, ws, position_embeddings, dtype, args.sweep_backward)
    flops = 4 * grid[0] * grid[1] * (ws * ws + 5) * 1024
    result = {"command": " ".join(sys.argv), "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "grid": grid, "window_size": ws,
              "window_attention_gflop": flops / 1e9, "ms": results, "train_ms": train, "train_timing": train_timing,
              "train_grad_rel_error": train_errors}
    timed = {k: v for k, v in results.items() if k.startswith("triton_m")}
    print("fastest window kernel settings:", sorted(timed.items(), key=lambda kv: kv[1])[:4])
    for name, value in results.items():
        if name.startswith("triton_m"):
            continue
        text = f"{value * 1e3:8.1f} us" if isinstance(value, float) else value
        print(f"  {name:28s} {text}")
    for key, timings in train.items():
        print(f"forward + backward, {key.replace('_', ' ')} (gradient error against recompute: "
              + ", ".join(f"d{name} {error:.1e}" for name, error in train_errors[key].items()) + ")")
        swept = {k: v for k, v in timings.items() if k.startswith("fused_backward_m")}
        if swept:
            print("  fastest backward settings:", sorted(swept.items(), key=lambda kv: kv[1])[:4])
        for name, value in timings.items():
            if name not in swept:
                text = f"{value * 1e3:8.1f} us" if isinstance(value, float) else value
                print(f"  {name:28s} {text}")
    if args.output:
        atomic_write_json(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
