"""Triton backward of JetViT's window attention with global prefix tokens (FlashAttention-2 style), and its launcher;
`ops_jetvit.py` calls `window_attention_backward_triton` on CUDA tensors when Triton is installed.

Semantics are those of the forward (`kernels_jetvit_window.py`, `window_attention_torch`): each patch query attends to
its `window_size` x `window_size` window (clipped to the grid, `_clipped_window`, as the forward's blocks are) plus
every prefix token, each prefix query to every token; RoPE is applied to the patch tokens of q and k in one pass
before the kernels (`pre_rotate`, the default; or as the kernels load them), and the gradients of the rotated q and k
are rotated back (the transpose rotation, `unrotate_grad`) before they are stored. With `s = q k^T` (rotated), the
softmax `p`, `dp = dO v^T` and `ds = p (dp - delta)`, `delta = rowsum(dO * O)`:
`dq = scale ds k`, `dk = scale ds^T q`, `dv = p^T dO`. Products accumulate in fp32; gradients are stored in the
input dtype.

The op's schema cannot carry the forward's logsumexp (checkpoints with earlier copies of these files register the same
op), so the backward recomputes it; the forward's output O is saved by the op and gives `delta`. Four launches, no
atomics (deterministic):

1. `_window_bwd_dq_kernel`, one program per block of BLOCK_M patch queries of one window and head (the forward's grid):
   a first pass over the prefix keys and the window's key blocks computes the rows' logsumexp, which is stored with
   their `delta` for step 3; a second pass computes `dq` over the same keys. Like the forward, each program also runs
   the prefix queries over its share of the window's key blocks and stores their partial (max, sum); and since every
   patch query sees the prefix keys, it stores its queries' contribution to the prefix keys' `dk`, `dv` (`ds^T q`,
   `p^T dO`, BLOCK_P x head_dim) as a partial sum.
2. `_prefix_stats_kernel` merges the prefix queries' partial (max, sum) into their logsumexp and computes their
   `delta`.
3. `_window_bwd_dkdv_kernel`, one program per block of BLOCK_N patch keys of one window and head: loops over the
   window's query blocks and then over the prefix queries (one more, small block: the only other queries that see a
   patch key), accumulating `dk`, `dv` in registers. The prefix queries' `dq` from these keys (`ds^T k`, BLOCK_P x
   head_dim) is stored as a partial sum per program; the program of window 0's first key block also does the prefix
   queries against the prefix keys.
4. `_prefix_grad_kernel` sums the partials into the prefix rows of `dq`, `dk` and `dv`.

So the prefix rows are done in Triton too: the prefix queries (at most 5, but attending to all tokens) never need a
pass of their own over K/V; they ride along with the key blocks the window kernels have loaded, as the forward does
with RoPE (without, the forward gives them programs of their own: `kernels_jetvit_window.WINDOW_PREFIX_GROUP`). The
cost over a FlashAttention-2 backward with a saved logsumexp is one more `q k^T` per (query, key) block pair in step 1.
As in FlashAttention, `p = exp2(s * scale * log2(e) - lse)` with an fp32 logsumexp: its rounding (3e-5 at |lse| = 800)
shifts a whole row's p alike, so rows with logits of very large magnitude lose some accuracy in `dq`.

The rotation back in registers needs each column's RoPE partner (`d/2` away) in the same tile, done with a
reshape/split/join that swaps the tile's halves; for head dims that are not a power of two with RoPE, tiles therefore
hold the two halves of the head dimension at columns `[0, d/2)` and `[BLOCK_D/2, BLOCK_D/2 + d/2)` (`_head_columns`).

Shipped with every saved checkpoint for `trust_remote_code`; Triton is optional (without it nothing here is launched).
"""

import torch

from .kernels_jetvit_linear import _block_d, _rope_tables, rope_rotated
from .kernels_jetvit_window import _precision

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: ops_jetvit.py recomputes the PyTorch path under autograd
    triton = None


# ----------------------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------------------

