"""The attention-layout grammar: how a per-layer list of attention types is written, named, checked and summarised.

A layout is one attention type per layer (`"full"`, `"window"`, `"linear"`; 0-based layer indices). It can be given as
- a list of types;
- a named layout (`LAYOUTS`: `paper-2full`, `alternating`, `all-full`, `all-window`, `all-linear`);
- one type for every layer (`"linear"`);
- `jetvit convert`'s syntax: a comma list where `type*N` repeats an entry N times (`"linear,window*10,full,..."`).

Supernet candidates (the types each layer may take during distillation and search) use the same types, as one shared
list or one list per layer; stage 2's candidates are each layer's stage-1 choice or `"full"`.
"""

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from .io import read_json
from .models.jetvit.configuration_jetvit import ATTENTION_TYPES

STAGE1_CANDIDATES = ("linear", "window")


def check_attention_types(types: Sequence, what: str) -> None:
    """Raise a ValueError that names `what` if any entry of `types` is not an attention type."""
    for attention_type in types:
        if attention_type not in ATTENTION_TYPES:
            raise ValueError(f"Unknown attention type {attention_type!r} in {what}; allowed: {list(ATTENTION_TYPES)}.")


def parse_attention_types(text: str) -> list[str] | str:
    """`jetvit convert`'s syntax: `"linear"` (one type, for every layer) or a comma list with one type per layer, where
    `"type*N"` repeats an entry N >= 1 times. Raises ValueError on unknown types and bad counts."""
    entries = []
    for item in text.split(","):
        item = item.strip()
        name, star, count = item.partition("*")
        if name not in ATTENTION_TYPES:
            raise ValueError(f"unknown attention type {name!r}; allowed: {', '.join(ATTENTION_TYPES)}")
        try:
            repeat = int(count) if star else 1
        except ValueError:
            repeat = 0
        if repeat < 1:
            raise ValueError(f"bad repeat count in {item!r}: write a whole number >= 1, e.g. linear*4")
        entries += [name] * repeat
    return entries[0] if len(entries) == 1 and "*" not in text else entries


def paper_full_positions(num_layers: int) -> list[int]:
    """0-based positions of the two full-attention layers of `paper-2full`, scaled to the depth.

    Rule: `floor(13 * L / 24)` and `floor(21 * L / 24)`, i.e. exactly layers 13 and 21 (0-based) for a 24-layer ViT-L,
    where the paper's JetViT-L speed comparison puts its two full layers; 12 layers -> 6, 10; 32 -> 17, 28;
    40 -> 21, 35. When the two collide (fewer than 3 layers) they become adjacent layers; a 1-layer model gets one
    full layer.
    """
    first, second = (13 * num_layers) // 24, (21 * num_layers) // 24
    if second <= first:
        if first + 1 < num_layers:
            second = first + 1
        else:
            first, second = first - 1, first
    return [p for p in (first, second) if 0 <= p < num_layers]


def paper_2full_layout(num_layers: int) -> list[str]:
    """Two `"full"` layers at `paper_full_positions`; the other layers alternate `"linear"`, `"window"`, starting with
    `"linear"` at layer 0 (counting only the non-full layers: ViT-L gets 2 full, 11 linear, 11 window)."""
    full = set(paper_full_positions(num_layers))
    types, others = [], 0
    for idx in range(num_layers):
        if idx in full:
            types.append("full")
        else:
            types.append("linear" if others % 2 == 0 else "window")
            others += 1
    return types


def alternating_layout(num_layers: int) -> list[str]:
    return ["linear" if idx % 2 == 0 else "window" for idx in range(num_layers)]


LAYOUTS: dict[str, Callable[[int], list[str]]] = {
    "paper-2full": paper_2full_layout,
    "alternating": alternating_layout,
    **{f"all-{kind}": (lambda n, kind=kind: [kind] * n) for kind in ATTENTION_TYPES},
}


