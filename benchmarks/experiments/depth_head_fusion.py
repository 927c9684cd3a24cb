"""Experiment: Depth Anything V2-L's head after conv1 (upsample 584x776 -> 1022x1358, conv2 128 -> 32 3x3, ReLU,
conv3 32 -> 1, ReLU) as the modules run it (our upsampling kernel, then cuDNN's convolutions; eager and compiled),
against `kernels_jetvit_depth_head.py` (conv2's nine taps as one 128 x 288 GEMM at conv1's resolution, then one
kernel that gathers each tap's bilinear samples at full resolution and finishes the head), the GEMM alone, a
row-walking variant (one program walks 2, 4 or 8 output rows of the same columns, for L1 reuse of z's rows; 1-2%
faster, not shipped), and a separable variant of the kernel (each row of z resampled once, by small dots on tensor cores) at
three launch settings (rows x columns of a program's tile x warps). Random weights at the model's scale, bf16,
channels-last, batch 1 and 4.

Each timing is `graph_ms`'s (CUDA graph of 20 calls), medians of interleaved rounds. `max_rel_diff` compares each
output with a float32 computation of the modules (TF32 off), relative to its largest value.

    python benchmarks/experiments/depth_head_fusion.py --output depth_head_fusion.json
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `benchmarks.*`

from benchmarks.experiments.common import experiment_record, kernel_experiment_parser, timed_in_graphs  # noqa: E402
from jetvit_hf.io import atomic_write_json  # noqa: E402
from jetvit_hf.models.jetvit import kernels_jetvit_depth_head as head_kernel  # noqa: E402
from jetvit_hf.models.jetvit.kernels_jetvit_upsample import _align_corners_scale, upsample_bilinear_triton  # noqa: E402
from jetvit_hf.models.jetvit.ops_jetvit import upsample_bilinear  # noqa: E402

IN_CHANNELS, HIDDEN, SIZE_IN, SIZE_OUT = 128, 32, (584, 776), (1022, 1358)  # DA-V2-L at 1022x1358: 73x97 patches


def head_inputs(batch: int):
    generator = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(batch, IN_CHANNELS, *SIZE_IN, device="cuda", generator=generator)
    conv2 = torch.nn.Conv2d(IN_CHANNELS, HIDDEN, 3, padding=1).cuda()
    conv3 = torch.nn.Conv2d(HIDDEN, 1, 1).cuda()
    return x, conv2, conv3


# --- the separable variant: each row of z resampled horizontally once (small dots), rows combined as the output rows
# move down, a window of the last four rows kept in registers ---

@triton.jit
def _column_weights(ox, j0, KX: tl.constexpr, W_in, W_out, scale_w, BLOCK_J: tl.constexpr):
    """`[BLOCK_W, BLOCK_J]` bilinear weights that resample z's columns j0 + j at output columns ox + KX - 1 (zero
    for columns outside the map: conv2's padding)."""
    x = ox + (KX - 1)
    ok = (x >= 0) & (x < W_out)
    src_x = tl.minimum(tl.maximum(x, 0), W_out - 1).to(tl.float32) * scale_w  # >= 0: truncation is floor
    x0 = src_x.to(tl.int32)
    x1 = tl.minimum(x0 + 1, W_in - 1)
    wx = src_x - x0.to(tl.float32)
    j = j0 + tl.arange(0, BLOCK_J)
    weights = tl.where(j[None, :] == x0[:, None], (1.0 - wx)[:, None], 0.0)
    weights += tl.where(j[None, :] == x1[:, None], wx[:, None], 0.0)
    return tl.where(ok[:, None], weights, 0.0)

@triton.jit
def _row_source(y, H_in, H_out, scale_h):
    """Rows y0, y1 of z and their weights for output row `y` (both weights zero outside the map)."""
    ok = (y >= 0) & (y < H_out)
    src_y = tl.minimum(tl.maximum(y, 0), H_out - 1).to(tl.float32) * scale_h
    y0 = src_y.to(tl.int32)
    y1 = tl.minimum(y0 + 1, H_in - 1)
    wy = src_y - y0.to(tl.float32)
    return y0, y1, tl.where(ok, 1.0 - wy, 0.0), tl.where(ok, wy, 0.0)

