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
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .convert import source_config_from_jetvit
from .layouts import LAYOUTS, resolve_attention_types, summarize_types
from .models.jetvit.configuration_jetvit import ATTENTION_TYPES, JetViTConfig

SCHEMA_VERSION = 1
CPU_SMOKE_NOTE = "CPU smoke test, not a performance number"
MODEL_NAMES = ("hf", "hf-eager", "jetvit-full", "jetvit")
BASELINES = ("hf", "hf-eager", "jetvit-full")
# transformers' model as it is usually run, left uncompiled when the run compiles, for same-run ratios
NEVER_COMPILED = ("hf-eager",)
DEFAULT_BASELINES = ("hf", "jetvit-full")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SDPA_BACKENDS = ("default", "cudnn", "flash", "efficient", "math")
DEFAULT_ITERS = {"cuda": 50, "cpu": 5}
DEFAULT_WARMUP = {"cuda": 10, "cpu": 2}


class DeviceUnavailableError(ValueError):
    """The requested device cannot be used here (e.g. `cuda` on a machine without a GPU)."""


# --------------------------------------------------------------------------------------------------------------------
# Architecture presets: the exact transformers source config of each real checkpoint (random weights).
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """A named source architecture: transformers config class and arguments, plus JetViT config overrides."""

    name: str
    architecture: str  # transformers model class, e.g. "DINOv3ViTModel"
    config_class: str  # transformers config class, e.g. "DINOv3ViTConfig"
    config_kwargs: dict
    description: str
    jetvit_overrides: dict = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    def source_config(self):
        import transformers

        kwargs = copy.deepcopy(self.config_kwargs)
        return getattr(transformers, self.config_class)(architectures=[self.architecture], **kwargs)


def _dinov3(name, hidden, inter, layers, heads, gated=False, aliases=(), **extra) -> Preset:
    kwargs = dict(
        hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
        patch_size=16, image_size=224, num_register_tokens=4, layer_norm_eps=1e-5, rope_theta=100.0,
        use_gated_mlp=gated, hidden_act="silu" if gated else "gelu", key_bias=False, **extra,
    )
    mlp = "gated SiLU MLP" if gated else "GELU MLP"
    desc = f"DINOv3 ViT-{name}/16: {hidden} wide, {layers} layers, {heads} heads, {mlp} {inter}, 4 registers"
    return Preset(f"dinov3-{name.lower()}", "DINOv3ViTModel", "DINOv3ViTConfig", kwargs, desc, aliases=aliases)


def _dinov2_kwargs(hidden, layers, heads, swiglu=False, **extra) -> dict:
    return dict(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, mlp_ratio=4, patch_size=14,
        image_size=518, layer_norm_eps=1e-6, layerscale_value=1.0, qkv_bias=True, use_swiglu_ffn=swiglu, **extra,
    )


def _dinov2(name, hidden, layers, heads, swiglu=False, aliases=()) -> Preset:
    desc = f"DINOv2 ViT-{name}/14: {hidden} wide, {layers} layers, {heads} heads{', SwiGLU' if swiglu else ''}"
    return Preset(
        f"dinov2-{name.lower()}", "Dinov2Model", "Dinov2Config", _dinov2_kwargs(hidden, layers, heads, swiglu), desc,
        aliases=aliases,
    )


def _depth_anything_v2(name, hidden, layers, heads, out_indices, fusion, neck, swiglu=False, aliases=()) -> Preset:
    backbone = dict(
        model_type="dinov2", **_dinov2_kwargs(hidden, layers, heads, swiglu), out_indices=list(out_indices),
        reshape_hidden_states=False, apply_layernorm=True,
    )
    kwargs = dict(
        backbone_config=backbone, patch_size=14, reassemble_hidden_size=hidden, reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=list(neck), fusion_hidden_size=fusion, head_hidden_size=32, head_in_index=-1,
        depth_estimation_type="relative",
    )
    desc = (
        f"Depth Anything V2-{name}: DINOv2 ViT-{name}/14 backbone (taps {list(out_indices)}) + DPT "
        f"(neck {list(neck)}, fusion {fusion})"
    )
    return Preset(
        f"depth-anything-v2-{name.lower()}", "DepthAnythingForDepthEstimation", "DepthAnythingConfig", kwargs, desc,
        aliases=aliases,
    )


def _tiny_presets() -> list[Preset]:
    tiny_window = {"window_size": 2}
    return [
        Preset(
            "tiny", "DINOv3ViTModel", "DINOv3ViTConfig",
            dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, patch_size=16,
                 image_size=64, num_register_tokens=4),
            "tiny DINOv3-like ViT for tests (64 wide, 4 layers, RoPE, 4 registers)", tiny_window,
        ),
        Preset(
            "tiny-dinov2", "Dinov2Model", "Dinov2Config",
            dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, patch_size=14, image_size=56),
            "tiny DINOv2-like ViT for tests (64 wide, 4 layers, learned positions)", tiny_window,
        ),
        Preset(
            "tiny-depth", "DepthAnythingForDepthEstimation", "DepthAnythingConfig",
            dict(backbone_config=dict(model_type="dinov2", hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                                      patch_size=14, image_size=56, out_indices=[1, 2, 3, 4],
                                      reshape_hidden_states=False),
                 patch_size=14, reassemble_hidden_size=64, neck_hidden_sizes=[16, 32, 64, 64], fusion_hidden_size=16,
                 head_hidden_size=8),
            "tiny Depth Anything-like model for tests", tiny_window,
        ),
    ]


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        _dinov3("S", 384, 1536, 12, 6, aliases=("dinov3-vits16",)),
        _dinov3("S+", 384, 1536, 12, 6, gated=True, aliases=("dinov3-vits16plus",)),
        _dinov3("B", 768, 3072, 12, 12, aliases=("dinov3-vitb16",)),
        _dinov3("L", 1024, 4096, 24, 16, aliases=("dinov3-vitl16",)),
        _dinov3("H+", 1280, 5120, 32, 20, gated=True, aliases=("dinov3-vith16plus",)),
        _dinov3("7B", 4096, 8192, 40, 32, gated=True, aliases=("dinov3-vit7b16",), query_bias=False,
                value_bias=False),
        _dinov2("S", 384, 12, 6, aliases=("dinov2-small",)),
        _dinov2("B", 768, 12, 12, aliases=("dinov2-base",)),
        _dinov2("L", 1024, 24, 16, aliases=("dinov2-large",)),
        _dinov2("g", 1536, 40, 24, swiglu=True, aliases=("dinov2-giant",)),
        _depth_anything_v2("S", 384, 12, 6, [3, 6, 9, 12], 64, [48, 96, 192, 384],
                           aliases=("depth-anything-v2-small",)),
        _depth_anything_v2("B", 768, 12, 12, [3, 6, 9, 12], 128, [96, 192, 384, 768],
                           aliases=("depth-anything-v2-base",)),
        _depth_anything_v2("L", 1024, 24, 16, [5, 12, 18, 24], 256, [256, 512, 1024, 1024],
                           aliases=("depth-anything-v2-large",)),
        _depth_anything_v2("G", 1536, 40, 24, [10, 20, 30, 40], 384, [1536] * 4, swiglu=True,
                           aliases=("depth-anything-v2-giant",)),
        *_tiny_presets(),
    ]
}
PRESET_ALIASES = {alias: p.name for p in PRESETS.values() for alias in p.aliases}


