"""The Numba kernel of the fused optimizer step (:mod:`hwsim.optim.fused`
plans its calls): one pass that runs the per-element stages of
:mod:`hwsim.optim.fused_stages` (the step, or its undo), checks the source,
and counts the telemetry sample while each chunk is in cache.

Every mode is a bit field of one int, a compile-time constant of
:func:`step_kernel`'s closure (see :mod:`hwsim.optim.fused_stages`).
"""

from __future__ import annotations

import functools
import sys

import numpy as np

from hwsim.kernels import scalar
from hwsim.kernels.jit import (
    COMPILED_INTO_CALLERS,
    kernel,
    prange,
    serial_and_parallel,
    source_salt,
)
from hwsim.kernels.scalar import SATURATE
from hwsim.optim import fused_stages, telemetry
from hwsim.optim.fused_stages import (
    ACC_OVERFLOW,
    ACC_ROUNDING,
    CLAMP_BOTH,
    CLAMP_HIGH,
    CLAMP_LOW,
    CLAMP_NONE,
    DELTA_OVERFLOW,
    F32_WEIGHT,
    GRAD_OVERFLOW,
    GRAD_ROUNDING,
    INT32_OUT,
    INT_ADD,
    NO_FORMAT,
    OVERFLOW,
    SIGN,
    UPDATE_ROUNDING,
    WEIGHT_OVERFLOW,
    WEIGHT_ROUNDING,
    add_update,
    rounding_of,
    unpack,
    update_code,
    weight_code,
)
from hwsim.optim.telemetry import SAMPLE_RUN, sample_position

__all__ = [
    "CHUNK",
    "CLAMP_BOTH",
    "CLAMP_HIGH",
    "CLAMP_LOW",
    "CLAMP_NONE",
    "NO_FORMAT",
    "format_constants",
    "step_kernel",
]

