"""Throughput of the batched scene renderer (`jetvit_hf.data.render`): scenes per second, end to end (layouts drawn on
the CPU from their seeds, then rendered on the device), and the layout sampling alone.

    python benchmarks/bench_render.py --resolution 518x518 --batch-size 64 --device cuda --seconds 10 --output out.json
    python benchmarks/bench_render.py --resolution 518x518 --batch-size 64 --device cuda --compiled --output out.json
    python benchmarks/bench_render.py --resolution 32x48 --batch-size 4 --device cpu --seconds 1
"""

import argparse
import json
import platform
import shlex
import statistics
import sys
import time

import torch

from jetvit_hf.data.render import render_layouts, scene_layouts
from jetvit_hf.io import atomic_write_json


def _resolution(text: str) -> tuple[int, int]:
    try:
        height, width = (int(side) for side in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH, e.g. 518x518, got {text!r}") from None
    return height, width


def _parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=_resolution, default=(518, 518), help="HEIGHTxWIDTH (even sides)")
    parser.add_argument("--batch-size", type=int, default=64, help="scenes per render call")
    parser.add_argument("--chunk-size", type=int, default=None, help="images per chunk (default: the renderer's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compiled", action="store_true", help="render through torch.compile (compiled in warm-up)")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to time (after one warm-up batch)")
    parser.add_argument("--output", default=None, help="write the result here as JSON")
    return parser.parse_args(argv)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_batches(args: argparse.Namespace, device: torch.device) -> list[float]:
    """Seconds per batch of `--batch-size` new scenes, for at least `--seconds` in all (one warm-up batch first)."""
    height, width = args.resolution
    times, batch = [], 0
    while batch == 0 or sum(times) < args.seconds:
        seeds = range(batch * args.batch_size, (batch + 1) * args.batch_size)
        start = time.perf_counter()
        render_layouts(scene_layouts(seeds), height, width, device, args.chunk_size, args.compiled)
        _synchronize(device)
        if batch > 0:
            times.append(time.perf_counter() - start)
        batch += 1
    return times


def main(argv=None) -> int:
    args = _parse(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = _time_batches(args, device)
    start = time.perf_counter()
    scene_layouts(range(args.batch_size))
    layout_seconds = time.perf_counter() - start
    height, width = args.resolution
    result = {
        "command": shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["bench_render.py", *argv]),
        "device": _device_name(device),
        "torch": torch.__version__,
        "resolution": [height, width],
        "batch_size": args.batch_size,
        "chunk_size": args.chunk_size,
        "compiled": args.compiled,
        "batches_timed": len(times),
        "scenes_per_second": args.batch_size * len(times) / sum(times),
        "median_seconds_per_batch": statistics.median(times),
        "layout_sampling_scenes_per_second": args.batch_size / layout_seconds,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }
    print(json.dumps(result, indent=1))
    if args.output:
        atomic_write_json(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
