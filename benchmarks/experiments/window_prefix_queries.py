"""Experiment: where the window kernel's prefix-query work goes, and cheaper ways to do it (the package now runs the
prefix queries as `prefix_programs_g4` does where there is no RoPE: `_window_kernel`'s PREFIX_GROUP).

`window_rope_halves.py` found the prefix queries' share of `_window_kernel` costly: with the kernel's HAS_PREFIX off
(the patch queries still attend to the prefix keys) a DINOv3-L layer at 1024x2048 took 60.0 instead of 76.9 us at
batch 1 and 437 instead of 524 us at batch 8; without RoPE (the DINOv2 / Depth Anything path) 44.1 instead of 70.4
and 315 instead of 465. Each program runs the 5 prefix queries (a 16-row tile) over one of its key blocks, inside the
key loop behind a run-time test (`key_block % query_blocks == block`), and stores 16 rows of fp32 partials.

Variants of the shipped kernel, all with its launch setting (128 x 128 blocks, 4 warps):
- `prefix_first`: each program walks the window's key blocks starting at its own share (`(block + i) % key_blocks`;
  when a window has as many query blocks as key blocks, that share is exactly the first block), the key loop
  unrolled, so the prefix queries' step and the store of their partials are placed in the first iteration at
  compile time: no branch in the loop, and their registers are free for the rest of it;
- `masked_stores`: the partials stored for the real prefix rows only (5 of 16);
- `prefix_programs`: one more program per window (or per group of windows), which runs the prefix queries over
  those windows' keys alone, its neighbours in the grid the patch queries without them (their K/V tiles should
  still be in L2); `_pq64`: the prefix queries as a 64-row tile (one warpgroup MMA's rows) instead of 16;
  `_g4` / `_g8`: a prefix program per 4 / 8 windows, its key loop software-pipelined over 2 stages; `_m256`: one
  program per window for the patch queries (8 warps), so each key is loaded and rotated once, not twice; `_swap`:
  each q/k tile's rotate-half partner exchanged in registers rather than loaded again.

    python benchmarks/experiments/window_prefix_queries.py --output window_prefix_queries.json   # on a CUDA GPU
    TRITON_INTERPRET=1 python benchmarks/experiments/window_prefix_queries.py --check   # fp32, on the CPU
    PYTHONPATH=.:benchmarks python benchmarks/experiments/window_prefix_queries.py --compile-only   # sm_90, CPU
"""

import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `benchmarks.*`

from benchmarks.experiments.common import (  # noqa: E402
    GRID,
    NUM_PREFIX,
    experiment_record,
    kernel_experiment_parser,
    print_sm90_resources,
    timed_against,
    vit_l_inputs,
)
from jetvit_hf.io import atomic_write_json  # noqa: E402
from jetvit_hf.models.jetvit.kernels_jetvit_linear import _block_d, _load_rotated, _rope_tables  # noqa: E402
from jetvit_hf.models.jetvit.kernels_jetvit_window_backward import _swap_halves  # noqa: E402
from jetvit_hf.models.jetvit.kernels_jetvit_window import (  # noqa: E402
    _online_softmax_start,
    _online_softmax_step,
    _precision,
    _window_corner,
    _window_program,
    _window_tokens,
    merge_prefix_partials,
    prefix_partials,
    window_attention_triton,
)


