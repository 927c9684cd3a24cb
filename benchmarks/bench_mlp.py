"""Does fusing the MLP's GELU into the first GEMM's epilogue pay? (ViT-L MLP at 8197 tokens, bf16.)

Times `down(gelu(up(x)))` as: plain PyTorch ops, torch.compile (default), and `torch._addmm_activation(use_gelu=True)`
(cuBLASLt's bias+GELU epilogue, which is the tanh approximation), and reports the approximation's error.

    python benchmarks/bench_mlp.py --output mlp.json
"""

import argparse
import json
import sys

import torch
import torch.nn.functional as F

from benchmarks.bench_linear_attention import graph_ms
from jetvit_hf.io import atomic_write_json


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=8197)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_mlp: needs a CUDA GPU", file=sys.stderr)
        return 2
    dtype = torch.bfloat16
    with torch.device("cuda"):
        x = torch.randn(args.tokens, args.hidden, dtype=dtype)
        up = torch.nn.Linear(args.hidden, 4 * args.hidden).to(dtype)
        down = torch.nn.Linear(4 * args.hidden, args.hidden).to(dtype)

    def plain():
        return down(F.gelu(up(x)))

    def epilogue():
        return down(torch._addmm_activation(up.bias, x, up.weight.t(), use_gelu=True))

    compiled = torch.compile(plain)
    with torch.inference_mode():
        compiled()
        reference = plain()
        error = ((epilogue().float() - reference.float()).norm() / reference.float().norm()).item()
        results = {name: graph_ms(fn) for name, fn in
                   (("plain", plain), ("compiled", compiled), ("addmm_gelu_epilogue", epilogue))}
    flops = 4 * args.tokens * args.hidden * 4 * args.hidden
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "ms": results,
              "tflops": {k: flops / (v * 1e-3) / 1e12 for k, v in results.items()},
              "epilogue_relative_error_vs_erf_gelu": error}
    print(json.dumps(result, indent=1))
    if args.output:
        atomic_write_json(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
