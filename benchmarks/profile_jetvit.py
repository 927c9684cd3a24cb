"""Where the time of a JetViT forward goes: a CUDA-kernel profile grouped into GEMMs, attention, JetViT's linear
attention kernels and the rest, next to the GEMM floor (FLOPs of the projections and MLPs at a measured GEMM rate).

    python benchmarks/profile_jetvit.py --layout paper-2full --height 1024 --width 2048 --compile
    python benchmarks/profile_jetvit.py --preset depth-anything-v2-l --height 1022 --width 1358 \
        --compile-mode cuda-graph

Each profiled forward starts on an idle GPU (as `jetvit bench` times latency), so its timeline also splits the
latency into the host's lead before the first kernel, the kernels' busy time and the GPU's idle gaps between them.
"""

import argparse
import statistics
import sys
from collections import defaultdict

import torch

from jetvit_hf.bench import kernel_category
from jetvit_hf.bench.models import build_model, prepare_jetvit
from jetvit_hf.bench.resolution import num_tokens
from jetvit_hf.bench.specs import _config_with, resolve_model_spec
from jetvit_hf.bench.timing import WHOLE_GRAPH_MODE, _maybe_compile, _settings
from jetvit_hf.io import atomic_write_json
from jetvit_hf.layouts import paper_2full_layout


_FORWARD_MARK = "profile_jetvit.forward"


def forward_timeline(events) -> dict:
    """Median over the profiled forwards of: `host_lead` (the forward's call to its first kernel), `kernel_busy`
    (time with a kernel or copy running), `idle_gaps` (between its first and last kernel with nothing running) and
    `tail` (last kernel to the synchronize's return). Each forward is one `_FORWARD_MARK` range ended by a
    synchronize, so its GPU work lies inside that range."""
    from torch.autograd import DeviceType

    forwards = sorted((e.time_range.start, e.time_range.end) for e in events
                      if e.name == _FORWARD_MARK and e.device_type == DeviceType.CPU)
    activity = sorted((e.time_range.start, e.time_range.end) for e in events
                      if e.device_type == DeviceType.CUDA and e.name != _FORWARD_MARK)
    parts = defaultdict(list)
    for begin, finish in forwards:
        inside = [(s, e) for s, e in activity if begin <= s < finish]
        if not inside:
            continue
        busy, covered_to = 0.0, inside[0][0]
        for s, e in inside:
            busy += max(0.0, e - max(s, covered_to))
            covered_to = max(covered_to, e)
        span = covered_to - inside[0][0]
        for name, us in (("host_lead", inside[0][0] - begin), ("kernel_busy", busy), ("idle_gaps", span - busy),
                         ("tail", finish - covered_to), ("forward", finish - begin)):
            parts[name].append(us / 1e3)
    return {name: statistics.median(values) for name, values in parts.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="dinov3-l", help="a `jetvit bench` preset (random weights)")
    parser.add_argument("--layout", default="paper-2full",
                        choices=["paper-2full", "all-full", "all-linear", "all-window"])
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--compile-mode", default="default",
                        choices=["default", "reduce-overhead", "max-autotune", WHOLE_GRAPH_MODE],
                        help="torch.compile mode, or cuda-graph (one CUDA graph per shape), as `jetvit bench`; implies "
                        "--compile")
    parser.add_argument("--top", type=int, default=15, help="how many of the slowest kernels to list")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("profile_jetvit: needs a CUDA GPU", file=sys.stderr)
        return 2
    settings = _settings("cuda", "bfloat16", None, None, args.compile,
                         None if args.compile_mode == "default" else args.compile_mode, None, False)
    spec = resolve_model_spec(args.preset)  # as `jetvit bench` builds it (16-patch windows)
    layers = spec.num_layers
    layouts = {"paper-2full": paper_2full_layout(layers), "all-full": ["full"] * layers,
               "all-linear": ["linear"] * layers, "all-window": ["window"] * layers}
    config = _config_with(spec.jetvit_config, attention_types=layouts[args.layout])
    model = prepare_jetvit(build_model(spec.jetvit_class, config, settings.device, settings.dtype))
    forward = _maybe_compile(model, settings)  # as `jetvit bench` compiles (or captures) it
    pixel_values = torch.randn(args.batch_size, 3, args.height, args.width, device="cuda", dtype=settings.dtype)
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.inference_mode():
        for _ in range(5):
            torch.compiler.cudagraph_mark_step_begin()
            forward(pixel_values)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=activities) as profile:
            for _ in range(5):
                torch.compiler.cudagraph_mark_step_begin()
                with torch.profiler.record_function(_FORWARD_MARK):
                    forward(pixel_values)
                    torch.cuda.synchronize()

    per_kernel = defaultdict(float)
    for event in profile.events():
        if event.device_type == torch.autograd.DeviceType.CUDA and event.name != _FORWARD_MARK:
            per_kernel[event.name] += event.device_time_total / 5 / 1e3  # ms per forward
    timeline = forward_timeline(profile.events())
    groups = defaultdict(float)
    for name, ms in per_kernel.items():
        groups[kernel_category(name)] += ms
    total = sum(groups.values())

    tokens = args.batch_size * num_tokens(config, (args.height, args.width))
    hidden, mlp = config.hidden_size, config.intermediate_size  # q, k, v, output projections and the MLP's two GEMMs
    gemm_flops = 2 * tokens * config.num_hidden_layers * (4 * hidden * hidden + 2 * hidden * mlp)
    a = torch.randn(8192, 1024, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(1024, 4096, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        a @ b
    end.record()
    torch.cuda.synchronize()
    gemm_rate = 20 * 2 * 8192 * 1024 * 4096 / (start.elapsed_time(end) * 1e-3)

    result = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "command": "python benchmarks/profile_jetvit.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "preset": args.preset,
        "model_class": type(model).__name__,
        "layout": args.layout,
        "attention_types": config.attention_types,
        "resolution": [args.height, args.width],
        "batch_size": args.batch_size,
        "compiled": settings.compile,
        "compile_mode": args.compile_mode if settings.compile else None,
        "timeline_ms": timeline,
        "kernel_ms_by_category": dict(groups),
        "kernel_ms_total": total,
        "gemm_floor_ms": gemm_flops / gemm_rate * 1e3,
        "measured_gemm_tflops": gemm_rate / 1e12,
        "top_kernels_ms": dict(sorted(per_kernel.items(), key=lambda kv: -kv[1])[: args.top]),
    }
    print(f"{result['gpu']} {args.preset} {args.layout} {args.height}x{args.width} b{args.batch_size} "
          f"compiled={result['compile_mode'] or False}")
    for name, ms in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"  {name:34s} {ms:8.3f} ms  {100 * ms / total:5.1f}%")
    print(f"  {'total kernel time':34s} {total:8.3f} ms; GEMM floor {result['gemm_floor_ms']:.2f} ms at "
          f"{gemm_rate / 1e12:.0f} TFLOP/s")
    print("  per forward, median of 5 (ms): " + ", ".join(f"{k} {v:.3f}" for k, v in timeline.items()))
    for name, ms in result["top_kernels_ms"].items():
        print(f"    {ms:7.3f} ms  {name[:110]}")
    if args.output:
        atomic_write_json(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
