"""Specialised MAC-array kernels: the fast bodies behind ``sequential_gemm_kernel``.

Same semantics as the generic kernel in ``hwsim.kernels.gemm`` (DESIGN.md,
"MAC-array GEMM"), with everything that is fixed for one call made a
compile-time constant, so the inner loop over output columns is one straight
line of SIMD integer operations:

- ``lane_bits``: int16, int32 or int64 arithmetic (each halving doubles the
  SIMD width; the dispatcher picks the narrowest lane for which interval
  arithmetic on the operands' code ranges proves no intermediate leaves it;
  int16 lanes accumulate with the saturating lane add, then clamp to the
  format's range, which is exact when that range lies within int16);
- the rounding mode and, per stage (product, accumulator cast), the shift
  direction: right shifts round branch-free (below), left shifts are exact;
- stochastic variants compile with ``jit.widest_vectors``: their 64-bit
  counter hash would otherwise set the vector factor (4 on 256-bit vectors)
  and leave the int16/int32 lanes a quarter or half full;
- whether a stage's overflow can trigger at all (``*_check``) and whether the
  running sum can leave the accumulator's range (``acc_check``): when the
  bounds prove it cannot, the clamp or wrap is skipped, which is exact.

Under wrap the accumulator cast and every addition are taken modulo 2^wl
once, at the end: the lane arithmetic is exact modulo 2^32 (int32, truncating
casts) or 2^64, both multiples of 2^wl, and wrapping commutes with addition.

Branch-free rounding of ``t / 2^s`` (s >= 1), with q = t >> s the floor:

- nearest (ties to even): (t + 2^(s-1) - 1 + (q & 1)) >> s
- nearest_away:           (t + 2^(s-1) + (t >> 63)) >> s   (-1 for t < 0)
- zero:                   (t + ((t >> 63) & (2^s - 1))) >> s
- stochastic: q + (u < rem / 2^s), rem = t & (2^s - 1); with u = (z >> 11)
  2^-53 from ``counter_uniform`` and s <= 53 that is ``(z >> (64 - s)) < rem``
  in integers (rem is an integer, so u 2^s < rem iff floor(u 2^s) < rem).
"""

from __future__ import annotations

import functools

import numpy as np
from llvmlite import ir as llvm_ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from hwsim.kernels.jit import kernel, prange, serial_and_parallel, widest_vectors
from hwsim.kernels.mac_variant import ACC_LANE_SATURATES, LANES, STAGE_LEFT, STAGE_RIGHT
from hwsim.kernels.scalar import (
    FLOOR,
    NEAREST,
    NEAREST_AWAY,
    SATURATE,
    STOCHASTIC,
    ZERO,
)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_U30, _U27, _U31 = np.uint64(30), np.uint64(27), np.uint64(31)
_U64 = np.uint64(64)


