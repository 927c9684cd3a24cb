"""PyTorch JetViT: a DINOv2 / DINOv3 ViT whose layers each use full, window or linear attention.

Paper: "JetViT: Efficient High-Resolution Vision Transformer with Post-Training Attention Search" (section 3).
Every attention type keeps the base layer's q/k/v/o projections under the same names, so a full-attention checkpoint
loads into any mix of types; only the linear type adds parameters (its convolution of V: the squeeze dynamic kernel
generator, or a static kernel, per `config.linear_attention_conv`).

The attention ops are in `ops_jetvit.py`, the task heads (DPT neck and depth head, linear probe) in
`modeling_jetvit_heads.py`. This file and its siblings are copied next to every saved checkpoint for
`trust_remote_code=True`: they import only torch, transformers and flat siblings.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BackboneOutput,
    BaseModelOutput,
    BaseModelOutputWithPooling,
    DepthEstimatorOutput,
    SemanticSegmenterOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils.generic import can_return_tuple

from .configuration_jetvit import JetViTConfig
from .modeling_jetvit_embeddings import JetViTEmbeddings, JetViTRopePositionEmbedding
from .modeling_jetvit_heads import JetViTDepthHead, JetViTDepthNeck, JetViTLinearProbeHead
from .ops_jetvit import linear_attention_output, linear_attention_state, linear_gelu, window_attention
from .torch_jetvit import apply_rope, window_attention_torch


@dataclass
class JetViTBackboneOutput(BackboneOutput):
    r"""
    cls_tokens (`tuple(torch.Tensor)`, *optional*):
        The CLS token of each stage in `out_features`, each of shape `(batch_size, hidden_size)`; returned when
        `config.return_class_token=True`.
    """

    cls_tokens: tuple[torch.Tensor, ...] | None = None


def check_pixel_values(pixel_values: torch.Tensor, config: JetViTConfig) -> tuple[int, int]:
    """Validate the input images and return the patch grid `(height, width)` they produce."""
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
        shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
        raise ValueError(f"`pixel_values` must be a tensor of shape (batch, channels, height, width), got {shape}.")
    _, channels, height, width = pixel_values.shape
    if channels != config.num_channels:
        raise ValueError(
            f"`pixel_values` has {channels} channels but the model expects {config.num_channels} "
            "(config.num_channels); images must be preprocessed to that many channels."
        )
    if height < config.patch_size or width < config.patch_size:
        raise ValueError(
            f"Images of {height}x{width} pixels are smaller than one {config.patch_size}x{config.patch_size} patch."
        )
    return height // config.patch_size, width // config.patch_size


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class JetViTAttention(nn.Module):
    """What every attention type shares: the base model's q/k/v/o projections and its position handling.

    Subclasses implement `forward(hidden_states, position_embeddings, grid_size) -> (output, attention_weights)`, where
    `hidden_states` is `[batch, prefix + height * width, hidden]` and `grid_size` is the patch grid `(height, width)`.
    """

    attention_type: str

    def __init__(self, config: JetViTConfig, layer_idx: int | None = None):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.num_prefix_tokens = config.num_prefix_tokens
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.dropout = config.attention_dropout
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.query_bias)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.key_bias)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.value_bias)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.proj_bias)
        self.register_buffer("qkv_weight", None, persistent=False)
        self.register_buffer("qkv_bias", None, persistent=False)

    def fuse_qkv_projections(self) -> None:
        """Inference speed-up: one `[3C, C]` GEMM instead of three. The fused copy is neither saved nor trained (it is
        used in eval mode only); fuse again after changing the projection weights."""
        projections = (self.q_proj, self.k_proj, self.v_proj)
        self.qkv_weight = torch.cat([p.weight.detach() for p in projections])
        self.qkv_bias = torch.cat(
            [p.bias.detach() if p.bias is not None else torch.zeros_like(p.weight[:, 0]).detach() for p in projections]
        )

    def unfuse_qkv_projections(self) -> None:
        self.qkv_weight = self.qkv_bias = None

    def project_qkv(
        self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values as `[batch, heads, tokens, head_dim]`, RoPE applied when `position_embeddings`
        (cos, sin) are given."""
        hidden_shape = (*hidden_states.shape[:-1], self.num_heads, self.head_dim)
        if self.qkv_weight is not None and not self.training:
            qkv = F.linear(hidden_states, self.qkv_weight, self.qkv_bias)
            query, key, value = qkv.view(*hidden_shape[:-2], 3, *hidden_shape[-2:]).unbind(-3)
        else:
            query = self.q_proj(hidden_states).view(hidden_shape)
            key = self.k_proj(hidden_states).view(hidden_shape)
            value = self.v_proj(hidden_states).view(hidden_shape)
        if position_embeddings is not None:
            query = apply_rope(query, *position_embeddings, self.num_prefix_tokens)
            key = apply_rope(key, *position_embeddings, self.num_prefix_tokens)
        return query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)


