"""An experiment, not shipped: the MLP's up-projection with its bias and exact GELU in the epilogue, as a Hopper
"ping-pong" GEMM written in Gluon (Triton's lower-level language, `triton.experimental.gluon`, in Triton 3.6).

Why: the Triton TMA kernel (`triton_gelu_gemm.py`) runs the GEMM at cuBLAS's speed without the GELU (0.860 against
0.856 ms, ViT-L up-projection at batch 8 on an H200), but its A&S GELU epilogue adds 0.215 ms where cuBLASLt's tanh
epilogue adds 0.064: the epilogue's ~16 instructions an element run while the tensor cores wait, because every warp
of the program does both the main loop and the epilogue. With K = 1024 (16 K-steps a tile) the epilogue is a large
share of a tile. CUTLASS's Hopper kernels hide it with warp specialization: one producer warp issues the TMA loads and
two consumer warpgroups take alternate output tiles, so one's epilogue runs while the other's main loop keeps the
tensor cores busy. Triton's `warp_specialize=True` on Hopper does not do that (3 us of 215 in our sweep); Gluon
lets us write it:

- partitions (`gl.warp_specialize`): consumer 0 (the default partition, 4 warps), consumer 1 (4 warps), loader (1
  warp). Consumers hold a 128 x 128 fp32 accumulator (128 registers a thread) and get most of the registers;
- one ring of STAGES shared-memory stages (x: 128 x 64, w: 128 x 64 bf16, 32 KiB a stage). The loader walks this
  program's tiles in order, K-steps inside, filling stage `i % STAGES` after its `empty` barrier and announcing it on
  its `ready` barrier (TMA byte count). Consumer c takes this program's tiles c, c + 2, ...; a tile's K-steps are
  ring positions `local_tile * k_steps + k`, so both consumers know where their data is without talking;
- main loop: async wgmma on the stage, keep one in flight, release the previous stage;
- epilogue: bias, exact GELU (A&S erfc, as `triton_gelu_gemm._bias_gelu`), bf16, into the consumer's own output
  buffer in shared memory and out by a TMA store, which completes while the next tile's main loop runs.

`python benchmarks/experiments/gluon_gelu_gemm.py --batch 8 --output gluon_gelu_gemm.json` checks it against a
float64 reference and times it beside cuBLAS + GELU, the tanh epilogue and the Triton TMA kernel (CUDA-graph medians).

Status (2026-12-02): compiles for sm_90 on a CPU (192 KiB of shared memory; setmaxnreg gives the consumers 232
registers and the loader 40; no spills), but its first launch on an H200 failed with "unspecified launch failure"
(gelu="", batch 8). Not yet debugged: `--diagnose` launches small cases (one tile, one K-step, both consumers, two
stages), each in its own process, to find which part faults.
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script, and its --diagnose subprocesses

from benchmarks.experiments import triton_gelu_gemm  # noqa: E402

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
except ImportError:  # no Triton, or one without Gluon
    gluon = None

# (BLOCK_M, BLOCK_N, BLOCK_K) of one consumer's tile, ring stages, grouped tile order, registers of a consumer
# warpgroup and of the loader's (setmaxnreg: the consumers take what the loader gives up)
BLOCK_M, BLOCK_N, BLOCK_K, STAGES, GROUP_M = 128, 128, 64, 4, 8
CONSUMER_REGISTERS, LOADER_REGISTERS = 232, 40

if gluon is not None:

    @gluon.jit
    def _tile_coordinates(tile, num_m, num_n, GROUP_M: gl.constexpr):
        """Row and column block of output tile `tile`, in grouped order (as `triton_gelu_gemm._tile_coordinates`)."""
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
    def _consumer(x_bufs, w_bufs, ready, empty, o_bufs, o_desc, b_ptr, M, N, K, HAS_BIAS: gl.constexpr,
                  GELU: gl.constexpr, GROUP_M: gl.constexpr, STAGES: gl.constexpr, CONSUMER: gl.constexpr):
        """Main loop and epilogue of this program's tiles CONSUMER, CONSUMER + 2, ... (one warpgroup)."""
        BLOCK_M: gl.constexpr = o_desc.block_type.shape[0]
        BLOCK_N: gl.constexpr = o_desc.block_type.shape[1]
        BLOCK_K: gl.constexpr = x_bufs.type.shape[2]
        layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                         instr_shape=[16, BLOCK_N, 16])
        o_buf = o_bufs.index(CONSUMER)
        num_m = gl.cdiv(M, BLOCK_M)
        num_n = gl.cdiv(N, BLOCK_N)
        k_steps = gl.cdiv(K, BLOCK_K)
        first = gl.program_id(0) + CONSUMER * gl.num_programs(0)
        for tile in range(first, num_m * num_n, 2 * gl.num_programs(0)):
            position = (tile - gl.program_id(0)) // gl.num_programs(0) * k_steps
            acc = gl.zeros((BLOCK_M, BLOCK_N), dtype=gl.float32, layout=layout)
            for k in range(k_steps):
                stage = position % STAGES
                mbarrier.wait(ready.index(stage), (position // STAGES) & 1)
                acc = warpgroup_mma(x_bufs.index(stage), w_bufs.index(stage).permute((1, 0)), acc, is_async=True)
                acc = warpgroup_mma_wait(1, (acc, ))  # the previous step's MMA is done with its stage
                mbarrier.arrive(empty.index((position + STAGES - 1) % STAGES), pred=k > 0)
                position += 1
            acc = warpgroup_mma_wait(0, (acc, ))
            mbarrier.arrive(empty.index((position + STAGES - 1) % STAGES))

            block_m, block_n = _tile_coordinates(tile, num_m, num_n, GROUP_M)
            if HAS_BIAS:
                offs_n = block_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, layout))
                acc += gl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(gl.float32)[None, :]
            if GELU == "erfc_as":  # Abramowitz & Stegun 7.1.26, as triton_gelu_gemm._bias_gelu
                z = gl.abs(acc) * 0.7071067811865476
                t = 1.0 / (1.0 + 0.3275911 * z)
                poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027
                                                                                      + t * 1.061405429))))
                half_erfc = 0.5 * poly * gl.exp(-z * z)
                acc = acc * gl.where(acc >= 0, 1.0 - half_erfc, half_erfc)
            tma.store_wait(0)  # this consumer's previous tile has left o_buf
            o_buf.store(acc.to(o_desc.dtype))
            fence_async_shared()
            tma.async_copy_shared_to_global(o_desc, [block_m * BLOCK_M, block_n * BLOCK_N], o_buf)
        tma.store_wait(0)

    @gluon.jit
    def _gemm_gelu_pingpong_kernel(x_desc, w_desc, o_desc, b_ptr, M, N, K, HAS_BIAS: gl.constexpr,
                                   GELU: gl.constexpr, GROUP_M: gl.constexpr, STAGES: gl.constexpr,
                                   CONSUMER_REGISTERS: gl.constexpr, LOADER_REGISTERS: gl.constexpr):
        dtype: gl.constexpr = x_desc.dtype
        x_bufs = gl.allocate_shared_memory(dtype, [STAGES] + x_desc.block_type.shape, x_desc.layout)
        w_bufs = gl.allocate_shared_memory(dtype, [STAGES] + w_desc.block_type.shape, w_desc.layout)
        o_bufs = gl.allocate_shared_memory(dtype, [2] + o_desc.block_type.shape, o_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)
            mbarrier.init(empty.index(i), count=1)
        fence_async_shared()  # the initialized barriers, visible to the TMA unit
        gl.warp_specialize([
            (_consumer, (x_bufs, w_bufs, ready, empty, o_bufs, o_desc, b_ptr, M, N, K, HAS_BIAS, GELU, GROUP_M, STAGES,
                         0)),
            (_consumer, (x_bufs, w_bufs, ready, empty, o_bufs, o_desc, b_ptr, M, N, K, HAS_BIAS, GELU, GROUP_M, STAGES,
                         1)),
            (_loader, (x_desc, w_desc, x_bufs, w_bufs, ready, empty, M, N, K, GROUP_M, STAGES)),
        ], [4, 1], [CONSUMER_REGISTERS, LOADER_REGISTERS])


