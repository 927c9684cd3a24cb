"""Supernet distillation's throughput, measured as a user runs it: `accelerate launch training/distill.py`.

Builds the random-weight Depth Anything V2-L teacher of `bench_pipeline.py` (`save_teacher`, cut to `--layers`; no
download), then runs the distillation on it as a subprocess, for `--steps` optimizer steps with a log line every
`--log-every`, on `--data` (default: scenes rendered on the training device), and reads the run's `train_log.json`.
Each log entry carries the loop's own wall-clock throughput: `images_per_second` (all processes together) and
`seconds_per_step`. The record reports their medians over the entries after the first (the first interval includes
start-up: compilation, the renderer's warm-up, the first allocations), in total and per GPU, and the wall time of the
whole command (Python start, teacher loading, the final checkpoint and the saved supernet included).

How it launches, as the shipped configs tell users to (`training/accelerate/*.yaml`):
- GPUs: `accelerate launch --config_file training/accelerate/gpu_ddp.yaml --num_processes N` (DDP over NCCL, bf16
  autocast). With N = 1 it still runs one DDP process, so the per-GPU numbers of different N compare the same path.
- `--cpu` with one process: `accelerate launch --cpu --num_processes 1`; with several,
  `training/accelerate/cpu_2proc.yaml` with `--num_processes N` (gloo). distill.py gets `--cpu` in both cases.
`--mixed-precision` overrides the launch config's (bf16 on GPUs, no on the CPU). `--extra KEY=VALUE` passes further
TrainConfig flags to distill.py (`python training/distill.py --help` lists them), after the bench's own, so they win.
On a GPU distill.py compiles each layer by default (`compile_backend: auto`); `--extra compile_backend=null` times it
eager.

    python benchmarks/bench_distill.py --output benchmarks/results/h200_distill_dav2l_518.json   # ViT-L, 518 px, 1 GPU
    python benchmarks/bench_distill.py --num-processes 8 --output benchmarks/results/h200x8_distill_dav2l_518.json
    python benchmarks/bench_distill.py --extra subnets_per_step=2 --extra gradient_checkpointing=true
    python benchmarks/bench_distill.py --layers 2 --image-size 56 --batch-size 2 --steps 4 --log-every 2 \\
        --num-workers 0 --cpu                                                                   # CPU smoke test
"""

import argparse
import contextlib
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `python benchmarks/bench_distill.py` from anywhere

from benchmarks.bench_pipeline import save_teacher  # noqa: E402
from jetvit_hf.bench.device import environment  # noqa: E402
from jetvit_hf.io import atomic_write_json, read_json  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=24, help="backbone layers (default 24, DA-V2-L's)")
    parser.add_argument("--image-size", type=int, default=518, help="training crop size (default 518)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per process per step (default 8)")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps (default 60)")
    parser.add_argument("--log-every", type=int, default=10, help="steps per log line, i.e. per measured interval "
                        "(default 10)")
    parser.add_argument("--num-processes", type=int, default=1, help="training processes, one per GPU (default 1)")
    parser.add_argument("--mixed-precision", default=None, choices=["no", "bf16", "fp16"],
                        help="default: the launch config's (bf16 on GPUs, no on the CPU)")
    parser.add_argument("--data", default="render:train", help="distill.py's --data (default render:train)")
    parser.add_argument("--num-workers", type=int, default=4, help="DataLoader workers per process (default 4, as "
                        "training/configs/distill.yaml; render:train on a GPU renders in the main process)")
    parser.add_argument("--workdir", default=None, help="where the teacher and the run go; its run/ is replaced "
                        "(default: a temporary directory, removed afterwards)")
    parser.add_argument("--output", default=None, help="write the JSON record here")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU (smoke tests)")
    parser.add_argument("--extra", action="append", default=[], metavar="KEY=VALUE",
                        help="another TrainConfig flag for distill.py, e.g. subnets_per_step=2 (repeatable)")
    args = parser.parse_args(argv)
    if args.steps < 2 * args.log_every:
        parser.error(f"--steps {args.steps} gives fewer than 2 log intervals of --log-every {args.log_every}: the "
                     "first one is warm-up, so nothing would be measured.")
    for extra in args.extra:
        if "=" not in extra:
            parser.error(f"--extra {extra!r}: write KEY=VALUE, e.g. subnets_per_step=2")
    return args


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_flags(args: argparse.Namespace) -> list[str]:
    """`accelerate launch`'s own flags (see the module docstring)."""
    accelerate_configs = REPO / "training" / "accelerate"
    if args.cpu and args.num_processes == 1:
        flags = ["--cpu", "--num_processes", "1"]
    else:
        config = accelerate_configs / ("cpu_2proc.yaml" if args.cpu else "gpu_ddp.yaml")
        flags = ["--config_file", str(config), "--num_processes", str(args.num_processes)]
        flags += ["--main_process_port", str(free_port())]
    if args.mixed_precision:
        flags += ["--mixed_precision", args.mixed_precision]
    return flags


