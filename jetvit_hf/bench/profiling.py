"""What ran on the GPU: one profiled forward's SDPA ops and kernels, the SDPA backend a kernel belongs to, and coarse
kernel categories (GEMM, convolution, softmax attention, JetViT's own attention kernels, other) for time breakdowns."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .timing import RunSettings, _cudagraph_step


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
    softmax attention, JetViT's own attention kernels (its Triton linear- and window-attention kernels and the
    backwards' RoPE passes), other."""
    lowered = name.lower()
    if "linear_attention" in lowered or any(
        k in name for k in ("_state_kernel", "_state_finalize", "_state_split", "_output_kernel",
                            "_state_backward_kernel", "_output_backward_kernel")
    ):
        return "jetvit linear attention"
    if any(k in name for k in ("_window_kernel", "_prefix_merge", "_window_bwd", "_prefix_stats", "_prefix_grad")):
        return "jetvit window attention"
    if "_rope_rotate_kernel" in name:
        return "jetvit RoPE passes (backwards' pre_rotate)"
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


def _sdpa_summary(results: dict) -> str | dict:
    summary = {}
    for name, entry in results.items():
        profile = entry.get("profile")
        if isinstance(profile, dict):
            summary[name] = ",".join(profile.get("backends") or []) or "none"
    return summary or "n/a"
