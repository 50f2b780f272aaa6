"""``matmul`` and ``conv2d`` through a bit-true MAC array with an accumulator format.

Both find the exact integer codes of their operands, plan the integer datapath
once (``GemmPlan``, shared by both backends), and run it on NumPy arrays (Numba
kernels) or torch tensors (torch ops, any device). Semantics: DESIGN.md,
"MAC-array GEMM".
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from hwsim.errors import CodeOverflowError
from hwsim.formats import MAX_WL, FixedPoint
from hwsim.kernels.jit import threads_for
from hwsim.modes import Overflow, Rounding
from hwsim.ops._common import (
    check_data,
    check_format,
    fresh_seed,
    is_torch,
    raise_non_finite_numpy,
)

STAGE_NONE, STAGE_LEFT, STAGE_ROUND = 0, 1, 2  # no grid change, exact left shift, rounding
PATHS = ("auto", "sequential", "fast")
EXACT_FLOAT = 1 << 53  # float64 holds every integer below this
INT64_LIMIT = 1 << 63


@dataclasses.dataclass(frozen=True)
class GemmPlan:
    """How the integer datapath moves codes between grids, worked out once from
    the operands' fractional lengths and largest codes.

    ``*_shift`` > 0 rounds to a grid 2^shift coarser; <= 0 is an exact left shift.
    ``fast_*`` say whether float64 BLAS on the codes is exact: it needs no
    rounding stage, no product overflow, every partial sum below 2^53 and, when
    saturating, no partial sum outside the accumulator range."""

    accumulator: FixedPoint
    product: FixedPoint | None
    product_stage: int
    product_shift: int
    acc_stage: int
    acc_shift: int
    max_product: int  # largest |a_ik * b_kj| code, in units of 2^-(fa + fb)
    left_shift: int  # total exact left shift of a term on the fast path
    fast_wrap: bool  # wrap accumulator, BLAS in K-chunks then modulo 2^wl
    fast_saturate_limit: int  # saturate: the fast path is exact if sum_k |t| <= this (-1: never)
    wrap_chunk: int  # K-chunk for wrap (each chunk's |sum| < 2^53)


def plan_gemm(
    fa: int,
    fb: int,
    max_a: int,
    max_b: int,
    products_nonneg: bool,
    accumulator: FixedPoint,
    product: FixedPoint | None,
    overflow: Overflow,
) -> GemmPlan:
    """Work out the datapath; raise CodeOverflowError where an exact integer
    step would not fit in int64."""
    max_product = max_a * max_b
    if max_product >= INT64_LIMIT:
        raise CodeOverflowError(
            f"an exact product of the operands' codes needs {max_product.bit_length() + 1} bits "
            f"(largest codes {max_a} * 2^-{fa} and {max_b} * 2^-{fb}), more than int64 holds; "
            f"quantize the operands to narrower formats first (a_format=, b_format=)"
        )
    cur_fl, term_max = fa + fb, max_product
    product_stage, product_shift = STAGE_NONE, 0
    product_fits = True
    if max_product == 0:
        # every product is 0 and stays 0 through every stage: sums are 0
        return GemmPlan(
            accumulator, product, STAGE_NONE, 0, STAGE_LEFT, 0, 0, 0, True, EXACT_FLOAT - 1, 1 << 62
        )
    if product is not None:
        term_max, product_shift, product_stage = _stage(
            term_max, cur_fl - product.fl, product, overflow, "product"
        )
        product_fits = (
            product_stage == STAGE_LEFT
            and (max_product << -product_shift) <= product.max_code
            and (product.signed or products_nonneg)
        )
        term_max = min(term_max, max(-product.min_code, product.max_code))
        cur_fl = product.fl
    _, acc_shift, acc_stage = _stage(
        term_max, cur_fl - accumulator.fl, accumulator, overflow, "accumulator"
    )
    left = -product_shift - acc_shift if product_fits and acc_stage == STAGE_LEFT else 0
    if overflow == Overflow.WRAP:
        left = min(left, 63)
    exact_terms = product_fits and product_stage != STAGE_ROUND and acc_stage == STAGE_LEFT
    fast_wrap = exact_terms and overflow == Overflow.WRAP and max_product < EXACT_FLOAT
    limit = -1
    if (
        exact_terms
        and overflow == Overflow.SATURATE
        and left < 62
        and (accumulator.signed or products_nonneg)
    ):
        limit = min(accumulator.max_code >> left, EXACT_FLOAT - 1)
    chunk = (EXACT_FLOAT - 1) // max_product if max_product else 1 << 62
    return GemmPlan(
        accumulator,
        product,
        product_stage,
        product_shift,
        acc_stage,
        acc_shift,
        max_product,
        left,
        fast_wrap,
        limit,
        chunk,
    )


def _stage(term_max: int, shift: int, fmt: FixedPoint, overflow: Overflow, what: str):
    """(largest |term| after the move, the shift to use, stage) for one grid change."""
    if shift > 0:
        return (term_max >> shift) + 1, shift, STAGE_ROUND
    left = -shift
    if overflow == Overflow.WRAP:
        # wrap is computed modulo 2^64, exact modulo 2^wl (wl <= 62); any shift
        # >= 63 leaves a multiple of 2^63, i.e. 0 modulo 2^wl, as 63 does
        left = min(left, 63)
    elif term_max and (term_max << left) >= INT64_LIMIT:
        raise CodeOverflowError(
            f"moving a product onto the {what} grid ({fmt}) shifts it left by {left} bits, "
            f"past int64; use a {what} format with fewer fractional bits"
        )
    return term_max << left, -left, STAGE_LEFT


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
    from hwsim.kernels import gemm as kg

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
        _check_grid_span(max(top_exp + fl_need, MAX_WL + 1), fl_need, name)
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


def _check_grid_span(bits: int, fl: int, name: str) -> None:
    if bits > MAX_WL:
        raise ValueError(
            f"{name} is not on a fixed-point grid with codes of at most {MAX_WL} bits: its "
            f"finest value needs an LSB of 2^-{fl} and its largest then needs a {bits}-bit "
            f"code. Quantize it onto a format first (e.g. pass a_format=/b_format=, or "
            f"hwsim.quantize)."
        )


def operand_codes_numpy(x, fmt, name, rounding, overflow, seed):
    """(codes, fl, stats or None) of an operand, quantized onto ``fmt`` if given."""
    if fmt is None:
        return grid_codes_stats_numpy(x, name)
    from hwsim.ops.quantize import to_codes

    return to_codes(np.asarray(x), fmt, rounding, overflow, seed=seed), fmt.fl, None


# -- the public functions ---------------------------------------------------------------


def matmul(
    a,
    b,
    *,
    accumulator: FixedPoint | str,
    product: FixedPoint | str | None = None,
    rounding: Rounding | str = "nearest",
    overflow: Overflow | str = "saturate",
    a_format: FixedPoint | str | None = None,
    b_format: FixedPoint | str | None = None,
    seed: int | None = None,
    path: str = "auto",
):
    """``a @ b`` through a MAC array: exact products, each optionally quantized to
    ``product``, cast onto the ``accumulator`` grid and added one k at a time
    (k = 0 .. K-1) with the accumulator's overflow applied after every addition.

    Args:
        a, b: NumPy arrays (Numba kernels) or torch tensors (torch ops on their
            device), shapes (..., M, K) and (..., K, N) with broadcast leading
            dims (1-D operands as in ``numpy.matmul``). Their values must lie on
            a fixed-point grid (outputs of ``hwsim.quantize``, integers, ...):
            the exact codes are found from the data.
        accumulator: the accumulator format (``FixedPoint`` or ``"fx32.16"``).
        product: optional format each exact product is quantized to first.
        rounding: for the product and the accumulator cast (and ``a_format``/
            ``b_format``): ``nearest``, ``nearest_away``, ``floor``, ``zero``,
            ``stochastic``.
        overflow: ``saturate`` or ``wrap``, for the product and the accumulator.
        a_format, b_format: quantize ``a``/``b`` onto these formats first.
        seed: stochastic rounding: an int gives counter noise indexed by
            (output element, k, stage), identical on both backends.
        path: ``auto`` (float64 BLAS on the codes whenever that is provably
            exact), ``sequential`` (always the MAC loop) or ``fast`` (BLAS, or
            ValueError when it would not be exact).

    Returns:
        float64 values on the accumulator grid, shape (..., M, N).

    Raises:
        CodeOverflowError: an exact product (or shift) would not fit in int64.
        ValueError: operands not on a grid of at most 62-bit codes, shape
            mismatch, non-finite values, bad modes.

    Wrap mode equals APyTypes' ``APyFixedAccumulatorContext`` (Gustafsson et al.,
    APyTypes, 2024); saturation order follows a systolic array's single MAC per
    output.

    >>> import numpy as np, hwsim
    >>> a = np.array([[1.0, 1.0, 1.0, -1.0]]); b = np.array([[0.75], [0.75], [0.75], [0.5]])
    >>> hwsim.matmul(a, b, accumulator="fx4.2")  # 0.75, 1.5, 2.25 -> 1.75 (max), 1.25
    array([[1.25]])
    >>> hwsim.matmul(a, b, accumulator="fx8.2")  # wide: 1.75
    array([[1.75]])
    """
    return _matmul(
        a, b, accumulator, product, rounding, overflow, a_format, b_format, seed, path, values=True
    )


def matmul_codes(
    a,
    b,
    *,
    accumulator,
    product=None,
    rounding="nearest",
    overflow="saturate",
    a_format=None,
    b_format=None,
    seed=None,
    path="auto",
):
    """Like :func:`matmul` but returns ``(int64 codes, accumulator format)``."""
    return _matmul(
        a, b, accumulator, product, rounding, overflow, a_format, b_format, seed, path, values=False
    )


def _matmul(a, b, accumulator, product, rounding, overflow, a_format, b_format, seed, path, values):
    """values: float64 values; else (int64 codes, accumulator format)."""
    for x, name in ((a, "a"), (b, "b")):
        check_data(x, name)
        if (x.dim() if is_torch(x) else np.ndim(x)) == 0:
            raise ValueError(
                f"matmul: {name} is 0-d (a scalar); operands need at least 1 dimension, as in "
                "numpy.matmul (use multiplication for scalars)"
            )
    acc, product, rounding, overflow, seed = _check_args(
        accumulator, product, rounding, overflow, seed, path
    )
    a_format = None if a_format is None else check_format(a_format, "a_format")
    b_format = None if b_format is None else check_format(b_format, "b_format")
    if is_torch(a) or is_torch(b):
        from hwsim.torch_path import gemm as tg

        if not (is_torch(a) and is_torch(b)):
            raise ValueError("matmul takes two NumPy arrays or two torch tensors, not a mix")
        ca, fa = tg.operand_codes(a, a_format, "a", rounding, overflow, _sub(seed, 1))
        cb, fb = tg.operand_codes(b, b_format, "b", rounding, overflow, _sub(seed, 2))
        codes = tg.batched_gemm(ca, fa, cb, fb, acc, product, rounding, overflow, seed, path)
        return _codes_to_values(codes, acc) if values else (codes, acc)
    if a_format is None and b_format is None and overflow == Overflow.WRAP:
        out = _float_wrap_fast(a, b, acc, product, path, values)
        if out is not None:
            return out if values else (out, acc)
    ca, fa, sa = operand_codes_numpy(a, a_format, "a", rounding, overflow, _sub(seed, 1))
    cb, fb, sb = operand_codes_numpy(b, b_format, "b", rounding, overflow, _sub(seed, 2))
    codes = batched_gemm_numpy(
        ca, fa, cb, fb, acc, product, rounding, overflow, seed, path, stats=(sa, sb)
    )
    return _codes_to_values(codes, acc) if values else (codes, acc)


def _float_grid_stats(f):
    """(fl, (max |code|, min code, max code)) of float64 ``f`` as
    ``_grid_codes_float`` finds them, without writing the codes; None where that
    function would take another branch (all zeros, non-finite, off the grid)."""
    from hwsim.kernels import gemm as kg

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


def _float_wrap_fast(a, b, acc, product, path, values):
    """The wrap fast path on float operands without integer codes: where BLAS on
    the codes is exact, so is BLAS on the values (the codes times 2^-fa and
    2^-fb: every product and partial sum is an integer below 2^53 times
    2^-(fa + fb), kept away from float64's overflow and underflow here). Returns
    the result, or None to take the general path (which also words any error)."""
    from hwsim.kernels import gemm as kg

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
    fa_arr, fb_arr, squeeze, batch = _broadcast_operands(fa_arr, fb_arr, np)
    m, k = fa_arr.shape[-2:]
    n = fb_arr.shape[-1]
    nonneg = (sa[1] >= 0 and sb[1] >= 0) or (sa[2] <= 0 and sb[2] <= 0)
    plan = plan_gemm(fa, fb, sa[0], sb[0], nonneg, acc, product, Overflow.WRAP)
    if not use_fast_path(plan, path, k, Overflow.WRAP, None):
        return None
    bt = int(np.prod(batch, dtype=np.int64))
    a3 = np.broadcast_to(fa_arr, batch + (m, k)).reshape(bt, m, k)
    b3 = np.broadcast_to(fb_arr, batch + (k, n)).reshape(bt, k, n)
    scale = 2.0 ** (fa + fb)  # sums * scale: the integer sums of code products
    shift = plan.left_shift
    if plan.wrap_chunk >= k:
        sums = np.matmul(a3, b3)  # |sum| < 2^53 2^-(fa + fb), exact
        if shift <= 9:  # |sum| 2^shift < 2^62: fold the shift into the exact scaling
            scale, shift, shifted = scale * 2.0**shift, 0, False
        else:
            shifted = True
        scaled = True
    else:
        sums = np.zeros((bt, m, n), dtype=np.int64)
        step = plan.wrap_chunk
        for k0 in range(0, k, step):
            part = np.matmul(a3[:, :, k0 : k0 + step], b3[:, k0 : k0 + step, :])
            sums += (part * scale).astype(np.int64)
        scaled, shifted = False, True  # int64 sums, exact modulo 2^64
    out = np.empty((bt, m, n), dtype=np.float64 if values else np.int64)
    run = kg.reduce_float_sums_kernel(int(Overflow.WRAP), scaled, shifted, values)
    with threads_for(out.size):
        run(sums.reshape(-1), out.reshape(-1), scale, shift, acc.min_code, acc.max_code, acc.lsb)
    return _squeeze(out.reshape(batch + (m, n)), squeeze)


def conv2d(
    x,
    w,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    accumulator: FixedPoint | str,
    product: FixedPoint | str | None = None,
    rounding: Rounding | str = "nearest",
    overflow: Overflow | str = "saturate",
    x_format: FixedPoint | str | None = None,
    w_format: FixedPoint | str | None = None,
    seed: int | None = None,
    path: str = "auto",
):
    """2-D convolution (cross-correlation, NCHW, as ``torch.nn.functional.conv2d``)
    through the MAC array of :func:`matmul`.

    ``x``: (N, C, H, W), ``w``: (O, C, kh, kw). Each output sums its
    C * kh * kw products in the order (c, kh, kw), C order (im2col onto the
    GEMM). ``stride`` and ``padding`` (zeros) are ints or (h, w) pairs; the
    rest as :func:`matmul`. Returns float64 values (N, O, Ho, Wo).

    >>> import numpy as np, hwsim
    >>> x = np.ones((1, 1, 3, 3)); w = np.full((1, 1, 2, 2), 0.5)
    >>> hwsim.conv2d(x, w, accumulator="fx8.4")[0, 0]
    array([[2., 2.],
           [2., 2.]])
    """
    codes, acc = conv2d_codes(
        x,
        w,
        stride=stride,
        padding=padding,
        accumulator=accumulator,
        product=product,
        rounding=rounding,
        overflow=overflow,
        x_format=x_format,
        w_format=w_format,
        seed=seed,
        path=path,
    )
    return _codes_to_values(codes, acc)


def conv2d_codes(
    x,
    w,
    *,
    stride=1,
    padding=0,
    accumulator,
    product=None,
    rounding="nearest",
    overflow="saturate",
    x_format=None,
    w_format=None,
    seed=None,
    path="auto",
):
    """Like :func:`conv2d` but returns ``(int64 codes, accumulator format)``."""
    acc, product, rounding, overflow, seed = _check_args(
        accumulator, product, rounding, overflow, seed, path
    )
    check_data(x, "x")
    check_data(w, "w")
    sh, sw = _pair(stride, "stride", 1)
    ph, pw = _pair(padding, "padding", 0)
    x_format = None if x_format is None else check_format(x_format, "x_format")
    w_format = None if w_format is None else check_format(w_format, "w_format")
    torch_in = is_torch(x) or is_torch(w)
    if torch_in and not (is_torch(x) and is_torch(w)):
        raise ValueError("conv2d takes two NumPy arrays or two torch tensors, not a mix")
    if torch_in:
        from hwsim.torch_path import gemm as tg

        cx, fx = tg.operand_codes(x, x_format, "x", rounding, overflow, _sub(seed, 1))
        cw, fw = tg.operand_codes(w, w_format, "w", rounding, overflow, _sub(seed, 2))
    else:
        cx, fx, _ = operand_codes_numpy(x, x_format, "x", rounding, overflow, _sub(seed, 1))
        cw, fw, _ = operand_codes_numpy(w, w_format, "w", rounding, overflow, _sub(seed, 2))
    codes = conv2d_on_codes(
        cx, fx, cw, fw, (sh, sw), (ph, ph, pw, pw), acc, product, rounding, overflow, seed, path
    )
    return codes, acc


def conv2d_on_codes(cx, fx, cw, fw, stride, pads, acc, product, rounding, overflow, seed, path):
    """Convolution of integer codes; ``pads`` = (top, bottom, left, right), a
    negative pad crops (used by the input-gradient convolution)."""
    if cx.ndim != 4 or cw.ndim != 4:
        raise ValueError(
            f"conv2d takes x of shape (N, C, H, W) and w of shape (O, C, kh, kw), "
            f"got {tuple(cx.shape)} and {tuple(cw.shape)}"
        )
    n, c, _, _ = cx.shape
    o, cw_in, kh, kw = cw.shape
    if c != cw_in:
        raise ValueError(f"x has {c} channels but w expects {cw_in} (w shape {tuple(cw.shape)})")
    sh, sw = stride
    torch_in = is_torch(cx)
    xp = _pad_codes(cx, pads, torch_in)
    hp, wp = xp.shape[2], xp.shape[3]
    if hp < kh or wp < kw:
        raise ValueError(f"the padded input ({hp}x{wp}) is smaller than the kernel ({kh}x{kw})")
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    k = c * kh * kw
    if torch_in:
        from hwsim.torch_path import gemm as tg

        cols = xp.unfold(2, kh, sh).unfold(3, kw, sw)  # (N, C, Ho, Wo, kh, kw)
        cols = cols.permute(0, 1, 4, 5, 2, 3).reshape(n, k, ho * wo)
        wm = cw.reshape(1, o, k)
        out = tg.batched_gemm(wm, fw, cols, fx, acc, product, rounding, overflow, seed, path)
    else:
        win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))
        win = win[:, :, ::sh, ::sw]  # (N, C, Ho, Wo, kh, kw)
        cols = win.transpose(0, 1, 4, 5, 2, 3).reshape(n, k, ho * wo)
        wm = cw.reshape(1, o, k)
        out = batched_gemm_numpy(wm, fw, cols, fx, acc, product, rounding, overflow, seed, path)
    return out.reshape(n, o, ho, wo)


def _pad_codes(cx, pads, torch_in):
    top, bottom, left, right = pads
    if torch_in:
        import torch.nn.functional as F

        return F.pad(cx, (left, right, top, bottom)) if any(pads) else cx
    h, w = cx.shape[2], cx.shape[3]
    crop = cx[:, :, max(0, -top) : h - max(0, -bottom), max(0, -left) : w - max(0, -right)]
    pos = ((0, 0), (0, 0), (max(0, top), max(0, bottom)), (max(0, left), max(0, right)))
    return np.pad(crop, pos) if any(p for pair in pos for p in pair) else crop


# -- the NumPy backend ----------------------------------------------------------------


def batched_gemm_numpy(
    ca, fa, cb, fb, acc, product, rounding, overflow, seed, path, stats=(None, None)
):
    """Codes of the MAC-array product of int64 code arrays ``ca`` (..., M, K) and
    ``cb`` (..., K, N) with fractional lengths ``fa``, ``fb``. ``stats``: the
    operands' (max |code|, min, max) when already known."""
    ca, cb, squeeze, batch = _broadcast_operands(ca, cb, np)
    m, k = ca.shape[-2:]
    n = cb.shape[-1]
    bt = int(np.prod(batch, dtype=np.int64))
    a3 = np.ascontiguousarray(np.broadcast_to(ca, batch + (m, k))).reshape(bt, m, k)
    b3 = np.ascontiguousarray(np.broadcast_to(cb, batch + (k, n))).reshape(bt, k, n)
    with threads_for(a3.shape[0] * m * n * max(k, 1)):
        out = _gemm_numpy(a3, b3, fa, fb, acc, product, rounding, overflow, seed, path, stats)
    return _squeeze(out.reshape(batch + (m, n)), squeeze)


def _gemm_numpy(a3, b3, fa, fb, acc, product, rounding, overflow, seed, path, stats):
    from hwsim.kernels import gemm as kg

    m, k = a3.shape[1:]
    n = b3.shape[2]
    empty = a3.size == 0 or b3.size == 0
    sa, sb = stats
    sa = (0, 0, 0) if empty else sa or kg.code_stats(a3.reshape(-1))
    sb = (0, 0, 0) if empty else sb or kg.code_stats(b3.reshape(-1))
    nonneg = (sa[1] >= 0 and sb[1] >= 0) or (sa[2] <= 0 and sb[2] <= 0)
    plan = plan_gemm(fa, fb, int(sa[0]), int(sb[0]), nonneg, acc, product, overflow)
    out = np.empty((a3.shape[0], m, n), dtype=np.int64)
    if _use_fast(plan, path, k, overflow, lambda: _tight_bound_numpy(a3, b3)):
        fa3, fb3 = a3.astype(np.float64), b3.astype(np.float64)
        step = plan.wrap_chunk if overflow == Overflow.WRAP else max(k, 1)
        if step >= k:
            sums = np.matmul(fa3, fb3)  # integral float64, exact
        else:
            sums = np.zeros(out.shape, dtype=np.int64)
            for k0 in range(0, k, step):
                sums += np.matmul(fa3[:, :, k0 : k0 + step], fb3[:, k0 : k0 + step, :]).astype(
                    np.int64
                )
        kg.reduce_codes_kernel(int(overflow))(
            sums.reshape(-1), out.reshape(-1), plan.left_shift, acc.min_code, acc.max_code
        )
    elif _narrow_ok(plan):
        run = kg.narrow_gemm_kernel(int(overflow))
        run(
            a3.astype(np.int32),
            (b3 << -plan.acc_shift).astype(np.int32),
            out,
            acc.min_code,
            acc.max_code,
        )
    else:
        run = kg.sequential_gemm_kernel(int(rounding), int(overflow), product is not None)
        p = product if product is not None else acc
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
            np.uint64(_seed_bits(seed)),
        )
    return out


