"""Which op of a Gluon wgmma K-loop brings which warpgroup barrier (`bar.sync`): the shipped GELU GEMM's consumer loop
(ring wait, async wgmma, wait for the previous one, release) stripped to one warpgroup and compiled for sm_90 on the
CPU, with the wait, the release or the MMAs left out, and with a `gl.thread_barrier()` after the barriers' init.

Why: Nsight Compute puts 34% of the GEMM's stall cycles at barriers, and its PTX has two per K-step
(`h200_ncu_gelu_gemm.txt`, experiments/README.md).

    PYTHONPATH=.:benchmarks python benchmarks/experiments/gluon_loop_barriers.py     # needs triton>=3.6, no GPU
"""
import re

import torch
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

from sm90_compile import compile_only_for_sm90

VARIANTS = {"wait + release (as shipped)": 0, "release only": 1, "wait only": 2,
            "wait + release, thread_barrier after the inits": 3, "wait + release, no wgmma": 4}


@gluon.jit
def _loop_kernel(x_desc, w_desc, o_desc, STAGES: gl.constexpr, VARIANT: gl.constexpr):
    dtype: gl.constexpr = x_desc.dtype
    x_bufs = gl.allocate_shared_memory(dtype, [STAGES] + x_desc.block_type.shape, x_desc.layout)
    w_bufs = gl.allocate_shared_memory(dtype, [STAGES] + w_desc.block_type.shape, w_desc.layout)
    o_buf = gl.allocate_shared_memory(dtype, o_desc.block_type.shape, o_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=1)
    if VARIANT == 3:
        gl.thread_barrier()
    layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 128, 16])
    acc = gl.zeros((128, 128), dtype=gl.float32, layout=layout)
    for k in range(16):
        stage = k % STAGES
        if VARIANT != 1:
            mbarrier.wait(ready.index(stage), (k // STAGES) & 1)
        if VARIANT != 4:
            acc = warpgroup_mma(x_bufs.index(stage), w_bufs.index(stage).permute((1, 0)), acc, is_async=True)
            acc = warpgroup_mma_wait(1, (acc, ))
        if VARIANT != 2:
            mbarrier.arrive(empty.index((k + STAGES - 1) % STAGES), pred=k > 0)
    acc = warpgroup_mma_wait(0, (acc, ))
    o_buf.store(acc.to(dtype))
    fence_async_shared()
    tma.async_copy_shared_to_global(o_desc, [0, 0], o_buf)
    tma.store_wait(0)


def loop_barriers(ptx: str) -> list[str]:
    """The barrier, wait and release instructions between the K-loop's header and its back branch, in order."""
    lines = ptx.splitlines()
    start = next(i for i, line in enumerate(lines) if "Inner Loop Header" in line)
    end = next(i for i in range(start, len(lines)) if re.search(r"bra\s+\$L__BB", lines[i]))
    wanted = r"bar\.sync|mbarrier\.try_wait|mbarrier\.arrive|wgmma\.wait_group"
    return [re.sub(r"\s+", " ", lines[i].strip()) for i in range(start, end) if re.search(wanted, lines[i])]


def main() -> int:
    tensors = ((torch.zeros(128, 1024).bfloat16(), [128, 64]), (torch.zeros(128, 1024).bfloat16(), [128, 64]),
               (torch.zeros(128, 128).bfloat16(), [128, 128]))
    for name, variant in VARIANTS.items():
        descs = [TensorDescriptor.from_tensor(t, shape, gl.NVMMASharedLayout.get_default_for(shape, gl.bfloat16))
                 for t, shape in tensors]
        with compile_only_for_sm90() as compiled:
            _loop_kernel[(1, )](*descs, STAGES=4, VARIANT=variant, num_warps=4)
        (_, kernel), = compiled
        print(f"{name}:\n    " + "\n    ".join(loop_barriers(kernel.asm["ptx"])), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
