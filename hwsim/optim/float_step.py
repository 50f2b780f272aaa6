"""The tail of the step onto a floating-point accumulator (or, without one, a
floating-point weight), with torch ops on any device:

    a' = Q_acc(a + v)        the sum of the stored value and the update v, formed
                             in float64 and rounded once to the accumulator's
                             format (accumulator rounding, its own noise stream)
    w  = Q_weight(a')        with both an accumulator and a weight format
    param = w (or a')

``v`` is the rule's float64 update, or its value in the ``update`` format when
one is given. Rounding the float64 sum once is what a float adder does when
``v`` is in the accumulator's own format (``update="fp32"`` for an fp32
master copy) and that format has at most 25 significant bits: float64 then
carries more than twice their precision, so under round to nearest
``Q(fl64(a + v))`` is the correctly rounded sum (Figueroa 1995; torch's
float32 ``add`` gives the same bits, tests/test_optim_formats.py checks it).
Otherwise the sum is rounded twice, first to float64 (as a fused adder taking
a float64 operand would), which the documented semantics and the tests'
reference follow.

An update is lost (a stall) when ``a' == a``: under nearest rounding one
smaller than half a unit in the last place of ``a`` (pure bf16 weights stall
on updates below half an ulp, 2^-9 to 2^-8 of |w|; an fp32 master copy
keeps them).
"""

from __future__ import annotations

import torch

from hwsim.formats import FixedPoint
from hwsim.optim.kinds import at_limits, ulps
from hwsim.optim.precision import STREAM
from hwsim.optim.telemetry import sample_of


def add_to_float(ctx, raw_update: torch.Tensor, update: torch.Tensor) -> None:
    """Add the (finite, float64, quantized) ``update`` of ``ctx``
    (:class:`~hwsim.optim.paths.ParamStep`) into its floating-point
    accumulator and write the weight; ``raw_update``: the rule's update
    before the update format (telemetry counts its nonzero elements)."""
    p, prec, counts = ctx.p, ctx.prec, ctx.counts
    target = prec.target
    stored = ctx.state["accumulator"]
    before = stored.to(torch.float64)
    acc = ctx.quantize(before + update, target, prec.target_rounding, STREAM["accumulator"])
    weight, w = None, prec.weight
    if prec.accumulator is not None and w is not None:
        weight = ctx.quantize(acc, w, prec.weight_rounding, STREAM["weight"])
    stored.copy_(acc)  # after every check: a raise leaves accumulator and weight as they were
    p.data.copy_(acc if weight is None else weight)
    if isinstance(w, FixedPoint) and weight is not None:
        p.data.add_(0.0)  # fixed-point values have no -0 (as on the codes path)
    if counts is not None:
        old, new = sample_of(before), sample_of(acc)
        saturated = at_limits(new, target)
        if weight is not None:
            saturated.logical_or_(at_limits(sample_of(weight), w))
        raw = sample_of(raw_update)
        counts.add_values(raw, new == old, saturated, raw / ulps(old, target), raw_update.numel())