@triton.jit
def _store_prefix_partial(prefix_acc_ptr, prefix_stats_ptr, partial, offs_p, offs_d, p_valid, prefix_m, prefix_l,
                          prefix_acc, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, MASKED_STORES: tl.constexpr):
    """One program's partial softmax of the prefix queries (all BLOCK_P rows, or the real ones when MASKED_STORES)."""
    if MASKED_STORES:
        tl.store(prefix_acc_ptr + (partial * BLOCK_P + offs_p[:, None]) * BLOCK_D + offs_d[None, :], prefix_acc,
                 mask=p_valid[:, None])
        tl.store(prefix_stats_ptr + (partial * 2) * BLOCK_P + offs_p, prefix_m, mask=p_valid)
        tl.store(prefix_stats_ptr + (partial * 2 + 1) * BLOCK_P + offs_p, prefix_l, mask=p_valid)
    else:
        tl.store(prefix_acc_ptr + (partial * BLOCK_P + offs_p[:, None]) * BLOCK_D + offs_d[None, :], prefix_acc)
        tl.store(prefix_stats_ptr + (partial * 2) * BLOCK_P + offs_p, prefix_m)
        tl.store(prefix_stats_ptr + (partial * 2 + 1) * BLOCK_P + offs_p, prefix_l)


