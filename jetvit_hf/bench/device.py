"""The device and dtype a benchmark runs on: checks that refuse early, the environment record (versions and
hardware), and recognising and cleaning up after out-of-memory errors."""

from __future__ import annotations

import gc
import platform

import torch

CPU_SMOKE_NOTE = "CPU smoke test, not a performance number"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class DeviceUnavailableError(ValueError):
    """The requested device cannot be used here (e.g. `cuda` on a machine without a GPU)."""


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

    from .. import __version__ as jetvit_version

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
