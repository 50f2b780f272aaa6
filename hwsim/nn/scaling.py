"""Delayed scaling state: the amax history a layer's quantizer keeps for each
tensor whose format is :class:`hwsim.formats.scaled.Scaled`.

Per call (Transformer Engine's ``DelayedScaling``, ``amax_compute_algo="max"``,
with a power-of-two scale): the scale exponent comes from the largest amax
among the last ``history`` calls (the current amax on the first call), the
tensor is cast with it (:func:`hwsim.ops.scaled_quantize.quantize_scaled`),
then the current amax joins the history. A layer keeps one history per tensor
and direction (input, weight, bias, output forward; their gradients backward),
created on first use and listed by ``layer.amax_histories``; they are not in
the layer's ``state_dict``.
"""

from __future__ import annotations

import collections

from hwsim.formats import parse_format
from hwsim.formats.scaled import Scaled, scale_exponent
from hwsim.ops.scaled_quantize import amax_of, quantize_scaled


class AmaxHistory:
    """The stateful quantizer of one tensor in a :class:`Scaled` format.

    >>> import torch
    >>> h = AmaxHistory(Scaled("fp8_e4m3", history=2))
    >>> [h(torch.tensor([v]), "nearest").item() for v in (400.0, 10.0, 10.0, 10.0)]
    [384.0, 10.0, 10.0, 10.0]
    >>> h.exponents  # 400 sets the scale 2^0 until it leaves the 2-call history
    [0, 0, 0, -5]
    """

    def __init__(self, fmt: Scaled) -> None:
        if not isinstance(fmt, Scaled):
            raise ValueError(f"AmaxHistory takes a hwsim Scaled format, got {fmt!r}")
        self.format = fmt
        self.amaxes: collections.deque[float] = collections.deque(maxlen=fmt.history)
        self.exponents: list[int] = []  # the exponent of every call, for telemetry and tests

    def __call__(self, x, rounding, seed=None, backend=None):
        amax = amax_of(x)
        exponent = scale_exponent(max(self.amaxes) if self.amaxes else amax, self.format)
        out = quantize_scaled(x, self.format, rounding, exponent=exponent, seed=seed,
                              backend=backend)  # fmt: skip
        self.amaxes.append(amax)
        self.exponents.append(exponent)
        return out

    def __repr__(self) -> str:
        return f"AmaxHistory({self.format}, amaxes={list(self.amaxes)})"


def as_format(value):
    """A layer quantizer's format: an :class:`AmaxHistory` as it is, else parsed."""
    return value if isinstance(value, AmaxHistory) else parse_format(value)


def stateful(layer, field: str, role: int, fmt):
    """``fmt``, or for a Scaled format the layer's history for (field, role)."""
    if not isinstance(fmt, Scaled):
        return fmt
    histories = layer.__dict__.setdefault("amax_histories", {})
    key = f"{field}/{role}"
    if key not in histories or histories[key].format != fmt:
        histories[key] = AmaxHistory(fmt)
    return histories[key]