def get_preset(name: str) -> Preset:
    key = name.strip().lower()
    key = PRESET_ALIASES.get(key, key)
    for preset_name, preset in PRESETS.items():  # case-insensitive ("dinov2-g" / "dinov3-7B")
        if preset_name.lower() == key:
            return preset
    raise ValueError(
        f"Unknown preset {name!r}; available: {', '.join(PRESETS)} (aliases: {', '.join(PRESET_ALIASES)})."
    )


# --------------------------------------------------------------------------------------------------------------------
# Model specs: what to build for hf / jetvit-full / jetvit
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ModelSpec:
    name: str
    jetvit_config: JetViTConfig  # attention types as in the source/checkpoint (replaced per model)
    jetvit_class: type
    source_config: object | None = None
    source_architecture: str | None = None
    checkpoint: Path | None = None
    notes: list[str] = field(default_factory=list)
    source_config_origin: str | None = None
    config_overrides: dict = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return self.jetvit_config.num_hidden_layers


def _config_with(config: JetViTConfig, **changes) -> JetViTConfig:
    """A new JetViTConfig equal to `config` but for `changes` (e.g. attention_types, num_hidden_layers)."""
    data = config.to_dict()
    for key in ("stage_names", "transformers_version", "dtype"):
        data.pop(key, None)
    if "num_hidden_layers" in changes:  # backbone outputs must fit the new depth
        data["out_features"], data["out_indices"] = None, None
    data.update(changes)
    return JetViTConfig.from_dict(data)


_COMPUTE_FIELDS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "use_gated_mlp", "patch_size",
    "num_register_tokens", "position_embedding_type", "query_bias", "key_bias", "value_bias",
)


def _compute_mismatch(a: JetViTConfig, b: JetViTConfig) -> list[str]:
    return [f"{k}: {getattr(a, k)!r} != {getattr(b, k)!r}" for k in _COMPUTE_FIELDS if getattr(a, k) != getattr(b, k)]


def _spec_from_preset(name: str, window_size: int | None) -> ModelSpec:
    from .convert import jetvit_config_from_source

    preset = get_preset(name)
    source_config = preset.source_config()
    overrides = dict(preset.jetvit_overrides)
    if window_size is not None:
        overrides["window_size"] = window_size
    config, _, architecture, jetvit_class = jetvit_config_from_source(source_config, None, **overrides)
    return ModelSpec(
        name=preset.name, jetvit_config=config, jetvit_class=jetvit_class, source_config=source_config,
        source_architecture=architecture, source_config_origin=f"preset {preset.name}",
    )


def _spec_from_checkpoint(path: str | os.PathLike, window_size: int | None) -> ModelSpec:
    from .models.jetvit import modeling_jetvit
    from .convert import jetvit_config_from_source

    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise ValueError(f"--model {path}: no config.json there; pass a directory written by `jetvit convert`.")
    config = JetViTConfig.from_pretrained(path)
    if window_size is not None:
        config = _config_with(config, window_size=window_size)
    architecture = (getattr(config, "architectures", None) or ["JetViTModel"])[0]
    jetvit_class = getattr(modeling_jetvit, architecture, modeling_jetvit.JetViTModel)
    spec = ModelSpec(name=str(path), jetvit_config=config, jetvit_class=jetvit_class, checkpoint=path)

    info_path = path / "jetvit_conversion.json"
    if not info_path.is_file():
        spec.notes.append(f"no {info_path.name} in {path}: the transformers (hf) baseline is skipped")
        return spec
    info = json.loads(info_path.read_text())
    family, source_architecture, source = info.get("family"), info.get("source_architecture"), info.get("source")
    source_config, origin = None, None
    if source:
        from transformers import AutoConfig

        source_path = Path(str(source)).expanduser()
        try:
            if (source_path / "config.json").is_file():
                source_config, origin = AutoConfig.from_pretrained(source_path), f"source directory {source_path}"
            else:  # a Hub id: only the local cache (the benchmark machine may have no network)
                source_config = AutoConfig.from_pretrained(str(source), local_files_only=True)
                origin = f"cached Hub config {source}"
        except Exception:  # unreachable source: rebuild from the JetViT config below
            source_config = None
    if source_config is None and family and source_architecture:
        try:
            source_config = source_config_from_jetvit(config, family, source_architecture)
            origin = f"rebuilt from the JetViT config ({family}, {source_architecture})"
        except ValueError as error:
            spec.notes.append(f"hf baseline skipped: {error}")
    if source_config is not None:
        rebuilt, _, architecture, _ = jetvit_config_from_source(source_config, None)
        mismatch = _compute_mismatch(rebuilt, config)
        if mismatch:
            spec.notes.append(f"hf baseline skipped: the source config ({origin}) differs from the checkpoint: "
                              + "; ".join(mismatch))
        else:
            spec.source_config, spec.source_architecture = source_config, architecture
            spec.source_config_origin = origin
            spec.notes.append(f"hf baseline: {architecture} with random weights, config from {origin}")
    elif not spec.notes:
        spec.notes.append("hf baseline skipped: jetvit_conversion.json names no usable source")
    return spec


def resolve_model_spec(preset: str | None = None, model: str | os.PathLike | None = None,
                       window_size: int | None = None, config_overrides: dict | None = None) -> ModelSpec:
    """What to build: the source config (hf baseline), the JetViT config and class, and the checkpoint if any.

    `config_overrides` sets JetViTConfig fields of every JetViT model of the run (e.g. a switch between kernel
    implementations); fields JetViTConfig does not define are set as plain attributes, with a note.
    """
    if (preset is None) == (model is None):
        raise ValueError("pass exactly one of preset (a named architecture) or model (a converted checkpoint dir)")
    spec = _spec_from_preset(preset, window_size) if preset is not None else _spec_from_checkpoint(model, window_size)
    if config_overrides:
        import inspect

        known = set(inspect.signature(JetViTConfig.__init__).parameters) - {"self", "kwargs"}
        protected = {"num_hidden_layers", "attention_types"} & set(config_overrides)
        if protected:
            raise ValueError(f"config overrides cannot change {sorted(protected)}; use attention_types / presets")
        spec.jetvit_config = _config_with(spec.jetvit_config, **config_overrides)
        spec.config_overrides = dict(config_overrides)
        unknown = sorted(set(config_overrides) - known)
        if unknown:
            spec.notes.append(f"config overrides {unknown} are not JetViTConfig arguments; set as plain attributes")
    return spec


# --------------------------------------------------------------------------------------------------------------------
# Devices, environment, building
# --------------------------------------------------------------------------------------------------------------------


