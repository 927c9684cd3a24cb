"""Shared pieces of the kernel experiments: random attention inputs at a ViT-L shape (16 heads of 64; by default
1024x2048: 4 registers + CLS, a 64x128 grid), as views of one fused QKV projection output, the way the model passes
them to the kernels; interleaved timing; and the whole hybrid timed once per code variant."""
import json
import statistics
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
