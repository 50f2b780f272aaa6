"""The fused autograd functions of QLinear and QConv2d (``hwsim.nn.fused``):
input, weight and bias quantizers, the MAC-array GEMMs and the output
quantizer of one layer call in one function, the same bits as the unfused
chain (``QuantizeFunction`` -> ``MACLinearFunction`` / ``MACConv2dFunction``
-> ``QuantizeFunction``).

The seeds are the unfused chain's (``layer._seed(role)``, role 0-7 for the
quantizers, 10-12 for the MAC arrays), found only for stochastic roundings:
the others take no noise.
"""

from __future__ import annotations

import numpy as np
import torch

from hwsim.errors import NonFiniteError
from hwsim.modes import Rounding
from hwsim.nn import fused, fused_torch
from hwsim.nn.conv import _channels_first, _conv, _grad_input, _grad_weight, _ones_like
from hwsim.nn.functional import GemmConfig, _mac
from hwsim.nn.fused import _ONES, LayerPlan, derived, fused_plan
from hwsim.ops import quantize
from hwsim.ops.im2col import code_columns

_ROLES = 13


def _stochastic_roles(plan: LayerPlan) -> tuple[int, ...]:
    by_role = {
        0: plan.x, 1: plan.gx, 2: plan.w, 3: plan.gw, 4: plan.w, 5: plan.gw, 6: plan.y,
        7: plan.gy, 10: plan.forward, 11: plan.grad_input, 12: plan.grad_weight,
    }  # fmt: skip
    return tuple(r for r, q in by_role.items() if q.rounding == Rounding.STOCHASTIC)


def _seeds(layer, plan: LayerPlan, calls: int) -> list:
    seeds = [None] * _ROLES
    if layer.precision.seed is None:
        return seeds
    roles = derived(layer, "_fused_roles", plan, _stochastic_roles)
    for r, s in zip(roles, layer._role_seeds(calls, roles), strict=True):
        seeds[r] = s
    return seeds


class _Call:
    """One layer call's state, handed to the autograd function as one
    argument (``Function.apply`` walks nested arguments as a pytree) and
    kept on its context for the backward pass."""

    __slots__ = ("plan", "steps", "seeds", "x_op", "w_op", "bc", "geometry", "cols")

    def __init__(self, plan, steps, seeds, x_op, w_op, bc):
        self.plan, self.steps, self.seeds = plan, steps, seeds
        self.x_op, self.w_op, self.bc = x_op, w_op, bc
        self.geometry = self.cols = None


def _operands(layer, plan: LayerPlan, x: torch.Tensor) -> _Call | None:
    """The call's operands as codes (x, w, the bias's accumulator codes or
    None), its seeds and the backend's module of per-tensor steps; None on a
    non-finite value."""
    steps = fused if layer.backend == "numba" else fused_torch
    seeds = _seeds(layer, plan, layer.calls + 1)
    try:
        x_op = steps.codes(x, plan.x, seeds[0])
        w_op = steps.codes(layer.weight, plan.w, seeds[2])
        bc = None if layer.bias is None else steps.bias_codes(layer.bias, plan, seeds)
    except NonFiniteError:
        return None
    if x_op is None or w_op is None or (layer.bias is not None and bc is None):
        return None
    layer.__dict__["calls"] += 1  # a plain attribute: nn.Module's __setattr__ costs more
    return _Call(plan, steps, seeds, x_op, w_op, bc)


def fused_forward(layer, x: torch.Tensor, conv: bool = False) -> torch.Tensor | None:
    """The layer's call on the fused path, or None where it does not apply."""
    plan = fused_plan(layer, x)
    if plan is None:
        return None
    return conv2d(layer, plan, x) if conv else linear(layer, plan, x)


def linear(layer, plan: LayerPlan, x: torch.Tensor) -> torch.Tensor | None:
    """The QLinear call, fused; None where a value is not finite (the unfused
    chain then raises)."""
    call = _operands(layer, plan, x if x.dim() == 2 else x.reshape(-1, x.shape[-1]))
    if call is None:
        return None
    return FusedLinear.apply(x, layer.weight, layer.bias, call)


def conv2d(layer, plan: LayerPlan, x: torch.Tensor) -> torch.Tensor | None:
    """The QConv2d call, fused (None as :func:`linear`)."""
    call = _operands(layer, plan, x)
    if call is None:
        return None
    call.geometry = (tuple(layer.stride), tuple(layer.padding))
    return FusedConv2d.apply(x, layer.weight, layer.bias, call)


