"""An experiment, not shipped: a Triton GEMM for the MLP's up-projection with its bias and exact GELU in the epilogue,
timed by `benchmarks/bench_mlp.py`. On one H200 (ViT-L, 8197 tokens, bf16) it is slower than the plain cuBLAS GEMM
followed by PyTorch's GELU: 0.178 against 0.162 ms for the up-projection (385 against 426 TFLOP/s; cuBLAS without
the GELU: 626), 0.286 against 0.259 ms for the whole MLP, and it made the DINOv3-L hybrid 15.07 ms at 1024x2048
(`h200_exact_gelu_*.json` here). The model therefore keeps PyTorch's exact GELU.

`linear_gelu_triton(x, weight, bias)` computes `gelu(x @ weight.T + bias)` with the exact (erf) GELU that DINOv2,
DINOv3 and Depth Anything were trained with, `0.5 y (1 + erf(y / sqrt(2)))`, in one pass: a tiled tensor-core GEMM
(half-precision inputs, fp32 accumulation) whose epilogue adds the bias and applies the GELU to the fp32 accumulator,
then writes the output once in the input's dtype. The intermediate `x @ weight.T + bias` is never written to memory
(nor rounded to half precision, so the result is at least as close to the float64 GELU as PyTorch's two ops). cuBLASLt's
own GELU epilogue (`torch._addmm_activation(..., use_gelu=True)`) is the tanh approximation; this kernel is the exact
one.

`x` is `[..., K]` (the leading dimensions are flattened; any strides of the flattened 2-d view), `weight` is
`nn.Linear`'s `[N, K]`, `bias` is `[N]` or None. The output tiles are visited in groups of `GROUP_M` row blocks
(each group sweeps every column block before the next starts), so a group's rows of `x` stay in L2 while the weight
streams past. M, N and K need not be multiples of the blocks: out-of-range rows and columns are clamped on load and
masked on store, a K tail is masked on load. The launch settings are a fixed heuristic (`launch_config`), not an
autotuner: the first call compiles once and pays no tuning runs, and later calls (CUDA-graph capture included) launch
the same compiled kernel.
"""

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: bench_mlp.py leaves the Triton variants out
    triton = None


