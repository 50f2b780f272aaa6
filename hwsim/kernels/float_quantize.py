"""Floating-point quantization kernels: integer ops on the IEEE bits of float64.

Inputs are read as float64 (float32 widens exactly) and split at the target's
smallest normal, 2^emin:

- |x| >= 2^emin: the quantum is 2^(e - man) in x's binade 2^e, i.e. the low
  ``d = 52 - man`` bits of x's float64 magnitude bits ``a``. The rule is
  applied in integers by adding what carries out of those bits exactly when
  it rounds up (``2^(d-1) - 1 + last kept bit`` for ties to even) and then
  clearing them: a carry out of the mantissa moves into the exponent field,
  exactly as a rounded value crosses a binade. The last kept bit is the target
  code's (the mantissa's, or with ``man = 0`` the exponent field's), the one
  ties to even look at.
- |x| < 2^emin (subnormals): the quantum is the constant 2^(emin - man), so
  ``s = |x| 2^(man - emin)`` is exact in float64, is rounded to an integral
  float (``rint``, ``floor`` plus the rule on ``s - floor(s)``) and scaled back.

Above ``max`` the top binade's grid continues, so overflow is decided on the
rounded magnitude: IEEE 754 7.4 per mode, or ``saturate``. A format without
subnormals flushes a result below 2^emin to a zero of its sign (FTZ). Both
regions and every special case are computed and then selected, so the loop has
no branches and vectorizes.

Stochastic rounding rounds the magnitude up iff ``u < frac``, the dropped part
in quanta (``rem 2^-d``, or ``s - floor(s)``), exact in float64; ``u`` comes
from the counter stream (``counter_uniform``, as for fixed point) or a noise
array. ``hwsim.torch_path.float_quantize`` mirrors these steps op for op.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
from llvmlite import ir as llvm_ir
from numba.core import types
from numba.extending import intrinsic

from hwsim.errors import NonFiniteError
from hwsim.formats import _FLOAT_TRAITS, FloatingPoint
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
SIGN_BIT = -0x8000000000000000  # as int64
INF_BITS = 0x7FF0000000000000


class FloatParams(NamedTuple):
    """The scalars both backends take for a format (see the module docstring)."""

    shift: int  # d = 52 - man: float64 mantissa bits below the target's
    half: int  # 2^(d-1) (0 when d = 0)
    half_minus_one: int  # 2^(d-1) - 1 (0 when d = 0)
    last_bit: int  # 1, or 0 when d = 0 (no bit is dropped)
    drop_mask: int  # 2^d - 1: the dropped bits
    keep_mask: int  # ~drop_mask
    min_normal_bits: int  # float64 bits of 2^emin
    up_a: float  # 2^(man - emin) = up_a * up_b, each a finite float64
    up_b: float
    down_a: float  # 2^(emin - man) = down_a * down_b, down_a normal
    down_b: float
    inv_quantum: float  # 2^-d
    max_value: float
    max_bits: int
    min_normal: float
    ftz: bool
    wide: bool  # up_b or down_b is not 1 (man - emin > 1022: fp64-sized formats)
    saturate: bool
    over: float  # |result| of an overflow away from zero: Inf, NaN or max
    over_bits: int
    inf_out: float  # |result| of an Inf input
    inf_out_bits: int
    has_nan: bool


def float_params(fmt: FloatingPoint) -> FloatParams:
    d = 52 - fmt.man
    k = fmt.man - fmt.emin  # <= 1074
    up_a = min(k, 1023)
    down_a = max(-k, -1022)
    if fmt.saturate:
        over = inf_out = fmt.max
    else:
        over = inf_out = math.inf if fmt.inf else math.nan
    return FloatParams(
        shift=d,
        half=(1 << d) >> 1,
        half_minus_one=max(((1 << d) >> 1) - 1, 0),
        last_bit=int(d > 0),
        drop_mask=(1 << d) - 1,
        keep_mask=~((1 << d) - 1),
        min_normal_bits=(fmt.emin + 1023) << 52,
        up_a=math.ldexp(1.0, up_a),
        up_b=math.ldexp(1.0, k - up_a),
        down_a=math.ldexp(1.0, down_a),
        down_b=math.ldexp(1.0, -k - down_a),
        inv_quantum=math.ldexp(1.0, -d),
        max_value=fmt.max,
        max_bits=_bits(fmt.max),
        min_normal=fmt.min_normal,
        ftz=not fmt.subnormals,
        wide=k > 1022,
        saturate=fmt.saturate,
        over=over,
        over_bits=_bits(over),
        inf_out=inf_out,
        inf_out_bits=_bits(inf_out),
        has_nan=fmt.nan,
    )


def _bits(value: float) -> int:
    """The float64 bit pattern of a non-negative value (NaN: the quiet NaN)."""
    return int(np.array(value, dtype=np.float64).view(np.int64)) & ABS_MASK


@intrinsic
def float64_from_bits(typingctx, bits):
    """The float64 whose IEEE bit pattern is the int64 ``bits`` (a bit cast)."""
    if bits != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvm_ir.DoubleType())

    return types.float64(types.int64), codegen


@kernel
def normal_bits(a, negative, p, rounding, u):
    """Magnitude bits ``a`` (of |v| >= 2^emin) rounded at bit d = p.shift:
    add what carries exactly when the rule rounds up, then clear the d bits."""
    if rounding == NEAREST:  # carries iff rem > half, or rem == half and the kept part is odd
        return (a + p.half_minus_one + ((a >> p.shift) & p.last_bit)) & p.keep_mask
    elif rounding == NEAREST_AWAY:  # carries iff rem >= half
        return (a + p.half) & p.keep_mask
    elif rounding == ZERO:
        return a & p.keep_mask
    elif rounding == FLOOR:  # a negative value's magnitude carries iff rem != 0
        return (a + (p.drop_mask if negative else 0)) & p.keep_mask
    frac = float(a & p.drop_mask) * p.inv_quantum  # exact: rem < 2^52
    return (a & p.keep_mask) + (np.int64(u < frac) << p.shift)


@kernel
def subnormal_value(v, negative, p, rounding, u, wide):
    """|v| < 2^emin rounded on the grid of 2^(emin - man): s = |v| / quantum is
    exact in float64 and rounded to an integral float. ``wide``: the scale
    factors need two float64 steps each."""
    s = abs(v) * p.up_a
    if wide:
        s *= p.up_b
    if rounding == NEAREST:
        k = np.rint(s)  # ties to even: the code's last bit
    else:
        k = np.floor(s)
        frac = s - k  # exact
        if rounding == NEAREST_AWAY:
            k += np.float64(frac >= 0.5)
        elif rounding == FLOOR:
            k += np.float64(negative & (frac != 0.0))
        elif rounding != ZERO:
            k += np.float64(u < frac)
    k *= p.down_a
    if wide:
        k *= p.down_b
    return k


@kernel
def quantize_value(v, p, rounding, u, ftz, wide):
    """The float format's value of float64 ``v`` (NaN passes through); ``p``
    is the format's :class:`FloatParams`. Overflow, FTZ and the specials are
    selected on the magnitude's bits, and the sign is or-ed back last."""
    bits = float64_bits(v)
    a = bits & ABS_MASK
    negative = v < 0
    normal = normal_bits(a, negative, p, rounding, u)
    sub = float64_bits(subnormal_value(v, negative, p, rounding, u, wide))
    r = normal if a >= p.min_normal_bits else sub
    # IEEE 754 7.4: rounding toward zero (zero; floor of a positive value)
    # overflows to the largest finite value, the other modes to infinity
    if rounding == ZERO:
        big = p.max_bits
    elif rounding == FLOOR:
        big = p.max_bits if p.saturate | (v > 0) else p.over_bits
    else:
        big = p.max_bits if p.saturate else p.over_bits
    r = big if r > p.max_bits else r
    if ftz:
        r = 0 if r < p.min_normal_bits else r
    special = p.inf_out_bits if a == INF_BITS else a  # NaN: its own bits
    r = special if a >= INF_BITS else r
    return float64_from_bits(r | (bits & SIGN_BIT))


