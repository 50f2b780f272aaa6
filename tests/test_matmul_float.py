"""The MAC array with a floating-point accumulator (and product format):
Numba kernel and torch path against the Fraction reference
(tests/naive_float_gemm.py) and each other, bit for bit; APyTypes'
``APyFloatAccumulatorContext`` (``peers``); conv2d; mixed fixed/float
operands; errors."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from naive_float_gemm import ref_add, ref_float_matmul

import hwsim
from hwsim import FixedPoint, FloatingPoint

MODES = ["nearest", "nearest_away", "zero", "floor", "stochastic"]


def same_bits(a, b) -> bool:
    a = np.ascontiguousarray(np.asarray(a, dtype=np.float64))
    b = np.ascontiguousarray(np.asarray(b, dtype=np.float64))
    return a.shape == b.shape and np.array_equal(a.view(np.int64), b.view(np.int64))


@st.composite
def acc_formats(draw, ieee=False):
    exp, man = draw(st.integers(2, 6)), draw(st.integers(0, 8))
    if ieee:
        return FloatingPoint(exp, max(man, 1))
    inf = draw(st.booleans())
    nan = inf or draw(st.booleans())
    if man == 0 and nan:
        inf = nan = False
    return FloatingPoint(
        exp,
        man,
        subnormals=draw(st.booleans()),
        inf=inf,
        nan=nan,
        saturate=draw(st.booleans()),
    )


def operand(rng, shape, fmt: FloatingPoint, center: int, spread: int, zeros=0.2):
    """Values of ``fmt`` (from ``hwsim.quantize``) in binades center +- spread, some zeros."""
    mag = np.ldexp(1.0 + rng.random(shape), rng.integers(center - spread, center + spread, shape))
    x = np.where(rng.random(shape) < 0.5, -mag, mag)
    x = np.where(rng.random(shape) < zeros, 0.0, x)
    return hwsim.quantize(x, fmt)


@st.composite
def gemm_cases(draw, ieee=False):
    acc = draw(acc_formats(ieee))
    product = None if ieee else draw(st.none() | acc_formats())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    bt, m, k, n = draw(st.tuples(*(st.integers(1, 3),) * 2, st.integers(0, 7), st.integers(1, 3)))
    opf = FloatingPoint(5, draw(st.integers(0, 6)), inf=False, nan=False)
    # products around the accumulator's range: subnormals, ties, overflow, cancellation
    center = draw(st.integers(acc.emin - acc.man - 2, acc.emax + 2)) // 2
    a = operand(rng, (bt, m, k), opf, center, 3)
    b = operand(rng, (bt, k, n), opf, center, 3)
    return acc, product, a, b


@settings(max_examples=60, deadline=None)
@given(gemm_cases(), st.sampled_from(MODES), st.integers(0, 2**64 - 1))
def test_numba_and_torch_match_reference(case, rounding, seed):
    acc, product, a, b = case
    try:
        ref = ref_float_matmul(a, b, acc, product, rounding, seed)
    except ValueError:  # a NaN product into an accumulator without NaN
        with pytest.raises(ValueError, match="overflowed to NaN in product format"):
            hwsim.matmul(a, b, accumulator=acc, product=product, rounding=rounding, seed=seed)
        with pytest.raises(ValueError, match="overflowed to NaN in product format"):
            hwsim.matmul(
                a,
                b,
                accumulator=acc,
                product=product,
                rounding=rounding,
                seed=seed,
                backend="torch",
            )
        return
    ours = hwsim.matmul(a, b, accumulator=acc, product=product, rounding=rounding, seed=seed)
    assert same_bits(ours, ref)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    theirs = hwsim.matmul(ta, tb, accumulator=acc, product=product, rounding=rounding, seed=seed)
    assert theirs.dtype == torch.float64
    assert same_bits(theirs.numpy(), ours)


@pytest.mark.parametrize("rounding", MODES)
def test_exact_zero_sums_and_sticky_sums(rounding):
    """Signed zeros (IEEE 754 6.3) and sums far below the accumulator's ulp."""
    acc = FloatingPoint(5, 2)
    cases = [
        ([[-1.0, 1.0]], [[1.0], [1.0]]),
        ([[-0.0]], [[1.0]]),
        ([[-0.0, -0.0]], [[1.0], [1.0]]),
        ([[1.0, 2.0**-20]], [[1.0], [1.0]]),
        ([[1.0, -(2.0**-20)]], [[1.0], [1.0]]),
        ([[-1.0, 2.0**-20]], [[1.0], [1.0]]),
        ([[1.0, 2.0**-3, 2.0**-20]], [[1.0], [1.0], [1.0]]),  # a tie, then a sticky bit
        ([[2.0**-14, 2.0**-30]], [[1.0], [1.0]]),  # subnormal region
        ([[60000.0, 60000.0]], [[1.0], [1.0]]),  # overflow
    ]
    for a, b in cases:
        a, b = np.array(a), np.array(b)
        ours = hwsim.matmul(a, b, accumulator=acc, rounding=rounding, seed=5)
        ref = ref_float_matmul(a[None], b[None], acc, None, rounding, 5)[0]
        assert same_bits(ours, ref), (a, b, ours, ref)
        theirs = hwsim.matmul(a, b, accumulator=acc, rounding=rounding, seed=5, backend="torch")
        assert same_bits(theirs, ours)
    assert math.copysign(1, ref_add(1.0, -1.0, acc, "floor", 0.0)) < 0


