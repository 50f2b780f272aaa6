"""hwsim.matmul: bit-true against the sequential integer reference, numba ==
torch, fast path == sequential path, APyTypes in wrap mode, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from naive_gemm import mac_gemm

import hwsim
from hwsim import FixedPoint
from hwsim.errors import CodeOverflowError, NonFiniteError
from hwsim.ops.matmul import grid_codes_numpy, matmul_codes

ROUNDINGS = ["nearest", "nearest_away", "floor", "zero", "stochastic"]
OVERFLOWS = ["saturate", "wrap"]


def on_grid(rng, shape, wl, fl, signed=True):
    """Random values of FixedPoint(wl, fl, signed), as float64."""
    fmt = FixedPoint(wl, fl, signed)
    codes = rng.integers(fmt.min_code, fmt.max_code + 1, size=shape, dtype=np.int64)
    return codes * fmt.lsb


def codes_of(values, fmt):
    return (np.asarray(values) * 2.0**fmt.fl).astype(np.int64)


@st.composite
def gemm_cases(draw, max_k=300):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    batch = draw(st.sampled_from([(), (1,), (2,)]))
    m, n = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    k = draw(st.integers(1, max_k))
    wa, fa = draw(st.integers(2, 10)), draw(st.integers(-2, 8))
    wb, fb = draw(st.integers(2, 10)), draw(st.integers(-2, 8))
    a = on_grid(rng, batch + (m, k), wa, fa)
    b = on_grid(rng, batch + (k, n), wb, fb, signed=draw(st.booleans()))
    acc = FixedPoint(draw(st.integers(2, 24)), draw(st.integers(-4, 12)), draw(st.booleans()))
    product = None
    if draw(st.booleans()):
        product = FixedPoint(draw(st.integers(2, 20)), draw(st.integers(-2, 14)))
    rounding = draw(st.sampled_from(ROUNDINGS))
    overflow = draw(st.sampled_from(OVERFLOWS))
    return a, b, acc, product, rounding, overflow, seed


def reference(a, b, acc, product, rounding, overflow, seed):
    a3 = a.reshape((-1,) + a.shape[-2:])
    b3 = b.reshape((-1,) + b.shape[-2:])
    out = np.array(mac_gemm(a3, b3, acc, product, rounding, overflow, seed), dtype=np.int64)
    return out.reshape(a.shape[:-1] + (b.shape[-1],))


@settings(max_examples=30)
@given(gemm_cases())
def test_matches_sequential_reference_both_backends(case):
    check_against_reference(case)


@pytest.mark.slow
@settings(max_examples=400)
@given(gemm_cases())
def test_matches_sequential_reference_many(case):
    check_against_reference(case)


def check_against_reference(case):
    a, b, acc, product, rounding, overflow, seed = case
    want = reference(a, b, acc, product, rounding, overflow, seed)
    kw = dict(accumulator=acc, product=product, rounding=rounding, overflow=overflow, seed=seed)
    got = hwsim.matmul(a, b, **kw)
    assert got.dtype == np.float64
    assert np.array_equal(codes_of(got, acc), want)
    got_t = hwsim.matmul(torch.from_numpy(a), torch.from_numpy(b), **kw)
    assert np.array_equal(codes_of(got_t.numpy(), acc), want)
    seq = hwsim.matmul(a, b, path="sequential", **kw)
    assert np.array_equal(seq, got)


@settings(max_examples=40)
@given(gemm_cases(max_k=60), st.sampled_from(OVERFLOWS))
def test_fast_path_equals_sequential_where_both_apply(case, overflow):
    a, b, acc, _, _, _, _ = case
    # no rounding anywhere: the accumulator grid is at least as fine as the products'
    fl_needed = grid_codes_numpy(a, "a")[1] + grid_codes_numpy(b, "b")[1]
    acc = FixedPoint(acc.wl, max(acc.fl, fl_needed), acc.signed)
    kw = dict(accumulator=acc, overflow=overflow)
    seq = hwsim.matmul(a, b, path="sequential", **kw)
    try:
        fast = hwsim.matmul(a, b, path="fast", **kw)
    except ValueError:
        assert overflow == "saturate"  # a partial sum might saturate: no fast path
        return
    assert np.array_equal(fast, seq)
    fast_t = hwsim.matmul(torch.from_numpy(a), torch.from_numpy(b), path="fast", **kw)
    assert np.array_equal(fast_t.numpy(), seq)


def test_wrap_fast_path_chunks_long_sums_exactly():
    # products near 2^40: a float64 sum over K=9000 leaves 2^53, so the fast
    # path splits K into exact chunks and reduces modulo 2^wl
    rng = np.random.default_rng(1)
    a = rng.integers(-(2**20), 2**20, size=(2, 9000)).astype(np.float64)
    b = rng.integers(-(2**20), 2**20, size=(9000, 3)).astype(np.float64)
    acc = FixedPoint(48, 0)
    want = a.astype(object) @ b.astype(object)
    want = np.array([[(int(v) + 2**47) % 2**48 - 2**47 for v in row] for row in want])
    fast = hwsim.matmul(a, b, accumulator=acc, overflow="wrap", path="fast")
    seq = hwsim.matmul(a, b, accumulator=acc, overflow="wrap", path="sequential")
    assert np.array_equal(fast.astype(np.int64), want)
    assert np.array_equal(seq, fast)


@pytest.mark.parametrize(
    "fa, fb, acc_fl, outlier",
    [
        (0, 0, 0, None),
        (3, -2, 5, None),
        (20, 30, 70, None),
        (-4, 7, 40, 2.0**30),
        (0, 0, 0, 2.0**40),
        (5, 5, 16, 2.0**-9),
        (130, 120, 250, None),
        (-300, -200, -256, None),
    ],
)
def test_wrap_fast_path_on_float_values_matches_sequential(fa, fb, acc_fl, outlier):
    # float operands: BLAS runs on the values themselves (codes times 2^-fa,
    # 2^-fb); a one-pass grid scan guesses fl from a sample, so an outlier the
    # sample misses takes its second pass
    rng = np.random.default_rng(abs(fa * 7 + fb))
    a = rng.integers(-128, 128, size=(3, 40, 33)) * 2.0**-fa
    b = rng.integers(-128, 128, size=(33, 17)) * 2.0**-fb
    if outlier is not None:
        a[1, 17, 13] = outlier
    acc = FixedPoint(32, acc_fl)
    fast = hwsim.matmul(a, b, accumulator=acc, overflow="wrap", path="fast")
    seq = hwsim.matmul(a, b, accumulator=acc, overflow="wrap", path="sequential")
    assert np.array_equal(fast.view(np.int64), seq.view(np.int64))
    codes, _ = matmul_codes(a, b, accumulator=acc, overflow="wrap")
    assert codes.dtype == np.int64 and np.array_equal(codes * acc.lsb, seq)


def test_saturating_fast_path_uses_tight_bound():
    # max|a| max|b| K would overflow fx16, but the actual sums do not
    a = np.zeros((3, 200))
    a[:, 0] = 100.0
    b = np.full((200, 2), 100.0)
    out = hwsim.matmul(a, b, accumulator="fx16.0", path="fast")
    assert np.array_equal(out, np.full((3, 2), 10000.0))


def test_narrow_accumulator_saturates_mid_sum():
    # fx4.0 holds [-8, 7]: 4 + 4 saturates at 7, then -4 gives 3 (a wide
    # accumulator gives 4); the order k = 0, 1, 2 is the documented one
    a = np.array([[4.0, 4.0, -4.0]])
    b = np.ones((3, 1))
    for arr in (np, torch):
        x, y = (a, b) if arr is np else (torch.from_numpy(a), torch.from_numpy(b))
        narrow = hwsim.matmul(x, y, accumulator="fx4.0", path="sequential")
        wide = hwsim.matmul(x, y, accumulator="fx8.0")
        assert float(narrow[0, 0]) == 3.0 and float(wide[0, 0]) == 4.0
        # the auto path must notice the saturation and take the sequential rule
        assert float(hwsim.matmul(x, y, accumulator="fx4.0")[0, 0]) == 3.0
    # the reverse order gives another answer: -4, 0, 4
    assert hwsim.matmul(a[:, ::-1].copy(), b, accumulator="fx4.0")[0, 0] == 4.0


def test_saturation_rule_on_random_data_differs_from_wide_as_reference_says():
    rng = np.random.default_rng(3)
    a = on_grid(rng, (4, 200), 8, 4)
    b = on_grid(rng, (200, 5), 8, 4)
    acc = FixedPoint(12, 4)  # +-128: random walks of 200 products leave it
    want = reference(a, b, acc, None, "nearest", "saturate", 0)
    got = hwsim.matmul(a, b, accumulator=acc)
    wide = hwsim.matmul(a, b, accumulator=FixedPoint(40, 8))
    assert np.array_equal(codes_of(got, acc), want)
    assert not np.array_equal(got, wide)
    assert (np.abs(got) <= 128).all() and (np.abs(wide) > 128).any()


def test_int32_kernel_equals_int64_kernel():
    rng = np.random.default_rng(4)
    a = rng.integers(-128, 128, size=(2, 33, 70)).astype(np.float64)
    b = rng.integers(-128, 128, size=(2, 70, 41)).astype(np.float64) / 4
    for acc in (
        FixedPoint(16, 2),
        FixedPoint(31, 5),
        FixedPoint(13, 2, False),
        FixedPoint(30, 2, False),
        FixedPoint(31, 2, False),
    ):
        for overflow in OVERFLOWS:
            narrow = hwsim.matmul(a, b, accumulator=acc, overflow=overflow, path="sequential")
            # an exact product format forces the int64 kernel, same arithmetic
            wide = hwsim.matmul(
                a,
                b,
                accumulator=acc,
                overflow=overflow,
                path="sequential",
                product=FixedPoint(62, 2),
            )
            assert np.array_equal(narrow, wide)
    # edge of the int32 kernel: 2^30 + 2^30 must saturate, not wrap in int32
    for acc in ("ufx31.0", "fx31.0", "ufx30.0"):
        fmt = FixedPoint.parse(acc)
        got = hwsim.matmul(
            np.full((1, 3), 2.0**15), np.full((3, 1), 2.0**15), accumulator=acc, path="sequential"
        )
        assert got[0, 0] == fmt.max


def test_batched_and_broadcast_leading_dims():
    rng = np.random.default_rng(5)
    a = on_grid(rng, (2, 3, 4, 6), 8, 3)
    b = on_grid(rng, (6, 5), 8, 3)
    kw = dict(accumulator="fx12.4", rounding="floor")
    out = hwsim.matmul(a, b, **kw)
    assert out.shape == (2, 3, 4, 5)
    for i in range(2):
        for j in range(3):
            assert np.array_equal(out[i, j], hwsim.matmul(a[i, j], b, **kw))
    out_t = hwsim.matmul(torch.from_numpy(a), torch.from_numpy(b), **kw)
    assert np.array_equal(out_t.numpy(), out)
    v = hwsim.matmul(a[0, 0, 0], b, **kw)  # 1-D operands as in numpy.matmul
    assert v.shape == (5,) and np.array_equal(v, out[0, 0, 0])


def test_stochastic_is_deterministic_given_seed_and_backend_independent():
    rng = np.random.default_rng(6)
    a = on_grid(rng, (5, 40), 10, 6)
    b = on_grid(rng, (40, 7), 10, 6)
    kw = dict(accumulator="fx16.6", product="fx14.8", rounding="stochastic")
    one = hwsim.matmul(a, b, seed=11, **kw)
    assert np.array_equal(one, hwsim.matmul(a, b, seed=11, **kw))
    assert not np.array_equal(one, hwsim.matmul(a, b, seed=12, **kw))
    assert np.array_equal(
        one, hwsim.matmul(torch.from_numpy(a), torch.from_numpy(b), seed=11, **kw).numpy()
    )


def test_operand_formats_quantize_first():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(3, 9)), rng.normal(size=(9, 4))
    kw = dict(accumulator="fx20.8", rounding="nearest")
    got = hwsim.matmul(a, b, a_format="fx8.4", b_format="fx8.5", **kw)
    want = hwsim.matmul(hwsim.quantize(a, "fx8.4"), hwsim.quantize(b, "fx8.5"), **kw)
    assert np.array_equal(got, want)
    got_t = hwsim.matmul(
        torch.from_numpy(a), torch.from_numpy(b), a_format="fx8.4", b_format="fx8.5", **kw
    )
    assert np.array_equal(got_t.numpy(), want)


def test_integer_and_float32_inputs():
    a = np.arange(6, dtype=np.int32).reshape(2, 3)
    b = np.ones((3, 2), dtype=np.float32) * 0.5
    out = hwsim.matmul(a, b, accumulator="fx16.2")
    assert np.array_equal(out, (a @ b).astype(np.float64))


def test_zero_operands_and_empty_shapes():
    out = hwsim.matmul(np.zeros((2, 3)), np.ones((3, 4)) * 2.0**-100, accumulator="fx8.200")
    assert np.array_equal(out, np.zeros((2, 4)))
    for path in ("auto", "sequential"):
        for lib in (np, torch):
            k0 = hwsim.matmul(lib.ones((2, 0)), lib.ones((0, 3)), accumulator="fx8.0", path=path)
            assert tuple(k0.shape) == (2, 3) and float(abs(k0).max()) == 0.0
            m0 = hwsim.matmul(lib.ones((0, 2)), lib.ones((2, 3)), accumulator="fx8.0", path=path)
            assert tuple(m0.shape) == (0, 3)


def test_errors_are_clear():
    a, b = np.ones((2, 3)), np.ones((3, 2))
    with pytest.raises(ValueError, match="not on a fixed-point grid"):
        hwsim.matmul(np.array([[1e20, 1e-20]]), np.ones((2, 1)), accumulator="fx8.0")
    with pytest.raises(CodeOverflowError, match="int64"):
        big = np.array([[2.0**40 + 2.0**-20]])
        hwsim.matmul(big, big, accumulator="fx8.0")
    with pytest.raises(NonFiniteError):
        hwsim.matmul(np.array([[np.nan, 1.0, 1.0]]), np.ones((3, 1)), accumulator="fx8.0")
    with pytest.raises(ValueError, match="shapes do not match"):
        hwsim.matmul(a, a, accumulator="fx8.0")
    with pytest.raises(ValueError, match="not a mix"):
        hwsim.matmul(a, torch.ones(3, 2), accumulator="fx8.0")
    with pytest.raises(ValueError, match="path must be one of"):
        hwsim.matmul(a, b, accumulator="fx8.0", path="blas")
    with pytest.raises(ValueError, match="cannot parse"):
        hwsim.matmul(a, b, accumulator="int8")
    with pytest.raises(ValueError, match="rounding"):
        hwsim.matmul(a, b, accumulator="fx8.0", rounding="up")
    with pytest.raises(ValueError, match="path='fast' needs"):
        hwsim.matmul(a * 0.5, b * 0.5, accumulator="fx8.1", path="fast")  # products need rounding
    with pytest.raises(ValueError, match="float or integer"):
        hwsim.matmul(np.array([["x"]]), np.ones((1, 1)), accumulator="fx8.0")


def test_shift_left_past_int64_is_reported():
    a = np.array([[2.0**30]])
    with pytest.raises(CodeOverflowError, match="accumulator"):
        hwsim.matmul(a, a, accumulator="fx62.40")  # products 2^60 shifted left 40 bits


# -- peers -----------------------------------------------------------------------------

APY_ROUNDING = {
    "nearest": "TIES_EVEN",
    "nearest_away": "TIES_AWAY",
    "floor": "TO_NEG",
    "zero": "TO_ZERO",
}


def apytypes_matmul(a, b, fa, fb, wa, wb, acc, rounding, overflow):
    apy = pytest.importorskip("apytypes")
    x = apy.APyFixedArray.from_float(a, int_bits=wa - fa, frac_bits=fa)
    y = apy.APyFixedArray.from_float(b, int_bits=wb - fb, frac_bits=fb)
    mode = getattr(apy.QuantizationMode, APY_ROUNDING[rounding])
    ovf = apy.OverflowMode.WRAP if overflow == "wrap" else apy.OverflowMode.SAT
    with apy.APyFixedAccumulatorContext(
        int_bits=acc.int_bits, frac_bits=acc.fl, quantization=mode, overflow=ovf
    ):
        c = x @ y
    bits = np.array(c.to_bits(), dtype=object).astype(np.int64)
    return np.where(bits >= 2 ** (acc.wl - 1), bits - 2**acc.wl, bits)


@pytest.mark.peers
@settings(max_examples=40)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 300),
    st.sampled_from(list(APY_ROUNDING)),
    st.integers(2, 12),
    st.integers(0, 8),
    st.integers(2, 12),
    st.integers(0, 8),
    st.integers(4, 30),
    st.integers(-2, 14),
)
def test_wrap_equals_apytypes_accumulator_context(
    seed, k, rounding, wa, fa, wb, fb, acc_wl, acc_fl
):
    rng = np.random.default_rng(seed)
    a, b = on_grid(rng, (3, k), wa, fa), on_grid(rng, (k, 2), wb, fb)
    acc = FixedPoint(acc_wl, acc_fl)
    want = apytypes_matmul(a, b, fa, fb, wa, wb, acc, rounding, "wrap")
    got = hwsim.matmul(a, b, accumulator=acc, rounding=rounding, overflow="wrap")
    assert np.array_equal(codes_of(got, acc), want)


@pytest.mark.peers
@settings(max_examples=30)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 200),
    st.sampled_from(list(APY_ROUNDING)),
    st.integers(2, 10),
    st.integers(0, 8),
    st.integers(2, 10),
    st.integers(0, 8),
    st.integers(-2, 12),
)
def test_saturate_equals_apytypes_where_nothing_saturates(
    seed, k, rounding, wa, fa, wb, fb, acc_fl
):
    rng = np.random.default_rng(seed)
    a, b = on_grid(rng, (3, k), wa, fa), on_grid(rng, (k, 2), wb, fb)
    # wide enough that no partial sum reaches the range: sum |a b| < 2^(wa+wb-2) k, and each
    # product rounds to at most one LSB more (products below the LSB round to 0 or +-1 LSB)
    acc_wl = max(wa + wb - fa - fb + acc_fl + k.bit_length() + 2, k.bit_length() + 2)
    acc = FixedPoint(min(62, acc_wl), acc_fl)
    want = apytypes_matmul(a, b, fa, fb, wa, wb, acc, rounding, "saturate")
    got = hwsim.matmul(a, b, accumulator=acc, rounding=rounding, overflow="saturate")
    assert np.array_equal(codes_of(got, acc), want)


# -- GPU -------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("overflow", OVERFLOWS)
def test_torch_path_on_cuda_equals_numba(rounding, overflow):
    rng = np.random.default_rng(8)
    a, b = on_grid(rng, (2, 17, 150), 8, 5), on_grid(rng, (2, 150, 23), 8, 6)
    for product, path in ((None, "auto"), (FixedPoint(12, 8), "sequential"), (None, "sequential")):
        kw = dict(
            accumulator=FixedPoint(14, 7),
            product=product,
            rounding=rounding,
            overflow=overflow,
            seed=3,
            path=path,
        )
        want = hwsim.matmul(a, b, **kw)
        got = hwsim.matmul(torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda(), **kw)
        assert got.is_cuda and np.array_equal(got.cpu().numpy(), want)


@settings(max_examples=30)
@given(gemm_cases(max_k=40))
def test_backend_argument_gives_the_reference_on_either_backend(case):
    a, b, acc, product, rounding, overflow, seed = case
    expected = reference(a, b, acc, product, rounding, overflow, seed)
    kw = dict(accumulator=acc, product=product, rounding=rounding, overflow=overflow, seed=seed)
    codes, fmt = matmul_codes(a, b, backend="torch", **kw)
    assert isinstance(codes, np.ndarray) and fmt == acc
    np.testing.assert_array_equal(codes, expected)
    codes_t, _ = matmul_codes(torch.from_numpy(a), torch.from_numpy(b), backend="numba", **kw)
    assert isinstance(codes_t, torch.Tensor)
    np.testing.assert_array_equal(codes_t.numpy(), expected)
    values = hwsim.matmul(torch.from_numpy(a), torch.from_numpy(b), backend="numba", **kw)
    np.testing.assert_array_equal(values.numpy(), expected * acc.lsb)


def test_add_codes_and_backend_errors():
    from hwsim.ops import add_codes

    for saturate, wrap in ((127, -126), (-128, 126)):
        codes = np.array([120 if saturate > 0 else -120])
        step = np.array([10 if saturate > 0 else -10])
        assert add_codes(codes, step, "fx8.4").tolist() == [saturate]
        assert add_codes(codes, step, "fx8.4", "wrap").tolist() == [wrap]
        got = add_codes(torch.from_numpy(codes), torch.from_numpy(step), "fx8.4", "wrap")
        assert got.tolist() == [wrap]
    a = np.ones((2, 2))
    with pytest.raises(ValueError, match="not a mix"):
        matmul_codes(torch.ones(2, 2), a, accumulator="fx8.4", backend="numba")
    with pytest.raises(ValueError, match="backend must be None or one of"):
        matmul_codes(a, a, accumulator="fx8.4", backend="gpu")