def _narrow_ok(plan: GemmPlan) -> bool:
    """True when the int32 kernel computes exactly what the int64 one does: a
    term and the accumulator each fit 31 bits, so their sum fits int32."""
    return (
        plan.product_stage == STAGE_NONE
        and plan.acc_stage == STAGE_LEFT
        and plan.accumulator.wl <= (31 if plan.accumulator.signed else 30)
        and (plan.max_product << -plan.acc_shift) < 1 << 31
    )


def _tight_bound_numpy(a3, b3) -> float:
    """max over outputs of sum_k |a_ik b_kj| (float64, may round above 2^53)."""
    if a3.size == 0 or b3.size == 0:
        return 0.0
    return float(np.matmul(np.abs(a3).astype(np.float64), np.abs(b3).astype(np.float64)).max())


# -- shared helpers -------------------------------------------------------------------


def use_fast_path(plan: GemmPlan, path: str, k: int, overflow: Overflow, tight_bound) -> bool:
    """Decide the path; ``tight_bound()`` computes max sum_k |t| only when needed."""
    if path == "sequential":
        return False
    fast = plan.fast_wrap if overflow == Overflow.WRAP else _saturate_fast(plan, k, tight_bound)
    if path == "fast" and not fast:
        raise ValueError(
            "path='fast' needs float64 BLAS to be exact: no rounding of products onto the "
            "product/accumulator grid, no product overflow, partial sums below 2^53 and (with "
            "saturate) no partial sum outside the accumulator range; here it is not. Use "
            "path='auto' or 'sequential'."
        )
    return fast


