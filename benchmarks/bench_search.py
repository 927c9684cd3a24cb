"""A stage-1 attention search on the accelerator, timed: each candidate, each round, the whole search.

Builds a random-weight Depth Anything V2-L (its transformers config with a DINOv2-L backbone cut to `--layers`; no
download), converts it to an all-full JetViT teacher, builds the stage-1 supernet ({linear, window} per layer) from it
and runs `beam_search` with the depth objective against the teacher's prediction (`--metric`, default AbsRel: on
random weights delta1 can saturate at 1 for every candidate and end the search after one round) on `--images` random
images at `--resolution`, with the beam width `jetvit pipeline` uses. The models run where `jetvit_hf.device` places
them (`--device auto`: the GPU in bfloat16 autocast). A full stage-1 search (every round until all layers are window)
evaluates at most `1 + sum over rounds r of min(min(beam, C(L, r - 1)) * (L - r + 1), C(L, r))` candidates. A random
teacher's layouts score almost alike, so its search plateaus within a few rounds; the record therefore extrapolates
the full search from the measured candidates, and bounds it with the slower of the all-linear and all-window
candidates (timed after the search), so a run cut short by a plateau or `--max-rounds` still answers how long a full
search takes.

    python benchmarks/bench_search.py --output benchmarks/results/h200_search_dav2l_518.json  # ViT-L, 64 x 518²
    python benchmarks/bench_search.py --layers 2 --images 2 --resolution 56 --device cpu   # smoke test
"""

import argparse
import copy
import math
import shlex
import statistics
import sys
import tempfile
import time

import torch

from jetvit_hf.bench.device import CPU_SMOKE_NOTE, environment
from jetvit_hf.bench.presets import get_preset
from jetvit_hf.convert import convert_to_jetvit
from jetvit_hf.device import resolve_placement
from jetvit_hf.evaluation.images import EvalImages
from jetvit_hf.evaluation.metrics import DEPTH_METRIC_NAMES
from jetvit_hf.io import atomic_write_json
from jetvit_hf.search.beam import beam_search
from jetvit_hf.search.objectives import DepthObjective
from jetvit_hf.search.post_training import PipelineConfig
from jetvit_hf.train.supernet import JetViTSupernet

