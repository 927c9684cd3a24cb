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


def max_abs_diffs(timed: dict, reference: str) -> dict:
    """The largest absolute difference of each `{name: launch}` output of `timed` from the `reference` entry's."""
    expected = timed[reference]().float()
    return {name: (fn().float() - expected).abs().max().item() for name, fn in timed.items()}


def timed_against(timed: dict, reference: str, rounds: int, title: str, **fields) -> dict:
    """A run's JSON entry: `fields`, then `timed_in_graphs` of `timed` with each output's `max_abs_diffs` from
    `reference`'s."""
    return {**fields, **timed_in_graphs(timed, rounds, max_abs_diffs(timed, reference), title)}


def experiment_record(rounds: int, **fields) -> dict:
    """The header of a kernel experiment's JSON: GPU, versions, command and the timing method."""
    import triton

    return {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "command": " ".join(sys.argv), **fields,
            "timing": f"CUDA graph of 20 calls, median of 50 replays, per call; {rounds} interleaved rounds, median",
            "runs": {}}


def whole_model_parser(description: str) -> argparse.ArgumentParser:
    """The command line of the experiments on variants of a whole model (`compiled_variants_record`): its preset and
    resolution, the interleaved rounds and the output JSON."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--preset", default="depth-anything-v2-l")
    parser.add_argument("--resolution", default="1022x1358")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--output", default=None)
    return parser


def compiled_variants_record(args, make_variants) -> dict:
    """Builds the random hybrid of `args.preset` as `jetvit bench` does, makes `make_variants(model)` of it (`{name:
    module}`, the first the reference), compiles each and captures it as one CUDA graph (`--compile-mode
    cuda-graph`), compares their depth maps with the reference's, times them at batch 1 in `args.rounds` interleaved
    rounds in one process (so the machine's clock hits all alike), then profiles one call of each (kernel time by
    category and the top kernels). A variant that does not compile is recorded under "errors"."""
    from jetvit_hf.bench import measure
    from jetvit_hf.bench.models import _model_factories
    from jetvit_hf.bench.profiling import profile_forward
    from jetvit_hf.bench.specs import _hybrid_types, resolve_model_spec
    from jetvit_hf.bench.timing import _maybe_compile, _random_pixels, _run_context, _settings

    if not torch.cuda.is_available():
        raise SystemExit(f"{Path(sys.argv[0]).name}: needs a CUDA GPU")
    resolution = tuple(int(v) for v in args.resolution.split("x"))
    spec = resolve_model_spec(args.preset, None, None, None)
    types, _ = _hybrid_types(spec, None)
    settings = _settings("cuda", "bfloat16", 10, 30, True, "cuda-graph", None, False)
    (_, build), = _model_factories(spec, types, (), settings).values()
    record = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "command": " ".join(sys.argv),
              "preset": args.preset, "resolution": args.resolution, "rounds": args.rounds,
              "timing": "bs1 latency in ms, `measure` medians (30 iterations) per round, median over interleaved rounds",
              "errors": {}}
    with _run_context(settings):  # inference mode, cuDNN autotuning, as `jetvit bench` runs
        pixels = _random_pixels(spec.jetvit_config, 1, resolution, settings)
        forwards, outputs = {}, {}
        for name, variant in make_variants(build(settings.device, settings.dtype)).items():
            try:
                forward = _maybe_compile(variant, settings)  # `jetvit bench`'s compile and CUDA graph
                outputs[name] = forward(pixel_values=pixels).predicted_depth.float().clone()
                forwards[name] = forward
            except Exception as error:  # noqa: BLE001 - a variant that does not compile is a result too
                record["errors"][name] = f"{type(error).__name__}: {str(error)[:500]}"
                print(name, "failed:", record["errors"][name], flush=True)
        reference = next(iter(outputs.values()))
        record["depth_std_over_max"] = (reference.std() / reference.abs().max()).item()  # 0: a saturated head
        record["max_relative_difference"] = {
            name: ((out - reference).abs().max() / reference.abs().max()).item() for name, out in outputs.items()}
        print("max relative difference", record["max_relative_difference"], flush=True)
        timers = {name: (lambda forward=forward: measure(lambda: forward(pixel_values=pixels), settings)["median_ms"])
                  for name, forward in forwards.items()}
        record["bs1_ms"], record["spread_ms"] = interleaved_medians(timers, args.rounds)
        print("bs1 ms", record["bs1_ms"], "spread", record["spread_ms"], flush=True)
        record["profiles"] = {}
        for name, forward in forwards.items():
            profile = profile_forward(lambda forward=forward: forward(pixel_values=pixels), settings, top=40)
            record["profiles"][name] = {key: profile[key] for key in ("gpu_kernel_ms", "kernel_ms_by_category",
                                                                      "top_kernels") if key in profile}
            print(name, profile.get("gpu_kernel_ms"), profile.get("kernel_ms_by_category"), flush=True)
    return record
