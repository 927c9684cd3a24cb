"""Fused attention kernels for JetViT, registered as torch custom ops (`torch.ops.jetvit.*`).

Window attention (`window_attention`) reads q/k/v straight from the projection output, applies RoPE on load, attends
each patch query to its window plus the prefix tokens with an online softmax, and writes `[batch, tokens, channels]`:
no partition, padding or prefix-concatenation copies. The prefix queries, which attend to every token, ride along:
each program also accumulates them over the keys it has loaded, and one small kernel merges those partial softmaxes.

JetViT's linear-attention block (ReLU linear attention plus the squeeze dynamic depthwise convolution of V) runs as two
ops so that `torch.compile` keeps whole graphs:

1. `linear_attention_state(key, value, num_prefix)` reads K and V once and returns, per image and head, the fp32 state
   `sum_j relu(k_j)^T v_j` (d x d), the normalizer `sum_j relu(k_j)` and the sum of V over the patch tokens (the
   squeeze convolution's pooled input). On CUDA a Triton kernel splits the sequence so batch 1 fills the GPU, and a
   second one sums the splits in a fixed order (deterministic, no atomics).
2. `linear_attention_output(query, value, state, key_sum, conv_weight, ...)` computes
   `relu(q_i) state / (relu(q_i) . key_sum + N eps)` (the state divided in fp32; bf16/fp16 products use a hi/lo split
   of the fp32 state with per-column scales, made once per head by a small kernel), adds the depthwise k x k convolution of V on the patch grid for patch tokens, and writes
   `[batch, tokens, heads * head_dim]`, the layout `o_proj` reads.

Inputs are `[batch, tokens, heads, head_dim]` tensors with a contiguous last dimension (views of the projection output
are fine). The PyTorch implementations below are the CPU path and the reference the Triton kernels are tested against;
both ops have analytic backwards (in PyTorch, fp32) for training.

This file travels with saved checkpoints for `trust_remote_code`; Triton is optional.
"""

import functools

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the PyTorch path below is used
    triton = None


def triton_available(tensor: torch.Tensor) -> bool:
    return triton is not None and tensor.is_cuda


# ----------------------------------------------------------------------------------------------------------------------
# PyTorch reference implementations (CPU path, test oracle)
# ----------------------------------------------------------------------------------------------------------------------


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


