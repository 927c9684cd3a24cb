"""Experiment: where a forward's time goes between its kernels. The model is captured as `jetvit bench`'s one CUDA
graph (`--compile-mode cuda-graph`), one replay is profiled, and its kernels are laid on a timeline: the span from the
first kernel's start to the last one's end, the sum of kernel times, and the idle gaps between consecutive kernels,
totalled by the pair of kernels on either side; and, timed with CUDA events, one call from an idle GPU against the
graph's replay alone, the replay after other pending work, and replays queued back to back (`launch_costs`); then
the profile once more, and the SM clock and power (`GpuStateSampler`: nvidia-smi every 20 ms) during each of the
three phases. Its three outputs come from successive versions of this script (`README.md` says which has what).

Why: in the DINOv3-L run (`results/h200_speed_round2/dinov3l_1024x2048_cuda_graph.json`) the hybrid's batch-1
latency is 12.31 ms against 11.50 ms of kernels, and all-full's 26.19 against 24.79. If that difference were gaps at
kernel boundaries, shortening them (fewer kernels, programmatic dependent launch) would be a lever the kernels' own
speed does not show. It is not: the gaps are 0.26-0.30 ms, and the rest is the clock, which drops once the GPU
reaches its power limit.

    python benchmarks/experiments/graph_timeline.py --output graph_timeline.json   # on a CUDA GPU
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `benchmarks.*`

from jetvit_hf.bench.device import GpuStateSampler, gpu_uuid  # noqa: E402
from jetvit_hf.bench.models import _model_factories  # noqa: E402
from jetvit_hf.bench.specs import _hybrid_types, resolve_model_spec  # noqa: E402
from jetvit_hf.bench.timing import _maybe_compile, _settings  # noqa: E402
from jetvit_hf.io import atomic_write_json  # noqa: E402


def kernel_timeline(fn) -> tuple[list[tuple[float, float, str]], float | None]:
    """`(start_us, end_us, name)` of the CUDA kernels of one profiled call of `fn`, in start order, and the start of
    its `cudaGraphLaunch` on the host's clock (None without one)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels = [(e.time_range.start, e.time_range.end, e.name) for e in prof.events()
               if e.device_type == DeviceType.CUDA and "memcpy" not in e.name.lower()
               and "memset" not in e.name.lower()]
    launches = [e.time_range.start for e in prof.events() if e.name == "cudaGraphLaunch"]
    return sorted(kernels), (launches[0] if launches else None)


def launch_costs(forward, pixels, rounds: int = 30) -> dict:
    """Medians over `rounds` (interleaved) of CUDA events around work queued on an idle GPU:
    - `call_ms`: one call (what `jetvit bench` reports as latency);
    - `replay_ms`: the graph's replay alone (no input copy, no Python wrapper);
    - `copy_then_replay_ms`: the input copy and the replay, without the wrapper's Python;
    - `tiny_kernel_then_replay_ms`: a one-element kernel, then the replay (does pending work delay the graph?);
    - `copy_wait_replay_ms`: the input copy, the host waiting for it, then the replay on an idle stream;
    - `queued_ms`: per replay, 10 replays queued back to back;
    and the host's time to return from one call (`cpu_call_us`) and from one replay (`cpu_replay_us`)."""
    flag = torch.zeros(1, device=pixels.device)
    static = forward.inputs[0]
    variants = {
        "call_ms": (lambda: forward(pixel_values=pixels), 1),
        "replay_ms": (forward.graph.replay, 1),
        "copy_then_replay_ms": (lambda: (static.copy_(pixels), forward.graph.replay()), 1),
        "tiny_kernel_then_replay_ms": (lambda: (flag.add_(1), forward.graph.replay()), 1),
        "copy_wait_replay_ms": (lambda: (static.copy_(pixels), torch.cuda.current_stream().synchronize(),
                                         forward.graph.replay()), 1),
        "queued_ms": (forward.graph.replay, 10),
    }
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = {key: [] for key in [*variants, "cpu_call_us", "cpu_replay_us"]}
    for _ in range(rounds):
        for key, (fn, repeats) in variants.items():
            torch.cuda.synchronize()
            start.record()
            for _ in range(repeats):
                fn()
            end.record()
            end.synchronize()
            times[key].append(start.elapsed_time(end) / repeats)
        for key, fn in (("cpu_call_us", lambda: forward(pixel_values=pixels)), ("cpu_replay_us", forward.graph.replay)):
            torch.cuda.synchronize()
            begin = time.perf_counter()
            fn()
            times[key].append((time.perf_counter() - begin) * 1e6)
    return {key: round(statistics.median(values), 4) for key, values in times.items()}


