"""Choosing a MAC-array kernel variant (``hwsim.kernels.gemm_mac``) for one
call: interval arithmetic on the operands' code ranges proves which lane
width holds every intermediate and which overflow checks can never fire.
Pure Python, no kernels: the variant's key is what ``mac_kernel`` and
``implicit_conv_kernel`` are compiled for.
"""

from __future__ import annotations

import functools

import numpy as np

from hwsim.kernels.scalar import FLOOR, SATURATE, STOCHASTIC

STAGE_NONE, STAGE_LEFT, STAGE_RIGHT = 0, 1, 2
LANES = {16: np.int16, 32: np.int32, 64: np.int64}  # tried in this order
ACC_LANE_SATURATES = 2  # acc_check: the accumulator's range is the int16 lane's own
MAX_STOCHASTIC_SHIFT = 53  # the kernels' integer comparison equals u < rem / 2^s up to here


def _stage(lo, hi, shift, f_min, f_max, saturate):
    """Interval [lo, hi] through one cast (shift, then overflow onto
    [f_min, f_max]): (kind, needs overflow, new interval, the largest
    magnitude a lane meets on the way)."""
    if shift > 0:
        kind = STAGE_RIGHT
        need = max(-lo, hi) + (1 << shift)  # the rounding offset is added first
        lo, hi = lo >> shift, -((-hi) >> shift)  # every rounding mode is monotone
    else:
        kind = STAGE_LEFT
        lo, hi = lo << -shift, hi << -shift
        need = max(-lo, hi)
    check = lo < f_min or hi > f_max
    if check:
        need = max(need, max(-lo, hi, f_max - f_min) + max(-f_min, f_max))
        lo, hi = (max(lo, f_min), min(hi, f_max)) if saturate else (f_min, f_max)
    return kind, check, lo, hi, need


def choose(a_range, b_range, depth, has_product, rounding, overflow, shifts, bounds):
    """The ``mac_kernel`` key for one call, or None when no variant is proven
    exact (then the generic kernel runs). ``a_range``/``b_range``: (min, max)
    code of each operand; ``shifts`` = (p_shift, c_shift); ``bounds`` =
    (p_min, p_max, c_min, c_max). The intervals do not depend on the lane:
    they are worked out once, then the narrowest lane that holds every value
    on the way (``need``) and the accumulator's step is taken."""
    p_shift, c_shift = shifts
    p_min, p_max, c_min, c_max = bounds
    saturate = overflow == SATURATE
    (a_lo, a_hi), (b_lo, b_hi) = a_range, b_range
    corners = (a_lo * b_lo, a_lo * b_hi, a_hi * b_lo, a_hi * b_hi)
    lo, hi = min(corners), max(corners)
    need = max(-lo, hi)
    p_stage, p_check = STAGE_NONE, False
    if has_product:
        p_stage, p_check, lo, hi, n = _stage(lo, hi, p_shift, p_min, p_max, saturate)
        need = max(need, n)
    c_stage, c_check, lo, hi, n = _stage(lo, hi, c_shift, c_min, c_max, saturate)
    need = max(need, n)
    acc_check = 0
    if saturate:
        # the running sum stays within [depth lo, depth hi] (and 0)
        acc_check = int(min(0, depth * lo) < c_min or max(0, depth * hi) > c_max)
        if not acc_check:  # every partial sum lies in [depth lo, depth hi]: a wide
            need = max(need, -depth * lo, depth * hi)  # format may use narrow lanes
    else:
        c_check = False  # wrapped once, at the end
        need = max(need, -lo, hi)
    shifts_right = [s for s, st in ((p_shift, p_stage), (c_shift, c_stage)) if st == STAGE_RIGHT]
    if rounding == STOCHASTIC and any(s > MAX_STOCHASTIC_SHIFT for s in shifts_right):
        return None
    if not shifts_right:
        rounding = FLOOR  # no stage rounds: one variant for every mode
    for lane_bits in LANES:
        limit = (1 << (lane_bits - 1)) - 1
        if need > limit:
            continue
        check = acc_check
        if not saturate:
            if c_max - c_min > 2 * limit + 1:
                continue
        elif acc_check and lane_bits == 16:  # the saturating lane add needs the
            if -c_min > limit + 1 or c_max > limit:  # format's range in the lane
                continue
            if (c_min, c_max) == (-limit - 1, limit):
                check = ACC_LANE_SATURATES
        elif acc_check and max(-c_min, c_max) * 2 > limit + 1:
            continue  # acc + t, both within the format, must not leave the lane
        return (lane_bits, rounding, overflow, p_stage, p_check, c_stage, c_check, check)
    return None


def variant(a_range, b_range, depth, has_product, rounding, overflow, shifts, bounds):
    """:func:`choose` for the operands' ranges widened to powers of two
    (``[-2^p, 2^q - 1]``, 0 included), looked up in a cache. ``choose`` is
    monotone in the ranges: a variant proven exact for wider ones is exact
    for the operands' own, so the widening keeps every bit, and the calls
    of a training loop, whose ranges move a little from step to step, share
    one interval computation."""
    return _choose_widened(
        _widen(a_range), _widen(b_range), depth, has_product, rounding, overflow, shifts, bounds
    )


def _widen(code_range):
    lo, hi = code_range
    return (
        -(1 << (-lo - 1).bit_length()) if lo < 0 else 0,
        (1 << hi.bit_length()) - 1 if hi > 0 else 0,
    )


_choose_widened = functools.lru_cache(maxsize=4096)(choose)
