"""The elementwise part of the optimizer step as one Numba pass (CPU tensors).

Per element, in the order of the pipeline in :mod:`hwsim.optim.base`:

    x = float64(source)
    x = Q_grad(x)                       (optional: the gradient format)
    x = sign(x)                         (optional: sign rules)
    v = x * scale                       the update (``scale`` = -lr for SGD)
    v = Q_update(v)                     (optional: the update format)
    d = code of v on the accumulator grid, overflow applied
    a = overflow(acc + d)               acc holds int32 or float64 codes, updated in place
    w = Q_weight(a * LSB_acc)           (optional: the weight format)
    param = w * LSB_w (or a * LSB_acc)  written into the parameter's storage

Stateless rules (SGD without momentum or weight decay, sign SGD) run all of it
from the raw gradient: one read of the gradient, one read and write of the
accumulator, one write of the weight. Rules with state compute their update
with torch ops first and pass it as ``source`` with ``scale`` = 1 and no
gradient stage.

On two cores the kernel is bound by conversions and roundings and by memory
traffic about equally (``python benchmarks/optim.py --breakdown``: about 0.16
ns per element), so it does as few operations and moves as few bytes as the
semantics allow: the multiplications by powers of two merge with the learning
rate where that is exact; an overflow step (two min/max per stage) is compiled
out wherever a bound proves it a no-op (:meth:`FusedStep.plan`), the
accumulator's by a bound on its codes kept between steps
(:class:`AccumulatorBound`); int32 accumulator codes are added in int32 there,
and re-quantized to the weight in float32 where that is exact. Every rounding goes through
``hwsim.kernels.scalar`` (``round_scaled``, ``value_to_code_float``, ...), which
``hwsim.torch_path.core`` mirrors op for op: the torch ops and this kernel give
the same bits, and the tests run every case both ways. Like ``torch.optim``'s
``fused=``, it is an implementation choice, never a different result.

The source must be finite: the caller checks it with :func:`max_abs` first,
or, where the step can be taken back exactly (:meth:`FusedStep.speculate`:
int32 codes added without an overflow step, a parameter that holds the weight
of its accumulator), the kernel checks it in the same pass and undoes its
step when it finds a NaN, an Inf or a value its plan did not allow. That
saves the separate read of the gradient, about an eighth of the step.
"""

from __future__ import annotations

import functools
import math
import sys

import numpy as np
import torch

from hwsim.kernels.jit import SERIAL_BELOW_ELEMENTWISE, kernel, prange, serial_and_parallel
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
from hwsim.optim.precision import STREAM, mix_seed
from hwsim.torch_path.core import signed64

TELEMETRY_SAMPLE = 4096  # about this many elements per tensor are sampled for telemetry
SAMPLE_RUN = 16  # in runs of this many consecutive elements (sample_stride)
NO_FORMAT = -1  # the rounding argument of a stage that has no format
CLAMP_NONE, CLAMP_LOW, CLAMP_HIGH, CLAMP_BOTH = 0, 1, 2, 3  # which limits of a code can be reached
CHUNK = 1 << 14  # elements per task of the parallel loop (fits L1/L2 per core)
CHECK_IN_KERNEL_FROM = (
    SERIAL_BELOW_ELEMENTWISE  # elements: smaller tensors are checked apart (QuantizedOptimizer)
)


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