_use_fast = use_fast_path


def _saturate_fast(plan: GemmPlan, k: int, tight_bound) -> bool:
    if plan.fast_saturate_limit < 0:
        return False
    if plan.max_product * k <= plan.fast_saturate_limit:
        return True
    # a float64 sum of k nonnegative terms is within a relative k 2^-53 of the truth
    return tight_bound() * (1.0 + (k + 2) * 2.0**-52) <= plan.fast_saturate_limit


def _broadcast_operands(ca, cb, xp):
    squeeze = (ca.ndim == 1, cb.ndim == 1)
    if ca.ndim == 0 or cb.ndim == 0:
        raise ValueError("matmul operands must have at least one dimension")
    if ca.ndim == 1:
        ca = ca.reshape(1, -1)
    if cb.ndim == 1:
        cb = cb.reshape(-1, 1)
    if ca.shape[-1] != cb.shape[-2]:
        raise ValueError(
            f"matmul shapes do not match: a is {tuple(ca.shape)} (K = "
            f"{ca.shape[-1]}) and b is {tuple(cb.shape)} (K = {cb.shape[-2]})"
        )
    try:
        batch = tuple(np.broadcast_shapes(tuple(ca.shape[:-2]), tuple(cb.shape[:-2])))
    except ValueError:
        raise ValueError(
            f"matmul leading dims do not broadcast: {tuple(ca.shape[:-2])} and "
            f"{tuple(cb.shape[:-2])}"
        ) from None
    return ca, cb, squeeze, batch