# the kernel inlines the scalar roundings, the stages and the sample's positions
SALT = source_salt(scalar, fused_stages, telemetry, sys.modules[__name__])
CHUNK = 1 << 14  # elements per task of the parallel loop (fits L1/L2 per core)


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
    """The (serial, parallel) kernels for one combination of stages and modes (packed
    into one int, ``modes``, a compile-time constant of the kernel's closure, so the
    mode branches fold away and the loop vectorizes):

    ``kernel(source, acc, out, constants, seeds, sample, stride, source_bits, limits, undo)
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
    modes = step_modes(
        sign,
        (grad_rounding, update_rounding, acc_rounding, weight_rounding),
        overflow,
        overflows,
        int32_out,
        int_acc,
    )
    int_add = (modes >> INT_ADD) & 1
    # The closure holds only ints and bools: Numba's disk cache keys a closure
    # by its pickled cell contents, and a dispatcher pickles with a random id.
    salt = SALT  # a cell: the cache's key changes with the inlined sources

    def run(source, acc, out, constants, seed_array, sample, stride, source_bits, limits, undo):
        n = source.size + 0 * salt
        chunks = (n + CHUNK - 1) // CHUNK
        # per chunk: nonzero, stalled, saturated (over its sampled elements), refused, max |source| bits
        counts = np.zeros((chunks, 5), np.int64)
        mask, limit = limits[0], limits[1]
        # the tuples unpacked before the loop; the formats regrouped per chunk (a parallel
        # loop's body takes no tuple of tuples from outside). Unpacked per chunk instead,
        # the parallel kernel ran 13% slower (stochastic SGD, measured)
        k, formats, seeds = unpack(constants, seed_array)
        grad_fmt, update_fmt, acc_fmt, weight_fmt = formats[0], formats[1], formats[2], formats[3]
        for chunk in prange(chunks):
            fmts = (grad_fmt, update_fmt, acc_fmt, weight_fmt)
            lo = chunk * CHUNK
            src, chunk_acc, dst, bits = (
                source[lo : lo + CHUNK],
                acc[lo : lo + CHUNK],
                out[lo : lo + CHUNK],
                source_bits[lo : lo + CHUNK],
            )
            if int_add or not undo:
                # a zero of the bits' type: the ufuncs keep it (Numba's operators widen it)
                top = limits[2]
                for j in range(src.size):
                    top = np.maximum(top, np.bitwise_and(bits[j], mask))
                    # the undo: the same pass, subtracting (only int32 sums can be undone)
                    add_update(
                        np.float64(src[j]), lo + j, chunk_acc, j, dst, k, fmts, seeds, modes, undo
                    )
                counts[chunk, 3] = top > limit
                counts[chunk, 4] = top
            if not undo:  # the telemetry of this chunk's sampled elements, while in cache
                nonzero, stalled, saturated = sample_chunk(
                    source, acc, lo, src.size, stride, sample, k, fmts, seeds, modes
                )
                counts[chunk, 0], counts[chunk, 1], counts[chunk, 2] = nonzero, stalled, saturated
        return totals(counts)

    return serial_and_parallel(run)


@kernel(**COMPILED_INTO_CALLERS)
def totals(counts):
    """A kernel's result from its per-chunk ``counts``: the sums of columns
    0-3 (nonzero, stalled, saturated, refused or beyond) and the max of
    column 4 (bits of a max magnitude)."""
    top = 0
    for chunk in range(counts.shape[0]):
        top = max(top, counts[chunk, 4])
    return counts[:, 0].sum(), counts[:, 1].sum(), counts[:, 2].sum(), counts[:, 3].sum(), top


@kernel(**COMPILED_INTO_CALLERS)
def sample_chunk(source, acc, lo, size, stride, sample, k, fmts, seeds, modes):
    """The telemetry of the sampled elements of the chunk of ``size`` elements
    at ``lo``, after its step: ``(nonzero, stalled, saturated)``, each sampled
    update (``source``'s element) written into ``sample``. Runs of
    ``SAMPLE_RUN`` consecutive elements (a run never straddles two chunks)."""
    # the sample's updates: with the overflow step of the update in accumulator LSBs
    # (under wrap the main loop may leave it out, as the sum wraps alike, but a
    # wrapped-away update stalled)
    sample_modes = modes | (1 << DELTA_OVERFLOW)
    has_weight = rounding_of(modes, WEIGHT_ROUNDING) != NO_FORMAT
    m0 = sample_position(lo, stride)
    m1 = min(sample.size, sample_position(lo + size, stride))
    nonzero = stalled = saturated = 0
    for run in range(m0 // SAMPLE_RUN, (m1 + SAMPLE_RUN - 1) // SAMPLE_RUN):
        first_m, first_i = run * SAMPLE_RUN, run * stride  # m0: a run's start
        for j in range(min(m1 - first_m, SAMPLE_RUN)):  # contiguous: vectorizes
            i = first_i + j
            v, d = update_code(np.float64(source[i]), i, k, fmts, seeds, sample_modes)
            a = acc[i]  # after the step
            at_limit = (a == fmts[2][3]) | (a == fmts[2][4])
            if has_weight:
                w = weight_code(a, i, k, fmts[3], seeds, modes)
                at_limit = at_limit | (w == fmts[3][3]) | (w == fmts[3][4])
            sample[first_m + j] = v
            nonzero += v != 0.0
            stalled += (v != 0.0) & (d == 0.0)
            saturated += at_limit
    return nonzero, stalled, saturated


def step_modes(
    sign: bool,
    roundings: tuple[int, int, int, int],
    overflow: int,
    overflows: tuple[bool, bool, int, int],
    int32_out: bool,
    int_acc: int,
) -> int:
    """The ``modes`` int of :func:`step_kernel` (the arguments as its; the
    roundings of the grad, update, accumulator and weight stages)."""
    grad_rounding, update_rounding, acc_rounding, weight_rounding = roundings
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
    fields = (
        (sign, SIGN),
        (grad_rounding + 1, GRAD_ROUNDING),  # roundings plus one: NO_FORMAT is 0
        (update_rounding + 1, UPDATE_ROUNDING),
        (acc_rounding + 1, ACC_ROUNDING),
        (weight_rounding + 1, WEIGHT_ROUNDING),
        (overflow, OVERFLOW),
        (grad_overflow, GRAD_OVERFLOW),
        (delta_overflow, DELTA_OVERFLOW),
        (acc_overflow, ACC_OVERFLOW),
        (weight_overflow, WEIGHT_OVERFLOW),
        (int32_out, INT32_OUT),
        (int_add, INT_ADD),
        (f32_weight, F32_WEIGHT),
    )
    return sum(int(value) << shift for value, shift in fields)


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
