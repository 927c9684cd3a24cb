"""The whole `jetvit pipeline` on a ViT-L Depth Anything teacher, timed step by step.

Builds a random-weight Depth Anything V2-L (`bench_search.source_config`, no download; the head's last bias 1 so
the disparity is not flat), saves it as the teacher checkpoint and runs the main job on it with a short schedule
(`--distill-steps`, `--finetune-steps`) at `--image-size`, on the rendered splits, where `jetvit_hf.device` places
it (a GPU when there is one). Records the wall-clock time of the whole job and when each of its twelve steps began
(from the job's own announcements), and each search stage's seconds per candidate from its log. Random weights make
the search plateau early, so the searches here are shorter than on a trained teacher; `bench_search.py` times a full
stage-1 search.

    python benchmarks/bench_pipeline.py --output benchmarks/results/h200_pipeline_dav2l_518.json   # ViT-L, 518 px
    python benchmarks/bench_pipeline.py --layers 2 --image-size 56 --eval-scenes 4 --distill-steps 2 \
        --finetune-steps 1 --batch-size 2 --device cpu                                           # smoke test
"""

import argparse
import contextlib
import io
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python benchmarks/bench_pipeline.py` from anywhere

from benchmarks.bench_search import source_config  # noqa: E402
from jetvit_hf.bench.device import environment  # noqa: E402
from jetvit_hf.device import resolve_placement  # noqa: E402
from jetvit_hf.io import atomic_write_json, read_json  # noqa: E402
from jetvit_hf.search.post_training import PipelineConfig, run_pipeline  # noqa: E402

GOAL = "the whole jetvit pipeline on a ViT-L teacher with a short schedule in one 10-minute GPU command"
STEP = re.compile(r"^\[(\d+)/(\d+)\] (.*?) \(at (\d+):(\d\d)\)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=24, help="backbone layers (default 24, DA-V2-L's)")
    parser.add_argument("--image-size", type=int, default=518, help="training and evaluation size (default 518)")
    parser.add_argument("--eval-scenes", type=int, default=64, help="scenes in each of the search and test split")
    parser.add_argument("--distill-steps", type=int, default=20, help="steps per supernet stage (default 20)")
    parser.add_argument("--finetune-steps", type=int, default=10, help="fine-tuning steps (default 10)")
    parser.add_argument("--batch-size", type=int, default=8, help="training batch (default 8)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--workdir", default=None, help="where the teacher and the run go (default: a temporary "
                        "directory, removed afterwards)")
    parser.add_argument("--output", default=None, help="write the JSON record here")
    return parser.parse_args(argv)


def save_teacher(directory: Path, layers: int) -> Path:
    """The random-weight Depth Anything V2-L (cut to `layers`) as a transformers checkpoint in `directory`."""
    from transformers import DepthAnythingForDepthEstimation

    torch.manual_seed(0)
    source = DepthAnythingForDepthEstimation(source_config(layers)).eval()
    with torch.no_grad():
        source.head.conv3.bias.fill_(1.0)
    source.save_pretrained(directory)
    return directory


def step_times(log: str) -> list[dict]:
    """`[{"step", "title", "began_s"}]` from the job's `[k/12] title (at m:ss)` announcements."""
    steps = []
    for line in log.splitlines():
        match = STEP.match(line)
        if match:
            steps.append({"step": int(match[1]), "title": match[3],
                          "began_s": 60 * int(match[4]) + int(match[5])})
    return steps


class _Tee(io.TextIOBase):
    """Writes to the console and keeps a copy, so the job's announcements can be parsed afterwards."""

    def __init__(self, stream):
        self.stream, self.copy = stream, io.StringIO()

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


def run(args: argparse.Namespace) -> dict:
    with contextlib.ExitStack() as stack:
        workdir = Path(args.workdir) if args.workdir else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="bench-pipeline-")))
        teacher = save_teacher(workdir / "teacher", args.layers)
        config = PipelineConfig(teacher=str(teacher), output_dir=str(workdir / "run"), image_size=args.image_size,
                                eval_scenes=args.eval_scenes, distill_steps=args.distill_steps,
                                finetune_steps=args.finetune_steps, batch_size=args.batch_size, device=args.device)
        tee = _Tee(sys.stdout)
        began = time.perf_counter()
        with contextlib.redirect_stdout(tee):
            summary = run_pipeline(config, overwrite=True)
        seconds = time.perf_counter() - began
        searches = {}
        for stage in ("search1", "search2"):
            timing = read_json(workdir / "run" / stage / "search_log.json")["timing"]
            searches[stage] = {key: timing.get(key) for key in ("stage_seconds", "num_candidates",
                                                                 "seconds_per_candidate", "setup_seconds")}
    return {
        "command": shlex.join(["python", *sys.argv]),
        "goal": GOAL,
        "environment": environment(resolve_placement(args.device).device),
        "settings": {"layers": args.layers, "image_size": args.image_size, "eval_scenes": args.eval_scenes,
                     "distill_steps": args.distill_steps, "finetune_steps": args.finetune_steps,
                     "batch_size": args.batch_size, "device": args.device},
        "total_seconds": seconds,
        "steps": step_times(tee.copy.getvalue()),
        "searches": searches,
        "attention_types": summary["attention_types"],
        "within_goal": seconds <= 600,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    record = run(args)
    print(f"bench_pipeline: {record['total_seconds']:.0f} s for the whole job ({GOAL}: "
          f"{'met' if record['within_goal'] else 'not met'})")
    for step in record["steps"]:
        print(f"  [{step['step']:>2}] at {step['began_s']:>4} s  {step['title']}")
    if args.output:
        atomic_write_json(args.output, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
