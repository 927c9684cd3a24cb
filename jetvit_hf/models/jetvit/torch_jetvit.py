"""The PyTorch path of JetViT's attention ops: ReLU linear attention with the squeeze dynamic depthwise convolution,
and window attention with global prefix tokens, plus the RoPE and window-partition helpers they use.

This is the implementation everywhere Triton is not (CPU, or no `triton` installed), the formulas the ops' backwards
differentiate, the dropout path of window attention in training (the fused kernel has no dropout), and the reference
the Triton kernels are tested against. Tensors are `[batch, tokens, heads, head_dim]` with the prefix tokens (CLS,
registers) first and the patch grid row-major after them; RoPE tables are `[patches, head_dim]` and apply to patch
tokens only. The state and normalizer of linear attention are accumulated in fp32 (float64 inputs stay float64: the
tests' references). The analytic backwards of the two linear-attention ops are here too, as the ops' CPU path and the
reference of the fused Triton backwards.

Shipped with every saved checkpoint for `trust_remote_code`: imports only torch.
"""

import functools

import torch
import torch.nn.functional as F


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None, num_prefix: int) -> torch.Tensor:
    """RoPE on the patch tokens of `x` ([B, N, H, d]) with tables `[patches, d]`; prefix tokens are not rotated."""
    if cos is None:
        return x
    patches = x[:, num_prefix:]
    cos, sin = cos[None, :, None, :].to(x.dtype), sin[None, :, None, :].to(x.dtype)
    return torch.cat((x[:, :num_prefix], patches * cos + rotate_half(patches) * sin), dim=1)


def unrotate_grad(grad: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None, num_prefix: int) -> torch.Tensor:
    """The gradient w.r.t. the input of `apply_rope`, given the gradient w.r.t. its output (the transpose rotation)."""
    if cos is None:
        return grad
    patches = grad[:, num_prefix:]
    cos, sin = cos[None, :, None, :].to(grad.dtype), sin[None, :, None, :].to(grad.dtype)
    return torch.cat((grad[:, :num_prefix], patches * cos - rotate_half(patches * sin)), dim=1)


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """`x` in fp32, or as it is when it is float64."""
    return x if x.dtype == torch.float64 else x.float()