PRESET = "depth-anything-v2-l"
GOAL = "a full stage-1 search of 24 layers on 64 images at 518x518 in <= 300 s on one H200"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=24, help="backbone layers (default 24, DA-V2-L's)")
    parser.add_argument("--images", type=int, default=64, help="search images (default 64)")
    parser.add_argument("--resolution", type=int, default=518, help="square input side in pixels (default 518)")
    parser.add_argument("--max-rounds", type=int, default=None, help="stop after this many rounds (default: a full "
                        "search, until the objective plateaus or every layer is window)")
    parser.add_argument("--metric", choices=DEPTH_METRIC_NAMES, default="abs_rel",
                        help="the depth objective's metric against the teacher (default abs_rel)")
    parser.add_argument("--beam-width", type=int, default=PipelineConfig().beam_width,
                        help="default: jetvit pipeline's (%(default)s)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per forward (default 16 on a GPU, 8 on "
                        "the CPU)")
    parser.add_argument("--window-size", type=int, default=None, help="window side in patches (default JetViT's)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto (default), float32, bfloat16 or float16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="write the results JSON here (atomically)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or per-round lines")
    args = parser.parse_args(argv)
    for name in ("layers", "images", "resolution"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be positive")
    return args


def source_config(layers: int):
    """Depth Anything V2-L's transformers config with `layers` backbone layers, tapping the layers nearest to its own
    taps scaled to that depth (fewer taps, and DPT stages, when they coincide)."""
    kwargs = copy.deepcopy(get_preset(PRESET).config_kwargs)
    backbone = kwargs["backbone_config"]
    full_depth = backbone["num_hidden_layers"]
    taps = sorted({max(1, round(index * layers / full_depth)) for index in backbone["out_indices"]})
    backbone.update(num_hidden_layers=layers, out_indices=taps)
    for key in ("neck_hidden_sizes", "reassemble_factors"):
        kwargs[key] = kwargs[key][-len(taps):]
    import transformers

    return transformers.DepthAnythingConfig(architectures=["DepthAnythingForDepthEstimation"], **kwargs)


def build_teacher(layers: int, window_size: int | None, seed: int):
    """The random-weight source converted to an all-full JetViT (through a temporary checkpoint, as `jetvit convert`
    reads one). The head's last bias is 1, so its final ReLU passes most pixels and the disparity is not flat."""
    from transformers import DepthAnythingForDepthEstimation

    torch.manual_seed(seed)
    source = DepthAnythingForDepthEstimation(source_config(layers)).eval()
    with torch.no_grad():
        source.head.conv3.bias.fill_(1.0)
    overrides = {"window_size": window_size} if window_size is not None else {}
    with tempfile.TemporaryDirectory(prefix="bench-search-") as directory:
        source.save_pretrained(directory)
        return convert_to_jetvit(directory, **overrides)


def random_images(count: int, resolution: int, batch_size: int, seed: int) -> EvalImages:
    """`count` normalised-noise images of `resolution` x `resolution` in batches (timing needs no real scenes)."""
    generator = torch.Generator().manual_seed(seed)
    sizes = [min(batch_size, count - start) for start in range(0, count, batch_size)]
    batches = [torch.randn(size, 3, resolution, resolution, generator=generator) for size in sizes]
    return EvalImages(batches, [(resolution, resolution)] * count)


def max_candidates(layers: int, beam_width: int) -> int:
    """The most candidates a full stage-1 search can evaluate: the start, then per round r every beam member's
    children (one more window layer), no more than there are assignments with r window layers."""
    total = 1
    for round_index in range(1, layers + 1):
        beam = min(beam_width, math.comb(layers, round_index - 1))
        total += min(beam * (layers - round_index + 1), math.comb(layers, round_index))
    return total


def time_extremes(supernet: JetViTSupernet, objective: DepthObjective, repeats: int = 3) -> dict:
    """Median seconds of one candidate with every layer linear and with every layer window (the layouts a stage-1
    search starts and may end at)."""
    seconds = {}
    for attention_type in ("linear", "window"):
        supernet.set([attention_type] * len(supernet.candidates))
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            objective.evaluate(supernet)
            times.append(time.perf_counter() - began)
        seconds[f"all_{attention_type}"] = statistics.median(times)
    return seconds


def run(args: argparse.Namespace) -> dict:
    """Build, search, and return the record (times in seconds)."""
    placement = resolve_placement(args.device, args.dtype)
    batch_size = placement.batch_size(args.batch_size)
    began = time.perf_counter()
    teacher = build_teacher(args.layers, args.window_size, args.seed)
    supernet = JetViTSupernet(copy.deepcopy(teacher), ["linear", "window"])
    images = random_images(args.images, args.resolution, batch_size, args.seed)
    build_seconds = time.perf_counter() - began
    objective = DepthObjective(teacher, images, metric=args.metric, reference="teacher",
                               placement=placement)
    result = beam_search(supernet, objective, stage=1, beam_width=args.beam_width, max_changes=args.max_rounds,
                         progress=not args.no_progress)
    each = result.timing["seconds_per_candidate"]
    extremes = time_extremes(supernet, objective)
    most = max_candidates(args.layers, args.beam_width)
    slowest = max(each["median"], *extremes.values())
    rounds = [{"round": r["round"], "candidates": r["evaluated"], "seconds": r["seconds"],
               "seconds_per_candidate": r["seconds"] / r["evaluated"] if r["evaluated"] else None}
              for r in result.rounds[1:]]
    return {
        "benchmark": "stage-1 attention search (bench_search.py)",
        "command": shlex.join(["python", "benchmarks/bench_search.py", *args.argv]),
        "environment": environment(placement.device),
        "device": placement.describe(),
        "note": CPU_SMOKE_NOTE if placement.device.type == "cpu" else None,
        "settings": {"preset": PRESET, "layers": args.layers, "images": args.images,
                     "resolution": [args.resolution, args.resolution], "batch_size": batch_size,
                     "beam_width": args.beam_width, "max_rounds": args.max_rounds,
                     "window_size": teacher.config.window_size, "objective": objective.describe(), "seed": args.seed},
        "build_seconds": build_seconds,
        "teacher_outputs_seconds": objective.reference_seconds,
        "stage_seconds": result.timing["stage_seconds"],
        "total_seconds": objective.reference_seconds + result.timing["stage_seconds"],
        "candidates": result.timing["num_candidates"],
        "seconds_per_candidate": each,
        "rounds": rounds,
        "stop_reason": result.stop_reason,
        "best": result.best,
        "best_score": result.best_score,
        "layout_seconds_per_candidate": extremes,
        "full_search": {
            "max_candidates": most,
            "estimated_seconds": objective.reference_seconds + each["first"] + (most - 1) * each["median"],
            "bound_seconds": objective.reference_seconds + each["first"] + (most - 1) * slowest,
            "definition": "teacher outputs + the first candidate + each other candidate a full stage-1 search can "
                          "evaluate (every round until all layers are window) at the measured median (estimate), or "
                          "at the slowest of that median and the all-linear and all-window candidates (bound)",
        },
        "goal": GOAL,
    }


def format_record(record: dict) -> str:
    settings, each, full = record["settings"], record["seconds_per_candidate"], record["full_search"]
    device = record["device"]
    lines = [
        f"stage-1 search, {settings['layers']} layers, {settings['images']} images at {settings['resolution'][0]}², "
        f"beam {settings['beam_width']}, batch {settings['batch_size']}, on {device['gpu'] or device['device']} in "
        f"{device['dtype']}" + (f"  [{record['note']}]" if record["note"] else ""),
        f"  build {record['build_seconds']:.1f} s (not timed below); teacher outputs "
        f"{record['teacher_outputs_seconds']:.2f} s",
        f"  {record['candidates']} candidates in {len(record['rounds'])} rounds ({record['stop_reason']}): "
        f"{record['stage_seconds']:.1f} s; per candidate median {each['median']:.3f} s, mean {each['mean']:.3f} s, "
        f"first {each['first']:.3f} s",
        "  seconds per round: " + ", ".join(f"{r['round']}: {r['seconds']:.2f}" for r in record["rounds"]),
        f"  total (teacher outputs + search): {record['total_seconds']:.1f} s",
        "  one candidate, all-linear / all-window: " + " / ".join(
            f"{seconds:.3f} s" for seconds in record["layout_seconds_per_candidate"].values()),
        f"  a full search ({full['max_candidates']} candidates at most): about {full['estimated_seconds']:.0f} s, at "
        f"most {full['bound_seconds']:.0f} s; goal: {record['goal']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.argv = argv
    record = run(args)
    print(format_record(record))
    if args.output:
        atomic_write_json(args.output, record)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
