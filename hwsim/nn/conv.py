"""The bit-true conv layer's autograd function: forward and both backward
convolutions through MAC arrays, on the operands' codes (each found once).

The input gradient is the convolution of the stride-dilated output gradient
with the flipped, transposed kernel (a true MAC over O * kh * kw terms, zeros
included, which add nothing); the weight gradient is the GEMM of the output
gradient with the im2col columns of the input, summed over batch and positions
in the order (n, y, x); the bias gradient the batch-and-position sum through
the same MAC array. Codes are moved (padded, dilated, flipped, unfolded) as
integers: exact, so every GEMM sees the values it saw as floats.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from hwsim.nn.functional import (
    GemmConfig,
    _add_bias_codes,
    _mac,
    _tensor_values,
    operand,
)
from hwsim.ops import conv2d_on_codes
from hwsim.ops.im2col import code_columns


def _conv(x_op, w_op, stride, pads, cfg: GemmConfig, columns: bool = False):
    """The accumulator codes of the convolution (with ``columns``, also the
    im2col columns of x's codes: ``conv2d_on_codes``)."""
    return conv2d_on_codes(
        x_op[0],
        x_op[1],
        w_op[0],
        w_op[1],
        stride=stride,
        padding=pads,
        accumulator=cfg.accumulator,
        product=cfg.product,
        rounding=cfg.rounding,
        overflow=cfg.overflow,
        seed=cfg.seed,
        stats=(x_op[2], w_op[2]),
        columns=columns,
    )


class MACConv2dFunction(torch.autograd.Function):
    """conv2d (NCHW, groups=1, dilation=1) with bit-true GEMMs forward and backward."""

    @staticmethod
    def forward(
        ctx,
        x,
        w,
        b,
        stride,
        padding,
        forward: GemmConfig,
        grad_input: GemmConfig,
        grad_weight: GemmConfig,
    ):
        ctx.save_for_backward(x, w)
        ctx.configs = (stride, padding, grad_input, grad_weight, b is not None)
        ctx.operands = None
        if any(c.accumulator is not None for c in (forward, grad_input, grad_weight)):
            ctx.operands = (operand(x, forward.backend), operand(w, forward.backend))
        if forward.accumulator is None:
            return F.conv2d(x, w, b, stride, padding)
        codes = _conv(*ctx.operands, stride, padding, forward)
        if b is not None:
            codes = _add_bias_codes(codes, b, forward, (1, -1, 1, 1))
        return _tensor_values(codes, forward, x)

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        stride, padding, grad_input, grad_weight, has_bias = ctx.configs
        gx = gw = gb = None
        g_op = None
        if grad_input.accumulator is not None or grad_weight.accumulator is not None:
            g_op = operand(grad, grad_input.backend)
        if ctx.needs_input_grad[0]:
            if grad_input.accumulator is None:
                gx = torch.nn.grad.conv2d_input(x.shape, w, grad, stride, padding)
            else:
                gx = _grad_input(x.shape, ctx.operands[1], g_op, stride, padding, grad_input)
                gx = _tensor_values(gx, grad_input, grad)
        if ctx.needs_input_grad[1]:
            if grad_weight.accumulator is None:
                gw = torch.nn.grad.conv2d_weight(x, w.shape, grad, stride, padding)
            else:
                gw = _grad_weight(
                    ctx.operands[0], ctx.operands[1][0], g_op, stride, padding, grad_weight
                )
                gw = _tensor_values(gw, grad_weight, grad).reshape(w.shape)
        if has_bias and ctx.needs_input_grad[2]:
            g = grad.transpose(0, 1).reshape(1, grad.shape[1], -1)  # (1, O, N*Ho*Wo)
            g = g.transpose(1, 2)[0]  # (N*Ho*Wo, O)
            ones = torch.ones((1, g.shape[0]), dtype=g.dtype, device=g.device)
            if grad_weight.accumulator is None:
                gb = (ones @ g.contiguous())[0]
            else:
                codes, fl, stats = g_op
                gm = _channels_first(codes).reshape(codes.shape[1], -1).T  # (N*Ho*Wo, O)
                one = _ones_like(codes, gm.shape[0])
                gb = _mac((one, 0, (1, 1, 1)), (gm, fl, stats), grad_weight)
                gb = _tensor_values(gb, grad_weight, grad)[0]
        return gx, gw, gb, None, None, None, None, None


def _is_numpy(codes) -> bool:
    return not isinstance(codes, torch.Tensor)


def _channels_first(codes):
    """(N, O, ...) codes as (O, N, ...), a view (NumPy or torch)."""
    return codes.swapaxes(0, 1) if _is_numpy(codes) else codes.transpose(0, 1)


def _ones_like(codes, n: int):
    if _is_numpy(codes):
        return _numpy_ones(n)
    return torch.ones((1, n), dtype=torch.int64, device=codes.device)


@functools.lru_cache(maxsize=64)
def _numpy_ones(n: int) -> np.ndarray:
    """A read-only (1, n) row of int64 ones (the bias gradient's operand,
    the same few sizes every step)."""
    ones = np.ones((1, n), dtype=np.int64)
    ones.flags.writeable = False
    return ones


def _grad_input(x_shape, w_op, g_op, stride, padding, cfg: GemmConfig):
    g, fg, g_stats = g_op
    cw, fw, w_stats = w_op
    n, o, ho, wo = g.shape
    _, c, kh, kw = cw.shape
    sh, sw = stride
    shape = (n, o, (ho - 1) * sh + 1, (wo - 1) * sw + 1)
    if _is_numpy(g):
        dilated = g if sh == sw == 1 else np.zeros(shape, dtype=g.dtype)
        flipped = np.ascontiguousarray(cw[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    else:
        dilated = g if sh == sw == 1 else g.new_zeros(shape)
        flipped = cw.flip(2, 3).transpose(0, 1).contiguous()  # (C, O, kh, kw)
    if dilated is not g:
        dilated[:, :, ::sh, ::sw] = g  # exact: codes are copied, zeros add nothing
    dilated, pads = crop_and_pad(dilated, x_shape, (kh, kw), stride, padding)
    # dilating and padding add zero codes, flipping moves them: the stats still hold
    return _conv((dilated, fg, g_stats), (flipped, fw, w_stats), (1, 1), pads, cfg)


def crop_and_pad(dilated, x_shape, kernel, stride, padding):
    """The input gradient is a stride-1 convolution of the stride-dilated output
    gradient with the flipped kernel: the dilated gradient cropped where a pad
    would be negative (padding wider than the kernel), and the pads of the rest
    (top, bottom, left, right). One place for both layer paths."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    hd, wdd = dilated.shape[2], dilated.shape[3]
    ho, wo = (hd - 1) // sh + 1, (wdd - 1) // sw + 1
    extra_h = x_shape[2] - ((ho - 1) * sh + kh - 2 * ph)
    extra_w = x_shape[3] - ((wo - 1) * sw + kw - 2 * pw)
    pads = [kh - 1 - ph, kh - 1 - ph + extra_h, kw - 1 - pw, kw - 1 - pw + extra_w]
    top, bottom, left, right = (max(0, -p) for p in pads)
    cropped = dilated[:, :, top : hd - bottom, left : wdd - right]
    return cropped, tuple(max(0, p) for p in pads)


def _grad_weight(x_op, cw, g_op, stride, padding, cfg: GemmConfig, cols=None):
    """The weight gradient's codes (``cw``: the weight's codes, for their
    shape); ``cols``: the forward convolution's wide im2col columns of x's
    codes (1, C kh kw, N Ho Wo), read again instead of gathered anew (same
    geometry, same codes), or None."""
    cx, fx, sx = x_op
    g, fg, sg = g_op
    n, o, ho, wo = g.shape
    if cols is None or cols.shape[0] != 1:
        ph, pw = padding
        cols, _ = code_columns(cx, cw, stride, (ph, ph, pw, pw), True, sx)
    gm = _channels_first(g).reshape(o, n * ho * wo)
    # padding adds zero codes, unfolding repeats codes: the stats still hold
    return _mac((gm, fg, sg), (cols[0].T, fx, sx), cfg)  # (N Ho Wo, C kh kw): a view
