"""Triton kernels for JetViT's linear-attention block (ReLU linear attention plus the squeeze dynamic depthwise
convolution of V), and their launchers; `ops_jetvit.py` calls them on CUDA tensors when Triton is installed.

- `linear_attention_state_triton` reads K and V once and returns, per image and head, the fp32 state
  `sum_j relu(k_j)^T v_j` (d x d), the normalizer `sum_j relu(k_j)` and the sum of V over the patch tokens. One kernel
  splits the sequence so that batch 1 fills the GPU, a second sums the splits in a fixed order (deterministic, no
  atomics).
- `linear_attention_output_triton` computes `relu(q_i) state / (relu(q_i) . key_sum + N eps)` and adds the depthwise
  k x k convolution of V on the patch grid for patch tokens, writing `[batch, tokens, heads * head_dim]`. For bf16/fp16
  inputs the fp32 state is first split per head into half-precision high and low parts with per-column scales
  (`split_state`), so that the tensor-core products keep about fp32 accuracy.

Inputs are `[batch, tokens, heads, head_dim]` with a contiguous last dimension (strided views of a fused projection
are fine); RoPE (tables `[patches, head_dim]`) is applied to the patch tokens of q and k as they are loaded. The
RoPE-on-load tile loader and the small launch helpers here are shared with `kernels_jetvit_window.py`.

Shipped with every saved checkpoint for `trust_remote_code`; Triton is optional (without it nothing here is launched).
"""

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: ops_jetvit.py uses the PyTorch path
    triton = None


def triton_available(tensor: torch.Tensor) -> bool:
    """Whether the Triton kernels take `tensor`: a CUDA tensor in half precision or fp32 (float64 takes the PyTorch
    path, whose state stays float64)."""
    return triton is not None and tensor.is_cuda and tensor.dtype != torch.float64


