"""The depth head's fused end (`kernels_jetvit_depth_head.py`: conv2's taps as one GEMM at conv1's resolution, then
the bilinear samples of each tap gathered at full resolution) against a float64 computation of the head's modules (on
a GPU, or on the CPU through Triton's interpreter with TRITON_INTERPRET=1); the op's PyTorch path and fake
implementation; and when `JetViTDepthHead` takes the kernel."""

import pytest
import torch
import torch.nn.functional as F

from jetvit_hf.models.jetvit import kernels_jetvit_depth_head, modeling_jetvit_heads, ops_jetvit
from jetvit_hf.models.jetvit.kernels_jetvit_depth_head import (conv1_bias_taps, conv2_taps,
                                                              upsampled_depth_head_triton)
from test_dpt_channels_last import relative_difference, tiny_depth_model
from test_kernels import triton_device


def head_weights(in_channels, hidden, dtype, device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    conv2 = torch.nn.Conv2d(in_channels, hidden, 3, padding=1)
    conv3 = torch.nn.Conv2d(hidden, 1, 1)
    with torch.no_grad():
        for parameter in (*conv2.parameters(), *conv3.parameters()):
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * parameter.abs().max())
    return conv2.to(device, dtype, memory_format=torch.channels_last), conv3.to(device, dtype)


def centre_conv3_bias_(x, size, conv2, conv3, conv1_bias=None):
    """Sets conv3's bias so that half the pixels lie above the final ReLU's threshold (random heads put nearly all
    on one side: a constant map would test nothing)."""
    with torch.no_grad():
        conv3.bias.zero_()
        before = reference(x, size, conv2, conv3, sigmoid=True, max_depth=1.0, conv1_bias=conv1_bias)  # monotone
        conv3.bias.fill_(-torch.logit(before.flatten().median()).item())


def reference(x, size, conv2, conv3, sigmoid, max_depth, conv1_bias=None):
    """The head's modules after conv1, in float64: conv1's bias (when given), upsample, conv2, ReLU, conv3,
    activation, scale."""
    weights = [t.detach().double().cpu() for t in (conv2.weight, conv2.bias, conv3.weight, conv3.bias)]
    x = x.double().cpu()
    if conv1_bias is not None:
        x = x + conv1_bias.detach().double().cpu().view(1, -1, 1, 1)
    hidden = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    hidden = F.relu(F.conv2d(hidden, weights[0], weights[1], padding=1))
    depth = F.conv2d(hidden, weights[2], weights[3])
    return ((torch.sigmoid(depth) if sigmoid else F.relu(depth)) * max_depth).squeeze(1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("in_size, out_size, in_channels, hidden", [
    ((8, 11), (14, 19), 16, 32),   # the model's ratio (8 -> 14 pixels a patch), Depth Anything's 32 hidden channels
    ((9, 12), (23, 29), 12, 24),   # hidden channels not a power of two
    ((1, 5), (3, 11), 8, 8),       # a one-row input: every output row samples row 0
    ((6, 7), (6, 7), 8, 16),       # identity size: plain 3x3 conv, the padding decides the borders
    ((1, 1), (3, 4), 8, 8),        # a one-pixel input: scale 0, every sample is that pixel
    ((4, 3), (1, 1), 8, 8),        # a one-pixel output from a larger map: every tap but the centre is padding
    ((6, 20), (7, 75), 8, 16),     # three programs' columns
])
@pytest.mark.parametrize("sigmoid, max_depth, with_conv1_bias", [(False, 1.0, False), (True, 20.0, True)])
def test_kernel_matches_float64_modules(dtype, in_size, out_size, in_channels, hidden, sigmoid, max_depth,
                                        with_conv1_bias):
    device = triton_device(dtype)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, in_channels, *in_size, generator=generator).to(device, dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    # a bias as large as x: wrong at the borders (or left out) it moves the depth by far more than the tolerance
    conv1_bias = 2 * torch.randn(in_channels, generator=generator).to(device, dtype) if with_conv1_bias else None
    conv2, conv3 = head_weights(in_channels, hidden, dtype, device)
    centre_conv3_bias_(x, out_size, conv2, conv3, conv1_bias)
    out = upsampled_depth_head_triton(x, out_size, conv2.weight, conv2.bias, conv3.weight, conv3.bias, sigmoid,
                                      max_depth, conv1_bias)
    assert out.shape == (2, *out_size) and out.dtype == dtype
    expected = reference(x, out_size, conv2, conv3, sigmoid, max_depth, conv1_bias)
    assert expected.std() > 0.05 * expected.abs().max(), "a head that predicts a constant tests nothing"
    # z is rounded once to the dtype (the modules round the upsampled map and conv2's output), then fp32 to the end
    tolerance = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}[dtype]
    assert relative_difference(out.double().cpu(), expected) < tolerance


def test_conv2_taps_shifted_and_summed_are_the_convolution():
    """Channel block t of the GEMM's output is tap t = 3 ky + kx: shifted by the tap's offsets and summed, it is
    conv2."""
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(1, 5, 6, 7, generator=generator, dtype=torch.float64)
    weight = torch.randn(3, 5, 3, 3, generator=generator, dtype=torch.float64)
    z = conv2_taps(x, weight).unflatten(-1, (9, 3))
    padded = F.pad(z.permute(0, 3, 4, 1, 2), (1, 1, 1, 1))  # [b, tap, out, h + 2, w + 2]
    summed = sum(padded[:, 3 * ky + kx, :, ky:ky + 6, kx:kx + 7] for ky in range(3) for kx in range(3))
    torch.testing.assert_close(summed, F.conv2d(x, weight, padding=1))


