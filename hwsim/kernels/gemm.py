"""MAC-array GEMM kernels on integer codes (bit-true, CPU).

Semantics: ../shared/DESIGN.md, "MAC-array GEMM". For every output element
(b, i, j) one accumulator runs over k = 0 .. K-1:

    t   = A[b, i, k] * B[b, k, j]              exact int64 product
    t   = overflow_P(shift_round(t, p_shift))  only with a product format
    t   = overflow_C(shift_round(t, c_shift))  cast onto the accumulator grid
    acc = overflow_C(acc + t)                  after every addition

A shift > 0 rounds to a coarser grid (``shift_round_code``); a shift <= 0 is an
exact left shift. The caller has checked that nothing here leaves int64.

The sequential kernel loops i, then k, then j over a row of accumulators (the
output row itself), so the innermost loop is a SIMD integer multiply, add and
min/max across output columns (DESIGN.md, "Performance approach"). Modes are
compile-time closure constants, as in ``hwsim.kernels.quantize``.

Stochastic rounding draws ``counter_uniform(seed, (2 k + stage) E + e)``, with
``e`` the flat output index, ``E`` the number of outputs and stage 0 for the
product, 1 for the accumulator cast: the same uniforms on the torch path.
"""

from __future__ import annotations

import functools

import numpy as np

from hwsim.kernels.jit import parallel_kernel, prange
from hwsim.kernels.scalar import (
    SATURATE,
    STOCHASTIC,
    apply_overflow,
    counter_uniform,
    shift_round_code,
)

# how a stage moves a code onto its grid (compile-time constants)
STAGE_NONE, STAGE_LEFT, STAGE_ROUND = 0, 1, 2


@functools.cache
def sequential_gemm_kernel(rounding: int, overflow: int, product_stage: int, acc_stage: int):
    """kernel(A, B, out, p_shift, p_min, p_max, c_shift, c_min, c_max, seed) -> None

    A: (Bt, M, K), B: (Bt, K, N), out: (Bt, M, N), all int64 and C-contiguous.
    ``product_stage`` is STAGE_NONE without a product format."""
    stochastic = rounding == STOCHASTIC

    @parallel_kernel
    def run(A, B, out, p_shift, p_min, p_max, c_shift, c_min, c_max, seed):
        batches, rows, depth = A.shape
        cols = B.shape[2]
        total = batches * rows * cols
        p_left = -p_shift if p_shift < 0 else 0
        c_left = -c_shift if c_shift < 0 else 0
        for r in prange(batches * rows):
            b = r // rows
            i = r - b * rows
            acc = out[b, i]
            for j in range(cols):
                acc[j] = 0
            base = r * cols
            for k in range(depth):
                a = A[b, i, k]
                if a == 0:
                    continue  # a zero term leaves every accumulator unchanged
                brow = B[b, k]
                for j in range(cols):
                    t = a * brow[j]
                    if product_stage == STAGE_LEFT:
                        t = apply_overflow(t << p_left, p_min, p_max, overflow)
                    elif product_stage == STAGE_ROUND:
                        u = 0.0
                        if stochastic:
                            u = counter_uniform(seed, 2 * k * total + base + j)
                        t = apply_overflow(shift_round_code(t, p_shift, rounding, u),
                                           p_min, p_max, overflow)
                    if acc_stage == STAGE_LEFT:
                        t = apply_overflow(t << c_left, c_min, c_max, overflow)
                    else:
                        u = 0.0
                        if stochastic:
                            u = counter_uniform(seed, (2 * k + 1) * total + base + j)
                        t = apply_overflow(shift_round_code(t, c_shift, rounding, u),
                                           c_min, c_max, overflow)
                    acc[j] = apply_overflow(acc[j] + t, c_min, c_max, overflow)

    return run


@functools.cache
def reduce_codes_kernel(overflow: int):
    """kernel(sums, out, shift_left, c_min, c_max): out = overflow_C(sums << shift_left).

    Finishes the BLAS fast path: ``sums`` are exact integer sums of products
    (int64, wrapped modulo 2^64, which is harmless modulo 2^wl with wl <= 62)."""

    @parallel_kernel
    def run(sums, out, shift_left, c_min, c_max):
        for i in prange(sums.size):
            out[i] = apply_overflow(sums[i] << shift_left, c_min, c_max, overflow)

    return run



@functools.cache
def narrow_gemm_kernel(overflow: int):
    """kernel(A, B, out, c_min, c_max) -> None, for int32 codes.

    The sequential MAC loop when no rounding is needed (no product format, an
    exact left shift onto the accumulator grid) and everything fits in 32 bits:
    |a b| << c_left < 2^31 and an accumulator of at most 31 bits, so the row of
    int32 accumulators plus one clamped term never leaves int32. Twice the SIMD
    width of the int64 kernel; the arithmetic is the same. The caller shifts B
    left by c_left beforehand (a shift by a runtime amount in the loop blocked
    the 32-bit vectorization)."""

    @parallel_kernel
    def run(A, B, out, c_min, c_max):
        batches, rows, depth = A.shape
        cols = B.shape[2]
        # apply_overflow spelt out on int32 so LLVM keeps 16 lanes per vector:
        # its int64 operands would widen every lane (measured 20x slower)
        lo, hi = np.int32(c_min), np.int32(c_max)
        mask = np.int32(c_max - c_min)  # 2^wl - 1
        for r in prange(batches * rows):
            b = r // rows
            i = r - b * rows
            acc = np.zeros(cols, dtype=np.int32)
            for k in range(depth):
                a = A[b, i, k]
                if a == 0:
                    continue
                brow = B[b, k]
                for j in range(cols):
                    t = np.int32(a * brow[j])
                    if overflow == SATURATE:
                        t = min(max(t, lo), hi)
                        acc[j] = min(max(np.int32(acc[j] + t), lo), hi)
                    else:
                        t = np.int32(np.int32((t - lo) & mask) + lo)
                        acc[j] = np.int32(np.int32((np.int32(acc[j] + t) - lo) & mask) + lo)
            for j in range(cols):
                out[b, i, j] = acc[j]

    return run