def _grad_codes(steps, grad: torch.Tensor, plan: LayerPlan, seed):
    """The incoming gradient through the output quantizer's backward format, as codes."""
    op = steps.codes(grad, plan.gy, seed)
    if op is None:  # the unfused quantizer words the error
        q = plan.gy
        quantize(grad.detach(), q.fmt, q.rounding, q.overflow, seed=seed, backend="numba")
    return op


class FusedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, call):
        ctx.call, ctx.x_shape = call, x.shape
        plan, steps, seeds = call.plan, call.steps, call.seeds
        cw, fw, sw = call.w_op
        mac = plan.forward
        acc = steps.gemm(mac, call.x_op, (cw.T, fw, sw), mac.seed(seeds[10]))
        y = steps.finish(acc, mac, plan.y, seeds[6], call.bc)
        return y if x.dim() == 2 else y.reshape(x.shape[:-1] + (cw.shape[0],))

    @staticmethod
    def backward(ctx, grad):
        call = ctx.call
        plan, steps, seeds = call.plan, call.steps, call.seeds
        x_op, w_op = call.x_op, call.w_op
        g_op = _grad_codes(steps, grad.reshape(-1, grad.shape[-1]), plan, seeds[7])
        gx = gw = gb = None
        need = ctx.needs_input_grad
        n, (out, inner) = g_op[0].shape[0], w_op[0].shape
        sx, sw, sb = steps.noises(
            g_op[0],
            (plan.gx, seeds[1], n * inner) if need[0] else None,
            (plan.gw, seeds[3], out * inner) if need[1] else None,
            (plan.gw, seeds[5], out) if need[2] else None,
        )
        if need[0]:
            mac = plan.grad_input
            acc = steps.gemm(mac, g_op, w_op, mac.seed(seeds[11]))
            gx = steps.finish(acc, mac, plan.gx, sx).reshape(ctx.x_shape)
        mac = plan.grad_weight
        xb_op = None
        if need[1] and need[2] and mac.rounding != Rounding.STOCHASTIC:
            xb_op = _ones_column(x_op, g_op[2][0])
        if xb_op is not None:  # both in one GEMM: gw, then the batch sum as the last column
            acc = steps.gemm(mac, (g_op[0].T, g_op[1], g_op[2]), xb_op, mac.seed(seeds[12]))
            gw, gb = steps.finish_split(acc, mac, plan.gw, sw, sb)
        elif need[1]:
            acc = steps.gemm(mac, (g_op[0].T, g_op[1], g_op[2]), x_op, mac.seed(seeds[12]))
            gw = steps.finish(acc, mac, plan.gw, sw)
        if need[2] and xb_op is None:  # the batch sum through the same MAC array
            ones = _ones_like(g_op[0], n)
            acc = steps.gemm(mac, (ones, 0, _ONES), g_op, mac.seed(seeds[12]))
            gb = steps.finish(acc[0], mac, plan.gw, sb)
        return gx, gw, gb, None


ONES_GROWTH_BITS = 4  # 1.0 may lie this far past x's largest code (activations below 1)


def _ones_column(x_op, g_top: int, axis: int = 1, in_place: bool = False):
    """The linear layer's input operand with a column of ones appended (1.0
    on x's grid: code 2^fl), or None where 1.0 is not a code there, lies
    more than ``ONES_GROWTH_BITS`` bits past x's largest code (the GEMM's
    largest product, and with it the plan's path, would grow further), or
    its product with the gradient's largest code (``g_top``) nears int64.
    ``axis=0``: a row of ones appended instead (a conv layer's columns
    (C kh kw, N Ho Wo), whose transpose the weight gradient reads);
    ``in_place``: the NumPy codes' last row is spare, and takes the ones.

    ``g^T @ [x | 1]`` gives the weight gradient and, as its last column, the
    bias gradient's batch sum ``g^T @ 1``: for each output the same terms
    ``g_ko * 1.0`` in the same order k as the separate ones-row GEMM, each
    the same value rounded onto the same grid, and the same saturating
    running sum, so the same codes wherever the MAC array's rounding draws
    no noise (stochastic rounding keys its noise by the output's index)."""
    c, fl, (top, lo, hi) = x_op
    if fl < 0 or (1 << fl) > top << ONES_GROWTH_BITS or g_top << fl >= 1 << 62:
        return None
    one = 1 << fl
    if isinstance(c, np.ndarray) and one >> (8 * c.itemsize - 1):  # int32 codes: 1.0 too
        return None
    if in_place:
        c[-1] = one
        return c, fl, (max(top, one), min(lo, 0), max(hi, one))
    grown = (c.shape[0] + (axis == 0), c.shape[1] + (axis == 1))
    if isinstance(c, np.ndarray):
        cc = np.empty(grown, dtype=c.dtype)
        if axis:
            cc[:, :-1], cc[:, -1] = c, one
        else:
            cc[:-1], cc[-1] = c, one
    else:
        ones = (grown[0], 1) if axis else (1, grown[1])
        cc = torch.cat([c, torch.full(ones, one, dtype=c.dtype, device=c.device)], dim=axis)
    return cc, fl, (max(top, one), min(lo, 0), max(hi, one))


