"""Experiment: the MLP's up-projection + bias + exact GELU as a *cooperative* Gluon GEMM with epilogue warps of its
own, against the shipped ping-pong kernel (`kernels_jetvit_mlp.py`) and cuBLAS.

Why: in the batch-1 DINOv3-L hybrid profile the shipped kernel runs at 610 TFLOP/s while cuBLAS's GEMMs of the same
forward average 708 (`benchmarks/README.md`); without any epilogue it is already 17% behind cuBLAS at batch 1 and 5% at
batch 8 (`experiments/README.md`). Its 128x128 tiles load 32 KiB per 2.1 MFLOP of each K-step from L2 (64 FLOP/B);
cuBLAS's 128x256 tiles 48 KiB per 4.2 MFLOP (87 FLOP/B). A 128x256 tile needs both consumer warpgroups on the same tile
(64 rows each, 128 accumulator registers), so neither can run its epilogue beside the other's main loop. Here two
more warps do: the MMA warpgroups round the product to the output dtype into a staging tile in shared memory and go
straight to their next tile; the epilogue warps add the bias and compute the GELU in place, SUB_N columns at a time,
and store the tile with TMA. Rounding before the bias and GELU is within one output rounding of PyTorch's unfused
path (cuBLAS's bf16 output with the bias, then the GELU).

Why two epilogue warps and not a warpgroup: ptxas compiles every partition to one register budget, the MMA
partitions need at least 154, and four warpgroups at 154 exceed the 64K register file; so the epilogue's 2 warps share
the third warpgroup with the loader's (12 warps, 168 registers at launch; SUB_N = 32 spills, 16 and 8 do not).

Shared memory: STAGES x (128x64 + 256x64) x 2 B + 128x256 x 2 B staging = 3 x 48 + 64 = 208 KiB of 227.
Result (H200, 2026-12-02, `h200_gluon_coop_gemm.json`): correct, and 2.5x slower than the shipped ping-pong kernel:
the two epilogue warps are the bottleneck (`experiments/README.md`). Not shipped.

    python benchmarks/experiments/gluon_coop_gemm.py --output coop.json                # on a Hopper GPU
    PYTHONPATH=.:benchmarks python benchmarks/experiments/gluon_coop_gemm.py --compile-only   # sm_90 on the CPU
"""

import argparse
import sys
from pathlib import Path

import torch
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

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `benchmarks.*`

from benchmarks.bench_linear_attention import cuda_median_ms, graphed  # noqa: E402
from jetvit_hf.io import atomic_write_json  # noqa: E402
from jetvit_hf.models.jetvit import kernels_jetvit_mlp  # noqa: E402
from jetvit_hf.models.jetvit.kernels_jetvit_linear import multiprocessors  # noqa: E402
from jetvit_hf.models.jetvit.kernels_jetvit_mlp import (  # noqa: E402
    GELU_LOGISTIC_COEFFICIENTS,
    _loader,
    _tile_coordinates,
)

_P = gl.constexpr(GELU_LOGISTIC_COEFFICIENTS)
BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M = 128, 256, 64, 8


