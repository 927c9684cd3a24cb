"""JetViT's task heads: Depth Anything's DPT neck and depth head (`JetViTForDepthEstimation`) and DINOv3's linear
segmentation probe (`JetViTForSemanticSegmentation`); the models that use them are in `modeling_jetvit.py`.

The DPT neck reassembles four backbone feature maps (`[batch, hidden, height / patch, width / patch]`) to four scales,
projects them to `fusion_hidden_size` channels and fuses them coarse to fine; the head upsamples the finest fused map
to the input resolution and predicts one depth value per pixel. Module names mirror transformers' Depth Anything neck
and head, so a converted Depth Anything checkpoint keeps their parameter names.

Memory layout: `JetViTBackbone` hands the neck channels-last views of its patch tokens, and `JetViTForDepthEstimation`
keeps the neck's and head's convolution weights in `torch.channels_last`, so every op here (conv, conv-transpose,
bilinear interpolation, ReLU, residual add) reads and writes NHWC memory (cuDNN's native layout for tensor cores)
without a transpose. Nothing here depends on the layout: NCHW inputs give the same values. Under `torch.compile`
the upsampling reassemble layers' transposed convolutions and the neck's 3x3 convolutions after them run as one
transposed convolution each (`transposed_conv_then_conv3x3`), a quarter to a third of their multiply-adds. On a GPU,
outside autograd, the `align_corners=True` upsamplings run a Triton kernel of ours (`ops_jetvit.upsample_bilinear`),
and the head after conv1 (from conv1's bias on) runs as one GEMM and one kernel that never writes the full-resolution
hidden maps (`ops_jetvit.upsampled_depth_head`).

Shipped with every saved checkpoint for `trust_remote_code`: imports only torch and its flat siblings.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_jetvit import JetViTConfig
from .ops_jetvit import upsample_bilinear, upsampled_depth_head, upsampled_depth_head_applies


def transposed_conv_then_conv3x3(x: torch.Tensor, resize: nn.ConvTranspose2d, conv: nn.Conv2d) -> torch.Tensor:
    """`conv(resize(x))` for a transposed convolution with kernel = stride `s` and a 3x3 convolution (stride 1, padding
    1) after it, as one transposed convolution of `x`: the same linear map in 33 instead of 149 GFLOP (stride 4) and 30
    instead of 82 (stride 2) at Depth Anything V2-L's 1022x1358.

    Output row `Y` of `conv(resize(x))` reads rows `Y - 1 ... Y + 1` of `resize(x)`, and row `s i + a` of `resize(x)` is
    source row `i` times kernel row `a`. So `Y = s i + a - ky + 1` for `conv`'s kernel row `ky`: the composition is a
    transposed convolution with stride `s`, padding 1 and an `(s + 2) x (s + 2)` kernel whose tap `u = a - ky + 2` sums
    `resize.weight[..., a] conv.weight[..., ky]` over the pairs that meet there, which is `conv2d(resize.weight,
    conv.weight, padding=2)` with `resize`'s input channels as the batch (the columns likewise). `resize`'s bias,
    added to every pixel of `resize(x)`, is `resize` applied to one more input channel, all ones, with the bias as its
    kernel: through `conv` it then differs at the border as it should (the zero padding). Exact up to rounding
    (`resize(x)` is never rounded); tests/models/jetvit/test_dpt_channels_last.py checks values and gradients against
    the two modules in float64.
    """
    stride = resize.stride[0]
    if (resize.kernel_size != (stride, stride) or resize.stride != (stride, stride) or resize.padding != (0, 0)
            or resize.output_padding != (0, 0) or resize.dilation != (1, 1) or resize.groups != 1
            or conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1)
            or conv.dilation != (1, 1) or conv.groups != 1):
        raise ValueError("transposed_conv_then_conv3x3 needs a transposed convolution with kernel = stride and no "
                         f"padding, then a 3x3 convolution with stride 1 and padding 1; got {resize} and {conv}")
    # resize's bias rides on an extra input channel of ones (with zeros after it: channels stay a multiple of 8)
    batch, _, height, width = x.shape
    extra = 8
    taps = resize.weight.shape[1:]
    resize_weight = torch.cat([resize.weight, resize.bias.view(1, -1, 1, 1).expand(1, *taps),
                               resize.weight.new_zeros(extra - 1, *taps)])
    kernel = F.conv2d(resize_weight, conv.weight, padding=2)  # [C_in + 8, C_out, s + 2, s + 2]: ConvTranspose2d's
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.cat([x, x.new_ones(batch, 1, height, width), x.new_zeros(batch, extra - 1, height, width)], dim=1)
    return F.conv_transpose2d(x.contiguous(memory_format=memory_format), kernel, conv.bias, stride=stride, padding=1)


class JetViTReassembleLayer(nn.Module):
    def __init__(self, config: JetViTConfig, channels: int, factor: float):
        super().__init__()
        self.projection = nn.Conv2d(config.hidden_size, channels, kernel_size=1)
        if factor > 1:
            self.resize = nn.ConvTranspose2d(channels, channels, kernel_size=int(factor), stride=int(factor))
        elif factor == 1:
            self.resize = nn.Identity()
        else:
            self.resize = nn.Conv2d(channels, channels, kernel_size=3, stride=int(1 / factor), padding=1)

    def forward(self, hidden_state: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
        """`conv(resize(projection(hidden_state)))`, with the neck's 3x3 `conv` that follows this layer."""
        hidden_state = self.projection(hidden_state)
        if isinstance(self.resize, nn.ConvTranspose2d) and torch.compiler.is_compiling():
            # compiled, the upsampling scales run as one transposed convolution (the same function, fewer FLOPs);
            # eager, a whole neck's call measured 2.4 ms slower with it, its ops alone 0.09 ms faster: unexplained
            # (benchmarks/experiments/README.md), so eager calls keep the modules
            return transposed_conv_then_conv3x3(hidden_state, self.resize, conv)
        return conv(self.resize(hidden_state))


