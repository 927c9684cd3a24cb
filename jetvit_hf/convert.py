"""Convert DINOv2 / DINOv2-with-registers / DINOv3 ViT / Depth Anything checkpoints into JetViT, inheriting every weight.

Weights are mapped by their on-disk (safetensors) names, which transformers keeps stable across 5.x releases even where
the in-memory names changed; the newer in-memory names are accepted too. Every attention type starts from its layer's
q/k/v/o projections, so the only new parameters are the convolutions of `"linear"` layers; with `inherit="mlp_only"`
(the paper's ablation) the attention projections are freshly initialised too.
"""

import inspect
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig
from transformers.utils import logging

from .errors import JetViTUserError
from .io import atomic_directory, atomic_write_json, check_safetensors, read_json
from .models.jetvit.configuration_jetvit import JetViTConfig
from .models.jetvit.modeling_jetvit import (
    JetViTBackbone,
    JetViTForDepthEstimation,
    JetViTModel,
    JetViTPreTrainedModel,
)

logger = logging.get_logger(__name__)

# architecture name -> (source family, JetViT class)
SUPPORTED_ARCHITECTURES: dict[str, tuple[str, type[JetViTPreTrainedModel]]] = {
    "Dinov2Model": ("dinov2", JetViTModel),
    "Dinov2Backbone": ("dinov2", JetViTBackbone),
    "Dinov2WithRegistersModel": ("dinov2_with_registers", JetViTModel),
    "Dinov2WithRegistersBackbone": ("dinov2_with_registers", JetViTBackbone),
    "DINOv3ViTModel": ("dinov3_vit", JetViTModel),
    "DINOv3ViTBackbone": ("dinov3_vit", JetViTBackbone),
    "DepthAnythingForDepthEstimation": ("depth_anything", JetViTForDepthEstimation),
}
SUPERNET_FILE = "supernet.json"  # marks a directory written by `JetViTSupernet.save_pretrained`

_DEFAULT_ARCHITECTURE = {
    "dinov2": "Dinov2Model",
    "dinov2_with_registers": "Dinov2WithRegistersModel",
    "dinov3_vit": "DINOv3ViTModel",
    "depth_anything": "DepthAnythingForDepthEstimation",
}
DEPTH_BACKBONE_FAMILIES = ("dinov2", "dinov2_with_registers")
# parameters no source has: the convolutions of "linear" layers; with inherit="mlp_only" the attention projections too
NEW_PARAMETER_PATTERNS = {
    "all": re.compile(r"\.attention\.(?:candidates\.[a-z]+\.)?(?:dynamic_conv|static_conv)\."),
    "mlp_only": re.compile(r"\.attention\.(?:candidates\.[a-z]+\.)?(?:dynamic_conv|static_conv|[qkvo]_proj)\."),
}
INHERIT_MODES = tuple(NEW_PARAMETER_PATTERNS)

_LAYER = r"^(?:encoder\.)?layer\.(\d+)\."


