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
- epilogue: bias, exact GELU, bf16, into the consumer's own output buffer in shared memory and out by a TMA store,
  which completes while the next tile's main loop runs. Two forms of the exact GELU: `erfc_as` (A&S 7.1.26 erfc, as
  `triton_gelu_gemm._bias_gelu`: a reciprocal, an exp and ~16 FMAs) and `erf_logistic`, x Phi(x) = x / (1 + 2^(x
  P(x^2))) with P of degree 6 least-squares fitted to -log2(e) logit(Phi) (max |error| 5.9e-7 in fp32 over
  [-40, 40], against tanh-GELU's 4.7e-4; ~12 instructions);
- the consumers take turns on the ring (an `order` barrier pair): without them the first launch faulted, because a
  consumer waited on a stage's `ready` barrier phases ahead of the loader, and a barrier's parity cannot tell phase n
  from n + 2.

`python benchmarks/experiments/gluon_gelu_gemm.py --batch 8 --sweep --output sweep.json` checks it against float64
and times it beside cuBLAS + GELU, the tanh epilogue and the Triton TMA kernel (CUDA-graph medians), then sweeps ring
depths and epilogues, each configuration in its own process; `--model-bench dinov3-l:1024x2048 --model-config
128,128,64,5,erf_logistic` also times the whole hybrid with it patched into the GELU epilogue.

Findings (H200, `h200_gluon_gelu_gemm.json`), ViT-L up-projection at batch 8 (65576 x 1024 -> 4096):
- a ReLU epilogue costs nothing (0.911 against 0.899 ms with none, 5 stages): the ping-pong hides a cheap epilogue.
  The exact GELU is not hidden in proportion to its instructions: +0.165 ms as A&S 7.1.26, +0.26 as A&S 7.1.28 (one
  MUFU op fewer, more FMAs), +0.080 as `erf_logistic`: the epilogue's ALU work slows the other warpgroup's MMAs;
- best: 128 x 128 x 64, 5 stages, `erf_logistic`: 0.978 ms, against cuBLAS + the GELU pass 1.202, cuBLASLt's tanh
  epilogue 0.943 and cuBLAS without a GELU 0.853; at batch 1, 0.128 against 0.156 / 0.118 / 0.097;
- whole DINOv3-L hybrid at 1024 x 2048 (bs1 latency / bs8 time): torch exact 14.10 / 105.35 ms, this kernel 13.05 /
  100.68, tanh epilogue 13.31 / 97.97, torch exact again 13.63 / 105.28 (one process, in that order).
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script, and its --sweep subprocesses

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
# epilogues: none, a ReLU (the cheapest: what hiding an epilogue costs) and the exact GELU in two forms
GELUS = ("", "relu", "erfc_as", "erf_logistic")

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
    def _consumer(x_bufs, w_bufs, ready, empty, order, o_bufs, o_desc, b_ptr, M, N, K, HAS_BIAS: gl.constexpr,
                  GELU: gl.constexpr, GROUP_M: gl.constexpr, STAGES: gl.constexpr, CONSUMER: gl.constexpr):
        """Main loop and epilogue of this program's tiles CONSUMER, CONSUMER + 2, ... (one warpgroup).

        The two consumers take turns on the ring: consumer c starts a tile's main loop only after the other has
        issued all of its previous tile's MMAs (`order[c]`, which the other arrives on). Without the turns, a
        consumer would wait on a stage's `ready` barrier several phases ahead of the loader, and an mbarrier's
        parity cannot tell phase n from phase n + 2: it would read another tile's data."""
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
        turn = 0
        for tile in range(first, num_m * num_n, 2 * gl.num_programs(0)):
            # consumer 0's first wait is on a fresh barrier's parity 1, which passes: it goes first
            mbarrier.wait(order.index(CONSUMER), (turn & 1) ^ (1 - CONSUMER))
            position = (tile - gl.program_id(0)) // gl.num_programs(0) * k_steps
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
            elif GELU == "erf_logistic":  # x Phi(x) = x / (1 + 2^(x P(x^2))), P fitted: see the module docstring
                s = acc * acc
                p = -5.2862860076e-09
                p = 3.8896500335e-07 + s * p
                p = -1.1525755058e-05 + s * p
                p = 0.00016001541863 + s * p
                p = 9.3093183449e-05 + s * p
                p = -0.10483433137 + s * p
                p = -2.3022094578 + s * p
                acc = acc / (1.0 + gl.exp2(acc * p))
            elif GELU == "relu":  # the cheapest epilogue, to measure how much of the GELU's cost is hidden
                acc = gl.maximum(acc, 0.0)
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
        order = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)
            mbarrier.init(empty.index(i), count=1)
        for i in gl.static_range(2):
            mbarrier.init(order.index(i), count=1)
        fence_async_shared()  # the initialized barriers, visible to the TMA unit
        gl.warp_specialize([
            (_consumer, (x_bufs, w_bufs, ready, empty, order, o_bufs, o_desc, b_ptr, M, N, K, HAS_BIAS, GELU,
                         GROUP_M, STAGES, 0)),
            (_consumer, (x_bufs, w_bufs, ready, empty, order, o_bufs, o_desc, b_ptr, M, N, K, HAS_BIAS, GELU,
                         GROUP_M, STAGES, 1)),
            (_loader, (x_desc, w_desc, x_bufs, w_bufs, ready, empty, M, N, K, GROUP_M, STAGES)),
        ], [4, 1], [CONSUMER_REGISTERS, LOADER_REGISTERS])