def test_wide_accumulators_fp32_and_fp64():
    """fp32 and fp64 accumulators (the float64 grid itself: s is RNE) on bf16 operands."""
    rng = np.random.default_rng(3)
    a = hwsim.quantize(rng.standard_normal((2, 3, 40)) * 1e3, "bf16")
    b = hwsim.quantize(rng.standard_normal((2, 40, 4)) * 1e-3, "bf16")
    for acc in ("fp32", "fp64", "e8m52", "fp16"):
        fmt = FloatingPoint.parse(acc)
        for rounding in ("nearest", "nearest_away", "floor", "stochastic"):
            ours = hwsim.matmul(a, b, accumulator=acc, rounding=rounding, seed=1)
            assert same_bits(ours, ref_float_matmul(a, b, fmt, None, rounding, 1)), acc
            theirs = hwsim.matmul(a, b, accumulator=acc, rounding=rounding, seed=1, backend="torch")
            assert same_bits(theirs, ours)
    # with fp64 and nearest, each step is float64's own addition
    expect = np.zeros((2, 3, 4))
    for kk in range(40):
        expect = expect + a[..., kk : kk + 1] * b[..., kk : kk + 1, :]
    assert same_bits(hwsim.matmul(a, b, accumulator="fp64"), expect)


def test_stochastic_sum_is_unbiased_and_picks_neighbours():
    """1 + 2^-6 in e5m2 (grid 1, 1.25): up with probability 2^-6 / 2^-2."""
    a = np.ones((1, 2))
    b = np.array([[1.0], [2.0**-6]])
    results = np.array(
        [
            hwsim.matmul(a, b, accumulator="e5m2", rounding="stochastic", seed=s)[0, 0]
            for s in range(4000)
        ]
    )
    assert set(np.unique(results)) <= {1.0, 1.25}
    p = np.mean(results == 1.25)
    assert abs(p - 1 / 16) < 4 * math.sqrt(1 / 16 * 15 / 16 / 4000)


def test_conv2d_float_accumulator_matches_im2col_reference():
    rng = np.random.default_rng(4)
    x = hwsim.quantize(rng.standard_normal((2, 3, 5, 4)), "fp8_e4m3")
    w = hwsim.quantize(rng.standard_normal((4, 3, 2, 3)), "fp8_e5m2")
    kw = dict(stride=(2, 1), padding=1, accumulator="e5m4", product="bf16", rounding="nearest")
    ours = hwsim.conv2d(x, w, **kw)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (2, 3), axis=(2, 3))[:, :, ::2, ::1]
    n, c, ho, wo = win.shape[:4]
    cols = win.transpose(0, 1, 4, 5, 2, 3).reshape(n, c * 6, ho * wo)
    wm = np.broadcast_to(w.reshape(1, 4, c * 6), (n, 4, c * 6))
    acc, prod = FloatingPoint(5, 4), FloatingPoint.parse("bf16")
    ref = ref_float_matmul(wm, cols, acc, prod, "nearest").reshape(n, 4, ho, wo)
    assert same_bits(ours, ref)
    theirs = hwsim.conv2d(torch.from_numpy(x), torch.from_numpy(w), **kw)
    assert same_bits(theirs.numpy(), ours)


def test_mixed_fixed_operands_into_float_accumulator():
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((3, 20)), rng.standard_normal((20, 2))
    ours = hwsim.matmul(a, b, accumulator="bf16", a_format="fx8.5", b_format="fx8.6")
    qa, qb = hwsim.quantize(a, "fx8.5"), hwsim.quantize(b, "fx8.6")
    assert same_bits(
        ours, ref_float_matmul(qa[None], qb[None], FloatingPoint(8, 7), None, "nearest")[0]
    )
    theirs = hwsim.matmul(
        torch.from_numpy(a),
        torch.from_numpy(b),
        accumulator="bf16",
        a_format="fx8.5",
        b_format="fx8.6",
    )
    assert same_bits(theirs.numpy(), ours)


@pytest.mark.parametrize("overflow", ["saturate", "wrap"])
def test_mixed_float_operands_into_fixed_accumulator(overflow):
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((3, 20)), rng.standard_normal((20, 2))
    kw = dict(accumulator="fx12.8", overflow=overflow)
    ours = hwsim.matmul(a, b, a_format="fp8_e4m3", b_format="e3m2", **kw)
    qa, qb = hwsim.quantize(a, "fp8_e4m3"), hwsim.quantize(b, "e3m2")
    assert same_bits(ours, hwsim.matmul(qa, qb, **kw))
    theirs = hwsim.matmul(
        torch.from_numpy(a), torch.from_numpy(b), a_format="fp8_e4m3", b_format="e3m2", **kw
    )
    assert same_bits(theirs.numpy(), ours)