def _shift_intrinsic(op):
    """``x op s`` in x's own width. Numba widens int32 shifts to int64 and then
    cannot prove the count below 32, which blocked the 32-bit vectorization;
    the caller guarantees 0 <= s < width."""

    @intrinsic
    def shift(typingctx, x, s):
        if not isinstance(x, types.Integer) or not isinstance(s, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            count = context.cast(builder, args[1], signature.args[1], signature.args[0])
            return getattr(builder, op)(args[0], count)

        return x(x, s), codegen

    return shift


ashr = _shift_intrinsic("ashr")
shl = _shift_intrinsic("shl")


@intrinsic
def sat_add(typingctx, x, y):
    """x + y clamped to the range of x's type (``llvm.sadd.sat``: one SIMD
    instruction on int16 lanes); x and y of the same integer type."""
    if not isinstance(x, types.Integer) or x != y:
        return None

    def codegen(context, builder, signature, args):
        ty = args[0].type
        fn = cgutils.get_or_insert_function(
            builder.module, llvm_ir.FunctionType(ty, [ty, ty]), f"llvm.sadd.sat.i{ty.width}"
        )
        return builder.call(fn, args)

    return x(x, y), codegen


@functools.cache
def mac_step(
    lane_bits: int,
    rounding: int,
    overflow: int,
    p_stage: int,
    p_check: bool,
    c_stage: int,
    c_check: bool,
    acc_check: int,
):
    """(constants, step, stored): one MAC of a variant, inlined into every
    kernel that runs it (``mac_kernel``'s GEMM, ``implicit_conv_kernel``).

    - ``constants(p_shift, p_min, p_max, c_shift, c_min, c_max)``: the call's
      loop-invariant lane constants, a tuple;
    - ``step(acc, a, b, zp, zc, k)``: the accumulator after the term
      ``a * b`` went through the product and accumulator stages (``zp``/``zc``:
      the stages' counter inputs, read only by stochastic rounding) and was
      added (saturating, or modulo the lane under wrap);
    - ``stored(acc, c_min, c_max)``: the int64 code an accumulator holds at
      the end (under wrap the lane's value taken modulo 2^wl)."""
    lane = LANES[lane_bits]
    round_right = _rounder(lane_bits, rounding)
    full_lane = acc_check == ACC_LANE_SATURATES
    saturate = overflow == SATURATE

    @kernel(inline="always")
    def constants(p_shift, p_min, p_max, c_shift, c_min, c_max):
        ps = lane(p_shift if p_shift > 0 else -p_shift)
        cs = lane(c_shift if c_shift > 0 else -c_shift)
        p_half, p_mask = lane(0), lane(0)
        if p_stage == STAGE_RIGHT:
            p_half, p_mask = shl(lane(1), ps - lane(1)), shl(lane(1), ps) - lane(1)
        c_half, c_mask = lane(0), lane(0)
        if c_stage == STAGE_RIGHT:
            c_half, c_mask = shl(lane(1), cs - lane(1)), shl(lane(1), cs) - lane(1)
        p_drop = _U64 - np.uint64(ps)  # z >> (64 - s): floor(u 2^s)
        c_drop = _U64 - np.uint64(cs)
        p_lo, p_hi, p_span = lane(p_min), lane(p_max), lane(p_max - p_min)
        return (ps, p_half, p_mask, p_drop, p_lo, p_hi, p_span,
                cs, c_half, c_mask, c_drop, lane(c_min), lane(c_max))  # fmt: skip

    @kernel(inline="always")
    def step(acc, a, b, zp, zc, k):
        ps, p_half, p_mask, p_drop, p_lo, p_hi, p_span = k[0], k[1], k[2], k[3], k[4], k[5], k[6]
        cs, c_half, c_mask, c_drop, c_lo, c_hi = k[7], k[8], k[9], k[10], k[11], k[12]
        t = lane(a * b)
        if p_stage == STAGE_LEFT:
            t = shl(t, ps)
        elif p_stage == STAGE_RIGHT:
            t = round_right(t, ps, p_half, p_mask, zp, p_drop)
        if p_check:
            if saturate:
                t = min(max(t, p_lo), p_hi)
            else:
                t = lane(lane(lane(t - p_lo) & p_span) + p_lo)
        if c_stage == STAGE_LEFT:
            t = shl(t, cs)
        else:
            t = round_right(t, cs, c_half, c_mask, zc, c_drop)
        if not saturate:
            return lane(acc + t)  # modulo the lane width; wrapped by ``stored``
        if c_check:
            t = min(max(t, c_lo), c_hi)
        if lane_bits == 16 and acc_check:
            # the lane's own saturating add, then the format's range
            s = sat_add(acc, lane(t))
            return s if full_lane else min(max(s, c_lo), c_hi)
        if acc_check:
            return min(max(lane(acc + t), c_lo), c_hi)
        return lane(acc + t)

    @kernel(inline="always")
    def stored(acc, c_min, c_max):
        if saturate:
            return np.int64(acc)
        return ((np.int64(acc) - c_min) & np.int64(c_max - c_min)) + c_min  # span 2^wl - 1

    return constants, step, stored


@functools.cache
def mac_kernel(*key):
    """(serial, parallel) kernel(A, B, out, p_shift, p_min, p_max, c_shift,
    c_min, c_max, seed, row_step, col_step) -> None for a ``mac_variant.choose`` key
    (:func:`mac_step`'s arguments): the same body, the parallel one over rows.

    A (Bt, M, K) and B (Bt, K, N) in the lane type (int16, int32 or int64), out
    (Bt, M, N) int64. Shifts as in the generic kernel (> 0 right, rounding;
    <= 0 left), but their signs must match ``p_stage``/``c_stage``. Output
    (b, i, j) draws its noise as the flat output index ``b M N + i row_step
    + j col_step``: (N, 1) for this product itself, (1, M) where it is the
    transpose of the caller's (``hwsim.kernels.gemm``'s thin outputs)."""
    lane = LANES[key[0]]
    constants, step, stored = mac_step(*key)

    def run(A, B, out, p_shift, p_min, p_max, c_shift, c_min, c_max, seed, row_step, col_step):
        batches, rows, depth = A.shape
        cols = B.shape[2]
        total = batches * rows * cols
        k = constants(p_shift, p_min, p_max, c_shift, c_min, c_max)
        # counter offsets along j
        steps = np.arange(cols).astype(np.uint64) * np.uint64(col_step) * _GOLDEN
        for r in prange(batches * rows):
            b = r // rows
            i = r - b * rows
            acc = np.zeros(cols, dtype=lane)
            base = np.uint64(b * rows * cols + i * row_step)
            for kk in range(depth):
                a = lane(A[b, i, kk])
                if a == 0:
                    continue  # a zero term leaves every accumulator unchanged
                brow = B[b, kk]
                zp = np.uint64(seed) + (np.uint64(2 * kk * total) + base + np.uint64(1)) * _GOLDEN
                zc = zp + np.uint64(total) * _GOLDEN
                for j in range(cols):
                    acc[j] = step(acc[j], a, brow[j], zp + steps[j], zc + steps[j], k)
            for j in range(cols):
                out[b, i, j] = stored(acc[j], c_min, c_max)

    kernels = serial_and_parallel(run)
    return tuple(map(widest_vectors, kernels)) if key[1] == STOCHASTIC else kernels


@functools.cache
def _rounder(lane_bits: int, rounding: int):
    """round_right(t, s, half, mask, z, drop): t / 2^s rounded (s >= 1) in the
    lane type, branch-free; ``z`` the counter input of ``counter_uniform``
    (stochastic only) and ``drop`` = 64 - s."""
    lane = LANES[lane_bits]
    top = lane(lane_bits - 1)  # t >> top: -1 for t < 0, else 0
    one, zero = lane(1), lane(0)

    @kernel(inline="always")
    def round_right(t, s, half, mask, z, drop):
        if rounding == FLOOR:
            return ashr(t, s)
        if rounding == NEAREST:
            return ashr(lane(t + (half - one) + (ashr(t, s) & one)), s)
        if rounding == NEAREST_AWAY:
            return ashr(lane(t + half + ashr(t, top)), s)
        if rounding == ZERO:
            return ashr(lane(t + (ashr(t, top) & mask)), s)
        z = (z ^ (z >> _U30)) * _MIX1
        z = (z ^ (z >> _U27)) * _MIX2
        if lane_bits == 64:
            # SplitMix64's last step; below 64-bit lanes s <= 30, and the top
            # s bits of z ^ (z >> 31) are those of z, the only ones read
            z = z ^ (z >> _U31)
        up = np.int64(z >> drop) < np.int64(t & mask)
        return lane(ashr(t, s) + (one if up else zero))

    return round_right


@functools.cache
def implicit_conv_kernel(*key):
    """(serial, parallel) kernel(W, xt, out, top, left, sh, p_shift, p_min,
    p_max, c_shift, c_min, c_max) -> None: a stride-(sh, 1) convolution's MAC
    array without its im2col columns, for a ``mac_kernel`` key (``mac_variant``)
    whose rounding draws no noise.

    W (O, C, kh, kw) and xt (C, H, W, N) (x with the batch innermost) in the
    lane type, out (O, Ho, Wo, N) int64. Output (o, y, q, b) adds the terms
    ``W[o, c, i, j] x[b, c, y sh + i - top, q + j - left]`` in the order
    (c, i, j), as the GEMM of the weights with the im2col columns does, but
    skips those whose x lies in the padding (zero terms leave an accumulator
    as it is, saturated or not) and never forms the columns: for each (c, i,
    j) and row y the valid positions (q, b) are one contiguous run of xt."""
    lane = LANES[key[0]]
    constants, step, stored = mac_step(*key)

    def run(W, xt, out, top, left, sh, p_shift, p_min, p_max, c_shift, c_min, c_max):
        n_out, n_in, kh, kw = W.shape
        _, h, w, n = xt.shape
        ho, wo = out.shape[1], out.shape[2]
        k = constants(p_shift, p_min, p_max, c_shift, c_min, c_max)
        src = xt.reshape(-1)
        dst = out.reshape(-1)
        size = ho * wo * n
        for o in prange(n_out):
            acc = np.zeros(size, dtype=lane)
            for c in range(n_in):
                for i in range(kh):
                    # rows y with 0 <= y sh + i - top < h (floor division: Python's)
                    y0 = max(0, -((i - top) // sh))
                    y1 = min(ho, max(y0, -((i - top - h) // sh)))
                    for j in range(kw):
                        a = lane(W[o, c, i, j])
                        q0, q1 = max(0, left - j), min(wo, w + left - j)
                        if a == 0 or q1 <= q0:
                            continue
                        span = (q1 - q0) * n
                        for y in range(y0, y1):
                            s = np.uintp(((c * h + y * sh + i - top) * w + q0 + j - left) * n)
                            d = np.uintp((y * wo + q0) * n)
                            for e in range(np.uintp(span)):
                                acc[d + e] = step(acc[d + e], a, src[s + e], _U64, _U64, k)
            base = o * size
            for e in range(size):
                dst[base + e] = stored(acc[e], c_min, c_max)

    return serial_and_parallel(run)
