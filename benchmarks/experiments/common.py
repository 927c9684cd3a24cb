"""Shared pieces of the kernel experiments: random attention inputs at a ViT-L shape (16 heads of 64; by default
1024x2048: 4 registers + CLS, a 64x128 grid), as views of one fused QKV projection output, the way the model passes
them to the kernels; interleaved timing; and the whole hybrid timed once per code variant."""
import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

HEADS, HEAD_DIM, NUM_PREFIX, GRID = 16, 64, 5, (64, 128)


def vit_l_inputs(batch: int, grid: tuple[int, int] = GRID, num_prefix: int = NUM_PREFIX):
    """`(q, k, v, cos, sin, conv_weight)` in bf16 on the GPU, for `num_prefix` tokens and a `grid` of patches."""
    qkv = torch.randn(batch, num_prefix + grid[0] * grid[1], 3, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    q, k, v = qkv.unbind(2)
    angles = torch.rand(grid[0] * grid[1], HEAD_DIM // 2, device="cuda") * 6.3
    cos, sin = torch.cos(angles).repeat(1, 2).bfloat16(), torch.sin(angles).repeat(1, 2).bfloat16()
    conv_weight = torch.randn(batch, HEADS * HEAD_DIM, 3, 3, device="cuda", dtype=torch.bfloat16) * 0.1
    return q, k, v, cos, sin, conv_weight


def interleaved_medians(timers: dict, rounds: int) -> tuple[dict, dict]:
    """Times every `timers` entry (a callable returning µs) once per round, interleaved so that clock drift hits all
    alike; returns the median and the spread (max - min) of each, rounded to 0.1 µs."""
    times = {name: [] for name in timers}
    for _ in range(rounds):
        for name, timer in timers.items():
            times[name].append(timer())
    return ({name: round(statistics.median(t), 1) for name, t in times.items()},
            {name: round(max(t) - min(t), 1) for name, t in times.items()})


def hybrid_bench_runs(preset: str, resolution: str, directory: Path, runs: dict) -> dict:
    """The hybrid's `jetvit bench` (alone, CUDA graphs: bs1 latency and batch-8 time, medians in ms) once per entry
    of `runs`, `{name: (patch, extra jetvit bench arguments)}`, in this process and in order: `patch` is a context
    manager in force while that run builds and times the model (e.g. `unittest.mock.patch.object` of the function a
    variant replaces). Put a plain run first and last: the two bound the drift between runs."""
    from jetvit_hf.cli import main as jetvit

    results = {}
    for index, (name, (patch, extra)) in enumerate(runs.items()):
        output = directory / f"bench_{index}.json"
        with patch:
            status = jetvit(["bench", "--preset", preset, "--resolution", resolution, "--batch-size", "8",
                             "--compile-mode", "reduce-overhead", "--baselines", "none", "--no-profile",
                             "--output", str(output), *extra])
        torch.compiler.reset()
        result = json.loads(output.read_text())["results"]["jetvit"] if status == 0 else {}
        results[name] = {key: result.get(key, {}).get("median_ms") for key in ("latency", "throughput")}
        print(f"{preset} {resolution} hybrid, {name}: {results[name]}", flush=True)
    return {"preset": preset, "resolution": resolution, "median_ms": results}


def kernel_experiment_parser(description: str, check: bool = False) -> argparse.ArgumentParser:
    """The command line the kernel experiments share: `--compile-only` (sm_90 on the CPU), batch sizes, interleaved
    rounds, output JSON, and with `check` a `--check` of the variants on the CPU."""
    parser = argparse.ArgumentParser(description=description)
    if check:
        parser.add_argument("--check", action="store_true", help="check the variants against the shipped kernel (fp32)")
    parser.add_argument("--compile-only", action="store_true", help="compile the variants for sm_90 on the CPU")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", default=None)
    return parser


def print_sm90_resources(variants: dict, label: str = "") -> None:
    """Compiles each `{name: launch}` of `variants` for sm_90 (on the CPU) and prints its registers, spills (stack)
    and shared memory."""
    from sm90_compile import compile_only_for_sm90, resource_usage

    for name, launch in variants.items():
        with compile_only_for_sm90() as compiled:
            launch()
        print(name, *([label] if label else []), resource_usage(compiled[0][1]), flush=True)


def timed_in_graphs(timed: dict, rounds: int, errors: dict, title: str) -> dict:
    """Times each `{name: launch}` of `timed` as `graph_ms` does (CUDA graphs of 20 calls), `rounds` interleaved rounds;
    prints them fastest first with their `errors`, and returns the run's JSON entry."""
    from benchmarks.bench_linear_attention import graph_ms

    medians, spreads = interleaved_medians({name: (lambda fn=fn: 1e3 * graph_ms(fn)) for name, fn in timed.items()},
                                           rounds)
    for name in sorted(medians, key=medians.get):
        print(f"{title} {name:34s} {medians[name]:8.1f} us  (spread {spreads[name]}, diff {errors[name]:.2g})",
              flush=True)
    return {"median_us": medians, "spread_us": spreads, "max_abs_diff_vs_shipped": errors}


def experiment_record(rounds: int, **fields) -> dict:
    """The header of a kernel experiment's JSON: GPU, versions, command and the timing method."""
    import triton

    return {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "command": " ".join(sys.argv), **fields,
            "timing": f"CUDA graph of 20 calls, median of 50 replays, per call; {rounds} interleaved rounds, median",
            "runs": {}}