@triton.jit
def _row_taps(z_row, j0, W_in, stride_zw, A0_hi, A0_lo, A1_hi, A1_lo, A2_hi, A2_lo, KY: tl.constexpr,
              C: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_J: tl.constexpr, SPLIT: tl.constexpr):
    """Row `z_row` of z resampled at the tile's columns for vertical tap KY: `sum_kx A_kx @ z_(KY, kx)`,
    `[BLOCK_W, BLOCK_C]` in fp32 (with SPLIT, each A as hi + lo half-precision parts)."""
    j = j0 + tl.arange(0, BLOCK_J)
    c = tl.arange(0, BLOCK_C)
    mask = (j < W_in)[:, None] & (c < C)[None, :]
    base = z_row + (j * stride_zw)[:, None] + c[None, :]
    z0 = tl.load(base + (KY * 3 + 0) * C, mask=mask, other=0.0)
    z1 = tl.load(base + (KY * 3 + 1) * C, mask=mask, other=0.0)
    z2 = tl.load(base + (KY * 3 + 2) * C, mask=mask, other=0.0)
    if SPLIT:
        v = tl.dot(A0_hi, z0)
        v = tl.dot(A0_lo, z0, v)
        v = tl.dot(A1_hi, z1, v)
        v = tl.dot(A1_lo, z1, v)
        v = tl.dot(A2_hi, z2, v)
        v = tl.dot(A2_lo, z2, v)
    else:
        v = tl.dot(A0_hi, z0, input_precision="ieee")
        v = tl.dot(A1_hi, z1, v, input_precision="ieee")
        v = tl.dot(A2_hi, z2, v, input_precision="ieee")
    return v

@triton.jit
def _row_all_taps(z_row, j0, W_in, stride_zw, A0_hi, A0_lo, A1_hi, A1_lo, A2_hi, A2_lo, C: tl.constexpr,
                  BLOCK_C: tl.constexpr, BLOCK_J: tl.constexpr, SPLIT: tl.constexpr):
    return (_row_taps(z_row, j0, W_in, stride_zw, A0_hi, A0_lo, A1_hi, A1_lo, A2_hi, A2_lo, 0, C, BLOCK_C, BLOCK_J,
                      SPLIT),
            _row_taps(z_row, j0, W_in, stride_zw, A0_hi, A0_lo, A1_hi, A1_lo, A2_hi, A2_lo, 1, C, BLOCK_C, BLOCK_J,
                      SPLIT),
            _row_taps(z_row, j0, W_in, stride_zw, A0_hi, A0_lo, A1_hi, A1_lo, A2_hi, A2_lo, 2, C, BLOCK_C, BLOCK_J,
                      SPLIT))


@triton.jit
def _rows_weight(slot, y0, y1, w0, w1):
    """The weight of window slot `slot` for a tap reading slots y0 and y1 with weights w0 and w1."""
    return tl.where(y0 == slot, w0, 0.0) + tl.where(y1 == slot, w1, 0.0)

@triton.jit
def _tap_rows(y, top, H_in, H_out, scale_h, s0, s1, s2, s3):
    """What a vertical tap contributes to output row `y` (the tap's shifted row), from the resampled rows in the
    window: slot k holds z's row top - 3 + k."""
    y0, y1, w0, w1 = _row_source(y, H_in, H_out, scale_h)
    y0 -= top - 3
    y1 -= top - 3
    return (_rows_weight(0, y0, y1, w0, w1) * s0 + _rows_weight(1, y0, y1, w0, w1) * s1
            + _rows_weight(2, y0, y1, w0, w1) * s2 + _rows_weight(3, y0, y1, w0, w1) * s3)