def resolve_attention_types(spec, num_layers: int) -> list[str]:
    """One attention type per layer from a layout name (`LAYOUTS`; None means `paper-2full`), a type name (every
    layer), `jetvit convert`'s syntax or a list."""
    if spec is None:
        spec = "paper-2full"
    if isinstance(spec, str):
        text = spec.strip()
        if text in LAYOUTS:
            return LAYOUTS[text](num_layers)
        try:
            parsed = parse_attention_types(text)
        except ValueError as error:
            raise ValueError(f"attention types {text!r}: {error}; named layouts: {', '.join(LAYOUTS)}") from None
        types = [parsed] * num_layers if isinstance(parsed, str) else parsed
    else:
        types = list(spec)
    check_attention_types(types, "the attention types")
    if len(types) != num_layers:
        raise ValueError(f"attention types list {len(types)} entries but the model has {num_layers} layers: {types}")
    return types


def read_attention_types(spec, num_layers: int) -> list[str]:
    """`resolve_attention_types`, or a JSON file holding a list or `{"attention_types": [...]}` (e.g. a previous
    search's `attention_types.json`)."""
    if isinstance(spec, (str, os.PathLike)) and Path(spec).is_file():
        data = read_json(spec)
        spec = data["attention_types"] if isinstance(data, dict) else data
    return resolve_attention_types(spec, num_layers)


def summarize_types(types: Sequence[str]) -> str:
    """`"full:2, window:11, linear:11"`: how many layers of each type."""
    return ", ".join(f"{t}:{list(types).count(t)}" for t in ATTENTION_TYPES if t in types)


def stage2_candidates(stage1_choice: Sequence[str]) -> list[list[str]]:
    """Stage 2's search space: each layer keeps its stage-1 choice or becomes full attention."""
    return [[choice, "full"] if choice != "full" else ["full"] for choice in stage1_choice]


def normalize_candidates(candidates, num_layers: int) -> list[list[str]]:
    """One candidate list per layer (duplicates dropped) from a shared list or per-layer lists; None means stage 1's
    `("linear", "window")`."""
    if candidates is None:
        candidates = STAGE1_CANDIDATES
    if isinstance(candidates, str):
        raise ValueError(f"candidates must be a list of attention types, got the string {candidates!r}.")
    if all(isinstance(c, str) for c in candidates):
        candidates = [list(candidates)] * num_layers
    candidates = [list(dict.fromkeys(layer)) for layer in candidates]
    if len(candidates) != num_layers:
        raise ValueError(f"candidates must list one candidate set per layer ({num_layers}), got {len(candidates)}.")
    for index, layer in enumerate(candidates):
        if not layer:
            raise ValueError(f"Layer {index} has an empty candidate set.")
        check_attention_types(layer, f"the candidates of layer {index}")
    return candidates


def parse_candidates(spec):
    """A training config's `candidates`: None, `"stage2"`, `"stage2:<types>"` (stage 2 around a stage-1 choice), a
    comma list, a list, or a list of per-layer lists; attention types are checked, the layer count is not (the model
    is not known yet)."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec == "stage2":
            return spec
        if spec.startswith("stage2:"):
            choice = [item.strip() for item in spec.removeprefix("stage2:").split(",")]
            check_attention_types(choice, "the stage-1 choice of candidates 'stage2:...'")
            return "stage2:" + ",".join(choice)
        spec = [item.strip() for item in spec.split(",") if item.strip()]
    if not spec:
        raise ValueError("candidates must name at least one attention type.")
    if all(isinstance(item, str) for item in spec):
        check_attention_types(spec, "candidates")
        return list(spec)
    if all(isinstance(item, list) and item for item in spec):
        for index, layer in enumerate(spec):
            check_attention_types(layer, f"the candidates of layer {index}")
        return [list(layer) for layer in spec]
    raise ValueError(f"candidates must be a list of attention types or one non-empty list per layer, got {spec!r}.")
