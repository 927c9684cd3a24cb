"""Triton kernels for JetViT's window attention with global prefix tokens, and their launcher; `ops_jetvit.py` calls
`window_attention_triton` on CUDA tensors when Triton is installed.

Each patch query attends to the patches of its `window_size` x `window_size` window plus every prefix token (CLS,
registers), and each prefix query attends to every token. The window kernel reads q/k/v straight from the projection
output (`[batch, tokens, heads, head_dim]`, strided views are fine), applies RoPE on load, runs an online softmax over
the prefix keys and the window's keys, and writes `[batch, tokens, heads * head_dim]`: no partition, padding or
prefix-concatenation copies. Windows at the grid's bottom and right edges are clipped to it (`_clipped_window`), so no
block of queries or keys is spent on padding. The prefix queries' softmax over all tokens is split into partials that a
small kernel merges: with RoPE each window program also runs them over keys it has rotated anyway; without, one extra
program per few windows does, reading tiles its neighbours just brought into L2 (faster there, see
WINDOW_PREFIX_GROUP).

Uses the RoPE-on-load tile loader and the launch helpers of `kernels_jetvit_linear.py`; its window geometry helpers
are shared with the backward kernels (`kernels_jetvit_window_backward.py`). Shipped with every saved checkpoint for
`trust_remote_code`; Triton is optional (without it nothing here is launched).
"""

import torch

from .kernels_jetvit_linear import _block_d, _rope_tables

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: ops_jetvit.py uses the PyTorch path
    triton = None


# ----------------------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------------------

