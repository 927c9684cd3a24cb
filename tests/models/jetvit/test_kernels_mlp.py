"""The MLP's fused up-projection + exact GELU (`kernels_jetvit_mlp.py`, `ops_jetvit.linear_gelu`) and
`fuse_gelu_epilogue`.

On the CPU: the kernel's GELU formula (its coefficients, evaluated as the kernel does in fp32) against float64's
exact GELU; the op's fallback and schema; which epilogue each MLP gets. On a Hopper GPU with Gluon: the kernel against
float64 at ragged shapes, and a model with the fused GELU against the unfused one. Compiling the kernel for sm_90
without a GPU is in `test_kernels_compile.py`.
"""

from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from jetvit_hf.models.jetvit import kernels_jetvit_mlp, ops_jetvit
from jetvit_hf.models.jetvit.configuration_jetvit import JetViTConfig
from jetvit_hf.models.jetvit.modeling_jetvit import JetViTMLP, JetViTModel


def logistic_gelu(x: torch.Tensor) -> torch.Tensor:
    """The kernel's epilogue, step for step: Horner in x^2, then x / (1 + 2^(x P(x^2)))."""
    coefficients = kernels_jetvit_mlp.GELU_LOGISTIC_COEFFICIENTS
    square = x * x
    p = torch.full_like(x, coefficients[-1])
    for c in reversed(coefficients[:-1]):
        p = c + square * p
    return x / (1.0 + torch.exp2(x * p))


def test_the_logistic_gelu_is_as_close_to_the_exact_gelu_as_pytorchs_fp32_gelu():
    x = torch.linspace(-40, 40, 800_001, dtype=torch.float32)  # fp32 inputs, as the kernel's accumulator holds
    exact = F.gelu(x.double())
    assert (logistic_gelu(x.double()) - exact).abs().max() < 1e-7  # the fit itself
    ours, pytorch = logistic_gelu(x).double(), F.gelu(x).double()
    assert (ours - exact).abs().max() < 1e-6
    assert (ours - exact).abs().max() < 1e-2 * (F.gelu(x.double(), approximate="tanh") - exact).abs().max()
    # in bf16, the output's precision, it rounds away from float64's GELU no more often than PyTorch's fp32 GELU does
    # (both lose relative precision in the far negative tail, where GELU is below 1e-6)
    mismatches = {name: (y.bfloat16() != exact.bfloat16()).double().mean().item()
                  for name, y in (("ours", ours), ("pytorch", pytorch))}
    assert mismatches["ours"] <= mismatches["pytorch"], mismatches


def test_linear_gelu_falls_back_to_pytorch_off_hopper():
    torch.manual_seed(0)
    x, weight, bias = torch.randn(2, 5, 16), torch.randn(24, 16), torch.randn(24)
    assert not kernels_jetvit_mlp.gluon_linear_gelu_supported(x, weight, bias)
    torch.testing.assert_close(ops_jetvit.linear_gelu(x, weight, bias), F.gelu(F.linear(x, weight, bias)),
                               rtol=0, atol=0)
    torch.library.opcheck(torch.ops.jetvit.linear_gelu.default, (x, weight, bias),
                          test_utils=("test_schema", "test_faketensor"))


def config(hidden_act: str) -> JetViTConfig:
    return JetViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        image_size=32, patch_size=8, hidden_act=hidden_act, attention_types=["full", "linear"])


@pytest.mark.parametrize("hidden_act, own", [("gelu", "erf"), ("gelu_pytorch_tanh", "tanh"), ("gelu_new", "tanh")])
def test_fuse_gelu_epilogue_keeps_each_models_own_gelu_unless_tanh_is_asked_for(hidden_act, own):
    model = JetViTModel(config(hidden_act))
    mlps = [m for m in model.modules() if isinstance(m, JetViTMLP)]
    assert mlps and all(m.gelu_epilogue is None for m in mlps)
    model.fuse_gelu_epilogue()
    assert all(m.gelu_epilogue == own for m in mlps)
    model.fuse_gelu_epilogue(approximate="tanh")
    assert all(m.gelu_epilogue == "tanh" for m in mlps)
    model.fuse_gelu_epilogue(enabled=False)
    assert all(m.gelu_epilogue is None for m in mlps)
    with pytest.raises(ValueError, match="approximate"):
        model.fuse_gelu_epilogue(approximate="erf")


