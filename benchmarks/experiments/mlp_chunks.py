"""Does running the MLP over token chunks, so that each chunk's 4x-wide hidden activation stays in L2, make the exact
GELU pass cheap? (ViT-L MLP, 1024 -> 4096 -> 1024, bf16.)

At 8197 tokens the up-projection writes 67 MB a image, more than an H100's or H200's L2 (50 / 60 MB); the GELU pass
then reads and writes it from DRAM (42-50 us a layer on the H200, `h200_gelu_pass.json`) and the down-projection reads
it again. In chunks of T tokens the hidden activation is T x 4096 x 2 bytes (16.8 MB at T = 2048), written by the
up-projection into one reused buffer, GELU'd in place and read by the down-projection while it is still in L2; the
down-projection writes its chunk of the output in place. Same GEMMs and the same exact GELU, so the same numbers up
to cuBLAS picking other kernels for the smaller M. Times, as CUDA-graph medians:
- `plain`: `down(gelu(up(x)))`, PyTorch ops, unchunked (what the model runs, eagerly);
- `in_place`: the chunked code with one chunk (separates the in-place buffers from the chunking);
- `chunks_T`: the chunked code for each T of `--chunks`;
- `addmm_tanh_epilogue`: cuBLASLt's bias + tanh-GELU epilogue, unchunked (the speed the exact GELU should reach);
- `no_gelu`: the two GEMMs alone (the floor).

    python benchmarks/experiments/mlp_chunks.py --batch 1 --output mlp_chunks_bs1.json
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.bench_linear_attention import graph_ms  # noqa: E402
from jetvit_hf.io import atomic_write_json  # noqa: E402


def chunked_mlp(x: torch.Tensor, up: torch.nn.Linear, down: torch.nn.Linear, chunk: int,
                hidden: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """`down(gelu(up(x)))` over `chunk` tokens at a time: `hidden` (at least `chunk` x up's width) is reused for every
    chunk's activation, so it stays in L2; `out` (x's rows x down's width) receives the result in place."""
    flat = x.reshape(-1, x.shape[-1])
    for start in range(0, flat.shape[0], chunk):
        rows = flat[start:start + chunk]
        h = hidden[:rows.shape[0]]
        torch.addmm(up.bias, rows, up.weight.t(), out=h)
        torch.ops.aten.gelu_(h)
        torch.addmm(down.bias, h, down.weight.t(), out=out[start:start + rows.shape[0]])
    return out.view(*x.shape[:-1], out.shape[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=8197, help="tokens per image (1024x2048 / 16 + 5 = 8197)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--chunks", default="8192,4096,2048,1024", help="token chunk sizes, comma-separated")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("mlp_chunks: needs a CUDA GPU", file=sys.stderr)
        return 2
    chunks = [int(c) for c in args.chunks.split(",")]
    torch.manual_seed(0)
    with torch.device("cuda"):
        x = torch.randn(args.batch, args.tokens, args.hidden, dtype=torch.bfloat16)
        up = torch.nn.Linear(args.hidden, 4 * args.hidden).bfloat16()
        down = torch.nn.Linear(4 * args.hidden, args.hidden).bfloat16()
        tokens = args.batch * args.tokens
        hidden = torch.empty(max([tokens, *chunks]), 4 * args.hidden, dtype=torch.bfloat16)
        out = torch.empty(tokens, args.hidden, dtype=torch.bfloat16)
    flat = x.view(-1, args.hidden)
    variants = {
        "plain": lambda: down(F.gelu(up(x))),
        "in_place": lambda: chunked_mlp(x, up, down, tokens, hidden, out),
        **{f"chunks_{c}": (lambda c=c: chunked_mlp(x, up, down, c, hidden, out)) for c in chunks},
        "addmm_tanh_epilogue": lambda: down(torch._addmm_activation(up.bias, flat, up.weight.t(), use_gelu=True)).view_as(x),
        "no_gelu": lambda: down(up(x)),
    }
    with torch.inference_mode():
        reference = down(F.gelu(up(x))).double()
        errors = {name: ((fn().double() - reference).norm() / reference.norm()).item()
                  for name, fn in variants.items() if name != "no_gelu"}
        ms = {name: graph_ms(fn) for name, fn in variants.items()}
    result = {
        "command": " ".join(sys.argv),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "l2_cache_mb": torch.cuda.get_device_properties(0).L2_cache_size / 2**20,
        "shape": {"batch": args.batch, "tokens_per_image": args.tokens, "hidden": args.hidden, "dtype": "bfloat16"},
        "ms": ms,
        "relative_error_vs_plain": errors,
    }
    for name, value in ms.items():
        print(f"{name:22s} {value:7.3f} ms   error vs plain {errors.get(name, float('nan')):.1e}")
    if args.output:
        atomic_write_json(args.output, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
