"""``Scaled``: per-tensor scaling as FP8 training uses it, with delayed scaling.

A tensor is cast as ``element(x / X) * X`` with one power-of-two scale
``X = 2^s`` per tensor: the smallest ``s`` with ``amax <= element.max * 2^s``
for a reference ``amax`` (so the reference amax maps into the element's range
without clipping: Transformer Engine's ``scale = fp8_max / amax`` with margin
0, rounded to a power of two), clamped to [-127, 127]; a reference amax of 0
takes -127. Elements saturate (a float element is stored as its ``_sat``
variant, a fixed-point one always saturates): values above ``element.max * X``
clip. (MX's rule ``floor(log2 amax) - emax`` instead may clip the amax itself,
e.g. 500 to 448 in E4M3; ``MX(element, block=None)`` gives that.)

Which amax: **delayed scaling** (Transformer Engine's ``DelayedScaling`` with
``amax_compute_algo="max"``): a quantizer with state (the layers of
:mod:`hwsim.nn` keep one per tensor, :class:`hwsim.nn.AmaxHistory`) scales by
the largest amax of its last ``history`` calls, then records the current
amax; its first call, with no history yet, uses the current amax. The power
of two keeps the cast exact and the same on every backend.

The stateless :func:`hwsim.quantize` has no history: it scales by the
current amax. NaN or Inf input raises ``NonFiniteError`` (no amax).

>>> f = Scaled("fp8_e4m3", history=16)
>>> str(f), Scaled.parse("scaled_fp8_e4m3_h4") == Scaled("fp8_e4m3", 4)
('scaled_fp8_e4m3', True)
>>> scale_exponent(448.0, f), scale_exponent(500.0, f), scale_exponent(0.0, f)
(0, 1, -127)
"""

from __future__ import annotations

import dataclasses
import math
import re

from hwsim.formats import FixedPoint, FloatingPoint
from hwsim.formats.block import element_emax, element_type

DEFAULT_HISTORY = 16
_INT_ELEMENTS = {"int8": FixedPoint(8, 6)}  # as MXINT8: emax 0


@dataclasses.dataclass(frozen=True, slots=True, init=False)
class Scaled:
    """Per-tensor power-of-two scaling of ``element`` (a FloatingPoint, a signed
    FixedPoint, or a name: ``"fp8_e4m3"``, ``"fp8_e5m2"``, ``"int8"`` =
    ``fx8.6``, ``"fx8.6"``), the scale from the max of the last ``history``
    amaxes in a stateful quantizer (see the module docstring).

    Names: ``scaled_<element>`` (history 16), ``scaled_<element>_h<N>``."""

    element: FloatingPoint | FixedPoint
    history: int

    def __init__(self, element, history: int = DEFAULT_HISTORY) -> None:
        element = element_type(element, _INT_ELEMENTS, "a scaled", "'fp8_e4m3', 'int8', 'fx8.6'")
        if isinstance(history, bool) or not hasattr(history, "__index__") or int(history) < 1:
            raise ValueError(
                f"history must be an integer >= 1 (how many past amaxes the delayed scale "
                f"takes the max of), got {history!r}"
            )
        object.__setattr__(self, "element", element)
        object.__setattr__(self, "history", int(history))

    @property
    def emax_element(self) -> int:
        """Exponent of the element type's largest binade (FixedPoint: of its top bit)."""
        return element_emax(self.element)

    @property
    def bits(self) -> int:
        return self.element.bits

    def __str__(self) -> str:
        name = "int8" if self.element == _INT_ELEMENTS["int8"] else str(self.element)
        name = name.removesuffix("_sat")  # elements always saturate
        suffix = "" if self.history == DEFAULT_HISTORY else f"_h{self.history}"
        return f"scaled_{name}{suffix}"

    def __repr__(self) -> str:
        return f"Scaled(element={str(self.element)!r}, history={self.history})"

    @classmethod
    def parse(cls, text: str) -> Scaled:
        """Parse ``scaled_fp8_e4m3``, ``scaled_fp8_e5m2_h1024``, ``scaled_int8_h1``."""
        if not isinstance(text, str):
            raise ValueError(f"a scaled format name is needed, got {text!r}")
        m = re.fullmatch(r"scaled_(?P<element>.+?)(?:_h(?P<history>\d+))?", text.strip().lower())
        if not m:
            raise ValueError(
                f"cannot parse scaled format {text!r}: write 'scaled_<element>' or "
                f"'scaled_<element>_h<history>' (e.g. 'scaled_fp8_e4m3', 'scaled_int8_h16')"
            )
        history = int(m.group("history")) if m.group("history") else DEFAULT_HISTORY
        try:
            return cls(m.group("element"), history)
        except ValueError as err:
            raise ValueError(f"cannot parse scaled format {text!r}: {err}") from None


def scale_exponent(amax: float, fmt: Scaled) -> int:
    """``s`` of the scale ``2^s`` for a reference amax: the smallest ``s`` with
    ``amax <= element.max * 2^s``, clamped to [-127, 127] (amax 0: -127)."""
    if not math.isfinite(amax) or amax < 0:
        raise ValueError(f"amax must be a finite number >= 0, got {amax!r}")
    if amax == 0:
        return -127
    top = fmt.element.max
    s = math.frexp(amax)[1] - math.frexp(top)[1]  # within one of the answer
    while s > -127 and amax <= math.ldexp(top, s - 1):  # exact comparisons
        s -= 1
    while s < 127 and amax > math.ldexp(top, s):
        s += 1
    return max(-127, min(127, s))


def is_scaled_format_name(text: str) -> bool:
    return text.strip().lower().startswith("scaled_")
