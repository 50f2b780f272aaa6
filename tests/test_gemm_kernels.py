"""The MAC-array kernels behind ``sequential_gemm_kernel``: every specialised
variant (int32 and int64 lanes, shifts right / zero / left per stage, all
roundings, saturate and wrap, with and without a product format, overflow
checks kept or proven unnecessary) bit-exact against the integer reference of
tests/naive_gemm.py and against the generic kernel."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from naive_gemm import mac_gemm

from hwsim import FixedPoint
from hwsim.kernels import gemm as kg
from hwsim.kernels import gemm_mac, mac_variant
from hwsim.kernels.scalar import (
    FLOOR,
    NEAREST,
    SATURATE,
    STOCHASTIC,
    WRAP,
)
from tests.examples import examples
from tests.kernel_modes import OVERFLOWS, ROUNDINGS


@st.composite
def kernel_cases(draw, max_k=24, max_n=40, max_m=3):
    """Codes of two operands on grids 2^-fa, 2^-fb, an accumulator and maybe a
    product format, drawn so that shifts land on both sides of zero and the
    operand widths pick int32 lanes or force int64 ones."""
    seed = draw(st.integers(0, 2**63 - 1))
    rng = np.random.default_rng(seed % 2**32)
    bt, m = draw(st.integers(1, 2)), draw(st.integers(1, max_m))
    k, n = draw(st.integers(1, max_k)), draw(st.integers(1, max_n))
    # operand widths: products within int16, within int32, or past it
    top = draw(st.sampled_from([7, 10, 23]))
    wa, wb = draw(st.integers(2, top)), draw(st.integers(2, top))
    fa, fb = draw(st.integers(-3, 10)), draw(st.integers(-3, 10))
    b_signed = draw(st.booleans())
    a = rng.integers(-(2 ** (wa - 1)), 2 ** (wa - 1), size=(bt, m, k), dtype=np.int64)
    b_lo = -(2 ** (wb - 1)) if b_signed else 0
    b = rng.integers(b_lo, 2 ** (wb - 1), size=(bt, k, n), dtype=np.int64)
    if draw(st.booleans()):
        a[rng.random(a.shape) < 0.3] = 0  # zero terms are skipped
    fl_prod = fa + fb
    product = None
    if draw(st.booleans()):
        product = FixedPoint(
            draw(st.integers(2, 40)),
            draw(st.integers(fl_prod - 12, fl_prod + 3)),
            draw(st.booleans()),
        )
    fl_in = product.fl if product is not None else fl_prod
    acc = FixedPoint(
        draw(st.sampled_from([16]) | st.integers(2, 40)),  # fx16: the int16 lane's own range
        draw(st.integers(fl_in - 12, fl_in + 3)),
        draw(st.booleans()),
    )
    rounding = draw(st.sampled_from(sorted(ROUNDINGS)))
    overflow = draw(st.sampled_from(sorted(OVERFLOWS)))
    return a, b, fa, fb, acc, product, rounding, overflow, seed


def run_kernel(factory, a, b, fa, fb, acc, product, rounding, overflow, seed):
    out = np.empty((a.shape[0], a.shape[1], b.shape[2]), dtype=np.int64)
    p = product if product is not None else acc
    fl_in = product.fl if product is not None else fa + fb
    factory(ROUNDINGS[rounding], OVERFLOWS[overflow], product is not None)(
        a,
        b,
        out,
        fa + fb - p.fl,
        p.min_code,
        p.max_code,
        fl_in - acc.fl,
        acc.min_code,
        acc.max_code,
        np.uint64(seed),
    )
    return out


def chosen(a, b, fa, fb, acc, product, rounding, overflow):
    p = product if product is not None else acc
    fl_in = product.fl if product is not None else fa + fb
    return mac_variant.choose(
        (int(a.min()), int(a.max())),
        (int(b.min()), int(b.max())),
        a.shape[2],
        product is not None,
        ROUNDINGS[rounding],
        OVERFLOWS[overflow],
        (fa + fb - p.fl, fl_in - acc.fl),
        (p.min_code, p.max_code, acc.min_code, acc.max_code),
    )


def reference(a, b, fa, fb, acc, product, rounding, overflow, seed):
    return np.array(
        mac_gemm(a * 2.0**-fa, b * 2.0**-fb, acc, product, rounding, overflow, seed),
        dtype=np.int64,
    )


@settings(max_examples=examples(80, ci=40), deadline=None)
@given(kernel_cases())
def test_every_variant_matches_integer_reference(case):
    want = reference(*case)
    got = run_kernel(kg.sequential_gemm_kernel, *case)
    assert np.array_equal(got, want)


@settings(max_examples=examples(60, ci=25), deadline=None)
@given(kernel_cases(max_k=300, max_n=70))
def test_specialised_equals_generic_kernel_on_long_sums(case):
    got = run_kernel(kg.sequential_gemm_kernel, *case)
    want = run_kernel(kg.generic_gemm_kernel, *case)
    assert np.array_equal(got, want)


def test_lane_choice_follows_the_bounds():
    fx86 = (-128, 127)
    acc = FixedPoint(16, 8)
    args = (False, NEAREST, SATURATE, (0, 4), (0, 0, acc.min_code, acc.max_code))
    key = mac_variant.choose(fx86, fx86, 512, *args)
    # fx8.6 x fx8.6 into fx16.8: int16 lanes (|a b| + 2^3 < 2^15), products
    # need no term clamp, the running sum can saturate, and fx16's range is
    # the lane's own (the saturating lane add alone)
    assert key == (
        16,
        NEAREST,
        SATURATE,
        mac_variant.STAGE_NONE,
        False,
        mac_variant.STAGE_RIGHT,
        False,
        mac_variant.ACC_LANE_SATURATES,
    )
    # a narrower accumulator: the lane add, then the format's clamp
    acc12 = FixedPoint(12, 8)
    narrow = (False, NEAREST, SATURATE, (0, 4), (0, 0, acc12.min_code, acc12.max_code))
    assert mac_variant.choose(fx86, fx86, 512, *narrow)[-1] == 1
    # depth 2 cannot leave fx16.8: the per-add clamp is dropped
    assert mac_variant.choose(fx86, fx86, 2, *args)[-1] == 0
    # an accumulator past int16: int32 lanes
    acc24 = FixedPoint(24, 8)
    wide = (False, NEAREST, SATURATE, (0, 4), (0, 0, acc24.min_code, acc24.max_code))
    assert mac_variant.choose(fx86, fx86, 512, *wide)[0] == 32
    # a wide accumulator the bounds prove never saturates: narrow lanes, no checks
    acc32 = FixedPoint(32, 20)
    wide32 = (False, NEAREST, SATURATE, (0, 4), (0, 0, acc32.min_code, acc32.max_code))
    assert mac_variant.choose((-12335, 13341), (-1396, 1616), 64, *wide32) == (
        32,
        NEAREST,
        SATURATE,
        mac_variant.STAGE_NONE,
        False,
        mac_variant.STAGE_RIGHT,
        False,
        0,
    )
    # ... but a clamp onto a range past the lane keeps the wide lane: an
    # unsigned 32-bit accumulator clamps negative terms at 0 and 2^32 - 1
    uacc = FixedPoint(32, 0, False)
    unsigned = (False, NEAREST, SATURATE, (0, 0), (0, 0, uacc.min_code, uacc.max_code))
    key = mac_variant.choose(fx86, fx86, 4, *unsigned)
    assert key[0] == 64 and key[-2] is True
    # products past 2^31: int64 lanes
    big = (-(2**20), 2**20)
    assert mac_variant.choose(big, big, 8, *args)[0] == 64
    # a rounding offset that would leave int64: no variant, the generic kernel
    huge = (-(2**31), 2**31)
    acc62 = FixedPoint(62, 0)
    assert (
        mac_variant.choose(
            huge, huge, 8, False, NEAREST, SATURATE, (0, 62), (0, 0, acc62.min_code, acc62.max_code)
        )
        is None
    )
    # stochastic shifts past 53 bits: the generic kernel (float comparison)
    assert (
        mac_variant.choose(
            big,
            big,
            8,
            False,
            STOCHASTIC,
            SATURATE,
            (0, 54),
            (0, 0, acc62.min_code, acc62.max_code),
        )
        is None
    )
    # no stage rounds: every rounding mode shares one variant
    left = (False, STOCHASTIC, WRAP, (0, -2), (0, 0, acc.min_code, acc.max_code))
    assert mac_variant.choose(fx86, fx86, 4, *left)[1] == FLOOR


def test_variant_widens_the_ranges_to_powers_of_two():
    """The drivers' cached lookup (``variant``) chooses for the ranges
    widened to [-2^p, 2^q - 1], a superset: operands a few codes apart
    share one key, and a range past a lane's edge still leaves that lane."""
    assert mac_variant._widen((-128, 127)) == (-128, 127)
    assert mac_variant._widen((-129, 128)) == (-256, 255)
    assert mac_variant._widen((-1, 1)) == (-1, 1)
    assert mac_variant._widen((0, 0)) == (0, 0)
    acc = FixedPoint(16, 8)
    args = (False, NEAREST, SATURATE, (0, 4), (0, 0, acc.min_code, acc.max_code))
    key = mac_variant.variant((-100, 90), (-3, 120), 64, *args)
    assert key == mac_variant.choose((-128, 127), (-4, 127), 64, *args)
    assert key[0] == 16
    # |a b| + 2^3 past 2^15 once a range crosses 128: int32 lanes
    assert mac_variant.variant((-129, 127), (-128, 127), 64, *args)[0] == 32


