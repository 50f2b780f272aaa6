"""MAC-array GEMM kernels on integer codes (bit-true, CPU).

Semantics: ../shared/DESIGN.md, "MAC-array GEMM". For every output element
(b, i, j) one accumulator runs over k = 0 .. K-1:

    t   = A[b, i, k] * B[b, k, j]              exact int64 product
    t   = overflow_P(shift_round(t, p_shift))  only with a product format
    t   = overflow_C(shift_round(t, c_shift))  cast onto the accumulator grid
    acc = overflow_C(acc + t)                  after every addition

A shift > 0 rounds to a coarser grid (``shift_round_code``); a shift <= 0 is an
exact left shift (a multiple of 2^64 off under wrap, which is exact modulo
2^wl). The caller has checked that nothing here leaves int64.

The sequential kernel loops i, then k, then j over a row of accumulators (the
output row itself), so the innermost loop is a SIMD integer multiply, add and
min/max across output columns (DESIGN.md, "Performance approach"). Modes are
compile-time closure constants, as in ``hwsim.kernels.quantize``; the bodies
specialised further (lane width, shift directions, skipped overflow checks)
live in ``hwsim.kernels.gemm_mac``, and ``sequential_gemm_kernel`` picks one
per call.

Stochastic rounding draws ``counter_uniform(seed, (2 k + stage) E + e)``, with
``e`` the flat output index, ``E`` the number of outputs and stage 0 for the
product, 1 for the accumulator cast: the same uniforms on the torch path.
"""

from __future__ import annotations

import functools

import numpy as np

from hwsim.kernels import gemm_mac, mac_variant
from hwsim.kernels.jit import (
    SERIAL_BELOW,
    kernel,
    parallel_kernel,
    prange,
    serial_and_parallel,
)
from hwsim.kernels.scalar import (
    FLOOR,
    STOCHASTIC,
    apply_overflow,
    counter_uniform,
    shift_round_code,
)
from hwsim.plan.gemm import thin_product


@functools.cache
def sequential_gemm_kernel(rounding: int, overflow: int, has_product: bool):
    """kernel(A, B, out, p_shift, p_min, p_max, c_shift, c_min, c_max, seed) -> None

    A: (Bt, M, K), B: (Bt, K, N) integer codes (int64, or narrower; any
    strides: each kernel takes the layout it reads, copying only where it
    must), out: (Bt, M, N) int64, C-contiguous.
    A dispatcher: from the operands' code ranges it picks a specialised
    ``hwsim.kernels.gemm_mac.mac_kernel`` (int16/int32 lanes where they are proven
    to suffice, shift directions and skipped overflow checks as compile-time
    constants) and falls back to ``generic_gemm_kernel`` where none is proven
    exact. Both compute the same codes."""

    def run(A, B, out, p_shift, p_min, p_max, c_shift, c_min, c_max, seed, ranges=None):
        # ranges: ((min, max) of A, of B) as code_stats gives them (0 included),
        # where the caller knows them already
        key = None
        if A.size and B.size:
            if ranges is None:
                _, a_lo, a_hi = code_stats(A.reshape(-1))
                _, b_lo, b_hi = code_stats(B.reshape(-1))
            else:
                (a_lo, a_hi), (b_lo, b_hi) = ranges
            key = mac_variant.variant(
                (int(a_lo), int(a_hi)),
                (int(b_lo), int(b_hi)),
                A.shape[2],
                has_product,
                rounding,
                overflow,
                (int(p_shift), int(c_shift)),
                (int(p_min), int(p_max), int(c_min), int(c_max)),
            )
        if key is None:
            generic_gemm_kernel(rounding, overflow, has_product)(
                np.ascontiguousarray(A, dtype=np.int64),
                np.ascontiguousarray(B, dtype=np.int64),
                out,
                p_shift,
                p_min,
                p_max,
                c_shift,
                c_min,
                c_max,
                seed,
            )
            return
        lane = mac_variant.LANES[key[0]]
        kernels = gemm_mac.mac_kernel(*key)
        rows, cols = A.shape[1], B.shape[2]
        consts = (p_shift, p_min, p_max, c_shift, c_min, c_max, np.uint64(seed))
        if thin_product(rows, cols):  # the same noise too: the counter steps below
            At = np.ascontiguousarray(B.transpose(0, 2, 1), dtype=lane)
            Bt = np.ascontiguousarray(A.transpose(0, 2, 1), dtype=lane)
            out_t = np.empty((A.shape[0], cols, rows), dtype=np.int64)
            _by_size(kernels, At, Bt)(At, Bt, out_t, *consts, 1, cols)
            out[...] = out_t.transpose(0, 2, 1)
            return
        A, B = np.ascontiguousarray(A, dtype=lane), np.ascontiguousarray(B, dtype=lane)
        _by_size(kernels, A, B)(A, B, out, *consts, cols, 1)

    return run


