"""The linear layer's GEMMs through block-scaled MAC arrays (``hwsim.ops.block_gemm``):
a layer whose weight, activation or gradient format is block-scaled
(``BlockFloatingPoint``, ``MX``) and that has an accumulator.

Each GEMM quantizes its two operands with their blocks along **its own**
reduction axis K, from the unquantized tensors, as the MX training recipes do
(Rouhani et al., "Microscaling Data Formats for Deep Learning", 2023): a
weight is quantized along its input features for the forward GEMM and again
along its output features for the input-gradient GEMM; the output gradient
along the output features (input-gradient GEMM) and again along the batch
(weight-gradient GEMM), the input along its features (forward) and along the
batch (weight gradient). So one tensor has two block layouts, as the hardware
keeps two copies. The gradient arriving from the next layer enters unquantized
(the output quantizer's backward format is applied here, per GEMM); the
gradients this layer returns go through the input's and the weight's
quantizers (``grad_activation``, ``grad_weight``) as in every layer. A GEMM
without an accumulator multiplies the same quantized operands in float.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from hwsim.formats import FixedPoint
from hwsim.modes import Rounding
from hwsim.nn.functional import GemmConfig, _add_bias_codes
from hwsim.ops import from_codes, quantize
from hwsim.ops.block_gemm import block_gemm_on_values
from hwsim.plan.block_gemm import along_k

ONES = FixedPoint(2, 0)  # the bias gradient's row of ones: exact on this grid


@dataclasses.dataclass(frozen=True)
class OperandFormats:
    """The formats, roundings and per-call seeds of the layer's three tensors."""

    activation: object
    weight: object
    grad: object
    activation_rounding: Rounding
    weight_rounding: Rounding
    grad_rounding: Rounding
    seeds: tuple  # 6 seeds (or Nones): x fwd, w fwd, g grad-input, w grad-input, g grad-w, x grad-w


def _q(t: torch.Tensor, fmt, axis: int, rounding: Rounding, seed, backend: str) -> torch.Tensor:
    """``t`` quantized to ``fmt`` with blocks along ``axis``, as float64 (float: unchanged)."""
    t = t.detach().to(torch.float64)
    if fmt is None:
        return t
    return quantize(t, along_k(fmt, axis), rounding, seed=seed, backend=backend)


def _gemm(a, b, fa, fb, cfg: GemmConfig, codes: bool = False):
    """a @ b (float64 tensors, already quantized along K) through cfg's MAC array:
    float64 values, or (codes=True) the accumulator's codes or float values."""
    if cfg.accumulator is None:
        return a @ b
    if fa is None or fb is None:
        missing = "the gradient" if fa is None else "an operand"
        raise ValueError(
            f"a block-scaled MAC array with accumulator {cfg.accumulator} needs both operands' "
            f"formats; {missing} is float"
        )
    device = a.device
    if cfg.backend == "numba":
        a, b = a.cpu().numpy(), b.cpu().numpy()
    out = block_gemm_on_values(
        a, b, cfg.accumulator, fa, fb, cfg.rounding, cfg.overflow, cfg.seed, values=not codes
    )
    if codes:
        return out
    return torch.as_tensor(out).to(device)


def with_bias(codes, b, cfg: GemmConfig, shape):
    """The accumulator after the bias as one more MAC step (none: unchanged)."""
    if b is None:
        return codes
    if isinstance(codes, np.ndarray) and not isinstance(cfg.accumulator, FixedPoint):
        codes = torch.from_numpy(codes)  # add_float takes the bias as a tensor
    return _add_bias_codes(codes, b, cfg, shape)


def _finish(codes, cfg: GemmConfig, like: torch.Tensor) -> torch.Tensor:
    out = codes
    if isinstance(cfg.accumulator, FixedPoint):
        out = from_codes(codes, cfg.accumulator)
    return torch.as_tensor(np.asarray(out) if not torch.is_tensor(out) else out).to(
        device=like.device, dtype=like.dtype
    )


class BlockMACLinear(torch.autograd.Function):
    """y = x @ w.T + b with block-scaled MAC arrays forward and backward."""

    @staticmethod
    def forward(ctx, x, w, b, fmts: OperandFormats, forward, grad_input, grad_weight):
        ctx.save_for_backward(x, w)
        ctx.args = (fmts, grad_input, grad_weight, b is not None)
        x2 = x.reshape(-1, x.shape[-1])
        s = fmts.seeds
        be = forward.backend
        xa = _q(x2, fmts.activation, -1, fmts.activation_rounding, s[0], be)
        wa = _q(w, fmts.weight, -1, fmts.weight_rounding, s[1], be)  # blocks along in
        if forward.accumulator is None:
            y = F.linear(xa, wa, None if b is None else b.detach().to(torch.float64))
            y = y.to(x.dtype)
        else:
            fw = along_k(fmts.weight, -2)
            codes = _gemm(xa, wa.t(), along_k(fmts.activation, -1), fw, forward, codes=True)
            y = _finish(with_bias(codes, b, forward, (1, -1)), forward, x)
        return y.reshape(x.shape[:-1] + (w.shape[0],))

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        fmts, grad_input, grad_weight, has_bias = ctx.args
        g2 = grad.reshape(-1, grad.shape[-1])
        x2 = x.reshape(-1, x.shape[-1])
        s = fmts.seeds
        be = grad_input.backend
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:  # K = output features
            gq = _q(g2, fmts.grad, -1, fmts.grad_rounding, s[2], be)
            wq = _q(w, fmts.weight, 0, fmts.weight_rounding, s[3], be)
            fg, fw = along_k(fmts.grad, -1), along_k(fmts.weight, -2)
            gx = _gemm(gq, wq, fg, fw, grad_input).to(grad.dtype).reshape(x.shape)
        if ctx.needs_input_grad[1] or (has_bias and ctx.needs_input_grad[2]):  # K = batch
            gt = _q(g2.t(), fmts.grad, -1, fmts.grad_rounding, s[4], be)  # (out, N)
            fg = along_k(fmts.grad, -1)
            if ctx.needs_input_grad[1]:
                xq = _q(x2, fmts.activation, 0, fmts.activation_rounding, s[5], be)
                gw = _gemm(gt, xq, fg, along_k(fmts.activation, -2), grad_weight).to(grad.dtype)
            if has_bias and ctx.needs_input_grad[2]:
                ones = torch.ones((1, gt.shape[1]), dtype=torch.float64, device=gt.device)
                gb = _gemm(ones, gt.t(), ONES, along_k(fmts.grad, -2), grad_weight)[0]
                gb = gb.to(grad.dtype)
        return gx, gw, gb, None, None, None, None


