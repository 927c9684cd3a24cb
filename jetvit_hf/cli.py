"""The `jetvit` command: `jetvit convert ...` (and the later pipeline steps) as thin wrappers over the Python API."""

import argparse
import errno
import re
import sys
import traceback

from .io import atomic_write_json
from .layouts import parse_attention_types, summarize_types
from .models.jetvit.configuration_jetvit import LINEAR_ATTENTION_CONVS

DTYPES = ("float32", "bfloat16", "float16")


def attention_types_argument(text: str) -> list[str] | str:
    """argparse type for `--attention-types`: `layouts.parse_attention_types`, its errors as usage errors."""
    try:
        return parse_attention_types(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _torch_dtype(name: str | None):
    import torch

    return None if name is None else getattr(torch, name)


def run_convert(args: argparse.Namespace) -> int:
    """`jetvit convert`: refuse an output that would replace the source or an existing directory, then convert."""
    from pathlib import Path

    from .convert import check_output_apart, convert_to_jetvit, resolve_source, save_converted

    check_output_apart(resolve_source(args.source), args.output)
    output = Path(args.output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not args.overwrite:
        raise FileExistsError(f"--output {output} already exists; pass --overwrite to replace it.")
    overrides = {}
    if args.window_size is not None:
        overrides["window_size"] = args.window_size
    if args.linear_attention_conv is not None:
        overrides["linear_attention_conv"] = args.linear_attention_conv
    model, info = convert_to_jetvit(
        args.source, args.attention_types, dtype=_torch_dtype(args.dtype), output_loading_info=True,
        inherit=args.inherit, **overrides
    )
    save_converted(model, args.output, args.source, info, overwrite=args.overwrite)
    types = model.config.attention_types
    print(f"Converted {info.source_architecture} ({info.family}) -> {info.jetvit_class} in {args.output}")
    print(f"  attention types: {summarize_types(types)}")
    print(f"  inherited tensors: {info.inherited_tensors}; new (not inherited) tensors: {len(info.new_parameters)}")
    if info.new_parameters:
        layers = sorted({int(re.search(r"layer\.(\d+)\.", name).group(1)) for name in info.new_parameters})
        print(f"  new: the squeeze dynamic convolution's kernel generator (fc1, fc2) in layers {layers}")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    """`jetvit bench`: benchmark (default), `--sweep` or `--layer-table`, printing a table and writing JSON."""
    import shlex
    from pathlib import Path

    from . import bench

    if args.list_presets:
        print(bench.list_presets())
        return 0
    if (args.preset is None) == (args.model is None):
        raise ValueError("pass one of --preset NAME (random weights; see --list-presets) or --model DIR")
    if args.sweep and args.layer_table:
        raise ValueError("--sweep and --layer-table are separate modes; run them one at a time")
    argv = getattr(args, "argv", None)
    command = shlex.join(["jetvit", *argv]) if argv is not None else None
    common = dict(
        preset=args.preset,
        model=args.model,
        dtype=args.dtype,
        device=args.device,
        warmup=args.warmup,
        iters=args.iters,
        compile=args.compile,
        compile_mode=args.compile_mode,
        sdpa_backend=args.sdpa_backend,
        window_size=args.window_size,
        config_overrides=_parse_overrides(args.jetvit_config),
        fuse_qkv=not args.no_fuse_qkv,
        tanh_gelu_epilogue=args.tanh_gelu_epilogue,
        progress=not args.no_progress,
        command=command,
    )
    bench.check_device(args.device)  # refuse early, before building anything
    if args.layer_table:
        table = bench.layer_latency_table(
            resolution=args.resolution,
            batch_size=args.batch_size or 1,
            check_attention_types=None if args.no_check else (args.attention_types or True),
            **common,
        )
        atomic_write_json(args.layer_table, table)
        print(bench.format_layer_table(table))
        print(f"wrote {args.layer_table}")
        return 0
    if args.sweep:
        plot = args.plot or (str(Path(args.output).with_suffix(".png")) if args.output else None)
        result = bench.sweep(
            resolutions=args.sweep,
            attention_types=args.attention_types,
            batch_size=args.batch_size or 1,
            baselines=args.baselines,
            skip_baselines_above=args.skip_baselines_above,
            plot=plot,
            **common,
        )
        print(bench.format_sweep(result))
    else:
        result = bench.benchmark(
            attention_types=args.attention_types,
            resolution=args.resolution,
            batch_size=args.batch_size or 8,
            baselines=args.baselines,
            profile=not args.no_profile,
            **common,
        )
        print(bench.format_benchmark(result))
    if args.output:
        atomic_write_json(args.output, result)
        print(f"wrote {args.output}")
    return 0


def _parse_overrides(items: list[str] | None) -> dict:
    """`KEY=VALUE` pairs; a VALUE that parses as JSON (numbers, true/false, lists) is taken as such, else a string."""
    import json

    overrides = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--jetvit-config expects KEY=VALUE, got {item!r}")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    return overrides


def _add_bench_parser(commands) -> None:
    bench = commands.add_parser(
        "bench",
        help="latency / throughput / memory of JetViT against transformers' source model and all-full JetViT",
        description="Benchmark a JetViT hybrid against transformers' implementation of its source architecture (hf) "
        "and JetViT with all-full attention, in one run: latency (batch 1), throughput (--batch-size), peak memory, "
        "the SDPA backend that ran. --sweep times a list of resolutions and plots latency against tokens; "
        "--layer-table writes per-layer latencies by attention type for latency-aware search. On CUDA: CUDA-event "
        "medians after warm-up. --device cpu is a smoke test, not a performance number.",
    )
    _add_bench_model_arguments(bench)
    _add_bench_run_arguments(bench)
    _add_bench_mode_arguments(bench)
    bench.set_defaults(func=run_bench)


def _add_bench_model_arguments(bench) -> None:
    """What `jetvit bench` runs: a preset or a checkpoint (or --list-presets), the hybrid's layout and config."""
    source = bench.add_mutually_exclusive_group()
    source.add_argument("--preset", help="named architecture with random weights (see --list-presets), e.g. dinov3-l")
    source.add_argument("--model", help="converted JetViT checkpoint directory (from `jetvit convert`)")
    bench.add_argument("--list-presets", action="store_true", help="list the presets and layouts, then exit")
    bench.add_argument(
        "--attention-types",
        default=None,
        help="the hybrid's layout: a named layout (paper-2full, alternating, all-full, all-window, all-linear) or "
        "`jetvit convert` syntax ('linear', 'linear,window*10,full,...'); default paper-2full for a preset (two full "
        "layers at floor(13L/24), floor(21L/24), the rest alternating linear/window from layer 0), the checkpoint's "
        "own for --model",
    )
    bench.add_argument("--window-size", type=int, default=None, help="window side in patches for 'window' layers")
    bench.add_argument(
        "--jetvit-config",
        action="append",
        metavar="KEY=VALUE",
        help="set a JetViTConfig field on every JetViT model of the run (repeatable; VALUE parsed as JSON if it can "
        "be), e.g. to compare kernel implementations",
    )


def _add_bench_run_arguments(bench) -> None:
    """How `jetvit bench` runs: resolution, batch, dtype, device, iterations, compilation, baselines."""
    bench.add_argument("--resolution", default=None, help="HEIGHTxWIDTH in pixels (default: the model's image_size)")
    bench.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="throughput batch (default 8; latency is always batch 1); with --sweep / --layer-table the batch "
        "(default 1)",
    )
    bench.add_argument("--dtype", choices=DTYPES, default=None, help="default bfloat16 on cuda, float32 on cpu")
    bench.add_argument("--device", default="cuda", help="cuda (default; refused without a GPU) or cpu (smoke test)")
    bench.add_argument("--warmup", type=int, default=None, help="warm-up iterations (default 10 on cuda, 2 on cpu)")
    bench.add_argument("--iters", type=int, default=None, help="timed iterations (default 50 on cuda, 5 on cpu)")
    bench.add_argument("--compile", action="store_true", help="torch.compile every model (default mode)")
    bench.add_argument(
        "--compile-mode",
        default=None,
        help="torch.compile mode (e.g. max-autotune, reduce-overhead), or cuda-graph: the default compile with each "
        "input shape's whole forward captured as one CUDA graph (no per-call guard checks; CUDA only); implies "
        "--compile",
    )
    bench.add_argument(
        "--sdpa-backend",
        choices=("default", "cudnn", "flash", "efficient", "math"),
        default="default",
        help="prefer this SDPA backend (others stay as fallbacks); default: torch's own choice",
    )
    bench.add_argument(
        "--baselines",
        default="hf,jetvit-full",
        help="comma list of hf, hf-eager (transformers left uncompiled under --compile), jetvit-full, or 'none' "
        "(default hf,jetvit-full)",
    )
    bench.add_argument(
        "--no-fuse-qkv",
        action="store_true",
        help="keep JetViT's three q/k/v GEMMs (default: fuse_qkv_projections(), JetViT's inference set-up)",
    )
    bench.add_argument(
        "--tanh-gelu-epilogue",
        action="store_true",
        help="JetViT's MLP GELU as cuBLASLt's bias + tanh-GELU GEMM epilogue: an approximation the source models were "
        "not trained with (default: the source model's exact GELU, in the GEMM's epilogue on Hopper)",
    )
    bench.add_argument("--no-profile", action="store_true", help="skip the profiled forward (SDPA backend, kernels)")


def _add_bench_mode_arguments(bench) -> None:
    """`jetvit bench`'s modes (benchmark, `--sweep`, `--layer-table`) and outputs."""
    bench.add_argument("--sweep", default=None, help="resolution sweep, e.g. 512x512,1024x1024,2048x2048,4096x4096")
    bench.add_argument(
        "--skip-baselines-above",
        type=int,
        default=None,
        metavar="TOKENS",
        help="in a sweep, skip hf and jetvit-full above this many tokens",
    )
    bench.add_argument("--plot", default=None, help="sweep plot PNG (default: --output with .png)")
    bench.add_argument(
        "--layer-table",
        default=None,
        metavar="OUT.json",
        help="write the per-layer latency table (one full / window / linear layer, and the remainder) to this file",
    )
    bench.add_argument(
        "--no-check",
        action="store_true",
        help="with --layer-table, skip measuring the --attention-types layout to check the table's estimate",
    )
    bench.add_argument("--output", default=None, help="write the results JSON here")
    bench.add_argument("--no-progress", action="store_true", help="no progress bars")


def parse_image_size(text: str) -> int | tuple[int, int]:
    """`"518"` (short side, aspect ratio kept) or `"HEIGHTxWIDTH"` (exact) in pixels."""
    try:
        sides = [int(side) for side in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size like 518 or 518x700, got {text!r}") from None
    if len(sides) not in (1, 2) or min(sides) <= 0:
        raise argparse.ArgumentTypeError(f"expected a size like 518 or 518x700, got {text!r}")
    return sides[0] if len(sides) == 1 else (sides[0], sides[1])


def run_search(args: argparse.Namespace) -> int:
    """`jetvit search`: one stage of the beam search, writing the log, plots and the extracted model."""
    from .device import resolve_placement
    from .search.stage import run_search as search

    placement = resolve_placement(args.device, args.dtype)  # refuse an unusable --device before loading anything
    result = search(
        args.supernet, args.teacher, args.data, output=args.output, objective=args.objective, stage=args.stage,
        beam_width=args.beam_width, start=args.start, max_changes=args.max_changes, max_full=args.max_full,
        tolerance=args.tolerance, noise_factor=args.noise_factor, latency_table=args.latency_table,
        latency_budget_ms=args.latency_budget_ms, metric=args.metric, depth_mode=args.depth_mode,
        reference=args.reference, split=args.split, da2k=args.da2k, probe=args.probe, num_labels=args.num_labels,
        probe_steps=args.probe_steps, num_images=args.num_images, image_size=args.image_size,
        batch_size=args.batch_size, device=placement.device, dtype=placement.dtype, overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    direction = "higher" if result.objective["higher_is_better"] else "lower"
    print(f"jetvit search stage {result.stage}: {len(result.evaluations)} assignments evaluated in "
          f"{len(result.rounds) - 1} rounds; stopped: {result.stop_reason}")
    print(f"  objective {result.objective['name']} ({direction} is better): chosen {result.best_score:.6g}, start "
          f"{result.evaluations[0]['score']:.6g}" + (f", teacher {result.teacher_score:.6g}"
                                                    if result.teacher_score is not None else ""))
    if result.best_ci95 is not None:
        print(f"  chosen score's 95% CI over images: [{result.best_ci95[0]:.6g}, {result.best_ci95[1]:.6g}]")
    if result.best_latency_ms is not None:
        print(f"  estimated latency {result.best_latency_ms:.3f} ms")
    print(f"  attention types (0-based layers): {','.join(result.best)}")
    print(result.timing_summary())
    print(f"wrote {args.output} (search_log.json, attention_types.json, plots, model/)")
    return 0


def _add_evaluation_data_arguments(parser) -> None:
    """The arguments `jetvit search` and `jetvit eval` share: which images, at what size, and the probe's training."""
    parser.add_argument("--num-images", type=int, default=None, help="use the first N images of --data")
    parser.add_argument("--image-size", type=parse_image_size, default=None,
                        help="model input size: 518 (short side, aspect kept) or HxW (default: the config's)")
    parser.add_argument("--num-labels", type=int, default=None, help="probe classes (default: largest label + 1)")
    parser.add_argument("--probe-steps", type=int, default=1000, help="probe training steps (default 1000)")


def _add_placement_arguments(parser) -> None:
    """Where `jetvit search` and `jetvit eval` run the models, in which compute dtype, how many images per forward."""
    parser.add_argument("--device", default="auto", help="auto (default: the GPU when there is one, else the CPU), "
                        "cpu, cuda or cuda:N")
    parser.add_argument("--dtype", choices=("auto", *DTYPES), default="auto",
                        help="the forwards' compute dtype, by autocast (default auto: bfloat16 on a GPU, float32 on "
                        "the CPU); metrics are computed in float32 or float64")
    parser.add_argument("--batch-size", type=int, default=None, help="images per forward (default 16 on a GPU, 8 on "
                        "the CPU)")


def _add_search_parser(commands) -> None:
    from .search.beam import NOISE_FACTOR

    search = commands.add_parser(
        "search",
        help="post-training attention search: beam search over a supernet's attention types (one stage)",
        description="Greedy, stage-wise beam search (paper 3.2.4). Stage 1 starts all-linear and switches linear "
        "layers to window attention until the objective plateaus; stage 2 starts from stage 1's choice (--start) and "
        "switches layers to full attention until the objective reaches the teacher's or --max-full layers are full. "
        "Writes search_log.json (every evaluated assignment), attention_types.json, a per-layer gain heatmap "
        "(full_attention_gain.png in stage 2, like the paper's Fig. 7), pareto.png and model/ (the extracted subnet).",
    )
    search.add_argument("--supernet", required=True, help="saved supernet, converted JetViT or source checkpoint dir")
    search.add_argument("--teacher", required=True, help="the full-attention teacher: source checkpoint or JetViT dir")
    search.add_argument("--data", default=None, help="held-out images: folder, saved/local dataset (depth/labels "
                        "columns are ground truth); not needed for --objective ordinal with --da2k")
    search.add_argument("--objective", choices=("feature", "depth", "segmentation", "ordinal"), default="feature",
                        help="feature: negated feature-distillation loss (fast proxy); depth: --metric of the DPT "
                        "head vs ground truth (data with depth) or the teacher; segmentation: mIoU of a linear probe "
                        "(data with labels); ordinal: DA-2K pair accuracy (--da2k, or pairs from the teacher)")
    search.add_argument("--stage", type=int, choices=(1, 2), required=True, help="1: linear -> window; 2: -> full")
    search.add_argument("--beam-width", type=int, default=3, help="assignments kept per round (default 3)")
    search.add_argument("--start", default=None, help="start assignment: attention types ('linear,window*10,...') or "
                        "a JSON file (stage 1's attention_types.json); needed for stage 2 on a stage-1 supernet")
    search.add_argument("--max-full", type=int, default=None, help="stage 2: at most this many full layers")
    search.add_argument("--max-changes", type=int, default=None, help="at most this many rounds")
    search.add_argument("--tolerance", type=float, default=0.0, help="a fixed margin added to the noise threshold "
                        "(default 0)")
    search.add_argument("--noise-factor", type=float, default=NOISE_FACTOR,
                        help="stage 1 takes a round only if it gains more than tolerance + this many paired bootstrap "
                        "standard errors over images; stage 2 stops within as much of the teacher's score "
                        f"(default {NOISE_FACTOR})")
    search.add_argument("--metric", choices=("delta1", "delta2", "delta3", "abs_rel"), default="delta1",
                        help="depth objective's metric (default delta1)")
    search.add_argument("--reference", choices=("auto", "teacher", "ground_truth"), default="auto",
                        help="depth objective's target: the teacher's prediction or ground truth (default auto: "
                        "ground truth where --data has depth)")
    search.add_argument("--split", default="search", help="what --data is: search (default) or train; test is "
                        "refused, the test split only reports on the chosen layout")
    search.add_argument("--depth-mode", choices=("disparity", "depth"), default="disparity",
                        help="depth objective's evaluation mode (default disparity, Depth Anything's)")
    search.add_argument("--da2k", default=None, help="ordinal objective: DA-2K annotations.json (images beside it)")
    search.add_argument("--probe", default=None, help="segmentation objective: a saved linear probe (default: train "
                        "one on the teacher's features of --data)")
    search.add_argument("--latency-table", default=None, help="per-layer latency table JSON (jetvit bench "
                        "--layer-table): estimated latency of every assignment and the Pareto front against it")
    search.add_argument("--latency-budget-ms", type=float, default=None, help="skip assignments estimated slower")
    _add_evaluation_data_arguments(search)
    _add_placement_arguments(search)
    search.add_argument("--output", required=True, help="output directory")
    search.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    search.add_argument("--no-progress", action="store_true", help="no progress bars")
    search.set_defaults(func=run_search)


def run_eval(args: argparse.Namespace) -> int:
    """`jetvit eval`: depth, ordinal, segmentation and per-layer feature metrics of a model against its teacher."""
    from .device import resolve_placement
    from .evaluation.evaluator import format_report, run_evaluation

    if args.data is None and args.da2k is None:
        raise ValueError("pass --data (evaluation images) and/or --da2k (DA-2K annotations)")
    placement = resolve_placement(args.device, args.dtype)  # refuse an unusable --device before loading anything
    modes = ("disparity", "depth") if args.depth_mode == "both" else (args.depth_mode,)
    report = run_evaluation(
        args.model, args.teacher, args.data, output=args.output, tasks=args.task, depth_modes=modes, da2k=args.da2k,
        probe=args.probe, num_labels=args.num_labels, probe_steps=args.probe_steps, num_images=args.num_images,
        image_size=args.image_size, batch_size=args.batch_size, pairs_per_image=args.pairs_per_image,
        progress=not args.no_progress, device=placement.device, dtype=placement.dtype,
    )
    device = report["device"]
    print(f"jetvit eval: {args.model} vs {args.teacher} ({report.get('num_images', 0)} images) on "
          f"{device['device']}{' (' + device['gpu'] + ')' if device['gpu'] else ''} in {device['dtype']}, "
          f"{report['seconds']:.1f} s")
    print(format_report(report))
    print(f"wrote {args.output}")
    return 0


def _add_eval_parser(commands) -> None:
    evaluate = commands.add_parser(
        "eval",
        help="evaluate a JetViT against its teacher: depth, ordinal, segmentation, per-layer feature cosine",
        description="Depth: AbsRel and delta1..3 after least-squares scale-shift alignment in disparity space, in "
        "both evaluation modes (disparity = Depth Anything's, depth = MiDaS/Marigold's), against the teacher and "
        "against ground truth (data with a depth column). Ordinal pair accuracy (DA-2K annotations, or pairs where "
        "the teacher's disparity ratio > 1.1). Segmentation mIoU / pixel accuracy of a linear probe (ignore 255). "
        "Per-layer cosine of the normed hidden states against the teacher.",
    )
    evaluate.add_argument("--model", required=True, help="the JetViT to evaluate (directory)")
    evaluate.add_argument("--teacher", required=True, help="its full-attention teacher: source checkpoint or JetViT")
    evaluate.add_argument("--data", default=None, help="evaluation images: folder, saved/local dataset")
    evaluate.add_argument("--task", action="append", choices=("features", "depth", "segmentation"), default=None,
                          help="repeatable; default: features, depth for depth models, segmentation with labels or "
                          "--probe")
    evaluate.add_argument("--depth-mode", choices=("disparity", "depth", "both"), default="both",
                          help="depth evaluation mode(s) (default both)")
    evaluate.add_argument("--da2k", default=None, help="DA-2K annotations.json (images beside it)")
    evaluate.add_argument("--probe", default=None, help="saved linear probe (default: train one on the teacher)")
    evaluate.add_argument("--pairs-per-image", type=int, default=64, help="teacher-sampled ordinal pairs per image")
    _add_evaluation_data_arguments(evaluate)
    _add_placement_arguments(evaluate)
    evaluate.add_argument("--output", required=True, help="write the report JSON here")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bars")
    evaluate.set_defaults(func=run_eval)


def run_pipeline(args: argparse.Namespace) -> int:
    """`jetvit pipeline`: every setting is checked first; Ctrl-C (or SIGTERM) in a training stage stops after a
    checkpoint of the current step, and the same command continues from there."""
    from .search.post_training import config_from_cli, run_pipeline as pipeline

    pipeline(config_from_cli(args), overwrite=args.overwrite)
    return 0


def _add_pipeline_parser(commands) -> None:
    import typing
    from dataclasses import fields

    from .search.post_training import PRESETS, PipelineConfig, flag

    defaults = PipelineConfig()
    pipeline = commands.add_parser(
        "pipeline",
        help="the whole post-training attention search (the main job)",
        description="Distill a stage-1 supernet, search, distill stage 2, search, fine-tune, train the all-linear and "
        "all-window baselines with the same steps, score every model on the test split with 95% intervals, "
        "evaluate against the teacher, benchmark and write the model card. Defaults: the depth teacher in "
        "training/teachers/depth-dinov2-tiny on rendered scenes, offline, CPU or GPU; sizes and step counts follow "
        "the device unless given. Every setting is checked before any work. Rerunning the same command continues an "
        "interrupted run: finished stages are skipped, and a training stage resumes from its last checkpoint (one "
        "every 10% of a stage, and one of the current step on Ctrl-C). An --output holding a run with other "
        "settings is refused unless --overwrite, and one another run is working in is refused.",
    )
    help_texts = {
        "teacher": "source checkpoint (directory or Hub id); with probe.json and probe.safetensors beside it, a "
        "segmentation teacher (its linear probe's mIoU is the objective)",
        "output_dir": "where every stage writes",
        "train_data": "training images: render:train[:<scenes per epoch>] (new rendered scenes every epoch), an "
        "image folder or a dataset dir",
        "eval_scenes": "rendered scenes in each of the search split (scores layouts) and the test split (reports "
        "only)",
        "image_size": "training and evaluation size in pixels",
        "distill_steps": "steps of each supernet stage (the baselines distil for twice this)",
        "noise_factor": "a search round must gain more than this many paired bootstrap standard errors over scenes",
        "max_full": "full-attention layers stage 2 may add",
        "objective": "search objective: auto (segmentation for a teacher with a probe, depth for a depth teacher, "
        "else feature), feature, depth (AbsRel against the teacher's prediction), segmentation or ordinal",
        "bench_resolution": "benchmark HEIGHTxWIDTH (default 1024x1024 on a GPU, --image-size on a CPU)",
        "latency_table": "per-layer latency table of the teacher (`jetvit bench --model <converted teacher> "
        "--layer-table OUT.json`): both searches' Pareto fronts are against estimated milliseconds, and `jetvit "
        "findings` plots the test split's accuracy against them",
        "latency_budget_ms": "with --latency-table: the searches skip layouts estimated slower than this",
    }
    for spec in fields(PipelineConfig):
        kind = next((t for t in typing.get_args(spec.type) if t is not type(None)), spec.type)
        value = getattr(defaults, spec.name)
        if spec.name == "image_size":
            default = (f" (default: {PRESETS['gpu']['image_scale']:g} x the teacher's native resolution on a GPU, "
                       f"{PRESETS['cpu']['image_scale']:g} x on a CPU, rounded to whole patches)")
        elif spec.name in PRESETS["cpu"]:
            default = f" (default: {PRESETS['cpu'][spec.name]} on a CPU, {PRESETS['gpu'][spec.name]} on a GPU)"
        else:
            default = f" (default {value})" if value is not None else ""
        pipeline.add_argument(flag(spec.name), dest=spec.name, type=kind, default=None,
                              help=f"{help_texts.get(spec.name, spec.name.replace('_', ' '))}{default}")
    pipeline.add_argument("--overwrite", action="store_true",
                          help="clear an earlier pipeline run in --output (one with a pipeline_config.json) first")
    pipeline.set_defaults(func=run_pipeline, interrupted="interrupted; rerun the same command to continue")


def run_card(args: argparse.Namespace) -> int:
    """`jetvit card`: write the model card, README.md, into a JetViT model directory."""
    from .model_card import write_model_card

    path = write_model_card(args.model, repo_id=args.repo_id, base_model=args.base_model,
                            search_logs=args.search_log or (), eval_report=args.eval, bench_report=args.bench)
    print(f"wrote {path}")
    return 0


def run_findings(args: argparse.Namespace) -> int:
    """`jetvit findings`: the paper's ablations as extra rows at a finished pipeline run's budget."""
    from .search.findings import format_findings, run_findings as findings

    result = findings(args.run, tables=[table.strip() for table in args.tables.split(",") if table.strip()],
                      latency_table=args.latency_table)
    print(format_findings(result))
    return 0


def _add_findings_parser(commands) -> None:
    from .search.findings import TABLES

    findings = commands.add_parser(
        "findings",
        help="the paper's ablations on a finished `jetvit pipeline` run, at its budget, on its test split",
        description="Train fixed-layout rows exactly as the run's baselines (Table 1: the linear attention's "
        "convolution; Table 2: the stage-1 layout; Table 3: stage 2's layouts with 0, 1, ... full layers; Fig. 5: "
        "MLP-only inheritance; skip_stage1: the searched full layers with every other layer linear or window; "
        "random: random orders of the searched layout's types, the same estimated latency) and score them with the "
        "run's models on its test split, with 95% intervals, into RUN/findings/findings.json and findings.md. "
        "Rerunning skips finished rows; the rows of earlier calls stay in the files. With a latency table (the "
        "run's --latency-table or --latency-table here), every scored model is also priced at its estimated latency "
        "and plotted with the front of accuracy against latency (RUN/findings/pareto.png); --tables pareto does only "
        "that, on the rows already scored.",
    )
    findings.add_argument("--run", required=True, help="the output directory of a finished `jetvit pipeline`")
    findings.add_argument("--tables", default=",".join(TABLES), help=f"comma list of {', '.join(TABLES)}, pareto "
                          "(default: every table with rows)")
    findings.add_argument("--latency-table", default=None,
                          help="per-layer latency table (`jetvit bench --layer-table`; default: the run's own, if "
                          "it had one) for the accuracy / latency front")
    findings.set_defaults(func=run_findings)


def _add_card_parser(commands) -> None:
    card = commands.add_parser(
        "card",
        help="write a JetViT model's card (README.md) from its search logs, evaluation and benchmark reports",
        description="Render the model card into MODEL/README.md (atomically): the base model (from "
        "jetvit_conversion.json, or --base-model), the attention layout, the search stages, accuracy against the "
        "teacher and the speed table, and how to load the model.",
    )
    card.add_argument("--model", required=True, help="the JetViT model directory")
    card.add_argument("--search-log", action="append", default=None,
                      help="a `jetvit search` search_log.json; repeatable, stage 1 first")
    card.add_argument("--eval", default=None, help="the `jetvit eval` report JSON")
    card.add_argument("--bench", default=None, help="the `jetvit bench` report JSON")
    card.add_argument("--base-model", default=None, help="the base model's Hub id (default: the source named in "
                      "jetvit_conversion.json, when it is a Hub id)")
    card.add_argument("--repo-id", default=None, help="the Hub repo the model goes to: the card's title and usage")
    card.set_defaults(func=run_card)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: the message and where to read the usage, not the usage itself."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jetvit", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser(
        "convert",
        help="convert a DINOv2 / DINOv3 / Depth Anything checkpoint into JetViT",
        description="Convert a DINOv2, DINOv2-with-registers, DINOv3 ViT or Depth Anything checkpoint (directory or "
        "Hub id) into a JetViT model directory, inheriting every weight.",
    )
    convert.add_argument("--source", required=True, help="checkpoint directory or Hub repo id")
    convert.add_argument("--output", required=True, help="directory to write the JetViT model to")
    convert.add_argument(
        "--attention-types",
        type=attention_types_argument,
        default=None,
        help="one type for every layer (e.g. 'linear') or one per layer, comma-separated, 'x*N' repeats "
        "(e.g. 'linear,window*10,full,...'); default all 'full' (numerically the source model)",
    )
    convert.add_argument("--window-size", type=int, default=None, help="window side in patches for 'window' layers")
    convert.add_argument(
        "--linear-attention-conv",
        choices=LINEAR_ATTENTION_CONVS,
        default=None,
        help="the depthwise conv of V in 'linear' layers (default squeeze_dynamic; 'static' and 'none' are the paper's "
        "ablations)",
    )
    convert.add_argument(
        "--inherit",
        choices=("all", "mlp_only"),  # convert.INHERIT_MODES, without importing torch to build the parser
        default="all",
        help="'all' source weights (default), or 'mlp_only': fresh q/k/v/o projections (the paper's ablation)",
    )
    convert.add_argument("--dtype", choices=DTYPES, default=None, help="dtype of the saved weights (default float32)")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    convert.set_defaults(func=run_convert)
    _add_bench_parser(commands)
    _add_search_parser(commands)
    _add_eval_parser(commands)
    _add_pipeline_parser(commands)
    _add_card_parser(commands)
    _add_findings_parser(commands)
    for command in commands.choices.values():  # `--debug` after the subcommand too; SUPPRESS keeps one given before
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the traceback of an error")
    return parser


def describe_error(error: Exception) -> tuple[str, int]:
    """One line for an error and the exit status: 2 for what the user can fix (a value, a missing, unreadable or
    broken file, too large a batch for memory), 1 for anything unexpected."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = (lines[0] + (" [...]" if len(lines) > 1 else "")) if lines else type(error).__name__
    torch, safetensors = sys.modules.get("torch"), sys.modules.get("safetensors")  # only imported ones can raise
    if isinstance(error, ValueError):  # JetViTUserError, and JSON and Unicode decoding errors among others
        return text, 2
    # a full disk, from Python's writes or from safetensors' (a ViT-L checkpoint is 3 GB): what was saved before stays
    # whole (writes are atomic), so the same command continues once there is room
    if (isinstance(error, OSError) and error.errno == errno.ENOSPC) or "No space left on device" in text:
        where = f" writing {error.filename}" if isinstance(error, OSError) and error.filename else ""
        return (f"out of disk space{where}; free some or write to a larger disk, then rerun the same command (a "
                "pipeline continues where it stopped)"), 2
    if isinstance(error, OSError) and error.filename is not None:
        where = f"{error.filename} -> {error.filename2}" if error.filename2 is not None else f"{error.filename}"
        return f"{where}: {error.strerror or text}", 2
    if isinstance(error, OSError):
        return text, 2
    if safetensors is not None and isinstance(error, safetensors.SafetensorError):
        if text.startswith("Error while serializing"):
            return f"could not write a safetensors file ({text})", 2
        return f"a safetensors file is truncated or corrupt ({text})", 2
    if torch is not None and isinstance(error, torch.OutOfMemoryError):
        return f"out of memory ({text}); try a smaller batch or image size", 2
    return f"unexpected {type(error).__name__}: {text}", 1


def main(argv: list[str] | None = None) -> int:
    """Run one `jetvit` command. Exit status: 0 done; 2 an error the user can fix (a flag, a missing or broken file);
    1 an unexpected error; 130 interrupted (Ctrl-C). An error is one line on stderr; `--debug` adds its traceback. On
    Ctrl-C the line is the subcommand's `interrupted` default when it sets one (`set_defaults(interrupted=...)`, e.g.
    to say how to resume), else "interrupted"."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # recorded by `jetvit bench`
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return _report(args, getattr(args, "interrupted", "interrupted"), 130)
    except Exception as error:
        message, status = describe_error(error)
        hint = " (rerun with --debug for the traceback)" if status == 1 and not args.debug else ""
        return _report(args, f"error: {message}{hint}", status)


def _report(args: argparse.Namespace, line: str, status: int) -> int:
    """Print `line` for the subcommand, after the traceback of the exception being handled with `--debug`."""
    if args.debug:
        traceback.print_exc()
    print(f"jetvit {args.command}: {line}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
