"""A Triton kernel for the end of Depth Anything's head (upsample to the input size, 3x3 conv, ReLU, 1x1 conv to one
channel, activation, times `max_depth`), and its launcher; `ops_jetvit.upsampled_depth_head` calls
`upsampled_depth_head_triton` where `upsampled_depth_head_runs_on` allows.

Why: the head upsamples conv1's 128-channel map to the full input resolution before conv2 (128 -> 32, 3x3), so at
1022x1358 it writes and reads a 355 MB map and runs conv2's 102 GFLOP on it. Both steps are linear, and conv2's
channel mixing commutes with the upsampling and the shifts, so with `z_t = x W_t` (conv2's tap t = (ky, kx) as a
128 x 32 matrix, all nine as one 128 x 288 GEMM at conv1's resolution, a third of the work) conv2's output is

    conv2(up(x))(p) = b2 + sum_t up(z_t)(p + (ky - 1, kx - 1)),

with a tap outside the map contributing nothing (conv2's zero padding). The kernel computes that sum by gathering the
bilinear samples of each tap's 32 channels of z at full resolution, then the ReLU, conv3's dot product with its 32
weights, the activation and the scale, and writes only the one-channel depth. Exact in real arithmetic; in half
precision z is rounded once where the unfused path rounds the upsampled map and conv2's output. On an H200 at
Depth Anything V2-L's 1022x1358, batch 1: 0.46 ms (GEMM 0.11, kernel 0.35) against 0.71 for the compiled modules
(`benchmarks/experiments/README.md`). The four-corner sampling is spelled out as in `kernels_jetvit_upsample.py`
rather than shared: as a shared `triton.jit` helper it compiled to 108 registers here, not the 104 that were timed.

Bilinear sampling follows PyTorch's `align_corners=True` (as `kernels_jetvit_upsample.py`): scale
`(in - 1) / (out - 1)` in fp32, source `scale * y` truncated to `y0` with weight `y - y0`, the next row clamped.

Shipped with every saved checkpoint for `trust_remote_code`; Triton is optional (without it nothing here is launched).
"""

import torch

from .kernels_jetvit_upsample import _align_corners_scale

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: ops_jetvit.py runs the head's modules
    triton = None

BLOCK_W, NUM_WARPS = 32, 2  # output pixels of one row per program (fastest of 8 settings on an H200)


def upsampled_depth_head_runs_on(x: torch.Tensor) -> bool:
    """Whether the kernel takes conv1's output `x`: a CUDA `[batch, channels, height, width]` map in fp32/bf16/fp16
    whose channels are contiguous (channels-last memory)."""
    return (triton is not None and x.is_cuda and x.dim() == 4 and x.stride(1) == 1
            and x.dtype in (torch.float32, torch.bfloat16, torch.float16))