@triton.jit
def _separable_head_kernel(z_ptr, b2_ptr, w3_ptr, b3_ptr, out_ptr, max_depth, H_in, W_in, H_out, W_out,
                                 scale_h, scale_w, stride_zb, stride_zh, stride_zw, stride_ob, stride_oh,
                                 C: tl.constexpr, BLOCK_C: tl.constexpr, ROWS: tl.constexpr,
                                 BLOCK_W: tl.constexpr, BLOCK_J: tl.constexpr, SIGMOID: tl.constexpr):
    """One program: output rows Y0 ... Y0 + ROWS - 1 by BLOCK_W columns of image `b`, row by row.

    Output row Y's taps read z's rows y0(Y - 1) ... y1(Y + 1), at most four consecutive rows (scale <= 1). The
    program keeps those rows resampled at its columns (`sK_ky`: window slot K, vertical tap ky; slot 3 the
    newest row read, `top`) and reads z's next rows as Y moves down, so each row of z is read once."""
    b = tl.program_id(0) // tl.cdiv(H_out, ROWS)
    Y0 = tl.program_id(0) % tl.cdiv(H_out, ROWS) * ROWS
    ox = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    c = tl.arange(0, BLOCK_C)
    j0 = (tl.maximum(tl.program_id(1) * BLOCK_W - 1, 0).to(tl.float32) * scale_w).to(tl.int32)
    A0 = _column_weights(ox, j0, 0, W_in, W_out, scale_w, BLOCK_J)
    A1 = _column_weights(ox, j0, 1, W_in, W_out, scale_w, BLOCK_J)
    A2 = _column_weights(ox, j0, 2, W_in, W_out, scale_w, BLOCK_J)
    SPLIT: tl.constexpr = z_ptr.dtype.element_ty != tl.float32
    if SPLIT:
        half: tl.constexpr = z_ptr.dtype.element_ty
        A0_hi, A1_hi, A2_hi = A0.to(half), A1.to(half), A2.to(half)
        A0_lo = (A0 - A0_hi.to(tl.float32)).to(half)
        A1_lo = (A1 - A1_hi.to(tl.float32)).to(half)
        A2_lo = (A2 - A2_hi.to(tl.float32)).to(half)
    else:
        A0_hi, A1_hi, A2_hi = A0, A1, A2
        A0_lo, A1_lo, A2_lo = A0, A1, A2
    image = z_ptr + b.to(tl.int64) * stride_zb
    b2 = tl.load(b2_ptr + c, mask=c < C, other=0.0).to(tl.float32)
    w3 = tl.load(w3_ptr + c, mask=c < C, other=0.0).to(tl.float32)
    b3 = tl.load(b3_ptr).to(tl.float32)

    zero = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
    top = _row_source(tl.minimum(Y0 + 1, H_out - 1), H_in, H_out, scale_h)[1]  # the lowest row Y0 reads
    # the window for Y0: rows top - 3 ... top (rows above the map clamped to row 0; their weights are zero)
    s0_0, s0_1, s0_2 = _row_all_taps(image + tl.maximum(top - 3, 0).to(tl.int64) * stride_zh, j0, W_in, stride_zw,
                                     A0_hi, A0_lo, A1_hi, A1_lo, A2_hi, A2_lo, C, BLOCK_C, BLOCK_J, SPLIT)
    s1_0, s1_1, s1_2 = _row_all_taps(image + tl.maximum(top - 2, 0).to(tl.int64) * stride_zh, j0, W_in, stride_zw,
                                     A0_hi, A0_lo, A1_hi, A1_lo, A2_hi, A2_lo, C, BLOCK_C, BLOCK_J, SPLIT)
    s2_0, s2_1, s2_2 = _row_all_taps(image + tl.maximum(top - 1, 0).to(tl.int64) * stride_zh, j0, W_in, stride_zw,
                                     A0_hi, A0_lo, A1_hi, A1_lo, A2_hi, A2_lo, C, BLOCK_C, BLOCK_J, SPLIT)
    s3_0, s3_1, s3_2 = _row_all_taps(image + top.to(tl.int64) * stride_zh, j0, W_in, stride_zw,
                                     A0_hi, A0_lo, A1_hi, A1_lo, A2_hi, A2_lo, C, BLOCK_C, BLOCK_J, SPLIT)
    for Y in range(Y0, tl.minimum(Y0 + ROWS, H_out)):
        last = _row_source(tl.minimum(Y + 1, H_out - 1), H_in, H_out, scale_h)[1]
        if last > top:  # at most one row more than Y - 1 read (scale <= 1)
            top += 1
            s0_0, s1_0, s2_0 = s1_0, s2_0, s3_0
            s0_1, s1_1, s2_1 = s1_1, s2_1, s3_1
            s0_2, s1_2, s2_2 = s1_2, s2_2, s3_2
            s3_0, s3_1, s3_2 = _row_all_taps(image + top.to(tl.int64) * stride_zh, j0, W_in, stride_zw,
                                             A0_hi, A0_lo, A1_hi, A1_lo, A2_hi, A2_lo, C, BLOCK_C, BLOCK_J, SPLIT)
        acc = zero + b2[None, :]
        acc += _tap_rows(Y - 1, top, H_in, H_out, scale_h, s0_0, s1_0, s2_0, s3_0)
        acc += _tap_rows(Y, top, H_in, H_out, scale_h, s0_1, s1_1, s2_1, s3_1)
        acc += _tap_rows(Y + 1, top, H_in, H_out, scale_h, s0_2, s1_2, s2_2, s3_2)
        depth = tl.sum(tl.maximum(acc, 0.0) * w3[None, :], axis=1) + b3
        if SIGMOID:
            depth = tl.sigmoid(depth)
        else:
            depth = tl.maximum(depth, 0.0)
        out_row = out_ptr + b.to(tl.int64) * stride_ob + Y * stride_oh  # < 2^31 within an image
        tl.store(out_row + ox, (depth * max_depth).to(out_ptr.dtype.element_ty), mask=ox < W_out)




