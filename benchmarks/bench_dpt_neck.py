"""Times Depth Anything V2's DPT neck and head alone (random weights, bf16), as the model runs them now (channels-last,
the fusion layers' projection before the upsampling, the upsamplings in our Triton kernel) against the steps before.

Input: the four tapped encoder hidden states of a 1022x1358 image (73x97 patches, 1024 channels, plus the CLS
token), as `[batch, 1 + patches, hidden]` tensors. Each timed call builds the feature maps the way
`JetViTBackbone.forward` does (LayerNorm, drop the CLS token, reshape) and runs the neck and the head:
- `before`: LayerNorm over the sequence, then a `.contiguous()` copy to NCHW maps; NCHW weights; the fusion layers
  upsample, then project (transformers' order);
- `channels_last`: the maps as channels-last views of the normed patch tokens, channels-last weights; original order;
- `project_first`: NCHW as `before`, with the projection before the upsampling;
- `interpolate`: `channels_last` and `project_first` together, every upsampling through `F.interpolate` (which
  `torch.compile` lowers to a kernel of its own, fused with the neighbouring additions and ReLUs);
- `kernel_head`: `interpolate`, with the head's upsampling in the Triton kernel (`kernels_jetvit_upsample.py`);
- `resize_modules`: the fusion layers' upsamplings in the kernel too; the reassemble layers' transposed convolutions,
  then the neck's 3x3 convolutions after them, as modules (transformers' form);
- `after`: what `JetViTForDepthEstimation` runs now: compiled, each such pair as one transposed convolution
  (`transposed_conv_then_conv3x3`); eager, the modules (so its eager timings are `resize_modules`').
Each variant eager (`eager_graph_ms`: a CUDA graph of back-to-back calls, kernel time without launch gaps;
`eager_ms`: CUDA events around single synchronized calls) and with `torch.compile(mode="reduce-overhead")`
(`compiled_ms`: CUDA events around single synchronized calls of the cudagraph-tree function), CUDA-event medians.
`layout_copy_ms` is the former `.contiguous()` copies alone; `max_relative_difference_vs_before` compares each
variant's bf16 depth with `before`'s (bf16 rounding; the float32 and float64 equalities are in
tests/models/jetvit/test_dpt_channels_last.py and test_kernels_upsample.py). `--profile` adds each compiled variant's
kernels (name, calls, total ms per forward). cuDNN autotuning is on, as in `jetvit bench`.

    python benchmarks/bench_dpt_neck.py --output dpt_neck.json
    python benchmarks/bench_dpt_neck.py --batch-sizes 4 --no-compile --output dpt_neck_eager_b4.json
"""

import argparse
import copy
import json
import platform
import statistics
import sys
from pathlib import Path