def _split_swiglu_weights_in(match: re.Match, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """DINOv2-g stores its gate and up projections stacked as one `weights_in` ([gate; up])."""
    layer, kind = match.group(1), match.group(2)
    gate, up = tensor.chunk(2, dim=0)
    return {f"encoder.layer.{layer}.mlp.gate_proj.{kind}": gate, f"encoder.layer.{layer}.mlp.up_proj.{kind}": up}


# (on-disk or in-memory source name, JetViT name) for the DINOv2 families; anything else in a checkpoint is an error.
_DINOV2_KEY_RULES = [
    (r"^embeddings\.(cls_token|mask_token|position_embeddings|register_tokens)$", r"embeddings.\1"),
    (r"^embeddings\.patch_embeddings\.projection\.(weight|bias)$", r"embeddings.patch_embeddings.\1"),
    (_LAYER + r"attention\.attention\.query\.", r"encoder.layer.\1.attention.q_proj."),
    (_LAYER + r"attention\.attention\.key\.", r"encoder.layer.\1.attention.k_proj."),
    (_LAYER + r"attention\.attention\.value\.", r"encoder.layer.\1.attention.v_proj."),
    (_LAYER + r"attention\.output\.dense\.", r"encoder.layer.\1.attention.o_proj."),
    (_LAYER + r"attention\.([qkvo]_proj)\.", r"encoder.layer.\1.attention.\2."),
    (_LAYER + r"mlp\.weights_in\.(weight|bias)$", _split_swiglu_weights_in),
    (_LAYER + r"mlp\.fc1\.", r"encoder.layer.\1.mlp.up_proj."),
    (_LAYER + r"mlp\.(?:fc2|weights_out)\.", r"encoder.layer.\1.mlp.down_proj."),
    (_LAYER + r"mlp\.(gate_proj|up_proj|down_proj)\.", r"encoder.layer.\1.mlp.\2."),
    (_LAYER + r"(norm1|norm2|layer_scale1|layer_scale2)\.", r"encoder.layer.\1.\2."),
    (r"^layernorm\.(weight|bias)$", r"layernorm.\1"),
]
_DINOV3_KEY_RULES = [
    (r"^embeddings\.(cls_token|mask_token|register_tokens)$", r"embeddings.\1"),
    (r"^embeddings\.patch_embeddings\.(weight|bias)$", r"embeddings.patch_embeddings.\1"),
    (r"^(?:model\.)?layer\.(\d+)\.(attention\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)\.", r"encoder.layer.\1.\2."),
    (r"^(?:model\.)?layer\.(\d+)\.(norm1|norm2|layer_scale1|layer_scale2)\.", r"encoder.layer.\1.\2."),
    (r"^norm\.(weight|bias)$", r"layernorm.\1"),
]
# Depth Anything's neck and head keep their names: JetViT's DPT modules mirror them.
_DEPTH_HEAD_KEY_RULES = [(r"^((?:neck|head)\..+)$", r"\1")]


@dataclass
class ConversionInfo:
    """What `convert_to_jetvit` did: the source, what was inherited (`inherit`: `"all"` or `"mlp_only"`) and which
    JetViT parameters are new rather than inherited. Files written before `inherit` existed inherited all."""

    source: str
    family: str
    source_architecture: str
    jetvit_class: str
    inherited_tensors: int
    new_parameters: list[str] = field(default_factory=list)
    inherit: str = "all"

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def resolve_source(source: str | os.PathLike) -> Path:
    """A local checkpoint directory, or the snapshot directory of a Hub repo id (the local cache under HF_HUB_OFFLINE)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"Source {str(source)!r} is a file; pass the checkpoint directory or a Hub repo id.")
    from huggingface_hub import snapshot_download

    try:
        snapshot = snapshot_download(
            repo_id=str(source), allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt", "*.md"]
        )
    except Exception as error:  # the hub raises many types: invalid id, offline miss, 404, network
        raise ValueError(
            f"Source {str(source)!r} is neither a local directory nor a Hub repo that can be fetched or found in the "
            f"local cache ({type(error).__name__}: {error})."
        ) from error
    return Path(snapshot)


def load_source_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory, by their on-disk names (`model*.safetensors`, sharded or not, else
    PyTorch bins; other safetensors files beside them, such as a linear probe's, are not the model's). A file that
    does not read is a `JetViTUserError` naming it."""
    from safetensors.torch import load_file

    safetensors_files = sorted(path.glob("model*.safetensors"))
    if safetensors_files:
        check_safetensors(safetensors_files)
        state_dict = {}
        for file in safetensors_files:
            state_dict.update(load_file(file))
        return state_dict
    bin_files = sorted(path.glob("pytorch_model*.bin"))
    if bin_files:
        state_dict = {}
        for file in bin_files:
            try:
                state_dict.update(torch.load(file, map_location="cpu", weights_only=True))
            except Exception as error:  # torch raises several types for a truncated or foreign file
                raise JetViTUserError(f"{file}: not a readable PyTorch weights file ({error})") from error
        return state_dict
    raise ValueError(f"No weights found in {path}: expected model*.safetensors or pytorch_model*.bin files.")


def check_checkpoint_files(path: Path) -> dict:
    """A checkpoint directory's `config.json`, after checking that each of its JSON files parses and each
    safetensors file is whole; a missing config or a broken file is a `JetViTUserError` naming it."""
    if not (path / "config.json").is_file():
        raise JetViTUserError(f"{path} holds no config.json, so it is not a transformers checkpoint.")
    contents = {file.name: read_json(file) for file in sorted(path.glob("*.json"))}
    check_safetensors(sorted(path.glob("*.safetensors")))
    if not isinstance(contents["config.json"], dict):
        raise JetViTUserError(f"{path / 'config.json'}: expected a JSON object of config fields")
    return contents["config.json"]


def check_output_apart(source_path: Path, output: str | os.PathLike) -> None:
    """Refuse an output directory that is the source checkpoint, lies inside it or contains it (paths resolved,
    symlinks included): writing there would replace or mix into the source."""
    source_real, output_real = source_path.resolve(), Path(output).expanduser().resolve()
    if output_real == source_real:
        relation = "is"
    elif source_real in output_real.parents:
        relation = "is inside"
    elif output_real in source_real.parents:
        relation = "contains"
    else:
        return
    raise JetViTUserError(
        f"the output directory {output} {relation} the source checkpoint {source_path}: writing it would replace or "
        "alter the source; choose a directory outside it"
    )


def _square(value, name: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"Only square {name}s are supported, the source has {name}={list(value)}.")
        value = value[0]
    return int(value)


def dinov2_mlp_width(hidden_size: int, mlp_ratio: float, swiglu: bool) -> int:
    """DINOv2's MLP width; with SwiGLU (DINOv2-g) two thirds of it, rounded up to a multiple of 8."""
    width = int(hidden_size * mlp_ratio)
    return (int(width * 2 / 3) + 7) // 8 * 8 if swiglu else width


def _vit_config_kwargs(source_config, family: str) -> dict:
    """JetViTConfig arguments that reproduce a DINOv2 / DINOv2-with-registers / DINOv3 ViT config exactly."""
    c = source_config
    common = dict(
        hidden_size=c.hidden_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        layer_norm_eps=c.layer_norm_eps,
        layerscale_value=c.layerscale_value,
        drop_path_rate=c.drop_path_rate,
        initializer_range=c.initializer_range,
        image_size=_square(c.image_size, "image_size"),
        patch_size=_square(c.patch_size, "patch_size"),
        num_channels=c.num_channels,
        apply_layernorm=getattr(c, "apply_layernorm", True),
        reshape_hidden_states=getattr(c, "reshape_hidden_states", True),
        return_class_token=getattr(c, "return_class_token", False),
        out_indices=list(c.out_indices) if getattr(c, "out_indices", None) is not None else None,
    )
    if family == "dinov3_vit":
        return dict(
            common,
            intermediate_size=c.intermediate_size,
            hidden_act=c.hidden_act,
            use_gated_mlp=c.use_gated_mlp,
            query_bias=c.query_bias,
            key_bias=c.key_bias,
            value_bias=c.value_bias,
            proj_bias=c.proj_bias,
            mlp_bias=c.mlp_bias,
            attention_dropout=c.attention_dropout,
            num_register_tokens=c.num_register_tokens,
            use_mask_token=True,
            position_embedding_type="rope",
            rope_theta=c.rope_theta,
            pos_embed_shift=c.pos_embed_shift,
            pos_embed_jitter=c.pos_embed_jitter,
            pos_embed_rescale=c.pos_embed_rescale,
        )
    return dict(
        common,
        intermediate_size=dinov2_mlp_width(c.hidden_size, c.mlp_ratio, c.use_swiglu_ffn),
        hidden_act="silu" if c.use_swiglu_ffn else c.hidden_act,
        use_gated_mlp=c.use_swiglu_ffn,
        query_bias=c.qkv_bias,
        key_bias=c.qkv_bias,
        value_bias=c.qkv_bias,
        proj_bias=True,
        mlp_bias=True,
        hidden_dropout_prob=c.hidden_dropout_prob,
        attention_dropout=c.attention_probs_dropout_prob,
        num_register_tokens=c.num_register_tokens if family == "dinov2_with_registers" else 0,
        use_mask_token=True if family == "dinov2_with_registers" else c.use_mask_token,
        position_embedding_type="learned",
        interpolate_antialias=family == "dinov2_with_registers",
    )


def source_config_from_jetvit(config: JetViTConfig, family: str, architecture: str):
    """Rebuild the transformers source config a JetViT checkpoint was converted from (shapes and options that change
    the compute), for when the original source config is not reachable (offline, Hub id)."""
    import transformers

    c = config
    if family == "dinov3_vit":
        kwargs = dict(
            hidden_size=c.hidden_size, intermediate_size=c.intermediate_size, num_hidden_layers=c.num_hidden_layers,
            num_attention_heads=c.num_attention_heads, hidden_act=c.hidden_act, use_gated_mlp=c.use_gated_mlp,
            query_bias=c.query_bias, key_bias=c.key_bias, value_bias=c.value_bias, proj_bias=c.proj_bias,
            mlp_bias=c.mlp_bias, layer_norm_eps=c.layer_norm_eps, layerscale_value=c.layerscale_value,
            image_size=c.image_size, patch_size=c.patch_size, num_channels=c.num_channels,
            num_register_tokens=c.num_register_tokens, rope_theta=c.rope_theta, pos_embed_shift=c.pos_embed_shift,
            pos_embed_jitter=c.pos_embed_jitter, pos_embed_rescale=c.pos_embed_rescale,
        )
        if architecture.endswith("Backbone"):
            kwargs.update(out_indices=list(c.out_indices), apply_layernorm=c.apply_layernorm,
                          reshape_hidden_states=c.reshape_hidden_states, return_class_token=c.return_class_token)
        return transformers.DINOv3ViTConfig(architectures=[architecture], **kwargs)

    def dinov2_kwargs(registers: bool) -> dict:
        if c.use_gated_mlp:  # DINOv2-g: the ratio that `dinov2_mlp_width` maps to this width
            ratio = 4 if dinov2_mlp_width(c.hidden_size, 4, True) == c.intermediate_size else (
                c.intermediate_size * 1.5 / c.hidden_size)
        else:
            ratio = c.intermediate_size / c.hidden_size
            ratio = int(ratio) if float(ratio).is_integer() else ratio
        kwargs = dict(
            hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
            mlp_ratio=ratio, hidden_act="gelu" if c.use_gated_mlp else c.hidden_act, use_swiglu_ffn=c.use_gated_mlp,
            qkv_bias=c.query_bias, layer_norm_eps=c.layer_norm_eps, layerscale_value=c.layerscale_value,
            image_size=c.image_size, patch_size=c.patch_size, num_channels=c.num_channels,
        )
        if registers:
            kwargs["num_register_tokens"] = c.num_register_tokens
        return kwargs

    if family in ("dinov2", "dinov2_with_registers"):
        registers = family == "dinov2_with_registers"
        kwargs = dinov2_kwargs(registers)
        if architecture.endswith("Backbone"):
            kwargs.update(out_indices=list(c.out_indices), apply_layernorm=c.apply_layernorm,
                          reshape_hidden_states=c.reshape_hidden_states)
        config_class = transformers.Dinov2WithRegistersConfig if registers else transformers.Dinov2Config
        return config_class(architectures=[architecture], **kwargs)
    if family.startswith("depth_anything/"):
        backbone_family = family.split("/", 1)[1]
        backbone = dict(model_type=backbone_family, **dinov2_kwargs(backbone_family == "dinov2_with_registers"),
                        out_indices=list(c.out_indices), reshape_hidden_states=False, apply_layernorm=True)
        return transformers.DepthAnythingConfig(
            architectures=[architecture], backbone_config=backbone, patch_size=c.patch_size,
            reassemble_hidden_size=c.hidden_size, reassemble_factors=list(c.reassemble_factors),
            neck_hidden_sizes=list(c.neck_hidden_sizes), fusion_hidden_size=c.fusion_hidden_size,
            head_in_index=c.head_in_index, head_hidden_size=c.head_hidden_size,
            depth_estimation_type=c.depth_estimation_type, max_depth=c.max_depth,
        )
    raise ValueError(f"cannot rebuild a source config for family {family!r}")


def _depth_config_kwargs(source_config) -> tuple[str, dict]:
    """JetViTConfig arguments for a Depth Anything (V1 or V2 layout) config, and its backbone family."""
    backbone = source_config.backbone_config
    family = getattr(backbone, "model_type", None)
    if family not in DEPTH_BACKBONE_FAMILIES:
        raise ValueError(
            f"Depth Anything with a {family!r} backbone is not supported; supported backbones: "
            f"{list(DEPTH_BACKBONE_FAMILIES)}."
        )
    if source_config.reassemble_hidden_size != backbone.hidden_size:
        raise ValueError(
            f"reassemble_hidden_size ({source_config.reassemble_hidden_size}) differs from the backbone width "
            f"({backbone.hidden_size}); such a Depth Anything layout is not supported."
        )
    if not getattr(backbone, "apply_layernorm", True):
        raise ValueError("Depth Anything with apply_layernorm=False in its backbone is not supported.")
    kwargs = _vit_config_kwargs(backbone, family)
    kwargs.update(
        patch_size=_square(source_config.patch_size, "patch_size"),
        apply_layernorm=True,
        reshape_hidden_states=True,
        return_class_token=False,
        reassemble_factors=list(source_config.reassemble_factors),
        neck_hidden_sizes=list(source_config.neck_hidden_sizes),
        fusion_hidden_size=source_config.fusion_hidden_size,
        head_in_index=source_config.head_in_index,
        head_hidden_size=source_config.head_hidden_size,
        depth_estimation_type=source_config.depth_estimation_type,
        max_depth=source_config.max_depth if source_config.max_depth is not None else 1,
    )
    if kwargs["patch_size"] != _square(backbone.patch_size, "patch_size"):
        raise ValueError("Depth Anything's patch_size differs from its backbone's; such a layout is not supported.")
    return family, kwargs


def _map_keys(state_dict: dict[str, torch.Tensor], rules) -> dict[str, torch.Tensor]:
    """Rename every tensor by the first matching rule; a tensor no rule knows is an unsupported source."""
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in rules]
    mapped = {}
    for name, tensor in state_dict.items():
        for pattern, replacement in compiled:
            match = pattern.search(name)
            if match is None:
                continue
            if callable(replacement):
                mapped.update(replacement(match, tensor))
            else:
                mapped[pattern.sub(replacement, name)] = tensor
            break
        else:
            raise ValueError(f"Unsupported source weight {name!r} (shape {tuple(tensor.shape)}): no JetViT counterpart.")
    return mapped