def separable_head(x, size, conv2, conv3, rows, block_w, warps):
    """The separable variant: the same GEMM, then `_separable_head_kernel` (relative head: ReLU, max_depth 1)."""
    batch, in_channels, height, width = x.shape
    out = torch.empty((batch, *size), device=x.device, dtype=x.dtype)
    z = head_kernel.conv2_taps(x, conv2.weight)
    scale_h, scale_w = _align_corners_scale(height, size[0]), _align_corners_scale(width, size[1])
    span = int((block_w + 1) * scale_w) + 3
    grid = (batch * triton.cdiv(size[0], rows), triton.cdiv(size[1], block_w))
    _separable_head_kernel[grid](
        z, conv2.bias, conv3.weight.reshape(-1), conv3.bias, out, 1.0, height, width, *size, scale_h, scale_w,
        z.stride(0), z.stride(1), z.stride(2), out.stride(0), out.stride(1), C=HIDDEN, BLOCK_C=HIDDEN, ROWS=rows,
        BLOCK_W=block_w, BLOCK_J=max(16, triton.next_power_of_2(span)), SIGMOID=False, num_warps=warps)
    return out


# --- the row-walking variant (not yet timed): the shipped kernel, but one program walks ROWS consecutive output rows
# of the same 32 columns, so the rows of z the next output row reads are mostly still in L1 ---


@triton.jit
def _source_columns(ox, KX: tl.constexpr, W_in, W_out, scale_w, stride_zw):
    """z's columns x0, x1 (as offsets), the weight of x1, and the in-map flag of output columns ox + KX - 1."""
    x = ox + (KX - 1)
    ok = (x >= 0) & (x < W_out)
    src_x = tl.minimum(tl.maximum(x, 0), W_out - 1).to(tl.float32) * scale_w
    x0 = src_x.to(tl.int32)
    x1 = tl.minimum(x0 + 1, W_in - 1)
    return x0 * stride_zw, x1 * stride_zw, (src_x - x0.to(tl.float32))[:, None], ok


