"""Training step of a ViT-L JetViT subnet against all-full attention, in one run: forward + backward (+ AdamW step)
time and peak memory, bf16 autocast over fp32 weights, as the supernet trains.

    python benchmarks/bench_training.py --resolution 512x512 --batch-size 32 --output training.json
"""

import argparse
import sys

import torch

from benchmarks.bench_linear_attention import cuda_median_ms
from benchmarks.profile_jetvit import dinov3_large
from jetvit_hf import JetViTModel
from jetvit_hf.atomic import atomic_write_json
from jetvit_hf.bench import paper_2full_layout


def step_ms(model, pixel_values, iters: int, warmup: int) -> tuple[float, float]:
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
    return ms, torch.cuda.max_memory_allocated() / 2**20


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", default="512x512")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--gradient-checkpointing", action="store_true")
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
        ms, peak = step_ms(model, pixel_values, args.iters, args.warmup)
        results[name] = {"step_ms": ms, "peak_memory_mib": peak, "images_per_s": args.batch_size / (ms * 1e-3)}
        print(f"{name:12s} {ms:8.1f} ms/step  {args.batch_size / (ms * 1e-3):7.1f} img/s  peak {peak:8.0f} MiB")
        del model
        torch.cuda.empty_cache()
    result = {
        "command": " ".join(sys.argv),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "resolution": [height, width],
        "batch_size": args.batch_size,
        "precision": "bf16 autocast, fp32 weights, fused AdamW",
        "gradient_checkpointing": args.gradient_checkpointing,
        "results": results,
        "speedup_all_full_over_hybrid": results["all-full"]["step_ms"] / results["paper-2full"]["step_ms"],
    }
    print(f"all-full / hybrid step time: {result['speedup_all_full_over_hybrid']:.2f}x")
    if args.output:
        atomic_write_json(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
