"""Experiment: JetViT-DA-V2-L (hybrid, paper-2full) with the DPT neck's transposed convolutions composed with the 3x3
convolutions after them (`transposed_conv_then_conv3x3`, what the model runs) against the same model with the two as
modules (transformers' form, `bench_dpt_neck.ModulesReassembleLayer`), both built as `jetvit bench` builds them,
compiled and captured as one CUDA graph each (`--compile-mode cuda-graph`), timed at batch 1 in interleaved rounds
in one process (so the machine's clock hits both alike), then one profiled call of each (kernel time by category and
the top kernels; `common.compiled_variants_record`).

    python benchmarks/experiments/neck_transposed_conv.py --output neck_transposed_conv.json   # on a CUDA GPU
"""

import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `benchmarks.*`

from benchmarks.bench_dpt_neck import ModulesReassembleLayer  # noqa: E402
from benchmarks.experiments.common import compiled_variants_record, whole_model_parser  # noqa: E402
from jetvit_hf.io import atomic_write_json  # noqa: E402


def variants(model) -> dict:
    modules = copy.deepcopy(model)  # the same weights
    for layer in modules.neck.reassemble_stage.layers:
        layer.__class__ = ModulesReassembleLayer
    return {"modules": modules, "composed": model}


def main(argv=None) -> int:
    args = whole_model_parser(__doc__.split("\n\n")[0]).parse_args(argv)
    record = compiled_variants_record(args, variants)
    if args.output:
        atomic_write_json(args.output, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
