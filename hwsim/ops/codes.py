"""The MAC-array GEMM on operands already turned into codes: a caller that
feeds one operand to several GEMMs (a layer's forward pass and both backward
GEMMs) scans it once with :func:`grid_codes` and runs each GEMM with
:func:`matmul_on_codes`. Same codes as :func:`hwsim.ops.matmul_codes` on the
values, on either array type."""

from __future__ import annotations

from hwsim.ops.numpy_gemm import batched_gemm_numpy, grid_codes_stats_numpy
from hwsim.plan.checks import check_data, is_torch
from hwsim.plan.gemm import check_gemm_args, check_pads, check_pair


def grid_codes(x, name: str = "x"):
    """``(codes, fl, stats)``: int64 codes with ``x == codes * 2^-fl`` exactly
    and the smallest such fl, as :func:`hwsim.ops.matmul` finds an operand's
    codes; ``stats`` = (max |code|, min code, max code) where the scan gives
    them free, else None. A NumPy array (Numba kernels) or a torch tensor
    (torch path; codes on its device).

    >>> import numpy as np
    >>> codes, fl, _ = grid_codes(np.array([0.5, -1.25]))
    >>> codes.tolist(), fl
    ([2, -5], 2)
    """
    check_data(x, name)
    if is_torch(x):
        from hwsim.torch_path import gemm as tg

        codes, fl = tg.grid_codes(x, name)
        return codes, fl, None
    return grid_codes_stats_numpy(x, name)


def matmul_on_codes(
    ca,
    fa: int,
    cb,
    fb: int,
    *,
    accumulator,
    product=None,
    rounding="nearest",
    overflow="saturate",
    seed=None,
    path="auto",
    stats=(None, None),
):
    """:func:`hwsim.ops.matmul_codes` of the values ``ca * 2^-fa`` and
    ``cb * 2^-fb`` given by their int64 codes (NumPy arrays or torch tensors,
    shapes (..., M, K) and (..., K, N)); ``stats``: each operand's stats from
    :func:`grid_codes`, or None. Returns the accumulator codes.

    >>> import numpy as np
    >>> matmul_on_codes(np.array([[1, 3]]), 1, np.array([[2], [2]]), 0,
    ...                 accumulator="fx8.0", rounding="floor").tolist()
    [[4]]
    """
    acc, product, rounding, overflow, seed = check_gemm_args(
        accumulator, product, rounding, overflow, seed, path
    )
    if is_torch(ca) or is_torch(cb):
        from hwsim.torch_path import gemm as tg

        if not (is_torch(ca) and is_torch(cb)):
            raise ValueError("matmul_on_codes takes two NumPy arrays or two torch tensors")
        return tg.batched_gemm(ca, fa, cb, fb, acc, product, rounding, overflow, seed, path, stats)
    return batched_gemm_numpy(
        ca, fa, cb, fb, acc, product, rounding, overflow, seed, path, stats=stats
    )


def conv2d_on_codes(
    cx,
    fx: int,
    cw,
    fw: int,
    *,
    stride=1,
    padding=0,
    accumulator,
    product=None,
    rounding="nearest",
    overflow="saturate",
    seed=None,
    path="auto",
    stats=(None, None),
    columns: bool = False,
):
    """:func:`hwsim.ops.conv2d_codes` of the values ``cx * 2^-fx`` (N, C, H, W)
    and ``cw * 2^-fw`` (O, C, kh, kw) given by their int64 codes (both NumPy
    arrays or both torch tensors); ``stats``: each operand's stats from
    :func:`grid_codes` (0 included: padding adds zero codes), or None.
    Returns the accumulator codes; with ``columns``, ``(codes, cols)``: also
    the im2col columns of x's codes the GEMM read, (1, C kh kw, N Ho Wo) (or
    (N, C kh kw, Ho Wo) under stochastic rounding), which a layer's weight
    gradient reads again."""
    from hwsim.ops.matmul import conv2d_on_codes as run

    acc, product, rounding, overflow, seed = check_gemm_args(
        accumulator, product, rounding, overflow, seed, path
    )
    if is_torch(cx) != is_torch(cw):
        raise ValueError("conv2d_on_codes takes two NumPy arrays or two torch tensors")
    pads = check_pads(padding)
    return run(
        cx,
        fx,
        cw,
        fw,
        check_pair(stride, "stride", 1),
        pads,
        acc,
        product,
        rounding,
        overflow,
        seed,
        path,
        stats,
        columns,
    )
