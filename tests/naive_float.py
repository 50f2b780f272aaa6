"""Slow, obviously correct reference for float formats, on Fractions.

Follows ../shared/DESIGN.md ("Floating point") and hwsim.FloatingPoint's
docstring literally: round |x| on the grid of its binade (quantum
2^(max(e, emin) - man), with no upper exponent limit), then apply overflow
(IEEE 754 7.4 per mode, or saturate) and flush-to-zero.
"""

from __future__ import annotations

import math
from fractions import Fraction


def floor_log2(m: Fraction) -> int:
    """The e with 2^e <= m < 2^(e+1), for m > 0, exactly."""
    e = m.numerator.bit_length() - m.denominator.bit_length()
    if Fraction(2) ** e > m:
        e -= 1
    assert Fraction(2) ** e <= m < Fraction(2) ** (e + 1)
    return e


def ref_max(exp: int, man: int, inf: bool, nan: bool) -> Fraction:
    bias = (1 << (exp - 1)) - 1
    emax = bias if inf else bias + 1
    top = (1 << (man + 1)) - (2 if (not inf and nan) else 1)
    return top * Fraction(2) ** (emax - man)


def ref_float(
    x: float,
    exp: int,
    man: int,
    *,
    subnormals: bool = True,
    inf: bool = True,
    nan: bool = True,
    saturate: bool = False,
    rounding: str = "nearest",
    u: float = 0.0,
) -> float:
    """The value of float ``x`` in the format (a Python float; NaN for NaN)."""
    if not inf and not nan:
        saturate = True
    maxv = ref_max(exp, man, inf, nan)
    if math.isnan(x):
        if not nan:
            raise ValueError("NaN into a format without NaN")
        return x
    if math.isinf(x):
        if saturate:
            return math.copysign(float(maxv), x)
        return x if inf else math.copysign(math.nan, x)
    m = abs(Fraction(x))
    negative = math.copysign(1.0, x) < 0
    if m == 0:
        return x
    return ref_round(
        m,
        negative,
        exp,
        man,
        subnormals=subnormals,
        inf=inf,
        nan=nan,
        saturate=saturate,
        rounding=rounding,
        u=u,
    )


def ref_round(
    m: Fraction,
    negative: bool,
    exp: int,
    man: int,
    *,
    subnormals: bool = True,
    inf: bool = True,
    nan: bool = True,
    saturate: bool = False,
    rounding: str = "nearest",
    u: float = 0.0,
) -> float:
    """The value of the exact nonzero number (-1)^negative * m, m > 0, in the format."""
    if not inf and not nan:
        saturate = True
    maxv = ref_max(exp, man, inf, nan)
    sign = -1.0 if negative else 1.0
    emin = 2 - (1 << (exp - 1))
    q = max(floor_log2(m), emin) - man
    s = m / Fraction(2) ** q
    k = math.floor(s)
    frac = s - k
    if rounding == "nearest":
        # even = the code's last bit is 0; with man = 0 that bit is the
        # exponent field's (biased exponent q + bias of a normal k = 1)
        odd = k % 2 == 1 if man > 0 else (k == 1 and (q + (1 << (exp - 1)) - 1) % 2 == 1)
        up = frac > Fraction(1, 2) or (frac == Fraction(1, 2) and odd)
    elif rounding == "nearest_away":
        up = frac >= Fraction(1, 2)
    elif rounding == "zero":
        up = False
    elif rounding == "floor":
        up = negative and frac > 0
    elif rounding == "stochastic":
        up = Fraction(u) < frac
    else:
        raise ValueError(rounding)
    r = (k + up) * Fraction(2) ** q
    if r > maxv:
        if saturate or rounding == "zero" or (rounding == "floor" and not negative):
            r = maxv
        else:
            return math.copysign(math.inf if inf else math.nan, sign)
    elif not subnormals and r < Fraction(2) ** emin:
        r = Fraction(0)
    return math.copysign(float(r), sign)


def neighbours(x: float, exp: int, man: int, **flags) -> tuple[float, float]:
    """The two values stochastic rounding may give (round toward zero and
    away from zero); equal when x is on the grid."""
    lo = ref_float(x, exp, man, rounding="stochastic", u=0.9999999999999999, **flags)
    hi = ref_float(x, exp, man, rounding="stochastic", u=0.0, **flags)
    return lo, hi
