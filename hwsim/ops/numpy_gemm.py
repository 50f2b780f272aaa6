"""The NumPy backend of the MAC-array GEMM: exact operand codes found from the
data, the plan (``hwsim.plan.gemm``), then the Numba kernels
(``hwsim.kernels.gemm``) or float64 BLAS on the codes where that is exact."""

from __future__ import annotations

import math

import numpy as np

from hwsim.errors import CodeOverflowError
from hwsim.formats import MAX_WL, FloatingPoint
from hwsim.kernels import blas_sums as kb
from hwsim.kernels import gemm as kg
from hwsim.kernels.jit import SERIAL_BELOW, SERIAL_BELOW_ELEMENTWISE, threads_for
from hwsim.modes import Overflow
from hwsim.plan.checks import EXACT_FLOAT32, raise_non_finite_numpy
from hwsim.plan.gemm import (
    INT64_LIMIT,
    blas_code_sums,
    broadcast_operands,
    check_grid_span,
    code_ranges,
    fast_chunk,
    float_sum_upper,
    narrow_ok,
    plan_gemm,
    products_nonneg,
    seed_bits,
    squeeze_result,
    use_fast_path,
)

# -- operand codes -------------------------------------------------------------------


def grid_codes_numpy(x, name: str) -> tuple[np.ndarray, int]:
    """(int64 codes, fl) with ``x == codes * 2^-fl`` exactly and the smallest such fl."""
    codes, fl, _ = grid_codes_stats_numpy(x, name)
    return codes, fl


def grid_codes_stats_numpy(x, name: str):
    """(codes, fl, (max |code|, min code, max code)); the stats come free with
    the conversion kernel, and the planner needs them."""

    arr = np.asarray(x)
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be a float or integer array, got dtype {arr.dtype}")
    if arr.dtype.kind in "iu":
        if arr.dtype == np.uint64 and arr.size and int(arr.max()) >= INT64_LIMIT:
            raise CodeOverflowError(f"{name} holds integers past int64")
        codes = np.ascontiguousarray(arr, dtype=np.int64)
        return codes, 0, None
    f = np.ascontiguousarray(arr, dtype=np.float64)
    with threads_for(f.size):
        return _grid_codes_float(f, name)


def _grid_codes_float(f, name):
    bits = f.reshape(-1).view(np.int64)
    top_bits, bad = kg.abs_max_bits(bits)
    if bad:
        raise_non_finite_numpy(f)
    if top_bits == 0:
        return np.zeros(f.shape, dtype=np.int64), 0, (0, 0, 0)
    # put the largest value just below 2^62, check every value lands on an
    # integer, then coarsen the grid by the codes' common trailing zeros
    top_exp = int(np.frexp(np.int64(top_bits).view(np.float64))[1])  # |x| < 2^top_exp
    fl_fine = MAX_WL - top_exp
    codes = np.empty(f.shape, dtype=np.int64)
    off, ors = kg.scale_to_grid(bits, codes.reshape(-1), fl_fine)
    if off:  # some value needs a finer grid than 62-bit codes allow
        fl_need = _finest_fl(f)
        check_grid_span(max(top_exp + fl_need, MAX_WL + 1), fl_need, name)
    tz = (int(ors) & -int(ors)).bit_length() - 1
    if tz:
        kg.shift_codes(codes.reshape(-1), tz)
    stats = kg.code_stats(codes.reshape(-1))
    return codes, fl_fine - tz, tuple(int(v) for v in stats)


def _finest_fl(f: np.ndarray) -> int:
    """The smallest fl putting every value of float64 ``f`` on the grid 2^-fl
    (slow; only used to word an error)."""
    nz = f[f != 0]
    m, e = np.frexp(nz)
    mant = np.ldexp(m, 53).astype(np.int64)
    tz = np.frexp((mant & -mant).astype(np.float64))[1] - 1
    return int((53 - e - tz).max())


def operand_codes_numpy(x, fmt, name, rounding, overflow, seed):
    """(codes, fl, stats or None) of an operand, quantized onto ``fmt`` if given."""
    if fmt is None:
        return grid_codes_stats_numpy(x, name)
    from hwsim.ops.quantize import quantize, to_codes

    if isinstance(fmt, FloatingPoint):  # float operands into a fixed-point accumulator
        values = quantize(np.asarray(x, dtype=np.float64), fmt, rounding, seed=seed)
        return grid_codes_stats_numpy(values, name)

    return to_codes(np.asarray(x), fmt, rounding, overflow, seed=seed), fmt.fl, None


