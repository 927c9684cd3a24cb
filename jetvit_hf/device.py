"""Where models run: the one place a device and a compute dtype are resolved from user settings (`resolve_placement`;
`"auto"` is the current CUDA GPU with bfloat16 when one is available, else the CPU with float32), and the autocast
context a forward runs in. Weights stay in their own dtype; a bfloat16 or float16 placement runs the forward under
`torch.autocast`, so the ops autocast keeps in float32 (norms, softmax, JetViT's linear-attention state) stay there.
Imports only torch, so every part of the package can use it.
"""

import contextlib
from dataclasses import dataclass

import torch

AUTO = "auto"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
EVAL_BATCH_SIZES = {"cuda": 16, "cpu": 8}  # images per forward when scoring or evaluating, by device type


class DeviceUnavailableError(ValueError):
    """The requested device cannot be used here (e.g. `cuda` on a machine without a GPU)."""


def check_device(device: str | torch.device = AUTO) -> torch.device:
    """`torch.device` for `"auto"`, `"cpu"`, `"cuda"` or `"cuda:N"` (`"cuda"` is the current GPU), or a
    `DeviceUnavailableError` saying why it cannot be used here."""
    if isinstance(device, str) and device.strip().lower() == AUTO:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceUnavailableError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise DeviceUnavailableError(f"device {str(device)!r} is not supported; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"--device {device} was requested but no CUDA GPU is available (torch {torch.__version__}, built with "
            f"CUDA {torch.version.cuda}); run with --device cpu, or --device auto to use a GPU only where there is one"
        )
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceUnavailableError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) visible")
    return dev if dev.index is not None else torch.device("cuda", torch.cuda.current_device())


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The compute dtype for `dtype` (a name of `DTYPES` or a `torch.dtype`); `None` or `"auto"`: bfloat16 on a GPU,
    float32 on the CPU."""
    if dtype is None or dtype == AUTO:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; allowed: auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Placement:
    """A device and the dtype forwards compute in there."""

    device: torch.device
    dtype: torch.dtype

    def autocast(self):
        """The context a forward runs in: autocast to `dtype` (none for float32)."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def module(self, model: torch.nn.Module) -> torch.nn.Module:
        """`model`, moved (in place) to the device if any parameter is elsewhere; its weights keep their dtype."""
        if any(parameter.device != self.device for parameter in model.parameters()):
            model.to(self.device)
        return model

    def batch_size(self, batch_size: int | None = None) -> int:
        """`batch_size`, or the device's default evaluation batch (`EVAL_BATCH_SIZES`)."""
        return batch_size if batch_size is not None else EVAL_BATCH_SIZES[self.device.type]

    def synchronize(self) -> None:
        """Wait for the device's queued work (so a wall-clock time covers it)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def describe(self) -> dict:
        """`{"device", "dtype", "autocast", "gpu"}` for logs and reports."""
        return {
            "device": str(self.device),
            "dtype": dtype_name(self.dtype),
            "autocast": self.dtype != torch.float32,
            "gpu": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None,
        }


def resolve_placement(device: str | torch.device = AUTO, dtype: str | torch.dtype | None = AUTO) -> Placement:
    """The `Placement` for a `--device` (auto, cpu, cuda, cuda:N) and `--dtype` (auto, float32, bfloat16, float16)."""
    resolved = check_device(device)
    return Placement(resolved, resolve_dtype(dtype, resolved))
