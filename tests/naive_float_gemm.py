"""Slow, obviously correct reference of the float MAC array, on Fractions.

Follows the README ("Floating-point MAC arrays") literally: for each output,
acc = +0; for k = 0 .. K-1: the exact product, rounded to the product format
(if any), then to the accumulator format, then the exact sum acc + t rounded
once to the accumulator format. An exact zero sum is -0 when both addends
are -0, or under ``floor`` when either is (IEEE 754 6.3); Inf and NaN follow
IEEE arithmetic, then the format's specials; Inf - Inf is the quiet NaN
with the accumulator's sign (as APyTypes); a NaN accumulator stays,
else a NaN term is taken.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np
from naive_float import ref_float, ref_round

from hwsim.formats import FloatingPoint
from hwsim.kernels.scalar import counter_uniform


def flags(fmt: FloatingPoint) -> dict:
    d = dataclasses.asdict(fmt)
    return {k: d[k] for k in ("subnormals", "inf", "nan", "saturate")}


def ref_add(acc: float, t: float, fmt: FloatingPoint, rounding: str, u: float) -> float:
    if math.isnan(acc):
        return acc
    if math.isnan(t):
        return t
    if math.isnan(acc + t):
        return math.copysign(math.nan, acc)  # Inf - Inf: the accumulator's sign
    if not (math.isfinite(acc) and math.isfinite(t)):
        return ref_float(acc + t, fmt.exp, fmt.man, rounding=rounding, u=u, **flags(fmt))
    x = Fraction(acc) + Fraction(t)
    if x == 0:
        sa, st = math.copysign(1, acc) < 0, math.copysign(1, t) < 0
        minus = (sa and st) or (rounding == "floor" and (sa or st))
        return -0.0 if minus else 0.0
    return ref_round(abs(x), x < 0, fmt.exp, fmt.man, rounding=rounding, u=u, **flags(fmt))


def ref_float_matmul(a, b, acc: FloatingPoint, product, rounding: str, seed: int = 0):
    """(Bt, M, K) @ (Bt, K, N) float64 NumPy arrays -> float64 (Bt, M, N)."""
    bt, m, k = a.shape
    n = b.shape[2]
    total = bt * m * n
    out = np.empty((bt, m, n))

    def u(kk, stage, index):
        if rounding != "stochastic":
            return 0.0
        return counter_uniform(np.uint64(seed), (3 * kk + stage) * total + index)

    for x in range(bt):
        for i in range(m):
            for j in range(n):
                index = (x * m + i) * n + j
                s = 0.0
                for kk in range(k):
                    t = float(a[x, i, kk]) * float(b[x, kk, j])
                    assert Fraction(t) == Fraction(a[x, i, kk]) * Fraction(b[x, kk, j])
                    if product is not None:
                        t = ref_float(
                            t,
                            product.exp,
                            product.man,
                            rounding=rounding,
                            u=u(kk, 0, index),
                            **flags(product),
                        )
                    t = ref_float(
                        t, acc.exp, acc.man, rounding=rounding, u=u(kk, 1, index), **flags(acc)
                    )
                    s = ref_add(s, t, acc, rounding, u(kk, 2, index))
                out[x, i, j] = s
    return out