def fp32_math(function):
    """Run `function` with autocast off: its fp32 state and normalizer must not be recast to bf16/fp16."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        tensor = next(arg for arg in args if isinstance(arg, torch.Tensor))
        with torch.autocast(device_type=tensor.device.type, enabled=False):
            return function(*args, **kwargs)

    return wrapper


@fp32_math
def linear_attention_state_torch(key, value, cos, sin, num_prefix: int):
    """`(sum_j phi(k_j)^T v_j, sum_j phi(k_j), sum over patch tokens of v_j)` in fp32, per image and head, with
    `phi(k) = relu(RoPE(k))`: `[B, H, d, d]`, `[B, H, d]`, `[B, H, d]`."""
    key = F.relu(apply_rope(at_least_fp32(key), cos, sin, num_prefix))  # [B, N, H, d]
    value = at_least_fp32(value)
    state = torch.einsum("bnhd,bnhe->bhde", key, value)
    return state, key.sum(dim=1), value[:, num_prefix:].sum(dim=1)


def depthwise_conv_torch(value: torch.Tensor, conv_weight: torch.Tensor, num_prefix: int, grid_size) -> torch.Tensor:
    """Per-image depthwise conv of the patch tokens of `value` ([B, N, H, d]) with `conv_weight` ([B, C, k, k])."""
    batch, _, heads, head_dim = value.shape
    channels, size = heads * head_dim, conv_weight.shape[-1]
    image = at_least_fp32(value[:, num_prefix:].reshape(batch, *grid_size, channels).permute(0, 3, 1, 2))
    out = F.conv2d(
        image.reshape(1, batch * channels, *grid_size),
        at_least_fp32(conv_weight.reshape(batch * channels, 1, size, size)),
        padding=size // 2,
        groups=batch * channels,
    )
    return out.view(batch, channels, -1).transpose(1, 2)  # [B, patches, C]


@fp32_math
def linear_attention_output_torch(query, value, state, key_sum, conv_weight, cos, sin, num_prefix: int, grid_size,
                                  eps: float):
    """`relu(q_i) state / (relu(q_i) . key_sum + N eps)`, plus the depthwise conv of V on the patch tokens when
    `conv_weight` is given, as `[B, N, H * d]` in the dtype of `query`."""
    batch, num_tokens, heads, head_dim = query.shape
    dtype = query.dtype
    query = F.relu(apply_rope(at_least_fp32(query), cos, sin, num_prefix))
    numerator = torch.einsum("bnhd,bhde->bnhe", query, state) / num_tokens
    normalizer = torch.einsum("bnhd,bhd->bnh", query, key_sum).unsqueeze(-1) / num_tokens + eps
    out = (numerator / normalizer).reshape(batch, num_tokens, heads * head_dim)
    if conv_weight is not None:
        conv = depthwise_conv_torch(value, conv_weight, num_prefix, grid_size)
        out = torch.cat((out[:, :num_prefix], out[:, num_prefix:] + conv), dim=1)
    return out.to(dtype)


@fp32_math
def linear_attention_state_backward_torch(key, value, cos, sin, num_prefix: int, grad_state, grad_key_sum,
                                          grad_value_sum):
    """`(grad_key, grad_value)` of `linear_attention_state_torch` given the gradients of its three outputs."""
    rotated = apply_rope(at_least_fp32(key), cos, sin, num_prefix)
    grad_key = torch.einsum("bnhe,bhde->bnhd", at_least_fp32(value), grad_state) + grad_key_sum.unsqueeze(1)
    grad_key = unrotate_grad(grad_key * (rotated > 0), cos, sin, num_prefix)
    grad_value = torch.einsum("bnhd,bhde->bnhe", F.relu(rotated), grad_state)
    grad_value[:, num_prefix:] += grad_value_sum.unsqueeze(1)
    return grad_key.to(key.dtype), grad_value.to(value.dtype)


def depthwise_conv_backward_torch(grad_patches, value, conv_weight, num_prefix: int, grid_size):
    """Gradients of the per-image depthwise conv w.r.t. V's patch tokens ([B, P, H, d]) and the kernels ([B, C, k, k]),
    from the convolution's own backward (one grouped conv over all images and channels, as in the forward)."""
    batch, _, heads, head_dim = value.shape
    channels, size = heads * head_dim, conv_weight.shape[-1]
    groups = batch * channels
    image = at_least_fp32(value[:, num_prefix:]).reshape(batch, *grid_size, channels).permute(0, 3, 1, 2)
    grad_image = at_least_fp32(grad_patches).transpose(1, 2).reshape(1, groups, *grid_size)
    grad_value, grad_weight, _ = torch.ops.aten.convolution_backward(
        grad_image, image.reshape(1, groups, *grid_size), at_least_fp32(conv_weight).reshape(groups, 1, size, size),
        None, [1, 1], [size // 2, size // 2], [1, 1], False, [0, 0], groups, [True, True, False],
    )
    grad_value = grad_value.view(batch, channels, -1).transpose(1, 2).reshape(batch, -1, heads, head_dim)
    return grad_value, grad_weight.view(batch, channels, size, size)


@fp32_math
def linear_attention_output_backward_torch(query, value, state, key_sum, conv_weight, cos, sin, num_prefix: int,
                                           grid_size, eps: float, grad_out):
    """`(grad_query, grad_value, grad_state, grad_key_sum, grad_weight)` of `linear_attention_output_torch` given the
    gradient of its output; `grad_value` and `grad_weight` are None without `conv_weight` (V is only convolved)."""
    batch, num_tokens, heads, head_dim = query.shape
    rotated = apply_rope(at_least_fp32(query), cos, sin, num_prefix)
    relu_query = F.relu(rotated)
    grad = at_least_fp32(grad_out).view(batch, num_tokens, heads, head_dim)
    numerator = torch.einsum("bnhd,bhde->bnhe", relu_query, state) / num_tokens
    normalizer = torch.einsum("bnhd,bhd->bnh", relu_query, key_sum).unsqueeze(-1) / num_tokens + eps
    grad_numerator = grad / normalizer
    grad_normalizer = -(grad * numerator).sum(-1, keepdim=True) / normalizer.square()
    grad_query = (
        torch.einsum("bnhe,bhde->bnhd", grad_numerator, state) + grad_normalizer * key_sum.unsqueeze(1)
    ) / num_tokens
    grad_query = unrotate_grad(grad_query * (rotated > 0), cos, sin, num_prefix).to(query.dtype)
    grad_state = torch.einsum("bnhd,bnhe->bhde", relu_query, grad_numerator) / num_tokens
    grad_key_sum = (grad_normalizer * relu_query).sum(1) / num_tokens
    grad_value, grad_weight = None, None
    if conv_weight is not None:
        grad_patch_value, grad_weight = depthwise_conv_backward_torch(
            grad_out[:, num_prefix:], value, conv_weight, num_prefix, grid_size
        )
        grad_value = F.pad(grad_patch_value.to(value.dtype), (0, 0, 0, 0, num_prefix, 0))  # prefix: no conv
        grad_weight = grad_weight.to(conv_weight.dtype)
    return grad_query, grad_value, grad_state, grad_key_sum, grad_weight


def window_partition(patches: torch.Tensor, grid_size, window_size: int) -> torch.Tensor:
    """`[batch, heads, h * w, d]` -> `[batch * windows, heads, window_size**2, d]`, zero-padding the grid to whole windows."""
    batch_size, num_heads, _, head_dim = patches.shape
    height, width = grid_size
    pad_h, pad_w = -height % window_size, -width % window_size
    patches = patches.view(batch_size, num_heads, height, width, head_dim)
    patches = F.pad(patches, (0, 0, 0, pad_w, 0, pad_h))
    rows, cols = (height + pad_h) // window_size, (width + pad_w) // window_size
    patches = patches.view(batch_size, num_heads, rows, window_size, cols, window_size, head_dim)
    patches = patches.permute(0, 2, 4, 1, 3, 5, 6)
    return patches.reshape(batch_size * rows * cols, num_heads, window_size * window_size, head_dim)


def window_unpartition(windows: torch.Tensor, grid_size, window_size: int) -> torch.Tensor:
    """Inverse of `window_partition`: `[batch * windows, heads, window_size**2, d]` -> `[batch, heads, h * w, d]`."""
    height, width = grid_size
    rows, cols = -(-height // window_size), -(-width // window_size)
    _, num_heads, _, head_dim = windows.shape
    windows = windows.view(-1, rows, cols, num_heads, window_size, window_size, head_dim)
    patches = windows.permute(0, 3, 1, 4, 2, 5, 6).reshape(
        -1, num_heads, rows * window_size, cols * window_size, head_dim
    )
    return patches[:, :, :height, :width].reshape(-1, num_heads, height * width, head_dim)


def window_padding_mask(grid_size, window_size: int, num_prefix: int, device: torch.device) -> torch.Tensor | None:
    """Boolean key mask `[windows, 1, 1, prefix + window_size**2]` (True = attend); `None` when no padding is needed."""
    height, width = grid_size
    if height % window_size == 0 and width % window_size == 0:
        return None
    valid = torch.ones(1, 1, height * width, 1, device=device)
    valid = window_partition(valid, grid_size, window_size).squeeze(-1) > 0  # [windows, 1, ws*ws]
    prefix = torch.ones(valid.shape[0], 1, num_prefix, dtype=torch.bool, device=device)
    return torch.cat((prefix, valid), dim=-1).unsqueeze(1)


def prefix_query_attention(query, key, value, num_prefix: int, scale: float, dropout_p: float = 0.0):
    """The prefix queries (`[B, N, H, d]` inputs, keys already rotated) against every key: `[B, P, H, d]`.

    Two small GEMMs and a softmax: a flash kernel would run one thread block per head over the whole sequence.
    """
    query, key, value = (x.transpose(1, 2) for x in (query[:, :num_prefix], key, value))
    weights = (torch.matmul(query, key.transpose(-1, -2)) * scale).float().softmax(dim=-1)
    if dropout_p > 0:
        weights = F.dropout(weights, p=dropout_p)
    return torch.matmul(weights.to(value.dtype), value).transpose(1, 2)


def window_attention_torch(query, key, value, cos, sin, num_prefix: int, grid_size, window_size: int, scale: float,
                           dropout_p: float = 0.0):
    """Each patch query attends to its window's patches plus the prefix tokens; prefix queries attend to all tokens.

    Inputs `[B, N, H, d]`, unrotated; returns `[B, N, H * d]`.
    """
    batch, num_tokens, heads, head_dim = query.shape
    query, key = apply_rope(query, cos, sin, num_prefix), apply_rope(key, cos, sin, num_prefix)
    prefix_output = prefix_query_attention(query, key, value, num_prefix, scale, dropout_p)
    q, k, v = (x.transpose(1, 2) for x in (query, key, value))  # [B, H, N, d]
    windows_q, windows_k, windows_v = (window_partition(x[:, :, num_prefix:], grid_size, window_size) for x in (q, k, v))
    num_windows = windows_q.shape[0] // batch
    prefix_k, prefix_v = (
        x[:, :, :num_prefix].unsqueeze(1).expand(-1, num_windows, -1, -1, -1).flatten(0, 1) for x in (k, v)
    )
    mask = window_padding_mask(grid_size, window_size, num_prefix, query.device)
    if mask is not None:
        mask = mask.repeat(batch, 1, 1, 1)
    windows_output = F.scaled_dot_product_attention(
        windows_q,
        torch.cat((prefix_k, windows_k), dim=2),
        torch.cat((prefix_v, windows_v), dim=2),
        attn_mask=mask,
        dropout_p=dropout_p,
        scale=scale,
    )
    patch_output = window_unpartition(windows_output, grid_size, window_size).transpose(1, 2)
    return torch.cat((prefix_output, patch_output), dim=1).reshape(batch, num_tokens, heads * head_dim)