class JetViTFullAttention(JetViTAttention):
    """The base model's global softmax attention, through the transformers attention interface (SDPA by default)."""

    attention_type = "full"

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        grid_size: tuple[int, int] | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, num_tokens, _ = hidden_states.shape
        query, key, value = self.project_qkv(hidden_states, position_embeddings)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            None,
            dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(batch_size, num_tokens, -1)
        return self.o_proj(attn_output), attn_weights


class JetViTWindowAttention(JetViTAttention):
    """Softmax attention in non-overlapping, unshifted `window_size` x `window_size` patch windows.

    Each patch query attends to the patches of its window plus every prefix token; each prefix query attends to every
    token. A grid that windows do not divide is zero-padded and the padding masked out of the keys.
    """

    attention_type = "window"

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        grid_size: tuple[int, int] | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        # the fused op applies RoPE itself (on load), so q and k go in unrotated, as [batch, tokens, heads, dim]
        query, key, value = (x.transpose(1, 2) for x in self.project_qkv(hidden_states, None))
        cos, sin = position_embeddings if position_embeddings is not None else (None, None)
        settings = (self.num_prefix_tokens, grid_size, self.config.window_size, self.scaling)
        if self.training and self.dropout > 0:  # the fused op has no dropout
            attn_output = window_attention_torch(query, key, value, cos, sin, *settings, self.dropout)
        else:
            attn_output = window_attention(query, key, value, *settings, cos=cos, sin=sin)
        return self.o_proj(attn_output), None


class JetViTZeroInitLinear(nn.Linear):
    """A Linear whose weight and bias start at zero, so the branch it ends starts switched off."""


