"""Experiment: the passes that add a convolution's bias in JetViT-DA-V2-L's neck and head, in the whole compiled
model. Inductor runs cuDNN's convolutions without their bias and adds it in a pointwise kernel of its own (fused with
a following ReLU or addition where there is one; where the next op is ours, the pass stays alone). Variants of one
random hybrid (paper-2full), each built as `jetvit bench` builds it, compiled and captured as one CUDA graph
(`--compile-mode cuda-graph`), timed at batch 1 in interleaved rounds in one process, then one profiled call each:

- `before`: the head's conv1 with its bias, then the head's op without one (the code before the change below);
- `head kernel adds conv1's bias`: `upsampled_depth_head` with conv1's bias, which its kernel adds per tap;
  what the model runs;
- `both`: also each residual unit's first convolution, bias and ReLU as cuDNN's fused `torch.cudnn_convolution_relu`
  (inference only: it has no backward). Not shipped: compiled, it changed the depth by 31% of its largest value
  (`experiments/README.md`).

    python benchmarks/experiments/neck_head_epilogues.py --output neck_head_epilogues.json   # on a CUDA GPU
"""

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `benchmarks.*`

from benchmarks.experiments.common import interleaved_medians  # noqa: E402
from jetvit_hf.bench import measure  # noqa: E402
from jetvit_hf.bench.models import _model_factories  # noqa: E402
from jetvit_hf.bench.profiling import profile_forward  # noqa: E402
from jetvit_hf.bench.specs import _hybrid_types, resolve_model_spec  # noqa: E402
from jetvit_hf.bench.timing import _maybe_compile, _random_pixels, _run_context, _settings  # noqa: E402
from jetvit_hf.io import atomic_write_json  # noqa: E402
from jetvit_hf.models.jetvit import modeling_jetvit_heads as heads  # noqa: E402


class Conv1BiasAsPassHead(heads.JetViTDepthHead):
    def forward(self, features, grid_size):
        hidden_state = self.conv1(features[self.head_in_index])
        output_size = (grid_size[0] * self.patch_size, grid_size[1] * self.patch_size)
        sigmoid = isinstance(self.activation2, torch.nn.Sigmoid)
        return heads.upsampled_depth_head(hidden_state, None, output_size, self.conv2, self.conv3, sigmoid,
                                          self.max_depth)


class CudnnConvReluResidualLayer(heads.JetViTPreActResidualLayer):
    def forward(self, hidden_state):
        conv = self.convolution1
        fused = torch.cudnn_convolution_relu(self.activation1(hidden_state), conv.weight, conv.bias, conv.stride,
                                             conv.padding, conv.dilation, conv.groups)
        return self.convolution2(fused) + hidden_state


def variants(model) -> dict:
    before = copy.deepcopy(model)  # the same weights
    before.head.__class__ = Conv1BiasAsPassHead
    both = copy.deepcopy(model)
    for module in both.modules():
        if isinstance(module, heads.JetViTPreActResidualLayer):
            module.__class__ = CudnnConvReluResidualLayer
    return {"before": before, "head kernel adds conv1's bias": model, "both": both}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="depth-anything-v2-l")
    parser.add_argument("--resolution", default="1022x1358")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("neck_head_epilogues: needs a CUDA GPU", file=sys.stderr)
        return 2
    resolution = tuple(int(v) for v in args.resolution.split("x"))
    spec = resolve_model_spec(args.preset, None, None, None)
    types, _ = _hybrid_types(spec, None)
    settings = _settings("cuda", "bfloat16", 10, 30, True, "cuda-graph", None, False)
    (_, build), = _model_factories(spec, types, (), settings).values()
    record = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "command": " ".join(sys.argv),
              "preset": args.preset, "resolution": args.resolution, "rounds": args.rounds,
              "timing": "bs1 latency in us, `measure` medians (30 iterations) per round, median over interleaved rounds",
              "errors": {}}
    with _run_context(settings):  # inference mode, cuDNN autotuning, as `jetvit bench` runs
        pixels = _random_pixels(spec.jetvit_config, 1, resolution, settings)
        forwards, outputs = {}, {}
        for name, variant in variants(build(settings.device, settings.dtype)).items():
            try:
                forward = _maybe_compile(variant, settings)  # `jetvit bench`'s compile and CUDA graph
                outputs[name] = forward(pixel_values=pixels).predicted_depth.float().clone()
                forwards[name] = forward
            except Exception as error:  # noqa: BLE001 - a variant that does not compile is a result too
                record["errors"][name] = f"{type(error).__name__}: {str(error)[:500]}"
                print(name, "failed:", record["errors"][name], flush=True)
        reference = outputs["before"]
        record["depth_std_over_max"] = (reference.std() / reference.abs().max()).item()  # 0: a saturated head
        record["max_relative_difference"] = {
            name: ((out - reference).abs().max() / reference.abs().max()).item() for name, out in outputs.items()}
        print("max relative difference", record["max_relative_difference"], flush=True)
        timers = {name: (lambda forward=forward: 1e3 * measure(lambda: forward(pixel_values=pixels),
                                                               settings)["median_ms"])
                  for name, forward in forwards.items()}
        medians, spread = interleaved_medians(timers, args.rounds)
        record["bs1_us"], record["spread_us"] = medians, spread
        print("bs1 us", medians, "spread", spread, flush=True)
        record["profiles"] = {}
        for name, forward in forwards.items():
            profile = profile_forward(lambda forward=forward: forward(pixel_values=pixels), settings, top=40)
            record["profiles"][name] = {key: profile[key] for key in ("gpu_kernel_ms", "kernel_ms_by_category",
                                                                      "top_kernels") if key in profile}
            print(name, profile.get("gpu_kernel_ms"), profile.get("kernel_ms_by_category"), flush=True)
    if args.output:
        atomic_write_json(args.output, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