def test_errors_say_what_is_wrong():
    a, b = np.ones((2, 3)), np.ones((3, 2))
    with pytest.raises(ValueError, match="float product format needs a float accumulator"):
        hwsim.matmul(a, b, accumulator="fx16.8", product="bf16")
    with pytest.raises(ValueError, match="float accumulator takes a float product"):
        hwsim.matmul(a, b, accumulator="fp32", product="fx16.8")
    with pytest.raises(ValueError, match="path='fast'"):
        hwsim.matmul(a, b, accumulator="fp32", path="fast")
    with pytest.raises(ValueError, match="has no integer codes"):
        hwsim.ops.matmul_codes(a, b, accumulator="fp32")
    with pytest.raises(ValueError, match="has no integer codes"):
        hwsim.ops.conv2d_codes(np.ones((1, 1, 2, 2)), np.ones((1, 1, 1, 1)), accumulator="bf16")
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="exactly in float64.*a_format="):
        hwsim.matmul(rng.standard_normal((2, 3)), rng.standard_normal((3, 2)), accumulator="fp32")
    with pytest.raises(ValueError, match="below float64's 2\\^-1074"):
        hwsim.matmul(np.array([[2.0**-1000]]), np.array([[2.0**-100]]), accumulator="fp32")
    with pytest.raises(ValueError, match="past float64's range"):
        hwsim.matmul(np.array([[2.0**1000]]), np.array([[2.0**100]]), accumulator="fp32")
    with pytest.raises(ValueError, match="beyond 2\\*\\*53"):
        hwsim.matmul(np.array([[2**60 + 1]]), np.array([[1]]), accumulator="fp32")
    assert hwsim.matmul(np.array([[3]]), np.array([[5]]), accumulator="fp32")[0, 0] == 15.0
    with pytest.raises(hwsim.NonFiniteError):
        hwsim.matmul(np.array([[np.inf]]), np.array([[1.0]]), accumulator="fp32")
    with pytest.raises(ValueError, match="accumulator must"):
        hwsim.matmul(a, b, accumulator=3)
    with pytest.raises(ValueError, match="cannot parse floating-point format"):
        hwsim.matmul(a, b, accumulator="fp7")


@pytest.mark.peers
@settings(max_examples=40, deadline=None)
@given(gemm_cases(ieee=True), st.sampled_from(["nearest", "nearest_away", "zero", "floor"]))
def test_matches_apytypes_accumulator_context(case, rounding):
    apy = pytest.importorskip("apytypes")
    q = apy.QuantizationMode
    mode = {
        "nearest": q.TIES_EVEN,
        "nearest_away": q.TIES_AWAY,
        "zero": q.TO_ZERO,
        "floor": q.TO_NEG,
    }[rounding]
    acc, _, a, b = case
    ours = hwsim.matmul(a, b, accumulator=acc, rounding=rounding)
    for x in range(a.shape[0]):
        fa = apy.APyFloatArray.from_float(a[x], 6, 6)  # holds e5m6fn (max 2^16 * 1.98)
        fb = apy.APyFloatArray.from_float(b[x], 6, 6)
        with apy.APyFloatAccumulatorContext(exp_bits=acc.exp, man_bits=acc.man, quantization=mode):
            theirs = (fa @ fb).to_numpy()
        # APyTypes' to_numpy writes NaN as 0x7FF0000000000001 (its NaN code's
        # payload); ours is 0x7FF8000000000000: compare NaN position and sign
        nan = np.isnan(theirs)
        assert np.array_equal(np.isnan(ours[x]), nan)
        assert np.array_equal(np.signbit(ours[x]), np.signbit(theirs))
        assert same_bits(np.where(nan, 0.0, ours[x]), np.where(nan, 0.0, theirs)), acc


def test_fixed_point_formats_still_take_the_integer_path():
    a, b = np.array([[1.0, 1.0, 1.0, -1.0]]), np.array([[0.75], [0.75], [0.75], [0.5]])
    assert hwsim.matmul(a, b, accumulator=FixedPoint(4, 2))[0, 0] == 1.25


def test_shapes_follow_numpy_matmul():
    a, m = np.array([1.0, 2.0, 3.0]), np.arange(6.0).reshape(3, 2)
    for x, y in ((a, a), (a, m), (m.T, a), (np.ones((2, 1, 2, 3)), np.ones((3, 3, 4)))):
        ours = hwsim.matmul(x, y, accumulator="fp16")
        assert np.shape(ours) == np.shape(x @ y) and np.array_equal(ours, x @ y)
        theirs = hwsim.matmul(torch.from_numpy(x), torch.from_numpy(y), accumulator="fp16")
        assert tuple(theirs.shape) == np.shape(x @ y)
    empty = hwsim.matmul(np.zeros((2, 0)), np.zeros((0, 3)), accumulator="fp16")
    assert empty.shape == (2, 3) and not np.signbit(empty).any() and not empty.any()