class JetViTSqueezeDynamicConv(nn.Module):
    """Kernel generator of the squeeze dynamic depthwise convolution on V (paper section 3.2.1, Fig. 3).

    Per image, the mean of V over the patch tokens goes through Linear(C -> C/r) -> SiLU -> Linear(C/r -> C*k*k) to give
    one k x k kernel per channel; the fused linear-attention op applies it depthwise to V on the patch grid. `fc2`
    starts at zero, so a freshly converted linear layer is exactly ReLU linear attention with the inherited projections.
    """

    def __init__(self, config: JetViTConfig):
        super().__init__()
        self.kernel_size = config.dynamic_conv_kernel_size
        channels = config.hidden_size
        self.fc1 = nn.Linear(channels, channels // config.dynamic_conv_reduction)
        self.act = nn.SiLU()
        self.fc2 = JetViTZeroInitLinear(channels // config.dynamic_conv_reduction, channels * self.kernel_size**2)

    def forward(self, value_mean: torch.Tensor) -> torch.Tensor:
        """`[batch, C]` mean of V over the patch tokens -> per-image depthwise kernels `[batch, C, k, k]`."""
        kernels = self.fc2(self.act(self.fc1(value_mean.to(self.fc1.weight.dtype))))
        return kernels.view(value_mean.shape[0], -1, self.kernel_size, self.kernel_size)


class JetViTStaticConv(nn.Module):
    """A learned depthwise k x k convolution of V, the same for every image (the ablation of the squeeze dynamic one).

    `weight` is one kernel per channel, `[C, k, k]`, starting at zero like the dynamic generator's last layer. The fused
    op takes per-image kernels; `forward` expands the one kernel over the batch (a view, not a copy), and autograd sums
    the per-image kernel gradients into it.
    """

    def __init__(self, config: JetViTConfig):
        super().__init__()
        size = config.dynamic_conv_kernel_size
        self.weight = nn.Parameter(torch.zeros(config.hidden_size, size, size))

    def forward(self, value_mean: torch.Tensor) -> torch.Tensor:
        """`[batch, C]` (only its batch size is read) -> the kernel expanded to `[batch, C, k, k]`."""
        return self.weight.unsqueeze(0).expand(value_mean.shape[0], -1, -1, -1)


class JetViTLinearAttention(JetViTAttention):
    """JetViT linear-attention block: ReLU linear attention plus a depthwise convolution of V.

    `out_i = relu(q_i) (sum_j relu(k_j)^T v_j) / (relu(q_i) . sum_j relu(k_j) + N eps) + [patch i] DWConv(V)_i`, with
    the state and normalizer in fp32. Prefix tokens are ordinary queries, keys and values; only patch tokens get the
    convolution term, added before `o_proj`. The convolution is `config.linear_attention_conv`: the squeeze dynamic one
    (`dynamic_conv`), a static one (`static_conv`) or none. Runs as two fused ops (`ops_jetvit`): Triton on CUDA,
    PyTorch on CPU.
    """

    attention_type = "linear"

    def __init__(self, config: JetViTConfig, layer_idx: int | None = None):
        super().__init__(config, layer_idx)
        conv = config.linear_attention_conv
        self.dynamic_conv = JetViTSqueezeDynamicConv(config) if conv == "squeeze_dynamic" else None
        self.static_conv = JetViTStaticConv(config) if conv == "static" else None

    def conv_weight(self, value_mean: torch.Tensor) -> torch.Tensor | None:
        """The per-image depthwise kernels `[batch, C, k, k]` from the `[batch, C]` mean of V; None without a conv."""
        for conv in (self.dynamic_conv, self.static_conv):
            if conv is not None:
                return conv(value_mean)
        return None

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        grid_size: tuple[int, int] | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        num_prefix = self.num_prefix_tokens
        # the fused ops apply RoPE themselves (on load), so q and k go in unrotated, as [batch, tokens, heads, dim]
        query, key, value = (x.transpose(1, 2) for x in self.project_qkv(hidden_states, None))
        cos, sin = position_embeddings if position_embeddings is not None else (None, None)
        state, key_sum, value_sum = linear_attention_state(key, value, num_prefix, cos, sin)
        conv_weight = self.conv_weight(value_sum.flatten(1) / (grid_size[0] * grid_size[1]))
        attn_output = linear_attention_output(
            query, value, state, key_sum, conv_weight, num_prefix, grid_size, self.config.linear_attention_eps, cos, sin
        )
        return self.o_proj(attn_output), None


JETVIT_ATTENTION_CLASSES: dict[str, type[JetViTAttention]] = {
    "full": JetViTFullAttention,
    "window": JetViTWindowAttention,
    "linear": JetViTLinearAttention,
}


class JetViTLayerScale(nn.Module):
    def __init__(self, config: JetViTConfig):
        super().__init__()
        self.lambda1 = nn.Parameter(config.layerscale_value * torch.ones(config.hidden_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states * self.lambda1


class JetViTDropPath(nn.Module):
    """Stochastic depth per sample; identity outside training."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep_prob = 1 - self.drop_prob
        shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
        random_tensor = torch.floor(torch.rand(shape, dtype=hidden_states.dtype, device=hidden_states.device) + keep_prob)
        return hidden_states.div(keep_prob) * random_tensor

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


# transformers' GELU activations, and the epilogue that computes each one (see JetViTPreTrainedModel.fuse_gelu_epilogue)
GELU_EPILOGUES = {"gelu": "erf", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}


class JetViTMLP(nn.Module):
    def __init__(self, config: JetViTConfig):
        super().__init__()
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.act_fn = ACT2FN[config.hidden_act]
        self.hidden_act = config.hidden_act
        self.gelu_epilogue = None  # "erf" or "tanh": see JetViTPreTrainedModel.fuse_gelu_epilogue

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if (
            self.gelu_epilogue is not None
            and not self.training
            and hidden_states.is_cuda
            and hidden_states.dtype in (torch.bfloat16, torch.float16)
            and self.up_proj.bias is not None
        ):
            if self.gelu_epilogue == "tanh":
                flat = hidden_states.reshape(-1, hidden_states.shape[-1])
                hidden = torch._addmm_activation(self.up_proj.bias, flat, self.up_proj.weight.t(), use_gelu=True)
                return self.down_proj(hidden.view(*hidden_states.shape[:-1], -1))
            if not torch.is_grad_enabled():  # the fused exact GELU has no backward
                return self.down_proj(linear_gelu(hidden_states, self.up_proj.weight, self.up_proj.bias))
        return self.down_proj(self.act_fn(self.up_proj(hidden_states)))


class JetViTGatedMLP(nn.Module):
    def __init__(self, config: JetViTConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(hidden_states)) * self.up_proj(hidden_states))


class JetViTLayer(GradientCheckpointingLayer):
    """A pre-norm ViT block whose attention is the type `config.attention_types[layer_idx]` names."""

    def __init__(self, config: JetViTConfig, layer_idx: int):
        super().__init__()
        self.attention_type = config.attention_types[layer_idx]
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = JETVIT_ATTENTION_CLASSES[self.attention_type](config, layer_idx)
        self.layer_scale1 = JetViTLayerScale(config)
        self.drop_path = JetViTDropPath(config.drop_path_rate) if config.drop_path_rate > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = JetViTGatedMLP(config) if config.use_gated_mlp else JetViTMLP(config)
        self.layer_scale2 = JetViTLayerScale(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        grid_size: tuple[int, int] | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn_output, attn_weights = self.attention(
            self.norm1(hidden_states), position_embeddings=position_embeddings, grid_size=grid_size, **kwargs
        )
        hidden_states = self.drop_path(self.layer_scale1(attn_output)) + hidden_states
        mlp_output = self.mlp(self.norm2(hidden_states))
        hidden_states = self.drop_path(self.layer_scale2(mlp_output)) + hidden_states
        return hidden_states, attn_weights


class JetViTEncoder(nn.Module):
    """The layers. Hidden states and attention maps are collected here rather than by transformers' output hooks,
    which skip the `None` maps of window and linear layers and so would misalign `attentions[i]` with layer i."""

    def __init__(self, config: JetViTConfig):
        super().__init__()
        config.validate_jetvit()  # also the fields `from_pretrained(..., **overrides)` set after the config was built
        self.layer = nn.ModuleList([JetViTLayer(config, idx) for idx in range(config.num_hidden_layers)])

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None,
        grid_size: tuple[int, int],
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BaseModelOutput:
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layer:
            hidden_states, attn_weights = layer(hidden_states, position_embeddings=position_embeddings, grid_size=grid_size)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (attn_weights,)
        return BaseModelOutput(last_hidden_state=hidden_states, hidden_states=all_hidden_states, attentions=all_attentions)


class JetViTPreTrainedModel(PreTrainedModel):
    config_class = JetViTConfig
    config: JetViTConfig
    base_model_prefix = "jetvit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["JetViTEmbeddings", "JetViTLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, JetViTZeroInitLinear):
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, JetViTStaticConv):
            init.zeros_(module.weight)
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, JetViTEmbeddings):
            init.trunc_normal_(module.cls_token, mean=0.0, std=std)
            if module.position_embeddings is not None:
                init.trunc_normal_(module.position_embeddings, mean=0.0, std=std)
            if module.register_tokens is not None:
                init.trunc_normal_(module.register_tokens, mean=0.0, std=std)
            if module.mask_token is not None:
                init.zeros_(module.mask_token)
        elif isinstance(module, JetViTLayerScale):
            init.constant_(module.lambda1, self.config.layerscale_value)
        elif isinstance(module, JetViTRopePositionEmbedding):
            init.copy_(module.inv_freq, module.compute_inv_freq(self.config))

    def fuse_qkv_projections(self) -> None:
        """Fuse every attention's q/k/v projections into one GEMM for inference (see `JetViTAttention`)."""
        for module in self.modules():
            if isinstance(module, JetViTAttention):
                module.fuse_qkv_projections()

    def unfuse_qkv_projections(self) -> None:
        for module in self.modules():
            if isinstance(module, JetViTAttention):
                module.unfuse_qkv_projections()

    def fuse_gelu_epilogue(self, enabled: bool = True, approximate: str | None = None) -> None:
        """Inference on CUDA in bf16/fp16: compute the MLP's up-projection, bias and GELU as one GEMM.

        By default each MLP keeps its own activation: the exact (erf) GELU of DINOv2/DINOv3/Depth Anything runs
        `kernels_jetvit_mlp.py`'s Gluon kernel on Hopper under `torch.no_grad()` / `inference_mode()` (elsewhere the
        unfused PyTorch path), and tanh-GELU models cuBLASLt's tanh epilogue. `approximate="tanh"` puts every GELU on
        cuBLASLt's tanh epilogue, an approximation of the exact GELU (outputs move at the level of half-precision
        rounding; a little faster). Training and fp32 always take the unfused path."""
        if approximate not in (None, "tanh"):
            raise ValueError(f"approximate must be None (each MLP's own GELU) or 'tanh', got {approximate!r}")
        for module in self.modules():
            if isinstance(module, JetViTMLP) and module.hidden_act in GELU_EPILOGUES:
                module.gelu_epilogue = (approximate or GELU_EPILOGUES[module.hidden_act]) if enabled else None

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save as a complete remote-code checkpoint: weights, config with `auto_map`, and the modeling files."""
        auto_map = {
            "AutoConfig": "configuration_jetvit.JetViTConfig",
            "AutoModel": "modeling_jetvit.JetViTModel",
            "AutoBackbone": "modeling_jetvit.JetViTBackbone",
        }
        auto_map[self._auto_class] = f"modeling_jetvit.{type(self).__name__}"
        self.config.auto_map = auto_map
        return super().save_pretrained(save_directory, *args, **kwargs)


class JetViTModel(JetViTPreTrainedModel):
    """The bare JetViT encoder. `last_hidden_state` is layer-normed; `pooler_output` is its CLS token."""

    def __init__(self, config: JetViTConfig):
        super().__init__(config)
        self.embeddings = JetViTEmbeddings(config)
        self.rope_embeddings = JetViTRopePositionEmbedding(config) if config.position_embedding_type == "rope" else None
        self.encoder = JetViTEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embeddings

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        r"""
        bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, num_patches)`, *optional*):
            Patches to replace by the mask token.
        """
        config = self.config
        output_hidden_states = output_hidden_states if output_hidden_states is not None else config.output_hidden_states
        output_attentions = output_attentions if output_attentions is not None else config.output_attentions
        grid_size = check_pixel_values(pixel_values, config)

        hidden_states = self.embeddings(pixel_values, bool_masked_pos=bool_masked_pos)
        position_embeddings = (
            self.rope_embeddings(grid_size, hidden_states.dtype) if self.rope_embeddings is not None else None
        )
        encoder_outputs = self.encoder(
            hidden_states, position_embeddings, grid_size, output_hidden_states, output_attentions
        )
        sequence_output = self.layernorm(encoder_outputs.last_hidden_state)
        return BaseModelOutputWithPooling(
            last_hidden_state=sequence_output,
            pooler_output=sequence_output[:, 0],
            hidden_states=encoder_outputs.hidden_states,
            attentions=encoder_outputs.attentions,
        )


class JetViTBackbone(BackboneMixin, JetViTPreTrainedModel):
    """JetViT as a backbone: layer-normed (if `apply_layernorm`) hidden states of the stages in `out_features`.

    With `reshape_hidden_states` each map is `[batch, hidden, height / patch, width / patch]` with the prefix tokens
    dropped; without it, the whole `[batch, tokens, hidden]` sequence. Holds the same modules as `JetViTModel`, so
    either class loads the other's checkpoints.

    The maps are channels-last: views of the `[batch, height / patch, width / patch, hidden]` patch tokens, not NCHW
    copies (the same values; `.contiguous()` makes one NCHW). With `apply_layernorm` they are dense
    (`is_contiguous(memory_format=torch.channels_last)`); without it, at batch > 1, the dropped prefix tokens leave
    gaps between the images.
    """

    def __init__(self, config: JetViTConfig):
        super().__init__(config)
        self.embeddings = JetViTEmbeddings(config)
        self.rope_embeddings = JetViTRopePositionEmbedding(config) if config.position_embedding_type == "rope" else None
        self.encoder = JetViTEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.num_features = [config.hidden_size] * (config.num_hidden_layers + 1)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embeddings

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> JetViTBackboneOutput:
        config = self.config
        output_hidden_states = output_hidden_states if output_hidden_states is not None else config.output_hidden_states
        output_attentions = output_attentions if output_attentions is not None else config.output_attentions
        grid_size = check_pixel_values(pixel_values, config)

        hidden_states = self.embeddings(pixel_values)
        position_embeddings = (
            self.rope_embeddings(grid_size, hidden_states.dtype) if self.rope_embeddings is not None else None
        )
        encoder_outputs = self.encoder(
            hidden_states, position_embeddings, grid_size, output_hidden_states=True, output_attentions=output_attentions
        )

        feature_maps, cls_tokens = (), ()
        for stage, hidden_state in zip(self.stage_names, encoder_outputs.hidden_states):
            if stage not in self.out_features:
                continue
            if config.return_class_token:
                cls_token = hidden_state[:, 0]
                cls_tokens += (self.layernorm(cls_token) if config.apply_layernorm else cls_token,)
            if config.reshape_hidden_states:
                # the patch tokens are normed on their own (LayerNorm is per token: the same values as slicing the
                # normed sequence) into a dense tensor, so the map below is a channels-last view without gaps
                hidden_state = hidden_state[:, config.num_prefix_tokens :]
            if config.apply_layernorm:
                hidden_state = self.layernorm(hidden_state)
            if config.reshape_hidden_states:
                # [batch, height, width, hidden] seen as [batch, hidden, height, width]: NHWC memory, no copy
                hidden_state = hidden_state.reshape(hidden_state.shape[0], *grid_size, -1).permute(0, 3, 1, 2)
            feature_maps += (hidden_state,)

        return JetViTBackboneOutput(
            feature_maps=feature_maps,
            cls_tokens=cls_tokens if config.return_class_token else None,
            hidden_states=encoder_outputs.hidden_states if output_hidden_states else None,
            attentions=encoder_outputs.attentions,
        )


class JetViTForDepthEstimation(JetViTPreTrainedModel):
    """JetViT backbone with Depth Anything's DPT neck and head; `predicted_depth` is `[batch, height, width]` (relative
    disparity, or metric depth up to `max_depth`) in float32 in any dtype: post-processing makes it numpy (no bf16).

    The neck and head run channels-last (NHWC memory), always, with nothing to switch on: the backbone's feature maps
    are channels-last views of its tokens, and the neck's and head's convolution weights are kept in
    `torch.channels_last` from construction and from `from_pretrained` on, so cuDNN runs them in its native
    tensor-core layout without transposes. Only the weights' memory order changes: parameter names and values stay,
    outputs stay the same to float rounding, and `save_pretrained` writes ordinary contiguous safetensors, which any
    version loads. Code that replaces these weights behind the model's back (`load_state_dict(..., assign=True)`,
    assigning parameters) can call `to_channels_last()` again; without it the outputs are the same and on CUDA each
    convolution reorders its weight on every call. Raw `safetensors.torch.save_file(model.state_dict())` needs
    `.contiguous()` tensors, as for any channels-last model.
    """

    def __init__(self, config: JetViTConfig):
        super().__init__(config)
        if not (config.apply_layernorm and config.reshape_hidden_states) or len(config.out_indices) != len(
            config.neck_hidden_sizes
        ):
            raise ValueError(
                "JetViTForDepthEstimation reads layer-normed, reshaped feature maps of one stage per neck input: it "
                f"needs apply_layernorm=True, reshape_hidden_states=True and {len(config.neck_hidden_sizes)} "
                f"out_indices (got {config.apply_layernorm}, {config.reshape_hidden_states}, {config.out_indices})."
            )
        self.jetvit = JetViTBackbone(config)
        self.neck = JetViTDepthNeck(config)
        self.head = JetViTDepthHead(config)
        self.post_init()
        self.to_channels_last()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        # loading replaces the parameters by the (contiguous) tensors read from the checkpoint
        loaded = super().from_pretrained(*args, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded).to_channels_last()
        return loaded

    def to_channels_last(self) -> "JetViTForDepthEstimation":
        """Put the neck's and head's convolution weights in `torch.channels_last` memory (in place; idempotent)."""
        self.neck.to(memory_format=torch.channels_last)
        self.head.to(memory_format=torch.channels_last)
        return self

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> DepthEstimatorOutput:
        if labels is not None:
            raise ValueError(
                "JetViTForDepthEstimation does not compute a loss from `labels`; depth losses live in "
                "`jetvit_hf.train.losses` and `training/finetune.py`."
            )
        grid_size = check_pixel_values(pixel_values, self.config)
        outputs = self.jetvit(
            pixel_values, output_hidden_states=output_hidden_states, output_attentions=output_attentions, return_dict=True
        )
        features = self.neck(outputs.feature_maps)
        predicted_depth = self.head(features, grid_size).float()
        return DepthEstimatorOutput(
            predicted_depth=predicted_depth, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class JetViTForSemanticSegmentation(JetViTPreTrainedModel):
    """JetViT with DINOv3's linear-probe head on the layer-normed last-layer patch features.

    `logits` are at patch resolution `[batch, num_labels, height / patch, width / patch]`, as transformers' segmenters
    return them; the loss upsamples them bilinearly to the labels' size and ignores `semantic_loss_ignore_index`.
    """

    def __init__(self, config: JetViTConfig):
        super().__init__(config)
        self.jetvit = JetViTModel(config)
        self.head = JetViTLinearProbeHead(config)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> SemanticSegmenterOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
            Class index per pixel; `config.semantic_loss_ignore_index` marks pixels without a label.
        """
        grid_size = check_pixel_values(pixel_values, self.config)
        outputs = self.jetvit(
            pixel_values, output_hidden_states=output_hidden_states, output_attentions=output_attentions, return_dict=True
        )
        patches = outputs.last_hidden_state[:, self.config.num_prefix_tokens :]
        feature_map = patches.reshape(patches.shape[0], *grid_size, -1).permute(0, 3, 1, 2)
        logits = self.head(feature_map)

        loss = None
        if labels is not None:
            if labels.ndim != 3:
                raise ValueError(f"`labels` must have shape (batch, height, width), got {tuple(labels.shape)}.")
            upsampled = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
            loss = F.cross_entropy(upsampled.float(), labels, ignore_index=self.config.semantic_loss_ignore_index)

        return SemanticSegmenterOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


JetViTConfig.register_for_auto_class()
JetViTModel.register_for_auto_class("AutoModel")
JetViTBackbone.register_for_auto_class("AutoBackbone")
JetViTForDepthEstimation.register_for_auto_class("AutoModelForDepthEstimation")
JetViTForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")

__all__ = [
    "JETVIT_ATTENTION_CLASSES",
    "JetViTBackbone",
    "JetViTForDepthEstimation",
    "JetViTForSemanticSegmentation",
    "JetViTFullAttention",
    "JetViTLinearAttention",
    "JetViTModel",
    "JetViTPreTrainedModel",
    "JetViTWindowAttention",
]