# ----------------------------------------------------------------------------------------------------------------------
# Triton kernel
# ----------------------------------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _tile_coordinates(tile, num_m, num_n, GROUP_M: tl.constexpr):
        """Row and column block of output tile `tile`, in grouped order: GROUP_M row blocks per group, column-major
        inside the group."""
        tiles_per_group = GROUP_M * num_n
        first_m = (tile // tiles_per_group) * GROUP_M
        group_m = min(num_m - first_m, GROUP_M)
        block_m = first_m + (tile % tiles_per_group) % group_m
        block_n = (tile % tiles_per_group) // group_m
        return block_m, block_n

    @triton.jit
    def _epilogue(acc, b_ptr, o_ptr, rows, row_mask, offs_n, N, stride_om, stride_on,
                  HAS_BIAS: tl.constexpr, GELU: tl.constexpr):
        """Bias and exact GELU on the fp32 accumulator tile (rows `rows`, columns `offs_n`), stored in the output's
        dtype."""
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        if GELU:  # 0.5 y (1 + erf(y / sqrt(2)))
            acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
        tl.store(o_ptr + rows[:, None] * stride_om + offs_n[None, :] * stride_on, acc.to(o_ptr.dtype.element_ty),
                 mask=row_mask[:, None] & (offs_n < N)[None, :])

    @triton.jit
    def _gemm_gelu_kernel(
        x_ptr, w_ptr, b_ptr, o_ptr, M, N, K, rounds,
        stride_xm, stride_xk, stride_wn, stride_wk, stride_om, stride_on,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
        HAS_BIAS: tl.constexpr, GELU: tl.constexpr, EVEN_K: tl.constexpr, INDEX_64: tl.constexpr,
        PERSISTENT: tl.constexpr, IEEE_FP32: tl.constexpr, EPILOGUE_SPLIT: tl.constexpr = 1,
    ):
        """`gelu(x @ w.T + b)` for output tiles `program_id + i * num_programs`, `i < rounds`: one tile per program
        (`rounds` = 1), or, when PERSISTENT, a grid of a few programs per multiprocessor looping over the tiles (the
        tile loop is flattened with the K loop, so the next tile's first loads overlap this tile's epilogue). A program
        whose last round is past the tiles recomputes the last tile and stores nothing (a uniform trip count: no branch
        around the loop body)."""
        num_m = tl.cdiv(M, BLOCK_M)
        num_n = tl.cdiv(N, BLOCK_N)
        num_tiles = num_m * num_n
        k_tiles = tl.cdiv(K, BLOCK_K)
        offs_k = tl.arange(0, BLOCK_K)
        for i in tl.range(0, rounds, flatten=PERSISTENT):
            tile = tl.program_id(0) + i * tl.num_programs(0)
            block_m, block_n = _tile_coordinates(tl.minimum(tile, num_tiles - 1), num_m, num_n, GROUP_M)
            offs_m = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
            offs_n = block_n * BLOCK_N + tl.arange(0, BLOCK_N)
            rows = tl.where(offs_m < M, offs_m, 0)  # clamped: loads stay in bounds unmasked, the store masks them
            cols = tl.where(offs_n < N, offs_n, 0)
            if INDEX_64:
                rows = rows.to(tl.int64)
                cols = cols.to(tl.int64)
            x_ptrs = x_ptr + rows[:, None] * stride_xm + offs_k[None, :] * stride_xk
            w_ptrs = w_ptr + offs_k[:, None] * stride_wk + cols[None, :] * stride_wn  # a [BLOCK_K, BLOCK_N] tile of w.T
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for k in range(k_tiles):
                if EVEN_K:
                    x = tl.load(x_ptrs)
                    w = tl.load(w_ptrs)
                else:
                    x = tl.load(x_ptrs, mask=offs_k[None, :] < K - k * BLOCK_K, other=0.0)
                    w = tl.load(w_ptrs, mask=offs_k[:, None] < K - k * BLOCK_K, other=0.0)
                if IEEE_FP32:
                    acc = tl.dot(x, w, acc, input_precision="ieee")
                else:
                    acc = tl.dot(x, w, acc)
                x_ptrs += BLOCK_K * stride_xk
                w_ptrs += BLOCK_K * stride_wk

            out_rows = offs_m.to(tl.int64) if INDEX_64 else offs_m
            row_mask = (offs_m < M) & (tile < num_tiles)
            if EPILOGUE_SPLIT == 2:
                halves = tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))
                acc_lo, acc_hi = tl.split(halves)
                offs_lo = block_n * BLOCK_N + tl.arange(0, BLOCK_N // 2)
                _epilogue(acc_lo, b_ptr, o_ptr, out_rows, row_mask, offs_lo, N, stride_om, stride_on, HAS_BIAS, GELU)
                _epilogue(acc_hi, b_ptr, o_ptr, out_rows, row_mask, offs_lo + BLOCK_N // 2, N, stride_om, stride_on,
                          HAS_BIAS, GELU)
            else:
                _epilogue(acc, b_ptr, o_ptr, out_rows, row_mask, offs_n, N, stride_om, stride_on, HAS_BIAS, GELU)


# ----------------------------------------------------------------------------------------------------------------------
# Launch settings and launcher
# ----------------------------------------------------------------------------------------------------------------------

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages, epilogue split). Hopper (sm90), half precision: 128 x 256 x 64
# tiles with 8 warps (two warpgroups of 64 x 256 wgmma) and 3 stages (144 KiB of shared memory) when the problem has at
# least one such tile per multiprocessor (ViT-L: 8197 x 4096 is 1040 tiles, about 8 waves on 132 SMs), 128 x 128 x 64
# otherwise. The epilogue of a 256-column tile runs on two 128-column halves: in one piece the erf's temporaries push
# the 128 accumulator registers per thread past 255 and spill (ptxas, sm90); in halves it takes 187. Other GPUs
# (sm80/sm89, less shared memory): 128 x 128 x 32 with 8 warps and 4 stages (4 warps spill in the epilogue). fp32 (ieee
# products, a reference path, not a fast one): 64 x 64 x 32. `benchmarks/bench_mlp.py --sweep` times alternatives.
HOPPER_LARGE = (128, 256, 64, 8, 3, 2)
HOPPER_SMALL = (128, 128, 64, 8, 3, 1)
OTHER_GPUS = (128, 128, 32, 8, 4, 1)
FP32 = (64, 64, 32, 4, 3, 1)
GROUP_M = 8
PROGRAMS_PER_SM = None  # None: one program per output tile; a number: a persistent grid of that many per SM