@kernel
def update_code(
    x,
    i,
    k,
    grad_fmt,
    update_fmt,
    acc_fmt,
    seeds,
    sign,
    grad_rounding,
    update_rounding,
    acc_rounding,
    overflow,
    grad_overflow,
    delta_overflow,
):
    """(the update, its code on the accumulator grid) of source element ``x``
    at flat index ``i``. The mode arguments are compile-time constants of the
    caller: once inlined, their branches fold away."""
    has_grad = grad_rounding != NO_FORMAT
    has_update = update_rounding != NO_FORMAT
    if has_grad:
        u = counter_uniform(seeds[0], i) if grad_rounding == STOCHASTIC else 0.0
        if grad_overflow:
            x = value_to_code_float(
                x, grad_fmt[0], grad_fmt[2], grad_fmt[3], grad_fmt[4], grad_rounding, overflow, u
            )
        else:
            x = round_scaled(scale_value(x, grad_fmt[0], grad_rounding), grad_rounding, u)
    if sign:
        x = np.sign(x)
    v = x * k[0]  # the update (unused, and compiled out, where merged and not sampled)
    if has_update:
        u = counter_uniform(seeds[1], i) if update_rounding == STOCHASTIC else 0.0
        s = (
            value_to_code_float(
                v,
                update_fmt[0],
                update_fmt[2],
                update_fmt[3],
                update_fmt[4],
                update_rounding,
                overflow,
                u,
            )
            * k[1]
        )
    elif has_grad or sign:
        # the input is an integer (a code, or a sign): the update's scalings merge
        # into one multiplication (exact: see FusedStep.plan)
        s = x * k[1]
    else:
        s = scale_value(v, k[1], acc_rounding)
    u = counter_uniform(seeds[2], i) if acc_rounding == STOCHASTIC else 0.0
    if delta_overflow:
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
def weight_code(a, i, k, weight_fmt, seeds, weight_rounding, overflow, weight_overflow):
    """The weight code of accumulator code ``a`` at flat index ``i`` (modes as
    in :func:`update_code`)."""
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
def parameter_value(
    a,
    i,
    k,
    acc_fmt,
    weight_fmt,
    seeds,
    weight_rounding,
    overflow,
    weight_overflow,
    has_weight,
    int32_out,
    f32_weight,
):
    """The new value of the parameter from accumulator code ``a`` (modes:
    compile-time constants of the caller). ``int32_out``: a float32 parameter
    written as ``float32(int32(code)) * float32(LSB)`` (see step_kernel);
    ``f32_weight``: besides, ``a`` is an int32 code below 2^24, so the weight
    code's scaling and rounding are exact in float32."""
    if int32_out and has_weight:  # saturated in int32: half-width vector ops
        if f32_weight:
            w = np.int32(
                weight_code_unclamped(np.float32(a), i, np.float32(k[2]), seeds, weight_rounding)
            )
        else:
            w = np.int32(weight_code_unclamped(np.float64(a), i, k[2], seeds, weight_rounding))
        w = clamp_sides(w, np.int32(weight_fmt[3]), np.int32(weight_fmt[4]), weight_overflow)
        return np.float32(w) * np.float32(weight_fmt[1])
    if int32_out:
        return np.float32(np.int32(a)) * np.float32(acc_fmt[1])
    if has_weight:
        w = weight_code(a, i, k, weight_fmt, seeds, weight_rounding, overflow, weight_overflow)
        return w * weight_fmt[1] + 0.0  # codes have no -0: nor do weights
    return a * acc_fmt[1] + 0.0


@kernel
def add_update(
    x,
    i,
    acc,
    j,
    out,
    k,
    grad_fmt,
    update_fmt,
    acc_fmt,
    weight_fmt,
    seeds,
    sign,
    grad_rounding,
    update_rounding,
    acc_rounding,
    weight_rounding,
    overflow,
    grad_overflow,
    delta_overflow,
    acc_overflow,
    weight_overflow,
    has_weight,
    int32_out,
    int_add,
    f32_weight,
    subtract,
):
    """One element of :func:`step_kernel`'s loop: source element ``x`` at flat
    index ``i`` added into ``acc[j]`` (``subtract``: subtracted), and the
    parameter's value written to ``out[j]`` (modes: compile-time constants of
    the caller, as in :func:`update_code`). int32 update codes are converted
    with :func:`int32_wrapped`: ``np.int32`` where the source is in the plan's
    range, and defined beyond it, so a step on a bad source can be undone."""
    d = update_code(
        x,
        i,
        k,
        grad_fmt,
        update_fmt,
        acc_fmt,
        seeds,
        sign,
        grad_rounding,
        update_rounding,
        acc_rounding,
        overflow,
        grad_overflow,
        delta_overflow,
    )[1]
    if int_add:  # |d| and the sum are within the accumulator's range
        d_code = int32_wrapped(d)
        a_code = np.int32(acc[j] - d_code) if subtract else np.int32(acc[j] + d_code)
        acc[j] = a_code
        out[j] = parameter_value(
            a_code,
            i,
            k,
            acc_fmt,
            weight_fmt,
            seeds,
            weight_rounding,
            overflow,
            weight_overflow,
            has_weight,
            int32_out,
            f32_weight,
        )
    else:
        a = overflow_sides(
            acc[j] - d if subtract else acc[j] + d, acc_fmt[3], acc_fmt[4], overflow, acc_overflow
        )  # exact
        acc[j] = a  # an integral float64 (for int32 codes: in range, converted exactly)
        out[j] = parameter_value(
            a,
            i,
            k,
            acc_fmt,
            weight_fmt,
            seeds,
            weight_rounding,
            overflow,
            weight_overflow,
            has_weight,
            int32_out,
            False,
        )


