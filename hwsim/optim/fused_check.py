"""What the fused optimizer step checks and keeps between calls: max |x| of a
source in one read (:func:`max_abs`), the limits the fused kernel checks a
source against in the same pass as its step (:func:`check_limits`, and
:func:`undo_step` where it fails), and the bound on an accumulator's codes
(:class:`AccumulatorBound`)."""

from __future__ import annotations

import functools
import math

import numpy as np

from hwsim.kernels.jit import SERIAL_BELOW_ELEMENTWISE, prange, serial_and_parallel

# the integer view of a float32/float64 source, and the mask that clears its sign bit
BITS = {4: (np.int32, np.iinfo(np.int32).max), 8: (np.int64, np.iinfo(np.int64).max)}
ANY_FINITE = {
    size: np.array([mask, mask, 0], t) for size, (t, mask) in BITS.items()
}  # limits of a checked source


def _max_abs_of(float_type, int_type, abs_mask: int):
    def run(x):
        # a max over the integer bits: an IEEE max reduction cannot be vectorized
        # without fast-math, an integer one can; for non-negative floats the bit
        # pattern orders like the value, with Inf and then NaN above every finite one
        bits = x.view(int_type)
        top = 0
        for i in prange(bits.size):
            top = max(top, bits[i] & abs_mask)
        as_float = np.empty(1, int_type)
        as_float[0] = top
        return np.float64(as_float.view(float_type)[0])

    return serial_and_parallel(run)


_MAX_ABS = {
    4: _max_abs_of(np.float32, np.int32, 0x7FFFFFFF),
    8: _max_abs_of(np.float64, np.int64, 0x7FFFFFFFFFFFFFFF),
}


def _code_max_abs(x):
    top = 0
    for i in prange(x.size):
        top = max(top, abs(np.int64(x[i])))
    return np.float64(top)


_CODE_MAX_ABS = serial_and_parallel(_code_max_abs)


def code_max_abs(codes: np.ndarray) -> float:
    """max |code| of a flat accumulator (float64 or int32 codes; 0 when empty)."""
    if codes.dtype.kind == "f":
        return max_abs(codes)
    serial, parallel = _CODE_MAX_ABS
    return (parallel if codes.size >= SERIAL_BELOW_ELEMENTWISE else serial)(codes)


def max_abs(x: np.ndarray) -> float:
    """max |x| of a flat float32/float64 array (0 when empty), in one read
    (parallel when large): Inf or NaN exactly when ``x`` holds one."""
    serial, parallel = _MAX_ABS[x.itemsize]
    return (parallel if x.size >= SERIAL_BELOW_ELEMENTWISE else serial)(x)


@functools.lru_cache(maxsize=1024)
def check_limits(itemsize: int, exponent: int) -> tuple[float, np.ndarray] | None:
    """``(limit, limits)`` of :meth:`FusedStep.speculate` for a source of
    ``itemsize`` bytes: the limit 2^(``exponent`` + 1) (a power of two, so it
    seldom changes between steps and this cache holds it) and the kernel's
    ``limits`` array; ``None`` where the source's dtype cannot hold it."""
    bits_type, mask = BITS[itemsize]
    float_type = np.float32 if itemsize == 4 else np.float64
    if exponent + 1 > np.finfo(float_type).maxexp - 1:
        return None
    limit = math.ldexp(1.0, exponent + 1)
    typed = float_type(limit)
    if float(typed) != limit:  # below the dtype's smallest subnormal
        return None
    return limit, np.array([mask, typed.view(bits_type), 0], bits_type)


def top_exponent(bits: int, itemsize: int) -> int:
    """An exponent ``k`` with |x| < 2^k, from the bits of a finite magnitude
    ``|x|`` of a float32 (``itemsize`` 4) or float64 (the biased exponent
    field, less the bias, plus one; subnormals and 0 give the smallest)."""
    return (bits >> 23) - 126 if itemsize == 4 else (bits >> 52) - 1022


def undo_step(token) -> None:
    """Take back a step :meth:`FusedStep.speculate` ran (``token``, its last
    result), before anything else has written its arrays: the accumulator and
    the bound as before it; the parameter holds the weight of the accumulator
    (what it held before, where the previous step was the kernel's)."""
    run, args, bits, limits, bound, before = token
    run(*args, bits, limits, True)
    bound.top = before


class AccumulatorBound:
    """What the fused step knows of one accumulator between steps: ``top``, an
    upper bound on |code| (``None``: unknown), so the kernel can leave out the
    overflow step of the sum (and weight clamps) where it provably cannot act.

    After each step ``top`` grows by the largest possible update. The owner
    resets it to ``None`` whenever anything else may have written the
    accumulator. Where the bound is too loose to drop a clamp, the true
    maximum is measured (one read of the accumulator); where even that cannot
    drop it (codes near saturation), measuring backs off: after 1, 2, 4, ...,
    ``MAX_WAIT`` steps."""

    MAX_WAIT = 256
    __slots__ = ("top", "wait", "backoff")

    def __init__(self) -> None:
        self.top: float | None = None
        self.wait = 0  # steps before the next measurement is allowed
        self.backoff = 1

    def tighten(
        self,
        step,  # a FusedStep
        acc: np.ndarray,
        delta_top: float,
        acc_sides: int,
        weight_sides: int,
        top_after: float,
    ) -> tuple[int, int, float]:
        """The sides and bound of ``step``'s call, with |acc| measured where
        that may drop a clamp the bound keeps."""
        if self.wait:
            self.wait -= 1
            return acc_sides, weight_sides, top_after
        best = step._sides(0.0, delta_top)
        if (acc_sides, weight_sides) == best[:2]:
            return acc_sides, weight_sides, top_after  # clamps any accumulator needs
        measured = step._sides(code_max_abs(acc), delta_top)
        if measured[:2] == best[:2]:
            self.backoff = 1
        else:
            self.wait, self.backoff = self.backoff, min(2 * self.backoff, self.MAX_WAIT)
        return measured