def _jetvit_state_dict(
    source_state: dict[str, torch.Tensor], family: str, jetvit_class: type, hidden_size: int
) -> dict[str, torch.Tensor]:
    """The source's tensors under JetViT names (Depth Anything's backbone goes under `jetvit.`)."""
    if jetvit_class is JetViTForDepthEstimation:
        backbone = {k.removeprefix("backbone."): v for k, v in source_state.items() if k.startswith("backbone.")}
        heads = {k: v for k, v in source_state.items() if not k.startswith("backbone.")}
        mapped = {f"jetvit.{k}": v for k, v in _jetvit_state_dict(backbone, family, JetViTBackbone, hidden_size).items()}
        mapped.update(_map_keys(heads, _DEPTH_HEAD_KEY_RULES))
        return mapped
    mapped = _map_keys(source_state, _DINOV3_KEY_RULES if family == "dinov3_vit" else _DINOV2_KEY_RULES)
    if "embeddings.mask_token" in mapped:  # DINOv2 stores it as [1, D]
        mapped["embeddings.mask_token"] = mapped["embeddings.mask_token"].reshape(1, 1, hidden_size)
    return mapped


def jetvit_config_from_source(
    source_config, attention_types: list[str] | str | None = None, **config_overrides
) -> tuple[JetViTConfig, str, str, type[JetViTPreTrainedModel]]:
    """The JetViTConfig equivalent to a source transformers config, plus its family, architecture and JetViT class."""
    model_type = getattr(source_config, "model_type", None)
    architectures = getattr(source_config, "architectures", None) or []
    architecture = architectures[0] if architectures else _DEFAULT_ARCHITECTURE.get(model_type)
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"Unsupported source: found model_type={model_type!r}, architecture={architecture!r}. Supported "
            f"architectures: {sorted(SUPPORTED_ARCHITECTURES)}."
        )
    family, jetvit_class = SUPPORTED_ARCHITECTURES[architecture]
    if model_type != family:
        raise ValueError(f"Architecture {architecture!r} does not match model_type {model_type!r} in the source config.")
    if family == "depth_anything":
        family, kwargs = _depth_config_kwargs(source_config)
        family = f"depth_anything/{family}"
    else:
        kwargs = _vit_config_kwargs(source_config, family)

    allowed = set(inspect.signature(JetViTConfig.__init__).parameters) - {"self", "kwargs"}
    unknown = sorted(set(config_overrides) - allowed)
    if unknown:
        raise ValueError(f"Unknown JetViTConfig override(s) {unknown}; known fields: {sorted(allowed)}.")
    kwargs.update(config_overrides)
    if isinstance(attention_types, str):  # one type for every layer
        kwargs["attention_types"] = [attention_types] * kwargs["num_hidden_layers"]
    elif attention_types is not None:
        kwargs["attention_types"] = list(attention_types)
    return JetViTConfig(**kwargs), family, architecture, jetvit_class