def linear_gelu_gluon(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: str = "erfc_as",
                      block: tuple[int, int, int] = (BLOCK_M, BLOCK_N, BLOCK_K), stages: int = STAGES,
                      consumer_registers: int = CONSUMER_REGISTERS,
                      loader_registers: int = LOADER_REGISTERS) -> torch.Tensor:
    """`gelu(x @ weight.T + bias)` as `[..., N]` (bf16 or fp16; `gelu=""` for the plain linear layer), through
    `_gemm_gelu_pingpong_kernel` (Hopper). `x`'s flattened rows and `weight` need unit stride along K and 16-byte
    aligned rows (TMA)."""
    if gelu not in GELUS:
        raise ValueError(f"gelu must be one of {GELUS}, got {gelu!r}")
    if x.dtype not in (torch.bfloat16, torch.float16) or weight.dtype != x.dtype:
        raise ValueError(f"half-precision x and weight of one dtype expected, got {x.dtype} and {weight.dtype}")
    flat = x.reshape(-1, x.shape[-1])
    (m, k), n = flat.shape, weight.shape[0]
    out = torch.empty(m, n, device=x.device, dtype=x.dtype)
    if m == 0:
        return out.view(*x.shape[:-1], n)
    element = gl.bfloat16 if x.dtype == torch.bfloat16 else gl.float16
    block_m, block_n, block_k = block
    x_layout = gl.NVMMASharedLayout.get_default_for([block_m, block_k], element)
    w_layout = gl.NVMMASharedLayout.get_default_for([block_n, block_k], element)
    o_layout = gl.NVMMASharedLayout.get_default_for([block_m, block_n], element)
    x_desc = TensorDescriptor.from_tensor(flat, [block_m, block_k], x_layout)
    w_desc = TensorDescriptor.from_tensor(weight, [block_n, block_k], w_layout)
    o_desc = TensorDescriptor.from_tensor(out, [block_m, block_n], o_layout)
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    _gemm_gelu_pingpong_kernel[(min(tiles, triton_gelu_gemm._multiprocessors(x.device)), )](
        x_desc, w_desc, o_desc, bias if bias is not None else weight, m, n, k,  # weight: a never-read placeholder
        HAS_BIAS=bias is not None, GELU=gelu, GROUP_M=GROUP_M, STAGES=stages,
        CONSUMER_REGISTERS=consumer_registers, LOADER_REGISTERS=loader_registers, num_warps=4,
        # 3 warpgroups x 128 threads x 168 registers (64512 of the 65536); once the partitions start, the default
        # one (consumer 0) has what the workers leave: 3 x 168 - 232 - 40 = 232 (setmaxnreg in the PTX)
        maxnreg=(consumer_registers * 2 + loader_registers) // 3,
    )
    return out.view(*x.shape[:-1], n)


MODEL_BENCH_SETTINGS = {}  # linear_gelu_gluon's keyword arguments in the --model-bench runs (--model-config)


@torch.library.custom_op("jetvit_experiments::linear_gelu_gluon", mutates_args=())
def linear_gelu_gluon_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """`linear_gelu_gluon` (exact GELU) as an op `torch.compile` keeps whole."""
    return linear_gelu_gluon(x, weight, bias, **MODEL_BENCH_SETTINGS)


@linear_gelu_gluon_op.register_fake
def _(x, weight, bias):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def gluon_addmm_activation(bias, flat, weight_t, beta=1, alpha=1, use_gelu=False):
    """A stand-in for `torch._addmm_activation(bias, x, weight.T, use_gelu=True)` (the model's GELU epilogue) that
    computes the exact GELU through the ping-pong kernel: `--model-bench` patches it in."""
    if not use_gelu or beta != 1 or alpha != 1:
        raise ValueError("gluon_addmm_activation stands in for the GELU epilogue's call only")
    return linear_gelu_gluon_op(flat, weight_t.t(), bias)


# (BLOCK_M, BLOCK_N, BLOCK_K, stages) that --sweep times; each fits 227 KiB of shared memory
SWEEP_CONFIGS = [(128, 128, 64, 4), (128, 128, 64, 5)]


