"""Experiment: a persistent window-attention kernel, each program looping over (image, window, head, query block)
units with the loop's loads software-pipelined, against the shipped one-unit-per-program kernel
(`kernels_jetvit_window.window_attention_triton`).

Why: Nsight Compute puts the shipped kernel at 12-23% occupancy with 33-43% of issue slots busy, near no bandwidth or
compute limit (`h200_ncu_attention_kernels.txt`): each program runs one query block over two 128-key blocks, and its
loads (q, the prefix keys, each key block) wait one after the other with at most two programs a multiprocessor to
hide them. Looping over units lets the pipeliner fetch the next unit's tiles while this one computes. cuDNN's
attention over the same windows, pre-partitioned, takes 44 us a ViT-L layer against the shipped kernel's 78.

The persistent body is the shipped kernel's, unit by unit, with the key blocks unrolled; the prefix queries' partial
softmaxes go to the same buffers and merge kernel.

    python benchmarks/experiments/window_persistent.py --output window_persistent.json   # on a CUDA GPU
    PYTHONPATH=.:benchmarks python benchmarks/experiments/window_persistent.py --compile-only   # sm_90 on the CPU
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
from jetvit_hf.models.jetvit.kernels_jetvit_linear import _block_d, _load_rotated, _rope_tables, multiprocessors  # noqa: E402
from jetvit_hf.models.jetvit.kernels_jetvit_window import (  # noqa: E402
    _online_softmax_start,
    _online_softmax_step,
    _precision,
    _window_corner,
    _window_tokens,
    merge_prefix_partials,
    prefix_partials,
    window_attention_triton,
)


@triton.jit
def _window_persistent_kernel(
    q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, o_ptr, prefix_acc_ptr, prefix_stats_ptr,
    num_units, num_heads, num_prefix, grid_h, grid_w, window_cols, windows_per_image, qk_scale,
    stride_qb, stride_qn, stride_qh, stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh,
    stride_ob, stride_on,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, WINDOW: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, HAS_ROPE: tl.constexpr, PRECISION: tl.constexpr,
    STAGES: tl.constexpr, EVEN: tl.constexpr,
):
    """`_window_kernel`'s work for units `program_id, program_id + programs, ...`, a unit being one query block of
    one window and head (units ordered image, window, head, query block, so that programs running side by side read
    the same window's keys). The prefix queries' partial softmax is kept per unit."""
    query_blocks: tl.constexpr = (WINDOW * WINDOW + BLOCK_M - 1) // BLOCK_M
    key_blocks: tl.constexpr = (WINDOW * WINDOW + BLOCK_N - 1) // BLOCK_N
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    offs_p = tl.arange(0, BLOCK_P)
    p_valid = offs_p < num_prefix
    p_mask = p_valid[:, None] & d_mask[None, :]
    for unit in tl.range(tl.program_id(0), num_units, tl.num_programs(0), num_stages=STAGES):
        block = unit % query_blocks
        head = (unit // query_blocks) % num_heads
        window = (unit // (query_blocks * num_heads)) % windows_per_image
        batch = unit // (query_blocks * num_heads * windows_per_image)
        top, left = _window_corner(window, window_cols, WINDOW)

        q_tokens, q_valid = _window_tokens(top, left, block * BLOCK_M + tl.arange(0, BLOCK_M), num_prefix, grid_h,
                                           grid_w, WINDOW)
        q_mask = q_valid[:, None] & d_mask[None, :]
        q_base = q_ptr + batch * stride_qb + head * stride_qh
        q = _load_rotated(q_base, q_tokens, stride_qn, offs_d, q_mask, cos_ptr, sin_ptr, num_prefix, HEAD_DIM,
                          HAS_ROPE, RELU=False)
        k_base = k_ptr + batch * stride_kb + head * stride_kh
        v_base = v_ptr + batch * stride_vb + head * stride_vh
        prefix_k = tl.load(k_base + offs_p[:, None] * stride_kn + offs_d[None, :], mask=p_mask, other=0.0)
        prefix_v = tl.load(v_base + offs_p[:, None] * stride_vn + offs_d[None, :], mask=p_mask, other=0.0)
        m_i, l_i, acc = _online_softmax_start(q, prefix_k, prefix_v, p_valid, qk_scale, PRECISION)
        # the prefix queries over the prefix keys in window 0's first unit only: masked everywhere else (p = 0)
        prefix_q = tl.load(q_base + offs_p[:, None] * stride_qn + offs_d[None, :], mask=p_mask, other=0.0)
        prefix_m, prefix_l, prefix_acc = _online_softmax_start(
            prefix_q, prefix_k, prefix_v, p_valid & ((window == 0) & (block == 0)), qk_scale, PRECISION)
        for key_block in tl.static_range(key_blocks):
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
            # each key block's prefix-query share goes to one of the window's query blocks, as in `_window_kernel`
            prefix_m, prefix_l, prefix_acc = _online_softmax_step(
                prefix_q, k, v, k_valid & (key_block % query_blocks == block), prefix_m, prefix_l, prefix_acc,
                qk_scale, PRECISION, True)
        out = acc / l_i[:, None]
        tl.store(o_ptr + batch * stride_ob + q_tokens[:, None] * stride_on + head * HEAD_DIM + offs_d[None, :],
                 out.to(o_ptr.dtype.element_ty), mask=q_mask)
        splits = windows_per_image * query_blocks
        partial = (batch * num_heads + head) * splits + window * query_blocks + block
        tl.store(prefix_acc_ptr + (partial * BLOCK_P + offs_p[:, None]) * BLOCK_D + offs_d[None, :], prefix_acc)
        tl.store(prefix_stats_ptr + (partial * 2) * BLOCK_P + offs_p, prefix_m)
        tl.store(prefix_stats_ptr + (partial * 2 + 1) * BLOCK_P + offs_p, prefix_l)


def window_attention_persistent(query, key, value, cos, sin, num_prefix: int, grid_size, window_size: int,
                                scale: float, block_m=128, block_n=128, num_warps=4, stages=2, programs_per_sm=2):
    """`window_attention_triton` (with prefix tokens) by the persistent kernel, `programs_per_sm` programs a
    multiprocessor."""
    batch, num_tokens, heads, head_dim = query.shape
    block_d, block_p = _block_d(head_dim), max(16, triton.next_power_of_2(num_prefix))
    out = torch.empty(batch, num_tokens, heads * head_dim, device=query.device, dtype=query.dtype)
    window_rows, window_cols = -(-grid_size[0] // window_size), -(-grid_size[1] // window_size)
    query_blocks = triton.cdiv(window_size * window_size, block_m)
    splits = window_rows * window_cols * query_blocks
    num_units = batch * heads * splits
    prefix_acc, prefix_stats = prefix_partials(batch * heads, splits, block_p, block_d, query.device)
    tables = _rope_tables(cos, sin, query)
    programs = min(num_units, programs_per_sm * multiprocessors(query.device))
    _window_persistent_kernel[(programs,)](
        query, key, value, *tables, out, prefix_acc, prefix_stats,
        num_units, heads, num_prefix, grid_size[0], grid_size[1], window_cols, window_rows * window_cols,
        scale * 1.4426950408889634,
        query.stride(0), query.stride(1), query.stride(2), key.stride(0), key.stride(1), key.stride(2),
        value.stride(0), value.stride(1), value.stride(2), out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, BLOCK_D=block_d, WINDOW=window_size, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_P=block_p,
        HAS_ROPE=tables[0] is not query, PRECISION=_precision(query), STAGES=stages,
        EVEN=grid_size[0] % window_size == 0 and grid_size[1] % window_size == 0
        and (window_size * window_size) % block_n == 0, num_warps=num_warps,
    )
    merge_prefix_partials(prefix_acc, prefix_stats, out, num_prefix)
    return out


# name: (block_m, block_n, warps, pipeline stages, programs per multiprocessor). Two stages of the 128-query tiles
# pipeline every load of the body (q, k, their RoPE partners and tables, v) and need 262-490 KiB of shared memory,
# more than sm_90 has (`--compile-only`), so only the 64-query tile gets them
PERSISTENT = {f"persistent_m{m}_n{n}_w{w}_s{s}_p{p}": (m, n, w, s, p) for m, n, w, s, p in (
    (128, 128, 4, 1, 2), (128, 64, 4, 1, 2), (64, 64, 4, 1, 3), (64, 128, 4, 1, 3), (64, 64, 4, 2, 1),
)}
# the shipped kernel at its launch setting and at the settings the persistent one adds
SHIPPED = {"shipped_m128_n128_w4": (128, 128, 4, 1), "shipped_m128_n64_w4": (128, 64, 4, 1),
           "shipped_m128_n64_w4_s2": (128, 64, 4, 2)}


def variants(args: tuple) -> dict:
    timed = {name: (lambda m=m, n=n, w=w, s=s: window_attention_triton(
        *args, block_m=m, block_n=n, num_warps=w, key_stages=s)) for name, (m, n, w, s) in SHIPPED.items()}
    for name, (m, n, w, s, p) in PERSISTENT.items():
        timed[name] = lambda m=m, n=n, w=w, s=s, p=p: window_attention_persistent(
            *args, block_m=m, block_n=n, num_warps=w, stages=s, programs_per_sm=p)
    return timed


def compile_only() -> int:
    q, k, v = torch.randn(1, 5 + 64 * 128, 3, 16, 64).bfloat16().unbind(2)
    angles = torch.rand(64 * 128, 64)
    args = (q, k, v, torch.cos(angles).bfloat16(), torch.sin(angles).bfloat16(), 5, (64, 128), 16, 0.125)
    print_sm90_resources(variants(args))
    return 0


def main(argv=None) -> int:
    args = kernel_experiment_parser(__doc__.split("\n\n")[0]).parse_args(argv)
    if args.compile_only:
        return compile_only()
    torch.manual_seed(0)
    result = experiment_record(args.rounds, grid=GRID, num_prefix=NUM_PREFIX, window_size=16)
    with torch.inference_mode():
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            q, k, v, cos, sin, _ = vit_l_inputs(batch)
            timed = variants((q, k, v, cos, sin, NUM_PREFIX, GRID, 16, 0.125))
            reference = timed["shipped_m128_n128_w4"]().float()
            errors = {}
            for name, fn in list(timed.items()):
                try:
                    errors[name] = (fn().float() - reference).abs().max().item()
                except Exception as error:  # e.g. out of shared memory at this setting
                    print(f"{name} failed: {str(error)[:120]}", flush=True)
                    del timed[name]
            result["runs"][f"batch_{batch}"] = timed_in_graphs(timed, args.rounds, errors, f"bs{batch}")
    if args.output:
        atomic_write_json(args.output, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