def distill_command(args: argparse.Namespace, teacher: Path, output_dir: Path) -> list[str]:
    """The `accelerate launch ... training/distill.py ...` command (through this Python, so the same environment)."""
    flags = {"teacher": teacher, "output_dir": output_dir, "data": args.data, "image_size": args.image_size,
             "batch_size": args.batch_size, "max_steps": args.steps, "log_every": args.log_every, "warmup_steps": 0,
             "checkpoint_every": args.steps, "report_to": "none", "num_workers": args.num_workers}
    command = [sys.executable, "-m", "accelerate.commands.launch", *launch_flags(args),
               str(REPO / "training" / "distill.py")]
    command += [f"--{key}={value}" for key, value in flags.items()]
    if args.cpu:
        command.append("--cpu")
    return command + [f"--{extra}" for extra in args.extra]


def run(args: argparse.Namespace) -> dict:
    with contextlib.ExitStack() as stack:
        workdir = Path(args.workdir) if args.workdir else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="bench-distill-")))
        teacher = save_teacher(workdir / "teacher", args.layers)
        output_dir = workdir / "run"
        shutil.rmtree(output_dir, ignore_errors=True)  # distill.py refuses an earlier run's checkpoints
        command = distill_command(args, teacher, output_dir)
        env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        print("bench_distill:", shlex.join(["accelerate", "launch", *command[3:]]), flush=True)
        began = time.perf_counter()
        result = subprocess.run(command, env=env, cwd=REPO)
        wall_seconds = time.perf_counter() - began
        if result.returncode != 0:
            raise SystemExit(f"bench_distill: the distillation failed (exit status {result.returncode})")
        log = read_json(output_dir / "train_log.json")
    measured = log[1:]  # the first interval includes compilation and warm-up
    total = statistics.median(entry["images_per_second"] for entry in measured)
    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    return {
        "command": shlex.join(["python", *sys.argv]),
        "distill_command": shlex.join(["accelerate", "launch", *command[3:]]),
        "environment": environment(device) | {"num_processes": args.num_processes},
        "settings": {"layers": args.layers, "image_size": args.image_size, "batch_size": args.batch_size,
                     "steps": args.steps, "log_every": args.log_every, "num_processes": args.num_processes,
                     "mixed_precision": args.mixed_precision, "data": args.data, "num_workers": args.num_workers,
                     "cpu": args.cpu, "extra": args.extra},
        "images_per_second": total,
        "images_per_second_per_gpu": total / args.num_processes,
        "seconds_per_step": statistics.median(entry["seconds_per_step"] for entry in measured),
        "measured_intervals": len(measured),
        "wall_seconds": wall_seconds,
        "intervals": [{key: entry[key] for key in ("step", "images_per_second", "seconds_per_step", "loss")}
                      for entry in log],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    record = run(args)
    unit = "process" if args.cpu else "GPU"
    print(f"bench_distill: {record['images_per_second_per_gpu']:.2f} img/s per {unit} "
          f"({record['images_per_second']:.2f} img/s over {args.num_processes}), "
          f"{record['seconds_per_step']:.3f} s/step: medians of {record['measured_intervals']} log intervals after "
          f"the first; {record['wall_seconds']:.0f} s wall for the whole command")
    if args.output:
        atomic_write_json(args.output, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
