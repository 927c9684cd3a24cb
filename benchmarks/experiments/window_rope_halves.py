"""Experiment: the window-attention kernel with q and k handled as their two head-dimension halves, so that RoPE needs
no second load of each tile (its rotate-half partner) and, where both halves share one table (every rotate-half RoPE
builds `cat(freqs, freqs)`), reads half the cos/sin tables; against the shipped kernel
(`kernels_jetvit_window.window_attention_triton`).

Why: the shipped kernel rotates every q and k tile as it loads it (`_load_rotated`): the tile, its partner columns
and two full-width tables, four loads where a plain tile takes one. Each of a window's two query-block programs loads
and rotates all of the window's keys. On the H100 the kernel took 549 us at batch 8 with RoPE and 492 without
(`h100_old_vs_new.json`). A rotation splits over the halves (`x1 c - x2 s`, `x2 c + x1 s`) and so does q.k
(`q1.k1 + q2.k2`): two K=32 MMAs in place of one K=64, no register shuffles.

    python benchmarks/experiments/window_rope_halves.py --output window_rope_halves.json   # on a CUDA GPU
    TRITON_INTERPRET=1 python benchmarks/experiments/window_rope_halves.py --check   # fp32, on the CPU
    PYTHONPATH=.:benchmarks python benchmarks/experiments/window_rope_halves.py --compile-only   # sm_90 on the CPU
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
    timed_in_graphs,
    vit_l_inputs,
)
from jetvit_hf.io import atomic_write_json  # noqa: E402
from jetvit_hf.models.jetvit.kernels_jetvit_linear import _rope_tables  # noqa: E402
from jetvit_hf.models.jetvit.kernels_jetvit_window import (  # noqa: E402
    _precision,
    _window_kernel,
    _window_program,
    _window_tokens,
    merge_prefix_partials,
    prefix_partials,
    window_attention_triton,
)


@triton.jit
def _load_halves(base, rows, stride_n, offs_h, mask, cos_ptr, sin_ptr, num_prefix, HEAD_DIM: tl.constexpr,
                 ROTATE: tl.constexpr, SHARED_TABLE: tl.constexpr):
    """The halves `[:, :d/2]`, `[:, d/2:]` of a tile of q or k, RoPE applied to its patch tokens when ROTATE
    (SHARED_TABLE: the tables' second half repeats the first, so only the first is read)."""
    HALF: tl.constexpr = HEAD_DIM // 2
    x1 = tl.load(base + rows[:, None] * stride_n + offs_h[None, :], mask=mask, other=0.0)
    x2 = tl.load(base + rows[:, None] * stride_n + HALF + offs_h[None, :], mask=mask, other=0.0)
    if ROTATE:
        patch = rows - num_prefix
        table_mask = mask & (patch >= 0)[:, None]
        table = patch[:, None] * HEAD_DIM + offs_h[None, :]
        cos1 = tl.load(cos_ptr + table, mask=table_mask, other=1.0).to(tl.float32)
        sin1 = tl.load(sin_ptr + table, mask=table_mask, other=0.0).to(tl.float32)
        if SHARED_TABLE:
            cos2, sin2 = cos1, sin1
        else:
            cos2 = tl.load(cos_ptr + table + HALF, mask=table_mask, other=1.0).to(tl.float32)
            sin2 = tl.load(sin_ptr + table + HALF, mask=table_mask, other=0.0).to(tl.float32)
        a, b = x1.to(tl.float32), x2.to(tl.float32)
        x1, x2 = (a * cos1 - b * sin1).to(x1.dtype), (b * cos2 + a * sin2).to(x2.dtype)
    return x1, x2


@triton.jit
def _softmax_step(scores, v, valid, m_i, l_i, acc, qk_scale, PRECISION: tl.constexpr, MASKED: tl.constexpr):
    """`_online_softmax_step` from its scores: one block of keys into the running max `m_i`, sum `l_i`, output `acc`."""
    if MASKED:
        scores = tl.where(valid[None, :], scores, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(scores, axis=1) * qk_scale)
    p = tl.math.exp2(scores * qk_scale - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def _window_halves_kernel(
    q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, o_ptr, prefix_acc_ptr, prefix_stats_ptr,
    num_heads, num_prefix, grid_h, grid_w, window_cols, windows_per_image, qk_scale,
    stride_qb, stride_qn, stride_qh, stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh,
    stride_ob, stride_on,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, WINDOW: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, HAS_ROPE: tl.constexpr, SHARED_TABLE: tl.constexpr,
    PRECISION: tl.constexpr, HAS_PREFIX: tl.constexpr, EVEN: tl.constexpr,
):
    """`_window_kernel` with q and k as halves: scores = q1 k1^T + q2 k2^T."""
    query_blocks: tl.constexpr = (WINDOW * WINDOW + BLOCK_M - 1) // BLOCK_M
    key_blocks: tl.constexpr = (WINDOW * WINDOW + BLOCK_N - 1) // BLOCK_N
    BLOCK_H: tl.constexpr = BLOCK_D // 2
    pid = tl.program_id(0)
    head = tl.program_id(1)
    block, window, batch, top, left = _window_program(pid, query_blocks, windows_per_image, window_cols, WINDOW)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    offs_h = tl.arange(0, BLOCK_H)
    h_mask = offs_h < HEAD_DIM // 2

    q_tokens, q_valid = _window_tokens(top, left, block * BLOCK_M + tl.arange(0, BLOCK_M), num_prefix, grid_h,
                                       grid_w, WINDOW)
    q_base = q_ptr + batch * stride_qb + head * stride_qh
    q1, q2 = _load_halves(q_base, q_tokens, stride_qn, offs_h, q_valid[:, None] & h_mask[None, :], cos_ptr, sin_ptr,
                          num_prefix, HEAD_DIM, HAS_ROPE, SHARED_TABLE)

    k_base = k_ptr + batch * stride_kb + head * stride_kh
    v_base = v_ptr + batch * stride_vb + head * stride_vh
    offs_p = tl.arange(0, BLOCK_P)
    p_valid = offs_p < num_prefix
    ph_mask = p_valid[:, None] & h_mask[None, :]
    prefix_k1, prefix_k2 = _load_halves(k_base, offs_p, stride_kn, offs_h, ph_mask, cos_ptr, sin_ptr, num_prefix,
                                        HEAD_DIM, False, SHARED_TABLE)
    prefix_v = tl.load(v_base + offs_p[:, None] * stride_vn + offs_d[None, :], mask=p_valid[:, None] & d_mask[None, :],
                       other=0.0)
    query_prefix_scores = (tl.dot(q1, tl.trans(prefix_k1), input_precision=PRECISION)
                           + tl.dot(q2, tl.trans(prefix_k2), input_precision=PRECISION))
    m_i = tl.full((BLOCK_M,), -1.0e30, dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    m_i, l_i, acc = _softmax_step(query_prefix_scores, prefix_v, p_valid, m_i, l_i, acc, qk_scale, PRECISION, True)
    prefix_q1, prefix_q2 = _load_halves(q_base, offs_p, stride_qn, offs_h, ph_mask, cos_ptr, sin_ptr, num_prefix,
                                        HEAD_DIM, False, SHARED_TABLE)
    prefix_m = tl.full((BLOCK_P,), -1.0e30, dtype=tl.float32)
    prefix_l = tl.zeros((BLOCK_P,), dtype=tl.float32)
    prefix_acc = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
    if HAS_PREFIX:
        if (window == 0) & (block == 0):
            prefix_scores = (tl.dot(prefix_q1, tl.trans(prefix_k1), input_precision=PRECISION)
                             + tl.dot(prefix_q2, tl.trans(prefix_k2), input_precision=PRECISION))
            prefix_m, prefix_l, prefix_acc = _softmax_step(prefix_scores, prefix_v, p_valid, prefix_m, prefix_l,
                                                           prefix_acc, qk_scale, PRECISION, True)

    for key_block in tl.range(0, key_blocks, num_stages=1):  # as the shipped launch setting (KEY_STAGES=1)
        k_tokens, k_valid = _window_tokens(top, left, key_block * BLOCK_N + tl.arange(0, BLOCK_N), num_prefix,
                                           grid_h, grid_w, WINDOW)
        if EVEN:
            kh_mask = h_mask[None, :]
            v_mask = d_mask[None, :]
        else:
            kh_mask = k_valid[:, None] & h_mask[None, :]
            v_mask = k_valid[:, None] & d_mask[None, :]
        k1, k2 = _load_halves(k_base, k_tokens, stride_kn, offs_h, kh_mask, cos_ptr, sin_ptr, num_prefix, HEAD_DIM,
                              HAS_ROPE, SHARED_TABLE)
        v = tl.load(v_base + k_tokens[:, None] * stride_vn + offs_d[None, :], mask=v_mask, other=0.0)
        scores = tl.dot(q1, tl.trans(k1), input_precision=PRECISION) + tl.dot(q2, tl.trans(k2),
                                                                               input_precision=PRECISION)
        m_i, l_i, acc = _softmax_step(scores, v, k_valid, m_i, l_i, acc, qk_scale, PRECISION, not EVEN)
        if HAS_PREFIX:
            if key_block % query_blocks == block:
                prefix_scores = (tl.dot(prefix_q1, tl.trans(k1), input_precision=PRECISION)
                                 + tl.dot(prefix_q2, tl.trans(k2), input_precision=PRECISION))
                prefix_m, prefix_l, prefix_acc = _softmax_step(prefix_scores, v, k_valid, prefix_m, prefix_l,
                                                               prefix_acc, qk_scale, PRECISION, not EVEN)

    out = acc / l_i[:, None]
    tl.store(o_ptr + batch * stride_ob + q_tokens[:, None] * stride_on + head * HEAD_DIM + offs_d[None, :],
             out.to(o_ptr.dtype.element_ty), mask=q_valid[:, None] & d_mask[None, :])
    if HAS_PREFIX:
        splits = windows_per_image * query_blocks
        partial = (batch * num_heads + head) * splits + pid % splits
        tl.store(prefix_acc_ptr + (partial * BLOCK_P + offs_p[:, None]) * BLOCK_D + offs_d[None, :], prefix_acc)
        tl.store(prefix_stats_ptr + (partial * 2) * BLOCK_P + offs_p, prefix_m)
        tl.store(prefix_stats_ptr + (partial * 2 + 1) * BLOCK_P + offs_p, prefix_l)


def window_attention_halves(query, key, value, cos, sin, num_prefix: int, grid_size, window_size: int, scale: float,
                            block_m=128, block_n=128, num_warps=4, shared_table=True):
    """`window_attention_triton` by `_window_halves_kernel` (`shared_table`: the tables' halves are equal)."""
    batch, num_tokens, heads, head_dim = query.shape
    block_d = triton.next_power_of_2(head_dim)
    block_p = max(16, triton.next_power_of_2(max(num_prefix, 1)))
    out = torch.empty(batch, num_tokens, heads * head_dim, device=query.device, dtype=query.dtype)
    window_rows, window_cols = -(-grid_size[0] // window_size), -(-grid_size[1] // window_size)
    splits = window_rows * window_cols * triton.cdiv(window_size * window_size, block_m)
    prefix_acc, prefix_stats = prefix_partials(batch * heads, splits, block_p, block_d, query.device)
    tables = _rope_tables(cos, sin, query)
    _window_halves_kernel[(batch * splits, heads)](
        query, key, value, *tables, out, prefix_acc, prefix_stats,
        heads, num_prefix, grid_size[0], grid_size[1], window_cols, window_rows * window_cols,
        scale * 1.4426950408889634,
        query.stride(0), query.stride(1), query.stride(2), key.stride(0), key.stride(1), key.stride(2),
        value.stride(0), value.stride(1), value.stride(2), out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, BLOCK_D=block_d, WINDOW=window_size, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_P=block_p,
        HAS_ROPE=tables[0] is not query, SHARED_TABLE=shared_table, PRECISION=_precision(query),
        HAS_PREFIX=num_prefix > 0, num_warps=num_warps,
        EVEN=grid_size[0] % window_size == 0 and grid_size[1] % window_size == 0
        and (window_size * window_size) % block_n == 0,
    )
    if num_prefix:
        merge_prefix_partials(prefix_acc, prefix_stats, out, num_prefix)
    return out


# name: (block_m, block_n, warps, shared table)
HALVES = {
    "halves_m128_n128_w4": (128, 128, 4, False), "halves_shared_m128_n128_w4": (128, 128, 4, True),
    "halves_shared_m128_n64_w4": (128, 64, 4, True), "halves_shared_m128_n128_w8": (128, 128, 8, True),
    "halves_shared_m256_n64_w8": (256, 64, 8, True), "halves_shared_m256_n128_w8": (256, 128, 8, True),
}


def shipped_without_prefix_queries(query, key, value, cos, sin, num_prefix: int, grid_size, window_size: int,
                                   scale: float):
    """The shipped `_window_kernel` at its launch setting with HAS_PREFIX off: the patch queries still attend to the
    prefix keys, but no program runs the prefix queries or stores their partials, and no merge kernel follows (the
    prefix rows of the output are left unwritten). What the prefix queries' share of the work costs."""
    batch, num_tokens, heads, head_dim = query.shape
    block_p = max(16, triton.next_power_of_2(num_prefix))
    out = torch.empty(batch, num_tokens, heads * head_dim, device=query.device, dtype=query.dtype)
    window_rows, window_cols = -(-grid_size[0] // window_size), -(-grid_size[1] // window_size)
    splits = window_rows * window_cols * triton.cdiv(window_size * window_size, 128)
    tables = _rope_tables(cos, sin, query)
    _window_kernel[(batch * splits, heads)](
        query, key, value, *tables, out, out, out,
        heads, num_prefix, grid_size[0], grid_size[1], window_cols, window_rows * window_cols, splits,
        scale * 1.4426950408889634,
        query.stride(0), query.stride(1), query.stride(2), key.stride(0), key.stride(1), key.stride(2),
        value.stride(0), value.stride(1), value.stride(2), out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim), WINDOW=window_size, BLOCK_M=128, BLOCK_N=128,
        BLOCK_P=block_p, HAS_ROPE=tables[0] is not query, PRECISION=_precision(query), KEY_STAGES=1,
        HAS_PREFIX=False, PREFIX_GROUP=0, PREFIX_STAGES=1, EVEN=True, num_warps=4,
    )
    return out


def variants(q, k, v, cos, sin, num_prefix, grid) -> dict:
    """Every timed variant: the shipped kernel with and without RoPE, without the prefix queries' work, and without
    prefix tokens at all (the same patch tokens); and the halves kernel at the HALVES settings (also without RoPE at
    the shipped launch setting: the DINOv2 / Depth Anything path)."""
    patches = slice(num_prefix, None)
    # "shipped": the kernel as it was when this ran (the prefix queries inside the window programs, `prefix_group=0`)
    timed = {"shipped_m128_n128_w4": lambda: window_attention_triton(q, k, v, cos, sin, num_prefix, grid, 16, 0.125,
                                                                     prefix_group=0),
             "shipped_no_rope": lambda: window_attention_triton(q, k, v, None, None, num_prefix, grid, 16, 0.125,
                                                                prefix_group=0),
             "shipped_no_prefix_queries": lambda: shipped_without_prefix_queries(
                 q, k, v, cos, sin, num_prefix, grid, 16, 0.125),
             "shipped_no_prefix_tokens": lambda: window_attention_triton(
                 q[:, patches], k[:, patches], v[:, patches], cos, sin, 0, grid, 16, 0.125),
             "shipped_no_rope_no_prefix_queries": lambda: shipped_without_prefix_queries(
                 q, k, v, None, None, num_prefix, grid, 16, 0.125),
             "shipped_no_rope_no_prefix_tokens": lambda: window_attention_triton(
                 q[:, patches], k[:, patches], v[:, patches], None, None, 0, grid, 16, 0.125),
             "halves_no_rope": lambda: window_attention_halves(q, k, v, None, None, num_prefix, grid, 16, 0.125)}
    for name, (m, n, w, shared) in HALVES.items():
        timed[name] = lambda m=m, n=n, w=w, shared=shared: window_attention_halves(
            q, k, v, cos, sin, num_prefix, grid, 16, 0.125, block_m=m, block_n=n, num_warps=w, shared_table=shared)
    return timed


def check() -> int:
    """fp32 on a small grid (two windows of 4, one partial): every variant against the shipped kernel."""
    torch.manual_seed(0)
    grid, prefix, heads, dim = (5, 8), 3, 2, 64
    q, k, v = torch.randn(2, prefix + grid[0] * grid[1], 3, heads, dim).unbind(2)
    angles = torch.rand(grid[0] * grid[1], dim // 2) * 6.3
    cos, sin = torch.cos(angles).repeat(1, 2), torch.sin(angles).repeat(1, 2)
    for name, (rope, shared) in {"rope": (True, True), "rope_separate_tables": (True, False),
                                 "no_rope": (False, True)}.items():
        tables = (cos, sin) if rope else (None, None)
        reference = window_attention_triton(q, k, v, *tables, prefix, grid, 4, 0.125, prefix_group=0)
        out = window_attention_halves(q, k, v, *tables, prefix, grid, 4, 0.125, block_m=16, block_n=16,
                                      shared_table=shared)
        print(name, "max abs diff vs shipped", (out - reference).abs().max().item(), flush=True)
    return 0


def compile_only() -> int:
    """Every variant compiled for sm_90 at the ViT-L 1024x2048 shape; prints registers, spills and shared memory."""
    q, k, v = torch.randn(1, NUM_PREFIX + GRID[0] * GRID[1], 3, 16, 64).bfloat16().unbind(2)
    angles = torch.rand(GRID[0] * GRID[1], 32)
    cos, sin = torch.cos(angles).repeat(1, 2).bfloat16(), torch.sin(angles).repeat(1, 2).bfloat16()
    print_sm90_resources(variants(q, k, v, cos, sin, NUM_PREFIX, GRID))
    return 0


def main(argv=None) -> int:
    args = kernel_experiment_parser(__doc__.split("\n\n")[0], check=True).parse_args(argv)
    if args.check:
        return check()
    if args.compile_only:
        return compile_only()
    torch.manual_seed(0)
    result = experiment_record(args.rounds, grid=GRID, num_prefix=NUM_PREFIX, window_size=16)
    with torch.inference_mode():
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            q, k, v, cos, sin, _ = vit_l_inputs(batch)
            timed = variants(q, k, v, cos, sin, NUM_PREFIX, GRID)
            reference = timed["shipped_m128_n128_w4"]().float()
            errors = {}
            for name, fn in list(timed.items()):
                try:
                    expected = timed["shipped_no_rope"]().float() if "no_rope" in name else reference
                    out = fn().float()
                    if "no_prefix_tokens" in name:  # its own output has no prefix rows
                        expected = expected[:, NUM_PREFIX:]
                    if "prefix" in name:  # the patch rows only: their keys differ (no prefix keys) or, without
                        # the prefix queries, the prefix rows are left unwritten
                        out, expected = out[:, -GRID[0] * GRID[1]:], expected[:, -GRID[0] * GRID[1]:]
                    errors[name] = (out - expected).abs().max().item()
                except Exception as error:  # e.g. out of shared memory at this setting
                    print(f"{name} failed: {str(error)[:120]}", flush=True)
                    del timed[name]
            result["runs"][f"batch_{batch}"] = timed_in_graphs(timed, args.rounds, errors, f"bs{batch}")
    if args.output:
        atomic_write_json(args.output, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
