"""Per-layer latency tables for latency-aware search: one JetViT layer of each attention type timed on the inputs the
model really gives its layers, the whole all-full model for the non-layer remainder, and `estimate_latency`, which
predicts the latency of any layout from such a table."""

from __future__ import annotations

import os

import torch

from ..io import read_json
from ..layouts import resolve_attention_types
from ..models.jetvit.configuration_jetvit import ATTENTION_TYPES
from .device import _is_oom
from .models import build_model, prepare_jetvit
from .records import _api_command, _header
from .resolution import _check_resolution, _default_resolution, num_tokens, parse_resolution
from .specs import ModelSpec, _config_with, _hybrid_types, resolve_model_spec
from .timing import (RunSettings, _maybe_compile, _measure_model, _progress, _random_pixels, _release, _run_context,
                     _settings, _status, measure)


class _Captured(Exception):
    pass


def capture_layer_inputs(model: torch.nn.Module, pixel_values: torch.Tensor):
    """The first JetViT layer and the exact `(args, kwargs)` the model calls it with for `pixel_values` (the forward
    stops there). Captured rather than rebuilt, so whatever the encoder passes its layers is timed as it is."""
    from ..models.jetvit.modeling_jetvit import JetViTLayer

    layer = next((m for m in model.modules() if isinstance(m, JetViTLayer)), None)
    if layer is None:
        raise ValueError(f"{type(model).__name__} has no JetViTLayer to time")
    captured = {}

    def hook(module, args, kwargs):
        captured["args"], captured["kwargs"] = args, kwargs
        raise _Captured

    handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(pixel_values=pixel_values)
    except _Captured:
        pass
    finally:
        handle.remove()
    if "args" not in captured:
        raise ValueError("the model's forward never called its first JetViTLayer; cannot time a layer in isolation")
    return layer, captured["args"], captured["kwargs"]