@pytest.mark.parametrize("rounding", sorted(ROUNDINGS))
@pytest.mark.parametrize("overflow", sorted(OVERFLOWS))
@pytest.mark.parametrize("operand_bits", [8, 22])
def test_benchmark_shape_matches_generic(rounding, overflow, operand_bits):
    """fx8.6-like operands into a narrow accumulator with rounding on every
    product, as the benchmark times it, and the same with wide codes (int64
    lanes), on a shape with vector tails."""
    rng = np.random.default_rng(operand_bits)
    half = 2 ** (operand_bits - 1)
    a = rng.integers(-half, half, size=(1, 37, 150), dtype=np.int64)
    b = rng.integers(-half, half, size=(1, 150, 77), dtype=np.int64)
    acc = FixedPoint(16, 8) if operand_bits == 8 else FixedPoint(40, 8)
    fa = fb = 6 if operand_bits == 8 else 20
    for product in (None, FixedPoint(acc.wl, fa + fb - 2)):
        case = (a, b, fa, fb, acc, product, rounding, overflow, 7)
        key = chosen(*case[:-1])
        assert key is not None and key[0] == (16 if operand_bits == 8 else 64)
        got = run_kernel(kg.sequential_gemm_kernel, *case)
        assert np.array_equal(got, run_kernel(kg.generic_gemm_kernel, *case))


