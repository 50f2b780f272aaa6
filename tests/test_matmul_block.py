"""The MAC array with block-scaled operands (hwsim.ops.block_gemm) against the
slow Fraction reference of tests/naive_block_gemm.py, and numba == torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from naive_block_gemm import ref_block_matmul, ref_operand

import hwsim
import hwsim.ops
from hwsim.formats import parse_format

OPERANDS = [  # (a_format, b_format, K-block)
    ("mxint8", "mxint8", 32),
    ("mxfp8_e4m3", "mxfp8_e4m3", 32),
    ("mxfp4_e2m1", "mxfp8_e4m3", 32),
    ("mxfp6_e3m2_b8", "mxfp6_e2m3_b8", 8),
    ("bfp8_b16", "bfp8_b16", 16),
    ("bfp8", "bfp8", None),  # one exponent per tensor: K is one block
    ("mxint8_b4", "fx8.4", 4),  # a block operand with a fixed-point one
    ("bfp6_b8", "fp8_e4m3", 8),
]
ACCUMULATORS = ["fx32.16", "fx12.6", "fx10.2", "fp32", "bf16", "fp8_e4m3"]


def _data(rng, shape, spread=4.0):
    x = rng.standard_normal(shape) * np.exp2(rng.integers(-spread, spread + 1, size=shape))
    x[rng.random(shape) < 0.1] = 0.0
    return x


@settings(max_examples=25, deadline=None)
@given(
    case=st.sampled_from(OPERANDS),
    acc=st.sampled_from(ACCUMULATORS),
    m=st.integers(1, 3),
    k=st.integers(1, 40),
    n=st.integers(1, 3),
    seed=st.integers(0, 2**32),
)
def test_matches_the_fraction_reference(case, acc, m, k, n, seed):
    af, bf, kb = case
    rng = np.random.default_rng(seed)
    a, b = _data(rng, (m, k)), _data(rng, (k, n))
    got = hwsim.matmul(a, b, accumulator=acc, a_format=af, b_format=bf)
    fa, fb, facc = parse_format(af), parse_format(bf), parse_format(acc)
    want = ref_block_matmul(a, b, facc, fa, fb, kb or k)
    np.testing.assert_array_equal(got, want)
    tg = hwsim.matmul(torch.from_numpy(a), torch.from_numpy(b), accumulator=acc, a_format=af,
                      b_format=bf)  # fmt: skip
    np.testing.assert_array_equal(tg.numpy(), got)


@pytest.mark.parametrize("acc", ["fx12.8", "fx32.16", "bf16", "fp8_e5m2"])
@pytest.mark.parametrize("case", OPERANDS[:3])
def test_stochastic_accumulator_cast_with_a_seed(case, acc):
    af, bf, kb = case
    rng = np.random.default_rng(1)
    fa, fb = parse_format(af), parse_format(bf)
    # operands on their grids, quantized twice: a block whose amax rounded to -2^(e+1)
    # (two's-complement elements) moves up a scale once; then the quantizers leave them
    a = ref_operand(ref_operand(_data(rng, (3, 70)), fa, True), fa, True)
    b = ref_operand(ref_operand(_data(rng, (70, 4)), fb, False), fb, False)
    assert (ref_operand(a, fa, True) == a).all() and (ref_operand(b, fb, False) == b).all()
    got = hwsim.matmul(a, b, accumulator=acc, a_format=af, b_format=bf, rounding="stochastic",
                       seed=12345)  # fmt: skip
    want = ref_block_matmul(a, b, parse_format(acc), fa, fb, kb, "stochastic", 12345)
    np.testing.assert_array_equal(got, want)
    tg = hwsim.matmul(torch.from_numpy(a), torch.from_numpy(b), accumulator=acc, a_format=af,
                      b_format=bf, rounding="stochastic", seed=12345)  # fmt: skip
    np.testing.assert_array_equal(tg.numpy(), got)


def test_saturation_happens_in_k_order():
    # block sums +1.5, +1.5, -1.5 into fx4.2 (max 1.75): 1.5 -> 1.75 (sat) -> 0.25
    a = np.array([[1.5, 1.5, -1.5]])
    b = np.ones((3, 1))
    got = hwsim.matmul(a, b, accumulator="fx4.2", a_format="mxint8_b1", b_format="mxint8_b1")
    assert got.tolist() == [[0.25]]
    # one block of 3: the exact sum 1.5 is cast once
    one = hwsim.matmul(a, b, accumulator="fx4.2", a_format="mxint8_b3", b_format="mxint8_b3")
    assert one.tolist() == [[1.5]]


def test_codes_batches_vectors_and_backend_crossing():
    rng = np.random.default_rng(2)
    a, b = _data(rng, (2, 3, 40)), _data(rng, (40, 5))
    kw = dict(accumulator="fx24.12", a_format="mxint8", b_format="mxint8")
    codes, fmt = hwsim.ops.matmul_codes(a, b, **kw)
    np.testing.assert_array_equal(codes * fmt.lsb, hwsim.matmul(a, b, **kw))
    for i in range(2):
        np.testing.assert_array_equal(hwsim.matmul(a[i], b, **kw), hwsim.matmul(a, b, **kw)[i])
    v = hwsim.matmul(a[0, 0], b, **kw)
    assert v.shape == (5,)
    t = hwsim.matmul(torch.from_numpy(a), torch.from_numpy(b), backend="numba", **kw)
    assert isinstance(t, torch.Tensor)
    np.testing.assert_array_equal(t.numpy(), hwsim.matmul(a, b, **kw))


def test_conv2d_is_the_block_gemm_of_its_im2col_matrices():
    rng = np.random.default_rng(3)
    x, w = _data(rng, (2, 3, 5, 5)), _data(rng, (4, 3, 3, 3))
    kw = dict(accumulator="fx24.10", x_format="mxfp8_e4m3_b9", w_format="mxfp8_e4m3_b9")
    got = hwsim.conv2d(x, w, padding=1, stride=2, **kw)
    xt = torch.nn.functional.pad(torch.from_numpy(x), (1, 1, 1, 1))
    cols = xt.unfold(2, 3, 2).unfold(3, 3, 2)  # (N, C, Ho, Wo, kh, kw)
    ho, wo = cols.shape[2:4]
    cols = cols.permute(0, 1, 4, 5, 2, 3).reshape(2, 27, ho * wo).numpy()
    for nn in range(2):
        want = ref_block_matmul(
            w.reshape(4, 27),
            cols[nn],
            parse_format("fx24.10"),
            parse_format("mxfp8_e4m3_b9"),
            parse_format("mxfp8_e4m3_b9"),
            9,
        )
        np.testing.assert_array_equal(got[nn].reshape(4, -1), want)  # fmt: skip
    tg = hwsim.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1, stride=2, **kw)
    np.testing.assert_array_equal(tg.numpy(), got)
    codes, fmt = hwsim.ops.conv2d_codes(x, w, padding=1, stride=2, **kw)
    np.testing.assert_array_equal(codes * fmt.lsb, got)


def test_errors_say_what_is_wrong():
    a, b = np.ones((2, 64)), np.ones((64, 2))
    with pytest.raises(ValueError, match="different block sizes"):
        hwsim.matmul(a, b, accumulator="fx32.16", a_format="mxint8", b_format="mxint8_b16")
    with pytest.raises(ValueError, match="b_format is None"):
        hwsim.matmul(a, b, accumulator="fx32.16", a_format="mxint8")
    with pytest.raises(ValueError, match="product="):
        hwsim.matmul(a, b, accumulator="fx32.16", product="fx16.8", a_format="mxint8",
                     b_format="mxint8")  # fmt: skip
    with pytest.raises(ValueError, match="more than float64's 53"):
        hwsim.matmul(a, b, accumulator="fp32", a_format="mxfp8_e5m2", b_format="mxfp8_e5m2")
    with pytest.raises(ValueError, match="no integer codes"):
        hwsim.ops.matmul_codes(a, b, accumulator="fp32", a_format="mxint8", b_format="mxint8")
    with pytest.raises(ValueError, match="K = 64"):
        hwsim.matmul(a, np.ones((63, 2)), accumulator="fx32.16", a_format="mxint8",
                     b_format="mxint8")  # fmt: skip
