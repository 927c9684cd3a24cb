"""Every Triton kernel compiles for Hopper (sm_90, to a cubin) at the shapes and launch settings it ships with, without
a GPU: Triton's compiler runs on the CPU, behind a stand-in for its CUDA driver (`benchmarks/sm90_compile.py`).

The interpreter tests (`test_kernels.py` with TRITON_INTERPRET=1) check the kernels' arithmetic but not what only the
compiler checks, such as a loop-carried variable that changes shape (the window backward had one). Needs Triton
installed and TRITON_INTERPRET unset; the kernels' numbers are checked by `test_kernels.py`.
"""

import os
import re

import pytest
import torch

from benchmarks.sm90_compile import SM90_SHARED_MEMORY, compile_only_for_sm90, resource_usage
from jetvit_hf.models.jetvit import kernels_jetvit_linear

triton = kernels_jetvit_linear.triton
pytestmark = [
    pytest.mark.skipif(triton is None, reason="triton is not installed"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter does not compile"),
    pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU test_kernels.py compiles and runs them"),
]


@pytest.fixture
def compiled_kernels():
    with compile_only_for_sm90() as compiled:
        yield compiled


def inputs(dtype, heads=2, dim=64, grid=(8, 8), num_prefix=5, kernel_size=3, rope=True):
    tokens = num_prefix + grid[0] * grid[1]
    qkv = torch.randn(1, tokens, 3, heads, dim).to(dtype)  # q, k, v as views of one projection output
    q, k, v = qkv.unbind(2)
    conv_weight = torch.randn(1, heads * dim, kernel_size, kernel_size) if kernel_size else None
    cos, sin = (torch.randn(grid[0] * grid[1], dim) for _ in range(2)) if rope else (None, None)
    return q, k, v, conv_weight, cos, sin


def check(compiled, expected_kernels):
    names = {name for name, _ in compiled}
    assert expected_kernels <= names, f"launched {sorted(names)}"
    for name, kernel in compiled:
        assert "cubin" in kernel.asm, name
        assert kernel.metadata.shared <= SM90_SHARED_MEMORY, (name, kernel.metadata.shared)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("dim, rope, kernel_size, num_prefix", [(64, True, 3, 5), (48, False, None, 1), (64, True, 5, 0)])
def test_linear_attention_kernels_compile_for_sm90(compiled_kernels, dtype, dim, rope, kernel_size, num_prefix):
    from jetvit_hf.models.jetvit.kernels_jetvit_linear import (
        linear_attention_output_triton,
        linear_attention_state_triton,
    )
    from jetvit_hf.models.jetvit.kernels_jetvit_linear_backward import (
        linear_attention_output_backward_triton,
        linear_attention_state_backward_triton,
    )

    grid = (8, 8)
    q, k, v, conv_weight, cos, sin = inputs(dtype, dim=dim, grid=grid, num_prefix=num_prefix,
                                            kernel_size=kernel_size, rope=rope)
    state, key_sum, value_sum = linear_attention_state_triton(k, v, cos, sin, num_prefix)
    out = linear_attention_output_triton(q, v, state, key_sum, conv_weight, cos, sin, num_prefix, grid, 1e-6)
    for pre_rotate in (False, True):
        linear_attention_state_backward_triton(k, v, cos, sin, num_prefix, state, key_sum, value_sum,
                                               pre_rotate=pre_rotate)
        linear_attention_output_backward_triton(q, v, state, key_sum, conv_weight, cos, sin, num_prefix, grid, 1e-6,
                                                torch.randn(out.shape).to(dtype), pre_rotate=pre_rotate)
    expected = {"_state_backward_kernel", "_output_backward_kernel", "_state_finalize_kernel"}
    check(compiled_kernels, expected | ({"_rope_rotate_kernel"} if rope else set()))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("grid, window, num_prefix, dim, rope", [
    ((32, 32), 16, 5, 64, True),   # windows tile the grid (ViT-L, DINOv3)
    ((37, 37), 16, 1, 64, False),  # padded windows, one prefix token (DINOv2 without registers at 518 px)
    ((12, 10), 4, 0, 48, True),    # no prefix, a padded head dimension
])
def test_window_attention_kernels_compile_for_sm90(compiled_kernels, dtype, grid, window, num_prefix, dim, rope):
    from jetvit_hf.models.jetvit.kernels_jetvit_window import window_attention_triton
    from jetvit_hf.models.jetvit.kernels_jetvit_window_backward import window_attention_backward_triton

    q, k, v, _, cos, sin = inputs(dtype, dim=dim, grid=grid, num_prefix=num_prefix, kernel_size=None, rope=rope)
    out = window_attention_triton(q, k, v, cos, sin, num_prefix, grid, window, 0.125)
    for pre_rotate in (False, True):
        window_attention_backward_triton(q, k, v, out, torch.randn(out.shape).to(dtype), cos, sin, num_prefix, grid,
                                         window, 0.125, pre_rotate=pre_rotate)
    expected = {"_window_bwd_dq_kernel", "_window_bwd_dkdv_kernel"}
    if num_prefix:
        expected |= {"_prefix_stats_kernel", "_prefix_grad_kernel"}
    if rope:
        expected |= {"_rope_rotate_kernel"}
    check(compiled_kernels, expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows, hidden, out", [(8197, 1024, 4096), (127, 64, 1000)])
def test_mlp_gelu_kernel_compiles_for_sm90_without_spills(compiled_kernels, dtype, rows, hidden, out):
    from jetvit_hf.models.jetvit import kernels_jetvit_mlp

    if kernels_jetvit_mlp.gluon is None:
        pytest.skip("this Triton has no Gluon")
    x, weight, bias = (torch.randn(shape).to(dtype) for shape in ((rows, hidden), (out, hidden), (out, )))
    kernels_jetvit_mlp.linear_gelu_gluon(x, weight, bias)
    check(compiled_kernels, {"_gemm_bias_gelu_kernel"})
    (_, kernel), = compiled_kernels
    # three warpgroups (two consumers and the loader's, padded), the consumers raised to 232 registers, no spills
    assert kernel.metadata.num_warps == 12
    assert re.search(r"setmaxnreg\.inc\.sync\.aligned\.u32\s+232;", kernel.asm["ptx"])
    assert resource_usage(kernel)["stack_bytes"] == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("channels", [128, 256, 48])
def test_upsample_kernel_compiles_for_sm90_without_spills(compiled_kernels, dtype, channels):
    from jetvit_hf.models.jetvit.kernels_jetvit_upsample import upsample_bilinear_triton

    x = torch.randn(1, channels, 73, 97).to(dtype).contiguous(memory_format=torch.channels_last)
    upsample_bilinear_triton(x, (1022, 1358))
    check(compiled_kernels, {"_upsample_bilinear_kernel"})
    (_, kernel), = compiled_kernels
    assert resource_usage(kernel)["stack_bytes"] == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("sigmoid, with_conv1_bias", [(False, True), (True, False)])
def test_depth_head_kernel_compiles_for_sm90_without_spills(compiled_kernels, dtype, sigmoid, with_conv1_bias):
    from jetvit_hf.models.jetvit.kernels_jetvit_depth_head import upsampled_depth_head_triton

    x = torch.randn(1, 128, 16, 20).to(dtype).contiguous(memory_format=torch.channels_last)
    conv2_weight, conv2_bias = torch.randn(32, 128, 3, 3).to(dtype), torch.randn(32).to(dtype)
    conv3_weight, conv3_bias = torch.randn(1, 32, 1, 1).to(dtype), torch.randn(1).to(dtype)
    conv1_bias = torch.randn(128).to(dtype) if with_conv1_bias else None
    upsampled_depth_head_triton(x, (28, 35), conv2_weight, conv2_bias, conv3_weight, conv3_bias, sigmoid, 1.0,
                                conv1_bias)
    check(compiled_kernels, {"_upsampled_depth_head_kernel"})
    (_, kernel), = compiled_kernels
    print(resource_usage(kernel))
    assert resource_usage(kernel)["stack_bytes"] == 0
