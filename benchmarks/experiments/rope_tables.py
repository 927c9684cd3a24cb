"""Experiment: RoPE's cos/sin tables as one op (`ops_jetvit.rope_tables`, shipped) against computing them inline,
in the whole compiled DINOv3-L, all full attention and the hybrid, one process, interleaved as op / inline / op.

Why: inlined, Inductor folds the tables' cos and sin into every full layer's RoPE kernel and recomputes them there:
47.7 us a layer at 8197 tokens on an H200, about 3x the time to read and write q and k (`benchmarks/README.md`).
The op makes them two tables, computed once per forward.

    python benchmarks/experiments/rope_tables.py --output rope_tables.json     # on a GPU
"""

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `benchmarks.*`

from benchmarks.experiments.common import hybrid_bench_runs  # noqa: E402
from jetvit_hf.io import atomic_write_json  # noqa: E402
from jetvit_hf.models.jetvit import modeling_jetvit_embeddings, ops_jetvit  # noqa: E402

# the op's own implementation called as a plain function, which torch.compile traces and may inline into the tables'
# readers: what the RoPE module computed before the op
inline_tables = ops_jetvit._rope_tables_forward


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="dinov3-l")
    parser.add_argument("--resolution", default="1024x2048")
    parser.add_argument("--layouts", default="all-full,paper-2full")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "command": " ".join(sys.argv),
              "timing": "jetvit bench of the JetViT model alone, reduce-overhead, bs1 latency and bs8 batch time",
              "runs": {}}
    with tempfile.TemporaryDirectory() as directory:
        for layout in args.layouts.split(","):
            extra = ["--attention-types", layout]
            runs = {"op": (contextlib.nullcontext(), extra),
                    "inline": (mock.patch.object(modeling_jetvit_embeddings, "rope_tables", inline_tables), extra),
                    "op_again": (contextlib.nullcontext(), extra)}
            result["runs"][layout] = hybrid_bench_runs(args.preset, args.resolution, Path(directory), runs)
    if args.output:
        atomic_write_json(args.output, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
