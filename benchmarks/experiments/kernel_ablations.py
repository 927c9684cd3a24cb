"""Ablations of the attention kernels at the ViT-L 1024x2048 shape (graphs of 20 calls, median of 3 rounds): the output
kernel without its conv, the window kernel without prefix tokens, the state split alone, and the output kernel per
launch setting.

    python benchmarks/experiments/kernel_ablations.py OUT_DIR
"""
import json, sys, torch
from benchmarks.bench_linear_attention import graph_ms
from benchmarks.experiments.common import GRID as grid, NUM_PREFIX as P, interleaved_medians, vit_l_inputs
from jetvit_hf.models.jetvit import kernels_jetvit_linear as new
from jetvit_hf.models.jetvit.kernels_jetvit_window import window_attention_triton
torch.manual_seed(0)
res = {}
for B in (1, 8):
    q, k, v, cos, sin, w = vit_l_inputs(B)
    with torch.inference_mode():
        s, ks, vs = new.linear_attention_state_triton(k, v, cos, sin, P)
        fns = {"state": lambda: new.linear_attention_state_triton(k, v, cos, sin, P), "split": lambda: new.split_state(s, torch.bfloat16),
               "noconv": lambda: new.linear_attention_output_triton(q, v, s, ks, None, cos, sin, P, grid, 1e-6),
               "window": lambda: window_attention_triton(q, k, v, cos, sin, P, grid, 16, 0.125),
               "window_noprefix": lambda: window_attention_triton(q[:, P:], k[:, P:], v[:, P:], cos, sin, 0, grid, 16, 0.125)}
        for mod_name, mod in (("static", new),):
            for bn, wp in ((32, 2), (64, 2), (64, 4), (128, 4), (16, 1), (32, 1)):
                fns[f"{mod_name}_n{bn}_w{wp}"] = (lambda mod=mod, bn=bn, wp=wp: mod.linear_attention_output_triton(q, v, s, ks, w, cos, sin, P, grid, 1e-6, block_n=bn, num_warps=wp))
        res[f"bs{B}"], _ = interleaved_medians({name: (lambda fn=fn: 1e3 * graph_ms(fn)) for name, fn in fns.items()}, 3)
        print(f"bs{B}", res[f"bs{B}"], flush=True)
json.dump(res, open(sys.argv[1] + "/kernel_ablations.json", "w"), indent=1)
