"""Microbenchmark of JetViT's fused linear-attention block against its compulsory memory traffic.

The block (RoPE, ReLU linear attention and the squeeze dynamic depthwise conv; projections excluded) must read q,
k, v and write o once: 4 * tokens * channels * bytes. This script times the fused ops (state kernel, the tiny kernel
generator MLP, output kernel) as CUDA-graph replays of 20 back-to-back calls (what compiled, graphed inference sees:
no Python launch gaps), with CUDA-event medians, and reports the achieved fraction of the measured copy bandwidth,
next to the plain-PyTorch reference path and to full attention (SDPA) on the same shape. For training it times the two
ops' forward and backward (autograd, the gradients of q/k/v and of the convolution kernels) with the fused Triton
backwards against the PyTorch backwards, at each of `--train-batch-sizes`. `--sweep` times the kernels' launch settings.

    python benchmarks/bench_linear_attention.py --tokens 8197 --heads 16 --head-dim 64 --output results.json
"""

import argparse
import contextlib
import itertools
import statistics
import sys
from unittest import mock

import torch
import torch.nn.functional as F

from jetvit_hf.io import atomic_write_json
from jetvit_hf.models.jetvit import kernels_jetvit_linear, kernels_jetvit_linear_backward, ops_jetvit, torch_jetvit
from jetvit_hf.models.jetvit.ops_jetvit import linear_attention_output, linear_attention_state