def convert_to_jetvit(
    source: str | os.PathLike,
    attention_types: list[str] | str | None = None,
    *,
    dtype: torch.dtype | str | None = None,
    output_loading_info: bool = False,
    inherit: str = "all",
    **config_overrides,
):
    """Build a JetViT from a DINOv2 / DINOv2-with-registers / DINOv3 ViT / Depth Anything checkpoint.

    Args:
        source: A local checkpoint directory or a Hub repo id.
        attention_types: One of `"full"`, `"window"`, `"linear"` per layer, or one of them for every layer; default all
            `"full"`, which reproduces the source model.
        dtype: Dtype of the returned model (default: float32).
        output_loading_info: Also return a `ConversionInfo` naming the new (not inherited) parameters.
        inherit: `"all"` (default) inherits every source weight; `"mlp_only"` (the paper's ablation) initialises the
            q/k/v/o projections of every layer afresh (the model's `_init_weights`, seeded by torch's global RNG) and
            inherits embeddings, norms, layer scales, MLPs and heads.
        **config_overrides: Any other `JetViTConfig` field, e.g. `window_size=14`.

    Returns:
        `JetViTModel`, `JetViTBackbone` or `JetViTForDepthEstimation` (following the source's class), and with
        `output_loading_info=True` a `(model, ConversionInfo)` pair.
    """
    if inherit not in INHERIT_MODES:
        raise ValueError(f"`inherit` must be one of {list(INHERIT_MODES)}, got {inherit!r}.")
    path = resolve_source(source)
    model_type = check_checkpoint_files(path).get("model_type")
    if model_type not in _DEFAULT_ARCHITECTURE:
        raise ValueError(
            f"Unsupported source: found model_type={model_type!r} in {path / 'config.json'}. Supported model types: "
            f"{sorted(_DEFAULT_ARCHITECTURE)} (architectures {sorted(SUPPORTED_ARCHITECTURES)})."
        )
    source_config = AutoConfig.from_pretrained(path)
    config, family, architecture, jetvit_class = jetvit_config_from_source(
        source_config, attention_types, **config_overrides
    )
    source_state = load_source_state_dict(path)
    state_dict = _jetvit_state_dict(source_state, family.split("/")[-1], jetvit_class, config.hidden_size)
    new_pattern = NEW_PARAMETER_PATTERNS[inherit]
    state_dict = {name: tensor for name, tensor in state_dict.items() if not new_pattern.search(name)}

    with torch.device("meta"):
        reference = jetvit_class(config)
    reference_shapes = {name: tuple(tensor.shape) for name, tensor in reference.state_dict().items()}
    unexpected = sorted(set(state_dict) - set(reference_shapes))
    if unexpected:
        raise ValueError(f"Source weights without a place in {jetvit_class.__name__}: {unexpected[:10]}")
    for name, tensor in state_dict.items():
        if tuple(tensor.shape) != reference_shapes[name]:
            raise ValueError(
                f"Shape mismatch for {name!r}: the source has {tuple(tensor.shape)}, the JetViT config implies "
                f"{reference_shapes[name]}. Is the source config consistent with its weights?"
            )
    missing = sorted(set(reference_shapes) - set(state_dict))
    not_new = [name for name in missing if not new_pattern.search(name)]
    if not_new:
        raise ValueError(f"The source checkpoint lacks weights JetViT needs to inherit: {not_new[:10]}")

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # transformers' load report would list the new parameters as "MISSING"
    try:
        model = jetvit_class.from_pretrained(
            None, config=config, state_dict=state_dict, dtype=dtype if dtype is not None else torch.float32
        )
    finally:
        logging.set_verbosity(verbosity)
    model.eval()
    info = ConversionInfo(
        source=str(source),
        family=family,
        source_architecture=architecture,
        jetvit_class=jetvit_class.__name__,
        inherited_tensors=len(state_dict),
        new_parameters=missing,
        inherit=inherit,
    )
    logger.info(
        f"Converted {architecture} ({family}) into {jetvit_class.__name__}: {len(state_dict)} tensors inherited, "
        f"{len(missing)} new ({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''})."
    )
    return (model, info) if output_loading_info else model