def short(name: str) -> str:
    return name.split("(")[0][:60]


def summarize(timeline: list, launch_start: float | None) -> dict:
    """Span, kernel time and the gaps between consecutive kernels (negative where two overlap), in total and by the
    pair of kernels around them."""
    gaps = [(b[0] - a[1], short(a[2]), short(b[2])) for a, b in zip(timeline, timeline[1:])]
    by_pair = {}
    for gap, before, after in gaps:
        count, total = by_pair.get((before, after), (0, 0.0))
        by_pair[(before, after)] = (count + 1, total + gap)
    top = sorted(by_pair.items(), key=lambda kv: -kv[1][1])[:15]
    widths = [g for g, _, _ in gaps]
    return {
        "kernels": len(timeline),
        "span_ms": round((timeline[-1][1] - timeline[0][0]) / 1e3, 4),
        "graph_launch_to_first_kernel_us": None if launch_start is None else round(timeline[0][0] - launch_start, 1),
        "kernel_ms": round(sum(end - start for start, end, _ in timeline) / 1e3, 4),
        "gap_ms": round(sum(widths) / 1e3, 4),
        "gap_us_median": round(statistics.median(widths), 2),
        "gap_us_p90": round(sorted(widths)[int(0.9 * len(widths))], 2),
        "top_gaps": [{"before": b, "after": a, "count": c, "total_us": round(t, 1), "mean_us": round(t / c, 2)}
                     for (b, a), (c, t) in top],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="dinov3-l")
    parser.add_argument("--resolution", default="1024x2048")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--baselines", default="jetvit-full", help="'jetvit-full' or '' (the hybrid alone)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.resolution.split("x"))
    spec = resolve_model_spec(args.preset, None, None, None)
    types, _ = _hybrid_types(spec, None)
    settings = _settings("cuda", "bfloat16", None, None, True, "cuda-graph", None, False)
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "command": " ".join(sys.argv),
              "preset": args.preset, "resolution": args.resolution, "models": {}}
    factories = _model_factories(spec, types, tuple(b for b in args.baselines.split(",") if b), settings)
    with torch.inference_mode(), GpuStateSampler(gpu_uuid(settings.device)) as clocks:
        for name, (description, build) in factories.items():
            model = build(settings.device, settings.dtype)
            forward = _maybe_compile(model, settings)  # `jetvit bench`'s compile and CUDA graph
            for batch in (int(b) for b in args.batch_sizes.split(",")):
                pixels = torch.randn(batch, 3, height, width, device="cuda", dtype=settings.dtype)
                for _ in range(3):
                    forward(pixel_values=pixels)
                stamps = [time.time()]
                summary = summarize(*kernel_timeline(lambda: forward(pixel_values=pixels)))
                stamps.append(time.time())
                summary["launch"] = launch_costs(forward, pixels)
                stamps.append(time.time())
                # the same profile again, right after the timed rounds: does the span depend on what ran before?
                after = summarize(*kernel_timeline(lambda: forward(pixel_values=pixels)))
                stamps.append(time.time())
                summary["after_timing"] = {key: after[key] for key in ("span_ms", "kernel_ms", "gap_ms")}
                summary["gpu_state"] = {phase: clocks.summary(begin, end) for phase, begin, end in zip(
                    ("first_profile", "launch_costs", "profile_after_timing"), stamps, stamps[1:])}
                result["models"][f"{name}_bs{batch}"] = {"description": description, **summary}
                print(name, batch, {k: v for k, v in summary.items() if k != "top_gaps"}, flush=True)
                for row in summary["top_gaps"][:8]:
                    print("   ", row, flush=True)
            model = forward = None  # free this model's graph pool before the next is built
            torch.compiler.reset()
            torch.cuda.empty_cache()
    if args.output:
        atomic_write_json(args.output, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
