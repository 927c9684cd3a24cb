"""The device and dtype a benchmark runs on (resolved as everywhere in the package, by `jetvit_hf.device`), the
environment record (versions and hardware), and recognising and cleaning up after out-of-memory errors."""

from __future__ import annotations

import gc
import platform

import torch

from ..device import DeviceUnavailableError, check_device, dtype_name, resolve_dtype

__all__ = ["CPU_SMOKE_NOTE", "DeviceUnavailableError", "check_device", "dtype_name", "environment", "resolve_dtype"]

CPU_SMOKE_NOTE = "CPU smoke test, not a performance number"


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
    """Whether `error` is, or was raised while handling, running out of memory: an allocation that fails while a
    CUDA graph is captured surfaces as the capture's own error, with the out-of-memory error as its context."""
    while error is not None:
        if isinstance(error, getattr(torch.cuda, "OutOfMemoryError", ())):
            return True
        text = str(error)
        if isinstance(error, RuntimeError) and (
            "out of memory" in text.lower() or "can't allocate memory" in text or "DefaultCPUAllocator" in text
        ):
            return True
        error = error.__cause__ or error.__context__
    return False


def _free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
