"""Floating-point quantization kernels: integer ops on the IEEE bits of float64.

Each input (float32 inputs widen exactly) is split into its bits: sign,
significand ``sig`` and the exponent ``ex`` of its last bit, so |x| = sig 2^ex.
The target's quantum in the value's binade is 2^q with
``q = max(floor(log2|x|), emin) - man``; the ``d = q - ex`` low bits of ``sig``
are dropped, the rounding rule applied to the remainder in integers, and the
magnitude is ``keep * 2^q`` (exact: a small integer times a power of two).
Above ``max`` the grid of the top binade continues, so overflow is decided on
the rounded magnitude; below ``min_normal`` the quantum stays 2^(emin - man)
(subnormals) and a format without subnormals flushes such a result to a zero
of its sign.

Ties to even pick the neighbour whose code is even; with ``man = 0`` that is
the one with an even exponent field (P3109, gfloat; IEEE 754 leaves it open).

Stochastic rounding rounds the magnitude up iff ``u < frac``, where ``frac`` is
the dropped part in quanta, ``rem 2^-d``, exact in float64; ``u`` comes from
the counter stream (``counter_uniform``, as for fixed point) or a noise array.

``hwsim.torch_path.float_quantize`` mirrors these steps op for op.
"""

from __future__ import annotations

import functools

import numpy as np
from llvmlite import ir as llvm_ir
from numba.core import types
from numba.extending import intrinsic

from hwsim.kernels.jit import kernel, parallel_kernel, prange
from hwsim.kernels.scalar import (
    FLOOR,
    NEAREST,
    NEAREST_AWAY,
    ZERO,
    counter_uniform,
    float64_bits,
)

NOISE_NONE, NOISE_ARRAY, NOISE_SEED = 0, 1, 2

ABS_MASK = 0x7FFFFFFFFFFFFFFF
MAN52 = (1 << 52) - 1
INF_BITS = 0x7FF0000000000000
MAX_SHIFT = 62  # d is clamped here: sig < 2^53, so any d >= 54 drops every bit alike


@intrinsic
def float64_from_bits(typingctx, bits):
    """The float64 whose IEEE bit pattern is the int64 ``bits`` (a bit cast)."""
    if bits != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvm_ir.DoubleType())

    return types.float64(types.int64), codegen


@kernel
def pow2(k):
    """2.0^k for an integer k in [-1022, 1023] (a normal float64), from its bits."""
    return float64_from_bits(np.int64(k + 1023) << np.int64(52))


@kernel
def round_magnitude(v, man, emin, rounding, u):
    """|v| (finite float64) rounded onto the grid of a format with ``man``
    mantissa bits and smallest normal exponent ``emin``, with no upper exponent
    limit; the direction of ``floor`` follows the sign of v."""
    a = float64_bits(v) & ABS_MASK
    e = a >> 52
    sig = a & MAN52
    if e > 0:
        sig |= np.int64(1) << 52
    ex = max(e, 1) - 1075
    q = max(e - 1023, emin) - man
    d = q - ex  # >= 0: the target has at most 52 mantissa bits and emin >= -1022
    ds = min(d, MAX_SHIFT)
    keep = sig >> ds
    rem = sig - (keep << ds)
    half = (np.int64(1) << ds) >> 1
    if rounding == NEAREST:
        # "even" is the code's last bit: the mantissa's, or with man = 0 the
        # exponent field's (P3109, gfloat); keep is 0 or 1 then
        odd = (keep & 1) == 1 and (man > 0 or ((q + 1 - emin) & 1) == 1)
        up = rem != 0 and (rem > half or (rem == half and odd))
    elif rounding == NEAREST_AWAY:
        up = rem != 0 and rem >= half
    elif rounding == ZERO:
        up = False
    elif rounding == FLOOR:
        up = rem != 0 and v < 0
    else:
        # rem 2^-d in two exact steps (d may reach 1074)
        up = u < float(rem) * pow2(-ds) * pow2(ds - d)
    if up:
        keep += 1
    qa = max(q, -1022)
    return float(keep) * pow2(qa) * pow2(q - qa)  # the second factor scales into subnormals


@kernel
def quantize_value(v, man, emin, max_value, min_normal, ftz, saturate, over, inf_out, rounding, u):
    """The float format's value of float64 ``v`` (NaN passes through).

    ``over`` is the magnitude an overflow rounded away from zero gives (Inf, or
    NaN without Inf); ``inf_out`` the one of an Inf input."""
    a = float64_bits(v) & ABS_MASK
    if a >= INF_BITS:
        if a > INF_BITS:
            return v
        return np.copysign(inf_out, v)
    r = round_magnitude(v, man, emin, rounding, u)
    if r > max_value:
        # IEEE 754 7.4: rounding toward zero (zero; floor of a positive value)
        # overflows to the largest finite value, the other modes to infinity
        if saturate or rounding == ZERO or (rounding == FLOOR and v > 0):
            r = max_value
        else:
            r = over
    elif ftz and r < min_normal:
        r = 0.0
    return np.copysign(r, v)


@functools.cache
def float_quantize_kernel(rounding: int, noise_mode: int):
    """kernel(x, out, man, emin, max_value, min_normal, ftz, saturate, over,
    inf_out, has_nan, noise, seed) -> number of NaN inputs when not has_nan."""

    @parallel_kernel
    def run(
        x, out, man, emin, max_value, min_normal, ftz, saturate, over, inf_out, has_nan, noise, seed
    ):
        bad = 0
        for i in prange(x.size):
            v = np.float64(x[i])
            u = 0.0
            if noise_mode == NOISE_ARRAY:
                u = noise[i]
            elif noise_mode == NOISE_SEED:
                u = counter_uniform(seed, i)
            if not has_nan and v != v:
                bad += 1
            out[i] = quantize_value(
                v, man, emin, max_value, min_normal, ftz, saturate, over, inf_out, rounding, u
            )
        return bad

    return run