@functools.cache
def step_kernel(
    sign: bool,
    grad_rounding: int,
    update_rounding: int,
    acc_rounding: int,
    weight_rounding: int,
    overflow: int,
    overflows: tuple[bool, bool, int, int],
    int32_out: bool,
    int_acc: int,
):
    """The (serial, parallel) kernels for one combination of stages and modes (compile-time
    constants, so the mode branches fold away and the loop vectorizes):

    ``kernel(source, acc, out, constants, seeds, sample, stride, source_bits, limits, mode)
    -> (nonzero, stalled, saturated, refused, top)``

    - ``source``: flat float32/float64 gradient (or update);
    - ``acc``: flat accumulator codes, updated in place: float64, or int32
      (``int_acc`` 1; 2 where every code is below 2^24); ``out``: the
      parameter's flat storage (float32/float64);
    - ``constants``: float64 array (one array, not tuples: Numba's dispatch
      types each tuple element on every call), unpacked into tuples before the
      loop: ``k``, the constants ``(update, delta, weight)`` of
      :meth:`FusedStep.plan` (which checks that the merged multiplications
      give the reference's bits), then the grad, update, accumulator and weight
      formats, each :func:`format_constants` (5 floats; ignored for a stage
      whose rounding is ``NO_FORMAT``);
    - ``seeds``: int64 array of the 4 counter-noise seeds (grad, update,
      accumulator, weight);
    - ``overflows``: whether the overflow mode is applied to the gradient
      code and to the update in accumulator LSBs before it is added (bools),
      to the sum in the accumulator and to the weight code (``CLAMP_*``:
      under saturation the sides that can be reached); skipped only where a
      bound proves it a no-op (the clamps are a large part of the arithmetic);
    - ``int32_out``: the output (float32) is written as ``float32(int32(code))
      * float32(LSB)``, the weight code saturated in int32, which the caller
      has checked is exact (codes below 2^31 before saturation, the LSB and
      every weight normal in float32): the same value as ``float32(code *
      LSB + 0.0)``, with fewer full-width operations (the int32 and float32
      vectors are half the width of the float64 ones);
    - returns the telemetry of the sampled elements (:func:`sample_stride`;
      as many as ``sample`` holds; empty turns it off): how
      many updates are nonzero, how many of those stalled (rounded to nothing
      on the accumulator grid), how many weights sit at saturation; ``sample``
      receives the updates themselves (before the update format). Counting every
      element would add vector reductions to the compute-bound loop;
    - the check, in the same pass: ``source_bits`` is the source's integer
      view and ``limits`` (of that type) holds the mask of the sign bit's
      complement, the bits of a limit and a zero; ``top`` is the bits of max
      |source| (as :func:`max_abs`'s) and ``refused`` counts the chunks
      holding a value above the limit (a NaN, an Inf or a larger magnitude).
      The step does not guard against those: int32 update codes go through
      :func:`~hwsim.kernels.scalar.int32_wrapped`, defined for any input
      (and equal to ``np.int32`` on codes), so the step can be taken back;
    - ``undo``: with the arguments of a step whose sum needed no overflow
      step (``int_add``), take it back: subtract the same update codes (the
      int32 sums wrap alike) and write the weights of the restored codes
      (the sides cover them: :meth:`FusedStep._sides`), so the accumulator
      and, where the parameter held the weight of the accumulator, the
      parameter are as before the step.
    """
    has_weight = weight_rounding != NO_FORMAT
    grad_overflow, delta_overflow, acc_overflow, weight_overflow = overflows
    # int32 codes: where the sum provably stays in the format's range, it is an
    # int32 addition, and the weight code is computed in float32 where exact
    # (converting the code to float64 and back costs more than the addition)
    int_add = int_acc != 0 and acc_overflow == CLAMP_NONE
    f32_weight = int_add and int_acc == 2 and int32_out and has_weight
    if overflow != SATURATE:  # wrapping has no sides
        acc_overflow = CLAMP_NONE if acc_overflow == CLAMP_NONE else CLAMP_BOTH
        weight_overflow = CLAMP_NONE if weight_overflow == CLAMP_NONE else CLAMP_BOTH
    # The closure holds only ints and bools: Numba's disk cache keys a closure
    # by its pickled cell contents, and a dispatcher pickles with a random id.

    def run(source, acc, out, constants, seed_array, sample, stride, source_bits, limits, undo):
        c = constants
        k = (c[0], c[1], c[2])
        grad_fmt, update_fmt = (c[3], c[4], c[5], c[6], c[7]), (c[8], c[9], c[10], c[11], c[12])
        acc_fmt, weight_fmt = (
            (c[13], c[14], c[15], c[16], c[17]),
            (c[18], c[19], c[20], c[21], c[22]),
        )
        seeds = (seed_array[0], seed_array[1], seed_array[2], seed_array[3])
        n = source.size
        sample_size = sample.size
        chunks = (n + CHUNK - 1) // CHUNK
        # per chunk: nonzero, stalled, saturated (over its sampled elements), refused, max |source| bits
        counts = np.zeros((chunks, 5), np.int64)
        mask, limit = limits[0], limits[1]
        for chunk in prange(chunks):
            lo = chunk * CHUNK
            src, chunk_acc, dst = (
                source[lo : lo + CHUNK],
                acc[lo : lo + CHUNK],
                out[lo : lo + CHUNK],
            )
            if not undo:
                bits = source_bits[lo : lo + CHUNK]
                top = limits[
                    2
                ]  # a zero of the bits' type: the ufuncs keep it (Numba's operators widen it)
                for j in range(src.size):
                    top = np.maximum(top, np.bitwise_and(bits[j], mask))
                    add_update(
                        np.float64(src[j]),
                        lo + j,
                        chunk_acc,
                        j,
                        dst,
                        k,
                        grad_fmt,
                        update_fmt,
                        acc_fmt,
                        weight_fmt,
                        seeds,
                        sign,
                        grad_rounding,
                        update_rounding,
                        acc_rounding,
                        weight_rounding,
                        overflow,
                        grad_overflow,
                        delta_overflow,
                        acc_overflow,
                        weight_overflow,
                        has_weight,
                        int32_out,
                        int_add,
                        f32_weight,
                        False,
                    )
                counts[chunk, 3] = top > limit
                counts[chunk, 4] = top
            elif int_add:  # (compiled out where it cannot be used)
                for j in range(src.size):
                    add_update(
                        np.float64(src[j]),
                        lo + j,
                        chunk_acc,
                        j,
                        dst,
                        k,
                        grad_fmt,
                        update_fmt,
                        acc_fmt,
                        weight_fmt,
                        seeds,
                        sign,
                        grad_rounding,
                        update_rounding,
                        acc_rounding,
                        weight_rounding,
                        overflow,
                        grad_overflow,
                        delta_overflow,
                        acc_overflow,
                        weight_overflow,
                        has_weight,
                        int32_out,
                        int_add,
                        f32_weight,
                        True,
                    )
            if not undo:
                # the telemetry of this chunk's sampled elements, while they are in cache: runs
                # of SAMPLE_RUN consecutive elements (a run never straddles two chunks)
                m0 = sample_position(lo, stride)
                m1 = min(sample_size, sample_position(lo + src.size, stride))
                nonzero = stalled = saturated = 0
                for run in range(
                    m0 // SAMPLE_RUN, (m1 + SAMPLE_RUN - 1) // SAMPLE_RUN
                ):  # m0: a run's start
                    first_m, first_i = run * SAMPLE_RUN, run * stride
                    for j in range(min(m1 - first_m, SAMPLE_RUN)):  # contiguous: vectorizes
                        i = first_i + j
                        # the update's code with its overflow step: under wrap the main loop may
                        # leave it out (the sum wraps alike), but a wrapped-away update stalled
                        v, d = update_code(
                            np.float64(source[i]),
                            i,
                            k,
                            grad_fmt,
                            update_fmt,
                            acc_fmt,
                            seeds,
                            sign,
                            grad_rounding,
                            update_rounding,
                            acc_rounding,
                            overflow,
                            grad_overflow,
                            True,
                        )
                        a = acc[i]  # after the step
                        at_limit = (a == acc_fmt[3]) | (a == acc_fmt[4])
                        if has_weight:
                            w = weight_code(
                                a,
                                i,
                                k,
                                weight_fmt,
                                seeds,
                                weight_rounding,
                                overflow,
                                weight_overflow,
                            )
                            at_limit = at_limit | (w == weight_fmt[3]) | (w == weight_fmt[4])
                        sample[first_m + j] = v
                        nonzero += v != 0.0
                        stalled += (v != 0.0) & (d == 0.0)
                        saturated += at_limit
                counts[chunk, 0], counts[chunk, 1], counts[chunk, 2] = nonzero, stalled, saturated
        top = 0
        for chunk in range(chunks):
            top = max(top, counts[chunk, 4])
        return counts[:, 0].sum(), counts[:, 1].sum(), counts[:, 2].sum(), counts[:, 3].sum(), top

    return serial_and_parallel(run)