def layer_latency_table(
    preset: str | None = None,
    *,
    model: str | os.PathLike | None = None,
    resolution=None,
    batch_size: int = 1,
    dtype=None,
    device: str = "cuda",
    warmup: int | None = None,
    iters: int | None = None,
    compile: bool = False,
    compile_mode: str | None = None,
    sdpa_backend: str | None = None,
    window_size: int | None = None,
    config_overrides: dict | None = None,
    fuse_qkv: bool = True,
    tanh_gelu_epilogue: bool = False,
    check_attention_types=None,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Per-layer latency by attention type, for latency-aware search.

    Times ONE `JetViTLayer` (norm, attention, LayerScale, MLP) of each type `full`, `window`, `linear` on the inputs the
    model really gives its layers at this resolution and batch, and the whole all-full model; the non-layer remainder
    (embeddings, final norm, task head) is `whole - num_layers * full`. `estimate_latency(table, types)` then predicts
    any layout. With `check_attention_types` (a layout, or True for the default hybrid), that layout is also built
    and measured, and `check` records the estimate's relative error.
    """
    settings = _settings(device, dtype, warmup, iters, compile, compile_mode, sdpa_backend, False, fuse_qkv,
                         tanh_gelu_epilogue)
    spec = resolve_model_spec(preset, model, window_size, config_overrides)
    resolution = parse_resolution(resolution) if resolution is not None else _default_resolution(spec)
    _check_resolution(spec.jetvit_config, resolution)
    batch_size = int(batch_size)
    command = command or _api_command("layer_latency_table", preset=preset, model=model, resolution=resolution,
                                      batch_size=batch_size, device=device)
    if check_attention_types is None or check_attention_types is False:
        check_types = None
    else:  # True: the default hybrid (paper-2full for a preset, the checkpoint's own layout for a model)
        check_types, _ = _hybrid_types(spec, None if check_attention_types is True else check_attention_types)

    bar = _progress(len(ATTENTION_TYPES) + 1 + (check_types is not None), "jetvit bench layer table", progress)
    with _run_context(settings):
        layer_records = {kind: _time_one_layer(spec, kind, batch_size, resolution, settings, bar)
                         for kind in ATTENTION_TYPES}
        full_record = _time_whole_model(spec, ["full"] * spec.num_layers, "whole all-full model", batch_size,
                                        resolution, settings, bar)
        check_record = None
        if check_types is not None:
            check_record = _time_whole_model(spec, check_types, "whole hybrid (check)", batch_size, resolution,
                                             settings, bar)
    bar.close()

    table = _layer_table_record(spec, settings, command, resolution, batch_size, layer_records, full_record)
    if check_record is not None:
        table["check"] = _estimate_check(table, check_types, check_record)
    return table


def _estimate_check(table: dict, attention_types: list[str], measured: dict) -> dict:
    """The table's estimate for a layout next to that layout's measured latency, and the estimate's relative error."""
    estimate = estimate_latency(table, attention_types)
    return {
        "attention_types": attention_types,
        "estimated_ms": estimate,
        "measured_ms": measured["median_ms"],
        "relative_error": (estimate - measured["median_ms"]) / measured["median_ms"],
    }


def _out_of_memory(what: str, record: dict, batch_size: int, resolution) -> ValueError:
    """The error a layer table raises when one of its measurements ran out of memory (a table missing a time is of
    no use to the search)."""
    return ValueError(f"layer table: {what} ran out of memory at batch {batch_size}, {resolution[0]}x"
                      f"{resolution[1]} ({record.get('error')}); try a smaller batch or resolution")


def _time_one_layer(spec: ModelSpec, kind: str, batch_size: int, resolution, settings: RunSettings, bar) -> dict:
    """One `kind` layer, taken from a one-layer JetViTModel with the inputs that model gives it, timed with its calls
    queued back to back (on CUDA)."""
    from ..models.jetvit.modeling_jetvit import JetViTModel

    bar.set_postfix_str(kind)
    config = _config_with(spec.jetvit_config, num_hidden_layers=1, attention_types=[kind])
    one_layer = prepare_jetvit(build_model(JetViTModel, config, settings.device, settings.dtype), settings.fuse_qkv,
                               settings.tanh_gelu_epilogue)
    pixels = _random_pixels(config, batch_size, resolution, settings)
    layer, args, kwargs = capture_layer_inputs(one_layer, pixels)
    runner = _maybe_compile(layer, settings)
    try:
        record = measure(lambda: runner(*args, **kwargs), settings, sync_each_iteration=False)
    except Exception as error:  # noqa: BLE001
        if not _is_oom(error):
            raise
        record = _status("oom", error=str(error).splitlines()[0][:300])
    pixels = args = kwargs = runner = layer = one_layer = None
    _release(settings)
    if record["status"] != "ok":
        raise _out_of_memory(f"one {kind} layer", record, batch_size, resolution)
    bar.update(1)
    return record


def _time_whole_model(spec: ModelSpec, attention_types: list[str], label: str, batch_size: int, resolution,
                      settings: RunSettings, bar) -> dict:
    """The whole model with these attention types, timed as `benchmark` times a model."""
    bar.set_postfix_str(label)
    config = _config_with(spec.jetvit_config, attention_types=attention_types)
    built = prepare_jetvit(build_model(spec.jetvit_class, config, settings.device, settings.dtype), settings.fuse_qkv,
                           settings.tanh_gelu_epilogue)
    runner = _maybe_compile(built, settings)
    record = _measure_model(runner, config, batch_size, resolution, settings)
    runner = built = None
    _release(settings)
    if record["status"] != "ok":
        raise _out_of_memory(label, record, batch_size, resolution)
    bar.update(1)
    return record


def _layer_table_record(spec: ModelSpec, settings: RunSettings, command: str, resolution, batch_size: int,
                        layer_records: dict, full_record: dict) -> dict:
    """The table's JSON record: per-layer times by type, the remainder (whole all-full model minus its layers,
    clamped at 0) and the run's header fields."""
    num_layers = spec.num_layers
    per_layer = {kind: record["median_ms"] for kind, record in layer_records.items()}
    remainder_raw = full_record["median_ms"] - num_layers * per_layer["full"]
    header = _header("layer-table", spec, settings, ["full"] * num_layers, "all-full", command)
    table = {
        "schema": header["schema"],
        "mode": "layer-table",
        "command": command,
        "timestamp": header["timestamp"],
        "note": header["note"],
        "model": spec.name,
        "model_info": header["model"],
        "gpu": header["gpu"],
        "device": header["device"],
        "dtype": header["dtype"],
        "resolution": list(resolution),
        "num_tokens": num_tokens(spec.jetvit_config, resolution),
        "batch_size": batch_size,
        "num_layers": num_layers,
        "window_size": spec.jetvit_config.window_size,
        "per_layer_ms": per_layer,
        "remainder_ms": max(remainder_raw, 0.0),
        "remainder_ms_raw": remainder_raw,
        "whole_model_full_ms": full_record["median_ms"],
        "layers": {k: {key: r[key] for key in ("median_ms", "min_ms", "max_ms", "std_ms", "iters", "peak_memory_mib")}
                   for k, r in layer_records.items()},
        "versions": header["versions"],
        "environment": header["environment"],
        "timing": dict(header["timing"], synchronize_each_iteration={
            "layers": settings.device.type == "cpu",  # CUDA: layer calls queued back to back, one event pair each
            "whole_model": True,
        }),
        "compile": header["compile"],
        "fuse_qkv": header["fuse_qkv"],
        "tanh_gelu_epilogue": header["tanh_gelu_epilogue"],
        "mlp_gelu": header["mlp_gelu"],
        "sdpa_backend_requested": header["sdpa_backend_requested"],
        "config_overrides": header["config_overrides"],
        "notes": header["notes"],
    }
    if remainder_raw < 0:
        table["notes"].append("whole model was faster than num_layers x one full layer; remainder clamped to 0")
    return table


def estimate_latency(table: dict | str | os.PathLike, attention_types) -> float:
    """Predicted latency (ms) of a layout from a `layer_latency_table` result (dict or JSON path):
    `remainder_ms + sum(per_layer_ms[type] for each layer)`."""
    if not isinstance(table, dict):
        table = read_json(table)
    types = resolve_attention_types(attention_types, table["num_layers"])
    per_layer = table["per_layer_ms"]
    missing = sorted(set(types) - set(per_layer))
    if missing:
        raise ValueError(f"the latency table has no per-layer time for {missing}")
    return float(table["remainder_ms"]) + sum(float(per_layer[t]) for t in types)
