"""Does the order in which `jetvit bench` times its models bias the ratios? `jetvit bench` times one model after
another (the hybrid last), so a GPU whose clocks drift as it warms up would favour whichever runs first. Here all
four DINOv3-L models stay built and compiled (CUDA graphs) and are timed at batch 1 in interleaved rounds; the SM
clock and power are logged alongside (nvidia-smi in the calling shell).

    python benchmarks/experiments/interleaved_models.py OUT_DIR
"""
import json
import sys

import torch

from benchmarks.experiments.common import interleaved_medians
from jetvit_hf.bench import measure, resolve_model_spec
from jetvit_hf.bench.models import _model_factories
from jetvit_hf.bench.timing import _maybe_compile, _random_pixels, _run_context, _settings
from jetvit_hf.layouts import paper_2full_layout

settings = _settings("cuda", None, 10, 20, True, "reduce-overhead", None, False)
spec = resolve_model_spec("dinov3-l")
factories = _model_factories(spec, paper_2full_layout(24), ("hf", "hf-eager", "jetvit-full"), settings)
with _run_context(settings):
    runners = {name: _maybe_compile(factory(settings.device, settings.dtype), settings, name)
               for name, (_, factory) in factories.items()}
    pixels = _random_pixels(spec.jetvit_config, 1, (1024, 2048), settings)
    timers = {name: (lambda runner=runner: measure(lambda: runner(pixel_values=pixels), settings)["median_ms"])
              for name, runner in runners.items()}
    medians, spread = interleaved_medians(timers, 8)
ratios = {f"{name}/jetvit": medians[name] / medians["jetvit"] for name in medians if name != "jetvit"}
print("bs1 ms", medians, "spread", spread, "ratios", {k: round(v, 3) for k, v in ratios.items()}, flush=True)
json.dump({"gpu": torch.cuda.get_device_name(), "bs1_ms": medians, "spread_ms": spread, "ratios": ratios,
           "rounds": 8, "iters_per_round": 20}, open(sys.argv[1] + "/interleaved_models.json", "w"), indent=1)
