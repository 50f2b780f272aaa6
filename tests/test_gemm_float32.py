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