@functools.cache
def format_constants(fmt) -> tuple[float, float, float, float, float]:
    """(2^fl, LSB, 2^(wl - fl), min code, max code) of a FixedPoint, as floats
    (what the kernel's stages take); zeros for ``None``."""
    if fmt is None:
        return (0.0, 0.0, 0.0, 0.0, 0.0)
    return (
        2.0**fmt.fl,
        fmt.lsb,
        2.0 ** (fmt.wl - fmt.fl),
        float(fmt.min_code),
        float(fmt.max_code),
    )


_MIN_NORMAL = sys.float_info.min
_F32_MIN_NORMAL, _F32_MAX = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)
_NO_SEEDS = np.zeros(4, np.int64)
_NO_SAMPLE = np.empty(0)  # telemetry off (the kernel writes nothing into it)
# the integer view of a float32/float64 source, and the mask that clears its sign bit
_BITS = {4: (np.int32, np.iinfo(np.int32).max), 8: (np.int64, np.iinfo(np.int64).max)}
_ANY_FINITE = {
    size: np.array([mask, mask, 0], t) for size, (t, mask) in _BITS.items()
}  # limits of a checked source
_SEED_STREAMS = (STREAM["grad"], STREAM["update"], STREAM["accumulator"], STREAM["weight"])


def _normal(x: float) -> bool:
    return math.isfinite(x) and abs(x) >= _MIN_NORMAL


