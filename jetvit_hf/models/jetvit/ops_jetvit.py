"""JetViT's attention ops, registered as torch custom ops (`torch.ops.jetvit.*`), with their fake (meta)
implementations for `torch.compile` and their autograd backwards, and the functions the modeling file calls.

- `linear_attention_state(key, value, num_prefix)`: per image and head, the fp32 state `sum_j relu(k_j)^T v_j`
  (d x d), the normalizer `sum_j relu(k_j)` and the sum of V over the patch tokens (the squeeze convolution's pooled
  input).
- `linear_attention_output(query, value, state, key_sum, conv_weight, ...)`:
  `relu(q_i) state / (relu(q_i) . key_sum + N eps)` (the state divided in fp32), plus the depthwise k x k convolution
  of V on the patch grid for patch tokens, as `[batch, tokens, heads * head_dim]`, the layout `o_proj` reads.
- `window_attention(query, key, value, ...)`: each patch query attends to its window plus the prefix tokens, each
  prefix query to every token, as `[batch, tokens, heads * head_dim]`.
- `linear_gelu(x, weight, bias)`: the MLP's up-projection and exact GELU in one GEMM (`kernels_jetvit_mlp.py`),
  for inference.
- `rope_tables(angles, dtype)`: RoPE's cos and sin tables, computed once per forward under `torch.compile` too.
- `upsample_bilinear(x, size)`: the DPT neck's and head's `align_corners=True` bilinear upsampling of channels-last
  maps (`kernels_jetvit_upsample.py`), for inference.
- `upsampled_depth_head(x, conv1_bias, size, ...)`: the depth head after conv1 (conv1's bias, upsample, conv2, ReLU,
  conv3, activation, scale) without the full-resolution hidden maps (`kernels_jetvit_depth_head.py`), for inference.

Linear attention runs as two ops (the dynamic convolution's kernels are computed from the first op's V sum between
them) so that `torch.compile` keeps whole graphs. Inputs are `[batch, tokens, heads, head_dim]` with a contiguous last
dimension (views of the projection output are fine) and unrotated q/k: RoPE (tables `[patches, head_dim]`, patch tokens
only) is applied inside. Each op runs the Triton kernels (`kernels_jetvit_linear.py`, `kernels_jetvit_window.py`) on
CUDA tensors when Triton is installed, and the PyTorch path (`torch_jetvit.py`) otherwise. The backwards follow the
same rule: fused Triton kernels (`kernels_jetvit_linear_backward.py`, `kernels_jetvit_window_backward.py`) where the
forwards run Triton; elsewhere the analytic PyTorch backwards of the linear-attention ops in `torch_jetvit.py` (fp32
for the state) and a recomputation of window attention's PyTorch path under autograd. The kernel backwards are ops of
their own (`jetvit::*_backward`, without a backward) so that `torch.compile` can trace the forwards' autograd
formulas with fake tensors.

Shipped with every saved checkpoint for `trust_remote_code`: imports only torch and its flat siblings.
"""

import torch

from .kernels_jetvit_depth_head import upsampled_depth_head_runs_on, upsampled_depth_head_triton
from .kernels_jetvit_linear import linear_attention_output_triton, linear_attention_state_triton, triton_available
from .kernels_jetvit_linear_backward import (
    linear_attention_output_backward_triton,
    linear_attention_state_backward_triton,
)
from .kernels_jetvit_mlp import gluon_linear_gelu_supported, linear_gelu_gluon
from .kernels_jetvit_upsample import upsample_bilinear_runs_on, upsample_bilinear_triton
from .kernels_jetvit_window import window_attention_triton
from .kernels_jetvit_window_backward import window_attention_backward_triton
from .torch_jetvit import (
    linear_attention_output_backward_torch,
    linear_attention_output_torch,
    linear_attention_state_backward_torch,
    linear_attention_state_torch,
    window_attention_torch,
)

Tensor = torch.Tensor


