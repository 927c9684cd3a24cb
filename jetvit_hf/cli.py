"""The `jetvit` command: `jetvit convert ...` (and the later pipeline steps) as thin wrappers over the Python API."""

import argparse
import re
import sys

from .configuration_jetvit import ATTENTION_TYPES

DTYPES = ("float32", "bfloat16", "float16")


def parse_attention_types(text: str) -> list[str] | str:
    """`"linear"` (every layer) or a comma list with one type per layer; `"x*N"` repeats an entry N times."""
    entries = []
    for item in text.split(","):
        item = item.strip()
        name, _, count = item.partition("*")
        if name not in ATTENTION_TYPES:
            raise argparse.ArgumentTypeError(f"unknown attention type {name!r}; allowed: {', '.join(ATTENTION_TYPES)}")
        try:
            repeat = int(count) if count else 1
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad repeat count in {item!r}; write e.g. linear*4") from None
        entries += [name] * repeat
    return entries[0] if len(entries) == 1 and "*" not in text else entries


def _torch_dtype(name: str | None):
    import torch

    return None if name is None else getattr(torch, name)


def run_convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from transformers import AutoConfig

    from .convert import convert_to_jetvit, resolve_source, save_converted

    output = Path(args.output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not args.overwrite:
        raise FileExistsError(f"{output} already exists; pass --overwrite to replace it.")
    overrides = {}
    if args.window_size is not None:
        overrides["window_size"] = args.window_size
    attention_types = args.attention_types
    if isinstance(attention_types, str):  # one type for every layer
        num_layers = _num_layers(AutoConfig.from_pretrained(resolve_source(args.source)))
        attention_types = [attention_types] * num_layers
    model, info = convert_to_jetvit(
        args.source, attention_types, dtype=_torch_dtype(args.dtype), output_loading_info=True, **overrides
    )
    save_converted(model, args.output, args.source, info, overwrite=args.overwrite)
    types = model.config.attention_types
    print(f"Converted {info.source_architecture} ({info.family}) -> {info.jetvit_class} in {args.output}")
    print(f"  attention types: {', '.join(f'{t}:{types.count(t)}' for t in ATTENTION_TYPES if types.count(t))}")
    print(f"  inherited tensors: {info.inherited_tensors}; new (not inherited) tensors: {len(info.new_parameters)}")
    if info.new_parameters:
        layers = sorted({int(re.search(r"layer\.(\d+)\.", name).group(1)) for name in info.new_parameters})
        print(f"  new: the squeeze dynamic convolution's kernel generator (fc1, fc2) in layers {layers}")
    return 0


def _num_layers(source_config) -> int:
    backbone = getattr(source_config, "backbone_config", None)
    return (backbone or source_config).num_hidden_layers


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
        bench.write_json(table, args.layer_table)
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
        bench.write_json(result, args.output)
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
        help="torch.compile mode (e.g. max-autotune, reduce-overhead); implies --compile",
    )
    bench.add_argument(
        "--sdpa-backend",
        choices=("default", "cudnn", "flash", "efficient", "math"),
        default="default",
        help="prefer this SDPA backend (others stay as fallbacks); default: torch's own choice",
    )
    bench.add_argument(
        "--baselines", default="hf,jetvit-full", help="comma list of hf, jetvit-full, or 'none' (default both)"
    )
    bench.add_argument(
        "--no-fuse-qkv",
        action="store_true",
        help="keep JetViT's three q/k/v GEMMs (default: fuse_qkv_projections(), JetViT's inference set-up)",
    )
    bench.add_argument("--no-profile", action="store_true", help="skip the profiled forward (SDPA backend, kernels)")
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
    bench.set_defaults(func=run_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jetvit", description=__doc__)
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
        type=parse_attention_types,
        default=None,
        help="one type for every layer (e.g. 'linear') or one per layer, comma-separated, 'x*N' repeats "
        "(e.g. 'linear,window*10,full,...'); default all 'full' (numerically the source model)",
    )
    convert.add_argument("--window-size", type=int, default=None, help="window side in patches for 'window' layers")
    convert.add_argument("--dtype", choices=DTYPES, default=None, help="dtype of the saved weights (default float32)")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    convert.set_defaults(func=run_convert)
    _add_bench_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # recorded by `jetvit bench`
    try:
        return args.func(args)
    except (ValueError, FileExistsError) as error:
        print(f"jetvit {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