@triton.jit
def _window_variant_kernel(
    q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, o_ptr, prefix_acc_ptr, prefix_stats_ptr,
    num_heads, num_prefix, grid_h, grid_w, window_cols, windows_per_image, qk_scale,
    stride_qb, stride_qn, stride_qh, stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh,
    stride_ob, stride_on,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, WINDOW: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, HAS_ROPE: tl.constexpr, PRECISION: tl.constexpr,
    HAS_PREFIX: tl.constexpr, EVEN: tl.constexpr, PREFIX_FIRST: tl.constexpr, MASKED_STORES: tl.constexpr,
):
    """`_window_kernel` with the PREFIX_FIRST key order (unrolled key loop) and MASKED_STORES partials."""
    query_blocks: tl.constexpr = (WINDOW * WINDOW + BLOCK_M - 1) // BLOCK_M
    key_blocks: tl.constexpr = (WINDOW * WINDOW + BLOCK_N - 1) // BLOCK_N
    pid = tl.program_id(0)
    head = tl.program_id(1)
    block, window, batch, top, left = _window_program(pid, query_blocks, windows_per_image, window_cols, WINDOW)
    splits = windows_per_image * query_blocks
    partial = (batch * num_heads + head) * splits + pid % splits
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM

    q_tokens, q_valid = _window_tokens(top, left, block * BLOCK_M + tl.arange(0, BLOCK_M), num_prefix, grid_h,
                                       grid_w, WINDOW)
    q_mask = q_valid[:, None] & d_mask[None, :]
    q_base = q_ptr + batch * stride_qb + head * stride_qh
    q = _load_rotated(q_base, q_tokens, stride_qn, offs_d, q_mask, cos_ptr, sin_ptr, num_prefix, HEAD_DIM,
                      HAS_ROPE, RELU=False)

    k_base = k_ptr + batch * stride_kb + head * stride_kh
    v_base = v_ptr + batch * stride_vb + head * stride_vh
    offs_p = tl.arange(0, BLOCK_P)
    p_valid = offs_p < num_prefix
    p_mask = p_valid[:, None] & d_mask[None, :]
    prefix_k = tl.load(k_base + offs_p[:, None] * stride_kn + offs_d[None, :], mask=p_mask, other=0.0)
    prefix_v = tl.load(v_base + offs_p[:, None] * stride_vn + offs_d[None, :], mask=p_mask, other=0.0)
    m_i, l_i, acc = _online_softmax_start(q, prefix_k, prefix_v, p_valid, qk_scale, PRECISION)
    prefix_q = tl.load(q_base + offs_p[:, None] * stride_qn + offs_d[None, :], mask=p_mask, other=0.0)
    prefix_m = tl.full((BLOCK_P,), -1.0e30, dtype=tl.float32)
    prefix_l = tl.zeros((BLOCK_P,), dtype=tl.float32)
    prefix_acc = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
    if HAS_PREFIX:
        if (window == 0) & (block == 0):
            prefix_m, prefix_l, prefix_acc = _online_softmax_step(
                prefix_q, prefix_k, prefix_v, p_valid, prefix_m, prefix_l, prefix_acc, qk_scale, PRECISION)

    if PREFIX_FIRST:
        for i in tl.static_range(key_blocks):
            key_block = (block + i) % key_blocks
            k_tokens, k_valid = _window_tokens(top, left, key_block * BLOCK_N + tl.arange(0, BLOCK_N), num_prefix,
                                               grid_h, grid_w, WINDOW)
            if EVEN:
                kv_mask = d_mask[None, :]
            else:
                kv_mask = k_valid[:, None] & d_mask[None, :]
            k = _load_rotated(k_base, k_tokens, stride_kn, offs_d, kv_mask, cos_ptr, sin_ptr, num_prefix, HEAD_DIM,
                              HAS_ROPE, RELU=False)
            v = tl.load(v_base + k_tokens[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
            m_i, l_i, acc = _online_softmax_step(q, k, v, k_valid, m_i, l_i, acc, qk_scale, PRECISION, not EVEN)
            if HAS_PREFIX:
                if i == 0:  # as many query blocks as key blocks (asserted by the launcher): block `block` is ours
                    prefix_m, prefix_l, prefix_acc = _online_softmax_step(
                        prefix_q, k, v, k_valid, prefix_m, prefix_l, prefix_acc, qk_scale, PRECISION, not EVEN)
                    _store_prefix_partial(prefix_acc_ptr, prefix_stats_ptr, partial, offs_p, offs_d, p_valid,
                                          prefix_m, prefix_l, prefix_acc, BLOCK_P, BLOCK_D, MASKED_STORES)
    else:
        for key_block in tl.range(0, key_blocks, num_stages=1):
            k_tokens, k_valid = _window_tokens(top, left, key_block * BLOCK_N + tl.arange(0, BLOCK_N), num_prefix,
                                               grid_h, grid_w, WINDOW)
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
    if HAS_PREFIX and not PREFIX_FIRST:
        _store_prefix_partial(prefix_acc_ptr, prefix_stats_ptr, partial, offs_p, offs_d, p_valid, prefix_m, prefix_l,
                              prefix_acc, BLOCK_P, BLOCK_D, MASKED_STORES)


def window_attention_variant(query, key, value, cos, sin, num_prefix: int, grid_size, window_size: int, scale: float,
                             prefix_first: bool, masked_stores: bool, block_m=128, block_n=128, num_warps=4):
    """`window_attention_triton` by `_window_variant_kernel`."""
    batch, num_tokens, heads, head_dim = query.shape
    if prefix_first:
        assert triton.cdiv(window_size**2, block_m) == triton.cdiv(window_size**2, block_n)
    block_d, block_p = _block_d(head_dim), max(16, triton.next_power_of_2(max(num_prefix, 1)))
    out = torch.empty(batch, num_tokens, heads * head_dim, device=query.device, dtype=query.dtype)
    window_rows, window_cols = -(-grid_size[0] // window_size), -(-grid_size[1] // window_size)
    splits = window_rows * window_cols * triton.cdiv(window_size * window_size, block_m)
    prefix_acc, prefix_stats = prefix_partials(batch * heads, splits, block_p, block_d, query.device)
    tables = _rope_tables(cos, sin, query)
    _window_variant_kernel[(batch * splits, heads)](
        query, key, value, *tables, out, prefix_acc, prefix_stats,
        heads, num_prefix, grid_size[0], grid_size[1], window_cols, window_rows * window_cols,
        scale * 1.4426950408889634,
        query.stride(0), query.stride(1), query.stride(2), key.stride(0), key.stride(1), key.stride(2),
        value.stride(0), value.stride(1), value.stride(2), out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, BLOCK_D=block_d, WINDOW=window_size, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_P=block_p,
        HAS_ROPE=tables[0] is not query, PRECISION=_precision(query), HAS_PREFIX=num_prefix > 0,
        EVEN=grid_size[0] % window_size == 0 and grid_size[1] % window_size == 0
        and (window_size * window_size) % block_n == 0,
        PREFIX_FIRST=prefix_first, MASKED_STORES=masked_stores, num_warps=num_warps,
    )
    if num_prefix:
        merge_prefix_partials(prefix_acc, prefix_stats, out, num_prefix)
    return out


@triton.jit
def _load_qk(base, rows, stride_n, offs_d, mask, cos_ptr, sin_ptr, num_prefix, HEAD_DIM: tl.constexpr,
             HAS_ROPE: tl.constexpr, SWAP: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """`_load_rotated` (RELU off), or with SWAP the rotate-half partner taken from the loaded tile in registers
    (`_swap_halves`) instead of loaded a second time (needs HEAD_DIM == BLOCK_D)."""
    if SWAP:
        x = tl.load(base + rows[:, None] * stride_n + offs_d[None, :], mask=mask, other=0.0)
        if HAS_ROPE:
            sign = tl.where(offs_d < HEAD_DIM // 2, -1.0, 1.0)
            patch = rows - num_prefix
            table_mask = mask & (patch >= 0)[:, None]
            table = patch[:, None] * HEAD_DIM + offs_d[None, :]
            cos = tl.load(cos_ptr + table, mask=table_mask, other=1.0).to(tl.float32)
            sin = tl.load(sin_ptr + table, mask=table_mask, other=0.0).to(tl.float32)
            partner = _swap_halves(x, ROWS, BLOCK_D).to(tl.float32)
            x = (x.to(tl.float32) * cos + sign[None, :] * partner * sin).to(x.dtype)
    else:
        x = _load_rotated(base, rows, stride_n, offs_d, mask, cos_ptr, sin_ptr, num_prefix, HEAD_DIM, HAS_ROPE,
                          RELU=False)
    return x


@triton.jit
def _window_prefix_programs_kernel(
    q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, o_ptr, prefix_acc_ptr, prefix_stats_ptr,
    num_heads, num_prefix, grid_h, grid_w, window_cols, windows_per_image, groups_per_image, qk_scale,
    stride_qb, stride_qn, stride_qh, stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh,
    stride_ob, stride_on,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, WINDOW: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, HAS_ROPE: tl.constexpr, PRECISION: tl.constexpr,
    EVEN: tl.constexpr, GROUP: tl.constexpr, BLOCK_PQ: tl.constexpr, PREFIX_STAGES: tl.constexpr, SWAP: tl.constexpr,
):
    """Windows in groups of GROUP; each group gets one program more than its windows have query blocks: that program
    runs the prefix queries (a BLOCK_PQ-row tile) over the group's keys (and, in group 0, over the prefix keys) and
    stores their partial softmax; the query-block programs run the patch queries only. A group's programs are
    adjacent in the grid, so the prefix program's key and value loads should find its neighbours' tiles in L2."""
    query_blocks: tl.constexpr = (WINDOW * WINDOW + BLOCK_M - 1) // BLOCK_M
    key_blocks: tl.constexpr = (WINDOW * WINDOW + BLOCK_N - 1) // BLOCK_N
    per_group: tl.constexpr = GROUP * query_blocks + 1
    pid = tl.program_id(0)
    head = tl.program_id(1)
    group_index = pid // per_group
    member = pid % per_group
    batch = group_index // groups_per_image
    group = group_index % groups_per_image
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    q_base = q_ptr + batch * stride_qb + head * stride_qh
    k_base = k_ptr + batch * stride_kb + head * stride_kh
    v_base = v_ptr + batch * stride_vb + head * stride_vh
    offs_p = tl.arange(0, BLOCK_P)
    p_valid = offs_p < num_prefix
    p_mask = p_valid[:, None] & d_mask[None, :]
    prefix_k = tl.load(k_base + offs_p[:, None] * stride_kn + offs_d[None, :], mask=p_mask, other=0.0)
    prefix_v = tl.load(v_base + offs_p[:, None] * stride_vn + offs_d[None, :], mask=p_mask, other=0.0)
    if member == GROUP * query_blocks:
        offs_pq = tl.arange(0, BLOCK_PQ)
        pq_valid = offs_pq < num_prefix
        prefix_q = tl.load(q_base + offs_pq[:, None] * stride_qn + offs_d[None, :],
                           mask=pq_valid[:, None] & d_mask[None, :], other=0.0)
        # over the prefix keys in group 0 only: fully masked (p = 0) everywhere else
        prefix_m, prefix_l, prefix_acc = _online_softmax_start(prefix_q, prefix_k, prefix_v, p_valid & (group == 0),
                                                               qk_scale, PRECISION)
        for i in tl.range(0, GROUP * key_blocks, num_stages=PREFIX_STAGES):
            window = group * GROUP + i // key_blocks  # past the last window: its tokens fall outside the grid
            top, left = _window_corner(window, window_cols, WINDOW)
            k_tokens, k_valid = _window_tokens(top, left, (i % key_blocks) * BLOCK_N + tl.arange(0, BLOCK_N),
                                               num_prefix, grid_h, grid_w, WINDOW)
            kv_mask = k_valid[:, None] & d_mask[None, :]
            k = _load_qk(k_base, k_tokens, stride_kn, offs_d, kv_mask, cos_ptr, sin_ptr, num_prefix, HEAD_DIM,
                         HAS_ROPE, SWAP, BLOCK_N, BLOCK_D)
            v = tl.load(v_base + k_tokens[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
            prefix_m, prefix_l, prefix_acc = _online_softmax_step(
                prefix_q, k, v, k_valid, prefix_m, prefix_l, prefix_acc, qk_scale, PRECISION, True)
        partial = (batch * num_heads + head) * groups_per_image + group
        tl.store(prefix_acc_ptr + (partial * BLOCK_P + offs_pq[:, None]) * BLOCK_D + offs_d[None, :], prefix_acc,
                 mask=pq_valid[:, None])
        tl.store(prefix_stats_ptr + (partial * 2) * BLOCK_P + offs_pq, prefix_m, mask=pq_valid)
        tl.store(prefix_stats_ptr + (partial * 2 + 1) * BLOCK_P + offs_pq, prefix_l, mask=pq_valid)
    else:
        window = group * GROUP + member // query_blocks
        block = member % query_blocks
        if window < windows_per_image:
            top, left = _window_corner(window, window_cols, WINDOW)
            q_tokens, q_valid = _window_tokens(top, left, block * BLOCK_M + tl.arange(0, BLOCK_M), num_prefix,
                                               grid_h, grid_w, WINDOW)
            q_mask = q_valid[:, None] & d_mask[None, :]
            q = _load_qk(q_base, q_tokens, stride_qn, offs_d, q_mask, cos_ptr, sin_ptr, num_prefix, HEAD_DIM,
                         HAS_ROPE, SWAP, BLOCK_M, BLOCK_D)
            m_i, l_i, acc = _online_softmax_start(q, prefix_k, prefix_v, p_valid, qk_scale, PRECISION)
            for key_block in tl.range(0, key_blocks, num_stages=1):
                k_tokens, k_valid = _window_tokens(top, left, key_block * BLOCK_N + tl.arange(0, BLOCK_N),
                                                   num_prefix, grid_h, grid_w, WINDOW)
                if EVEN:
                    kv_mask = d_mask[None, :]
                else:
                    kv_mask = k_valid[:, None] & d_mask[None, :]
                k = _load_qk(k_base, k_tokens, stride_kn, offs_d, kv_mask, cos_ptr, sin_ptr, num_prefix, HEAD_DIM,
                             HAS_ROPE, SWAP, BLOCK_N, BLOCK_D)
                v = tl.load(v_base + k_tokens[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
                m_i, l_i, acc = _online_softmax_step(q, k, v, k_valid, m_i, l_i, acc, qk_scale, PRECISION, not EVEN)
            out = acc / l_i[:, None]
            tl.store(o_ptr + batch * stride_ob + q_tokens[:, None] * stride_on + head * HEAD_DIM + offs_d[None, :],
                     out.to(o_ptr.dtype.element_ty), mask=q_mask)


def window_attention_prefix_programs(query, key, value, cos, sin, num_prefix: int, grid_size, window_size: int,
                                     scale: float, block_m=128, block_n=128, num_warps=4, group=1, block_pq=16,
                                     prefix_stages=1, swap=False):
    """`window_attention_triton` (with prefix tokens) by `_window_prefix_programs_kernel`."""
    batch, num_tokens, heads, head_dim = query.shape
    block_d, block_p = _block_d(head_dim), max(16, triton.next_power_of_2(num_prefix))
    out = torch.empty(batch, num_tokens, heads * head_dim, device=query.device, dtype=query.dtype)
    window_rows, window_cols = -(-grid_size[0] // window_size), -(-grid_size[1] // window_size)
    windows = window_rows * window_cols
    groups = triton.cdiv(windows, group)
    query_blocks = triton.cdiv(window_size * window_size, block_m)
    prefix_acc, prefix_stats = prefix_partials(batch * heads, groups, block_p, block_d, query.device)
    tables = _rope_tables(cos, sin, query)
    _window_prefix_programs_kernel[(batch * groups * (group * query_blocks + 1), heads)](
        query, key, value, *tables, out, prefix_acc, prefix_stats,
        heads, num_prefix, grid_size[0], grid_size[1], window_cols, windows, groups, scale * 1.4426950408889634,
        query.stride(0), query.stride(1), query.stride(2), key.stride(0), key.stride(1), key.stride(2),
        value.stride(0), value.stride(1), value.stride(2), out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, BLOCK_D=block_d, WINDOW=window_size, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_P=block_p,
        HAS_ROPE=tables[0] is not query, PRECISION=_precision(query),
        EVEN=grid_size[0] % window_size == 0 and grid_size[1] % window_size == 0
        and (window_size * window_size) % block_n == 0, GROUP=group, BLOCK_PQ=block_pq, PREFIX_STAGES=prefix_stages,
        SWAP=swap, num_warps=num_warps,
    )
    merge_prefix_partials(prefix_acc, prefix_stats, out, num_prefix)
    return out

VARIANTS = {"prefix_first": (True, False), "masked_stores": (False, True)}
# name: (windows per prefix program, prefix-query rows, pipeline stages of its key loop, query rows, key rows, warps,
# partner in registers)
PREFIX_PROGRAMS = {"prefix_programs": (1, 16, 1, 128, 128, 4, False),
                   "prefix_programs_pq64": (1, 64, 1, 128, 128, 4, False),
                   "prefix_programs_g4": (4, 16, 2, 128, 128, 4, False),
                   "prefix_programs_g4_pq64": (4, 64, 2, 128, 128, 4, False),
                   "prefix_programs_g8": (8, 16, 2, 128, 128, 4, False),
                   "prefix_programs_m256_n128_w8": (1, 16, 1, 256, 128, 8, False),
                   "prefix_programs_m256_n64_w8": (1, 16, 1, 256, 64, 8, False),
                   "prefix_programs_g4_m256_n64_w8": (4, 16, 2, 256, 64, 8, False),
                   "prefix_programs_swap": (1, 16, 1, 128, 128, 4, True),
                   "prefix_programs_g4_swap": (4, 16, 2, 128, 128, 4, True),
                   "prefix_programs_m256_n64_w8_swap": (1, 16, 1, 256, 64, 8, True)}


def variants(q, k, v, cos, sin, num_prefix, grid, window=16, **launch) -> dict:
    """The shipped kernel and each variant, with RoPE (`cos` given) or without."""
    # "shipped": the kernel as it was when this ran, the prefix queries inside the window programs (`prefix_group=0`;
    # the package has since taken `prefix_programs_g4`'s way where there is no RoPE)
    timed = {"shipped": lambda: window_attention_triton(q, k, v, cos, sin, num_prefix, grid, window, 0.125,
                                                        prefix_group=0, **launch)}
    if not launch:  # the shipped kernel at one program per window, for the 256-query prefix-program variants
        timed["shipped_m256_n64_w8"] = lambda: window_attention_triton(
            q, k, v, cos, sin, num_prefix, grid, window, 0.125, block_m=256, block_n=64, num_warps=8, prefix_group=0)
    for name, (first, masked) in VARIANTS.items():
        timed[name] = lambda first=first, masked=masked: window_attention_variant(
            q, k, v, cos, sin, num_prefix, grid, window, 0.125, first, masked, **launch)
    for name, (group, block_pq, stages, block_m, block_n, warps, swap) in PREFIX_PROGRAMS.items():
        settings = launch or {"block_m": block_m, "block_n": block_n, "num_warps": warps}
        timed[name] = lambda group=group, block_pq=block_pq, stages=stages, settings=settings, swap=swap: (
            window_attention_prefix_programs(q, k, v, cos, sin, num_prefix, grid, window, 0.125, group=group,
                                             block_pq=block_pq, prefix_stages=stages, swap=swap, **settings))
    return timed


def check() -> int:
    """fp32 on small grids (windows of 4, one of them partial) against the shipped kernel, with and without RoPE."""
    torch.manual_seed(0)
    for grid, prefix in (((5, 8), 3), ((8, 8), 1)):
        q, k, v = torch.randn(2, prefix + grid[0] * grid[1], 3, 2, 64).unbind(2)
        angles = torch.rand(grid[0] * grid[1], 32) * 6.3
        for tables in ((torch.cos(angles).repeat(1, 2), torch.sin(angles).repeat(1, 2)), (None, None)):
            timed = variants(q, k, v, *tables, prefix, grid, window=4, block_m=16, block_n=16)
            reference = timed.pop("shipped")()
            for name, fn in timed.items():
                print(grid, prefix, "rope" if tables[0] is not None else "no rope", name,
                      "max abs diff vs shipped", (fn() - reference).abs().max().item(), flush=True)
    return 0


def compile_only() -> int:
    q, k, v = torch.randn(1, NUM_PREFIX + GRID[0] * GRID[1], 3, 16, 64).bfloat16().unbind(2)
    angles = torch.rand(GRID[0] * GRID[1], 32)
    cos, sin = torch.cos(angles).repeat(1, 2).bfloat16(), torch.sin(angles).repeat(1, 2).bfloat16()
    for tables in ((cos, sin), (None, None)):
        print_sm90_resources(variants(q, k, v, *tables, NUM_PREFIX, GRID),
                             "rope" if tables[0] is not None else "no rope")
    return 0


def main(argv=None) -> int:
    args = kernel_experiment_parser(__doc__.split("\n\n")[0], check=True).parse_args(argv)
    if args.check:
        return check()
    if args.compile_only:
        return compile_only()
    torch.manual_seed(0)
    result = experiment_record(args.rounds, window_size=16)
    shapes = {"dinov3_rope": (GRID, NUM_PREFIX, True), "dinov3_no_rope": (GRID, NUM_PREFIX, False),
              "dav2_1022x1358": ((73, 97), 1, False)}
    with torch.inference_mode():
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            for shape, (grid, prefix, rope) in shapes.items():
                q, k, v, cos, sin, _ = vit_l_inputs(batch, grid, prefix)
                timed = variants(q, k, v, *((cos, sin) if rope else (None, None)), prefix, grid)
                result["runs"][f"{shape}_batch_{batch}"] = timed_against(
                    timed, "shipped", args.rounds, f"{shape} bs{batch}", grid=grid, num_prefix=prefix, rope=rope)
    if args.output:
        atomic_write_json(args.output, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
