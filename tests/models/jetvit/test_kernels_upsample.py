"""The DPT neck's bilinear upsampling kernel (`kernels_jetvit_upsample.py`) and its op: against float64
`F.interpolate(align_corners=True)` (on a GPU, or on the CPU through Triton's interpreter with TRITON_INTERPRET=1), and
the dispatch rules of `ops_jetvit.upsample_bilinear`."""

import copy

import pytest
import torch
import torch.nn.functional as F

from jetvit_hf.models.jetvit import kernels_jetvit_upsample, ops_jetvit
from jetvit_hf.models.jetvit.kernels_jetvit_upsample import upsample_bilinear_runs_on, upsample_bilinear_triton
from test_kernels import triton_device


def reference(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x.double(), size=size, mode="bilinear", align_corners=True)


def channels_last_map(batch, channels, height, width, dtype, device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, height, width, generator=generator).mul_(3)
    return x.to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("in_size, out_size, channels", [
    ((5, 7), (10, 14), 16),      # the fusion layers' 2x
    ((9, 12), (23, 29), 48),     # the head's ratio (14 / 2 per patch), channels not a power of two
    ((4, 6), (4, 6), 200),       # identity size; two channel blocks
    ((1, 5), (3, 11), 8),        # a one-row input: every output row reads row 0
    ((6, 3), (1, 1), 8),         # a one-pixel output: scale 0, the corner sample
])
def test_kernel_matches_float64_interpolate(dtype, in_size, out_size, channels):
    device = triton_device(dtype)
    x = channels_last_map(2, channels, *in_size, dtype, device)
    out = upsample_bilinear_triton(x, out_size)
    assert out.shape == (2, channels, *out_size) and out.dtype == dtype
    assert out.is_contiguous(memory_format=torch.channels_last)
    expected = reference(x, out_size)
    # fp32 arithmetic, one rounding to the output dtype: within one rounding of the float64 value
    tolerance = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    torch.testing.assert_close(out.double(), expected, rtol=tolerance, atol=tolerance * expected.abs().max().item())


def test_kernel_reads_strided_channels_last_views():
    """The neck's first maps are channels-last *views* of the backbone's token tensor (prefix tokens sliced off):
    the kernel reads them through their strides, without a copy."""
    device = triton_device(torch.float32)
    grid, prefix, channels = (6, 5), 3, 24
    tokens = torch.randn(2, prefix + grid[0] * grid[1], channels, generator=torch.Generator().manual_seed(1))
    tokens = tokens.to(device)
    view = tokens[:, prefix:].reshape(2, *grid, channels).permute(0, 3, 1, 2)
    assert view.stride(1) == 1 and not view.is_contiguous(memory_format=torch.channels_last)
    out = upsample_bilinear_triton(view, (11, 13))
    torch.testing.assert_close(out.double(), reference(view, (11, 13)), rtol=1e-5, atol=1e-5)


def test_op_fake_implementation_matches_the_real_one():
    """torch.compile sees the op through its fake implementation: opcheck compares shapes, dtypes and strides with
    what the op returns (the F.interpolate fallback on the CPU, made channels-last like the kernel's output)."""
    for memory_format in (torch.channels_last, torch.contiguous_format):
        x = torch.randn(2, 6, 5, 7).contiguous(memory_format=memory_format)
        torch.library.opcheck(torch.ops.jetvit.upsample_bilinear, (x, 9, 13),
                              test_utils=("test_schema", "test_faketensor"))


def test_dispatch_keeps_autograd_and_cpu_on_interpolate(monkeypatch):
    """`upsample_bilinear` launches the kernel only on maps it takes and outside autograd: elsewhere it is
    F.interpolate itself, so gradients flow and the values are transformers'."""
    launched = []
    monkeypatch.setattr(ops_jetvit, "upsample_bilinear_runs_on", lambda x: True)
    monkeypatch.setattr(ops_jetvit, "upsample_bilinear_triton",
                        lambda x, size: launched.append(size) or F.interpolate(x, size, mode="bilinear",
                                                                               align_corners=True))
    x = torch.randn(1, 4, 3, 5).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ops_jetvit.upsample_bilinear(x, (6, 10))
    assert launched == [(6, 10)]

    x.requires_grad_(True)
    out = ops_jetvit.upsample_bilinear(x, (6, 10))
    assert launched == [(6, 10)], "a map that needs a gradient took the kernel, which has no backward"
    out.sum().backward()
    expected_grad, = torch.autograd.grad(F.interpolate(x, (6, 10), mode="bilinear", align_corners=True).sum(), x)
    torch.testing.assert_close(x.grad, expected_grad)


def test_runs_on_only_channels_last_cuda_maps():
    assert not upsample_bilinear_runs_on(torch.randn(1, 4, 3, 3).contiguous(memory_format=torch.channels_last))
    if kernels_jetvit_upsample.triton is None or not torch.cuda.is_available():
        pytest.skip("the positive cases need Triton and a CUDA GPU")
    nchw = torch.randn(1, 4, 3, 3, device="cuda")
    assert not upsample_bilinear_runs_on(nchw)
    assert upsample_bilinear_runs_on(nchw.contiguous(memory_format=torch.channels_last).half())
    assert not upsample_bilinear_runs_on(nchw.contiguous(memory_format=torch.channels_last).double())


@pytest.mark.gpu
@pytest.mark.parametrize("compiled", [False, True])
def test_depth_model_with_the_kernels_matches_interpolate(monkeypatch, compiled):
    """A bf16 depth model on the GPU (the fusion layers' upsamplings through this kernel, the head's upsampling and
    convolutions after conv1 through `kernels_jetvit_depth_head.py`; eager, or compiled without graph breaks) predicts
    what its modules predict with F.interpolate everywhere, to bf16 rounding: measured against the same model in float32,
    its error is at most twice that of the bf16 modules (or 1% of the largest depth)."""
    if kernels_jetvit_upsample.triton is None:
        pytest.skip("triton is not installed")
    from test_dpt_channels_last import tiny_depth_model

    model = tiny_depth_model().to("cuda", torch.bfloat16).eval()
    pixel_values = torch.randn(2, 3, 40, 56, generator=torch.Generator().manual_seed(1)).to("cuda", torch.bfloat16)
    launches, head_launches = [], []
    real_kernel, real_head = ops_jetvit.upsample_bilinear_triton, ops_jetvit.upsampled_depth_head_triton
    monkeypatch.setattr(ops_jetvit, "upsample_bilinear_triton", lambda x, size: launches.append(size) or
                        real_kernel(x, size))
    monkeypatch.setattr(ops_jetvit, "upsampled_depth_head_triton", lambda x, size, *args: head_launches.append(size)
                        or real_head(x, size, *args))
    forward = torch.compile(model, fullgraph=True) if compiled else model
    with torch.no_grad():
        actual = forward(pixel_values).predicted_depth.float()
        assert len(launches) == 4 and head_launches == [(40, 56)]  # four fusion layers; the head
        monkeypatch.setattr(ops_jetvit, "upsample_bilinear_runs_on", lambda x: False)
        monkeypatch.setattr(ops_jetvit, "upsampled_depth_head_runs_on", lambda x: False)
        expected = model(pixel_values).predicted_depth.float()
        reference = copy.deepcopy(model).float()(pixel_values.float()).predicted_depth
    assert reference.std() > 0.1 * reference.abs().mean()

    def error(depth):
        return ((depth - reference).abs().max() / reference.abs().max()).item()

    assert error(actual) <= max(2 * error(expected), 1e-2), (error(actual), error(expected))
