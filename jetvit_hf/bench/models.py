"""Building the models a run compares: `hf` and `hf-eager` (transformers' implementation of the source
architecture), `jetvit-full` (JetViT with every layer full) and `jetvit` (the hybrid, random or from a checkpoint),
each built directly on the device in the benchmark dtype and set up as JetViT is for inference."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence

import torch

from ..layouts import summarize_types
from .device import dtype_name
from .specs import ModelSpec, _config_with
from .timing import RunSettings

MODEL_NAMES = ("hf", "hf-eager", "jetvit-full", "jetvit")
BASELINES = ("hf", "hf-eager", "jetvit-full")
DEFAULT_BASELINES = ("hf", "jetvit-full")


def _check_baselines(baselines) -> tuple[str, ...]:
    if isinstance(baselines, str):
        baselines = [] if baselines.strip() in ("", "none") else [b.strip() for b in baselines.split(",")]
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; allowed: {', '.join(BASELINES)} or 'none'")
    return tuple(b for b in BASELINES if b in baselines)


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
            f"{model_class.__name__} needs {nbytes / 2**30:.1f} GiB of {dtype_name(dtype)} weights, more than half of "
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


def prepare_jetvit(model: torch.nn.Module, fuse_qkv: bool = True, tanh_gelu_epilogue: bool = False) -> torch.nn.Module:
    """JetViT's inference set-up: one fused QKV GEMM per attention (`fuse_qkv_projections`), and the MLP's GELU in
    its up-projection's epilogue (`fuse_gelu_epilogue`): the source model's exact GELU (a Gluon GEMM on Hopper, the
    unfused path elsewhere), or with `tanh_gelu_epilogue` cuBLASLt's tanh-GELU epilogue, an approximation."""
    with torch.inference_mode(False):
        if fuse_qkv and hasattr(model, "fuse_qkv_projections"):
            model.fuse_qkv_projections()
        if hasattr(model, "fuse_gelu_epilogue"):
            model.fuse_gelu_epilogue(approximate="tanh" if tanh_gelu_epilogue else None)
    return model


def _has_fused_qkv(model: torch.nn.Module) -> bool:
    return any(getattr(m, "qkv_weight", None) is not None for m in model.modules())


def _attn_implementations(model: torch.nn.Module) -> dict:
    """Class name -> the transformers attention implementation each (sub-)model resolved to. A wrapper without
    attention of its own (DepthAnythingForDepthEstimation) says "eager" while its backbone runs "sdpa"."""
    from transformers import PreTrainedModel

    return {type(m).__name__: getattr(m.config, "_attn_implementation", None)
            for m in model.modules() if isinstance(m, PreTrainedModel)}


def _model_factories(spec: ModelSpec, attention_types: list[str], baselines: Sequence[str],
                     settings: RunSettings) -> dict:
    """name -> (description, builder(device, dtype)) for the models this run compares; the JetViT models get
    `prepare_jetvit` with the run's settings."""
    import transformers

    def prepare(model):
        return prepare_jetvit(model, settings.fuse_qkv, settings.tanh_gelu_epilogue)

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
            lambda device, dtype: prepare(build_model(spec.jetvit_class, full_config, device, dtype)),
        )
    hybrid_config = _config_with(spec.jetvit_config, attention_types=attention_types)
    if spec.checkpoint is not None and attention_types == list(spec.jetvit_config.attention_types):
        hybrid = (f"{spec.jetvit_class.__name__} from {spec.checkpoint}",
                  lambda device, dtype: prepare(_load_checkpoint(spec, device, dtype)))
    else:
        hybrid = (f"{spec.jetvit_class.__name__}, {summarize_types(attention_types)}",
                  lambda device, dtype: prepare(build_model(spec.jetvit_class, hybrid_config, device, dtype)))
    factories["jetvit"] = hybrid
    return factories
