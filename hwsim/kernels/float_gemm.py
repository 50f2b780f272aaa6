"""The MAC-array GEMM with a floating-point accumulator: Numba kernels on the
IEEE bits of float64 (semantics: DESIGN.md, "Floating point"; README,
"Floating-point MAC arrays").

Per output (i, j), for k = 0, 1, ..., K-1 (one MAC unit per output)::

    t   = a_ik * b_kj                      exact in float64 (the caller checks)
    t   = round(t, product)                if a product format is given
    t   = round(t, accumulator)            the cast onto the accumulator
    acc = round(acc + t, accumulator)      one rounding of the exact sum

starting from acc = +0.0, as APyTypes' ``APyFloatAccumulatorContext`` does.

The exact sum ``x = acc + t`` of two float64 values is ``s + err`` (Knuth's
TwoSum: ``s`` the float64 sum, ``err`` exact; no overflow of finite inputs
except past 2^1024, handled as an overflow). When ``err == 0`` the one
quantizer (``quantize_value``) rounds ``s``. Otherwise ``|x|`` lies strictly
between two adjacent doubles ``B < |x| < B + ulp``, and every accumulator
grid point is a double, so the two grid neighbours of ``|x|`` are ``lo`` (the
grid point at or below ``B``) and ``hi = lo + q``. No tie can occur where the
grid is coarser than float64 (a midpoint is a double, so ``|x| > mid`` iff
``B >= mid``); where it is float64's own (``man = 52``, normal range) ``s`` is
already the round-to-nearest-even of ``x``. Stochastic rounding rounds up
iff ``u < (|x| - lo) / q``, decided exactly as ``u q - (|s| - lo) < e``
with ``e = |x| - |s|`` (both sides exact in float64). An exact zero sum is
+0, or -0 when both addends are -0 or (rounding ``floor``) either is
(IEEE 754 6.3). Inf - Inf gives the quiet NaN 0x7FF8... with the
accumulator's sign (as APyTypes; IEEE 754 leaves the sign open and x86
gives a negative one); a NaN accumulator stays that NaN, else a NaN term
becomes the accumulator. Overflow follows ``quantize_value`` (IEEE 754 7.4 per mode,
or the format's saturate flag).

Stochastic noise is counter noise indexed like the fixed-point MAC array's:
``counter_uniform(seed, (3 k + stage) * total + output index)`` with stage 0
the product, 1 the cast and 2 the addition. ``hwsim.torch_path.float_gemm``
mirrors every step on tensors.
"""

from __future__ import annotations

import functools

import numpy as np

from hwsim.kernels.float_quantize import (
    ABS_MASK,
    INF_BITS,
    SIGN_BIT,
    float64_from_bits,
    quantize_value,
)
from hwsim.kernels.jit import kernel, parallel_kernel, prange
from hwsim.kernels.scalar import (
    FLOOR,
    NEAREST_AWAY,
    STOCHASTIC,
    ZERO,
    counter_uniform,
    float64_bits,
)

QUIET_NAN = 0x7FF8000000000000  # the NaN of Inf - Inf, with the accumulator's sign


@kernel
def two_sum(a, b):
    """(s, err) with s = fl(a + b) and a + b = s + err exactly (Knuth)."""
    s = a + b
    bb = s - a
    err = (a - (s - bb)) + (b - bb)
    return s, err


@kernel
def grid_neighbours(b, p, wide):
    """(lo, hi) float64 bits of the accumulator grid points around a magnitude
    strictly between the doubles with bits ``b`` and ``b + 1``."""
    if b >= p.min_normal_bits:
        lo = b & p.keep_mask
        return lo, lo + (np.int64(1) << p.shift)
    s = float64_from_bits(b) * p.up_a
    if wide:
        s *= p.up_b
    k = np.floor(s)
    lo_v = k * p.down_a
    hi_v = (k + 1.0) * p.down_a
    if wide:
        lo_v *= p.down_b
        hi_v *= p.down_b
    return float64_bits(lo_v), float64_bits(hi_v)


