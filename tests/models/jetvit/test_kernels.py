"""The fused linear- and window-attention ops: forward and backward against float64 references, and the Triton kernels
against the PyTorch path or float64 (on a GPU, or on the CPU through Triton's interpreter with TRITON_INTERPRET=1)."""

import os

import pytest
import torch
import torch.nn.functional as F

from jetvit_hf.models.jetvit import kernels_jetvit_linear, ops_jetvit
from jetvit_hf.models.jetvit.kernels_jetvit_linear import (
    linear_attention_output_triton,
    linear_attention_state_triton,
    rope_rotated,
    rope_unrotated,
)
from jetvit_hf.models.jetvit.kernels_jetvit_linear_backward import (
    linear_attention_output_backward_triton,
    linear_attention_state_backward_triton,
)
from jetvit_hf.models.jetvit.kernels_jetvit_window import window_attention_triton
from jetvit_hf.models.jetvit.kernels_jetvit_window_backward import window_attention_backward_triton
from jetvit_hf.models.jetvit.ops_jetvit import linear_attention_output, linear_attention_state, window_attention
from jetvit_hf.models.jetvit.torch_jetvit import (
    apply_rope,
    linear_attention_output_torch,
    linear_attention_state_torch,
    window_attention_torch,
)
from helpers import relative_error