def test_fuse_gelu_epilogue_leaves_other_activations_alone():
    model = JetViTModel(config("silu"))
    model.fuse_gelu_epilogue()
    assert all(m.gelu_epilogue is None for m in model.modules() if isinstance(m, JetViTMLP))


hopper = pytest.mark.skipif(
    not (torch.cuda.is_available()
         and kernels_jetvit_mlp.gluon_linear_gelu_runs_on(torch.device("cuda"), torch.bfloat16)),
    reason="needs a Hopper GPU and Triton with Gluon")


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows, hidden, out", [(1, 64, 128), (127, 64, 1000), (33, 72, 136), (300, 256, 1024),
                                              (8197, 1024, 4096)])  # ragged rows, columns and K (TMA zero-fills)
def test_the_kernel_matches_float64_like_cublas_and_pytorchs_gelu(dtype, rows, hidden, out):
    torch.manual_seed(0)
    x = torch.randn(rows, hidden, device="cuda", dtype=dtype)
    weight = (torch.randn(out, hidden, device="cuda") / hidden ** 0.5).to(dtype)
    bias = torch.randn(out, device="cuda", dtype=dtype)
    assert kernels_jetvit_mlp.gluon_linear_gelu_supported(x, weight, bias)
    expected = F.gelu(x.double() @ weight.double().T + bias.double())

    def error(y):
        return ((y.double() - expected).norm() / expected.norm()).item()

    ours, cublas = kernels_jetvit_mlp.linear_gelu_gluon(x, weight, bias), F.gelu(F.linear(x, weight, bias))
    assert ours.shape == (rows, out) and ours.dtype == dtype
    assert error(ours) <= 1.05 * error(cublas), (error(ours), error(cublas))  # the output's rounding dominates both
    torch.testing.assert_close(ours, expected.to(dtype), rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("tile, stages, block_k", [((128, 128), 5, 64), ((64, 256), 4, 64), ((128, 128), 2, 128)])
@pytest.mark.parametrize("rows, hidden, out", [(127, 64, 1000), (8197, 1024, 1024)])
def test_the_kernel_without_the_gelu_matches_float64_like_cublas(tile, stages, block_k, rows, hidden, out):
    """`linear_gluon(gelu=False)`, the bias-only epilogue `benchmarks/experiments/gemm_pingpong_shapes.py` times, at
    each of its consumer tiles and K-steps."""
    torch.manual_seed(0)
    x = torch.randn(rows, hidden, device="cuda", dtype=torch.bfloat16)
    weight = (torch.randn(out, hidden, device="cuda") / hidden ** 0.5).bfloat16()
    bias = torch.randn(out, device="cuda", dtype=torch.bfloat16)
    expected = x.double() @ weight.double().T + bias.double()

    def error(y):
        return ((y.double() - expected).norm() / expected.norm()).item()

    ours = kernels_jetvit_mlp.linear_gluon(x, weight, bias, gelu=False, tile=tile, stages=stages, block_k=block_k)
    assert ours.shape == (rows, out) and ours.dtype == torch.bfloat16
    assert error(ours) <= 1.05 * error(F.linear(x, weight, bias))


@pytest.mark.gpu
@hopper
def test_a_model_with_the_fused_exact_gelu_matches_the_unfused_one():
    torch.manual_seed(0)
    model = JetViTModel(config("gelu")).cuda().to(torch.bfloat16).eval()
    pixel_values = torch.randn(2, 3, 32, 32, device="cuda", dtype=torch.bfloat16)
    launches = []

    def counted(*args):
        launches.append(args[0].shape)
        return kernels_jetvit_mlp.linear_gelu_gluon(*args)

    with torch.inference_mode(), mock.patch.object(ops_jetvit, "linear_gelu_gluon", counted):
        unfused = model(pixel_values).last_hidden_state.float()
        assert not launches
        model.fuse_gelu_epilogue()
        fused = model(pixel_values).last_hidden_state.float()
    assert len(launches) == model.config.num_hidden_layers
    torch.testing.assert_close(fused, unfused, rtol=3e-2, atol=3e-2)
    # with gradients on, the MLP takes the unfused path, which has a backward
    model(pixel_values).last_hidden_state.float().sum().backward()
    assert model.encoder.layer[0].mlp.up_proj.weight.grad is not None
