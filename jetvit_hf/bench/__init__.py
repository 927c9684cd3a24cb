"""`jetvit bench`: latency, throughput, peak memory, resolution sweeps and per-layer latency tables.

Every run compares, in the same process and on the same inputs, three models:

* `hf`: transformers' own implementation of the source architecture (`DINOv3ViTModel`, `Dinov2Model`,
  `DepthAnythingForDepthEstimation`, ...), with SDPA attention;
* `jetvit-full`: JetViT with every layer `"full"` (numerically the source model, same code path as the hybrid);
* `jetvit`: the JetViT hybrid (`attention_types`).

Models come from a named architecture preset with random weights (works offline: `PRESETS`) or from a converted
checkpoint directory. Timing on CUDA uses CUDA events around each iteration (the device is synchronized before each
one, so a number is the latency of one call including its launch overhead), median over `iters` after `warmup`
iterations; peak memory is `torch.cuda.max_memory_allocated()` after `reset_peak_memory_stats()` per measurement
(weights included). `device="cpu"` is a smoke-test mode: `time.perf_counter` medians of a few iterations, labelled as
not being performance numbers.

Python API (plain dicts, JSON-ready): `benchmark(...)`, `sweep(...)`, `layer_latency_table(...)`,
`estimate_latency(...)`.
The CLI (`jetvit bench`, in `cli.py`) is a thin wrapper.

Modules, each importing only those above it:

* `presets`: named source architectures (`PRESETS`, `get_preset`);
* `device`: device and dtype checks, the environment record, out-of-memory handling;
* `specs`: `ModelSpec`, what to build, from a preset or a converted checkpoint; the hybrid's attention types;
* `resolution`, `flops`: input resolutions and token counts; analytic FLOPs of the transformer layers;
* `models`: building the `hf`, `hf-eager`, `jetvit-full` and `jetvit` models;
* `timing`: `RunSettings`, the run context, compilation, `measure`;
* `profiling`: the profiled forward and kernel categories;
* `records`: the header shared by every JSON record;
* `report`, `plot`: the printed tables and the sweep's figure;
* `run`: `benchmark` and `sweep`; `latency`: `layer_latency_table` and `estimate_latency`.
"""

from .device import CPU_SMOKE_NOTE, DeviceUnavailableError, check_device
from .flops import backbone_flops
from .latency import estimate_latency, layer_latency_table
from .models import BASELINES
from .presets import PRESETS, Preset, get_preset
from .profiling import classify_attention_kernel, kernel_category, profile_forward
from .report import format_benchmark, format_layer_table, format_sweep, list_presets
from .resolution import num_tokens, parse_resolution
from .run import benchmark, sweep
from .specs import ModelSpec, resolve_model_spec
from .timing import measure

__all__ = [
    "BASELINES",
    "CPU_SMOKE_NOTE",
    "DeviceUnavailableError",
    "ModelSpec",
    "PRESETS",
    "Preset",
    "backbone_flops",
    "benchmark",
    "check_device",
    "classify_attention_kernel",
    "estimate_latency",
    "format_benchmark",
    "format_layer_table",
    "format_sweep",
    "get_preset",
    "kernel_category",
    "layer_latency_table",
    "list_presets",
    "measure",
    "num_tokens",
    "parse_resolution",
    "profile_forward",
    "resolve_model_spec",
    "sweep",
]
