"""Timing a model: `RunSettings` (device, dtype, warm-up and timed iterations, compilation, SDPA backend), the run
context (inference mode, cuDNN autotuning, the preferred SDPA backend), torch.compile and CUDA-graph helpers,
`measure`, and measuring one (model, batch, resolution) case with out-of-memory errors recorded instead of raised."""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils._pytree import tree_flatten, tree_map

from .device import GpuStateSampler, _free_memory, _is_oom, check_device, gpu_uuid, resolve_dtype

SDPA_BACKENDS = ("default", "cudnn", "flash", "efficient", "math")
DEFAULT_ITERS = {"cuda": 50, "cpu": 5}
DEFAULT_WARMUP = {"cuda": 10, "cpu": 2}
# transformers' model as it is usually run, left uncompiled when the run compiles, for same-run ratios
NEVER_COMPILED = ("hf-eager",)
# Inductor's pad_mm pass pads a GEMM whose rows are not a multiple of 8 (7082 or 8197 tokens) when, timed once at
# compile time, the padded GEMM is 10% faster: a noisy decision, cached for the process, that in one DA-V2-L run
# padded a projection of every layer in both JetViT columns (0.6 ms more of a 14 ms forward, benchmarks/README.md).
# cuBLAS runs these shapes unpadded, so every compiled column is compiled without it, for runs that repeat.
INDUCTOR_OPTIONS = {"shape_padding": False}
# ours, not a torch.compile mode: Inductor's default compile, each input shape's forward captured as one CUDA graph
WHOLE_GRAPH_MODE = "cuda-graph"


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
    tanh_gelu_epilogue: bool = False  # cuBLASLt's bias + tanh-GELU epilogue: an approximation, opt-in

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
        if not self.compile:
            return None
        return {"mode": self.compile_mode or "default", "dynamic": False, "inductor_options": dict(INDUCTOR_OPTIONS)}


def _settings(device, dtype, warmup, iters, compile, compile_mode, sdpa_backend, profile, fuse_qkv=True,
              tanh_gelu_epilogue=False) -> RunSettings:
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
    if compile_mode == WHOLE_GRAPH_MODE and dev.type != "cuda":
        raise ValueError(f"--compile-mode {WHOLE_GRAPH_MODE} captures CUDA graphs and needs a CUDA device, got {dev}")
    return RunSettings(dev, resolve_dtype(dtype, dev), warmup, iters, bool(compile), compile_mode, sdpa_backend,
                       profile, bool(fuse_qkv), bool(tanh_gelu_epilogue))


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
    if settings.compile_mode == WHOLE_GRAPH_MODE:
        return WholeForwardGraph(torch.compile(module, dynamic=False, options=INDUCTOR_OPTIONS))
    import torch._inductor

    mode = None if settings.compile_mode in (None, "default") else settings.compile_mode
    # torch.compile takes a mode or options, not both: the mode's own options, then ours
    mode_options = torch._inductor.list_mode_options(mode, dynamic=False) if mode is not None else {}
    return torch.compile(module, dynamic=False, options={**mode_options, **INDUCTOR_OPTIONS})


