"""Slow, obviously correct references on Python integers and Fractions.

Kernels are tested against these (the stumpy ``tests/naive.py`` habit). They
follow ../shared/DESIGN.md, "Arithmetic semantics", literally.
"""

from __future__ import annotations

import math
from fractions import Fraction

TINY = 5e-324


def round_fraction(s: Fraction, rounding: str, u: float = 0.0) -> int:
    """Round the exact rational ``s`` (in LSB units) to an integer."""
    lo = math.floor(s)
    frac = s - lo
    if rounding == "nearest":
        if frac > Fraction(1, 2) or (frac == Fraction(1, 2) and lo % 2 == 1):
            return lo + 1
        return lo
    if rounding == "nearest_away":
        if frac > Fraction(1, 2) or (frac == Fraction(1, 2) and s > 0):
            return lo + 1
        return lo
    if rounding == "floor":
        return lo
    if rounding == "zero":
        return lo + 1 if (s < 0 and frac != 0) else lo
    if rounding == "stochastic":
        # up iff u < frac, frac taken as the nearest float64 (never 0 when frac > 0)
        frac_f = float(frac)
        if frac > 0 and frac_f == 0.0:
            frac_f = TINY
        return lo + 1 if u < frac_f else lo
    raise ValueError(rounding)


def overflow_code(code: int, wl: int, signed: bool, overflow: str) -> int:
    lo = -(1 << (wl - 1)) if signed else 0
    hi = (1 << (wl - 1)) - 1 if signed else (1 << wl) - 1
    if overflow == "saturate":
        return min(max(code, lo), hi)
    return (code - lo) % (1 << wl) + lo


def ref_code(
    x: float, wl: int, fl: int, signed: bool, rounding: str, overflow: str, u: float = 0.0
) -> int:
    """The code of float ``x`` in FixedPoint(wl, fl, signed)."""
    s = Fraction(x) * Fraction(2) ** fl
    return overflow_code(round_fraction(s, rounding, u), wl, signed, overflow)