@triton.jit
def _tap_sample(row0, row1, wy, y_ok, col0, col1, wx, x_ok, channel, c_ok):
    mask = (x_ok & y_ok)[:, None] & c_ok[None, :]
    z00 = tl.load(row0 + col0[:, None] + channel[None, :], mask=mask, other=0.0).to(tl.float32)
    z01 = tl.load(row0 + col1[:, None] + channel[None, :], mask=mask, other=0.0).to(tl.float32)
    z10 = tl.load(row1 + col0[:, None] + channel[None, :], mask=mask, other=0.0).to(tl.float32)
    z11 = tl.load(row1 + col1[:, None] + channel[None, :], mask=mask, other=0.0).to(tl.float32)
    return (1.0 - wy) * ((1.0 - wx) * z00 + wx * z01) + wy * ((1.0 - wx) * z10 + wx * z11)


@triton.jit
def _row_walking_head_kernel(z_ptr, b2_ptr, w3_ptr, b3_ptr, out_ptr, max_depth, H_in, W_in, H_out, W_out, scale_h,
                             scale_w, stride_zb, stride_zh, stride_zw, stride_ob, stride_oh, C: tl.constexpr,
                             BLOCK_C: tl.constexpr, ROWS: tl.constexpr, BLOCK_W: tl.constexpr):
    blocks = tl.cdiv(H_out, ROWS)
    b = tl.program_id(0) // blocks
    first = tl.program_id(0) % blocks * ROWS
    ox = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    c = tl.arange(0, BLOCK_C)
    c_ok = c < C
    col0_0, col1_0, wx_0, ok_0 = _source_columns(ox, 0, W_in, W_out, scale_w, stride_zw)
    col0_1, col1_1, wx_1, ok_1 = _source_columns(ox, 1, W_in, W_out, scale_w, stride_zw)
    col0_2, col1_2, wx_2, ok_2 = _source_columns(ox, 2, W_in, W_out, scale_w, stride_zw)
    b2 = tl.load(b2_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    w3 = tl.load(w3_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    b3 = tl.load(b3_ptr).to(tl.float32)
    image = z_ptr + b.to(tl.int64) * stride_zb
    for oy in range(first, tl.minimum(first + ROWS, H_out)):
        acc = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32) + b2[None, :]
        for ky in tl.static_range(3):
            y = oy + (ky - 1)
            y_ok = (y >= 0) & (y < H_out)
            src_y = tl.minimum(tl.maximum(y, 0), H_out - 1).to(tl.float32) * scale_h
            y0 = src_y.to(tl.int32)
            y1 = tl.minimum(y0 + 1, H_in - 1)
            wy = src_y - y0.to(tl.float32)
            row0 = image + y0.to(tl.int64) * stride_zh
            row1 = image + y1.to(tl.int64) * stride_zh
            acc += _tap_sample(row0, row1, wy, y_ok, col0_0, col1_0, wx_0, ok_0, (ky * 3 + 0) * C + c, c_ok)
            acc += _tap_sample(row0, row1, wy, y_ok, col0_1, col1_1, wx_1, ok_1, (ky * 3 + 1) * C + c, c_ok)
            acc += _tap_sample(row0, row1, wy, y_ok, col0_2, col1_2, wx_2, ok_2, (ky * 3 + 2) * C + c, c_ok)
        depth = tl.maximum(tl.sum(tl.maximum(acc, 0.0) * w3[None, :], axis=1) + b3, 0.0)
        out_row = out_ptr + b.to(tl.int64) * stride_ob + oy * stride_oh
        tl.store(out_row + ox, (depth * max_depth).to(out_ptr.dtype.element_ty), mask=ox < W_out)


def row_walking_head(x, size, conv2, conv3, rows, block_w=32, warps=2):
    """The row-walking variant: the same GEMM, then `_row_walking_head_kernel` (relative head: ReLU, max_depth 1)."""
    batch, in_channels, height, width = x.shape
    out = torch.empty((batch, *size), device=x.device, dtype=x.dtype)
    z = head_kernel.conv2_taps(x, conv2.weight)
    grid = (batch * triton.cdiv(size[0], rows), triton.cdiv(size[1], block_w))
    _row_walking_head_kernel[grid](
        z, conv2.bias, conv3.weight.reshape(-1), conv3.bias, out, 1.0, height, width, *size,
        _align_corners_scale(height, size[0]), _align_corners_scale(width, size[1]), z.stride(0), z.stride(1),
        z.stride(2), out.stride(0), out.stride(1), C=HIDDEN, BLOCK_C=HIDDEN, ROWS=rows, BLOCK_W=block_w,
        num_warps=warps)
    return out


def modules(x, conv2, conv3):
    hidden = torch.relu(conv2(upsample_bilinear(x, SIZE_OUT)))
    return torch.relu(conv3(hidden)).squeeze(1)


def main(argv=None) -> int:
    parser = kernel_experiment_parser(__doc__.split("\n\n")[0])
    parser.set_defaults(batch_sizes="1,4")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("depth_head_fusion: needs a CUDA GPU", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    record = experiment_record(args.rounds, shape={"in": [IN_CHANNELS, *SIZE_IN], "out": list(SIZE_OUT),
                                                   "hidden": HIDDEN},
                               difference="max |output - float32 modules (TF32 off)| / max |float32 modules|")
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        x32, conv2_32, conv3_32 = head_inputs(batch)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        with torch.no_grad():
            reference = F.relu(conv3_32(F.relu(conv2_32(F.interpolate(x32, SIZE_OUT, mode="bilinear",
                                                                         align_corners=True))))).squeeze(1)
        x = x32.bfloat16().contiguous(memory_format=torch.channels_last)
        conv2 = conv2_32.to(torch.bfloat16, memory_format=torch.channels_last)
        conv3 = conv3_32.to(torch.bfloat16, memory_format=torch.channels_last)

        def fused():
            return head_kernel.upsampled_depth_head_triton(x, SIZE_OUT, conv2.weight, conv2.bias, conv3.weight,
                                                           conv3.bias, False, 1.0)

        compiled = torch.compile(lambda: modules(x, conv2, conv3), dynamic=False)
        timed = {"modules_eager": lambda: modules(x, conv2, conv3), "modules_compiled": compiled, "fused": fused,
                 "fused_gemm_only": lambda: head_kernel.conv2_taps(x, conv2.weight),
                 "upsample_only": lambda: upsample_bilinear_triton(x, SIZE_OUT)}
        for rows, block_w, warps in ((2, 32, 2), (4, 32, 2), (8, 32, 2), (4, 64, 4), (8, 64, 4)):
            timed[f"row_walking_{rows}x{block_w}x{warps}"] = lambda setting=(rows, block_w, warps): row_walking_head(
                x, SIZE_OUT, conv2, conv3, *setting)
        for setting in ((32, 32, 4), (32, 64, 4), (32, 64, 8)):
            timed["separable_{}x{}x{}".format(*setting)] = lambda setting=setting: separable_head(
                x, SIZE_OUT, conv2, conv3, *setting)
        scale = reference.abs().max().item()
        errors = {}
        with torch.no_grad():
            for name, fn in timed.items():
                out = fn()
                same_shape = out.shape == reference.shape
                errors[name] = (out.float() - reference).abs().max().item() / scale if same_shape else float("nan")
            record["runs"][f"batch{batch}"] = timed_in_graphs(timed, args.rounds, errors, f"bs{batch}")
        record["runs"][f"batch{batch}"]["reference_max"] = scale
    if args.output:
        atomic_write_json(args.output, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