def check_device(device: str) -> torch.device:
    """`torch.device` for `device`, or a `DeviceUnavailableError` explaining why it cannot be used here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceUnavailableError(
            f"unknown device {device!r}; use 'cuda' (GPU benchmark) or 'cpu' (smoke test)"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"--device {device} was requested but no CUDA GPU is available (torch {torch.__version__}, built with "
                f"CUDA {torch.version.cuda}). GPU benchmarks need a GPU; run with --device cpu for a smoke test "
                f"({CPU_SMOKE_NOTE})."
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) visible")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.type != "cpu":
        raise DeviceUnavailableError(f"device {device!r} is not supported; use 'cuda' or 'cpu'")
    return dev


def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def environment(device: torch.device) -> dict:
    """Versions and hardware, for the JSON record."""
    import transformers

    from . import __version__ as jetvit_version

    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    env = {
        "device": device.type,
        "gpu": None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "triton": triton_version,
        "jetvit_hf": jetvit_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu=torch.cuda.get_device_name(device),
            gpu_capability=list(torch.cuda.get_device_capability(device)),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_count=torch.cuda.device_count(),
        )
    return env


def _is_oom(error: BaseException) -> bool:
    if isinstance(error, getattr(torch.cuda, "OutOfMemoryError", ())):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "out of memory" in text.lower() or "can't allocate memory" in text or "DefaultCPUAllocator" in text
    )


def _free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _count(model: torch.nn.Module) -> tuple[int, int]:
    params = sum(p.numel() for p in model.parameters())
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    nbytes += sum(b.numel() * b.element_size() for b in model.buffers())
    return params, nbytes


def _check_fits_on_cpu(model_class, config, dtype: torch.dtype, device: torch.device) -> None:
    """Refuse to materialise a model whose weights would take more than half of this machine's RAM (CPU mode)."""
    if device.type != "cpu":
        return
    with torch.device("meta"):
        meta = model_class._from_config(copy.deepcopy(config), dtype=dtype)
    _, nbytes = _count(meta)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if nbytes > ram / 2:
        raise ValueError(
            f"{model_class.__name__} needs {nbytes / 2**30:.1f} GiB of {_dtype_name(dtype)} weights, more than half of "
            f"this machine's {ram / 2**30:.1f} GiB of RAM; CPU mode is a smoke test, use a smaller preset (e.g. tiny)."
        )


