"""The device and dtype a benchmark runs on (resolved as everywhere in the package, by `jetvit_hf.device`), the
environment record (versions and hardware), the GPU's clock and power while a timing runs, and recognising and
cleaning up after out-of-memory errors."""

from __future__ import annotations

import gc
import platform
import statistics
import subprocess
import threading
import time

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
        env.update(gpu_power_and_clocks(gpu_uuid(device)))
    return env


def gpu_uuid(device: torch.device) -> str | None:
    """The UUID torch reports for a CUDA device (nvidia-smi's, less its "GPU-" prefix), or None."""
    return str(getattr(torch.cuda.get_device_properties(device), "uuid", "")) or None


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
    matches = _rows_of(uuid, [_cells(line, len(fields)) for line in listing.splitlines()])
    if not matches:
        return {}
    _, limit, max_limit, clock = matches[0]
    return {"gpu_power_limit_w": _reading(limit), "gpu_power_max_limit_w": _reading(max_limit),
            "gpu_max_sm_clock_mhz": _reading(clock)}


class GpuStateSampler:
    """The SM clock, power draw and temperature of the GPU whose UUID ends in `uuid` (or of the only one), sampled by
    `nvidia-smi` every `interval_ms` in the background while in the `with` block. A GPU at its power limit lowers its
    clock (an H200 ran a DINOv3-L forward at 1980 MHz from idle and at 1605-1740 MHz, at its 700 W limit, after a
    second of them; `benchmarks/experiments/README.md`), so a timing is worth reading beside the clock it ran at.
    `summary()` is `{}` where nvidia-smi is missing or took no sample of that GPU; `summary(since, until)` covers the
    samples read between two `time.time()` stamps."""

    FIELDS = ("uuid", "clocks.sm", "power.draw", "temperature.gpu")

    def __init__(self, uuid: str | None, interval_ms: int = 20):
        self.uuid, self.interval_ms = uuid, interval_ms
        self.samples: list[tuple[float, list[str]]] = []  # (time.time() when read, the row's cells)
        self._process = self._thread = None

    def __enter__(self) -> GpuStateSampler:
        try:
            self._process = subprocess.Popen(
                ["nvidia-smi", f"--query-gpu={','.join(self.FIELDS)}", "--format=csv,noheader,nounits",
                 "-lms", str(self.interval_ms)],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )
        except OSError:
            return self
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        for line in self._process.stdout:
            cells = _cells(line, len(self.FIELDS))
            if cells:
                self.samples.append((time.time(), cells))

    def __exit__(self, *exc_info) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
        self._thread.join(timeout=5)

    def summary(self, since: float = float("-inf"), until: float = float("inf")) -> dict:
        rows = _rows_of(self.uuid, [cells for stamp, cells in self.samples if since <= stamp <= until])
        clocks, powers, temperatures = ([value for row in rows if (value := _reading(row[i])) is not None]
                                        for i in (1, 2, 3))
        if not clocks:
            return {}
        return {"samples": len(clocks), "sm_clock_mhz_median": statistics.median(clocks),
                "sm_clock_mhz_min": min(clocks),
                "power_w_median": statistics.median(powers) if powers else None,
                "temperature_c_max": max(temperatures) if temperatures else None}


def _cells(line: str, count: int) -> list[str] | None:
    """One nvidia-smi CSV row of `count` cells, stripped, or None for anything else."""
    cells = [cell.strip() for cell in line.split(",")]
    return cells if len(cells) == count else None


def _rows_of(uuid: str | None, rows: list) -> list[list[str]]:
    """The rows (UUID first) of the GPU whose UUID ends in `uuid`; all of them when only one GPU is listed."""
    rows = [row for row in rows if row]
    if uuid:
        matches = [row for row in rows if row[0].endswith(uuid)]
        if matches:
            return matches
    return rows if len({row[0] for row in rows}) == 1 else []


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