@settings(max_examples=examples(20, ci=8), deadline=None)
@given(kernel_cases())
def test_serial_and_parallel_twins_agree(case):
    """Small GEMMs run the serial twin of each kernel (``kg._by_size``); the
    parallel one, taken from SERIAL_BELOW MACs on, computes the same codes."""
    serial = run_kernel(kg.sequential_gemm_kernel, *case)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(kg, "SERIAL_BELOW", 0)
        parallel = run_kernel(kg.sequential_gemm_kernel, *case)
        generic = run_kernel(kg.generic_gemm_kernel, *case)
    assert np.array_equal(serial, parallel)
    assert np.array_equal(serial, generic)


@settings(max_examples=examples(40, ci=20), deadline=None)
@given(kernel_cases(max_k=40, max_n=15, max_m=40))
def test_thin_outputs_transposed_match(case):
    """A thin product (``hwsim.plan.gemm.thin_product``: few output columns,
    more rows) runs transposed, with the same terms, order and noise as the
    untransposed kernel, the generic kernel and the integer reference."""
    got = run_kernel(kg.sequential_gemm_kernel, *case)
    assert np.array_equal(got, reference(*case))
    assert np.array_equal(got, run_kernel(kg.generic_gemm_kernel, *case))
    with pytest.MonkeyPatch.context() as m:
        m.setattr(kg, "thin_product", lambda rows, cols: False)  # never transposed
        assert np.array_equal(got, run_kernel(kg.sequential_gemm_kernel, *case))


def test_thin_outputs_take_the_transposed_kernel():
    """The case above does reach the transposed call (out^T of shape (Bt, N, M))."""
    rng = np.random.default_rng(3)
    a = rng.integers(-100, 100, size=(2, 30, 20), dtype=np.int64)
    b = rng.integers(-100, 100, size=(2, 20, 5), dtype=np.int64)
    case = (a, b, 4, 4, FixedPoint(24, 6), None, "stochastic", "saturate", 11)
    shapes = []
    real = gemm_mac.mac_kernel

    def spy(*key):
        kernels = real(*key)

        def record(A, *rest):
            shapes.append(A.shape)
            return kernels[0](A, *rest)

        return (record, record)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(gemm_mac, "mac_kernel", spy)
        got = run_kernel(kg.sequential_gemm_kernel, *case)
    assert shapes == [(2, 5, 20)]
    assert np.array_equal(got, reference(*case))
