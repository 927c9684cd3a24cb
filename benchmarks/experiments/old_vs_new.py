"""The kernels of commit f481f28 against the current ones at the ViT-L 1024x2048 shape, interleaved (median of 5 rounds),
each as a single-call CUDA graph (so every number includes ~15 us of graph launch; see kernel_ablations.py for graphs of
20 calls).

    git show f481f28:jetvit_hf/kernels_jetvit.py > benchmarks/experiments/kernels_old.py
    python benchmarks/experiments/old_vs_new.py OUT_DIR
"""
import json, sys, torch
from benchmarks.bench_linear_attention import cuda_median_ms, graphed
from benchmarks.experiments import kernels_old as old
from benchmarks.experiments.common import GRID as grid, NUM_PREFIX as P, interleaved_medians, vit_l_inputs
from jetvit_hf.models.jetvit import kernels_jetvit_linear as new
from jetvit_hf.models.jetvit.kernels_jetvit_window import window_attention_triton
torch.manual_seed(0)
res = {}
for B in (1, 8):
    q, k, v, cos, sin, w = vit_l_inputs(B)
    with torch.inference_mode():
        s, ks, vs = new.linear_attention_state_triton(k, v, cos, sin, P)
        fns = {
            "state_old": lambda: old.state_triton(k, v, cos, sin, P),
            "state_new": lambda: new.linear_attention_state_triton(k, v, cos, sin, P),
            "output_old": lambda: old.output_triton(q, v, s, ks, w, cos, sin, P, grid, 1e-6),
            "output_new": lambda: new.linear_attention_output_triton(q, v, s, ks, w, cos, sin, P, grid, 1e-6),
            "split_only": lambda: new.split_state(s, torch.bfloat16),
            "output_old_noconv": lambda: old.output_triton(q, v, s, ks, None, cos, sin, P, grid, 1e-6),
            "output_new_noconv": lambda: new.linear_attention_output_triton(q, v, s, ks, None, cos, sin, P, grid, 1e-6),
            "output_new_norope": lambda: new.linear_attention_output_triton(q, v, s, ks, w, None, None, P, grid, 1e-6),
            "output_new_noconv_norope": lambda: new.linear_attention_output_triton(q, v, s, ks, None, None, None, P, grid, 1e-6),
            "window_old": lambda: old.window_attention_triton(q, k, v, cos, sin, P, grid, 16, 0.125),
            "window_new_m256n64w8": lambda: window_attention_triton(q, k, v, cos, sin, P, grid, 16, 0.125, block_m=256, block_n=64, num_warps=8),
            "window_new_m128n128w4": lambda: window_attention_triton(q, k, v, cos, sin, P, grid, 16, 0.125, block_m=128, block_n=128, num_warps=4),
            "window_new_m128n64w4": lambda: window_attention_triton(q, k, v, cos, sin, P, grid, 16, 0.125, block_m=128, block_n=64, num_warps=4),
            "window_new_m128n128w4_norope": lambda: window_attention_triton(q, k, v, None, None, P, grid, 16, 0.125, block_m=128, block_n=128, num_warps=4),
            "window_new_m128n128w4_noprefix": lambda: window_attention_triton(q[:, P:], k[:, P:], v[:, P:], cos, sin, 0, grid, 16, 0.125, block_m=128, block_n=128, num_warps=4),
        }
        graphs = {name: graphed(fn) for name, fn in fns.items()}
        res[f"bs{B}"], res[f"bs{B}_spread"] = interleaved_medians(
            {name: (lambda g=g: 1e3 * cuda_median_ms(g, warmup=5, iters=30)) for name, g in graphs.items()}, 5)
        print(f"bs{B}", res[f"bs{B}"], flush=True)
        print(f"bs{B} spread", res[f"bs{B}_spread"], flush=True)
json.dump(res, open(sys.argv[1] + "/old_vs_new.json", "w"), indent=1)
