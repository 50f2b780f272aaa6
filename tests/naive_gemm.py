"""Slow, obviously correct MAC-array GEMM and conv on Python integers.

Follows DESIGN.md "MAC-array GEMM" literally, one output at a time, using the
rounding/overflow references of ``tests/naive.py``. Values are exact Fractions.
"""

from __future__ import annotations

from fractions import Fraction

from naive import overflow_code, round_fraction

from hwsim.kernels.scalar import counter_uniform


def cast(value: Fraction, fmt, rounding: str, overflow: str, u: float) -> Fraction:
    """Round an exact value onto ``fmt`` (a FixedPoint) and apply its overflow."""
    code = round_fraction(value * Fraction(2) ** fmt.fl, rounding, u)
    code = overflow_code(code, fmt.wl, fmt.signed, overflow)
    return Fraction(code) / Fraction(2) ** fmt.fl


def mac_gemm(a, b, accumulator, product=None, rounding="nearest", overflow="saturate", seed=0):
    """``a`` (Bt, M, K), ``b`` (Bt, K, N) nested lists or arrays of floats on some
    grid; returns a (Bt, M, N) nested list of accumulator codes. Stochastic
    uniforms: counter_uniform(seed, (2 k + stage) E + e) as documented."""
    bt, m, k = len(a), len(a[0]), len(a[0][0])
    n = len(b[0][0])
    total = bt * m * n
    out = []
    for bi in range(bt):
        rows = []
        for i in range(m):
            row = []
            for j in range(n):
                e = (bi * m + i) * n + j
                acc = Fraction(0)
                for kk in range(k):
                    t = Fraction(float(a[bi][i][kk])) * Fraction(float(b[bi][kk][j]))
                    if product is not None:
                        u = (
                            counter_uniform(seed, 2 * kk * total + e)
                            if rounding == "stochastic"
                            else 0.0
                        )
                        t = cast(t, product, rounding, overflow, u)
                    u = (
                        counter_uniform(seed, (2 * kk + 1) * total + e)
                        if rounding == "stochastic"
                        else 0.0
                    )
                    t = cast(t, accumulator, rounding, overflow, u)
                    # the sum is on the accumulator grid already: only overflow applies
                    acc = cast(acc + t, accumulator, "floor", overflow, 0.0)
                row.append(int(acc * Fraction(2) ** accumulator.fl))
            rows.append(row)
        out.append(rows)
    return out