def time_config(block_m: int, block_n: int, block_k: int, stages: int, rows: int, hidden: int) -> int:
    """Prints one JSON line: medians (ms) of the up-projection through this config with each of GELUS, and each one's
    relative error against float64."""
    import json

    from benchmarks.bench_linear_attention import graph_ms

    torch.manual_seed(0)
    x = torch.randn(rows, hidden, device="cuda", dtype=torch.bfloat16)
    weight = (torch.randn(4 * hidden, hidden, device="cuda") / hidden ** 0.5).bfloat16()
    bias = torch.randn(4 * hidden, device="cuda", dtype=torch.bfloat16)
    settings = {"block": (block_m, block_n, block_k), "stages": stages}
    pre = x.double() @ weight.double().T + bias.double()
    references = {"": pre, "relu": pre.relu(), "erfc_as": F.gelu(pre), "erf_logistic": F.gelu(pre)}
    errors = {gelu or "none": ((linear_gelu_gluon(x, weight, bias, gelu=gelu, **settings).double() - references[gelu])
                               .norm() / references[gelu].norm()).item() for gelu in GELUS}
    ms = {gelu or "none": graph_ms(lambda gelu=gelu: linear_gelu_gluon(x, weight, bias, gelu=gelu, **settings))
          for gelu in GELUS}
    print(json.dumps({"block": [block_m, block_n, block_k], "stages": stages, "ms": ms,
                      "relative_error_vs_float64": errors}))
    return 0


def sweep(rows: int, hidden: int) -> list[dict]:
    """`time_config` of each of SWEEP_CONFIGS in its own process (a config that faults loses only itself)."""
    import json
    import subprocess

    results = []
    for config in SWEEP_CONFIGS:
        command = [sys.executable, __file__, "--time-config", ",".join(map(str, config)), "--tokens", str(rows),
                   "--batch", "1", "--hidden", str(hidden)]
        try:
            run = subprocess.run(command, capture_output=True, text=True, timeout=60)
            lines = (run.stdout + run.stderr).strip().splitlines()
            result = json.loads(lines[-1]) if run.returncode == 0 else {"config": config, "error": lines[-1:]}
        except subprocess.TimeoutExpired:
            result = {"config": config, "error": "timed out (60 s)"}
        print(result, flush=True)
        results.append(result)
    return results


def main(argv=None) -> int:
    import contextlib
    import tempfile
    from unittest import mock

    from benchmarks.bench_linear_attention import graph_ms
    from benchmarks.experiments.common import hybrid_bench_runs
    from jetvit_hf.io import atomic_write_json

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=8197)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--output", default=None)
    parser.add_argument("--model-bench", default=None, metavar="PRESET:HxW",
                        help="also time the whole hybrid with the kernel patched into the GELU epilogue")
    parser.add_argument("--model-config", default="128,128,64,4,erfc_as", metavar="BM,BN,BK,STAGES,GELU",
                        help="the kernel's configuration in the --model-bench runs")
    parser.add_argument("--sweep", action="store_true", help="also time SWEEP_CONFIGS, each in its own process")
    parser.add_argument("--time-config", default=None, help=argparse.SUPPRESS)  # BM,BN,BK,stages: one --sweep config
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() or gluon is None:
        print("gluon_gelu_gemm: needs a CUDA GPU and Triton with Gluon", file=sys.stderr)
        return 2
    if args.time_config:
        return time_config(*map(int, args.time_config.split(",")), args.batch * args.tokens, args.hidden)
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
            "gluon_pingpong_erf_logistic_epilogue": lambda: linear_gelu_gluon(x, up.weight, up.bias,
                                                                              gelu="erf_logistic"),
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
    if args.sweep:
        result["sweep"] = sweep(args.batch * args.tokens, args.hidden)
    if args.model_bench:
        *sizes, gelu = args.model_config.split(",")
        MODEL_BENCH_SETTINGS.update(block=tuple(map(int, sizes[:3])), stages=int(sizes[3]), gelu=gelu)
        result["model_config"] = MODEL_BENCH_SETTINGS
        preset, resolution = args.model_bench.split(":")
        plain = (contextlib.nullcontext(), [])
        epilogue = ["--tanh-gelu-epilogue"]
        gluon_patch = mock.patch.object(torch, "_addmm_activation", gluon_addmm_activation)
        with tempfile.TemporaryDirectory() as directory:
            result["model_bench"] = hybrid_bench_runs(preset, resolution, Path(directory), {
                "torch exact": plain, f"gluon ping-pong, {gelu} epilogue": (gluon_patch, epilogue),
                "cublaslt tanh epilogue (approximation)": (contextlib.nullcontext(), epilogue),
                "torch exact again": plain})
    if args.output:
        atomic_write_json(args.output, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
