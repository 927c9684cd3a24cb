"""Compile JetViT's Triton kernels for Hopper (sm_90) without a GPU, and read their resource use.

Triton's compiler runs on the CPU; only launching needs the CUDA driver. `compile_only_for_sm90()` puts a stand-in
for the driver in place that names an sm_90 target and turns each launch into a compile-only warm-up, so the kernels'
Python wrappers can be called with CPU tensors at the shapes and launch settings they use.
`tests/models/jetvit/test_kernels_compile.py` and `experiments/kernel_resources.py` use it.
"""

import contextlib
import re
import subprocess
import tempfile
from pathlib import Path

import torch

# The most shared memory one block may opt into on sm_90 (H100, H200)
SM90_SHARED_MEMORY = 227 * 1024


class Sm90CompileOnlyDriver:
    """What `JITFunction.run` asks of the active driver before it compiles: a device, a stream and the target."""

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", 90, 32)

    def get_active_torch_device(self):
        return torch.device("cpu")


@contextlib.contextmanager
def compile_only_for_sm90(overrides: dict | None = None):
    """Within it, Triton launches compile for sm_90 and return; yields the list of `(kernel name, CompiledKernel)`
    launched. `overrides` maps a kernel's name to launch options that replace its wrapper's (e.g. num_stages)."""
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    compiled, run, active = [], JITFunction.run, driver._active

    def compile_only(self, *args, grid, warmup, **kwargs):
        kwargs |= (overrides or {}).get(self.fn.__name__, {})
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        compiled.append((self.fn.__name__, kernel))
        return kernel

    JITFunction.run, driver._active = compile_only, Sm90CompileOnlyDriver()  # `driver.set_active` sets `_active`
    try:
        yield compiled
    finally:
        JITFunction.run, driver._active = run, active


def resource_usage(kernel) -> dict:
    """Shared memory (bytes), registers per thread and stack (spill) bytes of a compiled kernel, from its cubin
    (`cuobjdump -res-usage`, shipped with Triton)."""
    import triton

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as directory:
        cubin = Path(directory) / "kernel.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        report = subprocess.run([str(cuobjdump), "-res-usage", str(cubin)], capture_output=True, text=True,
                                check=True).stdout
    return {"shared_bytes": kernel.metadata.shared, "num_warps": kernel.metadata.num_warps,
            "num_stages": kernel.metadata.num_stages, "registers": int(re.search(r"REG:(\d+)", report)[1]),
            "stack_bytes": int(re.search(r"STACK:(\d+)", report)[1])}
