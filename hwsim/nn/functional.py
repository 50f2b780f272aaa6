"""Autograd functions: a two-format quantizer and the bit-true MAC-array GEMMs
of a linear and a conv layer, forward and backward.

Every GEMM with an accumulator format runs through the public datapath
functions (``hwsim.ops.matmul_on_codes`` / ``conv2d_codes``, quantizers
``hwsim.ops.quantize`` / ``to_codes``) on the operands' exact codes, on the
chosen backend: ``"numba"`` (NumPy kernels, CPU; tensors are moved to the CPU
and back) or ``"torch"`` (the torch path, on the tensors' device). A linear
layer finds each operand's codes once (``hwsim.ops.grid_codes``) and feeds them
to the forward GEMM and both backward GEMMs. A layer with a floating-point
accumulator anywhere runs :mod:`hwsim.nn.value_mac` instead (``hwsim.matmul`` /
``conv2d`` on the values: float operands have no common fixed-point grid).
Without an accumulator the GEMM is the float torch op.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from hwsim.formats import FixedPoint, FloatingPoint
from hwsim.modes import Overflow, Rounding
from hwsim.ops import (
    BACKENDS,
    add_codes,
    add_float,
    from_codes,
    grid_codes,
    matmul,
    matmul_codes,
    matmul_on_codes,
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
    if callable(fmt):  # a delayed-scaling quantizer (hwsim.nn.scaling.AmaxHistory)
        return fmt(x.detach(), rounding, seed=seed, backend=backend)
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
            lo = getattr(forward_fmt, "min", -forward_fmt.max)  # a float format: -max
            ctx.save_for_backward((x >= lo) & (x <= forward_fmt.max))
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

    accumulator: FixedPoint | FloatingPoint | None
    product: FixedPoint | FloatingPoint | None
    rounding: Rounding
    overflow: Overflow
    seed: int | None
    backend: str


def is_float_mac(*configs: GemmConfig) -> bool:
    """Whether any of the MAC arrays accumulates in a floating-point format."""
    return any(isinstance(c.accumulator, FloatingPoint) for c in configs)


def gemm_codes(a: torch.Tensor, b: torch.Tensor, cfg: GemmConfig) -> torch.Tensor:
    """Int64 accumulator codes of a @ b through the MAC array, on a's device
    (a float accumulator: its float64 values)."""
    if isinstance(cfg.accumulator, FloatingPoint):
        return matmul(a.detach(), b.detach(), **float_kwargs(cfg))
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


def float_kwargs(cfg: GemmConfig) -> dict:
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


def _add_bias_codes(codes, bias, cfg: GemmConfig, shape):
    """The bias as one more MAC step: rounded onto the accumulator grid and
    added with the accumulator's overflow, after the K products (on the
    codes' backend: NumPy codes take the bias as a NumPy array)."""
    seed = None if cfg.seed is None else (cfg.seed + 7) & ((1 << 64) - 1)
    if isinstance(cfg.accumulator, FloatingPoint):
        addend = bias.detach().reshape(shape).to(codes.device)
        return add_float(codes, addend, cfg.accumulator, cfg.rounding, seed=seed)
    b = bias.detach()
    if not isinstance(codes, torch.Tensor):
        b = _as_numpy(b)
    b_codes = to_codes(b, cfg.accumulator, cfg.rounding, cfg.overflow, seed=seed)
    return add_codes(codes, b_codes.reshape(shape), cfg.accumulator, cfg.overflow)


def _as_numpy(t: torch.Tensor):
    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.to(torch.float32)  # exact widening; NumPy has no bfloat16
    return t.cpu().numpy()


def operand(t: torch.Tensor, backend: str):
    """(codes, fl, stats) of a GEMM operand on the backend's array type."""
    return grid_codes(_as_numpy(t) if backend == "numba" else t.detach())


def _transposed(op):
    codes, fl, stats = op
    return codes.T if not isinstance(codes, torch.Tensor) else codes.t(), fl, stats


def _mac(a, b, cfg: GemmConfig):
    """Accumulator codes of a @ b through the MAC array, operands as (codes, fl, stats)."""
    return matmul_on_codes(
        a[0],
        a[1],
        b[0],
        b[1],
        accumulator=cfg.accumulator,
        product=cfg.product,
        rounding=cfg.rounding,
        overflow=cfg.overflow,
        seed=cfg.seed,
        stats=(a[2], b[2]),
    )


def _tensor_values(codes, cfg: GemmConfig, like: torch.Tensor) -> torch.Tensor:
    """The accumulator codes' values as a tensor of ``like``'s dtype and device."""
    out = from_codes(codes, cfg.accumulator)
    if not isinstance(out, torch.Tensor):
        out = torch.from_numpy(out)
    return out.to(device=like.device, dtype=like.dtype)


class MACLinearFunction(torch.autograd.Function):
    """y = x @ w.T + b with bit-true GEMMs forward and backward; the codes of x
    and w are found once and kept for the backward GEMMs."""

    @staticmethod
    def forward(ctx, x, w, b, forward: GemmConfig, grad_input: GemmConfig, grad_weight: GemmConfig):
        ctx.save_for_backward(x, w)
        ctx.configs = (grad_input, grad_weight, b is not None)
        x2 = x.reshape(-1, x.shape[-1])
        ctx.operands = None
        if any(c.accumulator is not None for c in (forward, grad_input, grad_weight)):
            ctx.operands = (operand(x2, forward.backend), operand(w, forward.backend))
        if forward.accumulator is None:
            y = F.linear(x2, w, b)
        else:
            x_op, w_op = ctx.operands
            codes = _mac(x_op, _transposed(w_op), forward)
            if b is not None:
                codes = _add_bias_codes(codes, b, forward, (1, -1))
            y = _tensor_values(codes, forward, x)
        return y.reshape(x.shape[:-1] + (w.shape[0],))

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        grad_input, grad_weight, has_bias = ctx.configs
        g2 = grad.reshape(-1, grad.shape[-1])
        x2 = x.reshape(-1, x.shape[-1])
        gx = gw = gb = None
        g_op = None
        if grad_input.accumulator is not None or grad_weight.accumulator is not None:
            g_op = operand(g2, grad_input.backend)
        if ctx.needs_input_grad[0]:
            if grad_input.accumulator is None:
                gx = g2 @ w
            else:
                gx = _tensor_values(_mac(g_op, ctx.operands[1], grad_input), grad_input, g2)
            gx = gx.reshape(x.shape)
        if grad_weight.accumulator is None:
            if ctx.needs_input_grad[1]:
                gw = g2.t().contiguous() @ x2
            if has_bias and ctx.needs_input_grad[2]:
                gb = (g2.new_ones((1, g2.shape[0])) @ g2)[0]
            return gx, gw, gb, None, None, None
        if ctx.needs_input_grad[1]:
            gw = _tensor_values(
                _mac(_transposed(g_op), ctx.operands[0], grad_weight), grad_weight, g2
            )
        if has_bias and ctx.needs_input_grad[2]:
            # the batch sum through the same MAC array: ones (1, N) @ g
            codes = g_op[0]
            ones = codes.new_ones if isinstance(codes, torch.Tensor) else None
            ones = ones((1, codes.shape[0])) if ones else np.ones((1, codes.shape[0]), np.int64)
            gb = _tensor_values(_mac((ones, 0, (1, 1, 1)), g_op, grad_weight), grad_weight, g2)[0]
        return gx, gw, gb, None, None, None
