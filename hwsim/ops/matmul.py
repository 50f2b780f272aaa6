"""``matmul`` and ``conv2d`` through a bit-true MAC array with an accumulator format.

Both find the exact integer codes of their operands, plan the integer datapath
once (``hwsim.plan.gemm.GemmPlan``, shared by both backends), and run it on NumPy arrays (Numba
kernels) or torch tensors (torch ops, any device). Semantics: DESIGN.md,
"MAC-array GEMM".
"""

from __future__ import annotations

import numpy as np

from hwsim.formats import FixedPoint, FloatingPoint
from hwsim.kernels.jit import threads_for
from hwsim.modes import Overflow, Rounding
from hwsim.ops.backend import check_backend, on_backend
from hwsim.ops.block_gemm import conv2d_block, has_block, matmul_block
from hwsim.ops.float_gemm import float_conv2d, float_matmul
from hwsim.ops.im2col import code_columns, conv_shape
from hwsim.ops.implicit_conv import implicit_conv
from hwsim.ops.numpy_gemm import (
    batched_gemm_numpy,
    float_wrap_fast,
    grid_codes_numpy,
    grid_codes_stats_numpy,
    operand_codes_numpy,
)
from hwsim.plan.checks import check_data, check_format, is_torch
from hwsim.plan.float_gemm import check_any_format
from hwsim.plan.gemm import check_gemm_args, check_pads, check_pair, sub_seed

