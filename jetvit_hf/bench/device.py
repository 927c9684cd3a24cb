"""The device and dtype a benchmark runs on (resolved as everywhere in the package, by `jetvit_hf.device`), the
environment record (versions and hardware), and recognising and cleaning up after out-of-memory errors."""

from __future__ import annotations

import gc
import platform
import subprocess

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
        env.update(gpu_power_and_clocks(str(getattr(props, "uuid", "")) or None))
    return env


def gpu_power_and_clocks(uuid: str | None) -> dict:
    """The GPU's power limit (and the most it may be set to) and its maximum SM clock, from `nvidia-smi`: what can
    differ between machines of one kind and move their timings by a few percent. The GPU is the one whose UUID ends
    in `uuid`, or the only one; `{}` where nvidia-smi is missing, fails or lists no such GPU."""
    fields = ("uuid", "power.limit", "power.max_limit", "clocks.max.sm")
    try:
        listing = subprocess.run(
            ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    rows = [[cell.strip() for cell in line.split(",")] for line in listing.splitlines() if line.count(",") == 3]
    matches = [row for row in rows if uuid and row[0].endswith(uuid)] or (rows if len(rows) == 1 else [])
    if not matches:
        return {}
    _, limit, max_limit, clock = matches[0]
    return {"gpu_power_limit_w": _reading(limit), "gpu_power_max_limit_w": _reading(max_limit),
            "gpu_max_sm_clock_mhz": _reading(clock)}


def _reading(text: str) -> float | None:
    """An nvidia-smi number, or None for its "[N/A]" / "[Not Supported]"."""
    try:
        return float(text)
    except ValueError:
        return None


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
