"""``matmul`` / ``conv2d`` with block-scaled operands (BlockFloatingPoint, MX).

The MAC array of a block-scaled GEMM ``C = A @ B`` (A: (..., M, K), B:
(..., K, N)), for each output, in this order:

1. ``a`` is quantized to ``a_format`` with its blocks along K (the last axis of
   A) and ``b`` to ``b_format`` along K (the second-to-last axis of B),
   whatever axis the formats name (``hwsim.plan.block_gemm.along_k``); a
   format with one scale per tensor keeps it. The other operand may be a
   fixed-point or float format (one scale for all of K).
2. K is cut into K-blocks of the formats' block size ``kb`` (the whole K when
   neither operand has a block size), starting at k = 0; the last block may be
   short. For block j, ``S_j = sum_k a_ik * b_kj`` over its k is formed
   **exactly**: the dot product of the element codes (integers, or exact
   products of float elements such as MX fp8), times the two block scales.
   The exactness is proved from the formats before anything runs
   (``hwsim.plan.block_gemm``); then float64 BLAS gives it on either backend.
3. ``S_j`` is cast to the accumulator and added, j = 0, 1, ..., as the MAC
   array adds a product today: a fixed-point accumulator rounds ``S_j`` to its
   LSB (``rounding``), applies its overflow, adds, and applies its overflow
   after every addition; a float accumulator rounds ``S_j`` to its format and
   the sum after every addition (``hwsim.ops.add_float``).

With stochastic rounding, block j's cast draws counter noise from
``sub_seed(seed, 3 + j)`` (the operands' quantizers take ``sub_seed(seed, 1)``
and ``sub_seed(seed, 2)``), so both backends give the same bits. A
convolution runs this GEMM on its im2col matrices (K in (c, kh, kw) order):
every window's column is its own operand row, quantized along K.
"""

from __future__ import annotations

import numpy as np

from hwsim.formats import FixedPoint, FloatingPoint
from hwsim.modes import Overflow, Rounding
from hwsim.plan.block_gemm import along_k, check_block_gemm, is_block, k_block
from hwsim.plan.checks import check_data, is_torch
from hwsim.plan.gemm import broadcast_operands, squeeze_result, sub_seed


def has_block(*formats) -> bool:
    """Whether any of ``formats`` (formats or names) is block-scaled."""
    from hwsim.ops.block_quantize import as_block_format

    return any(as_block_format(f) is not None for f in formats if f is not None)


def _operand_format(fmt, name: str):
    from hwsim.formats import parse_format

    if fmt is None:
        return None
    try:
        return parse_format(fmt)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None


def _values(x, fmt, k_axis: int, rounding: Rounding, overflow: Overflow, seed):
    """Float64 values of an operand quantized to ``fmt`` (blocks along K)."""
    from hwsim.ops.quantize import quantize

    if is_torch(x):
        import torch

        v = x.detach().to(torch.float64)
    else:
        v = np.asarray(x, dtype=np.float64)
    over = overflow if isinstance(fmt, FixedPoint) else Overflow.SATURATE  # block/float: saturate
    return quantize(v, along_k(fmt, k_axis), rounding, over, seed=seed)


def block_gemm(a, b, acc, a_format, b_format, rounding, overflow, seed, *, values=True):
    """Values (float64) of ``a @ b`` through the block-scaled MAC array, or the
    accumulator's int64 codes (``values=False``, a fixed-point accumulator).
    ``acc``/``rounding``/``overflow``/``seed`` come checked (``check_gemm_args``)."""
    if is_torch(a) != is_torch(b):
        raise ValueError("matmul takes two NumPy arrays or two torch tensors, not a mix")
    check_data(a, "a")
    check_data(b, "b")
    fa, fb = _operand_format(a_format, "a_format"), _operand_format(b_format, "b_format")
    squeeze = (_ndim(a) == 1, _ndim(b) == 1)
    va = a if not squeeze[0] else a.reshape(1, -1)
    vb = b if not squeeze[1] else b.reshape(-1, 1)
    check_block_gemm(fa, fb, acc, None, k_block(fa, fb, va.shape[-1]))
    va = _values(va, fa, -1, rounding, overflow, sub_seed(seed, 1))
    vb = _values(vb, fb, -2, rounding, overflow, sub_seed(seed, 2))
    out = block_gemm_on_values(va, vb, acc, fa, fb, rounding, overflow, seed, values=values)
    return squeeze_result(out, squeeze)


def _ndim(x) -> int:
    return x.ndim if is_torch(x) else np.ndim(x)


