"""Experiment: the passes that add a convolution's bias in JetViT-DA-V2-L's neck and head, in the whole compiled
model. Inductor runs cuDNN's convolutions without their bias and adds it in a pointwise kernel of its own (fused with
a following ReLU or addition where there is one; where the next op is ours, the pass stays alone). Variants of one
random hybrid (paper-2full), each built as `jetvit bench` builds it, compiled and captured as one CUDA graph
(`--compile-mode cuda-graph`), timed at batch 1 in interleaved rounds in one process, then one profiled call each
(`common.compiled_variants_record`):

- `before`: the head's conv1 with its bias, then the head's op without one (the code before the change below);
- `head kernel adds conv1's bias`: `upsampled_depth_head` with conv1's bias, which its kernel adds per tap;
  what the model runs;
- `both`: also each residual unit's first convolution, bias and ReLU as cuDNN's fused `torch.cudnn_convolution_relu`
  (inference only: it has no backward). Not shipped: in the model's form it broke `fullgraph` compiles and raised
  peak memory, and in one of two runs it changed the depth by 31% of its largest value (`experiments/README.md`).

    python benchmarks/experiments/neck_head_epilogues.py --output neck_head_epilogues.json   # on a CUDA GPU
"""

import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `benchmarks.*`

from benchmarks.experiments.common import compiled_variants_record, whole_model_parser  # noqa: E402
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
    args = whole_model_parser(__doc__.split("\n\n")[0]).parse_args(argv)
    record = compiled_variants_record(args, variants)
    if args.output:
        atomic_write_json(args.output, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
