"""Runs the MLP's up-projection twice at the ViT-L 1024x2048 shape (8197 x 1024 -> 4096, bf16), as the shipped
Gluon ping-pong kernel with the exact GELU and as cuBLAS's GEMM + bias without it, for Nsight Compute:

    ncu --clock-control none --set full -k regex:"_gemm_bias_gelu_kernel|nvjet" -c 2 -o gemm \
        python benchmarks/experiments/ncu_gelu_gemm.py
"""
import torch
import torch.nn.functional as F

from jetvit_hf.models.jetvit.kernels_jetvit_mlp import linear_gelu_gluon

torch.manual_seed(0)
x = torch.randn(8197, 1024, device="cuda").bfloat16()
weight = (torch.randn(4096, 1024, device="cuda") / 32).bfloat16()
bias = torch.randn(4096, device="cuda").bfloat16()
with torch.inference_mode():
    for _ in range(2):
        linear_gelu_gluon(x, weight, bias)
        F.linear(x, weight, bias)
    torch.cuda.synchronize()
