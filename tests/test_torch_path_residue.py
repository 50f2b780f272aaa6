"""The torch path's sum of per-term rounded products through BLAS on the
residues (``hwsim.torch_path.residue``) and its float32 terms give the Numba
kernels' codes, and the residue tables give every product's rounding error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from hwsim.formats import parse_format
from hwsim.modes import Rounding
from hwsim.ops import matmul_on_codes
from hwsim.torch_path import gemm as torch_gemm
from hwsim.torch_path.residue import MAX_SHIFT, residue_sums, residue_tables


def rounded(p: int, shift: int, rounding: Rounding) -> int:
    q, rem, half = p >> shift, p & ((1 << shift) - 1), 1 << (shift - 1)
    if rounding == Rounding.FLOOR:
        return q
    return q + (rem > half or (rem == half and q & 1))


@pytest.mark.parametrize("rounding", [Rounding.NEAREST, Rounding.FLOOR])
@pytest.mark.parametrize("shift", range(1, MAX_SHIFT + 1))
@given(a=st.integers(-(1 << 40), 1 << 40), b=st.integers(-(1 << 20), 1 << 20))
def test_tables_give_each_products_rounding_error(shift, rounding, a, b):
    r_count, u, v = residue_tables(shift, rounding)
    err = a * b - (rounded(a * b, shift, rounding) << shift)
    assert err == sum(x * y for x, y in zip(u[a % r_count], v[b % r_count], strict=True))


@pytest.mark.parametrize("rounding", ["nearest", "floor"])
@pytest.mark.parametrize("acc", ["fx32.8", "fx32.9", "fx32.7", "fx30.6", "fx24.8"])
@pytest.mark.parametrize("shape", [(40, 40, 50), (2, 33, 70, 41)])
def test_per_term_rounding_through_blas_equals_numba(shape, acc, rounding, monkeypatch):
    """Both shapes are large enough for the residue path (``_by_residues``):
    the test checks it ran wherever its tables are small enough (a 4-bit floor
    shift's are not: those terms go through float32)."""
    calls = []

    def spy(*args):
        calls.append(args[-2])
        return residue_sums(*args)

    monkeypatch.setattr(torch_gemm, "residue_sums", spy)
    rng = np.random.default_rng(len(shape) + len(acc))
    *batch, m, k, n = shape
    a = rng.integers(-(1 << 7), 1 << 7, (*batch, m, k))
    b = rng.integers(-(1 << 6), 1 << 6, (*batch, k, n))
    a[..., ::3] = 0  # zeros, as after a ReLU or a pad
    kw = dict(accumulator=acc, rounding=rounding, path="sequential")
    want = matmul_on_codes(a, 5, b, 5, **kw)  # products on 2^-10, rounded 1-4 bits
    got = matmul_on_codes(torch.from_numpy(a), 5, torch.from_numpy(b), 5, **kw)
    np.testing.assert_array_equal(got.numpy(), want)
    shift = 10 - parse_format(acc).fl  # products on 2^-10
    takes = len(residue_tables(shift, Rounding.parse(rounding))[1][0]) <= 8  # else float32 terms
    assert bool(calls) == takes  # the sums came through the residues where they can


@pytest.mark.parametrize("mn", [(6, 20), (40, 5)])
@pytest.mark.parametrize("rounding", ["nearest", "floor", "zero", "stochastic"])
@pytest.mark.parametrize("acc", ["fx32.8", "fx14.8", "fx32.12"])
def test_float32_terms_equal_numba(acc, rounding, mn):
    """Products below 2^24 form their terms in float32 (``_float32_chunk``);
    a narrow accumulator saturates mid-sum (the k loop then runs); a thin
    product (N < 16 <= M) forms them transposed."""
    rng = np.random.default_rng(7)
    m, n = mn
    a = rng.integers(-(1 << 10), 1 << 10, (3, m, 90))
    b = rng.integers(-(1 << 10), 1 << 10, (3, 90, n))
    kw = dict(accumulator=acc, rounding=rounding, path="sequential", seed=11)
    want = matmul_on_codes(a, 5, b, 5, **kw)
    got = matmul_on_codes(torch.from_numpy(a), 5, torch.from_numpy(b), 5, **kw)
    np.testing.assert_array_equal(got.numpy(), want)