def fp32_math(function):
    """Run `function` with autocast off: its fp32 state and normalizer must not be recast to bf16/fp16."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        tensor = next(arg for arg in args if isinstance(arg, torch.Tensor))
        with torch.autocast(device_type=tensor.device.type, enabled=False):
            return function(*args, **kwargs)

    return wrapper


@fp32_math
def state_reference(key, value, cos, sin, num_prefix: int):
    key = F.relu(apply_rope(key.float(), cos, sin, num_prefix))  # [B, N, H, d]
    value = value.float()
    state = torch.einsum("bnhd,bnhe->bhde", key, value)
    return state, key.sum(dim=1), value[:, num_prefix:].sum(dim=1)


def depthwise_conv_reference(value: torch.Tensor, conv_weight: torch.Tensor, num_prefix: int, grid_size) -> torch.Tensor:
    """Per-image depthwise conv of the patch tokens of `value` ([B, N, H, d]) with `conv_weight` ([B, C, k, k])."""
    batch, _, heads, head_dim = value.shape
    channels, size = heads * head_dim, conv_weight.shape[-1]
    image = value[:, num_prefix:].reshape(batch, *grid_size, channels).permute(0, 3, 1, 2).float()
    out = F.conv2d(
        image.reshape(1, batch * channels, *grid_size),
        conv_weight.reshape(batch * channels, 1, size, size).float(),
        padding=size // 2,
        groups=batch * channels,
    )
    return out.view(batch, channels, -1).transpose(1, 2)  # [B, patches, C]


@fp32_math
def output_reference(query, value, state, key_sum, conv_weight, cos, sin, num_prefix: int, grid_size, eps: float):
    batch, num_tokens, heads, head_dim = query.shape
    dtype = query.dtype
    query = F.relu(apply_rope(query.float(), cos, sin, num_prefix))
    numerator = torch.einsum("bnhd,bhde->bnhe", query, state) / num_tokens
    normalizer = torch.einsum("bnhd,bhd->bnh", query, key_sum).unsqueeze(-1) / num_tokens + eps
    out = (numerator / normalizer).reshape(batch, num_tokens, heads * head_dim)
    if conv_weight is not None:
        conv = depthwise_conv_reference(value, conv_weight, num_prefix, grid_size)
        out = torch.cat((out[:, :num_prefix], out[:, num_prefix:] + conv), dim=1)
    return out.to(dtype)


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


def window_attention_reference(query, key, value, cos, sin, num_prefix: int, grid_size, window_size: int,
                               scale: float, dropout_p: float = 0.0):
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


# ----------------------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _load_rotated(base, offs_n, stride_n, offs_d, mask, cos_ptr, sin_ptr, num_prefix,
                      HEAD_DIM: tl.constexpr, HAS_ROPE: tl.constexpr, RELU: tl.constexpr = True):
        """A [BLOCK_N, BLOCK_D] tile of q or k (rows `offs_n`), RoPE applied to its patch tokens (in fp32), back in its
        own dtype, then ReLU'd when `RELU`."""
        x = tl.load(base + offs_n[:, None] * stride_n + offs_d[None, :], mask=mask, other=0.0)
        if HAS_ROPE:
            partner = (offs_d + HEAD_DIM // 2) % HEAD_DIM  # rotate_half: x[j + d/2] with sign -1, x[j - d/2] with +1
            x_partner = tl.load(base + offs_n[:, None] * stride_n + partner[None, :], mask=mask, other=0.0)
            sign = tl.where(offs_d < HEAD_DIM // 2, -1.0, 1.0)
            patch = offs_n - num_prefix
            table_mask = mask & (patch >= 0)[:, None]
            table = patch[:, None] * HEAD_DIM + offs_d[None, :]
            cos = tl.load(cos_ptr + table, mask=table_mask, other=1.0).to(tl.float32)
            sin = tl.load(sin_ptr + table, mask=table_mask, other=0.0).to(tl.float32)
            rotated = x.to(tl.float32) * cos + sign[None, :] * x_partner.to(tl.float32) * sin
            x = rotated.to(x.dtype)
        if RELU:
            x = tl.where(x > 0, x, tl.zeros_like(x))
        return x

    @triton.jit
    def _state_kernel(
        k_ptr, v_ptr, cos_ptr, sin_ptr, partial_ptr,
        num_tokens, num_heads, num_prefix, tokens_per_split,
        stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, HAS_ROPE: tl.constexpr,
        IEEE_FP32: tl.constexpr,
    ):
        """One (image, head, sequence split): partial sums of relu(k)^T v, relu(k) and patch v, packed in one row."""
        batch_head = tl.program_id(0)
        split = tl.program_id(1)
        batch = batch_head // num_heads
        head = batch_head % num_heads
        offs_d = tl.arange(0, BLOCK_D)
        d_mask = offs_d < HEAD_DIM
        k_base = k_ptr + batch * stride_kb + head * stride_kh
        v_base = v_ptr + batch * stride_vb + head * stride_vh

        state = tl.zeros((BLOCK_D, BLOCK_D), dtype=tl.float32)
        key_sum = tl.zeros((BLOCK_D,), dtype=tl.float32)
        value_sum = tl.zeros((BLOCK_D,), dtype=tl.float32)
        start = split * tokens_per_split
        for offset in range(0, tokens_per_split, BLOCK_N):
            offs_n = start + offset + tl.arange(0, BLOCK_N)
            mask = (offs_n < num_tokens)[:, None] & d_mask[None, :]
            k = _load_rotated(k_base, offs_n, stride_kn, offs_d, mask, cos_ptr, sin_ptr, num_prefix, HEAD_DIM, HAS_ROPE)
            v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :], mask=mask, other=0.0)
            if IEEE_FP32:
                state += tl.dot(tl.trans(k), v, input_precision="ieee")
            else:
                state += tl.dot(tl.trans(k), v)
            key_sum += tl.sum(k.to(tl.float32), axis=0)
            value_sum += tl.sum(tl.where((offs_n >= num_prefix)[:, None], v.to(tl.float32), 0.0), axis=0)

        row = partial_ptr + (batch_head * tl.num_programs(1) + split) * (HEAD_DIM * HEAD_DIM + 2 * HEAD_DIM)
        tl.store(row + offs_d[:, None] * HEAD_DIM + offs_d[None, :], state, mask=d_mask[:, None] & d_mask[None, :])
        tl.store(row + HEAD_DIM * HEAD_DIM + offs_d, key_sum, mask=d_mask)
        tl.store(row + HEAD_DIM * HEAD_DIM + HEAD_DIM + offs_d, value_sum, mask=d_mask)

    @triton.jit
    def _state_finalize_kernel(partial_ptr, state_ptr, key_sum_ptr, value_sum_ptr, splits,
                               HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, BLOCK_S: tl.constexpr):
        """Sums one chunk of one (image, head)'s packed partial rows over the splits, BLOCK_S splits per load (a fixed
        reduction tree: deterministic, no atomics), and scatters it into the three outputs."""
        row_size: tl.constexpr = HEAD_DIM * HEAD_DIM + 2 * HEAD_DIM
        batch_head = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        offs_s = tl.arange(0, BLOCK_S)
        in_row = offs < row_size
        total = tl.zeros((BLOCK,), dtype=tl.float32)
        for start in range(0, splits, BLOCK_S):
            rows = batch_head * splits + start + offs_s
            tile = tl.load(partial_ptr + rows[:, None] * row_size + offs[None, :],
                           mask=(start + offs_s < splits)[:, None] & in_row[None, :], other=0.0)
            total += tl.sum(tile, axis=0)
        is_state = offs < HEAD_DIM * HEAD_DIM
        is_key_sum = in_row & ~is_state & (offs < HEAD_DIM * HEAD_DIM + HEAD_DIM)
        is_value_sum = in_row & (offs >= HEAD_DIM * HEAD_DIM + HEAD_DIM)
        tl.store(state_ptr + batch_head * HEAD_DIM * HEAD_DIM + offs, total, mask=is_state)
        tl.store(key_sum_ptr + batch_head * HEAD_DIM + offs - HEAD_DIM * HEAD_DIM, total, mask=is_key_sum)
        tl.store(value_sum_ptr + batch_head * HEAD_DIM + offs - HEAD_DIM * HEAD_DIM - HEAD_DIM, total,
                 mask=is_value_sum)

    @triton.jit
    def _state_split_kernel(state_ptr, hi_ptr, lo_ptr, scale_ptr,
                            HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr):
        """BLOCK_C columns of one (image, head)'s fp32 state as `scale * (hi + lo)`: each column scaled to [-1, 1] and
        split into two half-precision parts, so that two tensor-core products with them recover about fp32 accuracy
        (a bf16 copy would lose the state's low bits; a sum over tokens can exceed fp16's range)."""
        batch_head = tl.program_id(0)
        offs_d = tl.arange(0, BLOCK_D)
        offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        c_mask = offs_c < HEAD_DIM
        mask = (offs_d < HEAD_DIM)[:, None] & c_mask[None, :]
        cell = batch_head * HEAD_DIM * HEAD_DIM + offs_d[:, None] * HEAD_DIM + offs_c[None, :]
        state = tl.load(state_ptr + cell, mask=mask, other=0.0)
        scale = tl.maximum(tl.max(tl.abs(state), axis=0), 1e-30)
        normalized = state * (1.0 / scale)[None, :]
        hi = normalized.to(hi_ptr.dtype.element_ty)
        lo = (normalized - hi.to(tl.float32)).to(lo_ptr.dtype.element_ty)
        tl.store(hi_ptr + cell, hi, mask=mask)
        tl.store(lo_ptr + cell, lo, mask=mask)
        tl.store(scale_ptr + batch_head * HEAD_DIM + offs_c, scale, mask=c_mask)

    @triton.jit
    def _output_kernel(
        q_ptr, v_ptr, state_ptr, state_lo_ptr, state_scale_ptr, key_sum_ptr, w_ptr, cos_ptr, sin_ptr, o_ptr,
        num_tokens, num_heads, num_prefix, grid_h, grid_w, inv_tokens, eps,
        stride_qb, stride_qn, stride_qh, stride_vb, stride_vn, stride_vh, stride_ob, stride_on,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr,
        KERNEL_SIZE: tl.constexpr, HAS_CONV: tl.constexpr, HAS_ROPE: tl.constexpr, IEEE_FP32: tl.constexpr,
    ):
        """BLOCK_N tokens x BLOCK_E output channels of one (image, head) (a column block keeps registers low).

        For half-precision inputs `state_ptr` holds the state's high half-precision part and `state_lo_ptr`,
        `state_scale_ptr` its low part and column scales (`_state_split_kernel`); for fp32 inputs, the state itself."""
        batch_head = tl.program_id(0)
        batch = batch_head // num_heads
        head = batch_head % num_heads
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        offs_e = tl.program_id(2) * BLOCK_E + tl.arange(0, BLOCK_E)
        n_mask = offs_n < num_tokens
        d_mask = offs_d < HEAD_DIM
        e_mask = offs_e < HEAD_DIM

        q_base = q_ptr + batch * stride_qb + head * stride_qh
        q = _load_rotated(q_base, offs_n, stride_qn, offs_d, n_mask[:, None] & d_mask[None, :], cos_ptr, sin_ptr,
                          num_prefix, HEAD_DIM, HAS_ROPE)
        state_cells = batch_head * HEAD_DIM * HEAD_DIM + offs_d[:, None] * HEAD_DIM + offs_e[None, :]
        state_mask = d_mask[:, None] & e_mask[None, :]
        if IEEE_FP32:
            state = tl.load(state_ptr + state_cells, mask=state_mask, other=0.0)
            numerator = tl.dot(q, state, input_precision="ieee")
        else:
            state_hi = tl.load(state_ptr + state_cells, mask=state_mask, other=0.0)
            state_lo = tl.load(state_lo_ptr + state_cells, mask=state_mask, other=0.0)
            scale = tl.load(state_scale_ptr + batch_head * HEAD_DIM + offs_e, mask=e_mask, other=0.0)
            numerator = (tl.dot(q, state_hi) + tl.dot(q, state_lo)) * scale[None, :]
        key_sum = tl.load(key_sum_ptr + batch_head * HEAD_DIM + offs_d, mask=d_mask, other=0.0)
        normalizer = tl.sum(q.to(tl.float32) * key_sum[None, :], axis=1) * inv_tokens + eps
        out = numerator * (inv_tokens / normalizer)[:, None]

        if HAS_CONV:
            patch = offs_n - num_prefix
            is_patch = n_mask & (patch >= 0)
            row = patch // grid_w
            col = patch % grid_w
            v_base = v_ptr + batch * stride_vb + head * stride_vh
            w_base = w_ptr + (batch * num_heads * HEAD_DIM + head * HEAD_DIM + offs_e) * (KERNEL_SIZE * KERNEL_SIZE)
            for dy in tl.static_range(KERNEL_SIZE):
                for dx in tl.static_range(KERNEL_SIZE):
                    r = row + dy - KERNEL_SIZE // 2
                    c = col + dx - KERNEL_SIZE // 2
                    inside = is_patch & (r >= 0) & (r < grid_h) & (c >= 0) & (c < grid_w)
                    neighbour = num_prefix + r * grid_w + c
                    v = tl.load(v_base + neighbour[:, None] * stride_vn + offs_e[None, :],
                                mask=inside[:, None] & e_mask[None, :], other=0.0)
                    w = tl.load(w_base + dy * KERNEL_SIZE + dx, mask=e_mask, other=0.0).to(tl.float32)
                    out += v.to(tl.float32) * w[None, :]

        tl.store(o_ptr + batch * stride_ob + offs_n[:, None] * stride_on + head * HEAD_DIM + offs_e[None, :],
                 out.to(o_ptr.dtype.element_ty), mask=n_mask[:, None] & e_mask[None, :])

    @triton.jit
    def _online_softmax_step(q, k, v, valid, m_i, l_i, acc, qk_scale, PRECISION: tl.constexpr,
                             MASKED: tl.constexpr = True):
        """One block of keys `k` / values `v` (masked by `valid` when MASKED) into a flash-attention running max `m_i`
        (in units of log2, scaled), sum `l_i` and unnormalised output `acc`; `qk_scale` includes log2(e) and is applied
        inside the exponent's fused multiply-add. A finite initial `m_i` keeps fully masked blocks at p = 0."""
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        if MASKED:
            scores = tl.where(valid[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1) * qk_scale)
        p = tl.math.exp2(scores * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        return m_new, l_i, acc

    @triton.jit
    def _online_softmax_start(q, k, v, valid, qk_scale, PRECISION: tl.constexpr):
        """`_online_softmax_step` from an empty state: no running output to rescale."""
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        scores = tl.where(valid[None, :], scores, float("-inf"))
        m_i = tl.maximum(tl.max(scores, axis=1) * qk_scale, -1.0e30)
        p = tl.math.exp2(scores * qk_scale - m_i[:, None])
        return m_i, tl.sum(p, axis=1), tl.dot(p.to(v.dtype), v, input_precision=PRECISION)

    @triton.jit
    def _window_kernel(
        q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, o_ptr, prefix_acc_ptr, prefix_stats_ptr,
        num_heads, num_prefix, grid_h, grid_w, window_cols, windows_per_image, qk_scale,
        stride_qb, stride_qn, stride_qh, stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh,
        stride_ob, stride_on,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, WINDOW: tl.constexpr, BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, HAS_ROPE: tl.constexpr, PRECISION: tl.constexpr,
        KEY_STAGES: tl.constexpr, HAS_PREFIX: tl.constexpr, EVEN: tl.constexpr,
    ):
        """One block of BLOCK_M patch queries of one window and head: online softmax over the prefix keys and the
        window's keys (padding outside the grid masked), reading and writing the token-major tensors directly.

        The prefix queries attend to every key. Each program also runs them over its share of the window's key blocks
        (key block b goes to query block b % query_blocks; the prefix keys to window 0's first block), reusing the
        rotated keys it has loaded, and stores that partial softmax for `_prefix_merge_kernel`: no second pass over K/V.
        EVEN (windows tile the grid, blocks tile the windows) drops the key masks.
        """
        query_blocks: tl.constexpr = (WINDOW * WINDOW + BLOCK_M - 1) // BLOCK_M
        key_blocks: tl.constexpr = (WINDOW * WINDOW + BLOCK_N - 1) // BLOCK_N
        pid = tl.program_id(0)
        head = tl.program_id(1)
        block = pid % query_blocks
        window = (pid // query_blocks) % windows_per_image
        batch = pid // (query_blocks * windows_per_image)
        top = (window // window_cols) * WINDOW
        left = (window % window_cols) * WINDOW
        offs_d = tl.arange(0, BLOCK_D)
        d_mask = offs_d < HEAD_DIM

        t = block * BLOCK_M + tl.arange(0, BLOCK_M)
        row, col = top + t // WINDOW, left + t % WINDOW
        q_valid = (t < WINDOW * WINDOW) & (row < grid_h) & (col < grid_w)
        q_tokens = num_prefix + row * grid_w + col
        q_mask = q_valid[:, None] & d_mask[None, :]
        q_base = q_ptr + batch * stride_qb + head * stride_qh
        q = _load_rotated(q_base, q_tokens, stride_qn, offs_d, q_mask, cos_ptr, sin_ptr, num_prefix, HEAD_DIM,
                          HAS_ROPE, RELU=False)

        k_base = k_ptr + batch * stride_kb + head * stride_kh
        v_base = v_ptr + batch * stride_vb + head * stride_vh
        # the prefix keys (never rotated) first, then the window's keys
        offs_p = tl.arange(0, BLOCK_P)
        p_valid = offs_p < num_prefix
        p_mask = p_valid[:, None] & d_mask[None, :]
        prefix_k = tl.load(k_base + offs_p[:, None] * stride_kn + offs_d[None, :], mask=p_mask, other=0.0)
        prefix_v = tl.load(v_base + offs_p[:, None] * stride_vn + offs_d[None, :], mask=p_mask, other=0.0)
        m_i, l_i, acc = _online_softmax_start(q, prefix_k, prefix_v, p_valid, qk_scale, PRECISION)
        # the prefix queries' partial softmax over this program's keys (none yet)
        prefix_q = tl.load(q_base + offs_p[:, None] * stride_qn + offs_d[None, :], mask=p_mask, other=0.0)
        prefix_m = tl.full((BLOCK_P,), -1.0e30, dtype=tl.float32)
        prefix_l = tl.zeros((BLOCK_P,), dtype=tl.float32)
        prefix_acc = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
        if HAS_PREFIX:
            if (window == 0) & (block == 0):
                prefix_m, prefix_l, prefix_acc = _online_softmax_step(
                    prefix_q, prefix_k, prefix_v, p_valid, prefix_m, prefix_l, prefix_acc, qk_scale, PRECISION)

        for key_block in tl.range(0, key_blocks, num_stages=KEY_STAGES):  # software-pipelined key/value loads
            t_k = key_block * BLOCK_N + tl.arange(0, BLOCK_N)
            row_k, col_k = top + t_k // WINDOW, left + t_k % WINDOW
            k_valid = (t_k < WINDOW * WINDOW) & (row_k < grid_h) & (col_k < grid_w)  # read only when not EVEN
            k_tokens = num_prefix + row_k * grid_w + col_k
            if EVEN:
                kv_mask = d_mask[None, :]
            else:
                kv_mask = k_valid[:, None] & d_mask[None, :]
            k = _load_rotated(k_base, k_tokens, stride_kn, offs_d, kv_mask, cos_ptr, sin_ptr, num_prefix, HEAD_DIM,
                              HAS_ROPE, RELU=False)
            v = tl.load(v_base + k_tokens[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
            m_i, l_i, acc = _online_softmax_step(q, k, v, k_valid, m_i, l_i, acc, qk_scale, PRECISION, not EVEN)
            if HAS_PREFIX:
                if key_block % query_blocks == block:
                    prefix_m, prefix_l, prefix_acc = _online_softmax_step(
                        prefix_q, k, v, k_valid, prefix_m, prefix_l, prefix_acc, qk_scale, PRECISION, not EVEN)

        out = acc / l_i[:, None]
        tl.store(o_ptr + batch * stride_ob + q_tokens[:, None] * stride_on + head * HEAD_DIM + offs_d[None, :],
                 out.to(o_ptr.dtype.element_ty), mask=q_mask)
        if HAS_PREFIX:
            splits = windows_per_image * query_blocks
            partial = (batch * num_heads + head) * splits + pid % splits
            tl.store(prefix_acc_ptr + (partial * BLOCK_P + offs_p[:, None]) * BLOCK_D + offs_d[None, :], prefix_acc)
            tl.store(prefix_stats_ptr + (partial * 2) * BLOCK_P + offs_p, prefix_m)
            tl.store(prefix_stats_ptr + (partial * 2 + 1) * BLOCK_P + offs_p, prefix_l)

    @triton.jit
    def _prefix_merge_kernel(acc_ptr, stats_ptr, o_ptr, num_heads, splits, stride_ob, stride_on,
                             HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr,
                             BLOCK_S: tl.constexpr):
        """One prefix query of one (image, head): combines its partial softmaxes from all of `_window_kernel`'s
        programs, BLOCK_S at a time (few dependent loads), and writes its row of `o`."""
        batch_head = tl.program_id(0)
        row = tl.program_id(1)
        batch = batch_head // num_heads
        head = batch_head % num_heads
        offs_d = tl.arange(0, BLOCK_D)
        offs_s = tl.arange(0, BLOCK_S)
        m = tl.max(tl.full((BLOCK_S,), -1.0e30, dtype=tl.float32), axis=0)
        l_sum = tl.sum(tl.zeros((BLOCK_S,), dtype=tl.float32), axis=0)
        acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for start in range(0, splits, BLOCK_S):
            valid = start + offs_s < splits
            partial = batch_head * splits + start + offs_s
            m_split = tl.load(stats_ptr + (partial * 2) * BLOCK_P + row, mask=valid, other=-1.0e30)
            l_split = tl.load(stats_ptr + (partial * 2 + 1) * BLOCK_P + row, mask=valid, other=0.0)
            acc_split = tl.load(acc_ptr + (partial[:, None] * BLOCK_P + row) * BLOCK_D + offs_d[None, :],
                                mask=valid[:, None], other=0.0)
            m_new = tl.maximum(m, tl.max(m_split, axis=0))
            alpha = tl.math.exp2(m - m_new)
            weight = tl.math.exp2(m_split - m_new)
            l_sum = l_sum * alpha + tl.sum(l_split * weight, axis=0)
            acc = acc * alpha + tl.sum(acc_split * weight[:, None], axis=0)
            m = m_new
        tl.store(o_ptr + batch * stride_ob + row * stride_on + head * HEAD_DIM + offs_d,
                 (acc / l_sum).to(o_ptr.dtype.element_ty), mask=offs_d < HEAD_DIM)

# Launch settings, chosen by `benchmarks/bench_linear_attention.py --sweep` and `benchmarks/bench_window_attention.py`
# (bf16, ViT-L, 8197 tokens; results in benchmarks/results/): state and output on an H200, window on an H100.
STATE_BLOCK_N, STATE_WARPS, STATE_PROGRAMS_PER_SM, STATE_STAGES = 64, 4, 4, 2
OUTPUT_BLOCK_N, OUTPUT_BLOCK_E, OUTPUT_WARPS = 32, 64, 2  # BLOCK_E splits head dims above 64 into column blocks
WINDOW_BLOCK_M, WINDOW_BLOCK_N, WINDOW_WARPS, WINDOW_KEY_STAGES, WINDOW_MAX_REGISTERS = 128, 128, 4, 1, None
FINALIZE_BLOCK, FINALIZE_SPLITS = 256, 16  # a [splits, BLOCK] tile per load
SPLIT_COLUMNS = 16


def _precision(tensor: torch.Tensor) -> str:
    """fp32 products in fp32 (Triton's default for fp32 would be tf32); half types use the tensor cores as they are."""
    return "ieee" if tensor.dtype == torch.float32 else "tf32"


def _register_cap(max_registers):
    """Launch option capping registers per thread (more programs per multiprocessor, at the price of some spills)."""
    return {"maxnreg": max_registers} if max_registers else {}


def _block_d(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


def _sequence_splits(batch_heads: int, num_tokens: int, block_n: int, device: torch.device, programs_per_sm: int):
    """`(splits, tokens_per_split)`: split each (image, head)'s sequence so that about `programs_per_sm` programs run
    per multiprocessor even at batch 1; splits are whole blocks of `block_n` tokens."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    splits = max(1, min(triton.cdiv(programs_per_sm * sms, batch_heads), triton.cdiv(num_tokens, block_n)))
    tokens_per_split = triton.cdiv(triton.cdiv(num_tokens, splits), block_n) * block_n
    return triton.cdiv(num_tokens, tokens_per_split), tokens_per_split


def _rope_tables(cos, sin, reference: torch.Tensor):
    """Contiguous tables (any tensor as a placeholder without RoPE: the kernels do not read it then)."""
    if cos is None:
        return reference, reference
    return cos.contiguous(), sin.contiguous()


def state_triton(key, value, cos, sin, num_prefix: int, block_n=None, num_warps=None, programs_per_sm=None,
                 num_stages=None):
    batch, num_tokens, heads, head_dim = key.shape
    block_n = block_n or STATE_BLOCK_N
    splits, tokens_per_split = _sequence_splits(batch * heads, num_tokens, block_n, key.device,
                                                programs_per_sm or STATE_PROGRAMS_PER_SM)
    row = head_dim * head_dim + 2 * head_dim
    partials = torch.empty(batch * heads, splits, row, device=key.device, dtype=torch.float32)
    cos, sin = _rope_tables(cos, sin, key)
    _state_kernel[(batch * heads, splits)](
        key, value, cos, sin, partials,
        num_tokens, heads, num_prefix, tokens_per_split,
        key.stride(0), key.stride(1), key.stride(2), value.stride(0), value.stride(1), value.stride(2),
        HEAD_DIM=head_dim, BLOCK_D=_block_d(head_dim), BLOCK_N=block_n, HAS_ROPE=cos is not key,
        IEEE_FP32=key.dtype == torch.float32, num_warps=num_warps or STATE_WARPS,
        num_stages=num_stages or STATE_STAGES,
    )
    state = torch.empty(batch, heads, head_dim, head_dim, device=key.device, dtype=torch.float32)
    key_sum = torch.empty(batch, heads, head_dim, device=key.device, dtype=torch.float32)
    value_sum = torch.empty_like(key_sum)
    _state_finalize_kernel[(batch * heads, triton.cdiv(row, FINALIZE_BLOCK))](
        partials, state, key_sum, value_sum, splits, HEAD_DIM=head_dim, BLOCK=FINALIZE_BLOCK, BLOCK_S=FINALIZE_SPLITS,
        num_warps=4,
    )
    return state, key_sum, value_sum


def split_state(state: torch.Tensor, dtype: torch.dtype):
    """`(hi, lo, column_scale)` with `state ~= (hi + lo) * column_scale`, hi and lo in the half-precision `dtype`."""
    batch, heads, head_dim, _ = state.shape
    hi, lo = torch.empty_like(state, dtype=dtype), torch.empty_like(state, dtype=dtype)
    scale = torch.empty(batch, heads, head_dim, device=state.device, dtype=torch.float32)
    _state_split_kernel[(batch * heads, triton.cdiv(head_dim, SPLIT_COLUMNS))](
        state.contiguous(), hi, lo, scale, HEAD_DIM=head_dim, BLOCK_D=_block_d(head_dim), BLOCK_C=SPLIT_COLUMNS,
        num_warps=4,
    )
    return hi, lo, scale


def output_triton(query, value, state, key_sum, conv_weight, cos, sin, num_prefix: int, grid_size, eps: float,
                  block_n=None, block_e=None, num_warps=None):
    batch, num_tokens, heads, head_dim = query.shape
    block_n, block_d = block_n or OUTPUT_BLOCK_N, _block_d(head_dim)
    block_e = min(block_e or OUTPUT_BLOCK_E, block_d)
    out = torch.empty(batch, num_tokens, heads * head_dim, device=query.device, dtype=query.dtype)
    has_conv = conv_weight is not None
    weight = conv_weight.contiguous() if has_conv else state  # placeholder without the conv: never read
    cos, sin = _rope_tables(cos, sin, query)
    ieee = query.dtype == torch.float32
    state_parts = (state.contiguous(),) * 3 if ieee else split_state(state, query.dtype)  # fp32 reads the state
    _output_kernel[(batch * heads, triton.cdiv(num_tokens, block_n), triton.cdiv(head_dim, block_e))](
        query, value, *state_parts, key_sum.contiguous(), weight, cos, sin, out,
        num_tokens, heads, num_prefix, grid_size[0], grid_size[1], 1.0 / num_tokens, eps,
        query.stride(0), query.stride(1), query.stride(2), value.stride(0), value.stride(1), value.stride(2),
        out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_E=block_e,
        KERNEL_SIZE=conv_weight.shape[-1] if has_conv else 1, HAS_CONV=has_conv, HAS_ROPE=cos is not query,
        IEEE_FP32=ieee, num_warps=num_warps or OUTPUT_WARPS,
    )
    return out

def window_attention_triton(query, key, value, cos, sin, num_prefix: int, grid_size, window_size: int, scale: float,
                            block_m=None, block_n=None, num_warps=None, key_stages=None, max_registers=None):
    batch, num_tokens, heads, head_dim = query.shape
    window_tokens = max(16, triton.next_power_of_2(window_size * window_size))  # no query rows past a small window
    block_m, block_n = block_m or min(WINDOW_BLOCK_M, window_tokens), block_n or min(WINDOW_BLOCK_N, window_tokens)
    block_d, block_p = _block_d(head_dim), max(16, triton.next_power_of_2(max(num_prefix, 1)))
    out = torch.empty(batch, num_tokens, heads * head_dim, device=query.device, dtype=query.dtype)
    window_rows, window_cols = -(-grid_size[0] // window_size), -(-grid_size[1] // window_size)
    splits = window_rows * window_cols * triton.cdiv(window_size * window_size, block_m)  # programs per image and head
    # the prefix queries' partial softmaxes: unnormalised outputs and (running max, sum) per program
    prefix_acc = torch.empty(batch * heads, splits, block_p, block_d, device=query.device, dtype=torch.float32)
    prefix_stats = torch.empty(batch * heads, splits, 2, block_p, device=query.device, dtype=torch.float32)
    tables = _rope_tables(cos, sin, query)
    _window_kernel[(batch * splits, heads)](
        query, key, value, *tables, out, prefix_acc, prefix_stats,
        heads, num_prefix, grid_size[0], grid_size[1], window_cols, window_rows * window_cols, scale * 1.4426950408889634,
        query.stride(0), query.stride(1), query.stride(2), key.stride(0), key.stride(1), key.stride(2),
        value.stride(0), value.stride(1), value.stride(2), out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, BLOCK_D=block_d, WINDOW=window_size, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_P=block_p,
        HAS_ROPE=tables[0] is not query, PRECISION=_precision(query), KEY_STAGES=key_stages or WINDOW_KEY_STAGES,
        HAS_PREFIX=num_prefix > 0, num_warps=num_warps or WINDOW_WARPS,
        EVEN=grid_size[0] % window_size == 0 and grid_size[1] % window_size == 0
        and (window_size * window_size) % block_n == 0,
        **_register_cap(max_registers or WINDOW_MAX_REGISTERS),
    )
    if num_prefix:
        _prefix_merge_kernel[(batch * heads, num_prefix)](
            prefix_acc, prefix_stats, out, heads, splits, out.stride(0), out.stride(1),
            HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_P=block_p, BLOCK_S=32, num_warps=4,
        )
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Custom ops and their backwards
# ----------------------------------------------------------------------------------------------------------------------


def _depthwise_conv_backward(grad_patches, value, conv_weight, num_prefix: int, grid_size):
    """Gradients of the per-image depthwise conv w.r.t. V's patch tokens ([B, P, H, d]) and the kernels ([B, C, k, k]),
    from the convolution's own backward (one grouped conv over all images and channels, as in the forward)."""
    batch, _, heads, head_dim = value.shape
    channels, size = heads * head_dim, conv_weight.shape[-1]
    groups = batch * channels
    image = value[:, num_prefix:].float().reshape(batch, *grid_size, channels).permute(0, 3, 1, 2)
    grad_image = grad_patches.float().transpose(1, 2).reshape(1, groups, *grid_size)
    grad_value, grad_weight, _ = torch.ops.aten.convolution_backward(
        grad_image, image.reshape(1, groups, *grid_size), conv_weight.float().reshape(groups, 1, size, size),
        None, [1, 1], [size // 2, size // 2], [1, 1], False, [0, 0], groups, [True, True, False],
    )
    grad_value = grad_value.view(batch, channels, -1).transpose(1, 2).reshape(batch, -1, heads, head_dim)
    return grad_value, grad_weight.view(batch, channels, size, size)


def _register_ops():
    """Define the ops once per process (a second copy of this file, e.g. a checkpoint's remote code, reuses them)."""
    if hasattr(torch.ops.jetvit, "window_attention"):
        return

    @torch.library.custom_op("jetvit::linear_attention_state", mutates_args=())
    def linear_attention_state(
        key: torch.Tensor, value: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None, num_prefix: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if triton_available(key):
            return state_triton(key, value, cos, sin, num_prefix)
        return state_reference(key, value, cos, sin, num_prefix)

    @linear_attention_state.register_fake
    def _(key, value, cos, sin, num_prefix):
        batch, _, heads, head_dim = key.shape
        return (
            key.new_empty(batch, heads, head_dim, head_dim, dtype=torch.float32),
            key.new_empty(batch, heads, head_dim, dtype=torch.float32),
            key.new_empty(batch, heads, head_dim, dtype=torch.float32),
        )

    def state_setup_context(ctx, inputs, output):
        key, value, cos, sin, num_prefix = inputs
        ctx.save_for_backward(key, value, cos, sin)
        ctx.num_prefix = num_prefix

    @fp32_math
    def state_backward(ctx, grad_state, grad_key_sum, grad_value_sum):
        key, value, cos, sin = ctx.saved_tensors
        rotated = apply_rope(key.float(), cos, sin, ctx.num_prefix)
        grad_key = torch.einsum("bnhe,bhde->bnhd", value.float(), grad_state) + grad_key_sum.unsqueeze(1)
        grad_key = unrotate_grad(grad_key * (rotated > 0), cos, sin, ctx.num_prefix)
        grad_value = torch.einsum("bnhd,bhde->bnhe", F.relu(rotated), grad_state)
        grad_value[:, ctx.num_prefix :] += grad_value_sum.unsqueeze(1)
        return grad_key.to(key.dtype), grad_value.to(value.dtype), None, None, None

    linear_attention_state.register_autograd(state_backward, setup_context=state_setup_context)

    @torch.library.custom_op("jetvit::linear_attention_output", mutates_args=())
    def linear_attention_output(
        query: torch.Tensor,
        value: torch.Tensor,
        state: torch.Tensor,
        key_sum: torch.Tensor,
        conv_weight: torch.Tensor | None,
        cos: torch.Tensor | None,
        sin: torch.Tensor | None,
        num_prefix: int,
        grid_h: int,
        grid_w: int,
        eps: float,
    ) -> torch.Tensor:
        args = (query, value, state, key_sum, conv_weight, cos, sin, num_prefix, (grid_h, grid_w), eps)
        return output_triton(*args) if triton_available(query) else output_reference(*args)

    @linear_attention_output.register_fake
    def _(query, value, state, key_sum, conv_weight, cos, sin, num_prefix, grid_h, grid_w, eps):
        batch, num_tokens, heads, head_dim = query.shape
        return query.new_empty(batch, num_tokens, heads * head_dim)

    def output_setup_context(ctx, inputs, output):
        query, value, state, key_sum, conv_weight, cos, sin, num_prefix, grid_h, grid_w, eps = inputs
        ctx.save_for_backward(query, value, state, key_sum, conv_weight, cos, sin)
        ctx.num_prefix, ctx.grid_size, ctx.eps = num_prefix, (grid_h, grid_w), eps

    @fp32_math
    def output_backward(ctx, grad_out):
        query, value, state, key_sum, conv_weight, cos, sin = ctx.saved_tensors
        batch, num_tokens, heads, head_dim = query.shape
        rotated = apply_rope(query.float(), cos, sin, ctx.num_prefix)
        relu_query = F.relu(rotated)
        grad = grad_out.float().view(batch, num_tokens, heads, head_dim)
        numerator = torch.einsum("bnhd,bhde->bnhe", relu_query, state) / num_tokens
        normalizer = torch.einsum("bnhd,bhd->bnh", relu_query, key_sum).unsqueeze(-1) / num_tokens + ctx.eps
        grad_numerator = grad / normalizer
        grad_normalizer = -(grad * numerator).sum(-1, keepdim=True) / normalizer.square()
        grad_query = (
            torch.einsum("bnhe,bhde->bnhd", grad_numerator, state) + grad_normalizer * key_sum.unsqueeze(1)
        ) / num_tokens
        grad_query = unrotate_grad(grad_query * (rotated > 0), cos, sin, ctx.num_prefix).to(query.dtype)
        grad_state = torch.einsum("bnhd,bnhe->bhde", relu_query, grad_numerator) / num_tokens
        grad_key_sum = (grad_normalizer * relu_query).sum(1) / num_tokens
        grad_value, grad_weight = None, None
        if conv_weight is not None:
            grad_patches = grad_out[:, ctx.num_prefix :]
            grad_patch_value, grad_weight = _depthwise_conv_backward(
                grad_patches, value, conv_weight, ctx.num_prefix, ctx.grid_size
            )
            grad_value = F.pad(grad_patch_value.to(value.dtype), (0, 0, 0, 0, ctx.num_prefix, 0))  # prefix: no conv
            grad_weight = grad_weight.to(conv_weight.dtype)
        return grad_query, grad_value, grad_state, grad_key_sum, grad_weight, None, None, None, None, None, None

    linear_attention_output.register_autograd(output_backward, setup_context=output_setup_context)

    @torch.library.custom_op("jetvit::window_attention", mutates_args=())
    def window_attention(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        cos: torch.Tensor | None,
        sin: torch.Tensor | None,
        num_prefix: int,
        grid_h: int,
        grid_w: int,
        window_size: int,
        scale: float,
    ) -> torch.Tensor:
        args = (query, key, value, cos, sin, num_prefix, (grid_h, grid_w), window_size, scale)
        return window_attention_triton(*args) if triton_available(query) else window_attention_reference(*args)

    @window_attention.register_fake
    def _(query, key, value, cos, sin, num_prefix, grid_h, grid_w, window_size, scale):
        batch, num_tokens, heads, head_dim = query.shape
        return query.new_empty(batch, num_tokens, heads * head_dim)

    def window_setup_context(ctx, inputs, output):
        query, key, value, cos, sin, *settings = inputs
        ctx.save_for_backward(query, key, value, cos, sin)
        ctx.settings = settings

    def window_backward(ctx, grad_out):
        """Recomputes the PyTorch path under autograd: the Triton kernel is forward-only."""
        query, key, value, cos, sin = ctx.saved_tensors
        num_prefix, grid_h, grid_w, window_size, scale = ctx.settings
        with torch.enable_grad():
            inputs = [x.detach().requires_grad_(True) for x in (query, key, value)]
            out = window_attention_reference(*inputs, cos, sin, num_prefix, (grid_h, grid_w), window_size, scale)
            grads = torch.autograd.grad(out, inputs, grad_out)
        return (*grads, None, None, None, None, None, None, None)

    window_attention.register_autograd(window_backward, setup_context=window_setup_context)


_register_ops()


def linear_attention_state(key: torch.Tensor, value: torch.Tensor, num_prefix: int, cos=None, sin=None):
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