if triton is not None:
    from .kernels_jetvit_linear import _load_rotated

    @triton.jit
    def _window_corner(window, window_cols, WINDOW: tl.constexpr):
        """The top row and left column (in patches) of window `window`, windows numbered row-major."""
        return (window // window_cols) * WINDOW, (window % window_cols) * WINDOW

    @triton.jit
    def _window_program(pid, BLOCKS: tl.constexpr, windows_per_image, window_cols, WINDOW: tl.constexpr):
        """`(block, window, image, top row, left column)` of a program id laid out as (image, window, block), BLOCKS
        blocks per window (shared with the backward kernels of `kernels_jetvit_window_backward.py`)."""
        block = pid % BLOCKS
        window = (pid // BLOCKS) % windows_per_image
        batch = pid // (BLOCKS * windows_per_image)
        top, left = _window_corner(window, window_cols, WINDOW)
        return block, window, batch, top, left

    @triton.jit
    def _window_tokens(top, left, t, num_prefix, grid_h, grid_w, WINDOW: tl.constexpr):
        """Token indices of the window positions `t` (row-major in the whole `WINDOW` x `WINDOW` box whose top-left
        patch is `top`, `left`) and whether each is a real patch: padding past the window or the grid is not. Where
        windows tile the grid this is `_clipped_window_tokens`; the experiments' kernel variants use it for any grid."""
        row, col = top + t // WINDOW, left + t % WINDOW
        valid = (t < WINDOW * WINDOW) & (row < grid_h) & (col < grid_w)
        return num_prefix + row * grid_w + col, valid

    @triton.jit
    def _clipped_window(top, left, grid_h, grid_w, WINDOW: tl.constexpr):
        """Width and number of patches of the window at (`top`, `left`) clipped to the grid. The kernels number a
        window's patches row-major within this clipped box, so windows at the bottom and right edges spend no query or
        key blocks on padding: a 37x37 grid in windows of 16 (518 px) takes 21 pairs of 128-row blocks per head instead
        of 36, Depth Anything's 73x97 (1022x1358) 125 instead of 140 (`benchmarks/experiments/window_clipped.py`). A
        window past the grid has no patches."""
        width = tl.minimum(grid_w - left, WINDOW)
        return width, tl.maximum(tl.minimum(grid_h - top, WINDOW), 0) * width

    @triton.jit
    def _clipped_window_blocks(top, left, grid_h, grid_w, WINDOW: tl.constexpr, BLOCK_M: tl.constexpr,
                               BLOCK_N: tl.constexpr, EVEN: tl.constexpr):
        """`_clipped_window`'s width and patch count, and the blocks of BLOCK_M queries and of BLOCK_N keys its
        patches fill; EVEN (windows tile the grid, so none is clipped) gives the whole window's, at compile time."""
        if EVEN:
            patches: tl.constexpr = WINDOW * WINDOW
            return WINDOW, patches, (patches + BLOCK_M - 1) // BLOCK_M, (patches + BLOCK_N - 1) // BLOCK_N
        width, count = _clipped_window(top, left, grid_h, grid_w, WINDOW)
        return width, count, tl.cdiv(count, BLOCK_M), tl.cdiv(count, BLOCK_N)

    @triton.jit
    def _clipped_window_tokens(top, left, t, width, count, num_prefix, grid_h, grid_w, WINDOW: tl.constexpr,
                               EVEN: tl.constexpr):
        """`_window_tokens` over the clipped window of `_clipped_window` (`width`, `count` patches); EVEN (windows tile
        the grid, so none is clipped) is `_window_tokens` itself, dividing by the compile-time WINDOW."""
        if EVEN:
            return _window_tokens(top, left, t, num_prefix, grid_h, grid_w, WINDOW)
        return num_prefix + (top + t // width) * grid_w + left + t % width, t < count

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
    def _window_keys(k_base, v_base, cos_ptr, sin_ptr, top, left, width, count, key_block, offs_d, d_mask, num_prefix,
                     grid_h, grid_w, stride_kn, stride_vn, HEAD_DIM: tl.constexpr, WINDOW: tl.constexpr,
                     BLOCK_N: tl.constexpr, HAS_ROPE: tl.constexpr, EVEN: tl.constexpr):
        """Key block `key_block` of the clipped window at (`top`, `left`) (`_clipped_window`): its keys (RoPE
        applied), values and which of its rows are real patches, the only ones loaded unless EVEN (windows tile the
        grid and blocks the windows)."""
        tokens, valid = _clipped_window_tokens(top, left, key_block * BLOCK_N + tl.arange(0, BLOCK_N), width, count,
                                               num_prefix, grid_h, grid_w, WINDOW, EVEN)
        if EVEN:
            mask = d_mask[None, :]
        else:
            mask = valid[:, None] & d_mask[None, :]
        k = _load_rotated(k_base, tokens, stride_kn, offs_d, mask, cos_ptr, sin_ptr, num_prefix, HEAD_DIM, HAS_ROPE,
                          RELU=False)
        v = tl.load(v_base + tokens[:, None] * stride_vn + offs_d[None, :], mask=mask, other=0.0)
        return k, v, valid

    @triton.jit
    def _store_prefix_partial(acc_ptr, stats_ptr, partial, offs_p, offs_d, p_valid, m, l_sum, acc,
                              BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
        """A partial softmax of the prefix queries (the real rows of it) for `_prefix_merge_kernel`."""
        tl.store(acc_ptr + (partial * BLOCK_P + offs_p[:, None]) * BLOCK_D + offs_d[None, :], acc,
                 mask=p_valid[:, None])
        tl.store(stats_ptr + (partial * 2) * BLOCK_P + offs_p, m, mask=p_valid)
        tl.store(stats_ptr + (partial * 2 + 1) * BLOCK_P + offs_p, l_sum, mask=p_valid)

    @triton.jit
    def _window_kernel(
        q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, o_ptr, prefix_acc_ptr, prefix_stats_ptr,
        num_heads, num_prefix, grid_h, grid_w, window_cols, windows_per_image, splits, qk_scale,
        stride_qb, stride_qn, stride_qh, stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh,
        stride_ob, stride_on,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, WINDOW: tl.constexpr, BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, HAS_ROPE: tl.constexpr, PRECISION: tl.constexpr,
        KEY_STAGES: tl.constexpr, HAS_PREFIX: tl.constexpr, PREFIX_GROUP: tl.constexpr,
        PREFIX_STAGES: tl.constexpr, EVEN: tl.constexpr,
    ):
        """One block of BLOCK_M patch queries of one window and head: online softmax over the prefix keys and the
        window's keys, reading and writing the token-major tensors directly. Windows are clipped to the grid
        (`_clipped_window`): a block past a clipped window's patches has nothing to do, and its key loop stops at the
        window's last patch.

        The prefix queries attend to every key; their partial softmaxes go to `_prefix_merge_kernel`, one of two ways:
        - PREFIX_GROUP == 0: each program also runs them over its share of the window's key blocks (key block b goes
          to query block b % (the window's query blocks); the prefix keys to window 0's first), reusing the keys it has
          loaded: no second pass over K/V, and so the cheaper way with RoPE. `splits` = programs per image and head.
        - PREFIX_GROUP == G > 0: every G windows get one program more (after their query blocks in the grid), which
          runs the prefix queries over those windows' keys (PREFIX_STAGES-pipelined; the neighbours it follows have just
          loaded the same tiles, so they come from L2), and the query-block programs leave them out, which spares
          them a 16-row softmax step per key block. `splits` = groups of windows per image.
        EVEN (windows tile the grid, blocks tile the windows) drops the key masks.
        """
        query_blocks: tl.constexpr = (WINDOW * WINDOW + BLOCK_M - 1) // BLOCK_M
        key_blocks: tl.constexpr = (WINDOW * WINDOW + BLOCK_N - 1) // BLOCK_N
        pid = tl.program_id(0)
        head = tl.program_id(1)
        if PREFIX_GROUP > 0:
            member = pid % (PREFIX_GROUP * query_blocks + 1)
            batch = pid // (PREFIX_GROUP * query_blocks + 1) // splits
            split = pid // (PREFIX_GROUP * query_blocks + 1) % splits
            window = split * PREFIX_GROUP + member // query_blocks
            block = member % query_blocks
            top, left = _window_corner(window, window_cols, WINDOW)
            prefix_program = member == PREFIX_GROUP * query_blocks
            patch_program = (member < PREFIX_GROUP * query_blocks) & (window < windows_per_image)
            owns_prefix_keys = (split == 0) & prefix_program  # the prefix queries over the prefix keys
        else:
            block, window, batch, top, left = _window_program(pid, query_blocks, windows_per_image, window_cols,
                                                              WINDOW)
            split = pid % splits
            patch_program = True
            owns_prefix_keys = split == 0  # window 0's first query block
        width, count, window_query_blocks, window_key_blocks = _clipped_window_blocks(top, left, grid_h, grid_w,
                                                                                      WINDOW, BLOCK_M, BLOCK_N, EVEN)
        if not EVEN:
            patch_program = patch_program & (block * BLOCK_M < count)
        offs_d = tl.arange(0, BLOCK_D)
        d_mask = offs_d < HEAD_DIM
        q_base = q_ptr + batch * stride_qb + head * stride_qh
        k_base = k_ptr + batch * stride_kb + head * stride_kh
        v_base = v_ptr + batch * stride_vb + head * stride_vh
        # the prefix keys (never rotated), and the prefix queries' partial softmax (none yet)
        offs_p = tl.arange(0, BLOCK_P)
        p_valid = offs_p < num_prefix
        p_mask = p_valid[:, None] & d_mask[None, :]
        prefix_k = tl.load(k_base + offs_p[:, None] * stride_kn + offs_d[None, :], mask=p_mask, other=0.0)
        prefix_v = tl.load(v_base + offs_p[:, None] * stride_vn + offs_d[None, :], mask=p_mask, other=0.0)
        prefix_q = tl.load(q_base + offs_p[:, None] * stride_qn + offs_d[None, :], mask=p_mask, other=0.0)
        prefix_m = tl.full((BLOCK_P,), -1.0e30, dtype=tl.float32)
        prefix_l = tl.zeros((BLOCK_P,), dtype=tl.float32)
        prefix_acc = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
        partial = (batch * num_heads + head) * splits + split
        if HAS_PREFIX:
            if owns_prefix_keys:
                prefix_m, prefix_l, prefix_acc = _online_softmax_step(
                    prefix_q, prefix_k, prefix_v, p_valid, prefix_m, prefix_l, prefix_acc, qk_scale, PRECISION)

        if patch_program:
            q_tokens, q_valid = _clipped_window_tokens(top, left, block * BLOCK_M + tl.arange(0, BLOCK_M), width, count,
                                                       num_prefix, grid_h, grid_w, WINDOW, EVEN)
            q_mask = q_valid[:, None] & d_mask[None, :]
            q = _load_rotated(q_base, q_tokens, stride_qn, offs_d, q_mask, cos_ptr, sin_ptr, num_prefix, HEAD_DIM,
                              HAS_ROPE, RELU=False)
            m_i, l_i, acc = _online_softmax_start(q, prefix_k, prefix_v, p_valid, qk_scale, PRECISION)
            # a compile-time trip count, the blocks past the window's patches skipped: with a run-time trip count the
            # compiler spills more (88 bytes against 56 without RoPE); timed, neither was faster at every shape
            # (`h200_window_clipped_*.json` in benchmarks/experiments/)
            for key_block in tl.range(0, key_blocks, num_stages=KEY_STAGES):  # software-pipelined K/V loads
                if key_block < window_key_blocks:
                    k, v, k_valid = _window_keys(k_base, v_base, cos_ptr, sin_ptr, top, left, width, count, key_block,
                                                 offs_d, d_mask, num_prefix, grid_h, grid_w, stride_kn, stride_vn,
                                                 HEAD_DIM, WINDOW, BLOCK_N, HAS_ROPE, EVEN)
                    m_i, l_i, acc = _online_softmax_step(q, k, v, k_valid, m_i, l_i, acc, qk_scale, PRECISION,
                                                         not EVEN)
                    if HAS_PREFIX and PREFIX_GROUP == 0:
                        if key_block % window_query_blocks == block:
                            prefix_m, prefix_l, prefix_acc = _online_softmax_step(
                                prefix_q, k, v, k_valid, prefix_m, prefix_l, prefix_acc, qk_scale, PRECISION,
                                not EVEN)
            out = acc / l_i[:, None]
            tl.store(o_ptr + batch * stride_ob + q_tokens[:, None] * stride_on + head * HEAD_DIM + offs_d[None, :],
                     out.to(o_ptr.dtype.element_ty), mask=q_mask)
        if HAS_PREFIX and PREFIX_GROUP > 0:
            if prefix_program:  # over the group's windows' keys (a window past the last one has none)
                for step in tl.range(0, PREFIX_GROUP * key_blocks, num_stages=PREFIX_STAGES):
                    top, left = _window_corner(split * PREFIX_GROUP + step // key_blocks, window_cols, WINDOW)
                    width, count = _clipped_window(top, left, grid_h, grid_w, WINDOW)
                    k, v, k_valid = _window_keys(k_base, v_base, cos_ptr, sin_ptr, top, left, width, count,
                                                 step % key_blocks, offs_d, d_mask, num_prefix, grid_h, grid_w,
                                                 stride_kn, stride_vn, HEAD_DIM, WINDOW, BLOCK_N, HAS_ROPE, False)
                    prefix_m, prefix_l, prefix_acc = _online_softmax_step(
                        prefix_q, k, v, k_valid, prefix_m, prefix_l, prefix_acc, qk_scale, PRECISION)
                _store_prefix_partial(prefix_acc_ptr, prefix_stats_ptr, partial, offs_p, offs_d, p_valid, prefix_m,
                                      prefix_l, prefix_acc, BLOCK_P, BLOCK_D)
        elif HAS_PREFIX:
            _store_prefix_partial(prefix_acc_ptr, prefix_stats_ptr, partial, offs_p, offs_d, p_valid, prefix_m,
                                  prefix_l, prefix_acc, BLOCK_P, BLOCK_D)

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


# Launch settings, chosen by `benchmarks/bench_window_attention.py` (bf16, ViT-L, 8197 tokens, on an H100; results in
# benchmarks/results/).
WINDOW_BLOCK_M, WINDOW_BLOCK_N, WINDOW_WARPS, WINDOW_KEY_STAGES, WINDOW_MAX_REGISTERS = 128, 128, 4, 1, None
# How the prefix queries run (`_window_kernel`'s PREFIX_GROUP): with RoPE inside the window programs (0), without it in
# a program of their own per 4 windows, 2 pipeline stages. On an H200 the latter took a DINOv2 / Depth Anything V2-L
# layer at 1022x1358 from 78.6 to 62.1 us at batch 1 and from 497 to 412 us at batch 8, but with RoPE it costs more
# than it saves, its keys being rotated a second time (76.3 -> 88.2 us at 1024x2048; `window_prefix_queries.py` in
# benchmarks/experiments/).
WINDOW_PREFIX_GROUP, WINDOW_PREFIX_STAGES = 4, 2


def _precision(tensor: torch.Tensor) -> str:
    """fp32 products in fp32 (Triton's default for fp32 would be tf32); half types use the tensor cores as they are."""
    return "ieee" if tensor.dtype == torch.float32 else "tf32"


def _register_cap(max_registers):
    """Launch option capping registers per thread (more programs per multiprocessor, at the price of some spills)."""
    return {"maxnreg": max_registers} if max_registers else {}


def window_attention_triton(query, key, value, cos, sin, num_prefix: int, grid_size, window_size: int, scale: float,
                            block_m=None, block_n=None, num_warps=None, key_stages=None, max_registers=None,
                            prefix_group=None):
    """`window_attention_torch` on the GPU (forward only, no dropout), `[batch, tokens, heads * head_dim]` in the dtype
    of `query`. The keyword arguments override the launch settings above (benchmarks and tests sweep them;
    `prefix_group=0` runs the prefix queries inside the window programs also without RoPE)."""
    batch, num_tokens, heads, head_dim = query.shape
    window_tokens = max(16, triton.next_power_of_2(window_size * window_size))  # no query rows past a small window
    block_m, block_n = block_m or min(WINDOW_BLOCK_M, window_tokens), block_n or min(WINDOW_BLOCK_N, window_tokens)
    block_d, block_p = _block_d(head_dim), max(16, triton.next_power_of_2(max(num_prefix, 1)))
    out = torch.empty(batch, num_tokens, heads * head_dim, device=query.device, dtype=query.dtype)
    window_rows, window_cols = -(-grid_size[0] // window_size), -(-grid_size[1] // window_size)
    windows, query_blocks = window_rows * window_cols, triton.cdiv(window_size * window_size, block_m)
    tables = _rope_tables(cos, sin, query)
    has_rope = tables[0] is not query
    if prefix_group is None:
        prefix_group = 0 if has_rope or not num_prefix else WINDOW_PREFIX_GROUP
    if prefix_group:  # partial softmaxes per group of windows; a program per query block and per group
        splits = -(-windows // prefix_group)
        programs = batch * splits * (prefix_group * query_blocks + 1)
    else:  # per window program
        splits = windows * query_blocks
        programs = batch * splits
    prefix_acc, prefix_stats = prefix_partials(batch * heads, splits, block_p, block_d, query.device)
    _window_kernel[(programs, heads)](
        query, key, value, *tables, out, prefix_acc, prefix_stats,
        heads, num_prefix, grid_size[0], grid_size[1], window_cols, windows, splits, scale * 1.4426950408889634,
        query.stride(0), query.stride(1), query.stride(2), key.stride(0), key.stride(1), key.stride(2),
        value.stride(0), value.stride(1), value.stride(2), out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, BLOCK_D=block_d, WINDOW=window_size, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_P=block_p,
        HAS_ROPE=has_rope, PRECISION=_precision(query), KEY_STAGES=key_stages or WINDOW_KEY_STAGES,
        HAS_PREFIX=num_prefix > 0, PREFIX_GROUP=prefix_group, PREFIX_STAGES=WINDOW_PREFIX_STAGES,
        num_warps=num_warps or WINDOW_WARPS,
        EVEN=grid_size[0] % window_size == 0 and grid_size[1] % window_size == 0
        and (window_size * window_size) % block_n == 0,
        **_register_cap(max_registers or WINDOW_MAX_REGISTERS),
    )
    if num_prefix:
        merge_prefix_partials(prefix_acc, prefix_stats, out, num_prefix)
    return out


def prefix_partials(batch_heads: int, splits: int, block_p: int, block_d: int, device):
    """Buffers for the prefix queries' partial softmaxes, `splits` per (image, head): the unnormalised outputs and the
    (running max, sum) pairs `_window_kernel` stores and `merge_prefix_partials` combines."""
    return (torch.empty(batch_heads, splits, block_p, block_d, device=device, dtype=torch.float32),
            torch.empty(batch_heads, splits, 2, block_p, device=device, dtype=torch.float32))


def merge_prefix_partials(prefix_acc, prefix_stats, out, num_prefix: int) -> None:
    """Writes the first `num_prefix` rows of `out` (`[batch, tokens, heads * head_dim]`) from the partials in the
    `prefix_partials` buffers (`_prefix_merge_kernel`)."""
    batch_heads, splits, block_p, block_d = prefix_acc.shape
    heads = batch_heads // out.shape[0]
    _prefix_merge_kernel[(batch_heads, num_prefix)](
        prefix_acc, prefix_stats, out, heads, splits, out.stride(0), out.stride(1),
        HEAD_DIM=out.shape[2] // heads, BLOCK_D=block_d, BLOCK_P=block_p, BLOCK_S=32, num_warps=4,
    )