@functools.cache
def float_quantize_kernel(rounding: int, noise_mode: int, ftz: bool, wide: bool, has_nan: bool):
    """kernel(x, out, params, noise, seed) -> how many NaN inputs met a format
    without NaN (their outputs are left NaN; the caller raises). The flags are
    the format's (``FloatParams``), compiled in as constants."""

    @parallel_kernel
    def run(x, out, p, noise, seed):
        bad = 0
        for i in prange(x.size):
            v = np.float64(x[i])
            u = 0.0
            if noise_mode == NOISE_ARRAY:
                u = noise[i]
            elif noise_mode == NOISE_SEED:
                u = counter_uniform(seed, i)
            if not has_nan:
                bad += np.int64(v != v)
            out[i] = quantize_value(v, p, rounding, u, ftz, wide)
        return bad

    return run


def check_representable(fmt: FloatingPoint, dtype) -> None:
    """Raise unless every value of ``fmt`` is exact in the float ``dtype``."""
    if not fmt.representable_in(dtype):
        man = _FLOAT_TRAITS[str(dtype).replace("torch.", "")][0] - 1
        raise ValueError(
            f"floating-point format {fmt} is not exactly representable in {dtype}: the format "
            f"needs man <= {man} (the dtype's) and its exponent range, subnormals "
            f"included, inside the dtype's; quantize a wider array (e.g. float64)"
        )


def raise_nan(isnan: np.ndarray, fmt: FloatingPoint) -> None:
    """NonFiniteError for NaN inputs (``isnan``, a bool array of the input's
    shape) to a format with no NaN code."""
    flat = isnan.reshape(-1)
    count = int(np.count_nonzero(flat))
    first = np.unravel_index(int(np.flatnonzero(flat)[0]), isnan.shape) if isnan.ndim else ()
    err = NonFiniteError(count, first, isnan.shape)
    err.args = (
        f"input holds {count} NaN value(s) (shape {isnan.shape}; the first at index "
        f"{tuple(int(i) for i in first)}), and {fmt} has no NaN code (OCP MX element types "
        f"have none); +-Inf saturates to +-{fmt.max}",
    )
    raise err