def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def launch_config(m: int, n: int, k: int, dtype: torch.dtype, device: torch.device):
    """`(block_m, block_n, block_k, num_warps, num_stages, epilogue_split)` for an `[m, k] x [k, n]` product in
    `dtype` on `device`, blocks shrunk to the problem (at least 16, what `tl.dot` needs)."""
    if dtype == torch.float32:
        config = FP32
    elif device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9:
        large_tiles = triton.cdiv(m, HOPPER_LARGE[0]) * triton.cdiv(n, HOPPER_LARGE[1])
        config = HOPPER_LARGE if large_tiles >= _multiprocessors(device) else HOPPER_SMALL
    else:
        config = OTHER_GPUS
    block_m, block_n, block_k, warps, stages, split = config

    def fit(block, size):
        return min(block, max(16, triton.next_power_of_2(size)))

    return fit(block_m, m), fit(block_n, n), fit(block_k, k), warps, stages, split


def linear_gelu_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool = True,
                       block_m=None, block_n=None, block_k=None, num_warps=None, num_stages=None, epilogue_split=None,
                       group_m=None, programs_per_sm=None) -> torch.Tensor:
    """`gelu(x @ weight.T + bias)` (exact GELU; the plain linear layer with `gelu=False`) as `[..., N]` in the dtype
    of `x`. The keyword arguments override the launch settings above (benchmarks and tests sweep them);
    `programs_per_sm` launches a persistent grid of that many programs per multiprocessor instead of one program per
    tile (0: one per tile, whatever `PROGRAMS_PER_SM` says)."""
    k = x.shape[-1]
    n = weight.shape[0]
    flat = x.reshape(-1, k)
    m = flat.shape[0]
    out = torch.empty(m, n, device=x.device, dtype=x.dtype)
    if m == 0:
        return out.view(*x.shape[:-1], n)
    config = launch_config(m, n, k, x.dtype, x.device)
    block_m, block_n, block_k = block_m or config[0], block_n or config[1], block_k or config[2]
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    per_sm = PROGRAMS_PER_SM if programs_per_sm is None else programs_per_sm
    programs = min(tiles, per_sm * _multiprocessors(x.device)) if per_sm else tiles
    split = (epilogue_split or config[5]) if block_n >= 32 else 1  # halves of at least 16 columns
    if split not in (1, 2):
        raise ValueError(f"epilogue_split must be 1 or 2, got {split}")
    largest = max((m - 1) * flat.stride(0) + (k - 1) * flat.stride(1),
                  (n - 1) * weight.stride(0) + (k - 1) * weight.stride(1), m * n)
    _gemm_gelu_kernel[(programs,)](
        flat, weight, bias if bias is not None else weight, out, m, n, k, triton.cdiv(tiles, programs),  # weight: a
        # never-read placeholder without a bias
        flat.stride(0), flat.stride(1), weight.stride(0), weight.stride(1), out.stride(0), out.stride(1),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=group_m or GROUP_M,
        HAS_BIAS=bias is not None, GELU=gelu, EVEN_K=k % block_k == 0, INDEX_64=largest >= 2**31,
        PERSISTENT=programs < tiles, IEEE_FP32=x.dtype == torch.float32, EPILOGUE_SPLIT=split,
        num_warps=num_warps or config[3], num_stages=num_stages or config[4],
    )
    return out.view(*x.shape[:-1], n)
