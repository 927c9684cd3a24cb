"""The row-walking output kernel of commit 3f3d866 ("new", reverted in c2a5908) against the token-block one that the
package uses ("old"), interleaved (median of 5 rounds), as CUDA graphs of 20 calls, at the DINOv3-L 1024x2048 shape
(64x128 grid, 5 prefix tokens, RoPE) or, with `dav2`, the Depth Anything V2-L 1022x1358 one (73x97 grid, 1 prefix
token, no RoPE); `dinov3-norope` and `dav2-rope` swap RoPE.

    git show 3f3d866:jetvit_hf/kernels_jetvit.py > benchmarks/experiments/kernels_rows.py
    python benchmarks/experiments/output_rows.py OUT_DIR [dinov3 | dinov3-norope | dav2 | dav2-rope]
"""
import json
import sys

import torch

from benchmarks.bench_linear_attention import graph_ms
from benchmarks.experiments import kernels_rows as new
from benchmarks.experiments.common import GRID, NUM_PREFIX, interleaved_medians, vit_l_inputs
from jetvit_hf.models.jetvit import kernels_jetvit_linear as old

shape = sys.argv[2] if len(sys.argv) > 2 else "dinov3"
torch.manual_seed(0)
results = {"shape": shape}
for batch in (1, 8):
    grid, P = ((73, 97), 1) if shape.startswith("dav2") else (GRID, NUM_PREFIX)
    q, k, v, cos, sin, w = vit_l_inputs(batch, grid, P)
    if shape in ("dav2", "dinov3-norope"):
        cos = sin = None
    with torch.inference_mode():
        s, ks, _ = new.state_triton(k, v, cos, sin, P)
        error = (new.output_triton(q, v, s, ks, w, cos, sin, P, grid, 1e-6).float()
                 - old.linear_attention_output_triton(q, v, s, ks, w, cos, sin, P, grid, 1e-6).float()).abs().max().item()
        ops = {
            "output_old": lambda: old.linear_attention_output_triton(q, v, s, ks, w, cos, sin, P, grid, 1e-6),
            "output_new": lambda: new.output_triton(q, v, s, ks, w, cos, sin, P, grid, 1e-6),
            "output_new_c16": lambda: new.output_triton(q, v, s, ks, w, cos, sin, P, grid, 1e-6, block_c=16),
            "output_new_c32": lambda: new.output_triton(q, v, s, ks, w, cos, sin, P, grid, 1e-6, block_c=32),
            "output_old_noconv": lambda: old.linear_attention_output_triton(q, v, s, ks, None, cos, sin, P, grid, 1e-6),
            "output_new_noconv": lambda: new.output_triton(q, v, s, ks, None, cos, sin, P, grid, 1e-6),
            "state": lambda: new.state_triton(k, v, cos, sin, P),
        }
        medians, spread = interleaved_medians({name: (lambda op=op: 1e3 * graph_ms(op)) for name, op in ops.items()}, 5)
    results[f"bs{batch}"], results[f"bs{batch}_spread"], results[f"bs{batch}_max_abs_diff"] = medians, spread, error
    print(f"{shape} bs{batch} us", medians, "spread", spread, "max |new - old|", error, flush=True)
json.dump(results, open(f"{sys.argv[1]}/output_rows_{shape}.json", "w"), indent=1)
