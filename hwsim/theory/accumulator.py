"""Weight-accumulator precision that avoids stalling (Sakr & Shanbhag, ICLR 2019).

An SGD step adds ``lr * g`` to the weight accumulator. With the gradient on a
grid of LSB_G, the smallest nonzero update at the smallest learning rate
gamma_min is gamma_min * LSB_G; the accumulator must resolve it, so

    LSB_acc = 2^floor(log2(gamma_min * LSB_G)),
    B_acc   = log2(range_acc / LSB_acc) + 1        (sign bit included),

with range_acc the magnitude the accumulator must hold (the weight range, a
power of two). Halving gamma_min adds exactly one bit. (Values from the
authors' released code; see ../shared/REFERENCES.md.)

>>> from hwsim import FixedPoint
>>> from hwsim.theory import accumulator_precision
>>> p = accumulator_precision(FixedPoint(8, 7), lr_min=1e-3, weight=FixedPoint(8, 7))
>>> p.wl, p.fl, str(p.format)
(18, 17, 'fx18.17')
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from hwsim.formats import MAX_WL, FixedPoint, parse_format


@dataclasses.dataclass(frozen=True)
class AccumulatorPrecision:
    """A recommended weight-accumulator format: ``lsb`` = 2^-fl, ``wl`` = B_acc bits
    (sign included) covering +-``range``."""

    lsb: float
    range: float
    wl: int
    fl: int

    @property
    def format(self) -> FixedPoint:
        """The accumulator as a :class:`FixedPoint` (wl capped at the simulator's 62)."""
        return FixedPoint(min(self.wl, MAX_WL), self.fl)


def _pow2_ceil(x: float) -> float:
    return 2.0 ** math.ceil(math.log2(x))


def _grad_lsb(grad) -> float:
    if isinstance(grad, str):
        grad = parse_format(grad)
    if isinstance(grad, FixedPoint):
        return grad.lsb
    if (
        isinstance(grad, bool)
        or not isinstance(grad, int | float)
        or not (math.isfinite(grad) and grad > 0)
    ):
        raise ValueError(
            f"grad must be the gradient's FixedPoint format, its string or a positive LSB; got {grad!r}"
        )
    return float(grad)


def _weight_range(weight) -> float:
    if isinstance(weight, str):
        weight = parse_format(weight)
    if isinstance(weight, FixedPoint):
        # the magnitude the format spans: 2^(int_bits - 1) signed, 2^int_bits unsigned
        return 2.0 ** (weight.int_bits - (1 if weight.signed else 0))
    if (
        isinstance(weight, bool)
        or not isinstance(weight, int | float)
        or not (math.isfinite(weight) and weight > 0)
    ):
        raise ValueError(
            f"weight must be the weight's FixedPoint format, its string or a positive range "
            f"(largest magnitude to hold); got {weight!r}"
        )
    return _pow2_ceil(float(weight))


def accumulator_precision(grad, lr_min: float, weight) -> AccumulatorPrecision:
    """Smallest weight-accumulator LSB and word length that never stall (Sakr &
    Shanbhag 2019): ``LSB_acc = 2^floor(log2(lr_min * LSB_G))``,
    ``B_acc = log2(range_acc / LSB_acc) + 1``.

    Args:
        grad: the weight gradient's format (its LSB is LSB_G), or LSB_G itself.
        lr_min: the smallest learning rate the schedule reaches (> 0).
        weight: the weight format (range_acc = the magnitude it spans) or the
            range itself (rounded up to a power of two).

    >>> p = accumulator_precision(2**-8, lr_min=2**-10, weight=1.0)
    >>> p.lsb == 2**-18, p.wl
    (True, 19)
    >>> accumulator_precision(2**-8, lr_min=2**-11, weight=1.0).wl   # halve lr: +1 bit
    20
    """
    lsb_g = _grad_lsb(grad)
    if (
        isinstance(lr_min, bool)
        or not isinstance(lr_min, int | float)
        or not (math.isfinite(lr_min) and lr_min > 0)
    ):
        raise ValueError(f"lr_min must be a positive learning rate, got {lr_min!r}")
    rng = _weight_range(weight)
    # floor(log2(x)) exactly: x = m * 2^e with 0.5 <= m < 1 (math.log2 can round up)
    fl = 1 - math.frexp(lr_min * lsb_g)[1]
    lsb = 2.0**-fl
    wl = round(math.log2(rng / lsb)) + 1
    if wl < 2:
        raise ValueError(
            f"the accumulator LSB {lsb} is not below the weight range {rng}: lr_min * LSB_G "
            f"= {lr_min * lsb_g} is too large for an accumulator to matter"
        )
    return AccumulatorPrecision(lsb=lsb, range=rng, wl=wl, fl=fl)


@dataclasses.dataclass(frozen=True)
class GradientStatistics:
    """Per-tensor statistics measured on a model: largest |gradient|, a small
    quantile of the nonzero |gradient| (``small_grad``) and largest |weight|."""

    max_grad: float
    small_grad: float
    max_weight: float


def measure_gradient_statistics(
    model,
    loss_fn: Callable,
    batches: Iterable[tuple],
    *,
    quantile: float = 0.1,
) -> dict[str, GradientStatistics]:
    """Run backward on each ``(inputs, targets)`` batch and collect, per named
    parameter, the largest |gradient|, the ``quantile`` of the nonzero
    |gradient| values (a "small but typical" gradient) and the largest |weight|.
    The model's parameters are not changed.

    >>> import torch
    >>> m = torch.nn.Linear(4, 2)
    >>> x, t = torch.randn(16, 4), torch.randint(0, 2, (16,))
    >>> s = measure_gradient_statistics(m, torch.nn.functional.cross_entropy, [(x, t)])
    >>> sorted(s)
    ['bias', 'weight']
    """
    import torch

    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile!r}")
    grads: dict[str, list[np.ndarray]] = {}
    saved = {
        n: (p.grad.clone() if p.grad is not None else None) for n, p in model.named_parameters()
    }
    seen = 0
    try:
        for inputs, targets in batches:
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model(inputs), targets)
            loss.backward()
            seen += 1
            for name, p in model.named_parameters():
                if p.grad is not None:
                    grads.setdefault(name, []).append(p.grad.detach().abs().flatten().cpu().numpy())
    finally:
        for name, p in model.named_parameters():
            p.grad = saved[name]
    if not seen:
        raise ValueError("batches is empty: at least one (inputs, targets) batch is needed")
    out = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name not in grads:
                continue
            g = np.concatenate(grads[name]).astype(np.float64)
            nz = g[g > 0]
            out[name] = GradientStatistics(
                max_grad=float(g.max()),
                small_grad=float(np.quantile(nz, quantile)) if nz.size else 0.0,
                max_weight=float(p.detach().abs().max()),
            )
    return out


