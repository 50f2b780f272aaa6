"""The per-element stages of the fused optimizer step (:func:`hwsim.optim.
fused_kernel.step_kernel` runs them): gradient format, rule input, update
format, accumulator grid and overflow, weight format.

Every mode is a bit field of one int, ``modes``, built by ``step_kernel``'s
factory and held as a compile-time constant of the kernel's closure: once
the calls are inlined, each field's shift and mask fold to a constant, so the
mode branches fold away and the loop vectorizes, as they do with one argument
per mode (tuples of modes measured 20x slower: their branches do not fold).
The float constants come as tuples: ``k`` (update, delta, weight), the four
formats ``fmts`` (grad, update, accumulator, weight: each
:func:`~hwsim.optim.fused_kernel.format_constants`) and the four ``seeds``.
"""

from __future__ import annotations

import numpy as np

from hwsim.kernels.jit import kernel
from hwsim.kernels.scalar import (
    SATURATE,
    STOCHASTIC,
    counter_uniform,
    int32_wrapped,
    overflow_code_float,
    round_scaled,
    scale_value,
    scaled_to_code_float,
    value_to_code_float,
)

NO_FORMAT = -1  # the rounding of a stage that has no format
CLAMP_NONE, CLAMP_LOW, CLAMP_HIGH, CLAMP_BOTH = 0, 1, 2, 3  # which limits of a code can be reached

# the bit fields of ``modes``: a stage's rounding is stored plus one (0: NO_FORMAT)
SIGN = 0  # 1 bit: the input is the gradient's sign (signSGD)
GRAD_ROUNDING, UPDATE_ROUNDING, ACC_ROUNDING, WEIGHT_ROUNDING = 1, 4, 7, 10  # 3 bits each
OVERFLOW = 13  # 1 bit: the overflow mode (SATURATE, WRAP)
GRAD_OVERFLOW, DELTA_OVERFLOW = 14, 15  # 1 bit each: the overflow step applies
ACC_OVERFLOW, WEIGHT_OVERFLOW = 16, 18  # 2 bits each: the sides clamped (CLAMP_*)
INT32_OUT = 20  # 1 bit: the output written through int32 codes (see step_kernel)
INT_ADD = 21  # 1 bit: int32 accumulator codes, added without an overflow step
F32_WEIGHT = 22  # 1 bit: besides, the weight code computed in float32


@kernel
def field(modes, shift, mask):
    """The bit field of ``modes`` at ``shift`` (``mask``: its width's ones)."""
    return (modes >> shift) & mask


@kernel
def rounding_of(modes, shift):
    """The rounding of the stage whose field is at ``shift`` (``NO_FORMAT``: none)."""
    return ((modes >> shift) & 7) - 1


@kernel
def unpack(c, s):
    """The kernel's tuples, from its float64 ``constants`` array ``c`` and
    int64 ``seeds`` array ``s``: ``k``, the 4 formats, the 4 seeds."""
    k = (c[0], c[1], c[2])
    fmts = (
        (c[3], c[4], c[5], c[6], c[7]),
        (c[8], c[9], c[10], c[11], c[12]),
        (c[13], c[14], c[15], c[16], c[17]),
        (c[18], c[19], c[20], c[21], c[22]),
    )
    return k, fmts, (s[0], s[1], s[2], s[3])


@kernel
def update_code(x, i, k, fmts, seeds, modes):
    """(the update, its code on the accumulator grid) of source element ``x``
    at flat index ``i``. ``modes`` is a compile-time constant of the caller:
    once inlined, the branches fold away."""
    grad_fmt, update_fmt, acc_fmt = fmts[0], fmts[1], fmts[2]
    grad_rounding = rounding_of(modes, GRAD_ROUNDING)
    update_rounding = rounding_of(modes, UPDATE_ROUNDING)
    acc_rounding = rounding_of(modes, ACC_ROUNDING)
    overflow = field(modes, OVERFLOW, 1)
    sign = field(modes, SIGN, 1)
    has_grad = grad_rounding != NO_FORMAT
    if has_grad:
        u = counter_uniform(seeds[0], i) if grad_rounding == STOCHASTIC else 0.0
        if field(modes, GRAD_OVERFLOW, 1):
            x = value_to_code_float(
                x, grad_fmt[0], grad_fmt[2], grad_fmt[3], grad_fmt[4], grad_rounding, overflow, u
            )
        else:
            x = round_scaled(scale_value(x, grad_fmt[0], grad_rounding), grad_rounding, u)
    if sign:
        x = np.sign(x)
    v = x * k[0]  # the update (unused, and compiled out, where merged and not sampled)
    if update_rounding != NO_FORMAT:
        u = counter_uniform(seeds[1], i) if update_rounding == STOCHASTIC else 0.0
        f = update_fmt
        s = value_to_code_float(v, f[0], f[2], f[3], f[4], update_rounding, overflow, u) * k[1]
    elif has_grad or sign:
        # the input is an integer (a code, or a sign): the update's scalings merge
        # into one multiplication (exact: see FusedStep.plan)
        s = x * k[1]
    else:
        s = scale_value(v, k[1], acc_rounding)
    u = counter_uniform(seeds[2], i) if acc_rounding == STOCHASTIC else 0.0
    if field(modes, DELTA_OVERFLOW, 1):
        return v, scaled_to_code_float(s, acc_fmt[3], acc_fmt[4], acc_rounding, overflow, u)
    return v, round_scaled(s, acc_rounding, u)