@functools.cache
def generic_gemm_kernel(rounding: int, overflow: int, has_product: bool):
    """The generic body of ``sequential_gemm_kernel``, for the calls no
    specialised variant covers (stochastic shifts past 53 bits, rounding
    offsets that would leave int64): the shift direction is a loop-invariant
    runtime branch inside ``shift_round_code``, all arithmetic int64."""
    stochastic = rounding == STOCHASTIC

    def run(A, B, out, p_shift, p_min, p_max, c_shift, c_min, c_max, seed):
        batches, rows, depth = A.shape
        cols = B.shape[2]
        total = batches * rows * cols
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
                    if has_product:
                        u = 0.0
                        if stochastic:
                            u = counter_uniform(seed, 2 * k * total + base + j)
                        t = apply_overflow(
                            shift_round_code(t, p_shift, rounding, u), p_min, p_max, overflow
                        )
                    u = 0.0
                    if stochastic:
                        u = counter_uniform(seed, (2 * k + 1) * total + base + j)
                    t = apply_overflow(
                        shift_round_code(t, c_shift, rounding, u), c_min, c_max, overflow
                    )
                    acc[j] = apply_overflow(acc[j] + t, c_min, c_max, overflow)

    kernels = serial_and_parallel(run)

    def dispatch(A, B, *args):
        _by_size(kernels, A, B)(A, B, *args)

    return dispatch


def _by_size(kernels, A, B):
    """The serial or the parallel one of ``(serial, parallel)`` GEMM kernels on
    (Bt, M, K) @ (Bt, K, N): a layer's small GEMMs skip the thread pool's
    dispatch (on one thread it still cost 4 us a call)."""
    return kernels[A.shape[0] * A.shape[1] * A.shape[2] * B.shape[2] >= SERIAL_BELOW]


@functools.cache
def narrow_gemm_kernel(overflow: int):
    """kernel(A, B, out, c_min, c_max) -> None, for int32 codes.

    The sequential MAC loop when no rounding is needed (no product format, an
    exact left shift onto the accumulator grid, which the caller has applied
    to B) and everything fits in 32 bits. The ``sequential_gemm_kernel``
    dispatcher with a zero shift: int16 lanes where the codes and the
    accumulator fit them, else int32."""
    run = sequential_gemm_kernel(FLOOR, overflow, False)

    def narrow(A, B, out, c_min, c_max):
        run(A, B, out, 0, 0, 0, 0, c_min, c_max, 0)

    return narrow


CHUNKS = 64  # parallel reductions: each chunk reduced serially, then the chunks


ABS_MASK = np.int64(0x7FFFFFFFFFFFFFFF)
EXP_ALL_ONES = np.int64(0x7FF0000000000000)  # |bits| at or above: Inf or NaN
MANT_MASK = np.int64((1 << 52) - 1)
IMPLICIT = np.int64(1 << 52)

# The two scans below read float64 values through their int64 bit patterns:
# integer max/shift/compare vectorize, while float max and trunc (under the
# strict IEEE flags of hwsim.kernels.jit) do not (measured 30-90x slower).


@kernel
def _on_grid(a, fl):
    """|x| (its float64 bits ``a``, sign cleared) on the grid 2^-fl, exactly:
    (m << left, code, right) with x = m 2^(max(e, 1) - 1075) and
    code = (m << left) >> right; the value is on the grid iff
    ``code << right == m << left``. Shared by every grid scan below."""
    e = a >> 52
    mant = a & MANT_MASK
    m = mant | IMPLICIT if e > 0 else mant
    sh = max(e, np.int64(1)) - 1075 + fl
    left = min(max(sh, np.int64(0)), np.int64(63))
    right = min(max(-sh, np.int64(0)), np.int64(63))
    ml = m << left
    return ml, ml >> right, right


@parallel_kernel
def abs_max_bits(bits):
    """(bit pattern of the largest finite |x|, count of non-finite values), for
    ``bits`` = float64 values viewed as int64 (|x| orders like its bits)."""
    n = bits.size
    tops = np.zeros(CHUNKS, dtype=np.int64)
    bad = np.zeros(CHUNKS, dtype=np.int64)
    step = (n + CHUNKS - 1) // CHUNKS
    for c in prange(CHUNKS):
        top, nb = np.int64(0), 0
        for i in range(c * step, min(n, (c + 1) * step)):
            a = bits[i] & ABS_MASK
            finite = a < EXP_ALL_ONES
            nb += 0 if finite else 1
            top = max(top, a if finite else 0)
        tops[c], bad[c] = top, nb
    return tops.max(), bad.sum()


