"""A Gluon kernel for the MLP's up-projection with its bias and exact GELU in the epilogue (Hopper), and its launcher;
`ops_jetvit.linear_gelu` calls `linear_gelu_gluon` where `gluon_linear_gelu_supported` allows. `linear_gluon`, which
it calls, also takes the tile, the ring's stages and K-step, and a bias-only epilogue: the settings the experiments in
`benchmarks/experiments/` time (`gemm_pingpong_shapes.py`); the model runs the defaults with the GELU.

Why a kernel of our own: cuBLASLt fuses only the tanh approximation of GELU into a GEMM, and DINOv2/DINOv3/Depth
Anything were trained with the exact (erf) GELU. Unfused, the exact GELU is a pass of its own over the 4x-wide hidden
activation. In a GEMM's epilogue its arithmetic stalls the tensor cores, unless the epilogue runs beside another
tile's main loop: a "ping-pong" schedule (as CUTLASS's Hopper kernels), which Triton's `tl` cannot express and Gluon
(`triton.experimental.gluon`, Triton >= 3.6) can:

- three partitions (`gl.warp_specialize`): a loader warp that issues the TMA loads of x and w into a ring of STAGES
  shared-memory stages (`ready` / `empty` barriers), and two consumer warpgroups on alternate 128 x 128 output tiles
  of the program's persistent tile list, each with a fp32 accumulator in registers and its own output buffer;
- the consumers take turns on the ring (`order` barriers): consumer c starts a tile's main loop only after the other
  has issued its previous tile's MMAs. (Without turns a consumer waits on a `ready` barrier phases ahead of the
  loader, and a barrier's parity cannot tell phase n from n + 2.) So one consumer's epilogue (bias, GELU, bf16, TMA
  store) runs while the other's wgmmas keep the tensor cores busy;
- the GELU in logistic form, x Phi(x) = x / (1 + 2^(x P(x^2))), P of degree 6 least-squares fitted to
  -log2(e) logit(Phi) (`GELU_LOGISTIC_COEFFICIENTS`): about 12 instructions an element against ~18 for the usual
  erfc formula, and the epilogue's cost follows its instruction count. Max |error| 5.9e-7 in fp32 over [-40, 40]
  (tanh-GELU: 4.7e-4); its bf16 outputs differ from float64's rounding no more often than PyTorch's fp32 GELU's.

ViT-L up-projection at batch 8 on an H200: 0.98 ms, against 1.20 for cuBLAS + PyTorch's GELU and 0.94 for cuBLASLt's
tanh epilogue (`benchmarks/experiments/README.md`). Shipped with every saved checkpoint for `trust_remote_code`;
Triton with Gluon is optional (without it nothing here is launched).
"""

import torch

from .kernels_jetvit_linear import multiprocessors

try:
    import triton
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    if tuple(int(part) for part in triton.__version__.split(".")[:2]) < (3, 6):
        raise ImportError("written against Triton 3.6's Gluon API")
except ImportError:  # no Triton, or one without Gluon: ops_jetvit.py uses PyTorch's linear and GELU
    gluon = None

# x Phi(x) = x / (1 + 2^(x P(x^2))): P's coefficients, constant term first
GELU_LOGISTIC_COEFFICIENTS = (-2.3022094578, -0.10483433137, 9.3093183449e-05, 0.00016001541863, -1.1525755058e-05,
                              3.8896500335e-07, -5.2862860076e-09)
# a consumer's output tile, ring stages (5 x 32 KiB + 2 x 32 KiB of output buffers: 224 of the 227 KiB), grouped
# tile order, and the registers of a consumer warpgroup and of the loader's (setmaxnreg: consumers take what the
# loader gives up; 232 + 232 + 40 fill the 64K register file)
BLOCK_M, BLOCK_N, BLOCK_K, STAGES, GROUP_M = 128, 128, 64, 5, 8
CONSUMER_REGISTERS, LOADER_REGISTERS = 232, 40