def _config(mac, seed) -> GemmConfig:
    return GemmConfig(mac.acc, mac.product, mac.rounding, mac.overflow, seed, "numba")


class FusedConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, call):
        ctx.call, ctx.shapes = call, (x.shape, w.shape)
        plan, seeds = call.plan, call.seeds
        cfg = _config(plan.forward, seeds[10])
        acc, call.cols = _conv(call.x_op, call.w_op, *call.geometry, cfg, True)
        inner = acc.shape[2] * acc.shape[3]
        return call.steps.finish(acc, plan.forward, plan.y, seeds[6], call.bc, inner)

    @staticmethod
    def backward(ctx, grad):
        call = ctx.call
        plan, steps, seeds = call.plan, call.steps, call.seeds
        finish = steps.finish
        x_op, w_op = call.x_op, call.w_op
        stride, padding = call.geometry
        x_shape, w_shape = ctx.shapes
        g_op = _grad_codes(steps, grad, plan, seeds[7])
        gx = gw = gb = None
        need = ctx.needs_input_grad
        w_numel = w_shape.numel()
        sx, sw, sb = steps.noises(
            g_op[0],
            (plan.gx, seeds[1], x_shape.numel()) if need[0] else None,
            (plan.gw, seeds[3], w_numel) if need[1] else None,
            (plan.gw, seeds[5], w_shape[0]) if need[2] else None,
        )
        if need[0]:
            cfg = _config(plan.grad_input, seeds[11])
            acc = _grad_input(x_shape, w_op, g_op, stride, padding, cfg)
            gx = finish(acc, plan.grad_input, plan.gx, sx)
        cfg = _config(plan.grad_weight, seeds[12])
        cols, xb = call.cols, None
        both = need[1] and need[2] and cfg.rounding != Rounding.STOCHASTIC
        if cols is None and need[1]:  # the forward formed none: im2col them now, with
            pads = (padding[0], padding[0], padding[1], padding[1])  # a row for the ones
            cols = code_columns(x_op[0], w_op[0], stride, pads, True, x_op[2], int(both))[0]
            if both:
                xb = _ones_column((cols[0], *x_op[1:]), g_op[2][0], axis=0, in_place=True)
                cols = cols if xb is not None else cols[:, :-1]  # C-contiguous either way
        elif both and cols.shape[0] == 1:
            xb = _ones_column((cols[0], x_op[1], x_op[2]), g_op[2][0], axis=0)
        if xb is not None:  # both in one GEMM, the bias's position sums as the last column
            acc = _grad_weight((None, *xb[1:]), w_op[0], g_op, stride, padding, cfg, xb[0][None])
            gw, gb = steps.finish_split(acc, plan.grad_weight, plan.gw, sw, sb)
            gw = gw.reshape(w_shape)
        elif need[1]:
            acc = _grad_weight(x_op, w_op[0], g_op, stride, padding, cfg, cols)
            gw = finish(acc, plan.grad_weight, plan.gw, sw).reshape(w_shape)
        if need[2] and xb is None:
            c, fl, stats = g_op
            gm = _channels_first(c).reshape(c.shape[1], -1).T  # (N*Ho*Wo, O)
            acc = _mac((_ones_like(c, gm.shape[0]), 0, _ONES), (gm, fl, stats), cfg)
            gb = finish(acc[0], plan.grad_weight, plan.gw, sb)
        return gx, gw, gb, None
