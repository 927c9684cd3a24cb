"""Training step of a ViT-L JetViT subnet against all-full attention, in one run: forward + backward (+ AdamW step)
time and peak memory, bf16 autocast over fp32 weights, as the supernet trains. `--compile` times both under
`torch.compile` instead: a fixed subnet, as in fine-tuning (the supernet's sampled layouts would recompile).

    python benchmarks/bench_training.py --resolution 512x512 --batch-size 32 --profile --output training.json
"""

import argparse
import sys

import torch

from benchmarks.bench_linear_attention import cuda_median_ms
from jetvit_hf import JetViTConfig, JetViTModel
from jetvit_hf.bench import get_preset
from jetvit_hf.convert import jetvit_config_from_source
from jetvit_hf.io import atomic_write_json
from jetvit_hf.layouts import paper_2full_layout


def dinov3_large(attention_types) -> JetViTConfig:
    """The `dinov3-l` preset of `jetvit bench` as a JetViT config with these attention types."""
    config, *_ = jetvit_config_from_source(
        get_preset("dinov3-l").source_config(), attention_types, window_size=16, pos_embed_rescale=None
    )
    return config


def top_ops(step, steps: int = 2, top: int = 15) -> list[dict]:
    """The ops with the most CUDA time per step (torch.profiler, kernel time of each op and its children)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profiler:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    events = sorted(profiler.key_averages(), key=lambda e: e.device_time_total, reverse=True)[:top]
    return [{"op": e.key, "cuda_ms_per_step": e.device_time_total / 1e3 / steps, "calls_per_step": e.count / steps}
            for e in events]


def step_ms(model, pixel_values, iters: int, warmup: int, profile: bool = False) -> tuple[float, float, list]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(pixel_values).last_hidden_state.float().square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()  # the steady state's peak, not the first steps' (optimizer state, autotuning)
    ms = cuda_median_ms(step, warmup=0, iters=iters)
    peak = torch.cuda.max_memory_allocated() / 2**20
    return ms, peak, top_ops(step) if profile else []


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", default="512x512")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--profile", action="store_true", help="also record the ops with the most CUDA time per step")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_training: needs a CUDA GPU", file=sys.stderr)
        return 2
    height, width = (int(x) for x in args.resolution.split("x"))
    pixel_values = torch.randn(args.batch_size, 3, height, width, device="cuda")
    results = {}
    for name, layout in (("all-full", ["full"] * 24), ("paper-2full", paper_2full_layout(24))):
        torch.manual_seed(0)
        model = JetViTModel(dinov3_large(layout)).cuda().train()
        if args.gradient_checkpointing:
            getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
        ms, peak, ops = step_ms(torch.compile(model) if args.compile else model, pixel_values, args.iters, args.warmup,
                                args.profile)
        results[name] = {"step_ms": ms, "peak_memory_mib": peak, "images_per_s": args.batch_size / (ms * 1e-3)}
        print(f"{name:12s} {ms:8.1f} ms/step  {args.batch_size / (ms * 1e-3):7.1f} img/s  peak {peak:8.0f} MiB",
              flush=True)
        if ops:
            results[name]["profile_top_ops"] = ops
            for op in ops[:10]:
                print(f"    {op['cuda_ms_per_step']:8.2f} ms  x{op['calls_per_step']:5.0f}  {op['op'][:90]}")
        del model
        torch.compiler.reset()
        torch.cuda.empty_cache()
    result = {
        "command": " ".join(sys.argv),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "resolution": [height, width],
        "batch_size": args.batch_size,
        "precision": "bf16 autocast, fp32 weights, fused AdamW",
        "gradient_checkpointing": args.gradient_checkpointing,
        "compiled": args.compile,
        "results": results,
        "speedup_all_full_over_hybrid": results["all-full"]["step_ms"] / results["paper-2full"]["step_ms"],
    }
    print(f"all-full / hybrid step time: {result['speedup_all_full_over_hybrid']:.2f}x")
    if args.output:
        atomic_write_json(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
