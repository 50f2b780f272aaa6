"""Autograd functions: a two-format quantizer and the bit-true MAC-array GEMMs
of a linear and a conv layer, forward and backward.

Every GEMM with an accumulator format runs through ``hwsim.ops.matmul``'s
datapath on the operands' exact codes, on the chosen backend: ``"numba"``
(NumPy kernels, CPU; tensors are moved to the CPU and back) or ``"torch"``
(the torch path, on the tensors' device). Without an accumulator the GEMM is
the float torch op.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from hwsim.formats import FixedPoint
from hwsim.modes import Overflow, Rounding
from hwsim.ops.matmul import (
    batched_gemm_numpy,
    conv2d_on_codes,
    grid_codes_numpy,
    threads_for,
)
from hwsim.ops.quantize import quantize, to_codes
from hwsim.torch_path import gemm as tg
from hwsim.torch_path.core import apply_overflow, code_to_value

BACKENDS = ("torch", "numba")


def check_backend(backend: str) -> str:
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
    if backend == "numba":
        with threads_for(x.numel()):
            out = quantize(x.detach().cpu().numpy(), fmt, rounding, overflow, seed=seed)
        return torch.from_numpy(out).to(device=x.device, dtype=x.dtype)
    return quantize(x.detach(), fmt, rounding, overflow, seed=seed)


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


def grid_codes(t: torch.Tensor, name: str, backend: str) -> tuple[torch.Tensor, int]:
    """(int64 codes, fl) of a tensor on a grid: the Numba scan (codes on the
    CPU) for the numba backend, torch ops on the tensor's device otherwise."""
    if backend == "numba":
        codes, fl = grid_codes_numpy(t.detach().cpu().numpy(), name)
        return torch.from_numpy(codes), fl
    return tg.grid_codes(t, name)


def _run_gemm(ca, fa, cb, fb, cfg: GemmConfig) -> torch.Tensor:
    """MAC-array GEMM of int64 code tensors on cfg.backend; int64 codes on ca's device."""
    args = (cfg.accumulator, cfg.product, cfg.rounding, cfg.overflow, cfg.seed, "auto")
    if cfg.backend == "numba":
        out = batched_gemm_numpy(ca.cpu().numpy(), fa, cb.cpu().numpy(), fb, *args)
        return torch.from_numpy(out).to(ca.device)
    return tg.batched_gemm(ca, fa, cb, fb, *args)


def gemm(a: torch.Tensor, b: torch.Tensor, cfg: GemmConfig) -> torch.Tensor:
    """a @ b through the MAC array (or in float), in a's dtype."""
    if cfg.accumulator is None:
        return a @ b
    ca, fa = grid_codes(a, "a", cfg.backend)
    cb, fb = grid_codes(b, "b", cfg.backend)
    return code_to_value(_run_gemm(ca, fa, cb, fb, cfg), cfg.accumulator, a.dtype).to(a.device)


def _add_bias_codes(codes, bias, cfg: GemmConfig, shape) -> torch.Tensor:
    """The bias as one more MAC step: rounded onto the accumulator grid and
    added with the accumulator's overflow, after the K products."""
    seed = None if cfg.seed is None else (cfg.seed + 7) & ((1 << 64) - 1)
    b_codes = to_codes(bias.detach(), cfg.accumulator, cfg.rounding, cfg.overflow, seed=seed)
    return apply_overflow(
        codes + b_codes.reshape(shape).to(codes.device), cfg.accumulator, cfg.overflow
    )


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
            cx, fx = grid_codes(x2, "the layer input", forward.backend)
            cw, fw = grid_codes(w.t(), "the weight", forward.backend)
            codes = _run_gemm(cx, fx, cw, fw, forward)
            if b is not None:
                codes = _add_bias_codes(codes, b, forward, (1, -1))
            y = code_to_value(codes, forward.accumulator, x.dtype).to(x.device)
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


def _conv_codes(cx, fx, cw, fw, stride, pads, cfg: GemmConfig) -> torch.Tensor:
    args = (cfg.accumulator, cfg.product, cfg.rounding, cfg.overflow, cfg.seed, "auto")
    if cfg.backend == "numba":
        out = conv2d_on_codes(cx.cpu().numpy(), fx, cw.cpu().numpy(), fw, stride, pads, *args)
        return torch.from_numpy(out).to(cx.device)
    return conv2d_on_codes(cx, fx, cw, fw, stride, pads, *args)


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
        cx, fx = grid_codes(x, "the layer input", forward.backend)
        cw, fw = grid_codes(w, "the weight", forward.backend)
        ph, pw = padding
        codes = _conv_codes(cx, fx, cw, fw, stride, (ph, ph, pw, pw), forward)
        if b is not None:
            codes = _add_bias_codes(codes, b, forward, (1, -1, 1, 1))
        return code_to_value(codes, forward.accumulator, x.dtype).to(x.device)

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
    cg, fg = grid_codes(grad, "the output gradient", cfg.backend)
    cw, fw = grid_codes(w, "the weight", cfg.backend)
    dilated = torch.zeros(
        (n, o, (ho - 1) * sh + 1, (wo - 1) * sw + 1), dtype=torch.int64, device=cg.device
    )
    dilated[:, :, ::sh, ::sw] = cg
    flipped = cw.flip(2, 3).transpose(0, 1).contiguous()  # (C, O, kh, kw)
    h, wd = x_shape[2], x_shape[3]
    extra_h = h - ((ho - 1) * sh + kh - 2 * ph)
    extra_w = wd - ((wo - 1) * sw + kw - 2 * pw)
    pads = (kh - 1 - ph, kh - 1 - ph + extra_h, kw - 1 - pw, kw - 1 - pw + extra_w)
    codes = _conv_codes(dilated, fg, flipped, fw, (1, 1), pads, cfg)
    return code_to_value(codes, cfg.accumulator, grad.dtype).to(grad.device)


def _conv_grad_weight(x, w_shape, grad, stride, padding, cfg: GemmConfig):
    if cfg.accumulator is None:
        return torch.nn.grad.conv2d_weight(x, w_shape, grad, stride, padding)
    n, o, ho, wo = grad.shape
    _, c, kh, kw = w_shape
    sh, sw = stride
    ph, pw = padding
    cx, fx = grid_codes(x, "the layer input", cfg.backend)
    cg, fg = grid_codes(grad, "the output gradient", cfg.backend)
    xp = F.pad(cx, (pw, pw, ph, ph))
    cols = xp.unfold(2, kh, sh).unfold(3, kw, sw)[:, :, :ho, :wo]  # (N, C, Ho, Wo, kh, kw)
    cols = cols.permute(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * kh * kw)
    gm = cg.permute(1, 0, 2, 3).reshape(o, n * ho * wo)
    codes = _run_gemm(gm.contiguous(), fg, cols.contiguous(), fx, cfg)
    return code_to_value(codes, cfg.accumulator, grad.dtype).reshape(w_shape).to(grad.device)