def _define_op(name: str, forward, fake, setup_context=None, backward=None) -> None:
    """Register `forward` as `torch.ops.jetvit.<name>` with its fake implementation and backward, unless the op exists.

    The backwards are ops of their own (without a backward): `torch.compile` traces an op's autograd formula with fake
    tensors, so the Triton kernels it launches must sit behind an op with a fake implementation too.

    A process can import two copies of these files (the installed package and a checkpoint's remote code, or an older
    checkpoint's copy): the second reuses the ops of the first, whose schemas are the same. The schemas (argument names
    and order) are therefore fixed across versions.
    """
    if hasattr(torch.ops.jetvit, name):
        return
    op = torch.library.custom_op(f"jetvit::{name}", forward, mutates_args=())
    op.register_fake(fake)
    if backward is not None:
        op.register_autograd(backward, setup_context=setup_context)


# ----------------------------------------------------------------------------------------------------------------------
# jetvit::linear_attention_state
# ----------------------------------------------------------------------------------------------------------------------


def _state_forward(
    key: Tensor, value: Tensor, cos: Tensor | None, sin: Tensor | None, num_prefix: int
) -> tuple[Tensor, Tensor, Tensor]:
    if triton_available(key):
        return linear_attention_state_triton(key, value, cos, sin, num_prefix)
    return linear_attention_state_torch(key, value, cos, sin, num_prefix)


def _state_fake(key, value, cos, sin, num_prefix):
    batch, _, heads, head_dim = key.shape
    dtype = torch.float64 if key.dtype == torch.float64 else torch.float32  # fp32, or float64 kept (`at_least_fp32`)
    return (
        key.new_empty(batch, heads, head_dim, head_dim, dtype=dtype),
        key.new_empty(batch, heads, head_dim, dtype=dtype),
        key.new_empty(batch, heads, head_dim, dtype=dtype),
    )


def _state_setup_context(ctx, inputs, output):
    key, value, cos, sin, num_prefix = inputs
    ctx.save_for_backward(key, value, cos, sin)
    ctx.num_prefix = num_prefix


def _state_backward(ctx, grad_state, grad_key_sum, grad_value_sum):
    key, value, cos, sin = ctx.saved_tensors
    grad_key, grad_value = torch.ops.jetvit.linear_attention_state_backward(
        key, value, cos, sin, ctx.num_prefix, grad_state, grad_key_sum, grad_value_sum
    )
    return grad_key, grad_value, None, None, None


def _state_backward_impl(
    key: Tensor,
    value: Tensor,
    cos: Tensor | None,
    sin: Tensor | None,
    num_prefix: int,
    grad_state: Tensor,
    grad_key_sum: Tensor,
    grad_value_sum: Tensor,
) -> tuple[Tensor, Tensor]:
    args = (key, value, cos, sin, num_prefix, grad_state, grad_key_sum, grad_value_sum)
    if triton_available(key):
        return linear_attention_state_backward_triton(*args)
    return tuple(grad.contiguous() for grad in linear_attention_state_backward_torch(*args))  # the fake's layout


def _state_backward_fake(key, value, cos, sin, num_prefix, grad_state, grad_key_sum, grad_value_sum):
    return torch.empty_like(key, memory_format=torch.contiguous_format), torch.empty_like(
        value, memory_format=torch.contiguous_format
    )


_define_op("linear_attention_state", _state_forward, _state_fake, _state_setup_context, _state_backward)
_define_op("linear_attention_state_backward", _state_backward_impl, _state_backward_fake)


# ----------------------------------------------------------------------------------------------------------------------
# jetvit::linear_attention_output
# ----------------------------------------------------------------------------------------------------------------------