def load_jetvit(source: str | os.PathLike, **kwargs) -> JetViTPreTrainedModel:
    """The one model loader: a JetViT model directory (its own head class; `kwargs` go to `from_pretrained`), or any
    supported source checkpoint or Hub id converted to all-full attention (`kwargs` go to `convert_to_jetvit`), which
    is numerically the source model. Eval mode. A saved supernet is refused: extract one subnet first."""
    from .models.jetvit import modeling_jetvit

    path = resolve_source(source)
    if (path / SUPERNET_FILE).is_file():
        raise ValueError(f"{path} is a saved supernet; extract one subnet first (`jetvit search` writes DIR/model).")
    config = check_checkpoint_files(path)
    if config.get("model_type") == "jetvit":
        architecture = (config.get("architectures") or ["JetViTModel"])[0]
        try:
            return getattr(modeling_jetvit, architecture).from_pretrained(path, **kwargs).eval()
        except RuntimeError as error:  # transformers' loading report: a tensor shaped otherwise than config.json says
            if "mismatch" not in str(error):
                raise
            raise JetViTUserError(f"{path}: its weights do not match its config.json (a tensor has another size "
                                  "than the config implies; were the config or the weights replaced?)") from error
    return convert_to_jetvit(path, **kwargs).eval()


def _default_image_processor_config(family: str, config: JetViTConfig) -> dict:
    """The source family's own preprocessing, for sources that ship no preprocessor_config.json."""
    imagenet = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
    common = {"do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, **imagenet}
    if family.startswith("depth_anything"):  # Depth Anything's DPT settings
        return {
            "image_processor_type": "DPTImageProcessor",
            "do_resize": True,
            "size": {"height": 518, "width": 518},
            "keep_aspect_ratio": True,
            "ensure_multiple_of": config.patch_size,
            "resample": 3,
            "do_pad": False,
            **common,
        }
    if family == "dinov3_vit":
        return {
            "image_processor_type": "DINOv3ViTImageProcessor",
            "do_resize": True,
            "size": {"height": 224, "width": 224},
            "resample": 2,
            **common,
        }
    return {  # facebook/dinov2-*
        "image_processor_type": "BitImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": 256},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": 224, "width": 224},
        "do_convert_rgb": True,
        **common,
    }


