"""The header every `jetvit bench` JSON record starts with: schema, command, time, environment and versions, the
model's shape, the attention layout and the run settings."""

from __future__ import annotations

import datetime

import torch

from ..layouts import summarize_types
from ..models.jetvit.kernels_jetvit_mlp import gluon_linear_gelu_runs_on
from ..models.jetvit.modeling_jetvit import GELU_EPILOGUES
from .device import CPU_SMOKE_NOTE, dtype_name, environment
from .specs import ModelSpec
from .timing import RunSettings

SCHEMA_VERSION = 1


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


def _mlp_gelu(spec: ModelSpec, settings: RunSettings) -> str:
    """How JetViT's MLPs compute the model's activation in this run (`prepare_jetvit`, `fuse_gelu_epilogue`)."""
    config = spec.jetvit_config
    own = GELU_EPILOGUES.get(config.hidden_act) if not config.use_gated_mlp else None
    if own is None:
        return f"none ({'gated ' if config.use_gated_mlp else ''}{config.hidden_act} MLP)"
    if settings.device.type != "cuda" or settings.dtype not in (torch.bfloat16, torch.float16):
        return f"{'exact' if own == 'erf' else 'tanh-GELU'}, PyTorch's GELU after the GEMM"
    if settings.tanh_gelu_epilogue or own == "tanh":
        return "tanh" + (" approximation" if own == "erf" else "-GELU") + ", cuBLASLt GEMM epilogue"
    if gluon_linear_gelu_runs_on(settings.device, settings.dtype):
        return "exact, Gluon GEMM epilogue"
    return "exact, PyTorch's GELU after the GEMM"


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
        "dtype": dtype_name(settings.dtype),
        "model": _model_record(spec),
        "attention_types": list(attention_types),
        "attention_layout": layout,
        "attention_summary": summarize_types(attention_types),
        "timing": settings.timing_record(),
        "compile": settings.compile_record(),
        "fuse_qkv": settings.fuse_qkv,
        "tanh_gelu_epilogue": settings.tanh_gelu_epilogue,
        "mlp_gelu": _mlp_gelu(spec, settings),
        "sdpa_backend_requested": settings.sdpa_backend,
        "config_overrides": dict(spec.config_overrides),
        "notes": list(spec.notes),
    }


def _api_command(function: str, **kwargs) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if v is not None)
    return f"jetvit_hf.bench.{function}({args})"