def _output_forward(
    query: Tensor,
    value: Tensor,
    state: Tensor,
    key_sum: Tensor,
    conv_weight: Tensor | None,
    cos: Tensor | None,
    sin: Tensor | None,
    num_prefix: int,
    grid_h: int,
    grid_w: int,
    eps: float,
) -> Tensor:
    args = (query, value, state, key_sum, conv_weight, cos, sin, num_prefix, (grid_h, grid_w), eps)
    return linear_attention_output_triton(*args) if triton_available(query) else linear_attention_output_torch(*args)


def _output_fake(query, value, state, key_sum, conv_weight, cos, sin, num_prefix, grid_h, grid_w, eps):
    batch, num_tokens, heads, head_dim = query.shape
    return query.new_empty(batch, num_tokens, heads * head_dim)


def _output_setup_context(ctx, inputs, output):
    query, value, state, key_sum, conv_weight, cos, sin, num_prefix, grid_h, grid_w, eps = inputs
    ctx.save_for_backward(query, value, state, key_sum, conv_weight, cos, sin)
    ctx.num_prefix, ctx.grid_size, ctx.eps = num_prefix, (grid_h, grid_w), eps


def _output_backward(ctx, grad_out):
    query, value, state, key_sum, conv_weight, cos, sin = ctx.saved_tensors
    grad_query, grad_value, grad_state, grad_key_sum, grad_weight = torch.ops.jetvit.linear_attention_output_backward(
        query, value, state, key_sum, conv_weight, cos, sin, ctx.num_prefix, *ctx.grid_size, ctx.eps, grad_out
    )
    if conv_weight is None:  # V is only convolved; the op returns empty placeholders (it cannot return None)
        grad_value, grad_weight = None, None
    return grad_query, grad_value, grad_state, grad_key_sum, grad_weight, None, None, None, None, None, None


