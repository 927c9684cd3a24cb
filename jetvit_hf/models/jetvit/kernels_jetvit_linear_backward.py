"""Fused Triton backwards of JetViT's two linear-attention ops; `ops_jetvit.py` calls them on CUDA tensors when Triton
is installed (elsewhere the PyTorch backwards of `torch_jetvit.py`, which these kernels are tested against).

- `linear_attention_state_backward_triton`: per token, `grad_key = unrotate((v_j grad_state^T + grad_key_sum) *
  [RoPE(k_j) > 0])` and `grad_value = relu(RoPE(k_j)) grad_state (+ grad_value_sum on patch tokens)`. One kernel: each
  program takes a run of token blocks of one (image, head), keeps that head's `grad_state` in registers, loads k and
  writes both gradients in the inputs' dtype. With RoPE, k is rotated in a pass before the kernel and the key gradient
  rotated back in a pass after it (`pre_rotate`, the default); with `pre_rotate=False` the kernel rotates k as it
  loads it and un-rotates the key gradient in registers (the output backward does the same with q).
- `linear_attention_output_backward_triton`: per token, `grad_query`; summed over tokens, `grad_state`,
  `grad_key_sum` and (with the dynamic convolution) the convolution kernels' gradient, as the forward's state op does:
  per-split partial sums, then the forward's fixed-order finalize kernel (deterministic, no atomics). The depthwise
  convolution's input gradient (V's patch tokens) is a per-token stencil on the output gradient, written by the same
  kernel (the stencil's neighbour rows come from cache), so the backward reads q, v and the output gradient from
  memory about once and needs none of the fp32 layout copies around cuDNN's `convolution_backward`.

With `t_i = g_i state^T` (`g_i` the output gradient of token i, `n_i = relu(q_i) . key_sum / N + eps` its normalizer),
the PyTorch backward's quantities are `grad_numerator_i = g_i / n_i`, `g_i . numerator_i = relu(q_i) . t_i / N` and
`grad_normalizer_i = -(relu(q_i) . t_i) / (N n_i^2)`: one d x d product per token for the query gradient, one for the
state gradient.

The products take fp32 operands: exact fp32 for fp32 inputs, TF32 tensor cores for bf16/fp16 inputs (whose gradients
are rounded to 8 or 11 bits anyway); sums are fp32. With RoPE rotated in the kernels (`pre_rotate=False`) the head
dimension is laid out in registers as its two halves, each padded to a power of two (`_head_columns`), so that the
inverse rotation (pairs `j`, `j + d/2`) is a split of the tile.

Shipped with every saved checkpoint for `trust_remote_code`; Triton is optional (without it nothing here is launched).
"""

import torch

from .kernels_jetvit_linear import (FINALIZE_BLOCK, FINALIZE_SPLITS, _block_d, _rope_tables, _sequence_splits,
                                   rope_rotated, rope_unrotated)

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: ops_jetvit.py uses the PyTorch backwards
    triton = None


# ----------------------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------------------