if triton is not None:

    @triton.jit
    def _upsampled_depth_head_kernel(z_ptr, tap_bias_ptr, b2_ptr, w3_ptr, b3_ptr, out_ptr, max_depth, H_in, W_in,
                                     H_out, W_out, scale_h, scale_w, stride_zb, stride_zh, stride_zw, stride_ob,
                                     stride_oh, C: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr,
                                     SIGMOID: tl.constexpr, HAS_TAP_BIAS: tl.constexpr):
        """One program: BLOCK_W depth pixels of output row `oy` of image `b`. z holds the nine taps' C channels side
        by side (`[b, y, x, t * C + c]`); each tap reads its bilinear sample at the pixel's shifted position and,
        with HAS_TAP_BIAS, adds its bias (`tap_bias_ptr[t * C + c]`, fp32) where it lies inside the map."""
        row = tl.program_id(0)  # rows on the grid's first axis: the others are limited to 65535
        b = row // H_out
        oy = row % H_out
        ox = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
        c = tl.arange(0, BLOCK_C)
        c_ok = c < C
        image = z_ptr + b.to(tl.int64) * stride_zb
        acc = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
        for ky in tl.static_range(3):
            y = oy + (ky - 1)
            y_ok = (y >= 0) & (y < H_out)
            src_y = tl.minimum(tl.maximum(y, 0), H_out - 1).to(tl.float32) * scale_h  # >= 0: truncation is floor
            y0 = src_y.to(tl.int32)
            y1 = tl.minimum(y0 + 1, H_in - 1)
            wy = src_y - y0.to(tl.float32)
            row0 = image + y0.to(tl.int64) * stride_zh
            row1 = image + y1.to(tl.int64) * stride_zh
            for kx in tl.static_range(3):
                x = ox + (kx - 1)
                x_ok = (x >= 0) & (x < W_out) & y_ok
                src_x = tl.minimum(tl.maximum(x, 0), W_out - 1).to(tl.float32) * scale_w
                x0 = src_x.to(tl.int32)
                x1 = tl.minimum(x0 + 1, W_in - 1)
                wx = (src_x - x0.to(tl.float32))[:, None]
                channel = (ky * 3 + kx) * C + c
                mask = x_ok[:, None] & c_ok[None, :]
                col0 = (x0 * stride_zw)[:, None] + channel[None, :]
                col1 = (x1 * stride_zw)[:, None] + channel[None, :]
                z00 = tl.load(row0 + col0, mask=mask, other=0.0).to(tl.float32)
                z01 = tl.load(row0 + col1, mask=mask, other=0.0).to(tl.float32)
                z10 = tl.load(row1 + col0, mask=mask, other=0.0).to(tl.float32)
                z11 = tl.load(row1 + col1, mask=mask, other=0.0).to(tl.float32)
                top = (1.0 - wx) * z00 + wx * z01
                bottom = (1.0 - wx) * z10 + wx * z11
                acc += (1.0 - wy) * top + wy * bottom
                if HAS_TAP_BIAS:
                    tap_bias = tl.load(tap_bias_ptr + channel, mask=c_ok, other=0.0)
                    acc += tl.where(x_ok[:, None], tap_bias[None, :], 0.0)
        b2 = tl.load(b2_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
        w3 = tl.load(w3_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
        hidden = tl.maximum(acc + b2[None, :], 0.0)
        depth = tl.sum(hidden * w3[None, :], axis=1) + tl.load(b3_ptr).to(tl.float32)
        if SIGMOID:
            depth = tl.sigmoid(depth)
        else:
            depth = tl.maximum(depth, 0.0)
        depth = depth * max_depth
        out_row = out_ptr + b.to(tl.int64) * stride_ob + oy.to(tl.int64) * stride_oh
        tl.store(out_row + ox, depth.to(out_ptr.dtype.element_ty), mask=ox < W_out)


def conv2_taps(x: torch.Tensor, conv2_weight: torch.Tensor) -> torch.Tensor:
    """z: every tap of conv2 (`[out, in, 3, 3]`) applied to each pixel of `x` (`[batch, in, height, width]`) as one
    GEMM, `[batch, height, width, 9 * out]` with channel `t * out + o` tap `t = 3 ky + kx` of output channel `o`."""
    batch, in_channels, height, width = x.shape
    pixels = x.permute(0, 2, 3, 1).reshape(-1, in_channels)  # channels-last: a view
    return torch.mm(pixels, _tap_matrix(conv2_weight).to(x.dtype)).view(batch, height, width, -1)


def conv1_bias_taps(conv1_bias: torch.Tensor, conv2_weight: torch.Tensor) -> torch.Tensor:
    """conv2's taps applied to conv1's bias, fp32 `[9 * out]` laid out as `conv2_taps`'s channels: a constant added
    to every pixel of x adds this to z (and, interpolation keeping constants, to every tap's sample inside the map)."""
    return conv1_bias.float() @ _tap_matrix(conv2_weight).float()


def _tap_matrix(conv2_weight: torch.Tensor) -> torch.Tensor:
    """conv2's `[out, in, 3, 3]` weight as the `[in, 9 * out]` matrix whose column `t * out + o` is tap `t = 3 ky + kx`
    of output channel `o`."""
    out_channels, in_channels = conv2_weight.shape[:2]
    return conv2_weight.permute(1, 2, 3, 0).reshape(in_channels, 9 * out_channels)


def upsampled_depth_head_triton(x: torch.Tensor, size: tuple[int, int], conv2_weight: torch.Tensor,
                                conv2_bias: torch.Tensor, conv3_weight: torch.Tensor, conv3_bias: torch.Tensor,
                                sigmoid: bool, max_depth: float, conv1_bias: torch.Tensor | None = None
                                ) -> torch.Tensor:
    """`act(conv3(relu(conv2(F.interpolate(x + conv1_bias, size, bilinear, align_corners=True))))) * max_depth` as
    `[batch, height, width]`, for a conv1 output (before its bias, when `conv1_bias` is given)
    `upsampled_depth_head_runs_on` takes; conv2 is 3x3 with padding 1, conv3 is 1x1 to one channel, `act` is sigmoid
    or ReLU. Interpolation keeps a constant, so conv1's bias reaches each tap's sample unchanged: the kernel adds
    `conv1_bias_taps` to the taps inside the map, and `x + conv1_bias` is never written."""
    batch, in_channels, height, width = x.shape
    out_height, out_width = size
    channels = conv2_weight.shape[0]
    out = torch.empty((batch, out_height, out_width), device=x.device, dtype=x.dtype)
    if out.numel() == 0:
        return out
    z = conv2_taps(x, conv2_weight)
    tap_bias = conv1_bias_taps(conv1_bias, conv2_weight) if conv1_bias is not None else z  # z: a placeholder
    grid = (batch * out_height, triton.cdiv(out_width, BLOCK_W))
    _upsampled_depth_head_kernel[grid](
        z, tap_bias, conv2_bias, conv3_weight.reshape(-1), conv3_bias, out, float(max_depth), height, width,
        out_height, out_width, _align_corners_scale(height, out_height), _align_corners_scale(width, out_width),
        z.stride(0), z.stride(1), z.stride(2), out.stride(0), out.stride(1),
        C=channels, BLOCK_C=triton.next_power_of_2(channels), BLOCK_W=BLOCK_W, SIGMOID=sigmoid,
        HAS_TAP_BIAS=conv1_bias is not None,
        num_warps=NUM_WARPS * (2 if x.dtype == torch.float32 else 1),  # fp32 samples take twice the registers
    )
    return out