def build_model(model_class, config, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Random-initialised `model_class(config)` built directly on `device` in `dtype` (no fp32 copy on the CPU first),
    in eval mode, with SDPA attention where the class supports it."""
    _check_fits_on_cpu(model_class, config, dtype, device)
    kwargs = {"dtype": dtype}
    if getattr(model_class, "_supports_sdpa", False):
        kwargs["attn_implementation"] = "sdpa"
    # ordinary (not inference-mode) parameters, as in real use; the forward passes run under inference_mode
    with torch.inference_mode(False), torch.device(device):
        model = model_class._from_config(copy.deepcopy(config), **kwargs)
    return model.eval().requires_grad_(False)


def _load_checkpoint(spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        with torch.inference_mode(False):
            model = _from_pretrained(spec, device, dtype)
    finally:
        logging.set_verbosity(verbosity)
    return model.eval().requires_grad_(False)


def _from_pretrained(spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    config = copy.deepcopy(spec.jetvit_config)  # the checkpoint's, with any --window-size override
    try:
        return spec.jetvit_class.from_pretrained(spec.checkpoint, config=config, dtype=dtype, device_map=str(device))
    except (ImportError, ValueError, TypeError):  # a transformers without device_map support for this case
        config = copy.deepcopy(spec.jetvit_config)
        return spec.jetvit_class.from_pretrained(spec.checkpoint, config=config, dtype=dtype).to(device)


def prepare_jetvit(model: torch.nn.Module, fuse_qkv: bool = True) -> torch.nn.Module:
    """JetViT's inference set-up: one fused QKV GEMM per attention (`fuse_qkv_projections`) and the MLP's GELU in the
    up-projection's GEMM epilogue (`fuse_gelu_epilogue`, CUDA half precision only), where the model has them."""
    if fuse_qkv and hasattr(model, "fuse_qkv_projections"):
        with torch.inference_mode(False):
            model.fuse_qkv_projections()
            model.fuse_gelu_epilogue()
    return model


def _has_fused_qkv(model: torch.nn.Module) -> bool:
    return any(getattr(m, "qkv_weight", None) is not None for m in model.modules())


def _model_factories(spec: ModelSpec, attention_types: list[str], baselines: Sequence[str],
                     fuse_qkv: bool = True) -> dict:
    """name -> (description, builder(device, dtype)) for the models this run compares."""
    import transformers

    factories = {}
    for name, how in (("hf", ""), ("hf-eager", ", never compiled")):
        if name not in baselines:
            continue
        if spec.source_config is not None:
            source_class = getattr(transformers, spec.source_architecture)
            factories[name] = (
                f"{spec.source_architecture} (transformers, sdpa{how})",
                lambda device, dtype: build_model(source_class, spec.source_config, device, dtype),
            )
        else:
            factories[name] = ("transformers source model (unavailable)", None)
    full_config = _config_with(spec.jetvit_config, attention_types=["full"] * spec.num_layers)
    if "jetvit-full" in baselines:
        factories["jetvit-full"] = (
            f"{spec.jetvit_class.__name__}, all full attention",
            lambda device, dtype: prepare_jetvit(build_model(spec.jetvit_class, full_config, device, dtype), fuse_qkv),
        )
    hybrid_config = _config_with(spec.jetvit_config, attention_types=attention_types)
    if spec.checkpoint is not None and attention_types == list(spec.jetvit_config.attention_types):
        hybrid = (f"{spec.jetvit_class.__name__} from {spec.checkpoint}",
                  lambda device, dtype: prepare_jetvit(_load_checkpoint(spec, device, dtype), fuse_qkv))
    else:
        hybrid = (f"{spec.jetvit_class.__name__}, {summarize_types(attention_types)}",
                  lambda device, dtype: prepare_jetvit(build_model(spec.jetvit_class, hybrid_config, device, dtype),
                                                       fuse_qkv))
    factories["jetvit"] = hybrid
    return factories


# --------------------------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class RunSettings:
    device: torch.device
    dtype: torch.dtype
    warmup: int
    iters: int
    compile: bool = False
    compile_mode: str | None = None
    sdpa_backend: str = "default"
    profile: bool = True
    fuse_qkv: bool = True

    def timing_record(self) -> dict:
        cuda = self.device.type == "cuda"
        return {
            "method": "cuda-events" if cuda else "time.perf_counter",
            "statistic": "median",
            "warmup": self.warmup,
            "iters": self.iters,
            "synchronize_each_iteration": True,
            "inference_mode": True,
            "cudnn_benchmark": cuda,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        }

    def compile_record(self) -> dict | None:
        return {"mode": self.compile_mode or "default", "dynamic": False} if self.compile else None


def _settings(device, dtype, warmup, iters, compile, compile_mode, sdpa_backend, profile, fuse_qkv=True) -> RunSettings:
    dev = check_device(device)
    if sdpa_backend is None:
        sdpa_backend = "default"
    if sdpa_backend not in SDPA_BACKENDS:
        raise ValueError(f"unknown SDPA backend {sdpa_backend!r}; allowed: {', '.join(SDPA_BACKENDS)}")
    warmup = DEFAULT_WARMUP[dev.type] if warmup is None else int(warmup)
    iters = DEFAULT_ITERS[dev.type] if iters is None else int(iters)
    if iters < 1 or warmup < 0:
        raise ValueError(f"need iters >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
    if compile_mode is not None:  # --compile-mode implies --compile
        compile = True
    return RunSettings(dev, resolve_dtype(dtype, dev), warmup, iters, bool(compile), compile_mode, sdpa_backend,
                       profile, bool(fuse_qkv))


def _sdpa_context(name: str):
    """Prefer one SDPA backend (others stay enabled as fallbacks, e.g. for masked window attention)."""
    if name in (None, "default"):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    first = order[name]
    rest = [b for b in order.values() if b != first]
    try:
        return sdpa_kernel([first, *rest], set_priority=True)
    except TypeError:  # torch without set_priority: only the requested backend
        return sdpa_kernel([first])


@contextlib.contextmanager
def _run_context(settings: RunSettings):
    saved = torch.backends.cudnn.benchmark
    cuda = settings.device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    try:
        # the CUDA events and the current stream belong to the benchmarked device
        with torch.cuda.device(settings.device) if cuda else contextlib.nullcontext():
            with torch.inference_mode(), _sdpa_context(settings.sdpa_backend):
                yield
    finally:
        torch.backends.cudnn.benchmark = saved


def _maybe_compile(module: torch.nn.Module, settings: RunSettings, name: str = ""):
    if not settings.compile or name in NEVER_COMPILED:
        return module
    import torch._dynamo

    for option in ("recompile_limit", "cache_size_limit"):  # one graph per (resolution, batch) in sweeps
        if hasattr(torch._dynamo.config, option):
            setattr(torch._dynamo.config, option, max(getattr(torch._dynamo.config, option), 64))
    mode = None if settings.compile_mode in (None, "default") else settings.compile_mode
    return torch.compile(module, mode=mode, dynamic=False)


def _cudagraph_step(settings: RunSettings):
    if settings.compile and hasattr(torch, "compiler") and hasattr(torch.compiler, "cudagraph_mark_step_begin"):
        return torch.compiler.cudagraph_mark_step_begin
    return lambda: None


def measure(fn: Callable[[], object], settings: RunSettings, sync_each_iteration: bool = True) -> dict:
    """Time `fn()` (already inside the run context): warm-up, then `iters` timed iterations; peak memory.

    With `sync_each_iteration` (latency) the device is idle when each iteration starts, so a time includes launching
    the call. Without it (CUDA only; per-layer tables) the iterations are queued back to back and each is timed by
    its own pair of events: the cost of the call inside a stream of work, as a layer sees it inside a model.
    """
    device = settings.device
    cuda = device.type == "cuda"
    step = _cudagraph_step(settings)
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(settings.warmup):
        step()
        fn()
    times = []
    if cuda and sync_each_iteration:
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(settings.iters):
            step()
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    elif cuda:
        torch.cuda.synchronize(device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(settings.iters)]
        for start, end in events:
            step()
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        times = [start.elapsed_time(end) for start, end in events]
    else:
        for _ in range(settings.iters):
            step()
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    record = {
        "status": "ok",
        "median_ms": statistics.median(times),
        "mean_ms": statistics.fmean(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "std_ms": statistics.pstdev(times),
        "iters": len(times),
        "times_ms": [round(t, 4) for t in times],
        "peak_memory_mib": None,
        "peak_reserved_mib": None,
    }
    if cuda:
        record["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        record["peak_reserved_mib"] = torch.cuda.max_memory_reserved(device) / 2**20
    return record


def _status(status: str, **extra) -> dict:
    return {"status": status, "median_ms": None, "peak_memory_mib": None, **extra}


def _random_pixels(config, batch_size: int, resolution: tuple[int, int], settings: RunSettings) -> torch.Tensor:
    channels = getattr(config, "num_channels", 3)
    generator = torch.Generator(device=settings.device).manual_seed(0)
    return torch.randn(batch_size, channels, *resolution, device=settings.device, dtype=settings.dtype,
                       generator=generator)


def _measure_model(model_fn, config, batch_size: int, resolution, settings: RunSettings) -> dict:
    """Measure one (model, batch, resolution) case; an out-of-memory error becomes `{"status": "oom"}`."""
    oom = None
    try:
        pixels = _random_pixels(config, batch_size, resolution, settings)
        record = measure(lambda: model_fn(pixel_values=pixels), settings)
    except Exception as error:  # noqa: BLE001 - only OOM is recorded, everything else propagates
        if not _is_oom(error):
            raise
        oom = str(error).splitlines()[0][:300]
    finally:
        pixels = None
    if oom is not None:
        _free_memory(settings.device)
        return _status("oom", batch_size=batch_size, error=oom)
    record["batch_size"] = batch_size
    record["images_per_s"] = batch_size / (record["median_ms"] / 1e3) if record["median_ms"] > 0 else None
    return record


# --------------------------------------------------------------------------------------------------------------------
# Which SDPA backend ran (profiler)
# --------------------------------------------------------------------------------------------------------------------

_SDPA_OPS = {
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "cpu-flash",
    "aten::_scaled_dot_product_efficient_attention": "efficient",
    "aten::_scaled_dot_product_attention_math": "math",
    "aten::_scaled_dot_product_fused_attention_overrideable": "overrideable",
}


def classify_attention_kernel(name: str) -> str | None:
    """SDPA backend a GPU kernel name belongs to (`cudnn`, `flash`, `efficient`), or None for other kernels."""
    lowered = name.lower()
    if "cudnn" in lowered and any(s in lowered for s in ("sdpa", "attn", "fmha", "flash", "attention")):
        return "cudnn"  # not "fprop" alone: cuDNN's convolution kernels are fprop kernels too
    if "flash" in lowered and ("fwd" in lowered or "attn" in lowered or "attention" in lowered or "flash::" in lowered):
        return "flash"
    if "fmha" in lowered or "efficient_attention" in lowered or "mem_eff" in lowered:
        return "efficient"
    return None


def kernel_category(name: str) -> str:
    """Coarse class of a GPU kernel for a time breakdown: gemm, convolution (patch embedding, DPT neck and head),
    softmax attention, JetViT's own attention kernels (the Triton kernels of kernels_jetvit.py), other."""
    lowered = name.lower()
    if "linear_attention" in lowered or any(
        k in name for k in ("_state_kernel", "_state_finalize", "_state_split", "_output_kernel")
    ):
        return "jetvit linear attention"
    if "_window_kernel" in name or "_prefix_merge" in name:
        return "jetvit window attention"
    if classify_attention_kernel(name) or "attention" in lowered or "sdpa" in lowered:
        return "softmax attention"
    if not lowered.startswith("triton_") and any(key in lowered for key in ("fprop", "dgrad", "wgrad", "conv2d",
                                                                            "convolution", "depthwise")):
        return "convolution"  # Inductor's fused epilogues around a convolution (triton_*) stay elementwise
    if any(key in lowered for key in ("gemm", "xmma", "cutlass", "nvjet", "matmul", "wgmma", "cublas")):
        return "gemm"
    return "other (norms, elementwise, copies)"


def profile_forward(fn: Callable[[], object], settings: RunSettings, top: int = 12) -> dict:
    """One profiled call of `fn`: the SDPA ops dispatched, the attention kernels that ran, and the top kernels by GPU
    time (CPU: ops only)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = settings.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    step = _cudagraph_step(settings)
    step()
    with profile(activities=activities) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize(settings.device)
    ops, kernels = {}, {}
    for event in prof.key_averages():
        name = event.key
        if name in _SDPA_OPS:
            ops[name] = ops.get(name, 0) + event.count
        if cuda and getattr(event, "device_type", None) == DeviceType.CUDA:
            us = getattr(event, "self_device_time_total", None)
            if us is None:
                us = getattr(event, "self_cuda_time_total", 0.0)
            count, total = kernels.get(name, (0, 0.0))
            kernels[name] = (count + event.count, total + float(us))
    backends = sorted({_SDPA_OPS[op] for op in ops})
    attention_kernels = sorted({name for name in kernels if classify_attention_kernel(name)})
    backends_from_kernels = sorted({classify_attention_kernel(name) for name in attention_kernels})
    total_us = sum(t for _, t in kernels.values())
    by_category = {}
    for name, (_, us) in kernels.items():
        category = kernel_category(name)
        by_category[category] = by_category.get(category, 0.0) + us / 1e3
    top_kernels = [
        {"name": name[:200], "calls": count, "ms": round(us / 1e3, 4),
         "share": round(us / total_us, 4) if total_us else None}
        for name, (count, us) in sorted(kernels.items(), key=lambda kv: -kv[1][1])[:top]
    ]
    return {
        "backends": backends_from_kernels or backends,
        "sdpa_ops": ops,
        "attention_kernels": [n[:200] for n in attention_kernels],
        "top_kernels": top_kernels,
        "kernel_ms_by_category": {k: round(v, 4) for k, v in sorted(by_category.items(), key=lambda kv: -kv[1])},
        "gpu_kernel_ms": round(total_us / 1e3, 4) if cuda else None,
    }


# --------------------------------------------------------------------------------------------------------------------
# Analytic FLOPs (notes/performance.md §4), for achieved TFLOP/s
# --------------------------------------------------------------------------------------------------------------------


def backbone_flops(config: JetViTConfig, attention_types: Sequence[str], resolution, batch_size: int = 1) -> float:
    """Forward FLOPs of the transformer layers (projections, MLP, attention; embeddings and heads excluded)."""
    gh, gw = resolution[0] // config.patch_size, resolution[1] // config.patch_size
    patches, prefix, d = gh * gw, config.num_prefix_tokens, config.hidden_size
    n = patches + prefix
    mlp = 2 * n * d * config.intermediate_size * (3 if config.use_gated_mlp else 2)
    proj = 8 * n * d * d
    ws = config.window_size
    windows = math.ceil(gh / ws) * math.ceil(gw / ws)
    attention = {
        "full": 4 * n * n * d,
        "window": 4 * windows * ws * ws * (ws * ws + prefix) * d + 4 * prefix * n * d,
        "linear": 4 * n * d * (config.head_dim + 1) + 2 * patches * d * config.dynamic_conv_kernel_size**2,
    }
    return float(batch_size * sum(proj + mlp + attention[t] for t in attention_types))


# --------------------------------------------------------------------------------------------------------------------
# benchmark / sweep / layer table
# --------------------------------------------------------------------------------------------------------------------


def parse_resolution(text) -> tuple[int, int]:
    """`"1024x2048"` (height x width), `"518"` (square), an int or an (H, W) pair."""
    if isinstance(text, int):
        return (text, text)
    if isinstance(text, (tuple, list)):
        if len(text) != 2:
            raise ValueError(f"resolution must be (height, width), got {text!r}")
        return (int(text[0]), int(text[1]))
    parts = str(text).lower().replace("*", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"bad resolution {text!r}; write HEIGHTxWIDTH, e.g. 1024x2048, or one number") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 1:
        raise ValueError(f"bad resolution {text!r}; write HEIGHTxWIDTH, e.g. 1024x2048, or one number")
    return (values[0], values[1])


def num_tokens(config: JetViTConfig, resolution) -> int:
    return config.num_prefix_tokens + (resolution[0] // config.patch_size) * (resolution[1] // config.patch_size)


def _check_resolution(config: JetViTConfig, resolution) -> None:
    if min(resolution) < config.patch_size:
        raise ValueError(
            f"resolution {resolution[0]}x{resolution[1]} is smaller than one {config.patch_size}-pixel patch"
        )


def _model_record(spec: ModelSpec) -> dict:
    c = spec.jetvit_config
    return {
        "name": spec.name,
        "source_architecture": spec.source_architecture,
        "source_config_origin": spec.source_config_origin,
        "jetvit_class": spec.jetvit_class.__name__,
        "checkpoint": str(spec.checkpoint) if spec.checkpoint else None,
        "hidden_size": c.hidden_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "head_dim": c.head_dim,
        "intermediate_size": c.intermediate_size,
        "gated_mlp": c.use_gated_mlp,
        "patch_size": c.patch_size,
        "num_prefix_tokens": c.num_prefix_tokens,
        "window_size": c.window_size,
    }


def _header(kind: str, spec: ModelSpec, settings: RunSettings, attention_types, layout, command) -> dict:
    env = environment(settings.device)
    return {
        "schema": f"jetvit-bench/{kind}/v{SCHEMA_VERSION}",
        "mode": kind,
        "command": command,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "note": CPU_SMOKE_NOTE if settings.device.type == "cpu" else None,
        "environment": env,
        "versions": {k: env[k] for k in ("torch", "transformers", "triton", "jetvit_hf", "cuda", "cudnn", "python")},
        "gpu": env["gpu"],
        "device": settings.device.type,
        "dtype": _dtype_name(settings.dtype),
        "model": _model_record(spec),
        "attention_types": list(attention_types),
        "attention_layout": layout,
        "attention_summary": summarize_types(attention_types),
        "timing": settings.timing_record(),
        "compile": settings.compile_record(),
        "fuse_qkv": settings.fuse_qkv,
        "sdpa_backend_requested": settings.sdpa_backend,
        "config_overrides": dict(spec.config_overrides),
        "notes": list(spec.notes),
    }


def _hybrid_types(spec: ModelSpec, attention_types) -> tuple[list[str], str]:
    """The hybrid's types and a layout label: default `paper-2full` for a preset, the checkpoint's own for a model."""
    if attention_types is None:
        if spec.checkpoint is not None:
            return list(spec.jetvit_config.attention_types), "checkpoint"
        attention_types = "paper-2full"
    named = isinstance(attention_types, str) and attention_types.strip() in LAYOUTS
    layout = attention_types.strip() if named else "custom"
    return resolve_attention_types(attention_types, spec.num_layers), layout


def _ratio(numerator: dict | None, denominator: dict | None) -> float | None:
    a = (numerator or {}).get("median_ms")
    b = (denominator or {}).get("median_ms")
    return a / b if a and b else None


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, file=sys.stderr, leave=False, dynamic_ncols=True)


def _release(settings: RunSettings) -> None:
    """Return a finished model's memory (the caller drops its references first), so the next model's peak memory
    and build do not include it."""
    if settings.compile:
        import torch._dynamo

        torch._dynamo.reset()  # compiled graphs and guards hold the module
    _free_memory(settings.device)


def _build_case(factory, settings: RunSettings):
    """(model, None) or (None, status record) when building runs out of memory."""
    try:
        return factory(settings.device, settings.dtype), None
    except Exception as error:  # noqa: BLE001
        if not _is_oom(error):
            raise
        message = str(error).splitlines()[0][:300]
    _free_memory(settings.device)
    return None, _status("oom", error=f"while building: {message}")


def _default_resolution(spec: ModelSpec) -> tuple[int, int]:
    size = spec.jetvit_config.image_size
    return (size, size)


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
    settings = _settings(device, dtype, warmup, iters, compile, compile_mode, sdpa_backend, profile, fuse_qkv)
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
    factories = _model_factories(spec, types, baselines, settings.fuse_qkv)
    flops = {
        "jetvit-full": backbone_flops(spec.jetvit_config, ["full"] * spec.num_layers, resolution),
        "jetvit": backbone_flops(spec.jetvit_config, types, resolution),
    }
    flops["hf"] = flops["hf-eager"] = flops["jetvit-full"]
    bar = _progress(len(factories) * 2, "jetvit bench", progress)
    with _run_context(settings):
        for name, (description, factory) in factories.items():
            entry = {"description": description}
            result["results"][name] = entry
            if factory is None:
                entry.update(status="skipped", reason="; ".join(spec.notes) or "no source config")
                bar.update(2)
                continue
            bar.set_postfix_str(f"{name}: build")
            built, failed = _build_case(factory, settings)
            if failed is not None:
                entry.update(status="oom", latency=failed, throughput=failed)
                bar.update(2)
                continue
            entry["params"], weight_bytes = _count(built)
            entry["weights_mib"] = weight_bytes / 2**20
            entry["attn_implementation"] = _attn_implementations(built)
            entry["fused_qkv"] = _has_fused_qkv(built)
            runner = _maybe_compile(built, settings, name)
            bar.set_postfix_str(f"{name}: batch 1")
            entry["latency"] = _measure_model(runner, built.config, 1, resolution, settings)
            bar.update(1)
            if batch_size == 1:
                entry["throughput"] = dict(entry["latency"])
            else:
                bar.set_postfix_str(f"{name}: batch {batch_size}")
                entry["throughput"] = _measure_model(runner, built.config, batch_size, resolution, settings)
            bar.update(1)
            entry["status"] = "ok" if entry["latency"]["status"] == "ok" else entry["latency"]["status"]
            entry["backbone_gflops"] = flops[name] / 1e9
            lat = entry["latency"].get("median_ms")
            entry["backbone_tflops_per_s"] = flops[name] / (lat / 1e3) / 1e12 if lat else None
            entry["profile"] = "n/a"  # CPU, or --no-profile
            if settings.device.type == "cuda" and settings.profile and entry["latency"]["status"] == "ok":
                pixels = _random_pixels(built.config, 1, resolution, settings)
                try:
                    entry["profile"] = profile_forward(lambda: runner(pixel_values=pixels), settings)
                except Exception as error:  # noqa: BLE001 - the profiler is diagnostics, never fatal
                    entry["profile"] = {"backends": [], "error": f"profiler failed: {type(error).__name__}: {error}"}
                pixels = None
            runner = built = None
            _release(settings)
    bar.close()
    results = result["results"]
    for other in BASELINES:
        if other in results:
            result["ratios"][f"{other}/jetvit"] = {
                kind: _ratio(results[other].get(kind), results["jetvit"].get(kind))
                for kind in ("latency", "throughput")
            }
    result["sdpa_backend"] = _sdpa_summary(results)
    return result


def _attn_implementations(model: torch.nn.Module) -> dict:
    """Class name -> the transformers attention implementation each (sub-)model resolved to. A wrapper without
    attention of its own (DepthAnythingForDepthEstimation) says "eager" while its backbone runs "sdpa"."""
    from transformers import PreTrainedModel

    return {type(m).__name__: getattr(m.config, "_attn_implementation", None)
            for m in model.modules() if isinstance(m, PreTrainedModel)}


def _sdpa_summary(results: dict) -> str | dict:
    summary = {}
    for name, entry in results.items():
        profile = entry.get("profile")
        if isinstance(profile, dict):
            summary[name] = ",".join(profile.get("backends") or []) or "none"
    return summary or "n/a"


def _check_baselines(baselines) -> tuple[str, ...]:
    if isinstance(baselines, str):
        baselines = [] if baselines.strip() in ("", "none") else [b.strip() for b in baselines.split(",")]
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; allowed: {', '.join(BASELINES)} or 'none'")
    return tuple(b for b in BASELINES if b in baselines)


def _api_command(function: str, **kwargs) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if v is not None)
    return f"jetvit_hf.bench.{function}({args})"


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
    plot: str | os.PathLike | None = None,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Latency (batch `batch_size`, default 1) against resolution for hf / jetvit-full / jetvit.

    Each model is built once and timed at every resolution; an out-of-memory point is recorded as `"oom"`, and the
    baselines are `"skipped"` above `skip_baselines_above` tokens. Writes a log-log PNG of latency against tokens when
    `plot` is given.
    """
    settings = _settings(device, dtype, warmup, iters, compile, compile_mode, sdpa_backend, False, fuse_qkv)
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
    factories = _model_factories(spec, types, baselines, settings.fuse_qkv)
    bar = _progress(len(factories) * len(points), "jetvit bench sweep", progress)
    with _run_context(settings):
        for name, (_, factory) in factories.items():
            todo = []
            for p in points:
                if name in BASELINES and skip_baselines_above is not None and p["num_tokens"] > skip_baselines_above:
                    p["results"][name] = _status("skipped", reason=f"above {skip_baselines_above} tokens")
                else:
                    todo.append(p)
            if factory is None:
                for p in todo:
                    p["results"][name] = _status("skipped", reason="; ".join(spec.notes) or "no source config")
                bar.update(len(points))
                continue
            if not todo:
                bar.update(len(points))
                continue
            bar.set_postfix_str(f"{name}: build")
            built, failed = _build_case(factory, settings)
            if failed is not None:
                for p in todo:
                    p["results"][name] = dict(failed)
                bar.update(len(points))
                continue
            runner = _maybe_compile(built, settings, name)
            bar.update(len(points) - len(todo))
            for p in todo:
                bar.set_postfix_str(f"{name}: {p['resolution'][0]}x{p['resolution'][1]}")
                p["results"][name] = _measure_model(runner, built.config, int(batch_size), tuple(p["resolution"]),
                                                    settings)
                bar.update(1)
            runner = built = None
            _release(settings)
    bar.close()
    for p in points:
        p["results"]["jetvit"]["description"] = factories["jetvit"][0]
        for other in BASELINES:
            if other in p["results"]:
                p["ratios"][f"{other}/jetvit"] = _ratio(p["results"][other], p["results"]["jetvit"])
    result["points"] = points
    result["models"] = {name: description for name, (description, _) in factories.items()}
    if plot is not None:
        result["plot"] = plot_sweep(result, plot)
    return result


def plot_sweep(result: dict, path: str | os.PathLike) -> str | None:
    """Log-log latency against tokens (left) and the hybrid's speed-up (right); returns the PNG path, or None (with a
    note in `result["notes"]`) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        result.setdefault("notes", []).append("plot skipped: matplotlib is not installed")
        return None
    styles = {"hf": ("tab:gray", "s", "--"), "hf-eager": ("tab:olive", "v", ":"), "jetvit-full": ("tab:blue", "o", "-"), "jetvit": ("tab:red", "D", "-")}
    fig, (ax, ax_ratio) = plt.subplots(1, 2, figsize=(13, 5.2))
    models = result.get("models", {})
    for name in MODEL_NAMES:
        xs, ys, oom_xs = [], [], []
        for p in result["points"]:
            r = p["results"].get(name)
            if r is None:
                continue
            if r.get("status") == "ok":
                xs.append(p["num_tokens"])
                ys.append(r["median_ms"])
            elif r.get("status") == "oom":
                oom_xs.append(p["num_tokens"])
        if not xs and not oom_xs:
            continue
        color, marker, line = styles[name]
        label = f"{name}: {models.get(name, '')}".rstrip(": ")
        ax.plot(xs, ys, marker=marker, linestyle=line, color=color, label=label)
        for x, y in zip(xs, ys):
            ax.annotate(f"{y:.3g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
        for x in oom_xs:
            ax.annotate("OOM", (x, ys[-1] if ys else 1.0), color=color, fontsize=8, ha="center")
    any_ratio = False
    for name, color in (("hf", "tab:gray"), ("jetvit-full", "tab:blue")):
        pts = [(p["num_tokens"], p["ratios"].get(f"{name}/jetvit")) for p in result["points"]]
        pts = [(x, y) for x, y in pts if y]
        if pts:
            ax_ratio.plot(*zip(*pts), marker="o", color=color, label=f"{name} / jetvit")
            any_ratio = True
    for axis in (ax, ax_ratio):
        axis.set_xscale("log")
        axis.grid(True, which="both", alpha=0.3)
        axis.set_xlabel("tokens (prefix + patches)")
    ax.set_yscale("log")
    ax.set_ylabel(f"latency, batch {result.get('batch_size', 1)} (ms, median)")
    ax_ratio.set_ylabel("speed-up of the hybrid (time ratio)")
    ax_ratio.axhline(1.0, color="black", linewidth=0.8)
    ax.legend(fontsize=8)
    if any_ratio:
        ax_ratio.legend(fontsize=8)
    xticks = [p["num_tokens"] for p in result["points"]]
    labels = [f"{p['num_tokens']}\n{p['resolution'][0]}x{p['resolution'][1]}" for p in result["points"]]
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullLocator

    for axis in (ax, ax_ratio):
        axis.xaxis.set_minor_locator(NullLocator())
        axis.set_xticks(xticks)
        axis.set_xticklabels(labels, fontsize=7)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_locator(NullLocator())
    where = result["gpu"] or f"CPU ({CPU_SMOKE_NOTE})"
    compiled = f", torch.compile {result['compile']['mode']}" if result.get("compile") else ""
    fig.suptitle(f"{result['model']['name']}: full vs hybrid ({result['attention_summary']}) - {where}, "
                 f"{result['dtype']}{compiled}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


class _Captured(Exception):
    pass


def capture_layer_inputs(model: torch.nn.Module, pixel_values: torch.Tensor):
    """The first JetViT layer and the exact `(args, kwargs)` the model calls it with for `pixel_values` (the forward
    stops there). Captured rather than rebuilt, so whatever the encoder passes its layers is timed as it is."""
    from .models.jetvit.modeling_jetvit import JetViTLayer

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
    settings = _settings(device, dtype, warmup, iters, compile, compile_mode, sdpa_backend, False, fuse_qkv)
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
    from .models.jetvit.modeling_jetvit import JetViTModel

    num_layers = spec.num_layers
    bar = _progress(len(ATTENTION_TYPES) + 1 + (check_types is not None), "jetvit bench layer table", progress)
    per_layer, layer_records = {}, {}

    def fail(what: str, record: dict):
        raise ValueError(f"layer table: {what} ran out of memory at batch {batch_size}, {resolution[0]}x"
                         f"{resolution[1]} ({record.get('error')}); try a smaller batch or resolution")

    with _run_context(settings):
        for kind in ATTENTION_TYPES:
            bar.set_postfix_str(kind)
            config = _config_with(spec.jetvit_config, num_hidden_layers=1, attention_types=[kind])
            one_layer = prepare_jetvit(build_model(JetViTModel, config, settings.device, settings.dtype),
                                       settings.fuse_qkv)
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
                fail(f"one {kind} layer", record)
            per_layer[kind] = record["median_ms"]
            layer_records[kind] = record
            bar.update(1)

        def whole(types, label):
            bar.set_postfix_str(label)
            config = _config_with(spec.jetvit_config, attention_types=types)
            built = prepare_jetvit(build_model(spec.jetvit_class, config, settings.device, settings.dtype),
                                   settings.fuse_qkv)
            runner = _maybe_compile(built, settings)
            record = _measure_model(runner, config, batch_size, resolution, settings)
            runner = built = None
            _release(settings)
            if record["status"] != "ok":
                fail(label, record)
            bar.update(1)
            return record

        full_record = whole(["full"] * num_layers, "whole all-full model")
        check_record = whole(check_types, "whole hybrid (check)") if check_types is not None else None
    bar.close()

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
        "sdpa_backend_requested": header["sdpa_backend_requested"],
        "config_overrides": header["config_overrides"],
        "notes": header["notes"],
    }
    if remainder_raw < 0:
        table["notes"].append("whole model was faster than num_layers x one full layer; remainder clamped to 0")
    if check_record is not None:
        estimate = estimate_latency(table, check_types)
        table["check"] = {
            "attention_types": check_types,
            "estimated_ms": estimate,
            "measured_ms": check_record["median_ms"],
            "relative_error": (estimate - check_record["median_ms"]) / check_record["median_ms"],
        }
    return table


def estimate_latency(table: dict | str | os.PathLike, attention_types) -> float:
    """Predicted latency (ms) of a layout from a `layer_latency_table` result (dict or JSON path):
    `remainder_ms + sum(per_layer_ms[type] for each layer)`."""
    if not isinstance(table, dict):
        table = json.loads(Path(table).read_text())
    types = resolve_attention_types(attention_types, table["num_layers"])
    per_layer = table["per_layer_ms"]
    missing = sorted(set(types) - set(per_layer))
    if missing:
        raise ValueError(f"the latency table has no per-layer time for {missing}")
    return float(table["remainder_ms"]) + sum(float(per_layer[t]) for t in types)


# --------------------------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------------------------


def _fmt(value, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _cell(record: dict | None, key: str, spec: str = ".2f") -> str:
    if not record:
        return "-"
    if record.get("status") != "ok":
        return record.get("status", "-")
    return _fmt(record.get(key), spec)


def _where(result: dict) -> str:
    env = result["environment"]
    return env["gpu"] or f"CPU ({env['cpu_threads']} threads)"


def format_benchmark(result: dict) -> str:
    model = result["model"]
    b = result["batch_sizes"]["throughput"]
    res = result["resolution"]
    compiled = f", torch.compile({result['compile']['mode']})" if result.get("compile") else ", eager"
    lines = []
    if result.get("note"):
        lines.append(f"*** {result['note'].upper()} ***")
    lines += [
        f"jetvit bench: {model['name']} at {res[0]}x{res[1]} ({result['num_tokens']} tokens), {result['dtype']}"
        f"{compiled}, on {_where(result)}",
        f"hybrid: {result['attention_summary']} ({result['attention_layout']}); window {model['window_size']} patches; "
        f"SDPA: {_sdpa_text(result['sdpa_backend'])}; torch {result['versions']['torch']}, transformers "
        f"{result['versions']['transformers']}",
        "",
        f"| model | latency bs1 (ms) | bs{b} (ms/batch) | bs{b} (img/s) | peak mem bs1 (MiB) | peak mem bs{b} (MiB) "
        f"| backbone TFLOP/s bs1 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, entry in result["results"].items():
        if entry.get("status") == "skipped":
            lines.append(f"| {name} | skipped | | | | | |")
            continue
        lat, thr = entry.get("latency"), entry.get("throughput")
        lines.append(
            f"| {name} | {_cell(lat, 'median_ms')} | {_cell(thr, 'median_ms')} | {_cell(thr, 'images_per_s', '.1f')} "
            f"| {_cell(lat, 'peak_memory_mib', '.0f')} | {_cell(thr, 'peak_memory_mib', '.0f')} "
            f"| {_fmt(entry.get('backbone_tflops_per_s'), '.1f')} |"
        )
    for key, ratio in result["ratios"].items():
        lines.append(f"| {key} (time ratio) | {_fmt(ratio['latency'], '.2f', 'x')} | "
                     f"{_fmt(ratio['throughput'], '.2f', 'x')} | | | | |")
    for name, entry in result["results"].items():
        lines.append(f"  {name}: {entry['description']}")
    for note in result.get("notes", []):
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def _sdpa_text(summary) -> str:
    if isinstance(summary, dict):
        return ", ".join(f"{k}={v}" for k, v in summary.items())
    return str(summary)


def format_sweep(result: dict) -> str:
    lines = []
    if result.get("note"):
        lines.append(f"*** {result['note'].upper()} ***")
    compiled = f", torch.compile({result['compile']['mode']})" if result.get("compile") else ", eager"
    lines += [
        f"jetvit bench sweep: {result['model']['name']}, batch {result['batch_size']}, {result['dtype']}{compiled}, "
        f"on {_where(result)}; hybrid {result['attention_summary']}",
        "",
    ]
    names = list(result["models"])  # the run's models, baselines first
    ratios = [f"{name}/jetvit" for name in names if name != "jetvit"]
    lines += [
        "| resolution | tokens | " + " | ".join([f"{name} (ms)" for name in names] + ratios) + " |",
        "|---|---:|" + "---:|" * (len(names) + len(ratios)),
    ]
    for p in result["points"]:
        r, q = p["results"], p["ratios"]
        cells = [_cell(r.get(name), "median_ms") for name in names] + [_fmt(q.get(k), ".2f", "x") for k in ratios]
        lines.append(f"| {p['resolution'][0]}x{p['resolution'][1]} | {p['num_tokens']} | " + " | ".join(cells) + " |")
    if result.get("plot"):
        lines.append(f"  plot: {result['plot']}")
    for note in result.get("notes", []):
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def format_layer_table(table: dict) -> str:
    lines = []
    if table.get("note"):
        lines.append(f"*** {table['note'].upper()} ***")
    res = table["resolution"]
    lines += [
        f"jetvit bench layer table: {table['model']} at {res[0]}x{res[1]} ({table['num_tokens']} tokens), batch "
        f"{table['batch_size']}, {table['dtype']}, on {table['gpu'] or 'CPU'}",
        "",
        "| part | ms |",
        "|---|---:|",
    ]
    for kind, ms in table["per_layer_ms"].items():
        lines.append(f"| one {kind} layer | {ms:.3f} |")
    lines.append(f"| remainder (embeddings, norm, head) | {table['remainder_ms']:.3f} |")
    lines.append(f"| whole all-full model ({table['num_layers']} layers) | {table['whole_model_full_ms']:.3f} |")
    check = table.get("check")
    if check:
        lines.append(f"| check: {summarize_types(check['attention_types'])} estimated | {check['estimated_ms']:.3f} |")
        lines.append(f"| check: measured ({check['relative_error']:+.1%} error) | {check['measured_ms']:.3f} |")
    for note in table.get("notes", []):
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def list_presets() -> str:
    lines = ["| preset | source | description | aliases |", "|---|---|---|---|"]
    for p in PRESETS.values():
        lines.append(f"| {p.name} | {p.architecture} | {p.description} | {', '.join(p.aliases)} |")
    lines.append("")
    lines.append("layouts: " + ", ".join(LAYOUTS) + " (or jetvit convert's syntax, e.g. 'linear,window*10,full,...')")
    return "\n".join(lines)


__all__ = [
    "BASELINES",
    "CPU_SMOKE_NOTE",
    "DeviceUnavailableError",
    "LAYOUTS",
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
    "layer_latency_table",
    "paper_2full_layout",
    "paper_full_positions",
    "parse_resolution",
    "resolve_attention_types",
    "resolve_model_spec",
    "source_config_from_jetvit",
    "sweep",
]