def linear_gelu_gluon(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: str = "erfc_as",
                      stages: int = STAGES, consumer_registers: int = CONSUMER_REGISTERS,
                      loader_registers: int = LOADER_REGISTERS) -> torch.Tensor:
    """`gelu(x @ weight.T + bias)` as `[..., N]` (bf16 or fp16; `gelu=""` for the plain linear layer), through
    `_gemm_gelu_pingpong_kernel` (Hopper). `x`'s flattened rows and `weight` need unit stride along K and 16-byte
    aligned rows (TMA)."""
    if gelu not in ("erfc_as", ""):
        raise ValueError(f"gelu must be 'erfc_as' or '', got {gelu!r}")
    if x.dtype not in (torch.bfloat16, torch.float16) or weight.dtype != x.dtype:
        raise ValueError(f"half-precision x and weight of one dtype expected, got {x.dtype} and {weight.dtype}")
    flat = x.reshape(-1, x.shape[-1])
    (m, k), n = flat.shape, weight.shape[0]
    out = torch.empty(m, n, device=x.device, dtype=x.dtype)
    if m == 0:
        return out.view(*x.shape[:-1], n)
    element = gl.bfloat16 if x.dtype == torch.bfloat16 else gl.float16
    x_layout = gl.NVMMASharedLayout.get_default_for([BLOCK_M, BLOCK_K], element)
    w_layout = gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_K], element)
    o_layout = gl.NVMMASharedLayout.get_default_for([BLOCK_M, BLOCK_N], element)
    x_desc = TensorDescriptor.from_tensor(flat, [BLOCK_M, BLOCK_K], x_layout)
    w_desc = TensorDescriptor.from_tensor(weight, [BLOCK_N, BLOCK_K], w_layout)
    o_desc = TensorDescriptor.from_tensor(out, [BLOCK_M, BLOCK_N], o_layout)
    tiles = triton.cdiv(m, BLOCK_M) * triton.cdiv(n, BLOCK_N)
    _gemm_gelu_pingpong_kernel[(min(tiles, triton_gelu_gemm._multiprocessors(x.device)), )](
        x_desc, w_desc, o_desc, bias if bias is not None else weight, m, n, k,  # weight: a never-read placeholder
        HAS_BIAS=bias is not None, GELU=gelu, GROUP_M=GROUP_M, STAGES=stages,
        CONSUMER_REGISTERS=consumer_registers, LOADER_REGISTERS=loader_registers, num_warps=4,
        # 3 warpgroups x 128 threads x 168 registers (64512 of the 65536); once the partitions start, the default
        # one (consumer 0) has what the workers leave: 3 x 168 - 232 - 40 = 232 (setmaxnreg in the PTX)
        maxnreg=(consumer_registers * 2 + loader_registers) // 3,
    )
    return out.view(*x.shape[:-1], n)


