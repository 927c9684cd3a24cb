"""Microbenchmark of window attention at a ViT-L shape: JetViT's module against its parts and alternatives.

Times (CUDA-graph replays, CUDA-event medians), for q/k/v given as views of one fused projection output:
- `module`: `JetViTWindowAttention` (projections included), eager and compiled;
- `triton_*`: the fused window kernel alone (patch queries, RoPE on load) per launch setting, and
  `reference_compiled`: the PyTorch path (RoPE, partition, prefix keys, SDPA, unpartition) under torch.compile;
- `sdpa_windows_261` / `sdpa_windows_256`: SDPA alone on pre-partitioned windows with and without the 5 prefix keys,
  per backend (cuDNN, flash, efficient), to show what the prefix keys and the backend cost;
- `sdpa_full`: full attention on the same tokens.

    python benchmarks/bench_window_attention.py --height 1024 --width 2048 --output window.json
"""

import argparse
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks.bench_linear_attention import graph_ms
from jetvit_hf import JetViTConfig
from jetvit_hf.models.jetvit import kernels_jetvit_window, torch_jetvit
from jetvit_hf.io import atomic_write_json
from jetvit_hf.models.jetvit.modeling_jetvit import JetViTRopePositionEmbedding, JetViTWindowAttention

# (block_m, block_n, warps, key stages, register cap): the kernel is latency-bound at 1-2 programs per multiprocessor,
# so the sweep includes register caps that fit more programs per multiprocessor
WINDOW_SETTINGS = [
    (128, 128, 8, 1, None), (128, 128, 4, 1, None), (128, 64, 8, 1, None), (128, 64, 8, 2, None),
    (128, 128, 8, 1, 128), (128, 64, 8, 1, 128), (64, 64, 4, 1, None), (64, 64, 4, 1, 128), (64, 64, 4, 1, 96),
    (64, 128, 4, 1, None), (64, 128, 4, 1, 168), (256, 64, 16, 1, None), (256, 64, 8, 1, None),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--window-size", type=int, default=16)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_window_attention: needs a CUDA GPU", file=sys.stderr)
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
    flops = 4 * grid[0] * grid[1] * (ws * ws + 5) * 1024
    result = {"command": " ".join(sys.argv), "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "grid": grid, "window_size": ws,
              "window_attention_gflop": flops / 1e9, "ms": results}
    timed = {k: v for k, v in results.items() if k.startswith("triton_m")}
    print("fastest window kernel settings:", sorted(timed.items(), key=lambda kv: kv[1])[:4])
    for name, value in results.items():
        if name.startswith("triton_m"):
            continue
        text = f"{value * 1e3:8.1f} us" if isinstance(value, float) else value
        print(f"  {name:28s} {text}")
    if args.output:
        atomic_write_json(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
