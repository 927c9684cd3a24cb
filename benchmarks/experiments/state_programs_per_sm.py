"""Experiment: the linear-attention state op (`linear_attention_state_triton`: the split state kernel and its
finalize) at several sequence-split counts, set through `programs_per_sm`, at the ViT-L 1024x2048 shape.

Why: the split count aims at STATE_PROGRAMS_PER_SM = 4 programs per multiprocessor, but compiled for sm_90 the
state kernel takes 60 KiB of shared memory and 139 registers a thread, so only 3 fit (`sm90_kernel_resources.json`):
at batch 1 its 528 programs run as 1.33 waves. The earlier sweep (`bench_linear_attention.py --sweep`) tried 4 and 8.

    python benchmarks/experiments/state_programs_per_sm.py --output state_programs_per_sm.json     # on a GPU
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `benchmarks.*`

from benchmarks.bench_linear_attention import graph_ms  # noqa: E402
from benchmarks.experiments.common import NUM_PREFIX, interleaved_medians, vit_l_inputs  # noqa: E402
from jetvit_hf.io import atomic_write_json  # noqa: E402
from jetvit_hf.models.jetvit.kernels_jetvit_linear import linear_attention_state_triton  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--programs-per-sm", default="2,3,4,6,8")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "command": " ".join(sys.argv),
              "timing": f"CUDA graph of 20 calls, median of 50 replays, per call; {args.rounds} interleaved rounds, "
              "median (us)", "runs": {}}
    with torch.inference_mode():
        for batch in (int(b) for b in args.batches.split(",")):
            _, k, v, cos, sin, _ = vit_l_inputs(batch)
            timers = {f"per_sm_{n}": (lambda n=int(n): 1e3 * graph_ms(
                lambda: linear_attention_state_triton(k, v, cos, sin, NUM_PREFIX, programs_per_sm=n)))
                for n in args.programs_per_sm.split(",")}
            medians, spreads = interleaved_medians(timers, args.rounds)
            result["runs"][f"batch_{batch}"] = {"median_us": medians, "spread_us": spreads}
            print(f"batch {batch}: {medians} (spread {spreads})", flush=True)
    if args.output:
        atomic_write_json(args.output, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
