"""JetViT's embeddings: patches, CLS, register and mask tokens with DINOv2's learned position embeddings, and DINOv3's
2D rotary position embedding with its train-time coordinate augmentation.

Shipped with every saved checkpoint for `trust_remote_code`: imports only torch and its flat siblings.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_jetvit import JetViTConfig
from .ops_jetvit import rope_tables


class JetViTEmbeddings(nn.Module):
    """Patch embedding, CLS, register and mask tokens, and (for the `"learned"` scheme) position embeddings.

    The token order is `[CLS, registers..., patches...]`. Learned position embeddings are added to CLS and the patches
    before the registers are inserted, as in `dinov2_with_registers`; registers get none.
    """

    def __init__(self, config: JetViTConfig):
        super().__init__()
        self.config = config
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.use_mask_token else None
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, config.num_register_tokens, config.hidden_size))
            if config.num_register_tokens > 0
            else None
        )
        self.patch_embeddings = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )
        if config.position_embedding_type == "learned":
            num_patches = (config.image_size // config.patch_size) ** 2
            self.position_embeddings = nn.Parameter(torch.zeros(1, num_patches + 1, config.hidden_size))
        else:
            self.position_embeddings = None
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def interpolate_pos_encoding(self, height: int, width: int) -> torch.Tensor:
        """Position embeddings for a `height` x `width` pixel image: bicubic in float32, as DINOv2 does in transformers."""
        num_positions = self.position_embeddings.shape[1] - 1
        new_height, new_width = height // self.config.patch_size, width // self.config.patch_size
        if new_height * new_width == num_positions and height == width:
            return self.position_embeddings
        class_pos_embed = self.position_embeddings[:, :1]
        patch_pos_embed = self.position_embeddings[:, 1:]
        dim = patch_pos_embed.shape[-1]
        side = int(math.sqrt(num_positions))
        patch_pos_embed = patch_pos_embed.reshape(1, side, side, dim).permute(0, 3, 1, 2)
        patch_pos_embed = F.interpolate(
            patch_pos_embed.to(torch.float32),
            size=(new_height, new_width),
            mode="bicubic",
            align_corners=False,
            antialias=self.config.interpolate_antialias,
        ).to(self.position_embeddings.dtype)
        patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat((class_pos_embed, patch_pos_embed), dim=1)

    def embed_patches(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The patch convolution as one GEMM over flattened patches (`[batch, patches, hidden]`).

        A convolution whose stride equals its kernel is a matmul; cuDNN picks slow implicit-GEMM algorithms for this
        shape (0.7 ms at 1024x2048 on an H200 against ~0.03 ms as a GEMM). Pixels past the last whole patch are
        dropped, as the convolution does.
        """
        batch_size, channels, height, width = pixel_values.shape
        patch = self.config.patch_size
        rows, cols = height // patch, width // patch
        pixels = pixel_values[:, :, : rows * patch, : cols * patch].to(self.patch_embeddings.weight.dtype)
        pixels = pixels.reshape(batch_size, channels, rows, patch, cols, patch).permute(0, 2, 4, 1, 3, 5)
        weight = self.patch_embeddings.weight.reshape(self.patch_embeddings.out_channels, -1)
        return F.linear(pixels.reshape(batch_size, rows * cols, -1), weight, self.patch_embeddings.bias)

    def forward(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None) -> torch.Tensor:
        batch_size, _, height, width = pixel_values.shape
        patches = self.embed_patches(pixel_values)
        if bool_masked_pos is not None:
            if self.mask_token is None:
                raise ValueError("`bool_masked_pos` was given but this model has no mask token (use_mask_token=False).")
            patches = torch.where(bool_masked_pos.unsqueeze(-1), self.mask_token.to(patches.dtype), patches)

        embeddings = torch.cat((self.cls_token.expand(batch_size, -1, -1), patches), dim=1)
        if self.position_embeddings is not None:
            embeddings = embeddings + self.interpolate_pos_encoding(height, width)
        if self.register_tokens is not None:
            registers = self.register_tokens.expand(batch_size, -1, -1)
            embeddings = torch.cat((embeddings[:, :1], registers, embeddings[:, 1:]), dim=1)
        return self.dropout(embeddings)


def augment_patch_coordinates(
    coords: torch.Tensor, shift: float | None, jitter: float | None, rescale: float | None
) -> torch.Tensor:
    """DINOv3's train-time RoPE augmentation: a random shift, a per-axis jitter and a shared rescale of the coordinates."""
    if shift is not None:
        coords = coords + torch.empty(1, 2, device=coords.device, dtype=coords.dtype).uniform_(-shift, shift)
    if jitter is not None:
        log_jitter = math.log(jitter)
        coords = coords * torch.empty(1, 2, device=coords.device, dtype=coords.dtype).uniform_(-log_jitter, log_jitter).exp()
    if rescale is not None:
        log_rescale = math.log(rescale)
        coords = coords * torch.empty(1, device=coords.device, dtype=coords.dtype).uniform_(-log_rescale, log_rescale).exp()
    return coords


class JetViTRopePositionEmbedding(nn.Module):
    """DINOv3's 2D RoPE: patch centres normalised to [-1, 1] per axis, `head_dim / 4` frequencies per axis."""

    inv_freq: torch.Tensor

    def __init__(self, config: JetViTConfig):
        super().__init__()
        self.config = config
        self.register_buffer("inv_freq", self.compute_inv_freq(config), persistent=False)

    @staticmethod
    def compute_inv_freq(config: JetViTConfig) -> torch.Tensor:
        return 1 / config.rope_theta ** torch.arange(0, 1, 4 / config.head_dim, dtype=torch.float32)

    def forward(self, grid_size: tuple[int, int], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        num_patches_h, num_patches_w = grid_size
        device = self.inv_freq.device
        coords_h = torch.arange(0.5, num_patches_h, dtype=torch.float32, device=device) / num_patches_h
        coords_w = torch.arange(0.5, num_patches_w, dtype=torch.float32, device=device) / num_patches_w
        coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij"), dim=-1).flatten(0, 1)
        coords = 2.0 * coords - 1.0
        if self.training:
            config = self.config
            coords = augment_patch_coordinates(
                coords, config.pos_embed_shift, config.pos_embed_jitter, config.pos_embed_rescale
            )
        angles = 2 * math.pi * coords[:, :, None] * self.inv_freq[None, None, :]
        return rope_tables(angles.flatten(1, 2).tile(2), dtype)