def block_forward(layer, x: torch.Tensor, conv: bool = False) -> torch.Tensor:
    """A QLinear's forward through :class:`BlockMACLinear` (a QConv2d's through
    :class:`hwsim.nn.block_conv.BlockMACConv2d`): the input's and the
    weight's quantizers only quantize the gradients they return (the GEMMs
    quantize their operands), the bias is quantized as in every layer, the
    output quantizer applies ``output`` forward and nothing backward (the
    gradient is quantized per backward GEMM)."""
    from hwsim.nn.layers import quantizer

    layer.calls += 1
    p = layer.precision
    kw = dict(overflow=p.overflow, backend=layer.backend, straight_through=p.straight_through)
    xq = quantizer(x, None, p.grad_activation, backward_rounding=p.rounding_of("grad_activation"),
                   backward_seed=layer._seed(1), **kw)  # fmt: skip
    wq = quantizer(layer.weight, None, p.grad_weight, backward_rounding=p.rounding_of("grad_weight"),
                   backward_seed=layer._seed(3), **kw)  # fmt: skip
    bq = layer._quantize(layer.bias, "weight", "grad_weight", 4)
    fmts = OperandFormats(
        p.activation, p.weight, p.grad_activation, p.rounding_of("activation"),
        p.rounding_of("weight"), p.rounding_of("grad_activation"),
        tuple(layer._seed(role) for role in range(20, 26)),
    )  # fmt: skip
    if conv:
        from hwsim.nn.block_conv import BlockMACConv2d

        geometry = (tuple(layer.stride), tuple(layer.padding))
        y = BlockMACConv2d.apply(xq, wq, bq, *geometry, fmts, *layer._gemm_configs())
    else:
        y = BlockMACLinear.apply(xq, wq, bq, fmts, *layer._gemm_configs())
    if layer._telemetry is not None and layer._telemetry.active:
        _record(layer, x, bq, y, fmts, conv)
    if p.output is None:
        return y
    return quantizer(y, p.output, None, forward_rounding=p.rounding_of("output"),
                     forward_seed=layer._seed(6), **kw)  # fmt: skip


def _record(layer, x, bq, y, fmts: OperandFormats, conv: bool) -> None:
    """Telemetry rows of a block-scaled layer's forward GEMM (``hwsim.nn.telemetry``):
    ``activation`` and ``weight`` as that GEMM quantized them (a conv's input as
    its im2col operand), ``accumulator`` against the float GEMM of those
    operands. (The gradients' rows come from the bias only: the backward GEMMs
    quantize their operands inside.)"""
    rec, s, be = layer._telemetry, fmts.seeds, layer.backend
    w = layer.weight.detach().to(torch.float64)
    b = None if bq is None else bq.detach().to(torch.float64)
    if conv:
        xo = F.unfold(x.detach().to(torch.float64), w.shape[2:], padding=layer.padding,
                      stride=layer.stride)  # fmt: skip
        xa = _q(xo, fmts.activation, -2, fmts.activation_rounding, s[0], be)
        wo = w.reshape(w.shape[0], -1)
        wa = _q(wo, fmts.weight, -1, fmts.weight_rounding, s[1], be)
        ref = wa @ xa + (0 if b is None else b.reshape(1, -1, 1))
    else:
        xo = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
        xa = _q(xo, fmts.activation, -1, fmts.activation_rounding, s[0], be)
        wo, wa = w, _q(w, fmts.weight, -1, fmts.weight_rounding, s[1], be)
        ref = F.linear(xa, wa, b)
    p = layer.precision
    if p.activation is not None:
        rec.add("activation", xo, xa, p.activation)
    if p.weight is not None:
        rec.add("weight", wo, wa, p.weight)
    if p.accumulator is not None:
        rec.add("accumulator", ref.reshape(y.shape), y.detach().to(torch.float64), p.accumulator)


def is_block_mac(precision) -> bool:
    """Whether a layer of ``precision`` runs block-scaled MAC arrays: a block
    format among its GEMM operands and an accumulator anywhere."""
    from hwsim.plan.block_gemm import is_block

    operands = (precision.weight, precision.activation, precision.grad_activation)
    accs = (
        precision.accumulator,
        precision.grad_activation_accumulator,
        precision.grad_weight_accumulator,
    )
    return any(is_block(f) for f in operands) and any(a is not None for a in accs)


__all__ = ["BlockMACLinear", "OperandFormats", "block_forward", "is_block_mac"]