class WholeForwardGraph:
    """A forward captured as one CUDA graph for its input shapes, replayed on every call after copying the inputs
    into the graph's own: the host's cost per call is one graph launch. `mode="reduce-overhead"` also replays CUDA
    graphs, but first checks Dynamo's guards and every parameter's address (0.8-1.6 ms per ViT-L forward on an H200
    host, up to 12% of a batch-1 forward). The price of skipping the checks: a call must not change the module's
    parameters, and its outputs are the graph's own buffers, overwritten by the next call. One graph is kept, so
    only one shape's memory pool is held at a time."""

    def __init__(self, forward: Callable, warmup: int = 3):
        self.forward, self.warmup = forward, warmup
        self.key = self.graph = self.inputs = self.outputs = None

    def __call__(self, *args, **kwargs):
        leaves, structure = tree_flatten((args, kwargs))
        key = (structure, [_describe(leaf) for leaf in leaves])
        if key != self.key:
            self._capture(key, args, kwargs)
        for static, value in zip(self.inputs, leaves):
            if isinstance(value, torch.Tensor):
                static.copy_(value)
        self.graph.replay()
        return self.outputs

    def _capture(self, key, args, kwargs) -> None:
        self.key = self.graph = self.inputs = self.outputs = None  # the old graph's pool goes before the new one
        args, kwargs = tree_map(lambda v: v.clone() if isinstance(v, torch.Tensor) else v, (args, kwargs))
        side = torch.cuda.Stream()  # warm-up (Inductor's first runs, cuDNN autotuning) off the capturing stream
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.forward(*args, **kwargs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = self.forward(*args, **kwargs)
        self.key, self.graph, self.inputs, self.outputs = key, graph, tree_flatten((args, kwargs))[0], outputs


def _describe(value) -> tuple:
    """What a captured graph is specific to: a tensor's shape, dtype and device; any other argument's value."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype, value.device)
    return ("value", repr(value))


def _cudagraph_step(settings: RunSettings):
    if settings.compile and hasattr(torch, "compiler") and hasattr(torch.compiler, "cudagraph_mark_step_begin"):
        return torch.compiler.cudagraph_mark_step_begin
    return lambda: None


def measure(fn: Callable[[], object], settings: RunSettings, sync_each_iteration: bool = True) -> dict:
    """Time `fn()` (already inside the run context): warm-up, then `iters` timed iterations; peak memory.

    With `sync_each_iteration` (latency) the device is idle when each iteration starts, so a time includes launching
    the call. Without it (CUDA only; per-layer tables) the iterations are queued back to back and each is timed by
    its own pair of events: the cost of the call inside a stream of work, as a layer sees it inside a model.
    On a CUDA device the record also holds `gpu_state`, the SM clock and power draw while the timed iterations ran
    (`GpuStateSampler`; absent where nvidia-smi took no sample).
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
    sampler = GpuStateSampler(gpu_uuid(device)) if cuda else None
    with sampler or contextlib.nullcontext():
        times = _timed_iterations(fn, settings, step, sync_each_iteration)
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
        if gpu_state := sampler.summary():
            record["gpu_state"] = gpu_state  # the SM clock and power the timed iterations ran at
    return record


def _timed_iterations(fn: Callable[[], object], settings: RunSettings, step: Callable[[], object],
                      sync_each_iteration: bool) -> list[float]:
    """The milliseconds of `settings.iters` calls of `fn`, each after `step()`, as `measure` describes."""
    device = settings.device
    if device.type == "cuda" and sync_each_iteration:
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(settings.iters):
            step()
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return times
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(settings.iters)]
        for start, end in events:
            step()
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) for start, end in events]
    times = []
    for _ in range(settings.iters):
        step()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


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
        record = _status("oom", batch_size=batch_size, error=oom)
        if batch_size > 1:
            record["fits_batch_size"] = _largest_fitting_batch(model_fn, config, batch_size, resolution, settings)
        return record
    record["batch_size"] = batch_size
    record["images_per_s"] = batch_size / (record["median_ms"] / 1e3) if record["median_ms"] > 0 else None
    return record


def _largest_fitting_batch(model_fn, config, batch_size: int, resolution, settings: RunSettings) -> int | None:
    """The largest of `batch_size` // 2, // 4, ... whose forward fits in memory (one forward each, untimed); None
    when not even batch 1 does."""
    candidate = batch_size // 2
    while candidate >= 1:
        try:
            model_fn(pixel_values=_random_pixels(config, candidate, resolution, settings))
            return candidate
        except Exception as error:  # noqa: BLE001 - only OOM means "try smaller", everything else propagates
            if not _is_oom(error):
                raise
        finally:
            _free_memory(settings.device)
        candidate //= 2
    return None


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


def _release(settings: RunSettings) -> None:
    """Return a finished model's memory (the caller drops its references first), so the next model's peak memory
    and build do not include it."""
    if settings.compile:
        import torch._dynamo

        torch._dynamo.reset()  # compiled graphs and guards hold the module
    _free_memory(settings.device)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, file=sys.stderr, leave=False, dynamic_ncols=True)