def block_gemm_on_values(va, vb, acc, a_format, b_format, rounding, overflow, seed, *, values=True):
    """Step 2 and 3 of the MAC array on operands already quantized: float64
    ``va`` (..., M, K) on ``a_format`` and ``vb`` (..., K, N) on ``b_format``,
    with their blocks along K (``quantize`` with ``along_k(fmt, -1)`` /
    ``along_k(fmt, -2)`` gives them; the layers of ``hwsim.nn`` quantize each
    GEMM's operands once this way). The result's values, or int64 codes."""
    kb = k_block(a_format, b_format, va.shape[-1])
    check_block_gemm(a_format, b_format, acc, None, kb)
    va, vb, _, _ = broadcast_operands(va, vb, None)
    return accumulate(va, vb, kb, acc, rounding, overflow, seed, values)


def matmul_block(a, b, acc, product, a_format, b_format, rounding, overflow, seed, values):
    """``hwsim.matmul`` / ``matmul_codes`` with block-scaled operands (checked arguments)."""
    from hwsim.ops.matmul import _no_codes

    if product is not None:
        check_block_gemm(a_format, b_format, acc, product, 1)
    if not values and isinstance(acc, FloatingPoint):
        raise _no_codes(acc)
    out = block_gemm(a, b, acc, a_format, b_format, rounding, overflow, seed, values=values)
    return out if values else (out, acc)


def accumulate(va, vb, kb: int, acc, rounding, overflow, seed, values: bool):
    """The accumulator after adding the exact block sums of ``va @ vb``, block by block."""
    from hwsim.ops.float_gemm import add_float
    from hwsim.ops.matmul import _codes_to_values, add_codes
    from hwsim.ops.quantize import to_codes

    k = va.shape[-1]
    total = None
    for j, k0 in enumerate(range(0, max(k, 1), kb)):
        part = va[..., k0 : k0 + kb] @ vb[..., k0 : k0 + kb, :]  # exact: see plan.block_gemm
        s = sub_seed(seed, 3 + j)
        if isinstance(acc, FixedPoint):
            codes = to_codes(part, acc, rounding, overflow, seed=s)
            total = codes if total is None else add_codes(total, codes, acc, overflow)
        else:
            if total is None:  # a fresh accumulator holds +0
                total = part.new_zeros(part.shape) if is_torch(part) else np.zeros_like(part)
            total = add_float(total, part, acc, rounding, seed=s)
    if isinstance(acc, FixedPoint):
        return _codes_to_values(total, acc) if values else total
    return total


def block_conv2d(x, w, stride, pads, acc, x_format, w_format, rounding, overflow, seed, values):
    """The convolution (N, O, Ho, Wo) through the block-scaled MAC array on
    its im2col matrices: w as (O, K) and each window as a column (K, Ho*Wo)."""
    from hwsim.ops.im2col import im2col

    cols, (n, o, ho, wo) = im2col(x, w, stride, pads)
    out = block_gemm(w.reshape(1, o, -1), cols, acc, w_format, x_format, rounding, overflow,
                     seed, values=values)  # fmt: skip
    return out.reshape(n, o, ho, wo)


def conv2d_block(x, w, stride, padding, accumulator, product, rounding, overflow, x_format,
                w_format, seed, path, backend, values):  # fmt: skip
    """conv2d / conv2d_codes with block-scaled operands: returns (values or codes, acc)."""
    from hwsim.ops.matmul import _no_codes, _to_backend
    from hwsim.plan.gemm import check_gemm_args, check_pads, check_pair

    x, w, back = _to_backend(backend, x, w, "conv2d")
    acc, product, rounding, overflow, seed = check_gemm_args(
        accumulator, product, rounding, overflow, seed, path
    )
    check_data(x, "x")
    check_data(w, "w")
    if product is not None:
        check_block_gemm(x_format, w_format, acc, product, 1)
    if not values and isinstance(acc, FloatingPoint):
        raise _no_codes(acc)
    if is_torch(x) != is_torch(w):
        raise ValueError("conv2d takes two NumPy arrays or two torch tensors, not a mix")
    out = block_conv2d(x, w, check_pair(stride, "stride", 1), check_pads(padding), acc,
                       x_format, w_format, rounding, overflow, seed, values)  # fmt: skip
    return back(out), acc


__all__ = [
    "block_conv2d",
    "block_gemm",
    "block_gemm_on_values",
    "conv2d_block",
    "has_block",
    "matmul_block",
    "is_block",
]