import torch
import torch._dynamo
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python benchmarks/bench_dpt_neck.py` from anywhere

from benchmarks.bench_linear_attention import graph_ms  # noqa: E402
from jetvit_hf.bench.presets import get_preset  # noqa: E402
from jetvit_hf.bench.profiling import profile_forward  # noqa: E402
from jetvit_hf.bench.timing import RunSettings  # noqa: E402
from jetvit_hf.convert import jetvit_config_from_source  # noqa: E402
from jetvit_hf.io import atomic_write_json  # noqa: E402
from jetvit_hf.models.jetvit.modeling_jetvit_heads import (  # noqa: E402
    JetViTDepthHead,
    JetViTDepthNeck,
    JetViTFeatureFusionLayer,
    JetViTReassembleLayer,
)

# name -> (channels-last maps and weights, projection before the upsampling, where the upsampling kernel runs,
#          the transposed convolutions composed with the 3x3 convolutions after them)
VARIANTS = {
    "before": (False, False, (), False),
    "channels_last": (True, False, (), False),
    "project_first": (False, True, (), False),
    "interpolate": (True, True, (), False),
    "kernel_head": (True, True, ("head",), False),
    "resize_modules": (True, True, ("head", "fusion"), False),
    "after": (True, True, ("head", "fusion"), True),
}


class ModulesReassembleLayer(JetViTReassembleLayer):
    """The reassemble layer and the neck's 3x3 convolution after it as modules, one after the other (transformers'
    order; this package before `transposed_conv_then_conv3x3`)."""

    def forward(self, hidden_state, conv):
        return conv(self.resize(self.projection(hidden_state)))


class UpsampleThenProjectFusionLayer(JetViTFeatureFusionLayer):
    """The fusion layer as transformers' Depth Anything (and this package before) computes it."""

    def forward(self, hidden_state, residual=None, size=None):
        if residual is not None:
            if hidden_state.shape != residual.shape:
                residual = F.interpolate(residual, size=hidden_state.shape[2:], mode="bilinear", align_corners=False)
            hidden_state = hidden_state + self.residual_layer1(residual)
        hidden_state = self.residual_layer2(hidden_state)
        resize = {"scale_factor": 2} if size is None else {"size": size}
        hidden_state = F.interpolate(hidden_state, **resize, mode="bilinear", align_corners=True)
        return self.projection(hidden_state)


class InterpolatingFusionLayer(JetViTFeatureFusionLayer):
    """The fusion layer, projection first, upsampling through F.interpolate (the model before the upsampling kernel)."""

    def forward(self, hidden_state, residual=None, size=None):
        if residual is not None:
            if hidden_state.shape != residual.shape:
                residual = F.interpolate(residual, size=hidden_state.shape[2:], mode="bilinear", align_corners=False)
            hidden_state = hidden_state + self.residual_layer1(residual)
        hidden_state = self.projection(self.residual_layer2(hidden_state))
        resize = {"scale_factor": 2} if size is None else {"size": size}
        return F.interpolate(hidden_state, **resize, mode="bilinear", align_corners=True)


class InterpolatingHead(JetViTDepthHead):
    """The depth head, upsampling through F.interpolate (the model before the upsampling kernel)."""

    def forward(self, features, grid_size):
        predicted_depth = self.conv1(features[self.head_in_index])
        output_size = (grid_size[0] * self.patch_size, grid_size[1] * self.patch_size)
        predicted_depth = F.interpolate(predicted_depth, output_size, mode="bilinear", align_corners=True)
        predicted_depth = self.conv3(self.activation1(self.conv2(predicted_depth)))
        return (self.activation2(predicted_depth) * self.max_depth).squeeze(dim=1)


def build_variant(neck, head, layernorm, grid, num_prefix, channels_last: bool, project_first: bool,
                  kernel_sites=("head", "fusion"), compose_resize: bool = True):
    """`fn(hidden_states) -> predicted depth` for one variant, on copies of the shared random modules (`fn.neck`,
    `fn.head`). `kernel_sites`: where the upsampling kernel runs (`"head"`, `"fusion"`), F.interpolate elsewhere."""
    neck, head = copy.deepcopy(neck), copy.deepcopy(head)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    neck.to(memory_format=memory_format)
    head.to(memory_format=memory_format)
    for layer in neck.fusion_stage.layers:
        if not project_first:
            layer.__class__ = UpsampleThenProjectFusionLayer
        elif "fusion" not in kernel_sites:
            layer.__class__ = InterpolatingFusionLayer
    if "head" not in kernel_sites:
        head.__class__ = InterpolatingHead
    if not compose_resize:
        for layer in neck.reassemble_stage.layers:
            layer.__class__ = ModulesReassembleLayer

    def maps(hidden_states):
        out = []
        for hidden_state in hidden_states:
            if channels_last:  # JetViTBackbone.forward now: norm the patch tokens, view them as NCHW
                patches = layernorm(hidden_state[:, num_prefix:])
                out.append(patches.reshape(patches.shape[0], *grid, -1).permute(0, 3, 1, 2))
            else:  # JetViTBackbone.forward before: norm the sequence, drop the prefix, copy to NCHW
                patches = layernorm(hidden_state)[:, num_prefix:]
                out.append(patches.reshape(patches.shape[0], *grid, -1).permute(0, 3, 1, 2).contiguous())
        return out

    def fn(hidden_states):
        return head(neck(maps(hidden_states)), grid)

    fn.neck, fn.head = neck, head
    return fn


def event_ms(fn, warmup: int, iters: int, step=None) -> float:
    """Median of CUDA-event timings of single calls, each started on an idle device (launch included)."""
    step = step or (lambda: None)
    for _ in range(warmup):
        step()
        fn()
    times = []
    for _ in range(iters):
        step()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def relative_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).abs().max() / expected.float().abs().max()).item()


def run_batch(functions: dict, batch: int, config, grid: tuple[int, int], args) -> dict:
    """Every variant's timings at one batch size."""
    num_prefix = config.num_prefix_tokens
    hidden_states = [torch.randn(batch, num_prefix + grid[0] * grid[1], config.hidden_size, device="cuda",
                                 dtype=torch.bfloat16) for _ in config.out_indices]
    for hidden_state in hidden_states:  # produced inside the graph in the model: no copy into the graph
        torch._dynamo.mark_static_address(hidden_state)

    def copies():
        return [h[:, num_prefix:].reshape(batch, *grid, -1).permute(0, 3, 1, 2).contiguous() for h in hidden_states]

    row = {"layout_copy_ms": graph_ms(copies), "variants": {}}
    reference = functions["before"](hidden_states) if "before" in functions else None
    for name, fn in functions.items():
        output = fn(hidden_states)
        record = {"eager_graph_ms": graph_ms(lambda: fn(hidden_states)),
                  "eager_ms": event_ms(lambda: fn(hidden_states), args.warmup, args.iters)}
        if reference is not None:
            record["max_relative_difference_vs_before"] = relative_difference(output, reference)
        if not args.no_compile:
            compiled = torch.compile(fn, mode="reduce-overhead", dynamic=False)
            step = torch.compiler.cudagraph_mark_step_begin
            step()
            compiled_output = compiled(hidden_states).clone()
            record["compiled_ms"] = event_ms(lambda: compiled(hidden_states), args.warmup, args.iters, step)
            if args.profile:
                settings = RunSettings(torch.device("cuda"), torch.bfloat16, args.warmup, args.iters, compile=True,
                                       compile_mode="reduce-overhead")
                profile = profile_forward(lambda: compiled(hidden_states), settings, top=args.profile)
                record["compiled_kernels"] = profile["top_kernels"]
                record["compiled_kernel_ms"] = profile["gpu_kernel_ms"]
            if reference is not None:
                record["compiled_max_relative_difference_vs_before"] = relative_difference(compiled_output, reference)
        row["variants"][name] = record
        print(f"batch {batch} {name:14s} " + "  ".join(
            f"{key} {value:.3f}" for key, value in record.items() if key.endswith("_ms")), file=sys.stderr)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="depth-anything-v2-l", help="a Depth Anything V2 preset of `jetvit bench`")
    parser.add_argument("--height", type=int, default=1022)
    parser.add_argument("--width", type=int, default=1358)
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"some of {', '.join(VARIANTS)}")
    parser.add_argument("--no-compile", action="store_true", help="eager timings only")
    parser.add_argument("--no-cudnn-benchmark", action="store_true", help="keep cuDNN's heuristic algorithm choice")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also profile each compiled variant and keep its N slowest kernels")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_dpt_neck: needs a CUDA GPU", file=sys.stderr)
        return 2
    variants = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    preset = get_preset(args.preset)
    if preset.architecture != "DepthAnythingForDepthEstimation":
        parser.error(f"{args.preset} is not a Depth Anything preset")
    config = jetvit_config_from_source(preset.source_config())[0]
    grid = (args.height // config.patch_size, args.width // config.patch_size)
    dtype = torch.bfloat16
    torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    torch.manual_seed(0)
    with torch.device("cuda"):
        neck = JetViTDepthNeck(config).to(dtype).eval()
        head = JetViTDepthHead(config).to(dtype).eval()
        layernorm = torch.nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps).to(dtype)
    functions = {name: build_variant(neck, head, layernorm, grid, config.num_prefix_tokens, *VARIANTS[name])
                 for name in variants}
    del neck, head
    for option in ("recompile_limit", "cache_size_limit"):  # one graph per batch size and variant
        if hasattr(torch._dynamo.config, option):
            setattr(torch._dynamo.config, option, max(getattr(torch._dynamo.config, option), 64))

    results = {}
    with torch.inference_mode():
        for batch in batch_sizes:
            results[f"batch_{batch}"] = run_batch(functions, batch, config, grid, args)
            torch.cuda.empty_cache()

    import transformers

    result = {
        "command": " ".join(sys.argv),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "shape": {"preset": args.preset, "image": [args.height, args.width], "grid": list(grid),
                  "hidden": config.hidden_size, "prefix_tokens": config.num_prefix_tokens,
                  "neck_hidden_sizes": list(config.neck_hidden_sizes),
                  "fusion_hidden_size": config.fusion_hidden_size, "dtype": "bfloat16"},
        "variants": {name: {"channels_last": VARIANTS[name][0], "project_first": VARIANTS[name][1],
                            "upsampling_kernel_at": list(VARIANTS[name][2])}
                     for name in variants},
        "timing": {"warmup": args.warmup, "iters": args.iters, "graph_repeats": 20,
                   "median_of": "CUDA-event timings", "compile_mode": None if args.no_compile else "reduce-overhead"},
        "results": results,
    }
    print(json.dumps(result, indent=1))
    if args.output:
        atomic_write_json(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
