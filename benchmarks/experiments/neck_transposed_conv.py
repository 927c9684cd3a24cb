"""Experiment: JetViT-DA-V2-L (hybrid, paper-2full) with the DPT neck's transposed convolutions composed with the 3x3
convolutions after them (`transposed_conv_then_conv3x3`, what the model runs) against the same model with the two as
modules (transformers' form, `bench_dpt_neck.ModulesReassembleLayer`), both built as `jetvit bench` builds them,
compiled and captured as one CUDA graph each (`--compile-mode cuda-graph`), timed at batch 1 in interleaved rounds
in one process (so the machine's clock hits both alike), then one profiled call of each (kernel time by category and
the top kernels).

    python benchmarks/experiments/neck_transposed_conv.py --output neck_transposed_conv.json   # on a CUDA GPU
"""

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `benchmarks.*`

from benchmarks.bench_dpt_neck import ModulesReassembleLayer  # noqa: E402
from benchmarks.experiments.common import interleaved_medians  # noqa: E402
from jetvit_hf.bench import measure  # noqa: E402
from jetvit_hf.bench.models import _model_factories  # noqa: E402
from jetvit_hf.bench.profiling import profile_forward  # noqa: E402
from jetvit_hf.bench.specs import _hybrid_types, resolve_model_spec  # noqa: E402
from jetvit_hf.bench.timing import _maybe_compile, _random_pixels, _run_context, _settings  # noqa: E402
from jetvit_hf.io import atomic_write_json  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="depth-anything-v2-l")
    parser.add_argument("--resolution", default="1022x1358")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("neck_transposed_conv: needs a CUDA GPU", file=sys.stderr)
        return 2
    resolution = tuple(int(v) for v in args.resolution.split("x"))
    spec = resolve_model_spec(args.preset, None, None, None)
    types, _ = _hybrid_types(spec, None)
    settings = _settings("cuda", "bfloat16", 10, 30, True, "cuda-graph", None, False)
    (_, build), = _model_factories(spec, types, (), settings).values()
    record = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "command": " ".join(sys.argv),
              "preset": args.preset, "resolution": args.resolution, "rounds": args.rounds,
              "timing": "bs1 latency, `measure` medians (30 iterations) per round, median over interleaved rounds"}
    forwards = {}
    with _run_context(settings):  # inference mode, cuDNN autotuning, as `jetvit bench` runs
        model = build(settings.device, settings.dtype)
        modules = copy.deepcopy(model)  # the same weights
        for layer in modules.neck.reassemble_stage.layers:
            layer.__class__ = ModulesReassembleLayer
        for name, variant in (("composed", model), ("modules", modules)):
            forwards[name] = _maybe_compile(variant, settings)  # `jetvit bench`'s compile and CUDA graph
        pixels = _random_pixels(spec.jetvit_config, 1, resolution, settings)
        outputs = {name: forward(pixel_values=pixels).predicted_depth.float() for name, forward in forwards.items()}
        record["max_relative_difference"] = ((outputs["composed"] - outputs["modules"]).abs().max()
                                             / outputs["modules"].abs().max()).item()
        timers = {name: (lambda forward=forward: measure(lambda: forward(pixel_values=pixels), settings)["median_ms"])
                  for name, forward in forwards.items()}
        medians, spread = interleaved_medians(timers, args.rounds)
        record["bs1_ms"], record["spread_ms"] = medians, spread
        print("bs1 ms", medians, "spread", spread, flush=True)
        record["profiles"] = {}
        for name, forward in forwards.items():
            profile = profile_forward(lambda forward=forward: forward(pixel_values=pixels), settings, top=16)
            record["profiles"][name] = {key: profile[key] for key in ("gpu_kernel_ms", "kernel_ms_by_category",
                                                                      "top_kernels") if key in profile}
            print(name, profile.get("gpu_kernel_ms"), profile.get("kernel_ms_by_category"), flush=True)
    if args.output:
        atomic_write_json(args.output, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