def _float_grid_stats(f):
    """(fl, (max |code|, min code, max code)) of float64 ``f`` as
    ``_grid_codes_float`` finds them, without writing the codes; None where that
    function would take another branch (all zeros, non-finite, off the grid)."""
    bits = f.reshape(-1).view(np.int64)
    # one pass on a grid guessed from a sample (its codes fit when the largest
    # |x| is below 4 times the sample's), else a second pass on the right one
    sample = np.abs(f.reshape(-1)[:: max(1, f.size // 256)]).max()
    fl_guess = None
    if np.isfinite(sample) and sample > 0:
        fl_guess = MAX_WL - 1 - math.frexp(float(sample))[1]
    pos, neg, bad, off, ors = kg.scan_grid(bits, 0 if fl_guess is None else fl_guess)
    top = max(int(pos), int(neg))
    if bad or top == 0:
        return None
    as_float = lambda v: float(np.int64(v).view(np.float64))  # noqa: E731
    top_exp = math.frexp(as_float(top))[1]  # |x| < 2^top_exp
    fl_fine = MAX_WL - top_exp
    if fl_guess is None or top_exp + fl_guess > 63 or (off and fl_guess < fl_fine):
        fl_guess = fl_fine
        off, ors = kg.grid_or(bits, fl_fine)
    if off:
        return None
    fl = fl_guess - ((int(ors) & -int(ors)).bit_length() - 1)
    if fl > fl_fine:  # off the grid 2^-fl_fine: the general path words the error
        return None
    code = lambda v: int(math.ldexp(as_float(v), fl))  # noqa: E731  exact: on the grid
    return fl, (code(top), -code(neg), code(pos))


def float_wrap_fast(a, b, acc, product, path, values):
    """The wrap fast path on float operands without integer codes: where BLAS on
    the codes is exact, so is BLAS on the values (the codes times 2^-fa and
    2^-fb: every product and partial sum is an integer below 2^53 times
    2^-(fa + fb), kept away from float64's overflow and underflow here). Returns
    the result, or None to take the general path (which also words any error)."""
    if path == "sequential":
        return None
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind != "f" or b.dtype.kind != "f" or a.size == 0 or b.size == 0:
        return None
    fa_arr = np.ascontiguousarray(a, dtype=np.float64)
    fb_arr = np.ascontiguousarray(b, dtype=np.float64)
    with threads_for(fa_arr.size):
        ga = _float_grid_stats(fa_arr)
    if ga is None:
        return None
    with threads_for(fb_arr.size):
        gb = _float_grid_stats(fb_arr)
    if gb is None:
        return None
    (fa, sa), (fb, sb) = ga, gb
    if not -900 <= fa + fb <= 900:
        return None
    fa_arr, fb_arr, squeeze, batch = broadcast_operands(fa_arr, fb_arr, np)
    m, k = fa_arr.shape[-2:]
    n = fb_arr.shape[-1]
    nonneg = products_nonneg(sa, sb)
    plan = plan_gemm(fa, fb, sa[0], sb[0], nonneg, acc, product, Overflow.WRAP)
    if not use_fast_path(plan, path, k, Overflow.WRAP, None):
        return None
    bt = math.prod(batch)
    a3 = _batched(fa_arr, batch, (m, k), bt)
    b3 = _batched(fb_arr, batch, (k, n), bt)
    scale = 2.0 ** (fa + fb)  # sums * scale: the integer sums of code products
    shift = plan.left_shift
    sums, chunked = blas_code_sums(a3, b3, plan.wrap_chunk, scale)
    if chunked:
        scaled, shifted = False, True  # int64 sums, exact modulo 2^64
    else:  # |sum| < 2^53 2^-(fa + fb), exact
        if shift <= 9:  # |sum| 2^shift < 2^62: fold the shift into the exact scaling
            scale, shift, shifted = scale * 2.0**shift, 0, False
        else:
            shifted = True
        scaled = True
    out = np.empty((bt, m, n), dtype=np.float64 if values else np.int64)
    run = kb.reduce_float_sums_kernel(int(Overflow.WRAP), scaled, shifted, values)
    with threads_for(out.size):
        run(sums.reshape(-1), out.reshape(-1), scale, shift, acc.min_code, acc.max_code, acc.lsb)
    return squeeze_result(out.reshape(batch + (m, n)), squeeze)


# -- the NumPy backend ----------------------------------------------------------------


def batched_gemm_numpy(
    ca, fa, cb, fb, acc, product, rounding, overflow, seed, path, stats=(None, None)
):
    """Codes of the MAC-array product of int64 code arrays ``ca`` (..., M, K) and
    ``cb`` (..., K, N) with fractional lengths ``fa``, ``fb``. ``stats``: the
    operands' (max |code|, min, max) when already known."""
    ca, cb, squeeze, batch = broadcast_operands(ca, cb, np)
    m, k = ca.shape[-2:]
    n = cb.shape[-1]
    bt = math.prod(batch)
    # views: an operand broadcast over the batch (a conv's weights) keeps batch stride 0
    a3 = _batched(ca, batch, (m, k), bt)
    b3 = _batched(cb, batch, (k, n), bt)
    with threads_for(a3.shape[0] * m * n * max(k, 1)):
        out = _gemm_numpy(
            (ca, a3), (cb, b3), fa, fb, acc, product, rounding, overflow, seed, path, stats
        )
    return squeeze_result(out.reshape(batch + (m, n)), squeeze)


def _batched(x, batch: tuple, mat: tuple, bt: int):
    """``x`` as a (Bt, rows, cols) view, broadcast over the batch where it
    has fewer or unit leading dims (np.broadcast_to only then: a layer's
    GEMM calls it several times a step)."""
    if x.shape[:-2] != batch:
        x = np.broadcast_to(x, batch + mat)
    return x.reshape(bt, *mat)


def gemm_2d(ca, fa, cb, fb, acc, product, rounding, overflow, seed, stats):
    """:func:`batched_gemm_numpy` of 2-D operands (M, K) and (K, N) whose
    ``stats`` are known, without the broadcasting: a layer's GEMMs."""
    m, k = ca.shape
    n = cb.shape[1]
    if cb.shape[0] != k:
        raise ValueError(f"matmul shapes do not match: {ca.shape} and {cb.shape}")
    args = ((ca, ca[None]), (cb, cb[None]), fa, fb, acc, product, rounding, overflow, seed)
    work = m * n * max(k, 1)
    if work < SERIAL_BELOW and m * n < SERIAL_BELOW_ELEMENTWISE and stats[0] and stats[1]:
        # every kernel on the way takes its serial twin by size: no pool to limit
        return _gemm_numpy(*args, "auto", stats)[0]
    with threads_for(work):
        return _gemm_numpy(*args, "auto", stats)[0]


def _gemm_numpy(a, b, fa, fb, acc, product, rounding, overflow, seed, path, stats):
    """``a``, ``b``: (the operand as given, its (Bt, M, K) / (Bt, K, N) view)."""
    (ca, a3), (cb, b3) = a, b
    m, k = a3.shape[1:]
    n = b3.shape[2]
    empty = a3.size == 0 or b3.size == 0
    sa, sb = stats  # read from the operands as given: broadcasting repeats, adds no code
    sa = (0, 0, 0) if empty else sa or kg.code_stats(np.ascontiguousarray(ca).reshape(-1))
    sb = (0, 0, 0) if empty else sb or kg.code_stats(np.ascontiguousarray(cb).reshape(-1))
    nonneg = products_nonneg(sa, sb)
    plan = plan_gemm(fa, fb, int(sa[0]), int(sb[0]), nonneg, acc, product, overflow)
    out = np.empty((a3.shape[0], m, n), dtype=np.int64)

    def bound() -> float:
        # the cheap bound max_i sum_k |a_ik| max|b| (or the transpose) often settles
        # it; the tight one is another GEMM
        cheap = _row_sum_bound(a3, b3, int(sa[0]), int(sb[0]))
        if float_sum_upper(cheap, k, extra_roundings=2) <= plan.fast_saturate_limit:
            return cheap
        return _tight_bound_numpy(a3, b3)

    if use_fast_path(plan, path, k, overflow, bound):
        chunk = fast_chunk(plan, overflow, k)
        # float32 BLAS where it is exact too: every partial sum an integer below 2^24
        single = chunk >= k and plan.max_product * k < EXACT_FLOAT32
        if chunk >= k and a3.shape[0] == 1 and m * n * k < SERIAL_BELOW:  # a layer's GEMM:
            run = kb.blas_codes_kernel(int(overflow), single)  # one call, no batch
            run(a3[0], b3[0], out[0], plan.left_shift, acc.min_code, acc.max_code)
            return out
        sums = _blas_sums(a3, b3, chunk, np.float32 if single else np.float64)
        kb.reduce_codes_kernel(int(overflow))(
            sums.reshape(-1), out.reshape(-1), plan.left_shift, acc.min_code, acc.max_code
        )
        return out
    if narrow_ok(plan):
        run = kg.narrow_gemm_kernel(int(overflow))
        run(
            np.ascontiguousarray(a3, dtype=np.int32),
            np.left_shift(b3, -plan.acc_shift, dtype=np.int64).astype(np.int32),  # b3 may be int32
            out,
            acc.min_code,
            acc.max_code,
        )
    else:
        run = kg.sequential_gemm_kernel(int(rounding), int(overflow), product is not None)
        p = product if product is not None else acc
        ranges = code_ranges(sa, sb)
        run(
            a3,
            b3,
            out,
            plan.product_shift,
            p.min_code,
            p.max_code,
            plan.acc_shift,
            acc.min_code,
            acc.max_code,
            np.uint64(seed_bits(seed)),
            ranges=ranges,  # code_stats of the operands: their stats (0 included)
        )
    return out


def _shared(x3) -> bool:
    """True when every batch entry of the (Bt, ., .) view is one matrix."""
    return x3.shape[0] > 1 and x3.strides[0] == 0


def _blas_sums(a3, b3, chunk: int, dtype=np.float64):
    """float64 (or, where the caller has proven it exact, float32) BLAS on
    the codes (``blas_code_sums``). An operand shared by
    the whole batch is converted once and broadcast by ``matmul``; stacking
    the batch into one wide product instead, (M, K) @ (K, Bt N), cost a
    transposing copy 10-20x the products (a conv layer's 32 x (150, 16)
    columns). Exact either way: every partial sum is an integer below 2^53,
    so the grouping cannot change a bit."""
    if _shared(b3) and not _shared(a3):  # (Bt M, K) @ (K, N): one call
        tall = a3.astype(dtype).reshape(1, -1, a3.shape[2])
        sums, _ = blas_code_sums(tall, b3[:1].astype(dtype), chunk)
        return sums.reshape(a3.shape[0], a3.shape[1], b3.shape[2])
    a = a3[:1] if _shared(a3) else a3  # matmul broadcasts it over the batch
    sums, _ = blas_code_sums(a.astype(dtype), b3.astype(dtype), chunk)
    return sums


def _row_sum_bound(a3, b3, max_a: int, max_b: int) -> float:
    """An upper bound on max over outputs of sum_k |a_ik b_kj|: the largest row
    sum of |A| times max|B|, or the largest column sum of |B| times max|A|
    (float64; ``float_sum_upper(..., extra_roundings=2)`` bounds the exact value)."""
    if a3.size == 0 or b3.size == 0:
        return 0.0
    rows = float(np.abs(a3[:1] if _shared(a3) else a3).astype(np.float64).sum(axis=2).max())
    cols = float(np.abs(b3[:1] if _shared(b3) else b3).astype(np.float64).sum(axis=1).max())
    return min(rows * float(max_b), cols * float(max_a))


def _tight_bound_numpy(a3, b3) -> float:
    """max over outputs of sum_k |a_ik b_kj| (float64, may round above 2^53)."""
    if a3.size == 0 or b3.size == 0:
        return 0.0
    return float(_blas_sums(_abs(a3), _abs(b3), a3.shape[2]).max())


def _abs(x3):
    """|x3|, an operand shared by the batch staying a stride-0 view."""
    return np.broadcast_to(np.abs(x3[:1]), x3.shape) if _shared(x3) else np.abs(x3)