def test_conv1_bias_taps_are_the_taps_of_a_constant_map():
    """`conv1_bias_taps` is what `conv2_taps` adds at every pixel when conv1's bias is added to every pixel."""
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(2, 5, 3, 4, generator=generator)
    weight = torch.randn(3, 5, 3, 3, generator=generator)
    bias = torch.randn(5, generator=generator)
    difference = conv2_taps(x + bias.view(1, -1, 1, 1), weight) - conv2_taps(x, weight)
    torch.testing.assert_close(difference, conv1_bias_taps(bias, weight).expand_as(difference), rtol=1e-5,
                               atol=1e-5)


def test_op_pytorch_path_and_fake_implementation():
    """On the CPU the op runs the modules' arithmetic (so a checkpoint predicts the same everywhere), and opcheck
    compares its fake implementation, which `torch.compile` traces, with it."""
    conv2, conv3 = head_weights(6, 8, torch.float32, "cpu")
    x = torch.randn(2, 6, 5, 7).contiguous(memory_format=torch.channels_last)
    conv1_bias = torch.randn(6)
    for sigmoid, bias in ((False, None), (True, None), (False, conv1_bias)):
        out = ops_jetvit.upsampled_depth_head(x, bias, (9, 13), conv2, conv3, sigmoid, 3.0)
        expected = reference(x, (9, 13), conv2, conv3, sigmoid, 3.0, bias)
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    with torch.no_grad():
        for bias in (None, conv1_bias):
            torch.library.opcheck(torch.ops.jetvit.upsampled_depth_head_with_conv1_bias,
                                  (x, bias, conv2.weight, conv2.bias, conv3.weight, conv3.bias, 9, 13, False, 1.0),
                                  test_utils=("test_schema", "test_faketensor"))


def test_head_takes_the_kernel_only_outside_autograd_on_channels_last_cuda_maps(monkeypatch):
    """`JetViTDepthHead` hands conv1's output before its bias, and the bias, to the op where
    `upsampled_depth_head_applies` (relative and metric heads alike, the same depth as its modules); a map or weights
    that need gradients keep the modules."""
    conv1 = torch.nn.Conv2d(6, 6, 3, padding=1)
    conv2, conv3 = head_weights(6, 8, torch.float32, "cpu")
    x = torch.randn(1, 6, 4, 5).contiguous(memory_format=torch.channels_last)
    applies = ops_jetvit.upsampled_depth_head_applies
    assert not applies(x.detach(), conv1, conv2, conv3)  # a CPU map
    with monkeypatch.context() as patch:
        patch.setattr(ops_jetvit, "upsampled_depth_head_runs_on", lambda x: True)
        with torch.no_grad():
            assert applies(x, conv1, conv2, conv3)
        assert not applies(x, conv1, conv2, conv3), "the convs' weights need gradients"
        conv2.requires_grad_(False), conv3.requires_grad_(False)
        assert not applies(x, conv1, conv2, conv3), "conv1's weights need gradients"
        conv1.requires_grad_(False)
        assert applies(x, conv1, conv2, conv3)
        assert not applies(x.requires_grad_(True), conv1, conv2, conv3)

    for depth_type in ("relative", "metric"):
        model = tiny_depth_model(depth_estimation_type=depth_type, max_depth=20.0).eval()
        pixel_values = torch.randn(2, 3, 32, 40, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():  # a conv1 bias as large as its output: leaving it out changes the depth
            model.head.conv1.bias.normal_(std=model.head.conv1.weight.abs().max().item() * 4)
        calls = []
        real_op = ops_jetvit.upsampled_depth_head
        monkeypatch.setattr(modeling_jetvit_heads, "upsampled_depth_head",
                            lambda *args: calls.append((args[1] is model.head.conv1.bias, args[2])) or real_op(*args))
        with torch.no_grad():
            monkeypatch.setattr(modeling_jetvit_heads, "upsampled_depth_head_applies", lambda *args: True)
            through_op = model(pixel_values).predicted_depth
            assert calls == [(True, (32, 40))]
            monkeypatch.setattr(modeling_jetvit_heads, "upsampled_depth_head_applies", lambda *args: False)
            modules = model(pixel_values).predicted_depth
        assert calls == [(True, (32, 40))] and modules.std() > 0.05 * modules.abs().max()
        torch.testing.assert_close(through_op, modules, rtol=1e-5, atol=1e-5 * modules.abs().max().item())


def test_runs_on_only_channels_last_cuda_maps():
    runs_on = kernels_jetvit_depth_head.upsampled_depth_head_runs_on
    assert not runs_on(torch.randn(1, 4, 3, 3).contiguous(memory_format=torch.channels_last))
    if kernels_jetvit_depth_head.triton is None or not torch.cuda.is_available():
        pytest.skip("the positive cases need Triton and a CUDA GPU")
    nchw = torch.randn(1, 4, 3, 3, device="cuda")
    assert not runs_on(nchw)
    assert runs_on(nchw.contiguous(memory_format=torch.channels_last))
    assert not runs_on(nchw.contiguous(memory_format=torch.channels_last).double())