def _output_backward_impl(
    query: Tensor,
    value: Tensor,
    state: Tensor,
    key_sum: Tensor,
    conv_weight: Tensor | None,
    cos: Tensor | None,
    sin: Tensor | None,
    num_prefix: int,
    grid_h: int,
    grid_w: int,
    eps: float,
    grad_out: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    args = (query, value, state, key_sum, conv_weight, cos, sin, num_prefix, (grid_h, grid_w), eps, grad_out)
    if triton_available(query):
        grads = linear_attention_output_backward_triton(*args)
    else:  # contiguous: the fake's layout
        grads = [None if grad is None else grad.contiguous() for grad in linear_attention_output_backward_torch(*args)]
    grad_query, grad_value, grad_state, grad_key_sum, grad_weight = grads
    if conv_weight is None:
        grad_value, grad_weight = query.new_empty(0), query.new_empty(0)
    return grad_query, grad_value, grad_state, grad_key_sum, grad_weight


def _output_backward_fake(query, value, state, key_sum, conv_weight, cos, sin, num_prefix, grid_h, grid_w, eps,
                          grad_out):
    batch, _, heads, head_dim = query.shape
    math_dtype = torch.float64 if query.dtype == torch.float64 else torch.float32  # as the state op's outputs
    grad_query = torch.empty_like(query, memory_format=torch.contiguous_format)
    if conv_weight is None:
        grad_value, grad_weight = query.new_empty(0), query.new_empty(0)
    else:
        grad_value, grad_weight = grad_query.new_empty(grad_query.shape, dtype=value.dtype), torch.empty_like(
            conv_weight, memory_format=torch.contiguous_format
        )
    grad_state = query.new_empty(batch, heads, head_dim, head_dim, dtype=math_dtype)
    grad_key_sum = query.new_empty(batch, heads, head_dim, dtype=math_dtype)
    return grad_query, grad_value, grad_state, grad_key_sum, grad_weight


_define_op("linear_attention_output", _output_forward, _output_fake, _output_setup_context, _output_backward)
_define_op("linear_attention_output_backward", _output_backward_impl, _output_backward_fake)


# ----------------------------------------------------------------------------------------------------------------------
# jetvit::window_attention
# ----------------------------------------------------------------------------------------------------------------------


def _window_forward(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    cos: Tensor | None,
    sin: Tensor | None,
    num_prefix: int,
    grid_h: int,
    grid_w: int,
    window_size: int,
    scale: float,
) -> Tensor:
    args = (query, key, value, cos, sin, num_prefix, (grid_h, grid_w), window_size, scale)
    return window_attention_triton(*args) if triton_available(query) else window_attention_torch(*args)


def _window_fake(query, key, value, cos, sin, num_prefix, grid_h, grid_w, window_size, scale):
    batch, num_tokens, heads, head_dim = query.shape
    return query.new_empty(batch, num_tokens, heads * head_dim)


def _window_setup_context(ctx, inputs, output):
    query, key, value, cos, sin, *settings = inputs
    # the output gives the fused backward its rowsum(dO * O); o_proj keeps it for its weight gradient anyway
    ctx.save_for_backward(query, key, value, cos, sin, output)
    ctx.settings = settings


def window_attention_backward_recompute(query, key, value, cos, sin, grad_out, num_prefix: int, grid_size,
                                        window_size: int, scale: float):
    """`(dq, dk, dv)` by recomputing the PyTorch path under autograd: the backward on the CPU, and the reference."""
    with torch.enable_grad():
        inputs = [x.detach().requires_grad_(True) for x in (query, key, value)]
        out = window_attention_torch(*inputs, cos, sin, num_prefix, grid_size, window_size, scale)
        return torch.autograd.grad(out, inputs, grad_out)


def _window_backward(ctx, grad_out):
    """The fused Triton backward on CUDA tensors when Triton is installed, else the recomputed PyTorch path."""
    query, key, value, cos, sin, output = ctx.saved_tensors
    if triton_available(query):
        grads = torch.ops.jetvit.window_attention_backward(query, key, value, output, grad_out, cos, sin,
                                                           *ctx.settings).unbind(0)
    else:
        num_prefix, grid_h, grid_w, window_size, scale = ctx.settings
        grads = window_attention_backward_recompute(query, key, value, cos, sin, grad_out, num_prefix,
                                                    (grid_h, grid_w), window_size, scale)
    return (*grads, None, None, None, None, None, None, None)


def _window_backward_impl(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    output: Tensor,
    grad_out: Tensor,
    cos: Tensor | None,
    sin: Tensor | None,
    num_prefix: int,
    grid_h: int,
    grid_w: int,
    window_size: int,
    scale: float,
) -> Tensor:
    """The fused Triton backward: `(dq, dk, dv)` stacked in one `[3, batch, tokens, heads, head_dim]` tensor (the
    kernels write them into one buffer, and an op's outputs may not be views of each other). Triton only: the PyTorch
    path's backward recomputes under autograd, which an op's implementation (below autograd) cannot."""
    return window_attention_backward_triton(query, key, value, output, grad_out, cos, sin, num_prefix,
                                            (grid_h, grid_w), window_size, scale)


def _window_backward_fake(query, key, value, output, grad_out, cos, sin, num_prefix, grid_h, grid_w, window_size,
                          scale):
    return query.new_empty(3, *query.shape)


_define_op("window_attention", _window_forward, _window_fake, _window_setup_context, _window_backward)
_define_op("window_attention_backward", _window_backward_impl, _window_backward_fake)


# ----------------------------------------------------------------------------------------------------------------------
# jetvit::linear_gelu
# ----------------------------------------------------------------------------------------------------------------------


def _linear_gelu_forward(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    if gluon_linear_gelu_supported(x, weight, bias):
        return linear_gelu_gluon(x, weight, bias)
    return torch.nn.functional.gelu(torch.nn.functional.linear(x, weight, bias))


def _linear_gelu_fake(x, weight, bias):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


_define_op("linear_gelu", _linear_gelu_forward, _linear_gelu_fake)  # inference only: no backward


# ----------------------------------------------------------------------------------------------------------------------
# jetvit::rope_tables
# ----------------------------------------------------------------------------------------------------------------------


def _rope_tables_forward(angles: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    return torch.cos(angles).to(dtype), torch.sin(angles).to(dtype)


def _rope_tables_fake(angles, dtype):
    return angles.new_empty(angles.shape, dtype=dtype), angles.new_empty(angles.shape, dtype=dtype)


_define_op("rope_tables", _rope_tables_forward, _rope_tables_fake)  # no backward: the angles are constants


# ----------------------------------------------------------------------------------------------------------------------
# jetvit::upsample_bilinear
# ----------------------------------------------------------------------------------------------------------------------


def _interpolate(x: Tensor, size) -> Tensor:
    return torch.nn.functional.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def _upsample_bilinear_forward(x: Tensor, height: int, width: int) -> Tensor:
    if upsample_bilinear_runs_on(x):
        return upsample_bilinear_triton(x, (height, width))
    return _interpolate(x, (height, width)).contiguous(memory_format=torch.channels_last)


def _upsample_bilinear_fake(x, height, width):
    return x.new_empty(x.shape[0], x.shape[1], height, width).contiguous(memory_format=torch.channels_last)


_define_op("upsample_bilinear", _upsample_bilinear_forward, _upsample_bilinear_fake)  # inference only: no backward


# ----------------------------------------------------------------------------------------------------------------------
# jetvit::upsampled_depth_head_with_conv1_bias
# ----------------------------------------------------------------------------------------------------------------------
# (Versions before it ran `jetvit::upsampled_depth_head`, the same without `conv1_bias`; their checkpoints' remote code
# registers that op itself.)


def _upsampled_depth_head_forward(
    x: Tensor, conv1_bias: Tensor | None, conv2_weight: Tensor, conv2_bias: Tensor, conv3_weight: Tensor,
    conv3_bias: Tensor, height: int, width: int, sigmoid: bool, max_depth: float
) -> Tensor:
    if upsampled_depth_head_runs_on(x):
        return upsampled_depth_head_triton(x, (height, width), conv2_weight, conv2_bias, conv3_weight, conv3_bias,
                                           sigmoid, max_depth, conv1_bias)
    if conv1_bias is not None:
        x = x + conv1_bias.view(1, -1, 1, 1)
    hidden = torch.relu(torch.nn.functional.conv2d(_interpolate(x, (height, width)), conv2_weight, conv2_bias,
                                                   padding=1))
    depth = torch.nn.functional.conv2d(hidden, conv3_weight, conv3_bias)
    return ((torch.sigmoid(depth) if sigmoid else torch.relu(depth)) * max_depth).squeeze(1)


def _upsampled_depth_head_fake(x, conv1_bias, conv2_weight, conv2_bias, conv3_weight, conv3_bias, height, width,
                               sigmoid, max_depth):
    return x.new_empty(x.shape[0], height, width)


_define_op("upsampled_depth_head_with_conv1_bias", _upsampled_depth_head_forward,  # inference only
           _upsampled_depth_head_fake)


# ----------------------------------------------------------------------------------------------------------------------
# The functions the modeling file calls
# ----------------------------------------------------------------------------------------------------------------------
# They call the ops above and add only a friendlier signature: the patch grid as one `(height, width)` pair, and the
# optional RoPE tables as trailing keywords (`None`: no RoPE). The ops' own schemas, positional with `cos`/`sin` before
# the settings, stay as they are so that checkpoints saved with earlier copies of these files share them.


def linear_attention_state(key: Tensor, value: Tensor, num_prefix: int, cos=None, sin=None):
    """`(sum_j phi(k_j)^T v_j, sum_j phi(k_j), sum over patch tokens of v_j)` in fp32 per image and head, where
    `phi(k) = relu(RoPE(k))` (RoPE on patch tokens when `cos`/`sin` tables `[patches, head_dim]` are given)."""
    return torch.ops.jetvit.linear_attention_state(key, value, cos, sin, num_prefix)


def linear_attention_output(
    query, value, state, key_sum, conv_weight, num_prefix: int, grid_size, eps: float, cos=None, sin=None
):
    """Normalised ReLU linear attention plus the depthwise conv of V on patch tokens, as `[batch, tokens, channels]`."""
    return torch.ops.jetvit.linear_attention_output(
        query, value, state, key_sum, conv_weight, cos, sin, num_prefix, grid_size[0], grid_size[1], eps
    )


def window_attention(query, key, value, num_prefix: int, grid_size, window_size: int, scale: float, cos=None, sin=None):
    """Window attention with global prefix tokens over `[B, N, H, d]` inputs (RoPE applied inside), `[B, N, H * d]`."""
    return torch.ops.jetvit.window_attention(
        query, key, value, cos, sin, num_prefix, grid_size[0], grid_size[1], window_size, scale
    )


def linear_gelu(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """`gelu(x @ weight.T + bias)` with the exact GELU, for inference (no backward): one GEMM with the GELU in its
    epilogue where the Gluon kernel runs (`kernels_jetvit_mlp.py`: Hopper, bf16/fp16), PyTorch's linear then GELU
    elsewhere."""
    return torch.ops.jetvit.linear_gelu(x, weight, bias)


def rope_tables(angles: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """`(cos(angles), sin(angles))` in `dtype`, as an op of its own: inlined, `torch.compile` recomputes cos and sin
    inside every full layer's RoPE kernel (on an H200, 48 us a DINOv3-L layer at 8197 tokens, about 3x the time to
    read and write q and k), where an op makes them two tables computed once per forward."""
    return torch.ops.jetvit.rope_tables(angles, dtype)


def upsample_bilinear(x: Tensor, size) -> Tensor:
    """`F.interpolate(x, size, mode="bilinear", align_corners=True)`: the Triton kernel for channels-last CUDA maps
    outside autograd (`kernels_jetvit_upsample.py`), F.interpolate itself otherwise (so `torch.compile` can still fuse
    it there, and gradients flow)."""
    if upsample_bilinear_runs_on(x) and not (torch.is_grad_enabled() and x.requires_grad):
        return torch.ops.jetvit.upsample_bilinear(x, size[0], size[1])
    return _interpolate(x, size)


def upsampled_depth_head_applies(x: Tensor, conv1: torch.nn.Conv2d, conv2: torch.nn.Conv2d,
                                 conv3: torch.nn.Conv2d) -> bool:
    """Whether the head runs `upsampled_depth_head`'s kernel on conv1's input `x` (conv1 keeps its layout, dtype and
    device): a channels-last CUDA map, outside autograd (the kernel has no backward), with conv2's and conv3's
    biases (Depth Anything's head has them)."""
    parameters = (*conv1.parameters(), *conv2.parameters(), *conv3.parameters())
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, *parameters))
    return upsampled_depth_head_runs_on(x) and conv2.bias is not None and conv3.bias is not None and not needs_grad


def upsampled_depth_head(x: Tensor, conv1_bias: Tensor | None, size, conv2: torch.nn.Conv2d, conv3: torch.nn.Conv2d,
                         sigmoid: bool, max_depth: float) -> Tensor:
    """Depth Anything's head after conv1, `act(conv3(relu(conv2(upsample(x + conv1_bias, size))))) * max_depth` as
    `[batch, height, width]` (`x`: conv1's output before its bias; `act`: sigmoid or ReLU), without the
    full-resolution hidden maps: one GEMM and one Triton kernel, which adds conv1's bias through conv2's taps (so
    `x + conv1_bias` is never written; `kernels_jetvit_depth_head.py`), where `upsampled_depth_head_applies`, the same
    ops in PyTorch elsewhere."""
    return torch.ops.jetvit.upsampled_depth_head_with_conv1_bias(x, conv1_bias, conv2.weight, conv2.bias,
                                                                 conv3.weight, conv3.bias, size[0], size[1], sigmoid,
                                                                 max_depth)
