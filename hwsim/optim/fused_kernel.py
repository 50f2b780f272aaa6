"""The Numba kernel of the fused optimizer step (:mod:`hwsim.optim.fused`
plans its calls): per element, the stages of the pipeline (gradient format,
rule input, update format, accumulator grid and overflow, weight format), and
the telemetry sample counted while each chunk is in cache.

Every mode is a compile-time constant of :func:`step_kernel`'s closure,
passed to the per-element functions as separate arguments, so once the calls
are inlined the mode branches fold away and the loop vectorizes (bundling
them into tuples measured 20x slower: the branches no longer fold).
"""

from __future__ import annotations

import functools
import sys

import numpy as np

from hwsim.kernels import scalar
from hwsim.kernels.jit import kernel, prange, serial_and_parallel, source_salt
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
from hwsim.optim.telemetry import SAMPLE_RUN, sample_position

SALT = source_salt(scalar, sys.modules[__name__])
NO_FORMAT = -1  # the rounding argument of a stage that has no format
CLAMP_NONE, CLAMP_LOW, CLAMP_HIGH, CLAMP_BOTH = 0, 1, 2, 3  # which limits of a code can be reached
CHUNK = 1 << 14  # elements per task of the parallel loop (fits L1/L2 per core)


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
    salt = SALT  # a cell: the cache's key changes with the scalar roundings' source

    def run(source, acc, out, constants, seed_array, sample, stride, source_bits, limits, undo):
        c = constants
        k = (c[0], c[1], c[2])
        grad_fmt, update_fmt = (c[3], c[4], c[5], c[6], c[7]), (c[8], c[9], c[10], c[11], c[12])
        acc_fmt, weight_fmt = (
            (c[13], c[14], c[15], c[16], c[17]),
            (c[18], c[19], c[20], c[21], c[22]),
        )
        seeds = (seed_array[0], seed_array[1], seed_array[2], seed_array[3])
        n = source.size + 0 * salt
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