def save_converted(
    model: JetViTPreTrainedModel,
    output_dir: str | os.PathLike,
    source: str | os.PathLike,
    info: ConversionInfo,
    overwrite: bool = False,
) -> Path:
    """Write a complete HF model directory atomically: safetensors, config with `auto_map`, the modeling code files,
    the image-processor config (the source's, else its family's defaults) and `jetvit_conversion.json`. An output
    that is, lies inside or contains the source checkpoint is refused (`check_output_apart`)."""
    source_path = resolve_source(source)
    check_output_apart(source_path, output_dir)
    source_processor = source_path / "preprocessor_config.json"
    if source_processor.is_file():
        processor_config = read_json(source_processor)
    else:
        processor_config = _default_image_processor_config(info.family, model.config)
    with atomic_directory(output_dir, overwrite=overwrite) as staging:
        model.save_pretrained(staging)
        atomic_write_json(staging / "preprocessor_config.json", processor_config)
        atomic_write_json(staging / "jetvit_conversion.json", info.to_dict())
    return Path(output_dir)


def trained_conversion_info(model: JetViTPreTrainedModel, origins) -> ConversionInfo | None:
    """The `jetvit_conversion.json` of a model trained from converted weights (a supernet, a fine-tuned model).

    The source is named by the first of `origins` (directories or Hub ids; None is skipped) that knows it: a JetViT
    directory or saved supernet through its own `jetvit_conversion.json`, a supported source checkpoint as itself
    (local directories by their absolute path). The JetViT class and the inherited and new tensors are `model`'s own.
    None when no origin names a source.
    """
    for origin in origins:
        if origin is None:
            continue
        path = resolve_source(origin)
        config = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
        if (path / "jetvit_conversion.json").is_file():
            carried = json.loads((path / "jetvit_conversion.json").read_text())
            source, family, architecture = carried["source"], carried["family"], carried["source_architecture"]
            inherit = carried.get("inherit", "all")
        elif config.get("model_type") in _DEFAULT_ARCHITECTURE:
            _, family, architecture, _ = jetvit_config_from_source(AutoConfig.from_pretrained(path))
            source = str(path.resolve()) if Path(origin).expanduser().is_dir() else str(origin)
            inherit = "all"
        else:
            continue
        names = list(model.state_dict())
        new = sorted(name for name in names if NEW_PARAMETER_PATTERNS[inherit].search(name))
        return ConversionInfo(source, family, architecture, type(model).__name__, len(names) - len(new), new, inherit)
    return None