__all__ = [
    "add_codes",
    "batched_gemm_numpy",
    "conv2d",
    "conv2d_codes",
    "conv2d_on_codes",
    "grid_codes_numpy",
    "grid_codes_stats_numpy",
    "matmul",
    "matmul_codes",
]

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
    backend: str | None = None,
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
        accumulator: the accumulator format (``FixedPoint`` or ``"fx32.16"``),
            or a ``FloatingPoint`` (``"fp32"``, ``"bf16"``, ...): then each
            product is rounded to ``product`` (if given), cast to the
            accumulator and each sum rounded to it, in the same k order
            (``hwsim.ops.float_gemm``; APyTypes' ``APyFloatAccumulatorContext``).
        product: optional format each exact product is quantized to first
            (of the accumulator's kind).
        rounding: for the product and the accumulator cast (and ``a_format``/
            ``b_format``): ``nearest``, ``nearest_away``, ``floor``, ``zero``,
            ``stochastic``.
        overflow: ``saturate`` or ``wrap``, for the product and the accumulator.
        a_format, b_format: quantize ``a``/``b`` onto these formats first
            (fixed point or float, whatever the accumulator). A block format
            (``"mxint8"``, ``"bfp8_b32"``) on either: blocks along K, exact block
            dot products added in K order (``hwsim.ops.block_gemm``).
        seed: stochastic rounding: an int gives counter noise indexed by
            (output element, k, stage), identical on both backends.
        path: ``auto`` (float64 BLAS on the codes whenever that is provably
            exact), ``sequential`` (always the MAC loop) or ``fast`` (BLAS, or
            ValueError when it would not be exact).
        backend: ``None`` (by array type), ``"numba"`` (tensors are copied to
            the CPU, run on the Numba kernels, and the result copied back to
            ``a``'s device) or ``"torch"`` (NumPy arrays run on the torch path);
            the bits are the same either way.

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
    a, b, back = _to_backend(backend, a, b, "matmul")
    return back(
        _matmul(
            a, b, accumulator, product, rounding, overflow, a_format, b_format, seed, path, True
        )
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
    backend=None,
):
    """Like :func:`matmul` but returns ``(int64 codes, accumulator format)``."""
    a, b, back = _to_backend(backend, a, b, "matmul")
    codes, acc = _matmul(
        a, b, accumulator, product, rounding, overflow, a_format, b_format, seed, path, False
    )
    return back(codes), acc


def _matmul(a, b, accumulator, product, rounding, overflow, a_format, b_format, seed, path, values):
    """values: float64 values; else (int64 codes, accumulator format)."""
    for x, name in ((a, "a"), (b, "b")):
        check_data(x, name)
        if (x.dim() if is_torch(x) else np.ndim(x)) == 0:
            raise ValueError(
                f"matmul: {name} is 0-d (a scalar); operands need at least 1 dimension, as in "
                "numpy.matmul (use multiplication for scalars)"
            )
    acc, product, rounding, overflow, seed = check_gemm_args(
        accumulator, product, rounding, overflow, seed, path
    )
    if has_block(a_format, b_format):  # block-scaled operands: hwsim.ops.block_gemm
        return matmul_block(
            a, b, acc, product, a_format, b_format, rounding, overflow, seed, values
        )
    a_format = None if a_format is None else check_any_format(a_format, "a_format")
    b_format = None if b_format is None else check_any_format(b_format, "b_format")
    if isinstance(acc, FloatingPoint):
        if not values:
            raise _no_codes(acc)
        return float_matmul(a, b, acc, product, rounding, overflow, a_format, b_format, seed, path)
    if is_torch(a) or is_torch(b):
        from hwsim.torch_path import gemm as tg

        if not (is_torch(a) and is_torch(b)):
            raise ValueError("matmul takes two NumPy arrays or two torch tensors, not a mix")
        ca, fa = tg.operand_codes(a, a_format, "a", rounding, overflow, sub_seed(seed, 1))
        cb, fb = tg.operand_codes(b, b_format, "b", rounding, overflow, sub_seed(seed, 2))
        codes = tg.batched_gemm(ca, fa, cb, fb, acc, product, rounding, overflow, seed, path)
        return _codes_to_values(codes, acc) if values else (codes, acc)
    if a_format is None and b_format is None and overflow == Overflow.WRAP:
        out = float_wrap_fast(a, b, acc, product, path, values)
        if out is not None:
            return out if values else (out, acc)
    ca, fa, sa = operand_codes_numpy(a, a_format, "a", rounding, overflow, sub_seed(seed, 1))
    cb, fb, sb = operand_codes_numpy(b, b_format, "b", rounding, overflow, sub_seed(seed, 2))
    codes = batched_gemm_numpy(
        ca, fa, cb, fb, acc, product, rounding, overflow, seed, path, stats=(sa, sb)
    )
    return _codes_to_values(codes, acc) if values else (codes, acc)


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
    backend: str | None = None,
):
    """2-D convolution (cross-correlation, NCHW, as ``torch.nn.functional.conv2d``)
    through the MAC array of :func:`matmul`.

    ``x``: (N, C, H, W), ``w``: (O, C, kh, kw). Each output sums its
    C * kh * kw products in the order (c, kh, kw), C order (im2col onto the
    GEMM). ``stride`` is an int or an (h, w) pair; ``padding`` (zeros) an
    int, an (h, w) pair or (top, bottom, left, right); the rest as
    :func:`matmul`. Returns float64 values (N, O, Ho, Wo).

    >>> import numpy as np, hwsim
    >>> x = np.ones((1, 1, 3, 3)); w = np.full((1, 1, 2, 2), 0.5)
    >>> hwsim.conv2d(x, w, accumulator="fx8.4")[0, 0]
    array([[2., 2.],
           [2., 2.]])
    """
    if has_block(x_format, w_format):
        args = (accumulator, product, rounding, overflow, x_format, w_format, seed, path)
        return conv2d_block(x, w, stride, padding, *args, backend, True)[0]
    if isinstance(check_any_format(accumulator, "accumulator"), FloatingPoint):
        x, w, back = _to_backend(backend, x, w, "conv2d")
        acc, product, rounding, overflow, seed = check_gemm_args(
            accumulator, product, rounding, overflow, seed, path
        )
        fx = None if x_format is None else check_any_format(x_format, "x_format")
        fw = None if w_format is None else check_any_format(w_format, "w_format")
        pads = check_pads(padding)
        out = float_conv2d(
            x,
            w,
            check_pair(stride, "stride", 1),
            pads,
            acc,
            product,
            rounding,
            overflow,
            fx,
            fw,
            seed,
        )
        return back(out)
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
        backend=backend,
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
    backend=None,
):
    """Like :func:`conv2d` but returns ``(int64 codes, accumulator format)``."""
    if has_block(x_format, w_format):
        return conv2d_block(x, w, stride, padding, accumulator, product, rounding, overflow,
                           x_format, w_format, seed, path, backend, False)  # fmt: skip
    x, w, back = _to_backend(backend, x, w, "conv2d")
    acc, product, rounding, overflow, seed = check_gemm_args(
        accumulator, product, rounding, overflow, seed, path
    )
    if isinstance(acc, FloatingPoint):
        raise _no_codes(acc)
    check_data(x, "x")
    check_data(w, "w")
    sh, sw = check_pair(stride, "stride", 1)
    pads = check_pads(padding)
    x_format = None if x_format is None else check_any_format(x_format, "x_format")
    w_format = None if w_format is None else check_any_format(w_format, "w_format")
    torch_in = is_torch(x) or is_torch(w)
    if torch_in and not (is_torch(x) and is_torch(w)):
        raise ValueError("conv2d takes two NumPy arrays or two torch tensors, not a mix")
    if torch_in:
        from hwsim.torch_path import gemm as tg

        cx, fx = tg.operand_codes(x, x_format, "x", rounding, overflow, sub_seed(seed, 1))
        cw, fw = tg.operand_codes(w, w_format, "w", rounding, overflow, sub_seed(seed, 2))
        stats = (None, None)
    else:
        cx, fx, sx = operand_codes_numpy(x, x_format, "x", rounding, overflow, sub_seed(seed, 1))
        cw, fw, sw_ = operand_codes_numpy(w, w_format, "w", rounding, overflow, sub_seed(seed, 2))
        stats = (sx, sw_)  # found with the codes (or None): they pick the columns' dtype
    codes = conv2d_on_codes(
        cx, fx, cw, fw, (sh, sw), pads, acc, product, rounding, overflow, seed, path, stats
    )
    return back(codes), acc


def conv2d_on_codes(cx, fx, cw, fw, stride, pads, acc, product, rounding, overflow, seed, path,
                    stats=(None, None), columns=False):  # fmt: skip
    """Convolution of integer codes; ``pads`` = (top, bottom, left, right), a
    negative pad crops (used by the input-gradient convolution); ``stats``:
    (x's, w's), or None.

    On NumPy arrays without stochastic rounding, the batch's columns side by
    side make one (O, C kh kw) @ (C kh kw, N Ho Wo) GEMM: each output still
    sums its own terms in the same order (the same bits), and the MAC loop
    runs over N Ho Wo columns instead of Ho Wo (a LeNet conv's 16). The
    stochastic counter noise is indexed by the (N, O, Ho Wo) layout, which
    keeps the batched GEMM. The torch path does the same (its weights then
    are not copied per sample, and the one GEMM's outputs are many)."""
    wide = rounding != Rounding.STOCHASTIC
    if wide and not is_torch(cx):  # no columns where every term is rounded
        shape = conv_shape(cx, cw, stride, pads)
        out = implicit_conv(cx, fx, cw, fw, stride, pads, shape, acc, product, rounding,
                            overflow, path, stats)  # fmt: skip
        if out is not None:
            return (out, None) if columns else out
    cols, (n, o, ho, wo) = code_columns(cx, cw, stride, pads, wide, stats[0])
    wm = cw.reshape(1, o, -1)
    stats = (stats[1], stats[0])  # the GEMM's operands: weights, columns
    args = (wm, fw, cols, fx, acc, product, rounding, overflow, seed, path, stats)
    if is_torch(cols):
        from hwsim.torch_path import gemm as tg

        out = tg.batched_gemm(*args)
        if wide:
            out = out.reshape(o, n, ho, wo).transpose(0, 1).contiguous()
    else:
        out = batched_gemm_numpy(*args)
        if wide:
            out = np.ascontiguousarray(out.reshape(o, n, ho, wo).transpose(1, 0, 2, 3))
    out = out.reshape(n, o, ho, wo)
    return (out, cols) if columns else out


def add_codes(codes, addend, fmt, overflow="saturate"):
    """``codes + addend`` on the grid of ``fmt`` with its overflow applied: one
    more MAC step (a layer's bias added to the accumulator after the K
    products). Both int64, NumPy arrays or torch tensors (broadcasting).

    >>> import numpy as np
    >>> add_codes(np.array([120, -3]), np.array([10, 1]), "fx8.4").tolist()
    [127, -2]
    """
    fmt = check_format(fmt)
    overflow = Overflow.parse(overflow)
    if is_torch(codes):
        from hwsim.torch_path.core import apply_overflow

        return apply_overflow(codes + addend.to(codes.device), fmt, overflow)
    total = np.asarray(codes, dtype=np.int64) + np.asarray(addend, dtype=np.int64)
    if overflow == Overflow.SATURATE:
        return np.clip(total, fmt.min_code, fmt.max_code)
    return ((total - fmt.min_code) & ((1 << fmt.wl) - 1)) + fmt.min_code


def _to_backend(backend, x, y, what):
    """(x, y) on ``backend`` and the function that brings a result back."""
    if check_backend(backend) is None or (backend == "torch") == is_torch(x):
        return x, y, _same
    if is_torch(x) != is_torch(y):
        raise ValueError(f"{what} takes two NumPy arrays or two torch tensors, not a mix")
    (x, y), back = on_backend(backend, x, y)
    return x, y, back


def _same(result):
    return result


def _no_codes(acc) -> ValueError:
    return ValueError(
        f"accumulator={acc} is a floating-point format, which has no integer codes: use "
        f"hwsim.matmul / hwsim.conv2d, which return its values"
    )


def _codes_to_values(codes, acc: FixedPoint):
    if is_torch(codes):
        from hwsim.torch_path.core import code_to_value

        return code_to_value(codes, acc)
    from hwsim.kernels.quantize import codes_to_values

    out = np.empty(codes.shape, dtype=np.float64)
    with threads_for(codes.size):
        codes_to_values(np.ascontiguousarray(codes).reshape(-1), out.reshape(-1), acc.lsb)
    return out
