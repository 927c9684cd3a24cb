"""Experiment: why an eager call of the DPT neck's composed transposed convolution (`transposed_conv_then_conv3x3`)
took 2.4 ms longer than the two modules it replaces although its kernels were faster (`experiments/README.md`, "the
neck's transposed convolutions"). Depth Anything V2-L's two upsampling stages at 1022x1358 (73x97 patches, bf16,
channels-last, batch 1), each op timed alone in single synchronized calls: the host's time to return from the call
and the device time between CUDA events, with cuDNN's autotuning on (as `jetvit bench` runs) and off.

    python benchmarks/experiments/neck_eager_calls.py --output neck_eager_calls.json   # on a CUDA GPU
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from jetvit_hf.io import atomic_write_json  # noqa: E402
from jetvit_hf.models.jetvit.modeling_jetvit_heads import transposed_conv_then_conv3x3  # noqa: E402

STAGES = {"stride 4": (256, 256, 4), "stride 2": (512, 256, 2)}  # (channels, fusion channels, factor)


def timed(fn, warmup: int, iters: int) -> dict:
    """Medians of single synchronized calls: host ms until the call returns, device ms between events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    host, device = [], []
    for _ in range(iters):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        start.record()
        fn()
        end.record()
        host.append((time.perf_counter() - t0) * 1e3)
        end.synchronize()
        device.append(start.elapsed_time(end))
    return {"host_ms": round(statistics.median(host), 4), "device_ms": round(statistics.median(device), 4)}


def ops(resize: torch.nn.ConvTranspose2d, conv: torch.nn.Conv2d, x: torch.Tensor) -> dict:
    """The variants, each a no-argument call: the modules, the composed function, and its parts alone."""
    stride = resize.stride[0]
    taps = resize.weight.shape[1:]
    resize_weight = torch.cat([resize.weight, resize.bias.view(1, -1, 1, 1).expand(1, *taps),
                               resize.weight.new_zeros(7, *taps)])
    kernel = F.conv2d(resize_weight, conv.weight, padding=2)
    x_ext = torch.cat([x, x.new_ones(1, 1, *x.shape[2:]), x.new_zeros(1, 7, *x.shape[2:])], dim=1)
    x_ext = x_ext.contiguous(memory_format=torch.channels_last)
    kernel_cl = kernel.contiguous(memory_format=torch.channels_last)
    return {
        "modules": lambda: conv(resize(x)),
        "composed": lambda: transposed_conv_then_conv3x3(x, resize, conv),
        "weight composition alone": lambda: F.conv2d(resize_weight, conv.weight, padding=2),
        "transposed conv, fixed kernel": lambda: F.conv_transpose2d(x_ext, kernel, conv.bias, stride=stride,
                                                                    padding=1),
        "transposed conv, fixed channels-last kernel": lambda: F.conv_transpose2d(x_ext, kernel_cl, conv.bias,
                                                                                  stride=stride, padding=1),
        "transposed conv, fresh kernel each call": lambda: F.conv_transpose2d(x_ext, kernel.clone(), conv.bias,
                                                                              stride=stride, padding=1),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("neck_eager_calls: needs a CUDA GPU", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    record = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "cudnn": torch.backends.cudnn.version(), "command": " ".join(sys.argv),
              "timing": f"single synchronized calls, medians of {args.iters} after {args.warmup} warm-up calls",
              "results": {}}
    with torch.inference_mode():
        for stage, (channels, fusion, factor) in STAGES.items():
            resize = torch.nn.ConvTranspose2d(channels, channels, factor, stride=factor)
            conv = torch.nn.Conv2d(channels, fusion, 3, padding=1, bias=False)
            resize, conv = (m.to("cuda", torch.bfloat16, memory_format=torch.channels_last) for m in (resize, conv))
            x = torch.randn(1, channels, 73, 97, device="cuda", dtype=torch.bfloat16)
            x = x.contiguous(memory_format=torch.channels_last)
            for benchmark in (True, False):
                torch.backends.cudnn.benchmark = benchmark
                rows = {name: timed(fn, args.warmup, args.iters) for name, fn in ops(resize, conv, x).items()}
                record["results"][f"{stage}, cudnn.benchmark={benchmark}"] = rows
                for name, row in rows.items():
                    print(f"{stage:9s} benchmark={benchmark!s:5s} {name:45s} host {row['host_ms']:7.3f} ms  "
                          f"device {row['device_ms']:7.3f} ms", flush=True)
    if args.output:
        atomic_write_json(args.output, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
