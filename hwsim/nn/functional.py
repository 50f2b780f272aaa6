"""Autograd functions: a two-format quantizer and the bit-true MAC-array GEMMs
of a linear and a conv layer, forward and backward.

Every GEMM with an accumulator format runs through the public datapath
functions (``hwsim.ops.matmul_codes`` / ``conv2d_codes``, quantizers
``hwsim.ops.quantize`` / ``to_codes``) on the operands' exact codes, on the
chosen backend: ``"numba"`` (NumPy kernels, CPU; tensors are moved to the CPU
and back) or ``"torch"`` (the torch path, on the tensors' device). Without an
accumulator the GEMM is the float torch op.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from hwsim.formats import FixedPoint, FloatingPoint
from hwsim.modes import Overflow, Rounding
from hwsim.ops import (
    BACKENDS,
    add_codes,
    add_float,
    conv2d,
    conv2d_codes,
    from_codes,
    matmul,
    matmul_codes,
    quantize,
    to_codes,
)


def check_backend(backend: str) -> str:
    """A layer's backend: ``"torch"`` or ``"numba"`` (no default by array type:
    a layer's tensors are always torch tensors)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def quantize_tensor(
    x: torch.Tensor,
    fmt: FixedPoint | None,
    rounding: Rounding,
    overflow: Overflow,
    seed,
    backend: str,
) -> torch.Tensor:
    """``hwsim.quantize`` of a tensor on the chosen backend (same dtype and device)."""
    if fmt is None:
        return x
    return quantize(x.detach(), fmt, rounding, overflow, seed=seed, backend=backend)


class QuantizeFunction(torch.autograd.Function):
    """Forward: quantize the value to ``forward_fmt``; backward: quantize the
    gradient to ``backward_fmt`` (QPyTorch's ``quantizer(forward_number,
    backward_number)``). Straight-through: the gradient passes unchanged in
    between, or (``straight_through=False``) is zeroed where the forward value
    lay outside the forward format's range."""

    @staticmethod
    def forward(
        ctx,
        x,
        forward_fmt,
        forward_rounding,
        backward_fmt,
        backward_rounding,
        overflow,
        forward_seed,
        backward_seed,
        backend,
        straight_through,
    ):
        ctx.backward_args = (backward_fmt, backward_rounding, overflow, backward_seed, backend)
        if forward_fmt is not None and not straight_through:
            ctx.save_for_backward((x >= forward_fmt.min) & (x <= forward_fmt.max))
        else:
            ctx.save_for_backward(None)
        return quantize_tensor(x, forward_fmt, forward_rounding, overflow, forward_seed, backend)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        fmt, rounding, overflow, seed, backend = ctx.backward_args
        if inside is not None:
            grad = grad * inside
        return (quantize_tensor(grad, fmt, rounding, overflow, seed, backend),) + (None,) * 9


@dataclasses.dataclass(frozen=True)
class GemmConfig:
    """One MAC array: accumulator (None: float GEMM), product, rounding, overflow, seed."""

    accumulator: FixedPoint | None
    product: FixedPoint | None
    rounding: Rounding
    overflow: Overflow
    seed: int | None
    backend: str


def gemm_codes(a: torch.Tensor, b: torch.Tensor, cfg: GemmConfig) -> torch.Tensor:
    """Int64 accumulator codes of a @ b through the MAC array, on a's device
    (a float accumulator: its float64 values)."""
    if isinstance(cfg.accumulator, FloatingPoint):
        return matmul(a.detach(), b.detach(), **_float_kwargs(cfg))
    codes, _ = matmul_codes(
        a.detach(),
        b.detach(),
        accumulator=cfg.accumulator,
        product=cfg.product,
        rounding=cfg.rounding,
        overflow=cfg.overflow,
        seed=cfg.seed,
        backend=cfg.backend,
    )
    return codes


def values(codes: torch.Tensor, cfg: GemmConfig, like: torch.Tensor) -> torch.Tensor:
    """The accumulator codes' values in ``like``'s dtype and on its device."""
    if isinstance(cfg.accumulator, FloatingPoint):  # already values
        return codes.to(device=like.device, dtype=like.dtype)
    return from_codes(codes, cfg.accumulator).to(device=like.device, dtype=like.dtype)


def _float_kwargs(cfg: GemmConfig) -> dict:
    """A float MAC array's arguments of hwsim.matmul / hwsim.conv2d."""
    return dict(
        accumulator=cfg.accumulator,
        product=cfg.product,
        rounding=cfg.rounding,
        seed=cfg.seed,
        backend=cfg.backend,
    )


def gemm(a: torch.Tensor, b: torch.Tensor, cfg: GemmConfig) -> torch.Tensor:
    """a @ b through the MAC array (or in float), in a's dtype."""
    if cfg.accumulator is None:
        return a @ b
    return values(gemm_codes(a, b, cfg), cfg, a)


def _add_bias_codes(codes, bias, cfg: GemmConfig, shape) -> torch.Tensor:
    """The bias as one more MAC step: rounded onto the accumulator grid and
    added with the accumulator's overflow, after the K products."""
    seed = None if cfg.seed is None else (cfg.seed + 7) & ((1 << 64) - 1)
    if isinstance(cfg.accumulator, FloatingPoint):
        addend = bias.detach().reshape(shape).to(codes.device)
        return add_float(codes, addend, cfg.accumulator, cfg.rounding, seed=seed)
    b_codes = to_codes(bias.detach(), cfg.accumulator, cfg.rounding, cfg.overflow, seed=seed)
    return add_codes(codes, b_codes.reshape(shape), cfg.accumulator, cfg.overflow)


class MACLinearFunction(torch.autograd.Function):
    """y = x @ w.T + b with bit-true GEMMs forward and backward."""

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
        kwargs = _float_kwargs(cfg)
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


class MACConv2dFunction(torch.autograd.Function):
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
    ph, pw = padding
    g = grad.detach()
    dilated = g.new_zeros((n, o, (ho - 1) * sh + 1, (wo - 1) * sw + 1))
    dilated[:, :, ::sh, ::sw] = g  # exact: values are copied, zeros add nothing
    flipped = w.detach().flip(2, 3).transpose(0, 1).contiguous()  # (C, O, kh, kw)
    h, wd = x_shape[2], x_shape[3]
    extra_h = h - ((ho - 1) * sh + kh - 2 * ph)
    extra_w = wd - ((wo - 1) * sw + kw - 2 * pw)
    pads = [kh - 1 - ph, kh - 1 - ph + extra_h, kw - 1 - pw, kw - 1 - pw + extra_w]
    # a negative pad crops (padding wider than the kernel): crop, then pad the rest
    top, bottom, left, right = (max(0, -p) for p in pads)
    hd, wdd = dilated.shape[2], dilated.shape[3]
    dilated = dilated[:, :, top : hd - bottom, left : wdd - right]
    codes = _conv_codes(dilated, flipped, (1, 1), tuple(max(0, p) for p in pads), cfg)
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
