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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileExistsError) as error:
        print(f"jetvit {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