@kernel
def weight_code_unclamped(a, i, k_weight, seeds, weight_rounding):
    """The weight code of accumulator code ``a`` at flat index ``i``, before
    its overflow step: ``a * k_weight`` (a power of two) rounded, an integral
    float of ``a``'s type (float32 where the caller has checked that ``a``
    and the product are exact in it)."""
    u = counter_uniform(seeds[3], i) if weight_rounding == STOCHASTIC else 0.0
    return round_scaled(a * k_weight, weight_rounding, u)


@kernel
def clamp_sides(code, min_code, max_code, sides):
    """Saturate ``code`` on the reachable sides (``CLAMP_*``); any numeric type."""
    if sides == CLAMP_LOW or sides == CLAMP_BOTH:
        code = max(code, min_code)
    if sides == CLAMP_HIGH or sides == CLAMP_BOTH:
        code = min(code, max_code)
    return code


@kernel
def overflow_sides(code, min_code, max_code, overflow, sides):
    """The overflow step of an integral float64 ``code`` that can reach only
    the limits ``sides`` (``CLAMP_*``): none, a clamp on those sides, or a wrap."""
    if sides == CLAMP_NONE:
        return code
    if overflow == SATURATE:
        return clamp_sides(code, min_code, max_code, sides)
    return overflow_code_float(code, min_code, max_code, overflow)


@kernel
def weight_code(a, i, k, weight_fmt, seeds, modes):
    """The weight code of accumulator code ``a`` at flat index ``i`` (modes as
    in :func:`update_code`)."""
    weight_rounding = rounding_of(modes, WEIGHT_ROUNDING)
    overflow = field(modes, OVERFLOW, 1)
    weight_overflow = field(modes, WEIGHT_OVERFLOW, 3)
    if weight_overflow == CLAMP_BOTH and overflow != SATURATE:
        u = counter_uniform(seeds[3], i) if weight_rounding == STOCHASTIC else 0.0
        return scaled_to_code_float(
            np.float64(a) * k[2], weight_fmt[3], weight_fmt[4], weight_rounding, overflow, u
        )
    return clamp_sides(
        weight_code_unclamped(np.float64(a), i, k[2], seeds, weight_rounding),
        weight_fmt[3],
        weight_fmt[4],
        weight_overflow,
    )


@kernel
def parameter_value(a, i, k, fmts, seeds, modes):
    """The new value of the parameter from accumulator code ``a`` (``modes``:
    a compile-time constant of the caller). ``INT32_OUT``: a float32
    parameter written as ``float32(int32(code)) * float32(LSB)`` (see
    step_kernel); ``F32_WEIGHT``: besides, ``a`` is an int32 code below 2^24,
    so the weight code's scaling and rounding are exact in float32."""
    acc_fmt, weight_fmt = fmts[2], fmts[3]
    weight_rounding = rounding_of(modes, WEIGHT_ROUNDING)
    has_weight = weight_rounding != NO_FORMAT
    int32_out = field(modes, INT32_OUT, 1)
    if int32_out and has_weight:  # saturated in int32: half-width vector ops
        if field(modes, F32_WEIGHT, 1):
            w = np.int32(
                weight_code_unclamped(np.float32(a), i, np.float32(k[2]), seeds, weight_rounding)
            )
        else:
            w = np.int32(weight_code_unclamped(np.float64(a), i, k[2], seeds, weight_rounding))
        sides = field(modes, WEIGHT_OVERFLOW, 3)
        w = clamp_sides(w, np.int32(weight_fmt[3]), np.int32(weight_fmt[4]), sides)
        return np.float32(w) * np.float32(weight_fmt[1])
    if int32_out:
        return np.float32(np.int32(a)) * np.float32(acc_fmt[1])
    if has_weight:
        w = weight_code(a, i, k, weight_fmt, seeds, modes)
        return w * weight_fmt[1] + 0.0  # codes have no -0: nor do weights
    return a * acc_fmt[1] + 0.0


@kernel
def add_update(x, i, acc, j, out, k, fmts, seeds, modes, subtract):
    """One element of ``step_kernel``'s loop: source element ``x`` at flat
    index ``i`` added into ``acc[j]`` (``subtract``, where ``INT_ADD``:
    subtracted), and the parameter's value written to ``out[j]`` (``modes``
    as in :func:`update_code`). ``subtract`` (the undo) is a runtime bool,
    not a bit of ``modes``: a ``modes`` that is not a constant at the call
    (``modes | undo << bit``) kept LLVM from inlining this function (its
    cost is judged before the fields fold): 100x slower, measured; a
    loop-invariant select of the int32 sum costs nothing. int32 update codes are converted with
    :func:`int32_wrapped`: ``np.int32`` where the source is in the plan's
    range, and defined beyond it, so a step on a bad source can be undone."""
    d = update_code(x, i, k, fmts, seeds, modes)[1]
    if field(modes, INT_ADD, 1):  # |d| and the sum are within the accumulator's range
        d_code = int32_wrapped(d)
        a_code = np.int32(acc[j] - d_code) if subtract else np.int32(acc[j] + d_code)
        acc[j] = a_code
        out[j] = parameter_value(a_code, i, k, fmts, seeds, modes)
    else:
        acc_fmt = fmts[2]
        overflow, sides = field(modes, OVERFLOW, 1), field(modes, ACC_OVERFLOW, 3)
        a = overflow_sides(acc[j] + d, acc_fmt[3], acc_fmt[4], overflow, sides)  # exact
        acc[j] = a  # an integral float64 (for int32 codes: in range, converted exactly)
        # (the float32 weight needs int32 codes: the bit is clear here)
        out[j] = parameter_value(a, i, k, fmts, seeds, modes)
