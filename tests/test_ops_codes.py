"""``grid_codes`` + ``matmul_on_codes`` (an operand scanned once, fed to several
GEMMs) give the codes ``matmul_codes`` finds from the values, on both backends."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hwsim.ops import grid_codes, matmul_codes, matmul_on_codes


@pytest.mark.parametrize(
    "rounding, overflow, acc",
    [
        ("nearest", "saturate", "fx12.6"),  # rounds each product, saturates
        ("stochastic", "saturate", "fx16.7"),
        ("floor", "wrap", "fx10.6"),
        ("nearest", "saturate", "fx32.12"),  # exact: the BLAS fast path
    ],
)
def test_matmul_on_codes_equals_matmul_codes(rounding, overflow, acc):
    rng = np.random.default_rng(3)
    a = rng.integers(-300, 300, size=(2, 7, 11)) / 64.0
    b = rng.integers(-300, 300, size=(11, 5)) / 32.0
    kw = dict(accumulator=acc, rounding=rounding, overflow=overflow, seed=9)
    want, _ = matmul_codes(a, b, **kw)
    for x, y in ((a, b), (torch.from_numpy(a), torch.from_numpy(b))):
        (ca, fa, sa), (cb, fb, sb) = grid_codes(x), grid_codes(y)
        got = matmul_on_codes(ca, fa, cb, fb, stats=(sa, sb), **kw)
        assert type(got) is type(ca) and np.array_equal(np.asarray(got), want)
        # transposed codes (a layer's weight-gradient GEMM) keep their stats
        got_t = matmul_on_codes(cb.T, fb, ca[0].T, fa, stats=(sb, sa), **kw)
        assert np.array_equal(np.asarray(got_t), matmul_codes(b.T, a[0].T, **kw)[0])


def test_grid_codes_and_mixed_operands():
    codes, fl, stats = grid_codes(np.array([0.75, -2.0]))
    assert codes.tolist() == [3, -8] and fl == 2 and tuple(stats) == (8, -8, 3)
    with pytest.raises(ValueError, match="two NumPy arrays or two torch tensors"):
        matmul_on_codes(
            np.ones((1, 1), np.int64),
            0,
            torch.ones(1, 1, dtype=torch.int64),
            0,
            accumulator="fx8.0",
        )


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("acc", ["fx32.20", "fx15.14"])  # fx15.14 saturates
def test_torch_vectorized_mac_on_large_tiles_equals_numba(rounding, acc):
    """Up to ``torch_path.gemm.LOOP_ABOVE`` accumulators (here 5120) the torch
    path's CPU MAC runs vectorized in chunks of k (the saturating fallback
    included): the Numba kernels' bits."""
    rng = np.random.default_rng(1)
    a = rng.integers(-600, 600, (2, 16, 150))
    b = rng.integers(0, 876, (2, 150, 160))
    kw = dict(accumulator=acc, rounding=rounding, seed=3)
    want = matmul_on_codes(a, 12, b, 10, **kw)
    got = matmul_on_codes(torch.from_numpy(a), 12, torch.from_numpy(b), 10, **kw)
    assert np.array_equal(got.numpy(), want)
