"""A Triton kernel for the DPT neck's and head's bilinear upsampling (`align_corners=True`) of channels-last maps, and
its launcher; `ops_jetvit.upsample_bilinear` calls `upsample_bilinear_triton` where `upsample_bilinear_runs_on`
allows.

Why a kernel of our own: `torch.compile` lowers `F.interpolate(mode="bilinear")` to a pointwise kernel that computes
the source coordinates, weights and four gather addresses for every output *element*, so the 128- and 256-channel
maps of Depth Anything's head and last fusion layers are bound by that integer arithmetic, not by memory. Here each
program takes BLOCK_W pixels of one output row by BLOCK_C channels: the source rows and their weight are computed once
per program, the columns once per pixel, and the four source pixels are read as contiguous channel vectors (NHWC).

The arithmetic follows PyTorch's CUDA kernel (`upsample_bilinear2d_out_frame`): the scale `(in - 1) / (out - 1)` in
fp32, the source row `scale * y` truncated to `y0` with weight `y - y0`, the row below clamped to the map, and
`h0 (w0 x00 + w1 x01) + h1 (w0 x10 + w1 x11)` in fp32, rounded once to the output dtype.

Shipped with every saved checkpoint for `trust_remote_code`; Triton is optional (without it nothing here is launched).
"""

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: ops_jetvit.py uses F.interpolate
    triton = None

BLOCK_W, NUM_WARPS = 16, 2  # output pixels of one row per program; the channel block is C's power of two, <= 128


def upsample_bilinear_runs_on(x: torch.Tensor) -> bool:
    """Whether the kernel takes `x`: a CUDA `[batch, channels, height, width]` map in fp32/bf16/fp16 whose channels
    are contiguous (channels-last memory, or a channels-last view)."""
    return (triton is not None and x.is_cuda and x.dim() == 4 and x.stride(1) == 1
            and x.dtype in (torch.float32, torch.bfloat16, torch.float16))


if triton is not None:

    @triton.jit
    def _upsample_bilinear_kernel(x_ptr, out_ptr, C, H_in, W_in, H_out, W_out, scale_h, scale_w,
                                  stride_xb, stride_xh, stride_xw, stride_ob, stride_oh, stride_ow,
                                  BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
        """One program: BLOCK_W pixels of output row `oy` of image `b`, BLOCK_C channels. The row's source rows and
        weight are scalars; only the columns vary (int32 offsets within a row)."""
        row = tl.program_id(0)  # rows on the grid's first axis: the others are limited to 65535
        b = row // H_out
        oy = row % H_out
        ox = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
        c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
        mask = (ox < W_out)[:, None] & (c < C)[None, :]

        src_y = oy.to(tl.float32) * scale_h  # align_corners=True; src >= 0, so truncation is floor
        y0 = src_y.to(tl.int32)
        y1 = tl.minimum(y0 + 1, H_in - 1)
        wy = src_y - y0.to(tl.float32)
        src_x = ox.to(tl.float32) * scale_w
        x0 = src_x.to(tl.int32)
        x1 = tl.minimum(x0 + 1, W_in - 1)
        wx = (src_x - x0.to(tl.float32))[:, None]

        image = x_ptr + b.to(tl.int64) * stride_xb
        row0 = image + y0.to(tl.int64) * stride_xh
        row1 = image + y1.to(tl.int64) * stride_xh
        col0 = (x0 * stride_xw)[:, None] + c[None, :]
        col1 = (x1 * stride_xw)[:, None] + c[None, :]
        x00 = tl.load(row0 + col0, mask=mask, other=0.0).to(tl.float32)
        x01 = tl.load(row0 + col1, mask=mask, other=0.0).to(tl.float32)
        x10 = tl.load(row1 + col0, mask=mask, other=0.0).to(tl.float32)
        x11 = tl.load(row1 + col1, mask=mask, other=0.0).to(tl.float32)
        top = (1.0 - wx) * x00 + wx * x01
        bottom = (1.0 - wx) * x10 + wx * x11
        value = (1.0 - wy) * top + wy * bottom

        out_row = out_ptr + b.to(tl.int64) * stride_ob + oy.to(tl.int64) * stride_oh
        tl.store(out_row + (ox * stride_ow)[:, None] + c[None, :], value.to(out_ptr.dtype.element_ty), mask=mask)


def _align_corners_scale(size_in: int, size_out: int) -> float:
    return (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0


def upsample_bilinear_triton(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`F.interpolate(x, size, mode="bilinear", align_corners=True)` for a map `upsample_bilinear_runs_on` takes, as a
    new channels-last tensor."""
    batch, channels, height, width = x.shape
    out_height, out_width = size
    out = torch.empty((batch, channels, out_height, out_width), device=x.device, dtype=x.dtype,
                      memory_format=torch.channels_last)
    if out.numel() == 0:
        return out
    block_c = min(128, triton.next_power_of_2(channels))
    grid = (batch * out_height, triton.cdiv(out_width, BLOCK_W), triton.cdiv(channels, block_c))
    _upsample_bilinear_kernel[grid](
        x, out, channels, height, width, out_height, out_width,
        _align_corners_scale(height, out_height), _align_corners_scale(width, out_width),
        x.stride(0), x.stride(2), x.stride(3), out.stride(0), out.stride(2), out.stride(3),
        BLOCK_W=BLOCK_W, BLOCK_C=block_c, num_warps=NUM_WARPS,
    )
    return out
