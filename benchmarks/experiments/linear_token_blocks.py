"""Experiment: two changes to the linear-attention kernels (`kernels_jetvit_linear.py`), each a launch option.

- `swap_partner`: RoPE's rotate-half partner of each q/k column taken from the loaded tile by exchanging its column
  halves in registers (`_swap_halves`), instead of loading the tile a second time from the partner addresses. The
  state kernel is latency-bound at 0% L1 hits and the busiest unit is L1/TEX (Nsight Compute,
  `h200_ncu_attention_kernels.txt`): one of its five tile loads per step goes.
- `block_rows`: the output kernel's programs take a block of patch-grid rows (R rows x BLOCK_N / R columns) instead
  of BLOCK_N consecutive tokens. The 3x3 convolution of V is about half the kernel's time, and its 9 taps of a
  32-token strip touch 3 x 34 tokens; of a 4 x 8 block, 6 x 10.

The state op and the output op (state split included) at the ViT-L shapes of DINOv3-L at 1024x2048 (RoPE, 5 prefix
tokens, a 64x128 grid) and Depth Anything V2-L at 1022x1358 (no RoPE, 1 prefix token, a 73x97 grid), each variant
checked against the shipped one.

    python benchmarks/experiments/linear_token_blocks.py --output linear_token_blocks.json   # on a CUDA GPU
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `benchmarks.*`

from benchmarks.experiments.common import (  # noqa: E402
    experiment_record,
    kernel_experiment_parser,
    timed_in_graphs,
    vit_l_inputs,
)
from jetvit_hf.io import atomic_write_json  # noqa: E402
from jetvit_hf.models.jetvit.kernels_jetvit_linear import (  # noqa: E402
    linear_attention_output_triton,
    linear_attention_state_triton,
)

SHAPES = {"dinov3": ((64, 128), 5, True), "dav2": ((73, 97), 1, False)}  # grid, prefix tokens, RoPE
# (block_n, block_rows, num_warps) of the output kernel; (32, 0, 2) is the shipped launch
OUTPUT_LAUNCHES = [(32, 0, 2), (32, 1, 2), (32, 2, 2), (32, 4, 2), (64, 0, 4), (64, 4, 4), (64, 8, 4), (64, 4, 2),
                   (64, 8, 2), (16, 2, 1)]


def max_diff(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


def main(argv=None) -> int:
    args = kernel_experiment_parser(__doc__.split("\n\n")[0]).parse_args(argv)
    torch.manual_seed(0)
    result = experiment_record(args.rounds)
    with torch.inference_mode():
        for shape, (grid, num_prefix, rope) in SHAPES.items():
            for batch in (int(b) for b in args.batch_sizes.split(",")):
                q, k, v, cos, sin, conv_weight = vit_l_inputs(batch, grid, num_prefix)
                if not rope:
                    cos = sin = None
                state_args = (k, v, cos, sin, num_prefix)
                state, key_sum, _ = linear_attention_state_triton(*state_args, swap_partner=False)

                def output(swap, block_n, block_rows, warps):
                    return linear_attention_output_triton(q, v, state, key_sum, conv_weight, cos, sin, num_prefix,
                                                          grid, 1e-6, block_n=block_n, block_rows=block_rows,
                                                          num_warps=warps, swap_partner=swap)

                timed, errors = {}, {}
                swaps = (False, True) if rope else (False,)
                for swap in swaps:
                    name = f"state_swap_{swap}"
                    timed[name] = lambda swap=swap: linear_attention_state_triton(*state_args, swap_partner=swap)
                    errors[name] = max_diff(timed[name]()[0], state)
                reference = output(False, 32, 0, 2)
                for swap in swaps:
                    for launch in OUTPUT_LAUNCHES:
                        name = f"output_swap_{swap}_n{launch[0]}_rows{launch[1]}_w{launch[2]}"
                        timed[name] = lambda swap=swap, launch=launch: output(swap, *launch)
                        errors[name] = max_diff(timed[name](), reference)
                title = f"{shape} bs{batch}"
                result["runs"][title] = timed_in_graphs(timed, args.rounds, errors, title)
    if args.output:
        atomic_write_json(args.output, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