# ----------------------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _head_columns(HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, SPLIT_HALVES: tl.constexpr):
        """`(offs_d, d_mask)`: the head dimension each tile column holds, and which columns are real. SPLIT_HALVES puts
        the halves `[0, d/2)`, `[d/2, d)` at columns `[0, d/2)`, `[BLOCK_D/2, BLOCK_D/2 + d/2)`, so that RoPE partners
        are BLOCK_D / 2 columns apart (the backwards' inverse rotation splits the tile there); otherwise column c
        holds dimension c."""
        c = tl.arange(0, BLOCK_D)
        if SPLIT_HALVES:
            half = c % (BLOCK_D // 2)
            offs_d = half + (c // (BLOCK_D // 2)) * (HEAD_DIM // 2)
            d_mask = half < HEAD_DIM // 2
        else:
            offs_d = c
            d_mask = c < HEAD_DIM
        return offs_d, d_mask

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
    def _rope_rotate_kernel(x_ptr, out_ptr, cos_ptr, sin_ptr, num_tokens, num_prefix, stride_b, stride_n, stride_h,
                            HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
        """BLOCK_N rows of one (image, head) of `x` with RoPE applied to their patch tokens, into `out_ptr`
        (contiguous `[batch, tokens, heads, head_dim]`): `rope_rotated`."""
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        batch = tl.program_id(1)
        head = tl.program_id(2)
        offs_d = tl.arange(0, BLOCK_D)
        mask = (rows < num_tokens)[:, None] & (offs_d < HEAD_DIM)[None, :]
        x = _load_rotated(x_ptr + batch * stride_b + head * stride_h, rows, stride_n, offs_d, mask, cos_ptr, sin_ptr,
                          num_prefix, HEAD_DIM, True, RELU=False)
        heads = tl.num_programs(2)
        out = out_ptr + ((batch * num_tokens + rows[:, None]) * heads + head) * HEAD_DIM + offs_d[None, :]
        tl.store(out, x, mask=mask)

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
    def _state_finalize_kernel(partial_ptr, first_ptr, second_ptr, third_ptr, splits, FIRST: tl.constexpr,
                               SECOND: tl.constexpr, THIRD: tl.constexpr, BLOCK: tl.constexpr, BLOCK_S: tl.constexpr):
        """Sums one chunk of one (image, head)'s packed partial rows over the splits, BLOCK_S splits per load (a fixed
        reduction tree: deterministic, no atomics), and scatters it into the three outputs, whose (image, head) rows
        have FIRST, SECOND and THIRD elements (the state op: state, key sum, value sum; the output op's backward: the
        gradients of the state, the key sum and the convolution kernels)."""
        row_size: tl.constexpr = FIRST + SECOND + THIRD
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
        is_first = offs < FIRST
        is_second = ~is_first & (offs < FIRST + SECOND)
        is_third = in_row & (offs >= FIRST + SECOND)
        tl.store(first_ptr + batch_head * FIRST + offs, total, mask=is_first)
        tl.store(second_ptr + batch_head * SECOND + offs - FIRST, total, mask=is_second)
        tl.store(third_ptr + batch_head * THIRD + offs - FIRST - SECOND, total, mask=is_third)

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


# Launch settings, chosen by `benchmarks/bench_linear_attention.py --sweep` (bf16, ViT-L, 8197 tokens, on an H200;
# results in benchmarks/results/).
STATE_BLOCK_N, STATE_WARPS, STATE_PROGRAMS_PER_SM, STATE_STAGES = 64, 4, 4, 2
OUTPUT_BLOCK_N, OUTPUT_BLOCK_E, OUTPUT_WARPS = 32, 64, 2  # BLOCK_E splits head dims above 64 into column blocks
# Without RoPE, 64 tokens a program on 4 warps: at Depth Anything V2-L's shape 46.1 -> 43.4 us at bs1, 310 -> 298 at bs8
# on an H200; with RoPE 8-16% slower than the above (`h200_linear_token_blocks.json` in benchmarks/experiments/).
OUTPUT_BLOCK_N_NO_ROPE, OUTPUT_WARPS_NO_ROPE = 64, 4
FINALIZE_BLOCK, FINALIZE_SPLITS = 256, 16  # a [splits, BLOCK] tile per load
SPLIT_COLUMNS = 16
ROTATE_BLOCK_N = 32  # rows per program of the RoPE pass


def _block_d(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


def multiprocessors(device: torch.device) -> int:
    """The GPU's multiprocessor count, which launch grids are sized by; 4 for a CPU device, which a launcher sees only
    when `benchmarks/sm90_compile.py` compiles the kernels for sm_90 without a GPU."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def _sequence_splits(batch_heads: int, num_tokens: int, block_n: int, device: torch.device, programs_per_sm: int):
    """`(splits, tokens_per_split)`: split each (image, head)'s sequence so that about `programs_per_sm` programs run
    per multiprocessor even at batch 1; splits are whole blocks of `block_n` tokens."""
    splits_to_fill = triton.cdiv(programs_per_sm * multiprocessors(device), batch_heads)
    splits = max(1, min(splits_to_fill, triton.cdiv(num_tokens, block_n)))
    tokens_per_split = triton.cdiv(triton.cdiv(num_tokens, splits), block_n) * block_n
    return triton.cdiv(num_tokens, tokens_per_split), tokens_per_split


def _rope_tables(cos, sin, reference: torch.Tensor):
    """Contiguous tables (any tensor as a placeholder without RoPE: the kernels do not read it then)."""
    if cos is None:
        return reference, reference
    return cos.contiguous(), sin.contiguous()


def rope_rotated(x, cos, sin, num_prefix: int) -> torch.Tensor:
    """`x` (`[batch, tokens, heads, head_dim]`, any strides) with RoPE applied to its patch tokens, contiguous and in
    its dtype, as `_load_rotated` gives it: the backwards' `pre_rotate` pass, after which their kernels load q and k as
    they are."""
    batch, num_tokens, heads, head_dim = x.shape
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    cos, sin = _rope_tables(cos, sin, x)
    _rope_rotate_kernel[(triton.cdiv(num_tokens, ROTATE_BLOCK_N), batch, heads)](
        x, out, cos, sin, num_tokens, num_prefix, x.stride(0), x.stride(1), x.stride(2),
        HEAD_DIM=head_dim, BLOCK_D=_block_d(head_dim), BLOCK_N=ROTATE_BLOCK_N, num_warps=4,
    )
    return out


def rope_unrotated(grad, cos, sin, num_prefix: int) -> torch.Tensor:
    """The gradient w.r.t. RoPE's input from `grad` w.r.t. its output (`torch_jetvit.unrotate_grad`, the transpose
    rotation `x1 = g1 cos1 + g2 sin2`, `x2 = g2 cos2 - g1 sin1`): `rope_rotated` with the tables `cos` and `-sin`
    with its halves swapped."""
    half = sin.shape[-1] // 2
    return rope_rotated(grad, cos, -torch.cat((sin[..., half:], sin[..., :half]), dim=-1), num_prefix)


def linear_attention_state_triton(key, value, cos, sin, num_prefix: int, block_n=None, num_warps=None,
                                  programs_per_sm=None, num_stages=None):
    """`linear_attention_state_torch` on the GPU: fp32 partial sums per sequence split, then their fixed-order sum.
    The keyword arguments override the launch settings above (benchmarks and tests sweep them)."""
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
        partials, state, key_sum, value_sum, splits, FIRST=head_dim * head_dim, SECOND=head_dim, THIRD=head_dim,
        BLOCK=FINALIZE_BLOCK, BLOCK_S=FINALIZE_SPLITS, num_warps=4,
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


def linear_attention_output_triton(query, value, state, key_sum, conv_weight, cos, sin, num_prefix: int, grid_size,
                                   eps: float, block_n=None, block_e=None, num_warps=None):
    """`linear_attention_output_torch` on the GPU, `[batch, tokens, heads * head_dim]` in the dtype of `query`. The
    keyword arguments override the launch settings above (benchmarks and tests sweep them)."""
    batch, num_tokens, heads, head_dim = query.shape
    has_rope = cos is not None
    block_n, block_d = block_n or (OUTPUT_BLOCK_N if has_rope else OUTPUT_BLOCK_N_NO_ROPE), _block_d(head_dim)
    num_warps = num_warps or (OUTPUT_WARPS if has_rope else OUTPUT_WARPS_NO_ROPE)
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
        KERNEL_SIZE=conv_weight.shape[-1] if has_conv else 1, HAS_CONV=has_conv, HAS_ROPE=has_rope,
        IEEE_FP32=ieee, num_warps=num_warps,
    )
    return out
