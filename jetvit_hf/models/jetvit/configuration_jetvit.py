"""JetViT configuration.

This file is copied next to every saved JetViT checkpoint so that `trust_remote_code=True` works; it imports only
`transformers` and must not import anything else from `jetvit_hf`.
"""

from transformers import PreTrainedConfig
from transformers.backbone_utils import BackboneConfigMixin

# The one list of attention types. Conversion, supernet, search and benchmark all read it from here.
ATTENTION_TYPES = ("full", "window", "linear")
POSITION_EMBEDDING_TYPES = ("learned", "rope")
DEPTH_ESTIMATION_TYPES = ("relative", "metric")
# The depthwise convolution of V in "linear" layers (the paper's ablation): none, one learned kernel per channel, or the
# squeeze dynamic kernels generated per image.
LINEAR_ATTENTION_CONVS = ("none", "static", "squeeze_dynamic")
# The settings each convolution reads, with their defaults; a setting a convolution does not read must keep its default.
LINEAR_ATTENTION_CONV_SETTINGS = {"dynamic_conv_kernel_size": 3, "dynamic_conv_reduction": 4}
_CONV_READS = {
    "none": (),
    "static": ("dynamic_conv_kernel_size",),
    "squeeze_dynamic": ("dynamic_conv_kernel_size", "dynamic_conv_reduction"),
}


class JetViTConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""
    Configuration of a JetViT: a plain ViT (DINOv2, DINOv2 with registers, DINOv3 ViT) whose layers each use one of
    three attention types, plus the settings of the optional backbone, depth (Depth Anything DPT) and linear-probe
    segmentation heads.

    Args:
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, hidden_act:
            Transformer shape. `intermediate_size` is the MLP width (for a gated MLP, the width of each of the gate
            and up projections).
        use_gated_mlp (`bool`): `down(act(gate(x)) * up(x))` instead of `down(act(up(x)))` (DINOv3 S+/H+/7B and
            DINOv2-g's SwiGLU, with `hidden_act="silu"`).
        query_bias, key_bias, value_bias, proj_bias, mlp_bias (`bool`): which projections carry a bias.
        layer_norm_eps, layerscale_value, drop_path_rate, hidden_dropout_prob, attention_dropout, initializer_range:
            As in DINOv2 / DINOv3.
        image_size, patch_size, num_channels: Patch embedding. `image_size` is the size the learned position
            embeddings were trained at; any input size works.
        num_register_tokens (`int`): Register tokens placed after CLS. CLS plus registers are the prefix tokens.
        use_mask_token (`bool`): Whether the embeddings hold a mask token (used with `bool_masked_pos`).
        position_embedding_type (`str`): `"learned"` (DINOv2: absolute embeddings interpolated bicubically) or
            `"rope"` (DINOv3: 2D rotary embedding on the patch tokens' queries and keys).
        interpolate_antialias (`bool`): Antialias the bicubic interpolation of learned position embeddings
            (`dinov2_with_registers` does, `dinov2` does not).
        rope_theta, pos_embed_shift, pos_embed_jitter, pos_embed_rescale: DINOv3 RoPE base and its train-time
            coordinate augmentation (applied only in training mode; `None` disables each).
        attention_types (`list[str]`): One of `"full"`, `"window"`, `"linear"` per layer (default all `"full"`).
        window_size (`int`): Side, in patches, of the square non-overlapping windows of `"window"` layers.
        linear_attention_eps (`float`): Added to the normalizer of `"linear"` layers.
        linear_attention_conv (`str`): The depthwise convolution of V that `"linear"` layers add to the patch tokens'
            output before `o_proj`: `"squeeze_dynamic"` (default; per-image k x k kernels generated from mean(V)),
            `"static"` (one learned k x k kernel per channel, the same for every image, starting at zero) or
            `"none"` (plain ReLU linear attention). Configs saved before this field existed load as
            `"squeeze_dynamic"`.
        dynamic_conv_kernel_size (`int`): Side k of that convolution (`"squeeze_dynamic"` and `"static"`).
        dynamic_conv_reduction (`int`): Width reduction of the squeeze dynamic kernel generator (C -> C / r); only
            `"squeeze_dynamic"` reads it, so with another `linear_attention_conv` it must keep its default, 4.
        out_features, out_indices, apply_layernorm, reshape_hidden_states, return_class_token: Backbone outputs;
            index 0 (`"stem"`) is the embedding output and index i the output of layer i (1-based, as in
            transformers' backbones).
        reassemble_factors, neck_hidden_sizes, fusion_hidden_size, head_in_index, head_hidden_size,
        depth_estimation_type, max_depth: Depth Anything DPT neck and head (`JetViTForDepthEstimation`), which reads
            the hidden states at `out_indices`.
        semantic_loss_ignore_index, semantic_head_dropout: Linear-probe segmentation head
            (`JetViTForSemanticSegmentation`).
    """

    model_type = "jetvit"

    def __init__(
        self,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        hidden_act="gelu",
        use_gated_mlp=False,
        query_bias=True,
        key_bias=True,
        value_bias=True,
        proj_bias=True,
        mlp_bias=True,
        layer_norm_eps=1e-6,
        layerscale_value=1.0,
        drop_path_rate=0.0,
        hidden_dropout_prob=0.0,
        attention_dropout=0.0,
        initializer_range=0.02,
        image_size=224,
        patch_size=16,
        num_channels=3,
        num_register_tokens=0,
        use_mask_token=True,
        position_embedding_type="learned",
        interpolate_antialias=False,
        rope_theta=100.0,
        pos_embed_shift=None,
        pos_embed_jitter=None,
        pos_embed_rescale=None,
        attention_types=None,
        window_size=16,
        linear_attention_eps=1e-6,
        dynamic_conv_kernel_size=3,
        dynamic_conv_reduction=4,
        linear_attention_conv="squeeze_dynamic",
        out_features=None,
        out_indices=None,
        apply_layernorm=True,
        reshape_hidden_states=True,
        return_class_token=False,
        reassemble_factors=(4, 2, 1, 0.5),
        neck_hidden_sizes=(96, 192, 384, 768),
        fusion_hidden_size=128,
        head_in_index=-1,
        head_hidden_size=32,
        depth_estimation_type="relative",
        max_depth=1.0,
        semantic_loss_ignore_index=255,
        semantic_head_dropout=0.1,
        **kwargs,
    ):
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.use_gated_mlp = use_gated_mlp
        self.query_bias = query_bias
        self.key_bias = key_bias
        self.value_bias = value_bias
        self.proj_bias = proj_bias
        self.mlp_bias = mlp_bias
        self.layer_norm_eps = layer_norm_eps
        self.layerscale_value = layerscale_value
        self.drop_path_rate = drop_path_rate
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_dropout = attention_dropout
        self.initializer_range = initializer_range
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.num_register_tokens = num_register_tokens
        self.use_mask_token = use_mask_token
        self.position_embedding_type = position_embedding_type
        self.interpolate_antialias = interpolate_antialias
        self.rope_theta = rope_theta
        self.pos_embed_shift = pos_embed_shift
        self.pos_embed_jitter = pos_embed_jitter
        self.pos_embed_rescale = pos_embed_rescale
        self.attention_types = list(attention_types) if attention_types is not None else ["full"] * num_hidden_layers
        self.window_size = window_size
        self.linear_attention_eps = linear_attention_eps
        self.dynamic_conv_kernel_size = dynamic_conv_kernel_size
        self.dynamic_conv_reduction = dynamic_conv_reduction
        self.linear_attention_conv = linear_attention_conv
        self.apply_layernorm = apply_layernorm
        self.reshape_hidden_states = reshape_hidden_states
        self.return_class_token = return_class_token
        self.reassemble_factors = list(reassemble_factors)
        self.neck_hidden_sizes = list(neck_hidden_sizes)
        self.fusion_hidden_size = fusion_hidden_size
        self.head_in_index = head_in_index
        self.head_hidden_size = head_hidden_size
        self.depth_estimation_type = depth_estimation_type
        self.max_depth = max_depth
        self.semantic_loss_ignore_index = semantic_loss_ignore_index
        self.semantic_head_dropout = semantic_head_dropout
        super().__init__(**kwargs)
        self.stage_names = ["stem"] + [f"stage{idx}" for idx in range(1, num_hidden_layers + 1)]
        self.set_output_features_output_indices(out_features=out_features, out_indices=out_indices)
        self.validate_jetvit()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_prefix_tokens(self) -> int:
        """CLS plus register tokens: the tokens before the patch grid."""
        return 1 + self.num_register_tokens

    def validate_jetvit(self):
        """Raise a `ValueError` naming the field and its allowed values for any setting the model cannot build."""
        layers = self.num_hidden_layers
        if not isinstance(layers, int) or layers < 1:
            raise ValueError(f"`num_hidden_layers` must be a positive integer, got {layers!r}.")
        if not isinstance(self.attention_types, list) or len(self.attention_types) != layers:
            raise ValueError(
                f"`attention_types` must list one attention type per layer ({layers} entries, one of "
                f"{list(ATTENTION_TYPES)} each), got {len(self.attention_types)} entries: {self.attention_types!r}."
            )
        unknown = sorted({t for t in self.attention_types if t not in ATTENTION_TYPES}, key=str)
        if unknown:
            raise ValueError(
                f"`attention_types` contains unknown type(s) {unknown}; allowed values are {list(ATTENTION_TYPES)}."
            )
        if self.num_attention_heads < 1 or self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"`num_attention_heads` ({self.num_attention_heads}) must be a positive divisor of `hidden_size` "
                f"({self.hidden_size})."
            )
        if not isinstance(self.window_size, int) or self.window_size < 1:
            raise ValueError(f"`window_size` must be an integer >= 1 (in patches), got {self.window_size!r}.")
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ValueError(
                f"`position_embedding_type` must be one of {list(POSITION_EMBEDDING_TYPES)}, "
                f"got {self.position_embedding_type!r}."
            )
        if self.position_embedding_type == "rope" and self.head_dim % 4 != 0:
            raise ValueError(
                f"`position_embedding_type='rope'` needs a head dimension divisible by 4 (two axes of sin/cos pairs), "
                f"got hidden_size / num_attention_heads = {self.head_dim}."
            )
        if not isinstance(self.patch_size, int) or self.patch_size < 1:
            raise ValueError(f"`patch_size` must be an integer >= 1, got {self.patch_size!r}.")
        if not isinstance(self.num_register_tokens, int) or self.num_register_tokens < 0:
            raise ValueError(f"`num_register_tokens` must be an integer >= 0, got {self.num_register_tokens!r}.")
        kernel = self.dynamic_conv_kernel_size
        if not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"`dynamic_conv_kernel_size` must be an odd integer >= 1, got {kernel!r}.")
        reduction = self.dynamic_conv_reduction
        if not isinstance(reduction, int) or not 1 <= reduction <= self.hidden_size:
            raise ValueError(
                f"`dynamic_conv_reduction` must be an integer in [1, hidden_size={self.hidden_size}], got {reduction!r}."
            )
        self.validate_linear_attention_conv()
        if not self.linear_attention_eps > 0:
            raise ValueError(f"`linear_attention_eps` must be > 0, got {self.linear_attention_eps!r}.")
        if self.depth_estimation_type not in DEPTH_ESTIMATION_TYPES:
            raise ValueError(
                f"`depth_estimation_type` must be one of {list(DEPTH_ESTIMATION_TYPES)}, "
                f"got {self.depth_estimation_type!r}."
            )
        if len(self.neck_hidden_sizes) != len(self.reassemble_factors):
            raise ValueError(
                f"`neck_hidden_sizes` ({self.neck_hidden_sizes}) and `reassemble_factors` ({self.reassemble_factors}) "
                "must have the same length."
            )

    def validate_linear_attention_conv(self):
        """`linear_attention_conv` is a known value, and every convolution setting it does not read keeps its default
        (a non-default one would be silently ignored)."""
        conv = self.linear_attention_conv
        if conv not in LINEAR_ATTENTION_CONVS:
            raise ValueError(f"`linear_attention_conv` must be one of {list(LINEAR_ATTENTION_CONVS)}, got {conv!r}.")
        for name, default in LINEAR_ATTENTION_CONV_SETTINGS.items():
            if name not in _CONV_READS[conv] and getattr(self, name) != default:
                raise ValueError(
                    f"`{name}`={getattr(self, name)!r} only applies when `linear_attention_conv` is one of "
                    f"{[c for c in LINEAR_ATTENTION_CONVS if name in _CONV_READS[c]]}, but it is {conv!r}; leave "
                    f"`{name}` at its default ({default})."
                )


__all__ = ["ATTENTION_TYPES", "LINEAR_ATTENTION_CONVS", "JetViTConfig"]
