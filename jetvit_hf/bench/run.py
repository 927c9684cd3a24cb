"""`benchmark` (latency at batch 1, throughput at a larger batch, peak memory, the SDPA backend that ran) and `sweep`
(latency against resolution): each model of the run is built once, timed on the same inputs as the others, then
released before the next is built."""

from __future__ import annotations

import os
from collections.abc import Sequence

from .flops import backbone_flops
from .models import (BASELINES, DEFAULT_BASELINES, _attn_implementations, _check_baselines, _count, _has_fused_qkv,
                     _model_factories)
from .plot import plot_sweep
from .profiling import _sdpa_summary, profile_forward
from .records import _api_command, _header
from .resolution import _check_resolution, _default_resolution, num_tokens, parse_resolution
from .specs import ModelSpec, _hybrid_types, resolve_model_spec
from .timing import (RunSettings, _build_case, _maybe_compile, _measure_model, _progress, _random_pixels, _release,
                     _run_context, _settings, _status)


def _ratio(numerator: dict | None, denominator: dict | None) -> float | None:
    a = (numerator or {}).get("median_ms")
    b = (denominator or {}).get("median_ms")
    return a / b if a and b else None


def benchmark(
    preset: str | None = None,
    *,
    model: str | os.PathLike | None = None,
    attention_types=None,
    resolution=None,
    batch_size: int = 8,
    dtype=None,
    device: str = "cuda",
    warmup: int | None = None,
    iters: int | None = None,
    compile: bool = False,
    compile_mode: str | None = None,
    sdpa_backend: str | None = None,
    baselines: Sequence[str] = DEFAULT_BASELINES,
    window_size: int | None = None,
    config_overrides: dict | None = None,
    fuse_qkv: bool = True,
    tanh_gelu_epilogue: bool = False,
    profile: bool = True,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Latency (batch 1) and throughput (batch `batch_size`) of `hf`, `jetvit-full` and `jetvit` in one run.

    Args:
        preset: A named architecture (`PRESETS`, random weights) ...
        model: ... or a converted checkpoint directory (its own attention types unless `attention_types` is given
            explicitly; the hf baseline is rebuilt from `jetvit_conversion.json`).
        attention_types: The hybrid's layout: a name in `LAYOUTS`, `jetvit convert` syntax or a list.
        resolution: `(H, W)` or `"HxW"`; default the model's `image_size`.
        dtype: Default bfloat16 on CUDA, float32 on CPU.
        device: `"cuda"` (raises `DeviceUnavailableError` without a GPU) or `"cpu"` (smoke test).
        baselines: Any of `"hf"`, `"hf-eager"` (transformers uncompiled even when the run compiles), `"jetvit-full"`.
        sdpa_backend: Prefer one SDPA backend (`cudnn`, `flash`, `efficient`, `math`); default: torch's choice.

    Returns:
        A JSON-ready dict: `results[name] = {"latency": {...}, "throughput": {...}, "profile": {...}, ...}`,
        `sdpa_backend` (per model, the SDPA backends that ran, from one profiled batch-1 forward on CUDA) and
        `ratios["hf/jetvit" | "jetvit-full/jetvit"] = {"latency": t_other / t_jetvit, "throughput": ...}` (> 1 means
        the hybrid is faster).
    """
    settings = _settings(device, dtype, warmup, iters, compile, compile_mode, sdpa_backend, profile, fuse_qkv,
                         tanh_gelu_epilogue)
    spec = resolve_model_spec(preset, model, window_size, config_overrides)
    types, layout = _hybrid_types(spec, attention_types)
    resolution = parse_resolution(resolution) if resolution is not None else _default_resolution(spec)
    _check_resolution(spec.jetvit_config, resolution)
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    baselines = _check_baselines(baselines)
    command = command or _api_command("benchmark", preset=preset, model=model, attention_types=attention_types,
                                      resolution=resolution, batch_size=batch_size, device=device)

    result = _header("benchmark", spec, settings, types, layout, command)
    result.update(resolution=list(resolution), num_tokens=num_tokens(spec.jetvit_config, resolution),
                  batch_sizes={"latency": 1, "throughput": batch_size}, results={}, ratios={})
    factories = _model_factories(spec, types, baselines, settings)
    flops = _backbone_flops_per_model(spec, types, resolution)
    bar = _progress(len(factories) * 2, "jetvit bench", progress)
    with _run_context(settings):
        for name, (description, factory) in factories.items():
            entry = result["results"][name] = {"description": description}
            if factory is None:
                entry.update(status="skipped", reason="; ".join(spec.notes) or "no source config")
                bar.update(2)
                continue
            _benchmark_model(entry, name, factory, flops[name], resolution, batch_size, settings, bar)
    bar.close()
    result["ratios"] = _benchmark_ratios(result["results"])
    result["sdpa_backend"] = _sdpa_summary(result["results"])
    return result


def _backbone_flops_per_model(spec: ModelSpec, attention_types: list[str], resolution) -> dict:
    """Model name -> forward FLOPs of its transformer layers at batch 1 (the transformers models compute what
    `jetvit-full` computes)."""
    flops = {
        "jetvit-full": backbone_flops(spec.jetvit_config, ["full"] * spec.num_layers, resolution),
        "jetvit": backbone_flops(spec.jetvit_config, attention_types, resolution),
    }
    flops["hf"] = flops["hf-eager"] = flops["jetvit-full"]
    return flops


def _benchmark_model(entry: dict, name: str, factory, flops: float, resolution, batch_size: int,
                     settings: RunSettings, bar) -> None:
    """Build one model and fill its `entry`: size, latency (batch 1), throughput (`batch_size`), achieved TFLOP/s and,
    on CUDA, one profiled forward; then release the model. Running out of memory while building is recorded."""
    bar.set_postfix_str(f"{name}: build")
    built, failed = _build_case(factory, settings)
    if failed is not None:
        entry.update(status="oom", latency=failed, throughput=failed)
        bar.update(2)
        return
    entry["params"], weight_bytes = _count(built)
    entry["weights_mib"] = weight_bytes / 2**20
    entry["attn_implementation"] = _attn_implementations(built)
    entry["fused_qkv"] = _has_fused_qkv(built)
    runner = _maybe_compile(built, settings, name)
    entry["latency"], entry["throughput"] = _time_batches(runner, built.config, name, resolution, batch_size,
                                                          settings, bar)
    entry["status"] = "ok" if entry["latency"]["status"] == "ok" else entry["latency"]["status"]
    entry["backbone_gflops"] = flops / 1e9
    lat = entry["latency"].get("median_ms")
    entry["backbone_tflops_per_s"] = flops / (lat / 1e3) / 1e12 if lat else None
    entry["profile"] = "n/a"  # CPU, or --no-profile
    if settings.device.type == "cuda" and settings.profile and entry["latency"]["status"] == "ok":
        entry["profile"] = _profile_model(runner, built.config, resolution, settings)
    runner = built = None
    _release(settings)


def _time_batches(runner, config, name: str, resolution, batch_size: int, settings: RunSettings,
                  bar) -> tuple[dict, dict]:
    """Latency (batch 1) and throughput (batch `batch_size`; a copy of the latency record when that is 1)."""
    bar.set_postfix_str(f"{name}: batch 1")
    latency = _measure_model(runner, config, 1, resolution, settings)
    bar.update(1)
    if batch_size == 1:
        throughput = dict(latency)
    else:
        bar.set_postfix_str(f"{name}: batch {batch_size}")
        throughput = _measure_model(runner, config, batch_size, resolution, settings)
    bar.update(1)
    return latency, throughput


def _profile_model(runner, config, resolution, settings: RunSettings) -> dict:
    """One profiled batch-1 forward; a profiler failure is recorded in the result, never raised. The runner has last
    run the throughput batch, so one unprofiled call first: a `WholeForwardGraph` captures the batch-1 graph again
    (three warm-up forwards), which must not count as the profiled forward's kernels."""
    pixels = _random_pixels(config, 1, resolution, settings)
    try:
        runner(pixel_values=pixels)
        return profile_forward(lambda: runner(pixel_values=pixels), settings)
    except Exception as error:  # noqa: BLE001 - the profiler is diagnostics, never fatal
        return {"backends": [], "error": f"profiler failed: {type(error).__name__}: {error}"}


def _benchmark_ratios(results: dict) -> dict:
    """`"<baseline>/jetvit"` -> time ratios at batch 1 and at the throughput batch, for each baseline of the run."""
    return {
        f"{other}/jetvit": {
            kind: _ratio(results[other].get(kind), results["jetvit"].get(kind)) for kind in ("latency", "throughput")
        }
        for other in BASELINES
        if other in results
    }


def sweep(
    preset: str | None = None,
    *,
    model: str | os.PathLike | None = None,
    resolutions: Sequence = ("512x512", "1024x1024", "1024x2048", "2048x2048", "4096x4096"),
    attention_types=None,
    batch_size: int = 1,
    dtype=None,
    device: str = "cuda",
    warmup: int | None = None,
    iters: int | None = None,
    compile: bool = False,
    compile_mode: str | None = None,
    sdpa_backend: str | None = None,
    baselines: Sequence[str] = DEFAULT_BASELINES,
    skip_baselines_above: int | None = None,
    window_size: int | None = None,
    config_overrides: dict | None = None,
    fuse_qkv: bool = True,
    tanh_gelu_epilogue: bool = False,
    plot: str | os.PathLike | None = None,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Latency (batch `batch_size`, default 1) against resolution for hf / jetvit-full / jetvit.

    Each model is built once and timed at every resolution; an out-of-memory point is recorded as `"oom"`, and the
    baselines are `"skipped"` above `skip_baselines_above` tokens. Writes a log-log PNG of latency against tokens when
    `plot` is given.
    """
    settings = _settings(device, dtype, warmup, iters, compile, compile_mode, sdpa_backend, False, fuse_qkv,
                         tanh_gelu_epilogue)
    spec = resolve_model_spec(preset, model, window_size, config_overrides)
    types, layout = _hybrid_types(spec, attention_types)
    if isinstance(resolutions, str):
        resolutions = resolutions.split(",")
    points_res = [parse_resolution(r) for r in resolutions]
    if not points_res:
        raise ValueError("sweep needs at least one resolution")
    for res in points_res:
        _check_resolution(spec.jetvit_config, res)
    baselines = _check_baselines(baselines)
    command = command or _api_command("sweep", preset=preset, model=model, resolutions=list(resolutions),
                                      attention_types=attention_types, device=device)

    result = _header("sweep", spec, settings, types, layout, command)
    result.update(batch_size=int(batch_size), skip_baselines_above=skip_baselines_above, points=[])
    points = [
        {"resolution": list(res), "num_tokens": num_tokens(spec.jetvit_config, res), "results": {}, "ratios": {}}
        for res in points_res
    ]
    factories = _model_factories(spec, types, baselines, settings)
    unavailable = "; ".join(spec.notes) or "no source config"
    bar = _progress(len(factories) * len(points), "jetvit bench sweep", progress)
    with _run_context(settings):
        for name, (_, factory) in factories.items():
            _sweep_model(name, factory, points, skip_baselines_above, unavailable, int(batch_size), settings, bar)
    bar.close()
    _add_sweep_ratios(points, factories["jetvit"][0])
    result["points"] = points
    result["models"] = {name: description for name, (description, _) in factories.items()}
    if plot is not None:
        result["plot"] = plot_sweep(result, plot)
    return result


def _sweep_model(name: str, factory, points: list[dict], skip_above: int | None, unavailable: str, batch_size: int,
                 settings: RunSettings, bar) -> None:
    """Time one model, built once, at every sweep point (`point["results"][name]`). A baseline is `"skipped"` above
    `skip_above` tokens, any model whose factory is missing is `"skipped"` for the reason `unavailable`, and every
    point is `"oom"` when building the model runs out of memory."""
    todo = []
    for p in points:
        if name in BASELINES and skip_above is not None and p["num_tokens"] > skip_above:
            p["results"][name] = _status("skipped", reason=f"above {skip_above} tokens")
        else:
            todo.append(p)
    if factory is None:
        for p in todo:
            p["results"][name] = _status("skipped", reason=unavailable)
        bar.update(len(points))
        return
    if not todo:
        bar.update(len(points))
        return
    bar.set_postfix_str(f"{name}: build")
    built, failed = _build_case(factory, settings)
    if failed is not None:
        for p in todo:
            p["results"][name] = dict(failed)
        bar.update(len(points))
        return
    runner = _maybe_compile(built, settings, name)
    bar.update(len(points) - len(todo))
    for p in todo:
        bar.set_postfix_str(f"{name}: {p['resolution'][0]}x{p['resolution'][1]}")
        p["results"][name] = _measure_model(runner, built.config, batch_size, tuple(p["resolution"]), settings)
        bar.update(1)
    runner = built = None
    _release(settings)


def _add_sweep_ratios(points: list[dict], hybrid_description: str) -> None:
    """Label each point's hybrid result and add `"<baseline>/jetvit"` time ratios for the baselines it has."""
    for p in points:
        p["results"]["jetvit"]["description"] = hybrid_description
        for other in BASELINES:
            if other in p["results"]:
                p["ratios"][f"{other}/jetvit"] = _ratio(p["results"][other], p["results"]["jetvit"])
