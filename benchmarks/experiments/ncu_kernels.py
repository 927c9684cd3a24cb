"""Runs each fused attention kernel twice at the ViT-L 1024x2048 shape, for Nsight Compute:

    ncu --clock-control none --set full -k regex:"_state_kernel|_state_finalize_kernel|_output_kernel|_window_kernel|_prefix_merge_kernel" \
        -c 5 -o kernels python benchmarks/experiments/ncu_kernels.py
"""
import torch
from benchmarks.experiments.common import GRID as grid, NUM_PREFIX as P, vit_l_inputs
from jetvit_hf.models.jetvit import kernels_jetvit_linear as kj
from jetvit_hf.models.jetvit.kernels_jetvit_window import window_attention_triton
torch.manual_seed(0)
q, k, v, cos, sin, w = vit_l_inputs(1)
with torch.inference_mode():
    for _ in range(2):
        s, ks, vs = kj.linear_attention_state_triton(k, v, cos, sin, P)
        o = kj.linear_attention_output_triton(q, v, s, ks, w, cos, sin, P, grid, 1e-6)
        o2 = window_attention_triton(q, k, v, cos, sin, P, grid, 16, 0.125)
    torch.cuda.synchronize()