@kernel
def add_round(acc, t, p, rounding, u, ftz, wide, man52):
    """``acc + t`` rounded once to the accumulator format (``p``: its
    ``FloatParams``); ``acc`` and ``t`` are values of the format."""
    s, err = two_sum(acc, t)
    if not (np.isfinite(acc) and np.isfinite(t)):  # IEEE Inf/NaN arithmetic, then the specials
        if acc != acc:  # NaN propagation, defined rather than left to the hardware
            return acc
        if t != t:
            return t
        if s != s:  # Inf - Inf
            return float64_from_bits(QUIET_NAN | (float64_bits(acc) & SIGN_BIT))
        return quantize_value(s, p, rounding, u, ftz, wide)
    sbits = float64_bits(s)
    a = sbits & ABS_MASK
    negative = s < 0
    if a == 0:  # an exact zero sum
        sa, st = float64_bits(acc) < 0, float64_bits(t) < 0
        minus = (sa & st) | ((rounding == FLOOR) & (sa | st))
        return -0.0 if minus else 0.0
    if a < INF_BITS and err == 0.0:
        return quantize_value(s, p, rounding, u, ftz, wide)
    r = a  # a finite sum past 2^1024: an overflow in every mode
    if a < INF_BITS:
        toward = (err < 0.0) != negative  # |x| < |s|
        e_abs = abs(err)
        b = a - 1 if toward else a  # B < |x| < B + ulp
        lo, hi = grid_neighbours(b, p, wide)
        lo_v = float64_from_bits(lo)
        q = float64_from_bits(hi) - lo_v  # exact: a power of two
        if rounding == ZERO:
            r = lo
        elif rounding == FLOOR:
            r = hi if negative else lo
        elif rounding == STOCHASTIC:
            e = -e_abs if toward else e_abs
            r = hi if u * q - (float64_from_bits(a) - lo_v) < e else lo
        elif man52 and b >= p.min_normal_bits:  # the grid is float64's: s is RNE(x)
            r = a
            if rounding == NEAREST_AWAY:
                ulp = float64_from_bits(b + 1) - float64_from_bits(b)
                r = b + 1 if e_abs == 0.5 * ulp else a
        else:  # never a tie: |x| > mid iff B >= mid
            r = hi if float64_from_bits(b) >= lo_v + 0.5 * q else lo
    if rounding == ZERO:
        big = p.max_bits
    elif rounding == FLOOR:
        big = p.max_bits if p.saturate | (not negative) else p.over_bits
    else:
        big = p.max_bits if p.saturate else p.over_bits
    r = big if r > p.max_bits else r
    if ftz:
        r = 0 if r < p.min_normal_bits else r
    return float64_from_bits(r | (sbits & SIGN_BIT))


@functools.cache
def float_gemm_kernel(rounding: int, has_product: bool):
    """kernel(A, B, out, product_params, acc_params, man52, seed) -> None.

    A (Bt, M, K), B (Bt, K, N), out (Bt, M, N): float64, C-contiguous;
    ``man52``: the accumulator has 52 mantissa bits. The formats' flags
    (``ftz``, ``wide``) are read at run time, so one compilation serves every
    format."""
    stochastic = rounding == STOCHASTIC

    @parallel_kernel
    def run(A, B, out, pp, ap, man52, seed):
        batches, rows, depth = A.shape
        cols = B.shape[2]
        total = batches * rows * cols
        for r in prange(batches * rows):
            bt = r // rows
            i = r - bt * rows
            acc = out[bt, i]
            for j in range(cols):
                acc[j] = 0.0
            base = r * cols
            for k in range(depth):
                a = A[bt, i, k]
                brow = B[bt, k]
                for j in range(cols):
                    t = a * brow[j]
                    u0 = u1 = u2 = 0.0
                    if stochastic:
                        u0 = counter_uniform(seed, 3 * k * total + base + j)
                        u1 = counter_uniform(seed, (3 * k + 1) * total + base + j)
                        u2 = counter_uniform(seed, (3 * k + 2) * total + base + j)
                    if has_product:
                        t = quantize_value(t, pp, rounding, u0, pp.ftz, pp.wide)
                    t = quantize_value(t, ap, rounding, u1, ap.ftz, ap.wide)
                    acc[j] = add_round(acc[j], t, ap, rounding, u2, ap.ftz, ap.wide, man52)

    return run


@functools.cache
def add_round_kernel(rounding: int):
    """kernel(acc, t, out, acc_params, man52, seed): ``out = round(acc + t)``
    elementwise (flat float64 arrays), the addition step of the MAC array on
    its own (a layer's bias added to the accumulator); noise
    ``counter_uniform(seed, i)``."""
    stochastic = rounding == STOCHASTIC

    @parallel_kernel
    def run(acc, t, out, ap, man52, seed):
        for i in prange(out.size):
            u = counter_uniform(seed, i) if stochastic else 0.0
            out[i] = add_round(acc[i], t[i], ap, rounding, u, ap.ftz, ap.wide, man52)

    return run