def accumulator_precision_from_statistics(
    stats: Mapping[str, GradientStatistics],
    lr_min: float,
    *,
    grad_bits: int | None = None,
    weight_range: float | None = None,
) -> dict[str, AccumulatorPrecision]:
    """The Sakr & Shanbhag accumulator rule per tensor, with LSB_G and range_acc
    taken from measured statistics instead of given formats.

    With ``grad_bits``, the gradient format is the one a per-tensor quantizer
    would pick: range 2^ceil(log2 max|g|) over ``grad_bits`` bits (sign
    included), so LSB_G = range * 2^-(grad_bits - 1). Without it, LSB_G is the
    power of two at or below the small-gradient quantile (``small_grad``): the
    accumulator then resolves ``lr_min`` times a typical small gradient, which
    estimates where accuracy actually drops rather than where the first
    update is lost. range_acc is ``weight_range`` or the power of two at or above
    twice the largest |weight| (room to grow).

    >>> s = {"w": GradientStatistics(max_grad=0.3, small_grad=0.004, max_weight=0.7)}
    >>> accumulator_precision_from_statistics(s, 1e-2, grad_bits=8)["w"].wl
    17
    """
    if grad_bits is not None and (
        isinstance(grad_bits, bool) or not isinstance(grad_bits, int) or grad_bits < 2
    ):
        raise ValueError(f"grad_bits must be an integer >= 2 or None, got {grad_bits!r}")
    out = {}
    for name, s in stats.items():
        if grad_bits is not None:
            if s.max_grad <= 0:
                continue  # a tensor that never gets a gradient needs no accumulator
            lsb_g = _pow2_ceil(s.max_grad) * 2.0 ** -(grad_bits - 1)
        else:
            if s.small_grad <= 0:
                continue
            lsb_g = 2.0 ** math.floor(math.log2(s.small_grad))
        rng = (
            weight_range
            if weight_range is not None
            else _pow2_ceil(max(2.0 * s.max_weight, 2.0**-30))
        )
        out[name] = accumulator_precision(lsb_g, lr_min, rng)
    return out