class FusedStep:
    """The fused step of one precision configuration: what depends only on the
    formats and modes, worked out once (:func:`fused_step` caches it), and the
    per-call part in :meth:`plan` and :meth:`__call__`.

    ``grad`` is the gradient format of a pointwise rule (``sign`` says which
    rule); a rule's own update comes in with ``grad=None, sign=False``.
    ``accumulator`` is the grid updates are added on (the accumulator, else the
    weight) and ``weight`` the weight format re-quantized from it, if any."""

    def __init__(
        self,
        sign: bool,
        grad,
        update,
        accumulator,
        weight,
        grad_rounding: int,
        update_rounding: int,
        acc_rounding: int,
        weight_rounding: int,
        overflow: int,
    ):
        self.sign, self.overflow = sign, overflow
        self.has_grad, self.has_update = grad is not None, update is not None
        self.roundings = (
            NO_FORMAT if grad is None else grad_rounding,
            NO_FORMAT if update is None else update_rounding,
            acc_rounding,
            NO_FORMAT if weight is None else weight_rounding,
        )
        self.stochastic = tuple(r == STOCHASTIC for r in self.roundings)
        self.any_stochastic = any(self.stochastic)
        self.formats = tuple(format_constants(f) for f in (grad, update, accumulator, weight))
        self.merged_input = sign or grad is not None
        grad_c, update_c, acc_c, weight_c = self.formats
        self.acc_codes = acc_c[3:]
        self.input_top = (
            1.0 if sign else (max(-grad_c[3], grad_c[4]) if grad is not None else math.nan)
        )
        self.input_lsb = grad.lsb if grad is not None and not sign else 1.0
        self.acc_scale = acc_c[0]
        self.update_delta = self.update_bound = 0.0
        if update is not None:  # the update's code in accumulator LSBs: exact
            self.update_delta = 2.0 ** (accumulator.fl - update.fl)
            self.update_bound = max(-update_c[3], update_c[4]) * self.update_delta
        self.acc_top = max(-acc_c[3], acc_c[4])  # the largest |code| of the accumulator
        # |x| <= safe: every rounding of x (LSB units) is a code (no overflow step)
        self.grad_safe = min(-grad_c[3], grad_c[4])
        self.acc_safe = min(-acc_c[3], acc_c[4])
        self._last_scale: tuple = (None, None, None)
        self.k_weight = 2.0 ** (weight.fl - accumulator.fl) if weight is not None else 0.0
        self.weight_overflow = self._weight_sides(acc_c[3], acc_c[4])  # for any accumulator
        # codes written to a float32 parameter through int32 (see step_kernel): the
        # codes, and the weight codes before saturation, fit in int32; every value
        # is normal in float32; a weight code's overflow step is a clamp
        out_c = weight_c if weight is not None else acc_c
        before = (
            (acc_c[3] * self.k_weight - 1, acc_c[4] * self.k_weight + 1)
            if weight is not None
            else out_c[3:]
        )
        self.int32_out = (
            -(2.0**31) <= min(out_c[3], before[0])
            and max(out_c[4], before[1]) < 2.0**31
            and _F32_MIN_NORMAL <= out_c[1]
            and max(-out_c[3], out_c[4]) * out_c[1] < _F32_MAX
            and (overflow == SATURATE or self.weight_overflow == CLAMP_NONE)
        )
        self._kernels: dict = {}

    def _weight_sides(self, low: float, high: float) -> int:
        """The limits of the weight format (``CLAMP_*``) that re-quantizing an
        accumulator code in [low, high] can reach (every rounding of ``a *
        k_weight``, an exact scaling, lands in [floor, ceil] of it)."""
        if not self.k_weight:
            return CLAMP_NONE
        w_low, w_high = self.formats[3][3:]
        return CLAMP_LOW * (math.floor(low * self.k_weight) < w_low) + CLAMP_HIGH * (
            math.ceil(high * self.k_weight) > w_high
        )

    def _scale_constants(self, scale: float) -> tuple[float, float] | None:
        """``(k_update, k_delta)`` of :meth:`plan` for one ``scale``, or ``None``
        where merging is not exact or the update could overflow."""
        if self.merged_input:
            k_update = self.input_lsb * scale
            if not (_normal(k_update) and math.isfinite(self.input_top * abs(k_update))):
                return None
            k_delta = self.update_delta if self.has_update else k_update * self.acc_scale
            return (k_update, k_delta) if _normal(k_delta) else None
        return (scale, self.update_delta if self.has_update else self.acc_scale)

    def _constants(self, scale: float, source_max: float):
        """``(kernel constants, grad_overflow, delta_overflow, delta_top)``:
        the constants of :meth:`plan` packed with the formats as the kernel
        takes them, ``delta_top`` bounding |update code| on the accumulator
        grid; ``None`` where the plan declines. The scale's part is cached:
        the learning rate seldom changes between steps."""
        last = (
            self._last_scale
        )  # (scale, its constants): one read, so threads sharing this step see a pair
        if last[0] != scale:
            scaled = self._scale_constants(scale)
            packed = (
                None
                if scaled is None
                else np.array([*scaled, self.k_weight, *sum(self.formats, ())])
            )
            last = self._last_scale = (scale, scaled, packed)
        if last[1] is None:
            return None
        k_update, k_delta = last[1]
        grad_overflow = False
        if self.merged_input:
            top = self.input_top  # |rule input|: a sign, or a gradient code
            if self.has_grad:
                # every rounding of |g| 2^fg <= g_top is at most ceil(g_top) (at least 1:
                # scale_value keeps the sign of a product that underflows, and floor or
                # stochastic rounding can take it to -1 or 1); beyond the format's range
                # the overflow step keeps the code within input_top
                g_top = max(source_max * self.formats[0][0], 1.0)
                grad_overflow = not g_top <= self.grad_safe
                if not self.sign and g_top < top:
                    top = float(math.ceil(g_top))
        if self.has_update:  # the update format's range
            bound = self.update_bound
        elif self.merged_input:
            bound = top * abs(k_delta)
        else:
            if not math.isfinite(source_max * abs(k_update)):
                return None  # the update itself could overflow: the torch ops raise
            bound = source_max * abs(k_update) * k_delta
        if not math.isfinite(bound):
            return None
        bound = max(
            bound, 1.0
        )  # an update that underflows in LSB units can round to -1 or 1 (as above)
        if self.overflow == SATURATE:
            delta_overflow = not bound <= self.acc_safe
        else:  # modular: wrapping the sum alone is the same while the sum is exact
            delta_overflow = bound >= 2.0**51
        delta_top = float(math.ceil(bound))  # every rounding of |s| <= bound (monotone float ops)
        if delta_overflow:  # the update code is brought into the accumulator's range first
            delta_top = min(delta_top, self.acc_top)
        return last[2], grad_overflow, delta_overflow, delta_top

    def _sides(self, acc_top: float, delta_top: float) -> tuple[int, int, float]:
        """``(accumulator sides, weight sides, acc_top after)``: the limits
        (``CLAMP_*``) the sum ``acc + delta`` and the weight code can reach when
        |acc| <= ``acc_top`` and |delta| <= ``delta_top`` (integral floats),
        and a bound on |acc| after the step."""
        low_code, high_code = self.acc_codes
        low = max(low_code, -acc_top) - delta_top
        high = min(high_code, acc_top) + delta_top
        acc_sides = CLAMP_LOW * (low < low_code) + CLAMP_HIGH * (high > high_code)
        if acc_sides and self.overflow != SATURATE:
            low, high = low_code, high_code  # a wrapped sum can land anywhere
        else:
            low, high = max(low, low_code), min(high, high_code)
        return acc_sides, self._weight_sides(low, high), max(-low, high)

    def plan(self, scale: float, source_max: float, acc_top: float | None = None):
        """``(constants, overflows, acc_top after)`` for one call, or ``None``
        where merged multiplications could round differently from the
        reference pipeline (a zero, subnormal or overflowing product; e.g.
        ``lr == 0``) or the update could overflow: the torch ops then run
        instead, with the same semantics.

        The constants ``(update, delta, weight)``: the update is ``rule_input
        * update`` (``-lr``, times the gradient LSB when the input is a
        gradient code); in accumulator LSBs it is ``rule_input * delta``
        (merged), ``update code * delta`` (with an update format: 2^(fa -
        fu)) or ``update * delta`` (a float input: 2^fa); a weight code is an
        accumulator code times ``weight`` = 2^(fw - fa).

        Why merging is exact: a power-of-two multiple of a float is exact while
        it stays normal, and multiplying an integer ``x`` (a code or a sign,
        ``|x| >= 1`` when nonzero) by a normal constant rounds the same real
        number once either way: ``x * (lsb * scale * 2^fa) == ((x * lsb) *
        scale) * 2^fa``.

        The overflow steps (``step_kernel``'s ``overflows``): ``source_max``
        bounds |source| (:func:`max_abs`), ``acc_top`` |accumulator code|
        before the step (``None``: unknown); with the formats' ranges they
        decide which overflow steps cannot change anything."""
        base = self._constants(scale, source_max)
        if base is None:
            return None
        packed, grad_overflow, delta_overflow, delta_top = base
        acc_sides, weight_sides, top_after = self._sides(
            self.acc_top if acc_top is None else acc_top, delta_top
        )
        return (
            tuple(packed[:3].tolist()),
            (grad_overflow, delta_overflow, acc_sides, weight_sides),
            top_after,
        )

    def __call__(
        self,
        source: np.ndarray,
        acc: np.ndarray,
        out: np.ndarray,
        scale: float,
        source_max: float,
        seed: int,
        step: int,
        index: int,
        telemetry: bool,
        bound: AccumulatorBound | None = None,
    ):
        """Run the step on flat arrays (``acc``: int32 or float64 codes, updated in place;
        ``out``: the parameter's storage). ``bound``: what is known of |acc|
        (read, and updated for the next step). Returns ``None`` having changed
        nothing where :meth:`plan` declines; else ``(nonzero, stalled,
        saturated, sample)`` as the kernel returns them (see
        :func:`step_kernel`; zeros and empty without ``telemetry``)."""
        prepared = self._prepare(
            source, acc, out, scale, source_max, seed, step, index, telemetry, bound
        )
        if prepared is None:
            return None
        run, args, _, top_after = prepared
        limits = _ANY_FINITE[source.itemsize]  # the caller checked the source
        result = run(*args, source.view(limits.dtype), limits, False)
        if bound is not None:
            bound.top = top_after
        return (*result[:3], args[5])

    def speculate(
        self,
        source: np.ndarray,
        acc: np.ndarray,
        out: np.ndarray,
        scale: float,
        exponent: int,
        seed: int,
        step: int,
        index: int,
        telemetry: bool,
        bound: AccumulatorBound,
    ):
        """The step on a source nobody has checked yet, planned for |source| <=
        2^(``exponent`` + 1) (``exponent``: as :func:`top_exponent`'s, from the
        previous step, so the plan allows for twice its max) and checked in
        the same pass: the separate read of :func:`max_abs` saved.

        Returns ``None``, having changed nothing, where it cannot run so: the
        plan declines, the codes are float64 or the sum may need its overflow
        step (the undo needs an int32 addition), or the weight rounding is
        stochastic (the weights of the codes before the step could not be
        recomputed); the caller then checks the source and calls the step.
        Returns ``False``, having changed nothing (the kernel's step is
        undone), where the source holds a NaN, an Inf or a magnitude above the
        limit. Else ``(nonzero, stalled, saturated, sample, exponent, undo)``:
        the step's telemetry as :meth:`__call__`'s, the exponent of its max
        |source|, and the token :func:`undo_step` takes to take the step back."""
        if self.stochastic[3] or acc.dtype.kind == "f":
            return None
        itemsize = source.itemsize
        checked = check_limits(itemsize, exponent)
        if checked is None:
            return None
        limit, limits = checked
        prepared = self._prepare(
            source, acc, out, scale, limit, seed, step, index, telemetry, bound
        )
        if prepared is None or prepared[2][2] != CLAMP_NONE:
            return None
        run, args, _, top_after = prepared
        bits = source.view(limits.dtype)
        result = run(*args, bits, limits, False)
        if result[3]:
            run(*args, bits, limits, True)
            return False
        before, bound.top = bound.top, top_after
        return (
            *result[:3],
            args[5],
            top_exponent(result[4], itemsize),
            (run, args, bits, limits, bound, before),
        )

    def _prepare(
        self,
        source: np.ndarray,
        acc: np.ndarray,
        out: np.ndarray,
        scale: float,
        source_max: float,
        seed: int,
        step: int,
        index: int,
        telemetry: bool,
        bound: AccumulatorBound | None,
    ):
        """``(kernel, its first arguments, overflows, bound after)`` of one call, or ``None``
        where :meth:`plan` declines."""
        base = self._constants(scale, source_max)
        if base is None:
            return None
        constants, grad_overflow, delta_overflow, delta_top = base
        known = bound is not None and bound.top is not None
        acc_sides, weight_sides, top_after = self._sides(
            bound.top if known else self.acc_top, delta_top
        )
        if bound is not None and (acc_sides or weight_sides):
            acc_sides, weight_sides, top_after = bound.tighten(
                self, acc, delta_top, acc_sides, weight_sides, top_after
            )
        n = source.size
        int_acc = 0 if acc.dtype.kind == "f" else (2 if self.acc_top < 2.0**24 else 1)
        overflows = (grad_overflow, delta_overflow, acc_sides, weight_sides)
        key = (overflows, self.int32_out and out.itemsize == 4, int_acc)
        kernels = self._kernels.get(key)
        if kernels is None:
            kernels = self._kernels[key] = step_kernel(
                self.sign, *self.roundings, self.overflow, *key
            )
        run = kernels[n >= SERIAL_BELOW_ELEMENTWISE]  # small tensors: one thread
        seeds = _NO_SEEDS
        if self.any_stochastic:
            seeds = np.array(
                [
                    signed64(mix_seed(seed, step, index, stream)) if st else 0
                    for st, stream in zip(self.stochastic, _SEED_STREAMS, strict=True)
                ],
                np.int64,
            )
        if telemetry:
            stride = sample_stride(n)
            # the caller allocates the sample: once (not reproduced since), a cached
            # parallel variant failed to box an array it returned ('descr is NULL')
            sample = np.empty(sample_size(n))
        else:
            stride, sample = 1, _NO_SAMPLE
        return run, (source, acc, out, constants, seeds, sample, stride), overflows, top_after


