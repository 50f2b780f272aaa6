"""The NumPy GEMM's BLAS fast path on float32: taken only where every partial
sum is an integer below 2^24 (``max_product * K < EXACT_FLOAT32``), so the
codes are the exact integer sums either way."""

from __future__ import annotations

import numpy as np
import pytest

from hwsim import FixedPoint
from hwsim.modes import Overflow, Rounding
from hwsim.ops import numpy_gemm as ng


def stats(x) -> tuple[int, int, int]:
    return int(np.abs(x).max()), min(int(x.min()), 0), max(int(x.max()), 0)


@pytest.mark.parametrize(
    "k, a, b, dtype",
    [
        (4, 2047, 2047, np.float32),  # 4 * 4190209 = 16760836 < 2^24
        (1, 4095, 4097, np.float32),  # one term: 16777215 < 2^24
        (3, 4095, 4095, np.float64),  # sums past 2^24, odd: float32 would round them
        (1, 4096, 4097, np.float64),  # one product past 2^24
    ],
)
@pytest.mark.parametrize("where", ["layer", "batched"])
def test_float32_blas_only_where_exact(k, a, b, dtype, where, monkeypatch):
    """A layer's 2-D GEMM runs in one kernel (``blas_codes_kernel``), a
    batched one through ``_blas_sums``: both on float32 only below 2^24."""
    used = []
    real_sums, real_kernel = ng._blas_sums, ng.kb.blas_codes_kernel

    def spy(a3, b3, chunk, dtype=np.float64):
        used.append(dtype)
        return real_sums(a3, b3, chunk, dtype)

    def spy_kernel(overflow, single):
        used.append(np.float32 if single else np.float64)
        return real_kernel(overflow, single)

    monkeypatch.setattr(ng, "_blas_sums", spy)
    monkeypatch.setattr(ng.kb, "blas_codes_kernel", spy_kernel)
    ca = np.full((2, k), a, dtype=np.int64)
    ca[1] = -a  # a negative row: the sums' sign does not matter
    cb = np.full((k, 3), b, dtype=np.int64)
    cb[:, 1] = 1
    acc = FixedPoint(40, 0)
    args = (acc, None, Rounding.NEAREST, Overflow.SATURATE, None)
    if where == "layer":
        got = ng.gemm_2d(ca, 0, cb, 0, *args, (stats(ca), stats(cb)))
    else:  # the same product twice, as a batch of two
        got = ng.batched_gemm_numpy(np.stack([ca, ca]), 0, np.stack([cb, cb]), 0, *args, "auto")
        assert np.array_equal(got[0], got[1])
        got = got[0]
    assert used == [dtype]
    want = [
        [sum(int(x) * int(y) for x, y in zip(row, col, strict=True)) for col in cb.T] for row in ca
    ]
    assert got.tolist() == want


@pytest.mark.parametrize("single", [True, False])
@pytest.mark.parametrize("a_order", ["rows", "columns", "strided"])
@pytest.mark.parametrize("b_order", ["rows", "columns", "strided"])
def test_blas_codes_kernel_reads_any_memory_order(single, a_order, b_order):
    """The one-call BLAS kernel takes its operands as they lie (a layer's
    transposed weight view, a conv's transposed columns, a strided slice)
    and gives the exact integer sums, on a non-square shape that a
    transposed read would get wrong."""
    from hwsim.kernels.blas_sums import blas_codes_kernel

    rng = np.random.default_rng(len(a_order) * 7 + len(b_order))
    top = 60 if single else 40000

    def laid(shape, order):
        x = rng.integers(-top, top + 1, size=shape, dtype=np.int64)
        if order == "columns":
            return x, np.ascontiguousarray(x.T).T
        if order == "strided":
            wide = np.zeros((shape[0], 2 * shape[1]), dtype=np.int32)
            wide[:, ::2] = x
            return x, wide[:, ::2]
        return x, x.astype(np.int32)

    a, a_laid = laid((5, 37), a_order)
    b, b_laid = laid((37, 11), b_order)
    out = np.empty((5, 11), dtype=np.int64)
    blas_codes_kernel(int(Overflow.SATURATE), single)(a_laid, b_laid, out, 2, -(2**62), 2**62)
    want = [[sum(int(x) * int(y) for x, y in zip(r, c, strict=True)) << 2 for c in b.T] for r in a]
    assert out.tolist() == want