if triton is not None:
    from .kernels_jetvit_linear import _head_columns, _load_rotated
    from .kernels_jetvit_window import _clipped_window_blocks, _clipped_window_tokens, _window_program

    @triton.jit
    def _row_mask(valid, d_mask, EVEN: tl.constexpr):
        """The load/store mask of a tile whose rows are `valid`; EVEN (every row real) keeps only the column mask."""
        if EVEN:
            mask = d_mask[None, :]
        else:
            mask = valid[:, None] & d_mask[None, :]
        return mask

    @triton.jit
    def _swap_halves(x, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
        """`x` with its column halves exchanged, in registers: column c gets column (c + BLOCK_D / 2) % BLOCK_D."""
        pairs = tl.permute(tl.reshape(x, (ROWS, 2, BLOCK_D // 2)), (0, 2, 1))
        first, second = tl.split(pairs)
        return tl.reshape(tl.permute(tl.join(second, first), (0, 2, 1)), (ROWS, BLOCK_D))

    @triton.jit
    def _unrotate(grad, tokens, offs_d, mask, cos_ptr, sin_ptr, num_prefix, HEAD_DIM: tl.constexpr,
                  ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
        """The gradient w.r.t. the unrotated rows `tokens`, from `grad` (fp32, `_head_columns` layout with
        SPLIT_HALVES where d < BLOCK_D) w.r.t. the rows `_load_rotated` gives: `unrotate_grad`, i.e. the first half
        gets `g1 cos + g2 sin`, the second `g2 cos - g1 sin` (prefix rows pass through)."""
        partner = (offs_d + HEAD_DIM // 2) % HEAD_DIM
        sign = tl.where(offs_d < HEAD_DIM // 2, 1.0, -1.0)
        patch = tokens - num_prefix
        table_mask = mask & (patch >= 0)[:, None]
        cos = tl.load(cos_ptr + patch[:, None] * HEAD_DIM + offs_d[None, :], mask=table_mask, other=1.0)
        sin = tl.load(sin_ptr + patch[:, None] * HEAD_DIM + partner[None, :], mask=table_mask, other=0.0)
        swapped = _swap_halves(grad, ROWS, BLOCK_D)
        return grad * cos.to(tl.float32) + sign[None, :] * swapped * sin.to(tl.float32)

    @triton.jit
    def _logsumexp_step(q, k, valid, m_i, l_i, qk_scale, PRECISION: tl.constexpr, MASKED: tl.constexpr):
        """One block of keys into a running max `m_i` and sum `l_i` (scores in log2 units, `qk_scale` includes
        log2(e)); a finite initial `m_i` keeps fully masked blocks at 0."""
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        if MASKED:
            scores = tl.where(valid[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        l_i = l_i * tl.math.exp2(m_i - m_new) + tl.sum(tl.math.exp2(scores - m_new[:, None]), axis=1)
        return m_new, l_i

    @triton.jit
    def _grad_scores(q, k, v, do, lse, delta, valid, qk_scale, PRECISION: tl.constexpr, MASKED: tl.constexpr):
        """Queries as rows: `(p, ds)` of the queries `q` against the keys `k` (keys not `valid` at 0 when MASKED), with
        `lse` the rows' logsumexp in log2 units and `ds = p (dO v^T - delta)` without the softmax scale."""
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        if MASKED:
            scores = tl.where(valid[None, :], scores, float("-inf"))
        p = tl.math.exp2(scores * qk_scale - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        return p, p * (dp - delta[:, None])

    @triton.jit
    def _grad_scores_t(k, v, q, do, lse, delta, valid, qk_scale, PRECISION: tl.constexpr, MASKED: tl.constexpr):
        """`_grad_scores` transposed, keys as rows: `(p^T, ds^T)`. Masked keys get 0: their zero rows would otherwise
        give `exp2(-lse)`, which overflows for rows whose scores are all very negative."""
        scores = tl.dot(k, tl.trans(q), input_precision=PRECISION)
        if MASKED:
            scores = tl.where(valid[:, None], scores, float("-inf"))
        p = tl.math.exp2(scores * qk_scale - lse[None, :])
        dp = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        return p, p * (dp - delta[None, :])

    @triton.jit
    def _window_bwd_dq_kernel(
        q_ptr, k_ptr, v_ptr, o_ptr, do_ptr, cos_ptr, sin_ptr, dq_ptr, stats_ptr, prefix_stats_ptr, partial_ptr,
        num_tokens, num_heads, num_prefix, grid_h, grid_w, window_cols, windows_per_image, qk_scale, scale,
        stats_stride, partial_splits, partial_stride,
        stride_qb, stride_qn, stride_qh, stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh,
        stride_ob, stride_on, stride_gb, stride_gn, stride_dqb, stride_dqn, stride_dqh,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, WINDOW: tl.constexpr, BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, HAS_ROPE: tl.constexpr, LOAD_ROPE: tl.constexpr,
        SPLIT_HALVES: tl.constexpr, PRECISION: tl.constexpr, HAS_PREFIX: tl.constexpr, EVEN: tl.constexpr,
    ):
        """`dq` of one block of BLOCK_M patch queries of one window and head, their logsumexp and `delta` (into
        `stats_ptr`, `[2, batch, heads, tokens]`), the prefix queries' partial (max, sum) over this program's share of
        the keys, and this block's partial `dk`, `dv` of the prefix keys (slots 1 and 2 of `partial_ptr`)."""
        query_blocks: tl.constexpr = (WINDOW * WINDOW + BLOCK_M - 1) // BLOCK_M
        pid = tl.program_id(0)
        head = tl.program_id(1)
        block, window, batch, top, left = _window_program(pid, query_blocks, windows_per_image, window_cols, WINDOW)
        # the window clipped to the grid, as the forward; a block past its patches loops over no keys
        width, count, window_query_blocks, window_key_blocks = _clipped_window_blocks(top, left, grid_h, grid_w,
                                                                                      WINDOW, BLOCK_M, BLOCK_N, EVEN)
        if not EVEN:
            window_key_blocks = tl.where(block < window_query_blocks, window_key_blocks, 0)
        offs_d, d_mask = _head_columns(HEAD_DIM, BLOCK_D, SPLIT_HALVES)
        q_tokens, q_valid = _clipped_window_tokens(top, left, block * BLOCK_M + tl.arange(0, BLOCK_M), width, count,
                                                   num_prefix, grid_h, grid_w, WINDOW, EVEN)
        q_mask = _row_mask(q_valid, d_mask, EVEN)
        q_base = q_ptr + batch * stride_qb + head * stride_qh
        q = _load_rotated(q_base, q_tokens, stride_qn, offs_d, q_mask, cos_ptr, sin_ptr, num_prefix, HEAD_DIM,
                          LOAD_ROPE, RELU=False)
        rows = q_tokens[:, None] * stride_gn + head * HEAD_DIM + offs_d[None, :]
        do = tl.load(do_ptr + batch * stride_gb + rows, mask=q_mask, other=0.0)
        o = tl.load(o_ptr + batch * stride_ob + q_tokens[:, None] * stride_on + head * HEAD_DIM + offs_d[None, :],
                    mask=q_mask, other=0.0)
        delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=1)

        k_base = k_ptr + batch * stride_kb + head * stride_kh
        v_base = v_ptr + batch * stride_vb + head * stride_vh
        offs_p = tl.arange(0, BLOCK_P)
        p_valid = offs_p < num_prefix
        p_mask = p_valid[:, None] & d_mask[None, :]
        prefix_k = tl.load(k_base + offs_p[:, None] * stride_kn + offs_d[None, :], mask=p_mask, other=0.0)
        prefix_v = tl.load(v_base + offs_p[:, None] * stride_vn + offs_d[None, :], mask=p_mask, other=0.0)
        prefix_q = tl.load(q_base + offs_p[:, None] * stride_qn + offs_d[None, :], mask=p_mask, other=0.0)

        # pass 1: the rows' logsumexp over the prefix keys and the window's keys (and the prefix queries' share)
        m_i = tl.full((BLOCK_M,), -1.0e30, dtype=tl.float32)
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        m_i, l_i = _logsumexp_step(q, prefix_k, p_valid, m_i, l_i, qk_scale, PRECISION, True)
        prefix_m = tl.full((BLOCK_P,), -1.0e30, dtype=tl.float32)
        prefix_l = tl.zeros((BLOCK_P,), dtype=tl.float32)
        if HAS_PREFIX:
            if (window == 0) & (block == 0):
                prefix_m, prefix_l = _logsumexp_step(prefix_q, prefix_k, p_valid, prefix_m, prefix_l, qk_scale,
                                                     PRECISION, True)
        for key_block in range(window_key_blocks):
            k_tokens, k_valid = _clipped_window_tokens(top, left, key_block * BLOCK_N + tl.arange(0, BLOCK_N), width,
                                                       count, num_prefix, grid_h, grid_w, WINDOW, EVEN)
            k = _load_rotated(k_base, k_tokens, stride_kn, offs_d, _row_mask(k_valid, d_mask, EVEN), cos_ptr,
                              sin_ptr, num_prefix, HEAD_DIM, LOAD_ROPE, RELU=False)
            m_i, l_i = _logsumexp_step(q, k, k_valid, m_i, l_i, qk_scale, PRECISION, not EVEN)
            if HAS_PREFIX:
                if key_block % window_query_blocks == block:  # key block b to query block b % blocks, as the forward
                    prefix_m, prefix_l = _logsumexp_step(prefix_q, k, k_valid, prefix_m, prefix_l, qk_scale,
                                                         PRECISION, not EVEN)
        lse = m_i + tl.math.log2(l_i)
        stat = (batch * num_heads + head) * num_tokens + q_tokens
        tl.store(stats_ptr + stat, lse, mask=q_valid)
        tl.store(stats_ptr + stats_stride + stat, delta, mask=q_valid)
        splits = windows_per_image * query_blocks
        split = pid % splits
        if HAS_PREFIX:
            partial = (batch * num_heads + head) * splits + split
            tl.store(prefix_stats_ptr + (partial * 2) * BLOCK_P + offs_p, prefix_m)
            tl.store(prefix_stats_ptr + (partial * 2 + 1) * BLOCK_P + offs_p, prefix_l)

        # pass 2: dq over the same keys; the prefix keys' partial dk, dv from these queries
        dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
        # (prefix_p, prefix_ds: Triton would take a `p` assigned before the loop below for a loop-carried variable)
        prefix_p, prefix_ds = _grad_scores(q, prefix_k, prefix_v, do, lse, delta, p_valid, qk_scale, PRECISION, True)
        dq += tl.dot(prefix_ds.to(prefix_k.dtype), prefix_k, input_precision=PRECISION)
        if HAS_PREFIX:
            cells = (((batch * num_heads + head) * partial_splits + split) * num_prefix + offs_p[:, None]) * BLOCK_D \
                + tl.arange(0, BLOCK_D)[None, :]
            tl.store(partial_ptr + partial_stride + cells,
                     tl.dot(tl.trans(prefix_ds).to(q.dtype), q, input_precision=PRECISION), mask=p_valid[:, None])
            tl.store(partial_ptr + 2 * partial_stride + cells,
                     tl.dot(tl.trans(prefix_p).to(do.dtype), do, input_precision=PRECISION), mask=p_valid[:, None])
        for key_block in range(window_key_blocks):
            k_tokens, k_valid = _clipped_window_tokens(top, left, key_block * BLOCK_N + tl.arange(0, BLOCK_N), width,
                                                       count, num_prefix, grid_h, grid_w, WINDOW, EVEN)
            kv_mask = _row_mask(k_valid, d_mask, EVEN)
            k = _load_rotated(k_base, k_tokens, stride_kn, offs_d, kv_mask, cos_ptr, sin_ptr, num_prefix, HEAD_DIM,
                              LOAD_ROPE, RELU=False)
            v = tl.load(v_base + k_tokens[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
            p, ds = _grad_scores(q, k, v, do, lse, delta, k_valid, qk_scale, PRECISION, not EVEN)
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
        dq = dq * scale
        if HAS_ROPE:
            dq = _unrotate(dq, q_tokens, offs_d, q_mask, cos_ptr, sin_ptr, num_prefix, HEAD_DIM, BLOCK_M, BLOCK_D)
        tl.store(dq_ptr + batch * stride_dqb + q_tokens[:, None] * stride_dqn + head * stride_dqh + offs_d[None, :],
                 dq.to(dq_ptr.dtype.element_ty), mask=q_mask)

    @triton.jit
    def _prefix_stats_kernel(prefix_stats_ptr, o_ptr, do_ptr, stats_ptr, num_tokens, num_heads, splits, stats_stride,
                             stride_ob, stride_on, stride_gb, stride_gn,
                             HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr,
                             BLOCK_S: tl.constexpr):
        """One prefix query of one (image, head): merges its partial (max, sum) from all of `_window_bwd_dq_kernel`'s
        programs, BLOCK_S at a time, into its logsumexp, and computes its `delta`."""
        batch_head = tl.program_id(0)
        row = tl.program_id(1)
        batch = batch_head // num_heads
        head = batch_head % num_heads
        offs_s = tl.arange(0, BLOCK_S)
        m = tl.max(tl.full((BLOCK_S,), -1.0e30, dtype=tl.float32), axis=0)
        l_sum = tl.sum(tl.zeros((BLOCK_S,), dtype=tl.float32), axis=0)
        for start in range(0, splits, BLOCK_S):
            valid = start + offs_s < splits
            partial = batch_head * splits + start + offs_s
            m_split = tl.load(prefix_stats_ptr + (partial * 2) * BLOCK_P + row, mask=valid, other=-1.0e30)
            l_split = tl.load(prefix_stats_ptr + (partial * 2 + 1) * BLOCK_P + row, mask=valid, other=0.0)
            m_new = tl.maximum(m, tl.max(m_split, axis=0))
            l_sum = l_sum * tl.math.exp2(m - m_new) + tl.sum(l_split * tl.math.exp2(m_split - m_new), axis=0)
            m = m_new
        offs_d = tl.arange(0, BLOCK_D)
        d_mask = offs_d < HEAD_DIM
        o = tl.load(o_ptr + batch * stride_ob + row * stride_on + head * HEAD_DIM + offs_d, mask=d_mask, other=0.0)
        do = tl.load(do_ptr + batch * stride_gb + row * stride_gn + head * HEAD_DIM + offs_d, mask=d_mask, other=0.0)
        stat = batch_head * num_tokens + row
        tl.store(stats_ptr + stat, m + tl.math.log2(l_sum))
        tl.store(stats_ptr + stats_stride + stat, tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=0))

    @triton.jit
    def _window_bwd_dkdv_kernel(
        q_ptr, k_ptr, v_ptr, do_ptr, cos_ptr, sin_ptr, dk_ptr, dv_ptr, stats_ptr, partial_ptr,
        num_tokens, num_heads, num_prefix, grid_h, grid_w, window_cols, windows_per_image, qk_scale, scale,
        stats_stride, partial_splits, partial_stride,
        stride_qb, stride_qn, stride_qh, stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh,
        stride_gb, stride_gn, stride_dkb, stride_dkn, stride_dkh, stride_dvb, stride_dvn, stride_dvh,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, WINDOW: tl.constexpr, BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, HAS_ROPE: tl.constexpr, LOAD_ROPE: tl.constexpr,
        SPLIT_HALVES: tl.constexpr, PRECISION: tl.constexpr, HAS_PREFIX: tl.constexpr, EVEN: tl.constexpr,
    ):
        """`dk`, `dv` of one block of BLOCK_N patch keys of one window and head, over the window's query blocks and the
        prefix queries, and the prefix queries' partial `dq` from these keys (slot 0 of `partial_ptr`). The program of
        window 0's first key block also does the prefix queries against the prefix keys: their `dq` into its partial,
        the prefix keys' `dk`, `dv` into the slot after `_window_bwd_dq_kernel`'s partials."""
        query_blocks: tl.constexpr = (WINDOW * WINDOW + BLOCK_M - 1) // BLOCK_M
        key_blocks: tl.constexpr = (WINDOW * WINDOW + BLOCK_N - 1) // BLOCK_N
        pid = tl.program_id(0)
        head = tl.program_id(1)
        block, window, batch, top, left = _window_program(pid, key_blocks, windows_per_image, window_cols, WINDOW)
        # the window clipped to the grid, as the forward; a block past its patches loops over no queries
        width, count, window_query_blocks, window_key_blocks = _clipped_window_blocks(top, left, grid_h, grid_w,
                                                                                      WINDOW, BLOCK_M, BLOCK_N, EVEN)
        if not EVEN:
            window_query_blocks = tl.where(block < window_key_blocks, window_query_blocks, 0)
        offs_d, d_mask = _head_columns(HEAD_DIM, BLOCK_D, SPLIT_HALVES)
        k_tokens, k_valid = _clipped_window_tokens(top, left, block * BLOCK_N + tl.arange(0, BLOCK_N), width, count,
                                                   num_prefix, grid_h, grid_w, WINDOW, EVEN)
        k_mask = _row_mask(k_valid, d_mask, EVEN)
        k_base = k_ptr + batch * stride_kb + head * stride_kh
        v_base = v_ptr + batch * stride_vb + head * stride_vh
        k = _load_rotated(k_base, k_tokens, stride_kn, offs_d, k_mask, cos_ptr, sin_ptr, num_prefix, HEAD_DIM,
                          LOAD_ROPE, RELU=False)
        v = tl.load(v_base + k_tokens[:, None] * stride_vn + offs_d[None, :], mask=k_mask, other=0.0)
        q_base = q_ptr + batch * stride_qb + head * stride_qh
        do_base = do_ptr + batch * stride_gb + head * HEAD_DIM
        stat_base = stats_ptr + (batch * num_heads + head) * num_tokens

        dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        for query_block in range(window_query_blocks):
            q_tokens, q_valid = _clipped_window_tokens(top, left, query_block * BLOCK_M + tl.arange(0, BLOCK_M),
                                                       width, count, num_prefix, grid_h, grid_w, WINDOW, EVEN)
            q_mask = _row_mask(q_valid, d_mask, EVEN)
            q = _load_rotated(q_base, q_tokens, stride_qn, offs_d, q_mask, cos_ptr, sin_ptr, num_prefix, HEAD_DIM,
                              LOAD_ROPE, RELU=False)
            do = tl.load(do_base + q_tokens[:, None] * stride_gn + offs_d[None, :], mask=q_mask, other=0.0)
            if EVEN:
                lse = tl.load(stat_base + q_tokens)
                delta = tl.load(stat_base + stats_stride + q_tokens)
            else:  # padded query rows: p = 0
                lse = tl.load(stat_base + q_tokens, mask=q_valid, other=float("inf"))
                delta = tl.load(stat_base + stats_stride + q_tokens, mask=q_valid, other=0.0)
            p_t, ds_t = _grad_scores_t(k, v, q, do, lse, delta, k_valid, qk_scale, PRECISION, not EVEN)
            dv += tl.dot(p_t.to(do.dtype), do, input_precision=PRECISION)
            dk += tl.dot(ds_t.to(q.dtype), q, input_precision=PRECISION)

        if HAS_PREFIX:  # the prefix queries, one more (small) block of queries that see these keys
            offs_p = tl.arange(0, BLOCK_P)
            p_valid = offs_p < num_prefix
            p_mask = p_valid[:, None] & d_mask[None, :]
            prefix_q = tl.load(q_base + offs_p[:, None] * stride_qn + offs_d[None, :], mask=p_mask, other=0.0)
            prefix_do = tl.load(do_base + offs_p[:, None] * stride_gn + offs_d[None, :], mask=p_mask, other=0.0)
            prefix_lse = tl.load(stat_base + offs_p, mask=p_valid, other=float("inf"))
            prefix_delta = tl.load(stat_base + stats_stride + offs_p, mask=p_valid, other=0.0)
            p_t, ds_t = _grad_scores_t(k, v, prefix_q, prefix_do, prefix_lse, prefix_delta, k_valid, qk_scale,
                                       PRECISION, not EVEN)
            dv += tl.dot(p_t.to(prefix_do.dtype), prefix_do, input_precision=PRECISION)
            dk += tl.dot(ds_t.to(prefix_q.dtype), prefix_q, input_precision=PRECISION)
            prefix_dq = tl.dot(tl.trans(ds_t).to(k.dtype), k, input_precision=PRECISION)
            offs_c = tl.arange(0, BLOCK_D)[None, :]
            batch_head = batch * num_heads + head
            if (window == 0) & (block == 0):
                prefix_k = tl.load(k_base + offs_p[:, None] * stride_kn + offs_d[None, :], mask=p_mask, other=0.0)
                prefix_v = tl.load(v_base + offs_p[:, None] * stride_vn + offs_d[None, :], mask=p_mask, other=0.0)
                # new names: a branch may not rebind p_t, ds_t to another shape
                prefix_p_t, prefix_ds_t = _grad_scores_t(prefix_k, prefix_v, prefix_q, prefix_do, prefix_lse,
                                                         prefix_delta, p_valid, qk_scale, PRECISION, True)
                prefix_dq += tl.dot(tl.trans(prefix_ds_t).to(prefix_k.dtype), prefix_k, input_precision=PRECISION)
                last = windows_per_image * query_blocks  # the slot after the dq kernel's partials
                prefix_cells = ((batch_head * partial_splits + last) * num_prefix + offs_p[:, None]) * BLOCK_D + offs_c
                tl.store(partial_ptr + partial_stride + prefix_cells,
                         tl.dot(prefix_ds_t.to(prefix_q.dtype), prefix_q, input_precision=PRECISION),
                         mask=p_valid[:, None])
                tl.store(partial_ptr + 2 * partial_stride + prefix_cells,
                         tl.dot(prefix_p_t.to(prefix_do.dtype), prefix_do, input_precision=PRECISION),
                         mask=p_valid[:, None])
            split = pid % (windows_per_image * key_blocks)
            cells = ((batch_head * partial_splits + split) * num_prefix + offs_p[:, None]) * BLOCK_D + offs_c
            tl.store(partial_ptr + cells, prefix_dq, mask=p_valid[:, None])

        dk = dk * scale
        if HAS_ROPE:
            dk = _unrotate(dk, k_tokens, offs_d, k_mask, cos_ptr, sin_ptr, num_prefix, HEAD_DIM, BLOCK_N, BLOCK_D)
        tl.store(dk_ptr + batch * stride_dkb + k_tokens[:, None] * stride_dkn + head * stride_dkh + offs_d[None, :],
                 dk.to(dk_ptr.dtype.element_ty), mask=k_mask)
        tl.store(dv_ptr + batch * stride_dvb + k_tokens[:, None] * stride_dvn + head * stride_dvh + offs_d[None, :],
                 dv.to(dv_ptr.dtype.element_ty), mask=k_mask)

    @triton.jit
    def _prefix_grad_kernel(partial_ptr, grads_ptr, num_heads, num_prefix, dq_splits, dkv_splits, partial_splits,
                            partial_stride, scale, grads_stride, stride_b, stride_n, stride_h,
                            HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, SPLIT_HALVES: tl.constexpr,
                            BLOCK_S: tl.constexpr):
        """One prefix row of one (image, head) of `dq`, `dk` or `dv` (program axis 2; `grads_ptr` holds the three,
        `grads_stride` apart): the sum of its partials, BLOCK_S at a time (a fixed order, no atomics)."""
        batch_head = tl.program_id(0)
        row = tl.program_id(1)
        which = tl.program_id(2)
        splits = tl.where(which == 0, dq_splits, dkv_splits)
        offs_c = tl.arange(0, BLOCK_D)
        offs_s = tl.arange(0, BLOCK_S)
        total = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for start in range(0, splits, BLOCK_S):
            split = start + offs_s
            cells = ((batch_head * partial_splits + split[:, None]) * num_prefix + row) * BLOCK_D + offs_c[None, :]
            tile = tl.load(partial_ptr + which * partial_stride + cells, mask=(split < splits)[:, None], other=0.0)
            total += tl.sum(tile, axis=0)
        total = total * tl.where(which == 2, 1.0, scale)
        offs_d, d_mask = _head_columns(HEAD_DIM, BLOCK_D, SPLIT_HALVES)
        out = grads_ptr + which * grads_stride + (batch_head // num_heads) * stride_b + row * stride_n
        tl.store(out + (batch_head % num_heads) * stride_h + offs_d, total.to(grads_ptr.dtype.element_ty), mask=d_mask)


# Launch settings: FlashAttention-2's backward blocks for head_dim 64, Triton's default 3 pipeline stages, and RoPE
# applied before the kernels (`pre_rotate`), the fastest of the 60 settings `benchmarks/bench_window_attention.py
# --sweep-backward` times (H200, 512x512, batch 32, bf16: 0.72 ms; the same blocks rotating as they load 1.09 ms, the
# next best 0.78 ms with 2 stages; benchmarks/results/h200_speed_round2/window_backward_sweep_512_bs32.json).
# Rotating q and k as the kernels load them doubles their shared memory (the partner columns and the tables,
# pipelined) and spills registers: compiled for sm_90, dq 142 KiB / 255 registers + 64 bytes of spills, dk/dv
# 145 KiB / 255, one program per multiprocessor; pre-rotated 66 and 73 KiB, 154 and 232 registers, 3 and 2 programs.
# `pre_rotate` writes rotated copies of q and k first (one pass over them) and rotates only the gradients back as they
# are stored. fp32 operands take twice the shared memory: with 64 x 64 blocks the dk/dv kernel would need 241 KiB, more
# than the 227 KiB an sm_90 block may have (`tests/models/jetvit/test_kernels_compile.py`), so fp32 takes 32 x 32.
# 8 warps were 1.3-2x slower; 8 warps with 3 stages made an illegal memory access (triton 3.6; 2 stages did not, and
# the interpreter cannot run launch settings), so that pair is refused until it is understood.
BWD_BLOCK_M, BWD_BLOCK_N, BWD_WARPS, BWD_STAGES = 64, 64, 4, 3
BWD_BLOCK_FP32 = 32
BWD_PRE_ROTATE = True


def _check_launch(num_warps: int, num_stages: int) -> None:
    if num_warps >= 8 and num_stages >= 3:
        raise ValueError(f"window attention backward: {num_warps} warps with {num_stages} pipeline stages made an "
                         "illegal memory access on sm_90 (triton 3.6); use at most 2 stages with 8 warps")


def window_attention_backward_triton(query, key, value, output, grad_output, cos, sin, num_prefix: int, grid_size,
                                     window_size: int, scale: float, block_m=None, block_n=None, num_warps=None,
                                     num_stages=None, pre_rotate=None):
    """Gradients `(dq, dk, dv)` of `window_attention_triton`, stacked as `[3, batch, tokens, heads, head_dim]` in the
    dtype of `query` (the prefix-gradient kernel writes all three through one pointer), given its `output` and
    `grad_output` (`[batch, tokens, heads * head_dim]`). The keyword arguments override the launch settings above
    (benchmarks and tests sweep them)."""
    batch, num_tokens, heads, head_dim = query.shape
    window_tokens = max(16, triton.next_power_of_2(window_size * window_size))
    fp32 = query.element_size() == 4
    block_m = min(block_m or (BWD_BLOCK_FP32 if fp32 else BWD_BLOCK_M), window_tokens)
    block_n = min(block_n or (BWD_BLOCK_FP32 if fp32 else BWD_BLOCK_N), window_tokens)
    block_d, block_p = _block_d(head_dim), max(16, triton.next_power_of_2(max(num_prefix, 1)))
    dtype, device = query.dtype, query.device
    grad_output, output = (x if x.dtype == dtype and x.stride(-1) == 1 else x.to(dtype).contiguous()
                           for x in (grad_output, output))
    window_rows, window_cols = -(-grid_size[0] // window_size), -(-grid_size[1] // window_size)
    windows = window_rows * window_cols
    dq_splits = windows * triton.cdiv(window_size * window_size, block_m)  # dq kernel programs per image and head
    dkv_splits = windows * triton.cdiv(window_size * window_size, block_n)  # dk/dv kernel programs per image and head
    # partial sums of the prefix rows of dq (over the dk/dv programs) and dk, dv (over the dq programs, plus one slot
    # for the prefix queries against the prefix keys)
    partial_splits = max(dkv_splits, dq_splits + 1)
    partials = torch.empty(3, batch * heads, partial_splits, max(num_prefix, 1), block_d, device=device,
                           dtype=torch.float32)
    prefix_stats = torch.empty(batch * heads, dq_splits, 2, block_p, device=device, dtype=torch.float32)
    stats = torch.empty(2, batch, heads, num_tokens, device=device, dtype=torch.float32)  # logsumexp (log2), delta
    grads = torch.empty(3, batch, num_tokens, heads, head_dim, device=device, dtype=dtype)
    tables = _rope_tables(cos, sin, query)
    has_rope = tables[0] is not query
    pre_rotate = has_rope and (BWD_PRE_ROTATE if pre_rotate is None else pre_rotate)
    if pre_rotate:
        query, key = (rope_rotated(x, *tables, num_prefix) for x in (query, key))
    constants = dict(
        HEAD_DIM=head_dim, BLOCK_D=block_d, WINDOW=window_size, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_P=block_p,
        HAS_ROPE=has_rope, LOAD_ROPE=has_rope and not pre_rotate, SPLIT_HALVES=has_rope and head_dim != block_d,
        PRECISION=_precision(query),
        HAS_PREFIX=num_prefix > 0, num_warps=num_warps or BWD_WARPS, num_stages=num_stages or BWD_STAGES,
        EVEN=grid_size[0] % window_size == 0 and grid_size[1] % window_size == 0
        and (window_size * window_size) % block_m == 0 and (window_size * window_size) % block_n == 0,
    )
    _check_launch(constants["num_warps"], constants["num_stages"])
    settings = (num_tokens, heads, num_prefix, grid_size[0], grid_size[1], window_cols, windows,
                scale * 1.4426950408889634, scale, stats[1].numel(), partial_splits, partials[0].numel())
    strides = (query.stride(0), query.stride(1), query.stride(2), key.stride(0), key.stride(1), key.stride(2),
               value.stride(0), value.stride(1), value.stride(2))
    dq, dk, dv = grads
    _window_bwd_dq_kernel[(batch * dq_splits, heads)](
        query, key, value, output, grad_output, *tables, dq, stats, prefix_stats, partials, *settings, *strides,
        output.stride(0), output.stride(1), grad_output.stride(0), grad_output.stride(1),
        dq.stride(0), dq.stride(1), dq.stride(2), **constants,
    )
    if num_prefix:
        _prefix_stats_kernel[(batch * heads, num_prefix)](
            prefix_stats, output, grad_output, stats, num_tokens, heads, dq_splits, stats[1].numel(),
            output.stride(0), output.stride(1), grad_output.stride(0), grad_output.stride(1),
            HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_P=block_p, BLOCK_S=32, num_warps=4,
        )
    _window_bwd_dkdv_kernel[(batch * dkv_splits, heads)](
        query, key, value, grad_output, *tables, dk, dv, stats, partials, *settings, *strides,
        grad_output.stride(0), grad_output.stride(1), dk.stride(0), dk.stride(1), dk.stride(2),
        dv.stride(0), dv.stride(1), dv.stride(2), **constants,
    )
    if num_prefix:
        _prefix_grad_kernel[(batch * heads, num_prefix, 3)](
            partials, grads, heads, num_prefix, dkv_splits, dq_splits + 1, partial_splits, partials[0].numel(), scale,
            grads[0].numel(), dq.stride(0), dq.stride(1), dq.stride(2),
            HEAD_DIM=head_dim, BLOCK_D=block_d, SPLIT_HALVES=constants["SPLIT_HALVES"], BLOCK_S=16, num_warps=4,
        )
    return grads