class JetViTReassembleStage(nn.Module):
    def __init__(self, config: JetViTConfig):
        super().__init__()
        self.layers = nn.ModuleList(
            JetViTReassembleLayer(config, channels, factor)
            for channels, factor in zip(config.neck_hidden_sizes, config.reassemble_factors)
        )

    def forward(self, feature_maps: tuple[torch.Tensor, ...], convs: nn.ModuleList) -> list[torch.Tensor]:
        return [layer(feature_map, conv) for layer, feature_map, conv in zip(self.layers, feature_maps, convs)]


class JetViTPreActResidualLayer(nn.Module):
    def __init__(self, config: JetViTConfig):
        super().__init__()
        channels = config.fusion_hidden_size
        self.activation1 = nn.ReLU()
        self.convolution1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.activation2 = nn.ReLU()
        self.convolution2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        residual = hidden_state
        hidden_state = self.convolution1(self.activation1(hidden_state))
        hidden_state = self.convolution2(self.activation2(hidden_state))
        return hidden_state + residual


class JetViTFeatureFusionLayer(nn.Module):
    def __init__(self, config: JetViTConfig):
        super().__init__()
        self.projection = nn.Conv2d(config.fusion_hidden_size, config.fusion_hidden_size, kernel_size=1)
        self.residual_layer1 = JetViTPreActResidualLayer(config)
        self.residual_layer2 = JetViTPreActResidualLayer(config)

    def forward(
        self, hidden_state: torch.Tensor, residual: torch.Tensor | None = None, size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        if residual is not None:
            if hidden_state.shape != residual.shape:
                residual = F.interpolate(residual, size=hidden_state.shape[2:], mode="bilinear", align_corners=False)
            hidden_state = hidden_state + self.residual_layer1(residual)
        hidden_state = self.residual_layer2(hidden_state)
        # transformers upsamples (about 2x), then projects; projecting first computes the same function with a quarter
        # of the projection's work. Exact: the 1x1 projection acts on each pixel alone, y = W x + b, and bilinear
        # interpolation makes each output pixel a weighted sum of input pixels with weights summing to 1, so
        # interp(W x + b) = W interp(x) + b (to rounding; tests/models/jetvit/test_dpt_channels_last.py checks it).
        hidden_state = self.projection(hidden_state)
        if size is None:  # scale_factor=2; align_corners=True places the samples by the sizes alone
            size = (2 * hidden_state.shape[2], 2 * hidden_state.shape[3])
        return upsample_bilinear(hidden_state, size)


class JetViTFeatureFusionStage(nn.Module):
    def __init__(self, config: JetViTConfig):
        super().__init__()
        self.layers = nn.ModuleList(JetViTFeatureFusionLayer(config) for _ in config.neck_hidden_sizes)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        features = features[::-1]
        fused_features, fused = [], None
        for idx, (feature, layer) in enumerate(zip(features, self.layers)):
            size = features[idx + 1].shape[2:] if idx != len(features) - 1 else None
            fused = layer(feature, size=size) if fused is None else layer(fused, feature, size=size)
            fused_features.append(fused)
        return fused_features


class JetViTDepthNeck(nn.Module):
    """Depth Anything's DPT neck: reassemble four feature maps to four scales, project, and fuse coarse to fine."""

    def __init__(self, config: JetViTConfig):
        super().__init__()
        self.reassemble_stage = JetViTReassembleStage(config)
        self.convs = nn.ModuleList(
            nn.Conv2d(channels, config.fusion_hidden_size, kernel_size=3, padding=1, bias=False)
            for channels in config.neck_hidden_sizes
        )
        self.fusion_stage = JetViTFeatureFusionStage(config)

    def forward(self, feature_maps: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        return self.fusion_stage(self.reassemble_stage(feature_maps, self.convs))


class JetViTDepthHead(nn.Module):
    """Depth Anything's head: conv, upsample to the input size, conv, ReLU, 1x1 conv, then ReLU (relative) or
    Sigmoid times `max_depth` (metric)."""

    def __init__(self, config: JetViTConfig):
        super().__init__()
        self.head_in_index = config.head_in_index
        self.patch_size = config.patch_size
        self.max_depth = config.max_depth
        features = config.fusion_hidden_size
        self.conv1 = nn.Conv2d(features, features // 2, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features // 2, config.head_hidden_size, kernel_size=3, padding=1)
        self.activation1 = nn.ReLU()
        self.conv3 = nn.Conv2d(config.head_hidden_size, 1, kernel_size=1)
        self.activation2 = nn.ReLU() if config.depth_estimation_type == "relative" else nn.Sigmoid()

    def forward(self, features: list[torch.Tensor], grid_size: tuple[int, int]) -> torch.Tensor:
        # conv1 stays before the upsampling: a 3x3 convolution mixes neighbours, so it does not commute with it
        hidden_state = features[self.head_in_index]
        output_size = (grid_size[0] * self.patch_size, grid_size[1] * self.patch_size)
        if upsampled_depth_head_applies(hidden_state, self.conv1, self.conv2, self.conv3):
            # the rest in one GEMM and one kernel, without the 128-channel map at full resolution; the kernel adds
            # conv1's bias through conv2's taps (the same function, without a pass over conv1's output to add it)
            hidden_state = self.conv1._conv_forward(hidden_state, self.conv1.weight, None)
            sigmoid = isinstance(self.activation2, nn.Sigmoid)
            return upsampled_depth_head(hidden_state, self.conv1.bias, output_size, self.conv2, self.conv3, sigmoid,
                                        self.max_depth)
        predicted_depth = upsample_bilinear(self.conv1(hidden_state), output_size)
        predicted_depth = self.conv3(self.activation1(self.conv2(predicted_depth)))
        predicted_depth = self.activation2(predicted_depth) * self.max_depth
        return predicted_depth.squeeze(dim=1)


class JetViTLinearProbeHead(nn.Module):
    """DINOv3's linear segmentation probe: Dropout2d -> BatchNorm -> 1x1 convolution on the patch-feature map."""

    def __init__(self, config: JetViTConfig):
        super().__init__()
        self.dropout = nn.Dropout2d(config.semantic_head_dropout)
        self.batchnorm = nn.BatchNorm2d(config.hidden_size)
        self.classifier = nn.Conv2d(config.hidden_size, config.num_labels, kernel_size=1)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.batchnorm(self.dropout(feature_map)))
