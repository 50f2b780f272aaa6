"""An analytical per-tensor precision for training a classifier, to set beside
what a precision search measures (``hwsim search``).

Each tensor's format comes from a rule evaluated on the float network:

- **weight** and **activation** (the layers' inputs): the fewest bits whose
  mismatch-probability bound ``Delta_A^2 E_A + Delta_W^2 E_W`` stays at or
  below ``target`` (Sakr et al., ICML 2017, :func:`~hwsim.theory.min_precision`;
  the feedforward criterion Sakr & Shanbhag, ICLR 2019 start from), over the
  power-of-two ranges that cover the largest magnitudes seen;
- **grad** (the weight gradient): range the power of two at or above the
  largest |gradient| measured, LSB the power of two at or below the
  ``quantile`` of the nonzero |gradient| values, so at most about that
  fraction of the gradients is smaller than one LSB. This is hwsim's rule,
  not the paper's gradient criteria (whose text was not available to check);
- **accumulator** (the forward MAC array): wide enough to hold every partial
  sum exactly: ``fl = fl_W + fl_A``, ``wl = B_W + B_A + ceil(log2 terms)``
  with ``terms`` the largest fan-in plus the bias, so it never rounds nor
  saturates: the upper end of what a narrower, rounding accumulator can do;
- **weight_accumulator** (the optimizer's master copy): the Sakr & Shanbhag
  2019 rule :func:`~hwsim.theory.accumulator_precision` from the grad LSB,
  the smallest learning rate and the weight range.

>>> import torch
>>> from hwsim.theory.per_tensor import per_tensor_precision
>>> torch.manual_seed(0) and None
>>> net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
>>> x, t = torch.randn(64, 8), torch.randint(0, 4, (64,))
>>> p = per_tensor_precision(net, x, torch.nn.functional.cross_entropy, [(x, t)],
...                          target=0.01, lr_min=0.01)
>>> p.mismatch_bound <= 0.01 and p.accumulator.fl == p.weight.fl + p.activation.fl
True
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable

from hwsim.formats import FixedPoint
from hwsim.theory.accumulator import accumulator_precision, measure_gradient_statistics
from hwsim.theory.noise_gain import min_precision, mismatch_bound, noise_gains


@dataclasses.dataclass(frozen=True)
class PerTensorPrecision:
    """The formats of :func:`per_tensor_precision` and the bound they meet."""

    weight: FixedPoint
    activation: FixedPoint
    grad: FixedPoint
    accumulator: FixedPoint
    weight_accumulator: FixedPoint
    mismatch_bound: float
    target: float

    def formats(self) -> dict[str, FixedPoint]:
        """Tensor name -> format."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), FixedPoint)
        }


def _log2_exact(x: float) -> int:
    m, e = math.frexp(x)
    if m != 0.5:
        raise ValueError(f"{x!r} is not a power of two")
    return e - 1


def _fixed(bits: int, lsb: float, signed: bool) -> FixedPoint:
    return FixedPoint(bits, -_log2_exact(lsb), signed=signed)


def _fan_in(model) -> int:
    from torch import nn

    terms = 0
    for m in model.modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            k = m.weight[0].numel()  # in_features, or in_channels/groups * kh * kw
            terms = max(terms, k + (1 if m.bias is not None else 0))
    return terms


def per_tensor_precision(
    model,
    inputs,
    loss_fn: Callable,
    batches: Iterable[tuple],
    *,
    target: float,
    lr_min: float,
    quantile: float = 0.1,
    max_bits: int = 32,
) -> PerTensorPrecision:
    """The analytical per-tensor formats of a trained float ``model`` (see the
    module docstring): noise gains on ``inputs`` (samples, ...), gradient
    statistics from ``loss_fn`` on ``batches`` of ``(inputs, targets)``,
    ``target`` the mismatch probability allowed (e.g. the accuracy tolerance),
    ``lr_min`` the smallest learning rate of the schedule."""
    gains = noise_gains(model, inputs)
    b_a, b_w = min_precision(gains, target, max_bits=max_bits)
    weight = _fixed(b_w, gains.lsb(b_w, "weight"), True)
    activation = _fixed(b_a, gains.lsb(b_a, "activation"), gains.activation_signed)
    stats = measure_gradient_statistics(model, loss_fn, batches, quantile=quantile)
    max_grad = max((s.max_grad for s in stats.values()), default=0.0)
    small = min((s.small_grad for s in stats.values() if s.small_grad > 0), default=0.0)
    if not (max_grad > 0 and small > 0):
        raise ValueError("every measured gradient is zero: no gradient format can be derived")
    g_range = 2.0 ** math.ceil(math.log2(max_grad))
    g_lsb = 2.0 ** math.floor(math.log2(small))
    grad = _fixed(_log2_exact(g_range) - _log2_exact(g_lsb) + 1, g_lsb, True)
    terms = _fan_in(model)
    accumulator = FixedPoint(
        b_w + b_a + max(0, math.ceil(math.log2(max(terms, 1)))), weight.fl + activation.fl
    )
    w_acc = accumulator_precision(grad, lr_min, gains.weight_range).format
    return PerTensorPrecision(
        weight=weight,
        activation=activation,
        grad=grad,
        accumulator=accumulator,
        weight_accumulator=w_acc,
        mismatch_bound=mismatch_bound(gains, b_a, b_w),
        target=target,
    )