@gluon.jit
def _mma(x_bufs, w_bufs, ready, empty, staged, free, stage_buf, M, N, K, GROUP_M: gl.constexpr,
         STAGES: gl.constexpr, HALF: gl.constexpr):
    """Rows HALF * 64 ... + 64 of every tile of this program: main loop, then the product rounded to the output dtype
    into `stage_buf` once the epilogue has released it."""
    BLOCK_M: gl.constexpr = x_bufs.type.shape[1]
    BLOCK_N: gl.constexpr = w_bufs.type.shape[1]
    BLOCK_K: gl.constexpr = x_bufs.type.shape[2]
    ROWS: gl.constexpr = BLOCK_M // 2
    layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                     instr_shape=[16, BLOCK_N, 16])
    num_m = gl.cdiv(M, BLOCK_M)
    num_n = gl.cdiv(N, BLOCK_N)
    k_steps = gl.cdiv(K, BLOCK_K)
    position = 0
    turn = 0
    for tile in range(gl.program_id(0), num_m * num_n, gl.num_programs(0)):
        acc = gl.zeros((ROWS, BLOCK_N), dtype=gl.float32, layout=layout)
        for k in range(k_steps):
            stage = position % STAGES
            mbarrier.wait(ready.index(stage), (position // STAGES) & 1)
            rows = x_bufs.index(stage).slice(HALF * ROWS, ROWS, dim=0)
            acc = warpgroup_mma(rows, w_bufs.index(stage).permute((1, 0)), acc, is_async=True)
            acc = warpgroup_mma_wait(1, (acc, ))
            mbarrier.arrive(empty.index((position + STAGES - 1) % STAGES), pred=k > 0)
            position += 1
        acc = warpgroup_mma_wait(0, (acc, ))
        mbarrier.arrive(empty.index((position + STAGES - 1) % STAGES))
        mbarrier.wait(free, (turn & 1) ^ 1)  # the epilogue is done with the previous tile (a fresh barrier passes)
        stage_buf.slice(HALF * ROWS, ROWS, dim=0).store(acc.to(stage_buf.dtype))
        gl.thread_barrier()  # every warp's rows are written before the one arrival
        mbarrier.arrive(staged)
        turn += 1


@gluon.jit
def _epilogue(staged, free, stage_buf, o_desc, b_ptr, M, N, GROUP_M: gl.constexpr, SUB_N: gl.constexpr,
              WARPS: gl.constexpr):
    """Bias and GELU in place over `stage_buf`, SUB_N columns at a time, then its TMA store; releases it to the
    MMAs."""
    BLOCK_M: gl.constexpr = stage_buf.type.shape[0]
    BLOCK_N: gl.constexpr = stage_buf.type.shape[1]
    layout: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 8], threads_per_warp=[32 * 8 // SUB_N, SUB_N // 8],
                                            warps_per_cta=[WARPS, 1], order=[1, 0])
    num_m = gl.cdiv(M, BLOCK_M)
    num_n = gl.cdiv(N, BLOCK_N)
    turn = 0
    for tile in range(gl.program_id(0), num_m * num_n, gl.num_programs(0)):
        block_m, block_n = _tile_coordinates(tile, num_m, num_n, GROUP_M)
        mbarrier.wait(staged, turn & 1)
        for c in gl.static_range(BLOCK_N // SUB_N):
            chunk = stage_buf.slice(c * SUB_N, SUB_N, dim=1)
            offs_n = block_n * BLOCK_N + c * SUB_N + gl.arange(0, SUB_N, layout=gl.SliceLayout(0, layout))
            bias = gl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(gl.float32)
            h = chunk.load(layout).to(gl.float32) + bias[None, :]
            square = h * h
            p = gl.full_like(h, _P[6])
            for i in gl.static_range(5, -1, -1):
                p = _P[i] + square * p
            chunk.store((h / (1.0 + gl.exp2(h * p))).to(stage_buf.dtype))
        fence_async_shared()
        tma.async_copy_shared_to_global(o_desc, [block_m * BLOCK_M, block_n * BLOCK_N], stage_buf)
        tma.store_wait(0)
        gl.thread_barrier()  # the store has read the tile before any warp releases it
        mbarrier.arrive(free)
        turn += 1


@gluon.jit
def _coop_gemm_bias_gelu_kernel(x_desc, w_desc, o_desc, b_ptr, M, N, K, GROUP_M: gl.constexpr,
                                STAGES: gl.constexpr, SUB_N: gl.constexpr, EPILOGUE_WARPS: gl.constexpr,
                                MMA_REGISTERS: gl.constexpr,
                                EPILOGUE_REGISTERS: gl.constexpr, LOADER_REGISTERS: gl.constexpr):
    dtype: gl.constexpr = x_desc.dtype
    x_bufs = gl.allocate_shared_memory(dtype, [STAGES] + x_desc.block_type.shape, x_desc.layout)
    w_bufs = gl.allocate_shared_memory(dtype, [STAGES] + w_desc.block_type.shape, w_desc.layout)
    stage_buf = gl.allocate_shared_memory(dtype, o_desc.block_type.shape, o_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    staged = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    free = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=2)  # both MMA warpgroups read every stage
    mbarrier.init(staged, count=2)
    mbarrier.init(free, count=1)
    fence_async_shared()
    gl.warp_specialize([
        (_mma, (x_bufs, w_bufs, ready, empty, staged, free, stage_buf, M, N, K, GROUP_M, STAGES, 0)),
        (_mma, (x_bufs, w_bufs, ready, empty, staged, free, stage_buf, M, N, K, GROUP_M, STAGES, 1)),
        (_epilogue, (staged, free, stage_buf, o_desc, b_ptr, M, N, GROUP_M, SUB_N, EPILOGUE_WARPS)),
        (_loader, (x_desc, w_desc, x_bufs, w_bufs, ready, empty, M, N, K, GROUP_M, STAGES)),
    ], [4, EPILOGUE_WARPS, 1], [MMA_REGISTERS, EPILOGUE_REGISTERS, LOADER_REGISTERS])


def linear_gelu_coop(x, weight, bias, stages=3, sub_n=16, epilogue_warps=2, registers=(208, 96, 96), maxnreg=168):
    """`gelu(x @ weight.T + bias)` through `_coop_gemm_bias_gelu_kernel`. `registers`: setmaxnreg of the second MMA
    warpgroup, the epilogue warps and the loader's; `maxnreg` the launch's (and ptxas's) budget."""
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    (m, k), n = flat.shape, weight.shape[0]
    out = torch.empty(m, n, device=x.device, dtype=x.dtype)
    element = gl.bfloat16 if x.dtype == torch.bfloat16 else gl.float16

    def descriptor(tensor, block):
        return TensorDescriptor.from_tensor(tensor, block, gl.NVMMASharedLayout.get_default_for(block, element))

    tiles = triton.cdiv(m, BLOCK_M) * triton.cdiv(n, BLOCK_N)
    _coop_gemm_bias_gelu_kernel[(min(tiles, multiprocessors(x.device)), )](
        descriptor(flat, [BLOCK_M, BLOCK_K]), descriptor(weight, [BLOCK_N, BLOCK_K]),
        descriptor(out, [BLOCK_M, BLOCK_N]), bias, m, n, k, GROUP_M=GROUP_M, STAGES=stages, SUB_N=sub_n,
        EPILOGUE_WARPS=epilogue_warps, MMA_REGISTERS=registers[0], EPILOGUE_REGISTERS=registers[1],
        LOADER_REGISTERS=registers[2], num_warps=4, maxnreg=maxnreg,
    )
    return out.view(*x.shape[:-1], n)


VARIANTS = {  # name -> keyword arguments of linear_gelu_coop
    "coop_e2_sub16": dict(stages=3, sub_n=16, epilogue_warps=2, registers=(208, 96, 96), maxnreg=168),
    "coop_e2_sub8": dict(stages=3, sub_n=8, epilogue_warps=2, registers=(208, 96, 96), maxnreg=168),
}


def compile_only() -> int:
    from sm90_compile import compile_only_for_sm90, resource_usage

    x, w, b = torch.randn(8197, 1024).bfloat16(), torch.randn(4096, 1024).bfloat16(), torch.randn(4096).bfloat16()
    for name, options in VARIANTS.items():
        try:
            with compile_only_for_sm90() as compiled:
                linear_gelu_coop(x, w, b, **options)
        except Exception as error:  # noqa: BLE001
            print(name, "failed:", str(error).splitlines()[-3:], flush=True)
            continue
        (_, kernel), = compiled
        import re
        print(name, resource_usage(kernel), re.findall(r"setmaxnreg\.\w+\.sync\.aligned\.u32\s+\d+", kernel.asm["ptx"]),
              flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compile-only", action="store_true", help="compile the variants for sm_90 on the CPU")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if args.compile_only:
        return compile_only()
    torch.manual_seed(0)
    device = torch.device("cuda")
    weight = (torch.randn(4096, 1024, device=device) / 32).bfloat16()
    bias = (torch.randn(4096, device=device) / 4).bfloat16()
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "command": " ".join(sys.argv), "shape": "x [B*8197, 1024] @ w[4096, 1024]^T, bf16", "runs": {}}
    result["edge_cases"] = {}
    for rows, hidden, width in [(1, 64, 256), (127, 64, 1000), (300, 72, 520), (8197, 1024, 4096)]:
        # one tile, partial tiles in every dimension, a K that is not a multiple of the 64-wide K-step
        x = torch.randn(rows, hidden, device=device).bfloat16()
        w, b = (torch.randn(width, hidden, device=device) / hidden**0.5).bfloat16(), torch.randn(width, device=device)
        reference = torch.nn.functional.gelu(x.double() @ w.double().T + b.bfloat16().double())
        for name, options in VARIANTS.items():
            try:
                out = linear_gelu_coop(x, w, b.bfloat16(), **options).double()
                error = ((out - reference).abs().max() / reference.abs().max()).item()
            except Exception as exc:  # noqa: BLE001
                error = f"{type(exc).__name__}: {exc}"[:300]
            result["edge_cases"][f"{name} {rows}x{hidden}x{width}"] = error
            print(f"edge {rows}x{hidden}x{width} {name}: max error / max |reference| = {error}", flush=True)
    for batch in (int(b) for b in args.batches.split(",")):
        x = torch.randn(batch * 8197, 1024, device=device).bfloat16()
        reference = torch.nn.functional.gelu(x.double() @ weight.double().T + bias.double())
        candidates = {
            "cublas_no_gelu": lambda: torch.nn.functional.linear(x, weight, bias),
            "cublas_then_gelu": lambda: torch.nn.functional.gelu(torch.nn.functional.linear(x, weight, bias)),
            "gluon_pingpong_shipped": lambda: kernels_jetvit_mlp.linear_gelu_gluon(x, weight, bias),
        }
        for name, options in VARIANTS.items():
            candidates[name] = (lambda options: lambda: linear_gelu_coop(x, weight, bias, **options))(options)
        runs = result["runs"][f"bs{batch}"] = {}
        for name, fn in candidates.items():
            try:
                out = fn().double()
                error = ((out - reference).norm() / reference.norm()).item() if name != "cublas_no_gelu" else None
                runs[name] = {"ms": cuda_median_ms(graphed(fn)), "relative_error": error}
            except Exception as exc:  # noqa: BLE001 - an experiment: record the failure, keep the other variants
                runs[name] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
            print(f"bs{batch} {name:24s} {runs[name]}", flush=True)
    if args.output:
        atomic_write_json(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
