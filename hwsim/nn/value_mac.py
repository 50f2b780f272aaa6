"""The bit-true linear and conv layers on the values, for layers whose MAC arrays
accumulate in a floating-point format (``hwsim.matmul`` / ``hwsim.conv2d`` with
a ``FloatingPoint`` accumulator; its fixed-point GEMMs, if any, through
``matmul_codes`` / ``conv2d_codes``). Float operands have no common fixed-point
grid, so these do not share codes between the GEMMs as
:class:`hwsim.nn.functional.MACLinearFunction` and
:class:`hwsim.nn.conv.MACConv2dFunction` do; the arithmetic is the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hwsim.formats import FloatingPoint
from hwsim.nn.conv import crop_and_pad
from hwsim.nn.functional import (
    GemmConfig,
    _add_bias_codes,
    float_kwargs,
    gemm,
    gemm_codes,
    values,
)
from hwsim.ops import conv2d, conv2d_codes


class ValueMACLinear(torch.autograd.Function):
    """y = x @ w.T + b with bit-true GEMMs forward and backward, on the values."""

    @staticmethod
    def forward(ctx, x, w, b, forward: GemmConfig, grad_input: GemmConfig, grad_weight: GemmConfig):
        ctx.save_for_backward(x, w)
        ctx.configs = (grad_input, grad_weight, b is not None)
        x2 = x.reshape(-1, x.shape[-1])
        if forward.accumulator is None:
            y = F.linear(x2, w, b)
        else:
            codes = gemm_codes(x2, w.t(), forward)
            if b is not None:
                codes = _add_bias_codes(codes, b, forward, (1, -1))
            y = values(codes, forward, x)
        return y.reshape(x.shape[:-1] + (w.shape[0],))

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        grad_input, grad_weight, has_bias = ctx.configs
        g2 = grad.reshape(-1, grad.shape[-1])
        x2 = x.reshape(-1, x.shape[-1])
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = gemm(g2, w, grad_input).reshape(x.shape)
        if ctx.needs_input_grad[1]:
            gw = gemm(g2.t().contiguous(), x2, grad_weight)
        if has_bias and ctx.needs_input_grad[2]:
            ones = torch.ones((1, g2.shape[0]), dtype=g2.dtype, device=g2.device)
            gb = gemm(ones, g2, grad_weight)[0]  # the batch sum through the same MAC array
        return gx, gw, gb, None, None, None


def _conv_codes(x, w, stride, pads, cfg: GemmConfig) -> torch.Tensor:
    """Int64 accumulator codes of the convolution, on x's device (a float
    accumulator: its float64 values)."""
    if isinstance(cfg.accumulator, FloatingPoint):
        kwargs = float_kwargs(cfg)
        return conv2d(x.detach(), w.detach(), stride=stride, padding=pads, **kwargs)
    codes, _ = conv2d_codes(
        x.detach(),
        w.detach(),
        stride=stride,
        padding=pads,
        accumulator=cfg.accumulator,
        product=cfg.product,
        rounding=cfg.rounding,
        overflow=cfg.overflow,
        seed=cfg.seed,
        backend=cfg.backend,
    )
    return codes


class ValueMACConv2d(torch.autograd.Function):
    """conv2d (NCHW, groups=1, dilation=1) with bit-true GEMMs forward and backward.

    The input gradient is the convolution of the stride-dilated output
    gradient with the flipped, transposed kernel (a true MAC over O * kh * kw
    terms, zeros included, which add nothing); the weight gradient is the GEMM
    of the output gradient with the im2col columns, summed over batch and
    positions in the order (n, y, x)."""

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
        if forward.accumulator is None:
            return F.conv2d(x, w, b, stride, padding)
        codes = _conv_codes(x, w, stride, padding, forward)
        if b is not None:
            codes = _add_bias_codes(codes, b, forward, (1, -1, 1, 1))
        return values(codes, forward, x)

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        stride, padding, grad_input, grad_weight, has_bias = ctx.configs
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _conv_grad_input(x.shape, w, grad, stride, padding, grad_input)
        if ctx.needs_input_grad[1]:
            gw = _conv_grad_weight(x, w.shape, grad, stride, padding, grad_weight)
        if has_bias and ctx.needs_input_grad[2]:
            g = grad.transpose(0, 1).reshape(1, grad.shape[1], -1)  # (1, O, N*Ho*Wo)
            g = g.transpose(1, 2)[0]  # (N*Ho*Wo, O)
            ones = torch.ones((1, g.shape[0]), dtype=g.dtype, device=g.device)
            gb = gemm(ones, g.contiguous(), grad_weight)[0]
        return gx, gw, gb, None, None, None, None, None


def _conv_grad_input(x_shape, w, grad, stride, padding, cfg: GemmConfig):
    if cfg.accumulator is None:
        return torch.nn.grad.conv2d_input(x_shape, w, grad, stride, padding)
    n, o, ho, wo = grad.shape
    _, c, kh, kw = w.shape
    sh, sw = stride
    g = grad.detach()
    dilated = g.new_zeros((n, o, (ho - 1) * sh + 1, (wo - 1) * sw + 1))
    dilated[:, :, ::sh, ::sw] = g  # exact: values are copied, zeros add nothing
    flipped = w.detach().flip(2, 3).transpose(0, 1).contiguous()  # (C, O, kh, kw)
    dilated, pads = crop_and_pad(dilated, x_shape, (kh, kw), stride, padding)
    codes = _conv_codes(dilated, flipped, (1, 1), pads, cfg)
    return values(codes, cfg, grad)


def _conv_grad_weight(x, w_shape, grad, stride, padding, cfg: GemmConfig):
    if cfg.accumulator is None:
        return torch.nn.grad.conv2d_weight(x, w_shape, grad, stride, padding)
    n, o, ho, wo = grad.shape
    _, c, kh, kw = w_shape
    sh, sw = stride
    ph, pw = padding
    xp = F.pad(x.detach(), (pw, pw, ph, ph))
    cols = xp.unfold(2, kh, sh).unfold(3, kw, sw)[:, :, :ho, :wo]  # (N, C, Ho, Wo, kh, kw)
    cols = cols.permute(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * kh * kw)
    gm = grad.detach().permute(1, 0, 2, 3).reshape(o, n * ho * wo)
    codes = gemm_codes(gm.contiguous(), cols.contiguous(), cfg)
    return values(codes, cfg, grad).reshape(w_shape)