def gluon_linear_gelu_runs_on(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the kernel runs on `device` in `dtype`: Triton with Gluon, a Hopper GPU (sm_90), half precision."""
    return (
        gluon is not None
        and device.type == "cuda"
        and torch.cuda.get_device_capability(device) == (9, 0)
        and dtype in (torch.bfloat16, torch.float16)
    )


def gluon_linear_gelu_supported(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> bool:
    """Whether `linear_gelu_gluon` takes these tensors: `gluon_linear_gelu_runs_on` their device and dtype, one dtype
    for all three, and rows TMA can address (16-byte aligned starts and strides)."""
    return (
        gluon_linear_gelu_runs_on(x.device, x.dtype)
        and weight.dtype == x.dtype
        and bias.dtype == x.dtype
        and x.shape[-1] % 8 == 0
        and weight.shape[0] % 8 == 0
        and weight.is_contiguous()
        and all(t.data_ptr() % 16 == 0 for t in (x, weight))
    )


if gluon is not None:
    _P = gl.constexpr(GELU_LOGISTIC_COEFFICIENTS)

    @gluon.jit
    def _tile_coordinates(tile, num_m, num_n, GROUP_M: gl.constexpr):
        """Row and column block of output tile `tile`, in groups of GROUP_M row blocks (L2 reuse of w's blocks)."""
        tiles_per_group = GROUP_M * num_n
        first_m = (tile // tiles_per_group) * GROUP_M
        group_m = gl.minimum(num_m - first_m, GROUP_M)
        block_m = first_m + (tile % tiles_per_group) % group_m
        block_n = (tile % tiles_per_group) // group_m
        return block_m, block_n

    @gluon.jit
    def _loader(x_desc, w_desc, x_bufs, w_bufs, ready, empty, M, N, K, GROUP_M: gl.constexpr,
                STAGES: gl.constexpr):
        """TMA loads of x and w for every K-step of this program's tiles, in order, into the ring."""
        BLOCK_M: gl.constexpr = x_desc.block_type.shape[0]
        BLOCK_K: gl.constexpr = x_desc.block_type.shape[1]
        BLOCK_N: gl.constexpr = w_desc.block_type.shape[0]
        num_m = gl.cdiv(M, BLOCK_M)
        num_n = gl.cdiv(N, BLOCK_N)
        k_steps = gl.cdiv(K, BLOCK_K)
        position = 0
        for tile in range(gl.program_id(0), num_m * num_n, gl.num_programs(0)):
            block_m, block_n = _tile_coordinates(tile, num_m, num_n, GROUP_M)
            for k in range(k_steps):
                stage = position % STAGES
                mbarrier.wait(empty.index(stage), ((position // STAGES) & 1) ^ 1)  # a fresh barrier passes
                mbarrier.expect(ready.index(stage), x_desc.block_type.nbytes + w_desc.block_type.nbytes)
                tma.async_copy_global_to_shared(x_desc, [block_m * BLOCK_M, k * BLOCK_K], ready.index(stage),
                                                x_bufs.index(stage))
                tma.async_copy_global_to_shared(w_desc, [block_n * BLOCK_N, k * BLOCK_K], ready.index(stage),
                                                w_bufs.index(stage))
                position += 1

    @gluon.jit
    def _consumer(x_bufs, w_bufs, ready, empty, order, o_bufs, o_desc, b_ptr, M, N, K, GROUP_M: gl.constexpr,
                  STAGES: gl.constexpr, GELU: gl.constexpr, CONSUMER: gl.constexpr):
        """Main loop and epilogue (bias, and the GELU when GELU) of this program's tiles CONSUMER, CONSUMER + 2, ...
        (one warpgroup)."""
        BLOCK_M: gl.constexpr = o_desc.block_type.shape[0]
        BLOCK_N: gl.constexpr = o_desc.block_type.shape[1]
        BLOCK_K: gl.constexpr = x_bufs.type.shape[2]
        layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                         instr_shape=[16, BLOCK_N, 16])
        o_buf = o_bufs.index(CONSUMER)
        num_m = gl.cdiv(M, BLOCK_M)
        num_n = gl.cdiv(N, BLOCK_N)
        k_steps = gl.cdiv(K, BLOCK_K)
        turn = 0
        for tile in range(gl.program_id(0) + CONSUMER * gl.num_programs(0), num_m * num_n, 2 * gl.num_programs(0)):
            # consumer 0's first wait is on a fresh barrier's parity 1, which passes: it goes first
            mbarrier.wait(order.index(CONSUMER), (turn & 1) ^ (1 - CONSUMER))
            position = (tile - gl.program_id(0)) // gl.num_programs(0) * k_steps  # the loader's count at this tile
            acc = gl.zeros((BLOCK_M, BLOCK_N), dtype=gl.float32, layout=layout)
            for k in range(k_steps):
                stage = position % STAGES
                mbarrier.wait(ready.index(stage), (position // STAGES) & 1)
                acc = warpgroup_mma(x_bufs.index(stage), w_bufs.index(stage).permute((1, 0)), acc, is_async=True)
                acc = warpgroup_mma_wait(1, (acc, ))  # the previous step's MMA is done with its stage
                mbarrier.arrive(empty.index((position + STAGES - 1) % STAGES), pred=k > 0)
                position += 1
            mbarrier.arrive(order.index(1 - CONSUMER))  # the other consumer's turn on the ring
            acc = warpgroup_mma_wait(0, (acc, ))
            mbarrier.arrive(empty.index((position + STAGES - 1) % STAGES))
            turn += 1

            block_m, block_n = _tile_coordinates(tile, num_m, num_n, GROUP_M)
            offs_n = block_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, layout))
            acc += gl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(gl.float32)[None, :]
            if GELU:
                square = acc * acc
                p = gl.full_like(acc, _P[6])
                for i in gl.static_range(5, -1, -1):
                    p = _P[i] + square * p
                acc = acc / (1.0 + gl.exp2(acc * p))
            tma.store_wait(0)  # this consumer's previous tile has left o_buf
            o_buf.store(acc.to(o_desc.dtype))
            fence_async_shared()
            tma.async_copy_shared_to_global(o_desc, [block_m * BLOCK_M, block_n * BLOCK_N], o_buf)
        tma.store_wait(0)

    @gluon.jit
    def _gemm_bias_gelu_kernel(x_desc, w_desc, o_desc, b_ptr, M, N, K, GROUP_M: gl.constexpr, STAGES: gl.constexpr,
                               GELU: gl.constexpr, CONSUMER_REGISTERS: gl.constexpr, LOADER_REGISTERS: gl.constexpr):
        dtype: gl.constexpr = x_desc.dtype
        x_bufs = gl.allocate_shared_memory(dtype, [STAGES] + x_desc.block_type.shape, x_desc.layout)
        w_bufs = gl.allocate_shared_memory(dtype, [STAGES] + w_desc.block_type.shape, w_desc.layout)
        o_bufs = gl.allocate_shared_memory(dtype, [2] + o_desc.block_type.shape, o_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        order = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)
            mbarrier.init(empty.index(i), count=1)
        for i in gl.static_range(2):
            mbarrier.init(order.index(i), count=1)
        fence_async_shared()  # the initialized barriers, visible to the TMA unit
        gl.warp_specialize([
            (_consumer, (x_bufs, w_bufs, ready, empty, order, o_bufs, o_desc, b_ptr, M, N, K, GROUP_M, STAGES, GELU,
                         0)),
            (_consumer, (x_bufs, w_bufs, ready, empty, order, o_bufs, o_desc, b_ptr, M, N, K, GROUP_M, STAGES, GELU,
                         1)),
            (_loader, (x_desc, w_desc, x_bufs, w_bufs, ready, empty, M, N, K, GROUP_M, STAGES)),
        ], [4, 1], [CONSUMER_REGISTERS, LOADER_REGISTERS])


def linear_gelu_gluon(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """`gelu(x @ weight.T + bias)` with the exact GELU, as `[..., N]`, through `_gemm_bias_gelu_kernel`: for the tensors
    `gluon_linear_gelu_supported` accepts."""
    return linear_gluon(x, weight, bias, gelu=True)


def linear_gluon(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, gelu: bool,
                 tile: tuple[int, int] = (BLOCK_M, BLOCK_N), stages: int = STAGES, block_k: int = BLOCK_K
                 ) -> torch.Tensor:
    """`x @ weight.T + bias`, with the exact GELU when `gelu`, through `_gemm_bias_gelu_kernel` with a consumer's
    output `tile` (rows, columns), `stages` ring stages of `block_k` columns of K (shared memory: `stages` x (rows +
    columns) x `block_k` x 2 B plus 2 x rows x columns x 2 B)."""
    block_m, block_n = tile
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    (m, k), n = flat.shape, weight.shape[0]
    out = torch.empty(m, n, device=x.device, dtype=x.dtype)
    if m == 0:
        return out.view(*x.shape[:-1], n)
    element = gl.bfloat16 if x.dtype == torch.bfloat16 else gl.float16
    x_desc = TensorDescriptor.from_tensor(flat, [block_m, block_k],
                                          gl.NVMMASharedLayout.get_default_for([block_m, block_k], element))
    w_desc = TensorDescriptor.from_tensor(weight, [block_n, block_k],
                                          gl.NVMMASharedLayout.get_default_for([block_n, block_k], element))
    o_desc = TensorDescriptor.from_tensor(out, [block_m, block_n],
                                          gl.NVMMASharedLayout.get_default_for([block_m, block_n], element))
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    _gemm_bias_gelu_kernel[(min(tiles, multiprocessors(x.device)), )](
        x_desc, w_desc, o_desc, bias, m, n, k, GROUP_M=GROUP_M, STAGES=stages, GELU=gelu,
        CONSUMER_REGISTERS=CONSUMER_REGISTERS, LOADER_REGISTERS=LOADER_REGISTERS, num_warps=4,
        # 3 warpgroups x 128 threads x 168 registers at launch; once the partitions start, the default one (consumer
        # 0) has what the workers leave: 3 x 168 - 232 - 40 = 232
        maxnreg=(CONSUMER_REGISTERS * 2 + LOADER_REGISTERS) // 3,
    )
    return out.view(*x.shape[:-1], n)