def cuda_median_ms(fn, warmup: int = 10, iters: int = 50) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def graphed(fn, repeats: int = 1):
    """Capture `repeats` back-to-back calls of `fn` in one CUDA graph (after a warm-up on a side stream) and return a
    replay function."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(repeats):
            fn()
    return graph.replay


def graph_ms(fn, repeats: int = 20) -> float:
    """Milliseconds per call of `fn`, from a CUDA graph of `repeats` back-to-back calls: the CPU's graph launch (about
    15 us, seen between the timing events) would otherwise be counted in every microsecond-scale op."""
    return cuda_median_ms(graphed(fn, repeats)) / repeats


def copy_bandwidth_gbs(num_bytes: int = 2 << 30) -> float:
    """Measured device-to-device copy bandwidth (bytes read + bytes written per second), the practical ceiling."""
    src = torch.empty(num_bytes // 2, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = cuda_median_ms(lambda: dst.copy_(src), warmup=3, iters=20)
    return 2 * src.numel() / (ms * 1e-3) / 1e9


@contextlib.contextmanager
def pytorch_backwards():
    """The ops' backwards on the PyTorch path (fp32 einsums, RoPE/ReLU/unrotation passes, cuDNN's convolution
    backward) while the forwards stay the Triton kernels: what training ran before the fused backwards."""
    with mock.patch.object(ops_jetvit, "linear_attention_state_backward_triton",
                           torch_jetvit.linear_attention_state_backward_torch), \
            mock.patch.object(ops_jetvit, "linear_attention_output_backward_triton",
                              torch_jetvit.linear_attention_output_backward_torch):
        yield


def timed_ms(fn) -> tuple[float, str]:
    """`graph_ms(fn)` where `fn` can be captured in a CUDA graph, else eager CUDA-event medians (then the CPU's launch
    gaps are counted too); with the method used."""
    try:
        return graph_ms(fn, repeats=5), "cuda graph"
    except Exception:  # a capture failure leaves nothing running; time it eagerly
        torch.cuda.synchronize()
        return cuda_median_ms(fn, warmup=5, iters=20), "eager"


def time_training(batch, tokens, num_prefix, grid, heads, dim, dtype, cos, sin) -> dict:
    """Forward plus backward of the two ops (q/k/v as views of one projection output, the convolution kernels a leaf,
    random output and V-sum gradients), with the fused Triton backwards and with the PyTorch backwards."""
    generator = torch.Generator(device="cuda").manual_seed(0)
    qkv = torch.randn(batch, tokens, 3, heads, dim, device="cuda", dtype=dtype, generator=generator)
    qkv.requires_grad_(True)
    conv_weight = (0.3 * torch.randn(batch, heads * dim, 3, 3, device="cuda", generator=generator)).to(dtype)
    conv_weight.requires_grad_(True)
    grad_out = torch.randn(batch, tokens, heads * dim, device="cuda", dtype=dtype, generator=generator)
    grad_value_sum = torch.randn(batch, heads, dim, device="cuda", generator=generator)

    def forward():
        q, k, v = qkv.unbind(2)
        state, key_sum, value_sum = linear_attention_state(k, v, num_prefix, cos, sin)
        out = linear_attention_output(q, v, state, key_sum, conv_weight, num_prefix, grid, 1e-6, cos, sin)
        return out, value_sum

    def step():
        out, value_sum = forward()
        return torch.autograd.grad((out, value_sum), (qkv, conv_weight), (grad_out, grad_value_sum))

    with torch.no_grad():
        forward_ms, _ = timed_ms(forward)
    fused_grads = step()
    fused_ms, fused_method = timed_ms(step)
    with pytorch_backwards():
        reference_grads = step()
        reference_ms, reference_method = timed_ms(step)
    errors = {name: ((a.double() - b.double()).norm() / b.double().norm()).item()
              for name, a, b in zip(("qkv", "conv_weight"), fused_grads, reference_grads)}
    return {
        "batch": batch,
        "forward_ms": forward_ms,
        "fused_backward_train_step_ms": fused_ms,
        "pytorch_backward_train_step_ms": reference_ms,
        "fused_backward_ms": fused_ms - forward_ms,
        "pytorch_backward_ms": reference_ms - forward_ms,
        "timing": {"fused": fused_method, "pytorch": reference_method},
        "relative_grad_error_fused_vs_pytorch_backward": errors,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=8197, help="sequence length (1024x2048 / 16 + 5 = 8197)")
    parser.add_argument("--num-prefix", type=int, default=5)
    parser.add_argument("--grid", type=str, default="64x128", help="patch grid HxW (tokens - prefix)")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--no-rope", action="store_true", help="learned position embeddings (DINOv2) instead of RoPE")
    parser.add_argument("--train-batch-sizes", default="1,8",
                        help="batch sizes at which to time forward + backward ('' for none)")
    parser.add_argument("--sweep", action="store_true", help="also time the kernels' launch settings")
    parser.add_argument("--sweep-backward", action="store_true",
                        help="also time the backward kernels' launch settings (the part of --sweep they are)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() or kernels_jetvit_linear.triton is None:
        print("bench_linear_attention: needs a CUDA GPU and triton", file=sys.stderr)
        return 2

    dtype = getattr(torch, args.dtype)
    grid = tuple(int(x) for x in args.grid.split("x"))
    batch, tokens, heads, dim = args.batch_size, args.tokens, args.heads, args.head_dim
    channels = heads * dim
    assert tokens == args.num_prefix + grid[0] * grid[1], "tokens must equal prefix + grid cells"
    qkv = torch.randn(batch, tokens, 3, heads, dim, device="cuda", dtype=dtype)
    q, k, v = qkv.unbind(2)
    num_patches = grid[0] * grid[1]
    if args.no_rope:
        cos = sin = None
    else:
        angles = torch.rand(num_patches, dim // 2, device="cuda") * 6.3
        cos, sin = torch.cos(angles).repeat(1, 2).to(dtype), torch.sin(angles).repeat(1, 2).to(dtype)
    generator = torch.nn.Sequential(
        torch.nn.Linear(channels, channels // 4), torch.nn.SiLU(), torch.nn.Linear(channels // 4, channels * 9)
    ).to("cuda", dtype)

    def fused():
        state, key_sum, value_sum = linear_attention_state(k, v, args.num_prefix, cos, sin)
        conv_weight = generator((value_sum.flatten(1) / num_patches).to(dtype)).view(batch, channels, 3, 3)
        return linear_attention_output(q, v, state, key_sum, conv_weight, args.num_prefix, grid, 1e-6, cos, sin)

    def reference():
        state, key_sum, value_sum = torch_jetvit.linear_attention_state_torch(k, v, cos, sin, args.num_prefix)
        conv_weight = generator((value_sum.flatten(1) / num_patches).to(dtype)).view(batch, channels, 3, 3)
        return torch_jetvit.linear_attention_output_torch(
            q, v, state, key_sum, conv_weight, cos, sin, args.num_prefix, grid, 1e-6)

    def full_attention():
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))

    sweep = []
    with torch.inference_mode():
        error = ((fused().double() - reference().double()).norm() / reference().double().norm()).item()
        state_ms = graph_ms(lambda: linear_attention_state(k, v, args.num_prefix, cos, sin))
        state, key_sum, value_sum = linear_attention_state(k, v, args.num_prefix, cos, sin)
        conv_weight = generator((value_sum.flatten(1) / num_patches).to(dtype)).view(batch, channels, 3, 3)
        output_ms = graph_ms(lambda: linear_attention_output(
            q, v, state, key_sum, conv_weight, args.num_prefix, grid, 1e-6, cos, sin))
        fused_ms = graph_ms(fused)
        reference_ms = graph_ms(reference)
        full_ms = graph_ms(full_attention)
        if args.sweep or args.sweep_backward:
            state, key_sum, _ = linear_attention_state(k, v, args.num_prefix, cos, sin)
            conv_weight = torch.randn(batch, channels, 3, 3, device="cuda", dtype=dtype)
        if args.sweep:
            # the state kernel around the earlier sweep's best settings (block 32-64, 2-4 warps, 4 programs per SM)
            for block_n, warps, per_sm, stages in itertools.product((32, 64), (2, 4), (4, 8), (2, 3)):
                try:
                    ms = graph_ms(lambda: kernels_jetvit_linear.linear_attention_state_triton(
                        k, v, cos, sin, args.num_prefix, block_n=block_n, num_warps=warps, programs_per_sm=per_sm,
                        num_stages=stages))
                except Exception:  # e.g. out of shared memory for this setting
                    continue
                sweep.append({"kernel": "state", "block_n": block_n, "warps": warps, "per_sm": per_sm,
                              "stages": stages, "ms": ms})
            for block_n, block_e, warps in itertools.product((32, 64, 128), (16, 32, 64), (2, 4, 8)):
                ms = graph_ms(lambda: kernels_jetvit_linear.linear_attention_output_triton(
                    q, v, state, key_sum, conv_weight, cos, sin, args.num_prefix, grid, 1e-6,
                    block_n=block_n, block_e=block_e, num_warps=warps))
                sweep.append({"kernel": "output", "block_n": block_n, "block_e": block_e, "warps": warps, "ms": ms})
        if args.sweep or args.sweep_backward:
            sweep += sweep_backward(q, k, v, state, key_sum, conv_weight, cos, sin, args.num_prefix, grid)
            for kernel in ("state", "output", "state_backward", "output_backward"):
                best = sorted((r for r in sweep if r["kernel"] == kernel), key=lambda r: r["ms"])[:4]
                print(f"fastest {kernel} settings: " + "; ".join(
                    f"{r['ms'] * 1e3:.1f} us " + ",".join(f"{k}={v}" for k, v in r.items() if k not in ("kernel", "ms"))
                    for r in best))
    train = [time_training(int(b), tokens, args.num_prefix, grid, heads, dim, dtype, cos, sin)
             for b in args.train_batch_sizes.split(",") if b.strip()]
    for row in train:
        print(f"train B={row['batch']}: forward {row['forward_ms'] * 1e3:.1f} us, forward+backward with fused backward "
              f"{row['fused_backward_train_step_ms'] * 1e3:.1f} us, with PyTorch backward "
              f"{row['pytorch_backward_train_step_ms'] * 1e3:.1f} us ({row['timing']}); grad rel. error "
              + ", ".join(f"{k} {v:.1e}" for k, v in row["relative_grad_error_fused_vs_pytorch_backward"].items()))
    bandwidth = copy_bandwidth_gbs()
    compulsory = 4 * batch * tokens * channels * qkv.element_size()
    achieved = compulsory / (fused_ms * 1e-3) / 1e9
    result = {
        "command": " ".join(sys.argv),
        "gpu": torch.cuda.get_device_name(),
        "versions": {"torch": torch.__version__, "triton": kernels_jetvit_linear.triton.__version__},
        "shape": {"batch": batch, "tokens": tokens, "heads": heads, "head_dim": dim, "grid": grid, "dtype": args.dtype,
                  "rope": not args.no_rope},
        "relative_error_vs_pytorch_path": error,
        "fused_ms": fused_ms,
        "state_op_ms": state_ms,
        "output_op_ms": output_ms,
        "pytorch_reference_ms": reference_ms,
        "sdpa_full_attention_ms": full_ms,
        "compulsory_bytes": compulsory,
        "achieved_gbs": achieved,
        "copy_bandwidth_gbs": bandwidth,
        "fraction_of_copy_bandwidth": achieved / bandwidth,
        "train": train,
        "sweep": sweep,
    }
    print(
        f"{result['gpu']} {args.dtype} B={batch} N={tokens} H={heads} d={dim}: fused {fused_ms * 1e3:.1f} us "
        f"(state op {state_ms * 1e3:.1f} us, output op {output_ms * 1e3:.1f} us), PyTorch path {reference_ms * 1e3:.1f} us, SDPA full {full_ms * 1e3:.1f} us; "
        f"{achieved:.0f} GB/s of compulsory traffic = {100 * achieved / bandwidth:.0f}% of copy bandwidth "
        f"({bandwidth:.0f} GB/s); rel. error vs PyTorch path {error:.1e}"
    )
    if args.output:
        atomic_write_json(args.output, result)
    return 0


# the backwards' launch settings for --sweep / --sweep-backward: (block_n, warps) compile a kernel, programs per SM
# only size the grid. Left out by their sm_90 resources (`experiments/sm90_kernel_resources.json`): 128-token state
# blocks (256 KiB of shared memory, over the limit), and output blocks with 2 warps or 64 tokens with 4 (120-1472
# bytes of register spills a thread).
STATE_BACKWARD_SETTINGS = list(itertools.product((32, 64), (4, 8), (2, 4, 8)))
OUTPUT_BACKWARD_SETTINGS = [(block_n, warps, per_sm) for block_n, warps in ((16, 4), (16, 8), (32, 4), (32, 8), (64, 8))
                            for per_sm in (2, 4, 8)]


def sweep_backward(q, k, v, state, key_sum, conv_weight, cos, sin, num_prefix, grid) -> list[dict]:
    """The fused backwards' launch settings, each kernel on random gradients of its op's outputs, each with RoPE in the
    kernel and pre-rotated (`pre_rotate`, with RoPE only); the current defaults first (`block_n` None), so that a run
    cut short still compares against them. Each timing is printed as it is taken."""
    rows = []
    batch, tokens, heads, dim = q.shape
    grads = [torch.randn_like(t) for t in (state, key_sum, key_sum)]
    grad_out = torch.randn(batch, tokens, heads * dim, device=q.device, dtype=q.dtype)
    kernels = (
        ("state_backward", STATE_BACKWARD_SETTINGS, lambda **launch: (
            kernels_jetvit_linear_backward.linear_attention_state_backward_triton(
                k, v, cos, sin, num_prefix, *grads, **launch))),
        ("output_backward", OUTPUT_BACKWARD_SETTINGS, lambda **launch: (
            kernels_jetvit_linear_backward.linear_attention_output_backward_triton(
                q, v, state, key_sum, conv_weight, cos, sin, num_prefix, grid, 1e-6, grad_out, **launch))),
    )
    for kernel, settings, run in kernels:
        for block_n, warps, per_sm in [(None, None, None), *settings]:
            for pre_rotate in (False, True) if cos is not None else (False,):
                try:
                    ms = graph_ms(lambda: run(block_n=block_n, num_warps=warps, programs_per_sm=per_sm,
                                              pre_rotate=pre_rotate))
                except Exception:  # e.g. out of shared memory or registers for this setting
                    continue
                rows.append({"kernel": kernel, "block_n": block_n, "warps": warps, "per_sm": per_sm,
                             "pre_rotate": pre_rotate, "ms": ms})
                print(f"  {kernel} block_n={block_n or 'default'} warps={warps} per_sm={per_sm}"
                      f"{' pre-rotated' if pre_rotate else ''}: {ms * 1e3:.1f} us", flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