# (M, N, K, gelu, stages): one tile and one K-step; one tile, 16 K-steps; with the GELU; two programs of one tile (one
# consumer each); 132 programs of two tiles (both consumers), one K-step, then 16; the ViT-L shape with two stages
DIAGNOSE_CASES = [(128, 128, 64, "", 4), (128, 128, 1024, "", 4), (128, 128, 1024, "erfc_as", 4),
                  (256, 128, 1024, "erfc_as", 4), (33792, 128, 64, "erfc_as", 4), (33792, 128, 1024, "erfc_as", 4),
                  (8197, 4096, 1024, "erfc_as", 2)]


def check_case(m: int, n: int, k: int, gelu: str, stages: int) -> int:
    """One launch against fp32 PyTorch; prints the largest difference."""
    torch.manual_seed(0)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    weight = (torch.randn(n, k, device="cuda") / k ** 0.5).bfloat16()
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    out = linear_gelu_gluon(x, weight, bias, gelu=gelu, stages=stages).float()
    expected = x.float() @ weight.float().T + bias.float()
    expected = F.gelu(expected) if gelu else expected
    difference = (out - expected).abs().max().item()
    print(f"M={m} N={n} K={k} gelu={gelu!r} stages={stages}: max |difference| {difference:.3g}")
    return 0