@functools.lru_cache(maxsize=1024)
def check_limits(itemsize: int, exponent: int) -> tuple[float, np.ndarray] | None:
    """``(limit, limits)`` of :meth:`FusedStep.speculate` for a source of
    ``itemsize`` bytes: the limit 2^(``exponent`` + 1) (a power of two, so it
    seldom changes between steps and this cache holds it) and the kernel's
    ``limits`` array; ``None`` where the source's dtype cannot hold it."""
    bits_type, mask = _BITS[itemsize]
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
        step: FusedStep,
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


@functools.cache
def fused_step(
    sign: bool,
    grad,
    update,
    accumulator,
    weight,
    grad_rounding: int,
    update_rounding: int,
    acc_rounding: int,
    weight_rounding: int,
    overflow: int,
) -> FusedStep:
    """The (cached) :class:`FusedStep` of a configuration."""
    return FusedStep(
        sign,
        grad,
        update,
        accumulator,
        weight,
        grad_rounding,
        update_rounding,
        acc_rounding,
        weight_rounding,
        overflow,
    )


def sample_stride(numel: int) -> int:
    """The run stride ``s`` of a tensor's telemetry sample: the runs of
    ``SAMPLE_RUN`` consecutive elements starting at ``0, s, 2s, ...``, about
    ``TELEMETRY_SAMPLE`` elements in all (every element, ``s = SAMPLE_RUN``,
    below twice that). Runs rather than single elements: a gather of 4096
    scattered elements touches 4096 cache lines, which cost more than a whole
    float SGD step; ``s`` is a multiple of the run, so float32 runs fill lines."""
    if numel < 2 * TELEMETRY_SAMPLE:
        return SAMPLE_RUN
    return numel // (TELEMETRY_SAMPLE // SAMPLE_RUN) // SAMPLE_RUN * SAMPLE_RUN