if triton is not None:
    from .kernels_jetvit_linear import _head_columns, _load_rotated, _state_finalize_kernel

    @triton.jit
    def _unrotate(grad, offs_n, n_mask, cos_ptr, sin_ptr, num_prefix,
                  HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        """The gradient w.r.t. RoPE's input from a [BLOCK_N, BLOCK_D] fp32 gradient w.r.t. its output (columns as
        `_head_columns` lays them out with RoPE), the transpose rotation `torch_jetvit.unrotate_grad` computes:
        `x1 = g1 cos1 + g2 sin2`, `x2 = g2 cos2 - g1 sin1` for the pairs (j, j + d/2); prefix tokens pass unchanged."""
        HALF: tl.constexpr = BLOCK_D // 2
        g1, g2 = tl.split(tl.permute(tl.reshape(grad, (BLOCK_N, 2, HALF)), (0, 2, 1)))
        offs_h = tl.arange(0, HALF)
        patch = offs_n - num_prefix
        mask = (n_mask & (patch >= 0))[:, None] & (offs_h < HEAD_DIM // 2)[None, :]
        table = patch[:, None] * HEAD_DIM + offs_h[None, :]
        cos1 = tl.load(cos_ptr + table, mask=mask, other=1.0).to(tl.float32)
        sin1 = tl.load(sin_ptr + table, mask=mask, other=0.0).to(tl.float32)
        cos2 = tl.load(cos_ptr + table + HEAD_DIM // 2, mask=mask, other=1.0).to(tl.float32)
        sin2 = tl.load(sin_ptr + table + HEAD_DIM // 2, mask=mask, other=0.0).to(tl.float32)
        x1 = g1 * cos1 + g2 * sin2
        x2 = g2 * cos2 - g1 * sin1
        return tl.reshape(tl.permute(tl.join(x1, x2), (0, 2, 1)), (BLOCK_N, BLOCK_D))

    @triton.jit
    def _state_backward_kernel(
        k_ptr, v_ptr, cos_ptr, sin_ptr, grad_state_ptr, grad_key_sum_ptr, grad_value_sum_ptr, dk_ptr, dv_ptr,
        num_tokens, num_heads, num_prefix, tokens_per_split,
        stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh, stride_gb, stride_gh,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, HAS_ROPE: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        """One (image, head, run of tokens): the key and value gradients of its tokens, written [B, N, H, d]."""
        batch_head = tl.program_id(0)
        batch = batch_head // num_heads
        head = batch_head % num_heads
        cols, d_mask = _head_columns(HEAD_DIM, BLOCK_D, HAS_ROPE)
        k_base = k_ptr + batch * stride_kb + head * stride_kh
        v_base = v_ptr + batch * stride_vb + head * stride_vh
        out_offset = (batch * num_tokens * num_heads + head) * HEAD_DIM

        g_base = grad_state_ptr + batch * stride_gb + head * stride_gh
        grad_state = tl.load(g_base + cols[:, None] * HEAD_DIM + cols[None, :],
                             mask=d_mask[:, None] & d_mask[None, :], other=0.0)  # [d (key), e (value)]
        grad_key_sum = tl.load(grad_key_sum_ptr + batch_head * HEAD_DIM + cols, mask=d_mask, other=0.0)
        grad_value_sum = tl.load(grad_value_sum_ptr + batch_head * HEAD_DIM + cols, mask=d_mask, other=0.0)
        start = tl.program_id(1) * tokens_per_split
        for offset in range(0, tokens_per_split, BLOCK_N):
            offs_n = start + offset + tl.arange(0, BLOCK_N)
            n_mask = offs_n < num_tokens
            mask = n_mask[:, None] & d_mask[None, :]
            k = _load_rotated(k_base, offs_n, stride_kn, cols, mask, cos_ptr, sin_ptr, num_prefix, HEAD_DIM, HAS_ROPE,
                              RELU=False).to(tl.float32)
            v = tl.load(v_base + offs_n[:, None] * stride_vn + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            positive = k > 0
            grad_key = tl.dot(v, tl.trans(grad_state), input_precision=PRECISION) + grad_key_sum[None, :]
            grad_key = tl.where(positive, grad_key, 0.0)
            if HAS_ROPE:
                grad_key = _unrotate(grad_key, offs_n, n_mask, cos_ptr, sin_ptr, num_prefix, HEAD_DIM, BLOCK_N,
                                     BLOCK_D)
            grad_value = tl.dot(tl.where(positive, k, 0.0), grad_state, input_precision=PRECISION)
            grad_value += tl.where((offs_n >= num_prefix)[:, None], grad_value_sum[None, :], 0.0)
            out = out_offset + offs_n[:, None] * (num_heads * HEAD_DIM) + cols[None, :]
            tl.store(dk_ptr + out, grad_key.to(dk_ptr.dtype.element_ty), mask=mask)
            tl.store(dv_ptr + out, grad_value.to(dv_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _output_backward_kernel(
        q_ptr, v_ptr, state_ptr, key_sum_ptr, w_ptr, cos_ptr, sin_ptr, grad_ptr, dq_ptr, dv_ptr, partial_ptr,
        num_tokens, num_heads, num_prefix, grid_h, grid_w, tokens_per_split, inv_tokens, eps,
        stride_qb, stride_qn, stride_qh, stride_vb, stride_vn, stride_vh, stride_gb, stride_gn,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, KERNEL_SIZE: tl.constexpr,
        TAPS: tl.constexpr, BLOCK_T: tl.constexpr, HAS_CONV: tl.constexpr, HAS_ROPE: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        """One (image, head, sequence split): the query gradient (and, with the convolution, the value gradient) of
        its tokens, and one packed partial row of the sums over its tokens: grad_state (d x d), grad_key_sum (d) and,
        with the convolution, the kernels' gradient (d x TAPS, channel-major like the kernels; TAPS = k * k, 0
        without the convolution)."""
        batch_head = tl.program_id(0)
        split = tl.program_id(1)
        batch = batch_head // num_heads
        head = batch_head % num_heads
        cols, d_mask = _head_columns(HEAD_DIM, BLOCK_D, HAS_ROPE)
        q_base = q_ptr + batch * stride_qb + head * stride_qh
        g_base = grad_ptr + batch * stride_gb + head * HEAD_DIM
        out_offset = (batch * num_tokens * num_heads + head) * HEAD_DIM

        square = d_mask[:, None] & d_mask[None, :]
        state_t = tl.load(state_ptr + batch_head * HEAD_DIM * HEAD_DIM + cols[None, :] * HEAD_DIM + cols[:, None],
                          mask=square, other=0.0)  # state^T: [e (output), d (query)]
        key_sum = tl.load(key_sum_ptr + batch_head * HEAD_DIM + cols, mask=d_mask, other=0.0)
        grad_state = tl.zeros((BLOCK_D, BLOCK_D), dtype=tl.float32)
        grad_key_sum = tl.zeros((BLOCK_D,), dtype=tl.float32)
        offs_t = tl.arange(0, BLOCK_T)
        grad_weight = tl.zeros((BLOCK_D, BLOCK_T), dtype=tl.float32)  # [channel, tap]
        start = split * tokens_per_split
        for offset in range(0, tokens_per_split, BLOCK_N):
            offs_n = start + offset + tl.arange(0, BLOCK_N)
            n_mask = offs_n < num_tokens
            mask = n_mask[:, None] & d_mask[None, :]
            q = _load_rotated(q_base, offs_n, stride_qn, cols, mask, cos_ptr, sin_ptr, num_prefix, HEAD_DIM, HAS_ROPE,
                              RELU=True).to(tl.float32)
            g = tl.load(g_base + offs_n[:, None] * stride_gn + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            t = tl.dot(g, state_t, input_precision=PRECISION)  # g_i state^T
            inv_normalizer = 1.0 / (tl.sum(q * key_sum[None, :], axis=1) * inv_tokens + eps)
            grad_normalizer = -tl.sum(q * t, axis=1) * inv_tokens * inv_normalizer * inv_normalizer
            grad_query = (t * inv_normalizer[:, None] + grad_normalizer[:, None] * key_sum[None, :]) * inv_tokens
            grad_query = tl.where(q > 0, grad_query, 0.0)
            if HAS_ROPE:
                grad_query = _unrotate(grad_query, offs_n, n_mask, cos_ptr, sin_ptr, num_prefix, HEAD_DIM, BLOCK_N,
                                       BLOCK_D)
            out = out_offset + offs_n[:, None] * (num_heads * HEAD_DIM) + cols[None, :]
            tl.store(dq_ptr + out, grad_query.to(dq_ptr.dtype.element_ty), mask=mask)
            grad_state += tl.dot(tl.trans(q * inv_normalizer[:, None]), g, input_precision=PRECISION)
            grad_key_sum += tl.sum(q * grad_normalizer[:, None], axis=0)

            if HAS_CONV:
                # forward: out_i += w[tap] v[i + offset(tap)] on the patch grid (zero padding). Its gradients:
                # grad_w[tap] = sum_i g_i v[i + offset(tap)], grad_v_i = sum_tap w[tap] g[i - offset(tap)]
                patch = offs_n - num_prefix
                is_patch = n_mask & (patch >= 0)
                row = patch // grid_w
                col = patch % grid_w
                v_base = v_ptr + batch * stride_vb + head * stride_vh
                w_base = w_ptr + (batch * num_heads * HEAD_DIM + head * HEAD_DIM + cols) * TAPS
                grad_value = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
                for tap in range(TAPS):  # not unrolled: one neighbour tile of v and of g live at a time
                    dy = tap // KERNEL_SIZE - KERNEL_SIZE // 2
                    dx = tap % KERNEL_SIZE - KERNEL_SIZE // 2
                    inside = is_patch & (row + dy >= 0) & (row + dy < grid_h) & (col + dx >= 0) & (col + dx < grid_w)
                    v = tl.load(v_base + (offs_n + dy * grid_w + dx)[:, None] * stride_vn + cols[None, :],
                                mask=inside[:, None] & d_mask[None, :], other=0.0).to(tl.float32)
                    grad_weight += tl.where(offs_t[None, :] == tap, tl.sum(g * v, axis=0)[:, None], 0.0)
                    inside = is_patch & (row - dy >= 0) & (row - dy < grid_h) & (col - dx >= 0) & (col - dx < grid_w)
                    g_source = tl.load(g_base + (offs_n - dy * grid_w - dx)[:, None] * stride_gn + cols[None, :],
                                       mask=inside[:, None] & d_mask[None, :], other=0.0).to(tl.float32)
                    w = tl.load(w_base + tap, mask=d_mask, other=0.0).to(tl.float32)
                    grad_value += g_source * w[None, :]
                tl.store(dv_ptr + out, grad_value.to(dv_ptr.dtype.element_ty), mask=mask)  # prefix rows: zero

        row_size: tl.constexpr = HEAD_DIM * HEAD_DIM + HEAD_DIM + HEAD_DIM * TAPS
        partial = partial_ptr + (batch_head * tl.num_programs(1) + split) * row_size
        tl.store(partial + cols[:, None] * HEAD_DIM + cols[None, :], grad_state * inv_tokens, mask=square)
        tl.store(partial + HEAD_DIM * HEAD_DIM + cols, grad_key_sum * inv_tokens, mask=d_mask)
        if HAS_CONV:
            tl.store(partial + HEAD_DIM * HEAD_DIM + HEAD_DIM + cols[:, None] * TAPS + offs_t[None, :], grad_weight,
                     mask=d_mask[:, None] & (offs_t < TAPS)[None, :])


# Launch settings: token blocks that compile for sm_90 without register spills in bf16/fp16, the fastest of
# `benchmarks/bench_linear_attention.py --sweep-backward` (H200, 8197 tokens, batch 8, 16 heads, RoPE, pre-rotated;
# benchmarks/results/h200_speed_round2/linear_backward_sweep_bs8.json): state backward 0.35 ms, against 1.47 ms at
# the settings before them (64 tokens, 8 warps, 2 programs per SM, rotating in the kernel); output backward 2.26 ms,
# against 4.09 ms (32 tokens, 8 warps, 4 per SM). Without RoPE the kernels are the pre-rotated ones.
STATE_BACKWARD_BLOCK_N, STATE_BACKWARD_WARPS, STATE_BACKWARD_PROGRAMS_PER_SM = 32, 4, 2
OUTPUT_BACKWARD_BLOCK_N, OUTPUT_BACKWARD_WARPS, OUTPUT_BACKWARD_PROGRAMS_PER_SM = 64, 8, 2
# With RoPE, `pre_rotate` applies it to q (k) in a pass before the kernel and takes the query (key) gradient back
# through the transpose rotation in a pass after it, so the kernel runs as without RoPE: no rotation of the loads
# (partner columns and tables) and no in-register un-rotation (a split and join of the tile). In the sweep above it
# is faster at every setting (state backward 0.50 against 1.47 ms at the old defaults).
BACKWARD_PRE_ROTATE = True


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def linear_attention_state_backward_triton(key, value, cos, sin, num_prefix: int, grad_state, grad_key_sum,
                                           grad_value_sum, block_n=None, num_warps=None, programs_per_sm=None,
                                           pre_rotate=None):
    """`(grad_key, grad_value)` of `linear_attention_state` as `torch_jetvit.linear_attention_state_backward_torch`
    computes them, `[batch, tokens, heads, head_dim]` in the inputs' dtypes. The keyword arguments override the launch
    settings above."""
    if cos is not None and (BACKWARD_PRE_ROTATE if pre_rotate is None else pre_rotate):
        grad_key, grad_value = linear_attention_state_backward_triton(
            rope_rotated(key, cos, sin, num_prefix), value, None, None, num_prefix, grad_state, grad_key_sum,
            grad_value_sum, block_n=block_n, num_warps=num_warps, programs_per_sm=programs_per_sm)
        return rope_unrotated(grad_key, cos, sin, num_prefix), grad_value
    batch, num_tokens, heads, head_dim = key.shape
    block_n = block_n or STATE_BACKWARD_BLOCK_N
    splits, tokens_per_split = _sequence_splits(batch * heads, num_tokens, block_n, key.device,
                                                programs_per_sm or STATE_BACKWARD_PROGRAMS_PER_SM)
    grad_state = grad_state.float()
    if grad_state.stride(-1) != 1 or grad_state.stride(-2) != head_dim:  # strided over images and heads is fine
        grad_state = grad_state.contiguous()
    grad_key = torch.empty(batch, num_tokens, heads, head_dim, device=key.device, dtype=key.dtype)
    grad_value = torch.empty(batch, num_tokens, heads, head_dim, device=key.device, dtype=value.dtype)
    cos, sin = _rope_tables(cos, sin, key)
    _state_backward_kernel[(batch * heads, splits)](
        key, value, cos, sin, grad_state, grad_key_sum.float().contiguous(), grad_value_sum.float().contiguous(),
        grad_key, grad_value,
        num_tokens, heads, num_prefix, tokens_per_split,
        key.stride(0), key.stride(1), key.stride(2), value.stride(0), value.stride(1), value.stride(2),
        grad_state.stride(0), grad_state.stride(1),
        HEAD_DIM=head_dim, BLOCK_D=_block_d(head_dim), BLOCK_N=block_n, HAS_ROPE=cos is not key,
        PRECISION=_precision(key.dtype), num_warps=num_warps or STATE_BACKWARD_WARPS,
    )
    return grad_key, grad_value


def linear_attention_output_backward_triton(query, value, state, key_sum, conv_weight, cos, sin, num_prefix: int,
                                            grid_size, eps: float, grad_out, block_n=None, num_warps=None,
                                            programs_per_sm=None, pre_rotate=None):
    """`(grad_query, grad_value, grad_state, grad_key_sum, grad_weight)` of `linear_attention_output` as
    `torch_jetvit.linear_attention_output_backward_torch` computes them (`grad_value`, `grad_weight` None without
    `conv_weight`). The keyword arguments override the launch settings above."""
    if cos is not None and (BACKWARD_PRE_ROTATE if pre_rotate is None else pre_rotate):
        grad_query, *rest = linear_attention_output_backward_triton(
            rope_rotated(query, cos, sin, num_prefix), value, state, key_sum, conv_weight, None, None, num_prefix,
            grid_size, eps, grad_out, block_n=block_n, num_warps=num_warps, programs_per_sm=programs_per_sm)
        return rope_unrotated(grad_query, cos, sin, num_prefix), *rest
    batch, num_tokens, heads, head_dim = query.shape
    block_n = block_n or OUTPUT_BACKWARD_BLOCK_N
    splits, tokens_per_split = _sequence_splits(batch * heads, num_tokens, block_n, query.device,
                                                programs_per_sm or OUTPUT_BACKWARD_PROGRAMS_PER_SM)
    has_conv = conv_weight is not None
    size = conv_weight.shape[-1] if has_conv else 1
    taps = size * size if has_conv else 0
    if grad_out.stride(-1) != 1:
        grad_out = grad_out.contiguous()
    grad_query = torch.empty(batch, num_tokens, heads, head_dim, device=query.device, dtype=query.dtype)
    grad_value = torch.empty_like(grad_query, dtype=value.dtype) if has_conv else None
    row = head_dim * head_dim + head_dim + head_dim * taps
    partials = torch.empty(batch * heads, splits, row, device=query.device, dtype=torch.float32)
    state = state.float().contiguous()
    weight = conv_weight.contiguous() if has_conv else state  # placeholders without the conv: never read
    cos, sin = _rope_tables(cos, sin, query)
    _output_backward_kernel[(batch * heads, splits)](
        query, value, state, key_sum.float().contiguous(), weight, cos, sin, grad_out, grad_query,
        grad_value if has_conv else grad_query, partials,
        num_tokens, heads, num_prefix, grid_size[0], grid_size[1], tokens_per_split, 1.0 / num_tokens, eps,
        query.stride(0), query.stride(1), query.stride(2), value.stride(0), value.stride(1), value.stride(2),
        grad_out.stride(0), grad_out.stride(1),
        HEAD_DIM=head_dim, BLOCK_D=_block_d(head_dim), BLOCK_N=block_n, KERNEL_SIZE=size, TAPS=taps,
        BLOCK_T=triton.next_power_of_2(max(taps, 2)), HAS_CONV=has_conv, HAS_ROPE=cos is not query,
        PRECISION=_precision(query.dtype), num_warps=num_warps or OUTPUT_BACKWARD_WARPS,
    )
    grad_state = torch.empty(batch, heads, head_dim, head_dim, device=query.device, dtype=torch.float32)
    grad_key_sum = torch.empty(batch, heads, head_dim, device=query.device, dtype=torch.float32)
    grad_weight = torch.empty(batch, heads * head_dim, size, size, device=query.device, dtype=torch.float32) \
        if has_conv else grad_key_sum  # placeholder without the conv: nothing is written to it
    _state_finalize_kernel[(batch * heads, triton.cdiv(row, FINALIZE_BLOCK))](
        partials, grad_state, grad_key_sum, grad_weight, splits,
        FIRST=head_dim * head_dim, SECOND=head_dim, THIRD=head_dim * taps, BLOCK=FINALIZE_BLOCK,
        BLOCK_S=FINALIZE_SPLITS, num_warps=4,
    )
    grad_weight = grad_weight.to(conv_weight.dtype) if has_conv else None
    return grad_query, grad_value, grad_state, grad_key_sum, grad_weight
