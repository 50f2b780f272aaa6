"""Scalar building blocks of the bit-true arithmetic, shared by every kernel.

This module is the single definition of rounding, overflow and counter-based
noise on the Numba side; ``hwsim.torch_path.core`` mirrors it op for op.

Semantics (see DESIGN.md, "Arithmetic semantics"):

- a value ``x`` is scaled to LSB units, ``s = x * 2^fl`` (exact in float64 but
  for underflow, handled below), rounded to an integral float, converted to an
  int64 code, and the format's overflow mode applied to the code;
- stochastic rounding rounds up iff ``u < s - floor(s)`` with ``u`` a uniform in
  [0, 1) that is a multiple of 2^-53 (both computed in float64);
- with ``wrap``, ``x`` is first reduced exactly with ``fmod(x, 2^(wl-fl))`` (a
  multiple of 2^wl LSBs; rounding commutes with it), so huge values wrap
  exactly instead of overflowing int64.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir as llvm_ir
from numba.core import types
from numba.extending import intrinsic

from hwsim.kernels.jit import kernel

# Rounding / Overflow integer values (hwsim.modes); kept as plain ints for Numba.
NEAREST, NEAREST_AWAY, FLOOR, ZERO, STOCHASTIC = 0, 1, 2, 3, 4
SATURATE, WRAP = 0, 1

TWO62 = 4611686018427387904.0  # 2^62: every code of a wl <= 62 format lies within it
TINY = 5e-324  # smallest subnormal

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_U30, _U27, _U31, _U11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_ONE = np.uint64(1)
INV_2_53 = 1.0 / 9007199254740992.0


@kernel
def counter_uniform(seed, index):
    """Uniform in [0, 1) (a multiple of 2^-53) from a 64-bit seed and an element
    index: SplitMix64 of ``seed + (index + 1) * golden``. Counter-based, so the
    noise of element i does not depend on threads, chunking or the backend."""
    z = np.uint64(seed) + (np.uint64(index) + _ONE) * _GOLDEN
    z = (z ^ (z >> _U30)) * _MIX1
    z = (z ^ (z >> _U27)) * _MIX2
    z = z ^ (z >> _U31)
    return float(z >> _U11) * INV_2_53


@kernel
def round_scaled(s, rounding, u):
    """Round ``s`` (a value in LSB units, float64) to an integral float64."""
    if rounding == NEAREST:
        return np.rint(s)
    elif rounding == NEAREST_AWAY:
        t = np.trunc(s)
        d = s - t  # exact
        if d >= 0.5:
            t += 1.0
        elif d <= -0.5:
            t -= 1.0
        return t
    elif rounding == FLOOR:
        return np.floor(s)
    elif rounding == ZERO:
        return np.trunc(s)
    else:
        f = np.floor(s)
        if u < s - f:
            f += 1.0
        return f


@kernel
def apply_overflow(code, min_code, max_code, overflow):
    """Bring an int64 code into [min_code, max_code]: clamp, or two's-complement
    wrap modulo (max_code - min_code + 1) = 2^wl."""
    if overflow == SATURATE:
        if code < min_code:
            return min_code
        if code > max_code:
            return max_code
        return code
    span = max_code - min_code + 1
    return ((code - min_code) & (span - 1)) + min_code


@kernel
def wrap_reduce(x, modulus):
    """fmod(x, modulus) for a power-of-two modulus, exactly (np.fmod in the loop
    blocks vectorization and costs ~15x). Keeps the sign of x."""
    a = abs(x)
    if a < modulus:
        return x
    if a >= modulus * 9007199254740992.0:  # |x| >= 2^53 modulus: a multiple of it
        return 0.0
    return x - modulus * np.trunc(x / modulus)  # exact: x / modulus is a power-of-two scaling


@kernel
def scale_value(x, scale, rounding):
    """``x * scale`` (a value into LSB units, ``scale`` = 2^fl). Where it
    underflows to 0 (only when fl < 0) the sign of the tiny product is kept for
    the two modes it matters to (the others round +-tiny and +-0 alike)."""
    s = x * scale
    if (rounding == FLOOR or rounding == STOCHASTIC) and s == 0.0 and x != 0.0:
        s = math.copysign(TINY, x)
    return s


@kernel
def round_value(x, scale, wrap_modulus, rounding, overflow, u):
    """Finite float64 ``x`` in LSB units, rounded to an integral float64; under
    wrap ``x`` is first reduced modulo the format's value span ``wrap_modulus``
    = 2^(wl - fl) (rounding commutes with that), so huge values cannot overflow."""
    if overflow == WRAP:
        x = wrap_reduce(x, wrap_modulus)
    return round_scaled(scale_value(x, scale, rounding), rounding, u)


@kernel
def value_to_code(x, scale, wrap_modulus, min_code, max_code, rounding, overflow, u):
    """The int64 code of finite float64 ``x`` in a format with LSB = 1/scale
    (any wl up to 62)."""
    r = round_value(x, scale, wrap_modulus, rounding, overflow, u)
    # clamp in float first so the int64 conversion cannot overflow
    if r > TWO62:
        r = TWO62
    elif r < -TWO62:
        r = -TWO62
    return apply_overflow(np.int64(r), min_code, max_code, overflow)


@kernel
def value_to_code_float(x, scale, wrap_modulus, min_code, max_code, rounding, overflow, u):
    """The same code as :func:`value_to_code`, as an integral float64, for
    formats with wl <= 52 (every code, and ``code - min_code``, is exact in
    float64); ``min_code``/``max_code`` as floats. No int64 round trip: the
    optimizer kernels chain several of these per element. Mirrors
    ``hwsim.torch_path.core.value_to_code_float``."""
    return overflow_code_float(
        round_value(x, scale, wrap_modulus, rounding, overflow, u), min_code, max_code, overflow
    )


@kernel
def scaled_to_code_float(s, min_code, max_code, rounding, overflow, u):
    """The code of finite ``s``, a value already in LSB units, as an integral
    float64 (wl <= 52). Mirrors ``hwsim.torch_path.core.scaled_to_code_float``."""
    if overflow == WRAP:
        s = wrap_reduce(s, max_code - min_code + 1.0)
    return overflow_code_float(round_scaled(s, rounding, u), min_code, max_code, overflow)


@kernel
def overflow_code_float(r, min_code, max_code, overflow):
    """:func:`apply_overflow` on an integral float64 ``r`` (wl <= 52): clamp, or
    wrap modulo 2^wl; every step is exact."""
    if overflow == SATURATE:
        return min(max(r, min_code), max_code)
    span = max_code - min_code + 1.0  # 2^wl
    m = r - min_code
    return m - span * np.floor(m / span) + min_code


@kernel
def shift_round_code(code, shift, rounding, u):
    """Round an integer code to a grid 2^shift times coarser (shift >= 0),
    exactly, in integers: floor division plus the rounding rule on the
    remainder. Returns the new code (no overflow applied). For stochastic
    rounding the remainder fraction is compared in float64 like round_scaled."""
    if shift <= 0:
        return code << (-shift)
    q = code >> shift  # floor
    rem = code - (q << shift)  # in [0, 2^shift)
    if rem == 0:
        return q
    half = np.int64(1) << (shift - 1)
    if rounding == FLOOR:
        return q
    elif rounding == ZERO:
        return q + 1 if code < 0 else q
    elif rounding == NEAREST:
        if rem > half or (rem == half and (q & 1) == 1):
            return q + 1
        return q
    elif rounding == NEAREST_AWAY:
        if rem > half or (rem == half and code > 0):
            return q + 1
        return q
    else:
        if u < rem / float(np.int64(1) << shift):
            return q + 1
        return q


@intrinsic
def float64_bits(typingctx, x):
    """The IEEE bit pattern of a float64 as an int64 (a bit cast: defined for
    every input, NaN and Inf included)."""
    if x != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvm_ir.IntType(64))

    return types.int64(types.float64), codegen


_WRAP_MAGIC = 6755399441055744.0  # 1.5 * 2^52


@kernel
def int32_wrapped(d):
    """The int32 of an integral float64 ``d`` modulo 2^32 (``np.int32(d)``
    where ``|d| < 2^31``), defined for every input: the low 32 bits of the
    mantissa of ``1.5 * 2^52 + d``, exact for ``|d| < 2^51``. For NaN, Inf or
    larger values it is some deterministic int32 (``np.int32(d)`` converts
    them to LLVM's poison), so adding and then subtracting it in int32
    restores the original exactly."""
    return np.int32(float64_bits(d + _WRAP_MAGIC))