@kernel
def sample_position(i, stride):
    """The position in the telemetry sample of the first sampled element at
    flat index ``i`` or after it (``sample_stride`` ``stride``); at ``numel``:
    the sample's size."""
    run = i // stride
    offset = i - run * stride
    return run * SAMPLE_RUN + min(offset, SAMPLE_RUN)


@kernel
def sampled_index(m, stride):
    """The flat index of the ``m``-th sampled element."""
    return (m // SAMPLE_RUN) * stride + m % SAMPLE_RUN


@kernel
def gather_sample(x, stride, out):
    """``out[m] = x[sampled_index(m, stride)]``: a flat array's telemetry sample."""
    for m in range(out.size):
        out[m] = x[sampled_index(m, stride)]


@kernel
def count_float_stalls(update, before, after, stride):
    """(nonzero, stalled) over the telemetry sample of a float weight:
    ``update`` and ``after`` are the flat update and weight, ``before`` the
    weight's sample gathered before the step; an update stalled when it is
    nonzero and left the weight unchanged."""
    nonzero = 0
    stalled = 0
    for m in range(before.size):
        i = sampled_index(m, stride)
        if update[i] != 0:
            nonzero += 1
            if after[i] == before[m]:
                stalled += 1
    return nonzero, stalled


@functools.lru_cache(maxsize=1024)
def sample_size(numel: int) -> int:
    """How many elements a tensor's telemetry sample holds."""
    return int(sample_position(numel, sample_stride(numel)))


@functools.lru_cache(maxsize=256)
def sample_index(numel: int, device) -> torch.Tensor:
    """The flat indices of a tensor's telemetry sample (what the kernel
    counts), for gathering it with torch."""
    stride = sample_stride(numel)
    m = torch.arange(sample_size(numel), device=device)
    return torch.div(m, SAMPLE_RUN, rounding_mode="floor") * stride + m % SAMPLE_RUN