def diagnose() -> int:
    """Each of DIAGNOSE_CASES in a fresh process (a faulting launch poisons the CUDA context), 30 s each."""
    import os
    import subprocess

    environment = {**os.environ, "CUDA_LAUNCH_BLOCKING": "1"}
    for m, n, k, gelu, stages in DIAGNOSE_CASES:
        try:
            run = subprocess.run([sys.executable, __file__, "--case", f"{m},{n},{k},{gelu},{stages}"],
                                 capture_output=True, text=True, timeout=30, env=environment)
            lines = (run.stdout + run.stderr).strip().splitlines()
            print(f"({m}, {n}, {k}, {gelu!r}, {stages}) exit {run.returncode}: {lines[-1] if lines else ''}",
                  flush=True)
        except subprocess.TimeoutExpired:
            print(f"({m}, {n}, {k}, {gelu!r}, {stages}) hung (30 s)", flush=True)
    return 0


def main(argv=None) -> int:
    from benchmarks.bench_linear_attention import graph_ms
    from jetvit_hf.io import atomic_write_json

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=8197)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--output", default=None)
    parser.add_argument("--diagnose", action="store_true", help="launch small cases, each in its own process")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # M,N,K,gelu,stages: one --diagnose case
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() or gluon is None:
        print("gluon_gelu_gemm: needs a CUDA GPU and Triton with Gluon", file=sys.stderr)
        return 2
    if args.diagnose:
        return diagnose()
    if args.case:
        m, n, k, gelu, stages = args.case.split(",")
        return check_case(int(m), int(n), int(k), gelu, int(stages))
    torch.manual_seed(0)
    with torch.device("cuda"):
        x = torch.randn(args.batch * args.tokens, args.hidden, dtype=torch.bfloat16)
        up = torch.nn.Linear(args.hidden, 4 * args.hidden).bfloat16()
    with torch.inference_mode():
        pre = x.double() @ up.weight.double().T + up.bias.double()
        expected = {"erfc_as": F.gelu(pre), "": pre}
        variants = {
            "cublas_gemm_bias_no_gelu": lambda: up(x),
            "cublas_gemm_bias_then_gelu": lambda: F.gelu(up(x)),
            "addmm_tanh_epilogue": lambda: torch._addmm_activation(up.bias, x, up.weight.t(), use_gelu=True),
            "triton_tma_erfc_as_epilogue": lambda: triton_gelu_gemm.linear_gelu_triton_tma(x, up.weight, up.bias),
            "gluon_pingpong_no_gelu": lambda: linear_gelu_gluon(x, up.weight, up.bias, gelu=""),
            "gluon_pingpong_erfc_as_epilogue": lambda: linear_gelu_gluon(x, up.weight, up.bias),
        }
        errors = {}
        for name, fn in variants.items():
            reference = expected["" if "no_gelu" in name else "erfc_as"]
            errors[name] = ((fn().double() - reference).norm() / reference.norm()).item()
            print(f"{name:34s} relative error vs float64 {errors[name]:.2e}", flush=True)
        ms = {}
        for name, fn in variants.items():
            ms[name] = graph_ms(fn)
            print(f"{name:34s} {ms[name]:.3f} ms", flush=True)
    result = {"command": " ".join(sys.argv), "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "triton": triton.__version__, "shape": {"tokens": args.batch * args.tokens, "in": args.hidden,
                                                      "out": 4 * args.hidden, "dtype": "bfloat16"},
              "config": {"block": [BLOCK_M, BLOCK_N, BLOCK_K], "stages": STAGES, "group_m": GROUP_M,
                         "consumer_registers": CONSUMER_REGISTERS, "loader_registers": LOADER_REGISTERS},
              "ms": ms, "relative_error_vs_float64": errors}
    if args.output:
        atomic_write_json(args.output, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