@parallel_kernel
def scale_to_grid(bits, out, fl):
    """out = x * 2^fl as int64, exactly, from float64 bit patterns; the caller
    ensures |x| 2^fl < 2^63. Returns (count of values not on the grid 2^-fl,
    bitwise OR of all codes): the OR's trailing zeros say how much coarser the
    grid may be."""
    n = bits.size
    offs = np.zeros(CHUNKS, dtype=np.int64)
    ors = np.zeros(CHUNKS, dtype=np.int64)
    step = (n + CHUNKS - 1) // CHUNKS
    for c in prange(CHUNKS):
        off, acc = 0, np.int64(0)
        for i in range(c * step, min(n, (c + 1) * step)):
            b = bits[i]
            ml, code, right = _on_grid(b & ABS_MASK, fl)
            off += 1 if (code << right) != ml else 0
            code = -code if b < 0 else code
            out[i] = code
            acc |= code
        offs[c], ors[c] = off, acc
    total_or = np.int64(0)
    for c in range(CHUNKS):
        total_or |= ors[c]
    return offs.sum(), total_or


@parallel_kernel
def shift_codes(codes, shift):
    """codes >>= shift in place (exact: the caller knows all are multiples of 2^shift)."""
    for i in prange(codes.size):
        codes[i] >>= shift


@kernel
def _stats_slice(codes):
    """One chunk of :func:`code_stats`; a separate function over range(size) so
    the loop vectorizes."""
    mag, lo, hi = np.int64(0), np.int64(0), np.int64(0)
    for i in range(codes.size):
        code = codes[i]
        mag = max(mag, abs(code))
        lo = min(lo, code)
        hi = max(hi, code)
    return mag, lo, hi


@parallel_kernel
def code_stats(codes):
    """(max |code|, min code, max code) of int64 ``codes`` (0s count; read only)."""
    n = codes.size
    mags = np.zeros(CHUNKS, dtype=np.int64)
    los = np.zeros(CHUNKS, dtype=np.int64)
    his = np.zeros(CHUNKS, dtype=np.int64)
    step = (n + CHUNKS - 1) // CHUNKS
    for c in prange(CHUNKS):
        mags[c], los[c], his[c] = _stats_slice(codes[min(n, c * step) : min(n, (c + 1) * step)])
    return mags.max(), los.min(), his.max()


# -- the float wrap fast path: BLAS straight on the operands' float64 values ------------


@kernel
def _scan_grid_range(bits, fl):
    """``scan_grid`` on one chunk: (top over x >= 0, over x < 0, top |x|, OR of
    dropped bits, OR of codes). A separate function looping over range(size):
    the same loop over range(start, stop), in a prange body or not, ran 2.5x
    slower (not vectorized)."""
    tp, tn, ta, offb, acc = np.int64(0), np.int64(0), np.int64(0), np.int64(0), np.int64(0)
    for i in range(bits.size):
        b = bits[i]
        a = b & ABS_MASK
        sign = b >> 63  # -1 for x < 0, else 0
        ta = max(ta, a)
        tp = max(tp, a & ~sign)
        tn = max(tn, a & sign)
        ml, code, right = _on_grid(a, fl)
        offb |= ml ^ (code << right)
        acc |= code
    return tp, tn, ta, offb, acc


@parallel_kernel
def scan_grid(bits, fl):
    """One pass over float64 values viewed as int64: (largest |x| bits over
    x >= 0, over x < 0, non-finite count (0 or 1), off-grid flag (0 or 1), OR
    of |codes| on the grid 2^-fl). The last two are meaningful only when every
    |x| 2^fl < 2^63. Branch-free (sign masks, an OR of dropped bits) so the
    loop vectorizes: measured 3.5x faster than with selects and counters."""
    n = bits.size
    pos = np.zeros(CHUNKS, dtype=np.int64)
    neg = np.zeros(CHUNKS, dtype=np.int64)
    top = np.zeros(CHUNKS, dtype=np.int64)
    offs = np.zeros(CHUNKS, dtype=np.int64)
    ors = np.zeros(CHUNKS, dtype=np.int64)
    step = (n + CHUNKS - 1) // CHUNKS
    for c in prange(CHUNKS):
        pos[c], neg[c], top[c], offs[c], ors[c] = _scan_grid_range(
            bits[min(n, c * step) : min(n, (c + 1) * step)], fl
        )
    total_or, total_off = np.int64(0), np.int64(0)
    for c in range(CHUNKS):
        total_or |= ors[c]
        total_off |= offs[c]
    bad = 1 if top.max() >= EXP_ALL_ONES else 0
    return pos.max(), neg.max(), bad, 1 if total_off != 0 else 0, total_or


@parallel_kernel
def grid_or(bits, fl):
    """``scale_to_grid`` without storing the codes: (count of values off the
    grid 2^-fl, bitwise OR of all |codes|)."""
    n = bits.size
    offs = np.zeros(CHUNKS, dtype=np.int64)
    ors = np.zeros(CHUNKS, dtype=np.int64)
    step = (n + CHUNKS - 1) // CHUNKS
    for c in prange(CHUNKS):
        off, acc = 0, np.int64(0)
        for i in range(c * step, min(n, (c + 1) * step)):
            ml, code, right = _on_grid(bits[i] & ABS_MASK, fl)
            off += 1 if (code << right) != ml else 0
            acc |= code
        offs[c], ors[c] = off, acc
    total_or = np.int64(0)
    for c in range(CHUNKS):
        total_or |= ors[c]
    return offs.sum(), total_or