def _squeeze(out, squeeze):
    if squeeze[1]:
        out = out[..., 0]
    if squeeze[0]:
        out = out[..., 0, :] if not squeeze[1] else out[..., 0]
    return out


def _check_args(accumulator, product, rounding, overflow, seed, path):
    acc = check_format(accumulator, "accumulator")
    product = None if product is None else check_format(product, "product")
    rounding, overflow = Rounding.parse(rounding), Overflow.parse(overflow)
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if seed is not None:
        from hwsim.ops.quantize import _seed64

        seed = _seed64(seed)
    elif rounding == Rounding.STOCHASTIC:
        seed = fresh_seed()
    return acc, product, rounding, overflow, seed


def _sub(seed, offset):
    """A derived seed for the operand quantizers (independent of the GEMM's noise)."""
    if seed is None:
        return None
    return (seed * 0x2545F4914F6CDD1D + offset) & ((1 << 64) - 1)


def _seed_bits(seed) -> int:
    return 0 if seed is None else int(seed)


def _pair(value, name, minimum):
    def whole(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))

    try:
        pair = (value, value) if whole(value) else tuple(value)
    except TypeError:  # a float, None, ...: not a pair either
        pair = ()
    if len(pair) != 2 or not all(whole(v) and v >= minimum for v in pair):
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def _codes_to_values(codes, acc: FixedPoint):
    if is_torch(codes):
        from hwsim.torch_path.core import code_to_value

        return code_to_value(codes, acc)
    from hwsim.kernels.quantize import codes_to_values

    out = np.empty(codes.shape, dtype=np.float64)
    with threads_for(codes.size):
        codes_to_values(np.ascontiguousarray(codes).reshape(-1), out.reshape(-1), acc.lsb)
    return out
