"""Runs each fused attention kernel twice at the ViT-L 1024x2048 shape, for Nsight Compute:

    ncu --clock-control none --set full -k regex:"_state_kernel|_state_finalize_kernel|_output_kernel|_window_kernel|_prefix_merge_kernel" \
        -c 5 -o kernels python benchmarks/experiments/ncu_kernels.py
"""
import torch
from jetvit_hf import kernels_jetvit as kj
torch.manual_seed(0)
B, N, H, D, P, grid = 1, 8197, 16, 64, 5, (64, 128)
qkv = torch.randn(B, N, 3, H, D, device="cuda", dtype=torch.bfloat16)
q, k, v = qkv.unbind(2)
ang = torch.rand(8192, 32, device="cuda") * 6.3
cos, sin = torch.cos(ang).repeat(1, 2).bfloat16(), torch.sin(ang).repeat(1, 2).bfloat16()
w = torch.randn(B, H * D, 3, 3, device="cuda", dtype=torch.bfloat16) * 0.1
with torch.inference_mode():
    for _ in range(2):
        s, ks, vs = kj.state_triton(k, v, cos, sin, P)
        o = kj.output_triton(q, v, s, ks, w, cos, sin, P, grid, 1e-6)
        o2 = kj.window_attention_triton(q, k, v, cos, sin, P, grid, 16, 0.125)
    torch.cuda.synchronize()