def rope_tables(num_patches, dim, seed=0, same_halves=True):
    """RoPE's tables; `same_halves=False` draws the angles of the two halves independently (not a rotation, but the
    ops' math is defined for any tables, and only then does the backward's transpose rotation differ from reading
    each column's own sine)."""
    angles = torch.rand(num_patches, dim // 2 if same_halves else dim, generator=torch.Generator().manual_seed(seed))
    angles = angles.repeat(1, 2) if same_halves else angles
    return torch.cos(angles * 6.3), torch.sin(angles * 6.3)


def rotate(x, cos, sin, num_prefix):
    """Float64 RoPE written out: pairs (j, j + d/2) rotate by the table's angle; prefix tokens stay."""
    if cos is None:
        return x
    half = x.shape[-1] // 2
    x1, x2 = x[:, num_prefix:, :, :half], x[:, num_prefix:, :, half:]
    c, s_ = cos.double()[None, :, None, :half], sin.double()[None, :, None, :half]
    patches = torch.cat((x1 * c - x2 * s_, x2 * c + x1 * s_), dim=-1)
    return torch.cat((x[:, :num_prefix], patches), dim=1)


def reference_block(q, k, v, conv_weight, num_prefix, grid, eps, cos=None, sin=None):
    """Float64 long-hand of the whole block: explicit N x N ReLU kernel matrix plus a shift-and-add depthwise conv."""
    batch, tokens, heads, dim = q.shape
    q, k = rotate(q.double(), cos, sin, num_prefix), rotate(k.double(), cos, sin, num_prefix)
    qh, kh, vh = (x.double().transpose(1, 2) for x in (q, k, v))
    scores = F.relu(qh) @ F.relu(kh).transpose(-1, -2)
    out = (scores @ vh) / (scores.sum(-1, keepdim=True) + tokens * eps)
    out = out.transpose(1, 2).reshape(batch, tokens, heads * dim)
    if conv_weight is not None:
        size = conv_weight.shape[-1]
        image = v.double()[:, num_prefix:].reshape(batch, *grid, heads * dim).permute(0, 3, 1, 2)
        padded = F.pad(image, (size // 2,) * 4)
        conv = torch.zeros_like(image)
        for dy in range(size):
            for dx in range(size):
                conv += conv_weight.double()[:, :, dy, dx, None, None] * padded[:, :, dy : dy + grid[0], dx : dx + grid[1]]
        out = torch.cat((out[:, :num_prefix], out[:, num_prefix:] + conv.flatten(2).transpose(1, 2)), dim=1)
    return out


def random_inputs(batch, num_prefix, grid, heads, dim, kernel_size, dtype=torch.float32, device="cpu", scale=1.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    tokens = num_prefix + grid[0] * grid[1]
    # q, k, v as strided views of one fused projection output, the layout the model produces
    qkv = torch.randn(batch, tokens, 3, heads, dim, generator=generator) * scale
    conv_weight = torch.randn(batch, heads * dim, kernel_size, kernel_size, generator=generator) * 0.3
    qkv, conv_weight = qkv.to(device=device, dtype=dtype), conv_weight.to(device)
    return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], conv_weight


def fused_block(q, k, v, conv_weight, num_prefix, grid, eps, cos=None, sin=None):
    state, key_sum, value_sum = linear_attention_state(k, v, num_prefix, cos, sin)
    out = linear_attention_output(q, v, state, key_sum, conv_weight, num_prefix, grid, eps, cos, sin)
    return out, value_sum


@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("grid, num_prefix, kernel_size", [((4, 5), 1, 3), ((6, 3), 5, 5), ((3, 3), 0, 1)])
def test_ops_forward_matches_float64(grid, num_prefix, kernel_size, rope):
    q, k, v, conv_weight = random_inputs(2, num_prefix, grid, 3, 8, kernel_size)
    cos, sin = rope_tables(grid[0] * grid[1], 8) if rope else (None, None)
    out, value_sum = fused_block(q, k, v, conv_weight, num_prefix, grid, 1e-6, cos, sin)
    expected = reference_block(q, k, v, conv_weight, num_prefix, grid, 1e-6, cos, sin)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    expected_sum = v.double()[:, num_prefix:].sum(1)
    torch.testing.assert_close(value_sum.double(), expected_sum, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_conv, rope", [(True, True), (True, False), (False, True)])
def test_ops_backward_matches_float64_autograd(with_conv, rope):
    grid, num_prefix = (3, 4), 2
    q, k, v, conv_weight = random_inputs(2, num_prefix, grid, 2, 8, 3, seed=1)
    cos, sin = rope_tables(12, 8, seed=2) if rope else (None, None)
    conv_weight = conv_weight if with_conv else None
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)] + ([conv_weight.clone().requires_grad_(True)] if with_conv else [])
    weight = leaves[3] if with_conv else None
    out, value_sum = fused_block(*leaves[:3], weight, num_prefix, grid, 1e-6, cos, sin)
    probe = torch.randn_like(out)
    probe_sum = torch.randn_like(value_sum)
    ((out * probe).sum() + (value_sum * probe_sum).sum()).backward()

    reference_leaves = [t.detach().double().requires_grad_(True) for t in leaves]
    ref_weight = reference_leaves[3] if with_conv else None
    expected = reference_block(*reference_leaves[:3], ref_weight, num_prefix, grid, 1e-6, cos, sin)
    expected_sum = reference_leaves[2][:, num_prefix:].reshape(2, -1, 16).sum(1).view(2, 2, 8)
    ((expected * probe.double()).sum() + (expected_sum * probe_sum.double()).sum()).backward()
    for leaf, reference in zip(leaves, reference_leaves):
        torch.testing.assert_close(leaf.grad.double(), reference.grad, rtol=1e-4, atol=1e-5)


def test_ops_compile_without_graph_breaks():
    q, k, v, conv_weight = random_inputs(1, 1, (4, 4), 2, 8, 3)
    compiled = torch.compile(fused_block, fullgraph=True, backend="aot_eager")
    out, _ = compiled(q, k, v, conv_weight, 1, (4, 4), 1e-6)
    torch.testing.assert_close(out, fused_block(q, k, v, conv_weight, 1, (4, 4), 1e-6)[0])


def backward_op_cases(device="cpu"):
    """Each backward op with arguments from a real forward (a window op's output, a state op's state)."""
    grid, num_prefix = (4, 5), 2
    q, k, v, conv_weight = random_inputs(2, num_prefix, grid, 2, 16, 3, device=device, seed=4)
    cos, sin = (t.to(device) for t in rope_tables(20, 16, seed=5))
    state, key_sum, value_sum = linear_attention_state(k, v, num_prefix, cos, sin)
    out = window_attention(q, k, v, num_prefix, grid, 3, 0.3, cos=cos, sin=sin)
    grad_out = torch.randn_like(out)
    grads = [torch.randn_like(x) for x in (state, key_sum, value_sum)]
    return {
        "state": ("linear_attention_state_backward", (k, v, cos, sin, num_prefix, *grads)),
        "output": ("linear_attention_output_backward", (q, v, state, key_sum, conv_weight, cos, sin, num_prefix,
                                                        *grid, 1e-6, grad_out)),
        "output, no conv": ("linear_attention_output_backward", (q, v, state, key_sum, None, None, None, num_prefix,
                                                                 *grid, 1e-6, grad_out)),
        "window": ("window_attention_backward", (q, k, v, out, grad_out, cos, sin, num_prefix, *grid, 3, 0.3)),
    }


def check_backward_op(case, device):
    name, args = backward_op_cases(device)[case]
    torch.library.opcheck(getattr(torch.ops.jetvit, name), args,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


@pytest.mark.parametrize("case", ["state", "output", "output, no conv"])
def test_backward_ops_fake_implementations_match_the_real_ones(case):
    """torch.compile traces the ops' backwards through these ops' fake implementations: opcheck compares them (shapes,
    dtypes, strides) and the schema with what the ops really return (the PyTorch path here, Triton's below)."""
    check_backward_op(case, "cpu")


def triton_device(dtype):
    if kernels_jetvit_linear.triton is None:
        pytest.skip("triton is not installed")
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton kernels need a CUDA GPU or TRITON_INTERPRET=1")
    if dtype == torch.bfloat16:
        pytest.skip("Triton's CPU interpreter miscomputes bf16 dot products (numpy has no bf16); bf16 runs on the GPU")
    return "cpu"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("grid, num_prefix, heads, dim", [((5, 7), 5, 2, 64), ((16, 8), 1, 3, 32), ((3, 33), 0, 1, 48)])
@pytest.mark.parametrize("rope", [False, True])
def test_triton_kernels_match_the_pytorch_path(dtype, grid, num_prefix, heads, dim, rope):
    device = triton_device(dtype)
    q, k, v, conv_weight = random_inputs(2, num_prefix, grid, heads, dim, 3, dtype=dtype, device=device, scale=3.0)
    cos, sin = (t.to(device) for t in rope_tables(grid[0] * grid[1], dim)) if rope else (None, None)
    state, key_sum, value_sum = linear_attention_state_triton(k, v, cos, sin, num_prefix)
    ref_state, ref_key_sum, ref_value_sum = linear_attention_state_torch(k, v, cos, sin, num_prefix)
    # the kernel rounds rotated half-precision keys to their dtype before the product, the reference does not
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    for actual, expected in ((state, ref_state), (key_sum, ref_key_sum), (value_sum, ref_value_sum)):
        assert relative_error(actual, expected) < tolerance
    out = linear_attention_output_triton(q, v, state, key_sum, conv_weight, cos, sin, num_prefix, grid, 1e-6)
    assert out.dtype == dtype and torch.isfinite(out).all()
    expected = reference_block(q, k, v, conv_weight, num_prefix, grid, 1e-6, cos, sin)
    error = relative_error(out, expected)
    assert error < (1e-5 if dtype == torch.float32 else 1e-2), error


def test_triton_state_sums_more_splits_than_one_load_holds():
    """The finalize kernel sums the sequence splits FINALIZE_SPLITS at a time: with more splits than that, every
    chunk must reach the state."""
    device = triton_device(torch.float32)
    grid, num_prefix, block_n, per_sm = (16, 17), 1, 16, 64
    q, k, v, _ = random_inputs(1, num_prefix, grid, 1, 32, 3, device=device, seed=7)
    splits, _ = kernels_jetvit_linear._sequence_splits(1, k.shape[1], block_n, k.device, per_sm)
    assert splits > kernels_jetvit_linear.FINALIZE_SPLITS
    state, key_sum, value_sum = linear_attention_state_triton(k, v, None, None, num_prefix, block_n=block_n,
                                                              programs_per_sm=per_sm)
    expected = linear_attention_state_torch(k.double(), v.double(), None, None, num_prefix)
    for actual, reference in zip((state, key_sum, value_sum), expected):
        torch.testing.assert_close(actual.double(), reference.double(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_kernels_survive_large_activations(dtype):
    device = triton_device(dtype)
    q, k, v, conv_weight = random_inputs(1, 5, (32, 32), 2, 64, 3, dtype=dtype, device=device, scale=200.0)
    state, key_sum, _ = linear_attention_state_triton(k, v, None, None, 5)
    out = linear_attention_output_triton(q, v, state, key_sum, None, None, None, 5, (32, 32), 1e-6)
    expected = reference_block(q, k, v, None, 5, (32, 32), 1e-6)
    assert torch.isfinite(out).all()
    assert relative_error(out, expected) < 1e-2


def float64_leaves(*tensors):
    return [None if t is None else t.detach().cpu().double().requires_grad_(True) for t in tensors]


def backward_tolerance(dtype):
    # half precision: the kernels round the rotated q/k to the inputs' dtype (as the forwards do), multiply in TF32 on
    # the GPU and write the gradients in the inputs' dtype
    return 1e-4 if dtype == torch.float32 else 1e-2


BACKWARD_SHAPES = [((6, 7), 0, 32), ((6, 7), 1, 64), ((6, 7), 5, 32), ((6, 7), 5, 64), ((5, 9), 2, 48)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("num_prefix, dim", [(0, 32), (5, 64), (2, 48)])
def test_rope_passes_match_float64_autograd(dtype, num_prefix, dim):
    """`rope_rotated` is `apply_rope` and `rope_unrotated` the gradient through it (float64 autograd), on strided q/k
    views and on tables whose halves differ, so the transpose's use of the other half's sine is checked."""
    device = triton_device(dtype)
    q, k, _, _ = random_inputs(2, num_prefix, (3, 4), 3, dim, 3, dtype=dtype, device=device, scale=2.0, seed=16)
    cos, sin = rope_tables(12, dim, seed=17, same_halves=False)
    rotated = rope_rotated(q, cos.to(device), sin.to(device), num_prefix)
    assert rotated.dtype == dtype and rotated.is_contiguous()
    (q64,) = float64_leaves(q)
    expected = apply_rope(q64, cos.double(), sin.double(), num_prefix)
    tolerance = 1e-6 if dtype == torch.float32 else 2e-3
    assert relative_error(rotated.cpu(), expected) < tolerance
    expected.backward(k.cpu().double())  # k as the output gradient
    unrotated = rope_unrotated(k, cos.to(device), sin.to(device), num_prefix)
    assert unrotated.dtype == dtype
    assert relative_error(unrotated.cpu(), q64.grad) < tolerance
    assert torch.equal(unrotated[:, :num_prefix], k[:, :num_prefix])  # prefix tokens pass unchanged


ROPE_MODES = [None, "in the kernels", "pre-rotated"]  # no RoPE; rotated as loaded; in passes around the kernels


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("grid, num_prefix, dim", BACKWARD_SHAPES)
@pytest.mark.parametrize("rope", ROPE_MODES)
def test_triton_state_backward_matches_float64_autograd(dtype, grid, num_prefix, dim, rope):
    """The fused state backward against float64 autograd of the PyTorch path (48: head halves padded in registers),
    RoPE applied in the kernel or, with `pre_rotate`, in passes before and after it."""
    device = triton_device(dtype)
    _, k, v, _ = random_inputs(2, num_prefix, grid, 2, dim, 3, dtype=dtype, device=device, scale=2.0, seed=8)
    cos, sin = rope_tables(grid[0] * grid[1], dim, seed=9, same_halves=False) if rope else (None, None)
    generator = torch.Generator().manual_seed(10)
    grad_state, grad_key_sum, grad_value_sum = (
        torch.randn(*shape, generator=generator).to(device) for shape in ((2, 2, dim, dim), (2, 2, dim), (2, 2, dim)))
    on_device = (None, None) if cos is None else (cos.to(device), sin.to(device))
    grad_key, grad_value = linear_attention_state_backward_triton(
        k, v, *on_device, num_prefix, grad_state, grad_key_sum, grad_value_sum, pre_rotate=rope == "pre-rotated")
    assert grad_key.dtype == grad_value.dtype == dtype
    assert grad_key.shape == grad_value.shape == k.shape

    k64, v64 = float64_leaves(k, v)
    outputs = linear_attention_state_torch(k64, v64, cos, sin, num_prefix)
    torch.autograd.backward(outputs, [g.cpu().double() for g in (grad_state, grad_key_sum, grad_value_sum)])
    for actual, expected in ((grad_key, k64.grad), (grad_value, v64.grad)):
        error = relative_error(actual.cpu(), expected)
        assert error < backward_tolerance(dtype), error


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("grid, num_prefix, dim", BACKWARD_SHAPES)
@pytest.mark.parametrize("rope", ROPE_MODES)
@pytest.mark.parametrize("kernel_size", [None, 3])
def test_triton_output_backward_matches_float64_autograd(dtype, grid, num_prefix, dim, rope, kernel_size):
    """The fused output backward (query gradient, split sums of the state, key-sum and kernel gradients, the conv's
    value gradient) against float64 autograd of the PyTorch path, RoPE as in the state backward's test."""
    device = triton_device(dtype)
    q, k, v, conv_weight = random_inputs(2, num_prefix, grid, 2, dim, kernel_size or 3, dtype=dtype, device=device,
                                         scale=2.0, seed=11)
    conv_weight = conv_weight if kernel_size else None
    cos, sin = rope_tables(grid[0] * grid[1], dim, seed=12, same_halves=False) if rope else (None, None)
    state, key_sum, _ = linear_attention_state_torch(k.cpu().double(), v.cpu().double(), cos, sin, num_prefix)
    grad_out = torch.randn(q.shape[:2] + (q.shape[2] * dim,), generator=torch.Generator().manual_seed(13))
    grad_out = grad_out.to(device=device, dtype=dtype)
    on_device = (None, None) if cos is None else (cos.to(device), sin.to(device))
    grads = linear_attention_output_backward_triton(
        q, v, state.float().to(device), key_sum.float().to(device), conv_weight, *on_device, num_prefix, grid, 1e-6,
        grad_out, pre_rotate=rope == "pre-rotated")

    leaves = float64_leaves(q, v, state, key_sum, conv_weight)
    out = linear_attention_output_torch(*leaves, cos, sin, num_prefix, grid, 1e-6)
    out.backward(grad_out.cpu().double())
    expected = [leaf.grad if leaf is not None else None for leaf in leaves]
    if kernel_size is None:
        assert grads[1] is None and grads[4] is None and expected[1] is None
    for name, actual, reference in zip(("query", "value", "state", "key_sum", "weight"), grads, expected):
        if reference is None:
            continue
        error = relative_error(actual.cpu(), reference)
        assert error < backward_tolerance(dtype), (name, error)
    assert grads[0].dtype == dtype and grads[2].dtype == grads[3].dtype == torch.float32
    if kernel_size:
        assert grads[1].dtype == dtype and grads[4].dtype == conv_weight.dtype
        assert (grads[1][:, :num_prefix] == 0).all()  # prefix tokens are not convolved


def test_triton_output_backward_sums_more_splits_than_one_load_holds():
    """The output backward's split sums (state, key sum and kernel gradients) with more splits than the finalize
    kernel loads at once, and a 5 x 5 kernel, agree with one launch of the default settings and with float64."""
    device = triton_device(torch.float32)
    grid, num_prefix, dim = (16, 17), 1, 32
    q, k, v, conv_weight = random_inputs(1, num_prefix, grid, 1, dim, 5, device=device, seed=14)
    state, key_sum, _ = linear_attention_state_triton(k, v, None, None, num_prefix)
    grad_out = torch.randn(1, q.shape[1], dim, generator=torch.Generator().manual_seed(15)).to(device)
    args = (q, v, state, key_sum, conv_weight, None, None, num_prefix, grid, 1e-6, grad_out)
    splits, _ = kernels_jetvit_linear._sequence_splits(1, q.shape[1], 16, q.device, 64)
    assert splits > kernels_jetvit_linear.FINALIZE_SPLITS
    many = linear_attention_output_backward_triton(*args, block_n=16, programs_per_sm=64)
    first = linear_attention_output_backward_triton(*args)
    for a, b in zip(many, first):
        assert relative_error(a, b) < 1e-5
    leaves = float64_leaves(q, v, state, key_sum, conv_weight)
    linear_attention_output_torch(*leaves, None, None, num_prefix, grid, 1e-6).backward(grad_out.cpu().double())
    for actual, leaf in zip(many, leaves):
        assert relative_error(actual.cpu(), leaf.grad) < 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_ops_backward_runs_the_triton_kernels(monkeypatch, dtype):
    """The ops under autograd with the Triton forwards and backwards (forced on under the CPU interpreter), against
    float64 autograd of the long-hand block: the wiring of both backwards, and of value's two gradients."""
    device = triton_device(dtype)
    if device == "cpu":
        monkeypatch.setattr(ops_jetvit, "triton_available", lambda tensor: True)
    grid, num_prefix, dim = (6, 7), 5, 32
    q, k, v, conv_weight = random_inputs(2, num_prefix, grid, 2, dim, 3, dtype=dtype, device=device, seed=16)
    cos, sin = rope_tables(grid[0] * grid[1], dim, seed=17)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v, conv_weight)]
    out, value_sum = fused_block(*leaves, num_prefix, grid, 1e-6, cos.to(device), sin.to(device))
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(18)).to(device)
    probe_sum = torch.randn(value_sum.shape, generator=torch.Generator().manual_seed(19)).to(device)
    ((out.float() * probe).sum() + (value_sum * probe_sum).sum()).backward()

    reference_leaves = float64_leaves(q, k, v, conv_weight)
    expected = reference_block(*reference_leaves, num_prefix, grid, 1e-6, cos, sin)
    expected_sum = reference_leaves[2][:, num_prefix:].sum(1)
    ((expected * probe.cpu().double()).sum() + (expected_sum * probe_sum.cpu().double()).sum()).backward()
    for name, leaf, reference in zip("qkvw", leaves, reference_leaves):
        error = relative_error(leaf.grad.cpu(), reference.grad)
        assert error < backward_tolerance(dtype), (name, error)


def window_reference(q, k, v, cos, sin, num_prefix, grid, window, scale):
    """Float64 masked softmax over all tokens: patch queries see their window and the prefix, prefix queries see all."""
    q, k = rotate(q.double(), cos, sin, num_prefix), rotate(k.double(), cos, sin, num_prefix)
    rows = torch.arange(grid[0]).repeat_interleave(grid[1])
    cols = torch.arange(grid[1]).repeat(grid[0])
    allowed = torch.ones(q.shape[1], q.shape[1], dtype=torch.bool)
    allowed[num_prefix:, num_prefix:] = (rows[:, None] // window == rows[None, :] // window) & (
        cols[:, None] // window == cols[None, :] // window)
    scores = torch.einsum("bnhd,bmhd->bhnm", q, k) * scale
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    return torch.einsum("bhnm,bmhd->bnhd", weights, v.double()).flatten(2)


@pytest.mark.parametrize("grid, window, num_prefix, rope", [((6, 7), 3, 5, True), ((8, 8), 4, 1, False), ((5, 9), 16, 2, True)])
def test_window_attention_op_matches_float64(grid, window, num_prefix, rope):
    q, k, v, _ = random_inputs(2, num_prefix, grid, 2, 8, 3, seed=3)
    cos, sin = rope_tables(grid[0] * grid[1], 8) if rope else (None, None)
    out = window_attention(q, k, v, num_prefix, grid, window, 8**-0.5, cos=cos, sin=sin)
    expected = window_reference(q, k, v, cos, sin, num_prefix, grid, window, 8**-0.5)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_window_attention_op_backward_matches_float64():
    grid, window, num_prefix = (5, 6), 4, 2
    q, k, v, _ = random_inputs(1, num_prefix, grid, 2, 8, 3, seed=4)
    cos, sin = rope_tables(30, 8)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = window_attention(*leaves, num_prefix, grid, window, 0.3, cos=cos, sin=sin)
    probe = torch.randn_like(out)
    (out * probe).sum().backward()
    reference_leaves = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    (window_reference(*reference_leaves, cos, sin, num_prefix, grid, window, 0.3) * probe.double()).sum().backward()
    for leaf, reference in zip(leaves, reference_leaves):
        torch.testing.assert_close(leaf.grad.double(), reference.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("grid, window, num_prefix, heads, dim, rope", [
    ((32, 64), 16, 5, 2, 64, True),   # DINOv3 layout: whole windows, 4 registers + CLS
    ((37, 37), 16, 1, 2, 64, False),  # DINOv2 at 518 px: padded windows, CLS only
    ((7, 10), 3, 3, 3, 32, True),     # tiny windows, more query/key blocks than window tokens
    ((10, 40), 2, 5, 2, 32, True),    # 100 windows: the prefix rows merge partials over several blocks of programs
    ((12, 16), 4, 0, 2, 32, True),    # no prefix tokens: the first softmax block is fully masked
])
def test_triton_window_kernel_matches_the_pytorch_path(dtype, grid, window, num_prefix, heads, dim, rope):
    device = triton_device(dtype)
    q, k, v, _ = random_inputs(1, num_prefix, grid, heads, dim, 3, dtype=dtype, device=device, scale=2.0, seed=5)
    cos, sin = (t.to(device) for t in rope_tables(grid[0] * grid[1], dim)) if rope else (None, None)
    scale = dim**-0.5
    out = window_attention_triton(q, k, v, cos, sin, num_prefix, grid, window, scale)
    expected = window_attention_torch(
        q.float(), k.float(), v.float(), cos, sin, num_prefix, grid, window, scale)
    assert out.dtype == dtype and torch.isfinite(out).all()
    error = relative_error(out, expected)
    assert error < (1e-5 if dtype == torch.float32 else 1e-2), error


@pytest.mark.parametrize("prefix_group", [0, 1, 4, 7])
@pytest.mark.parametrize("rope", [False, True])
def test_triton_window_kernel_prefix_query_programs(prefix_group, rope):
    """The prefix queries run inside the window programs (0) or in a program of their own per group of windows: both
    give the float64 result, also when the group size does not divide the window count (12 windows in groups of 7:
    the last group's missing windows must add nothing) and with the launcher's own choice for each (`None`)."""
    device = triton_device(torch.float32)
    grid, num_prefix = (12, 16), 3
    q, k, v, _ = random_inputs(2, num_prefix, grid, 2, 32, 3, device=device, scale=2.0, seed=7)
    cos, sin = (t.to(device) for t in rope_tables(grid[0] * grid[1], 32)) if rope else (None, None)
    expected = window_reference(q.cpu(), k.cpu(), v.cpu(), None if cos is None else cos.cpu(),
                                None if sin is None else sin.cpu(), num_prefix, grid, 4, 0.2)
    for group in (prefix_group, None):
        out = window_attention_triton(q, k, v, cos, sin, num_prefix, grid, 4, 0.2, prefix_group=group)
        torch.testing.assert_close(out.cpu().double(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("grid", [(16, 32), (21, 35)])
@pytest.mark.parametrize("block_m, block_n", [(128, 64), (64, 128), (256, 64)])
def test_triton_window_kernel_launch_settings_share_the_prefix_queries(grid, block_m, block_n):
    """Each window program runs the prefix queries over its share of the key blocks: more key blocks than query
    blocks, more query blocks than key blocks, and one program per window must all cover every key exactly once, also
    in windows clipped to the grid (21x35 in windows of 16: 80, 48 and 15 patches, fewer blocks than a whole one)."""
    device = triton_device(torch.float32)
    num_prefix = 5
    q, k, v, _ = random_inputs(1, num_prefix, grid, 2, 32, 3, device=device, scale=2.0, seed=6)
    cos, sin = (t.to(device) for t in rope_tables(grid[0] * grid[1], 32))
    out = window_attention_triton(q, k, v, cos, sin, num_prefix, grid, 16, 0.2,
                                  block_m=block_m, block_n=block_n, num_warps=8, prefix_group=0)
    expected = window_reference(q.cpu(), k.cpu(), v.cpu(), cos.cpu(), sin.cpu(), num_prefix, grid, 16, 0.2)
    torch.testing.assert_close(out.cpu().double(), expected, rtol=1e-4, atol=1e-5)


def window_backward_check(q, k, v, cos, sin, num_prefix, grid, window, scale, tolerance, seed=0, **launch):
    """The Triton backward's (dq, dk, dv) for a random output gradient against float64 autograd of the PyTorch path,
    over all tokens and over the prefix rows alone (their sums run through the partial-sum kernels)."""
    out = window_attention_triton(q, k, v, cos, sin, num_prefix, grid, window, scale)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out)
    grads = window_attention_backward_triton(q, k, v, out, grad_out, cos, sin, num_prefix, grid, window, scale,
                                             **launch)
    leaves = [x.detach().cpu().double().requires_grad_(True) for x in (q, k, v)]
    tables = [None if t is None else t.cpu().double() for t in (cos, sin)]
    expected = window_attention_torch(*leaves, *tables, num_prefix, grid, window, scale)
    expected_grads = torch.autograd.grad(expected, leaves, grad_out.cpu().double())
    for name, actual, reference in zip("qkv", grads, expected_grads):
        assert actual.dtype == q.dtype and actual.shape == q.shape and torch.isfinite(actual).all(), name
        error = relative_error(actual.cpu(), reference)
        assert error < tolerance, (name, error)
        if num_prefix:
            error = relative_error(actual[:, :num_prefix].cpu(), reference[:, :num_prefix])
            assert error < tolerance, (name, "prefix rows", error)


WINDOW_BACKWARD_TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("grid, window", [((8, 8), 4), ((6, 7), 4)])  # windows tile the grid / padded windows
@pytest.mark.parametrize("num_prefix", [0, 1, 5])
@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("dim", [32, 64])
def test_triton_window_backward_matches_float64(dtype, grid, window, num_prefix, rope, dim):
    device = triton_device(dtype)
    q, k, v, _ = random_inputs(2, num_prefix, grid, 2, dim, 3, dtype=dtype, device=device, scale=2.0, seed=8)
    cos, sin = (t.to(device) for t in rope_tables(grid[0] * grid[1], dim)) if rope else (None, None)
    window_backward_check(q, k, v, cos, sin, num_prefix, grid, window, dim**-0.5, WINDOW_BACKWARD_TOLERANCE[dtype])


@pytest.mark.parametrize("grid, window, num_prefix, dim, block_m, block_n", [
    ((10, 9), 8, 3, 32, 16, 32),   # padded windows, more query blocks than key blocks
    ((10, 9), 8, 3, 32, 32, 16),   # more key blocks than query blocks
    ((16, 16), 8, 5, 32, 16, 16),  # whole windows and blocks (no masks), four blocks per window each way
    ((6, 7), 4, 2, 48, 16, 16),    # a head dim below its tile (48 of 64): RoPE halves at the tile's halves
    ((5, 9), 16, 4, 32, 64, 64),   # one window larger than the grid
])
def test_triton_window_backward_launch_settings(grid, window, num_prefix, dim, block_m, block_n):
    """Several query and key blocks per window: every (query, key) block pair, every program's share of the prefix
    rows' partial sums, and the window-0 program's prefix-against-prefix block must each be counted once."""
    device = triton_device(torch.float32)
    q, k, v, _ = random_inputs(1, num_prefix, grid, 2, dim, 3, device=device, scale=2.0, seed=9)
    cos, sin = (t.to(device) for t in rope_tables(grid[0] * grid[1], dim, seed=3))
    window_backward_check(q, k, v, cos, sin, num_prefix, grid, window, 0.2, 1e-4, block_m=block_m, block_n=block_n,
                          num_warps=2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("grid, window, num_prefix, dim", [
    ((8, 8), 4, 5, 32),   # windows tile the grid
    ((6, 7), 4, 1, 32),   # padded windows
    ((6, 7), 4, 2, 48),   # a head dim below its tile: the gradients' rotation back on split halves
])
def test_triton_window_backward_rotating_as_it_loads(dtype, grid, window, num_prefix, dim):
    """`pre_rotate=False`: the kernels rotate q and k as they load them instead of the default's pass of its own before
    them; the gradients still match float64 autograd of the PyTorch path."""
    device = triton_device(dtype)
    q, k, v, _ = random_inputs(2, num_prefix, grid, 2, dim, 3, dtype=dtype, device=device, scale=2.0, seed=8)
    cos, sin = (t.to(device) for t in rope_tables(grid[0] * grid[1], dim))
    window_backward_check(q, k, v, cos, sin, num_prefix, grid, window, dim**-0.5, WINDOW_BACKWARD_TOLERANCE[dtype],
                          pre_rotate=False)


def test_triton_window_backward_refuses_eight_warps_with_three_stages():
    """8 warps with 3 pipeline stages made an illegal memory access on an H200, which poisons the CUDA context: the
    launch is refused before it happens, with the setting that works instead, and 2 stages still match float64."""
    device = triton_device(torch.float32)
    q, k, v, _ = random_inputs(1, 3, (8, 8), 2, 32, 3, device=device, scale=2.0, seed=9)
    cos, sin = (t.to(device) for t in rope_tables(64, 32, seed=3))
    out = window_attention_triton(q, k, v, cos, sin, 3, (8, 8), 4, 0.2)
    with pytest.raises(ValueError, match="8 warps with 3 pipeline stages .* use at most 2 stages with 8 warps"):
        window_attention_backward_triton(q, k, v, out, torch.ones_like(out), cos, sin, 3, (8, 8), 4, 0.2,
                                         num_warps=8, num_stages=3)
    window_backward_check(q, k, v, cos, sin, 3, (8, 8), 4, 0.2, 1e-4, num_warps=8, num_stages=2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_window_backward_default_blocks_split_large_windows(dtype):
    """At the default launch settings a 16 x 16 window is several blocks: 32-row blocks for fp32 (which 64-row blocks
    would overflow an sm_90 block's shared memory with), 64-row ones for 16-bit inputs."""
    device = triton_device(dtype)
    grid, num_prefix, dim = (20, 18), 5, 32
    q, k, v, _ = random_inputs(1, num_prefix, grid, 2, dim, 3, dtype=dtype, device=device, seed=13)
    cos, sin = (t.to(device) for t in rope_tables(grid[0] * grid[1], dim, seed=4))
    window_backward_check(q, k, v, cos, sin, num_prefix, grid, 16, 0.2, WINDOW_BACKWARD_TOLERANCE[dtype])


def test_triton_window_backward_rows_with_very_negative_scores():
    """Rows whose scores are all far below 0 (logsumexp about -800 in log2 units): the padded keys' zero rows, whose
    score is 0, must not reach exp2(-logsumexp) = inf. The tolerance is loose: dq cancels the keys' large common part
    and so feels the rounding of the fp32 logsumexp (3e-5 at -800, the same shift for every p of a row). The fp32
    PyTorch path is 5e-3 off float64 for the patch rows' dq here; the kernels 2e-4 there and 3e-3 for the prefix row."""
    device = triton_device(torch.float32)
    grid, num_prefix, dim = (6, 7), 1, 32
    direction = torch.randn(dim, generator=torch.Generator().manual_seed(1))
    q, k, v, _ = random_inputs(1, num_prefix, grid, 1, dim, 3, device=device, scale=0.1, seed=10)
    q, k = q + 10 * direction.to(device), k - 10 * direction.to(device)
    window_backward_check(q, k, v, None, None, num_prefix, grid, 4, dim**-0.5, 1e-2)


def test_window_attention_op_uses_the_triton_backward(monkeypatch):
    """On Triton's device (CUDA, or the interpreter made to count as one) the op's backward runs the fused kernels."""
    device = triton_device(torch.float32)
    if device == "cpu":
        monkeypatch.setattr(ops_jetvit, "triton_available", lambda tensor: True)
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return window_attention_backward_triton(*args, **kwargs)

    monkeypatch.setattr(ops_jetvit, "window_attention_backward_triton", counted)
    grid, window, num_prefix = (6, 7), 4, 5
    q, k, v, _ = random_inputs(2, num_prefix, grid, 2, 32, 3, device=device, seed=11)
    cos, sin = (t.to(device) for t in rope_tables(42, 32))
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = window_attention(*leaves, num_prefix, grid, window, 0.2, cos=cos, sin=sin)
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(out)
    (out * probe).sum().backward()
    assert calls == [1]
    reference_leaves = [t.detach().cpu().double().requires_grad_(True) for t in (q, k, v)]
    expected = window_reference(*reference_leaves, cos.cpu(), sin.cpu(), num_prefix, grid, window, 0.2)
    (expected * probe.cpu().double()).sum().backward()
    for leaf, reference in zip(leaves, reference_leaves):
        torch.testing.assert_close(leaf.grad.cpu().double(), reference.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", ["state", "output", "output, no conv", "window"])
def test_triton_backward_ops_fake_implementations_match_the_real_ones(monkeypatch, case):
    device = triton_device(torch.float32)
    if device == "cpu":
        monkeypatch.setattr(ops_jetvit, "triton_available", lambda tensor: True)
    check_backward_op(case, device)


def test_compiled_training_step_runs_the_fused_backwards(monkeypatch):
    """A compiled (AOTAutograd) forward and backward of both linear-attention ops and window attention on Triton's
    device gives eager's gradients: the fused backward kernels run behind ops that compile with fake tensors."""
    device = triton_device(torch.float32)
    if device == "cpu":
        monkeypatch.setattr(ops_jetvit, "triton_available", lambda tensor: True)
    grid, num_prefix = (6, 7), 3
    q, k, v, conv_weight = random_inputs(2, num_prefix, grid, 2, 32, 3, device=device, seed=12)
    cos, sin = (t.to(device) for t in rope_tables(42, 32))

    def block(q, k, v, conv_weight):
        linear, value_sum = fused_block(q, k, v, conv_weight, num_prefix, grid, 1e-6, cos, sin)
        window = window_attention(q, k, v, num_prefix, grid, 4, 0.2, cos=cos, sin=sin)
        return (linear * window).sum() + value_sum.square().sum()

    def gradients(function):
        leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v, conv_weight)]
        function(*leaves).backward()
        return [leaf.grad for leaf in leaves]

    compiled = gradients(torch.compile(block, fullgraph=True, backend="aot_eager"))
    for name, actual, expected in zip(("q", "k", "v", "conv"), compiled, gradients(block)):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4, msg=name)


@pytest.mark.parametrize("block_n, block_e", [(32, 16), (16, 32)])
def test_triton_output_kernel_column_blocks(block_n, block_e):
    """The output kernel split over output-channel blocks (each reading its columns of the hi/lo state and their
    scales) equals the PyTorch path."""
    device = triton_device(torch.float16)
    grid, num_prefix, dim = (6, 9), 2, 48  # 48 channels: the last column block is partly masked
    q, k, v, conv_weight = random_inputs(2, num_prefix, grid, 2, dim, 3, dtype=torch.float16, device=device, scale=3.0)
    cos, sin = (t.to(device) for t in rope_tables(grid[0] * grid[1], dim))
    state, key_sum, _ = linear_attention_state_triton(k, v, cos, sin, num_prefix)
    out = linear_attention_output_triton(q, v, state, key_sum, conv_weight, cos, sin, num_prefix, grid, 1e-6,
                                         block_n=block_n, block_e=block_e)
    expected = reference_block(q, k, v, conv_weight, num_prefix, grid, 1e-6, cos, sin)
    assert relative_error(out, expected) < 1e-2
