"""The fused layer kernels (``hwsim.kernels.layer``) bit-exact against slow,
plain-Python references that call the scalar arithmetic of
``hwsim.kernels.scalar`` element by element, in the order the kernels'
docstrings state: every rounding (stochastic included), saturate and wrap,
random formats, empty / single / odd shapes, bias blocks of ``inner == 1``
(a linear layer) and ``inner > 1`` (a conv), ragged tails, and values with
NaN, +-Inf, -0.0, ties, subnormals and huge magnitudes.

The modes of each test are a fixed list (each kernel compiles per mode
combination, about half a second each on a cold cache); hypothesis draws
the formats, shapes, values and seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwsim import FixedPoint
from hwsim.kernels.layer import (
    bias_kernel,
    epilogue_kernel,
    operand_kernel,
    split_epilogue_kernel,
)
from hwsim.kernels.scalar import apply_overflow, counter_uniform, value_to_code
from hwsim.plan.checks import kernel_constants
from tests import kernel_modes
from tests.examples import examples

ROUNDINGS = tuple(kernel_modes.ROUNDINGS.values())
NEAREST, NEAREST_AWAY, FLOOR, ZERO, STOCHASTIC = ROUNDINGS
SATURATE, WRAP = kernel_modes.OVERFLOWS.values()
EXAMPLES = examples(30, 15)
SPECIALS = np.array(
    [np.nan, np.inf, -np.inf, -0.0, 0.0, 3e38, -3e38, 1e-45, -1e-45, 0.5, -0.5, 1.5, -2.5],
    dtype=np.float32,
)


def constants(fmt: FixedPoint):
    """(scale, wrap_modulus, min_code, max_code), as ``hwsim.nn.fused.Quant`` passes them."""
    c = kernel_constants(fmt)
    return (c.scale, c.wrap_modulus, c.min_code, c.max_code)


def code(v: float, k, rounding: int, overflow: int, seed, i: int) -> int:
    """The scalar code of finite ``v``, element ``i`` (its counter uniform if stochastic)."""
    u = float(counter_uniform(seed, i)) if rounding == STOCHASTIC else 0.0
    return int(value_to_code(float(v), *k, rounding, overflow, u))


# -- references: one element at a time ---------------------------------------------------


def operand_reference(x, k, rounding, overflow, seed):
    codes = np.zeros(x.size, dtype=np.int64)
    bad = ors = lo = hi = 0
    for i, v in enumerate(x.tolist()):
        if not math.isfinite(v):
            bad += 1
            continue
        c = code(v, k, rounding, overflow, seed, i)
        codes[i] = c
        ors, lo, hi = ors | c, min(lo, c), max(hi, c)
    return codes, (bad, ors, lo, hi)


def epilogue_reference(codes, bias, inner, acc, acc_overflow, k, out_fmt, rounding, overflow, seed):
    out = np.empty(codes.size, dtype=np.float32)
    for i, c in enumerate(codes.tolist()):
        if bias is not None:
            b = int(bias[(i // inner) % bias.size])
            c = int(apply_overflow(c + b, acc.min_code, acc.max_code, acc_overflow))
        v = float(np.float32(c * acc.lsb))  # the accumulator's float32 value
        out[i] = np.float32(code(v, k, rounding, overflow, seed, i) * out_fmt.lsb)
    return out


def bias_reference(x, w_fmt, w_rounding, w_seed, a_fmt, a_rounding, a_seed, overflow):
    codes = np.zeros(x.size, dtype=np.int64)
    bad = 0
    for i, v in enumerate(x.tolist()):
        if not math.isfinite(v):
            bad += 1
            continue
        c = code(v, constants(w_fmt), w_rounding, overflow, w_seed, i)
        v = float(np.float32(c * w_fmt.lsb))  # the weight format's float32 value
        codes[i] = code(v, constants(a_fmt), a_rounding, overflow, a_seed, i)
    return codes, bad


# -- strategies ----------------------------------------------------------------------------


def fixed_points(wl=(1, 62), fl=(-12, 48)):
    return st.builds(FixedPoint, st.integers(*wl), st.integers(*fl), st.booleans())


@st.composite
def floats32(draw, max_size=70, lsb=1.0):
    """float32 values: normal ones at random magnitudes, multiples of half an
    LSB (ties), and specials (NaN, +-Inf, -0.0, subnormals, huge)."""
    n = draw(st.sampled_from([0, 1, 2, 3, 7, 8, 9, 16, 31, 33, max_size]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal(n) * 2.0 ** rng.integers(-30, 30, n)
    ties = rng.random(n) < 0.3
    x[ties] = rng.integers(-64, 64, int(ties.sum())) * (lsb / 2)
    x = x.astype(np.float32)
    if draw(st.booleans()):
        special = rng.random(n) < 0.25
        x[special] = rng.choice(SPECIALS, int(special.sum()))
    return x


seeds = st.integers(0, 2**64 - 1).map(np.uint64)


# -- tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("overflow", [SATURATE, WRAP])
@pytest.mark.parametrize("rounding", ROUNDINGS)
@settings(max_examples=EXAMPLES)
@given(data=st.data(), fmt=fixed_points(), seed=seeds)
def test_operand_kernel_matches_reference(rounding, overflow, data, fmt, seed):
    x = data.draw(floats32(lsb=fmt.lsb))
    k = constants(fmt)
    codes = np.full(x.size, -7, dtype=np.int64)
    got = operand_kernel(rounding, overflow, rounding == STOCHASTIC)(x, codes, *k, seed)
    want_codes, want = operand_reference(x, k, rounding, overflow, seed)
    assert tuple(int(v) for v in got) == want
    np.testing.assert_array_equal(codes, want_codes)


# (acc_overflow, has_bias, rounding, overflow): every rounding with a bias under both
# overflows, no bias under both, and an accumulator that wraps into a saturating output
EPILOGUE_MODES = (
    [(o, True, r, o) for r in ROUNDINGS for o in (SATURATE, WRAP)]
    + [(o, False, r, o) for r in (NEAREST, STOCHASTIC) for o in (SATURATE, WRAP)]
    + [(WRAP, True, FLOOR, SATURATE)]
)


@st.composite
def epilogue_cases(draw):
    """Accumulator codes of ``rows`` blocks of ``count * inner`` (plus maybe a
    ragged tail), a bias of ``count`` codes, an accumulator and an output
    format whose values stay finite in float32."""
    acc = draw(fixed_points(wl=(2, 62), fl=(-8, 40)))
    count = draw(st.sampled_from([1, 2, 3, 5, 10, 13]))
    inner = draw(st.sampled_from([1, 1, 2, 3, 4, 9, 64]))
    rows = draw(st.sampled_from([0, 1, 2, 3, 5]))
    tail = draw(st.sampled_from([0, 0, 1, count * inner - 1]))
    n = rows * count * inner + tail
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lo, hi = acc.min_code, acc.max_code
    small = rng.integers(-1000, 1000, n).clip(lo, hi)
    full = rng.integers(lo, hi, n, endpoint=True)
    codes = np.where(rng.random(n) < 0.5, small, full).astype(np.int64)
    codes[rng.random(n) < 0.1] = hi
    codes[rng.random(n) < 0.1] = lo
    bias = rng.integers(lo, hi, count, endpoint=True).astype(np.int64)
    # mostly a coarser output grid than the accumulator's (values to round)
    out_fl = min(max(acc.fl - draw(st.integers(-4, 24)), -8), 40)
    out_fmt = FixedPoint(draw(st.integers(1, 62)), out_fl, draw(st.booleans()))
    return acc, codes, bias, inner, out_fmt


@pytest.mark.parametrize("modes", EPILOGUE_MODES, ids=str)
@settings(max_examples=EXAMPLES)
@given(case=epilogue_cases(), seed=seeds)
def test_epilogue_kernel_matches_reference(modes, case, seed):
    acc_overflow, has_bias, rounding, overflow = modes
    acc, codes, bias, inner, out_fmt = case
    k = constants(out_fmt)
    out = np.full(codes.size, np.nan, dtype=np.float32)
    run = epilogue_kernel(acc_overflow, has_bias, rounding, overflow, rounding == STOCHASTIC)
    b = bias if has_bias else codes[:1]
    run(codes, b, inner, b.size, acc.min_code, acc.max_code, acc.lsb, out, k[0], out_fmt.lsb,
        *k[1:], seed)  # fmt: skip
    want = epilogue_reference(
        codes, bias if has_bias else None, inner, acc, acc_overflow, k, out_fmt, rounding,
        overflow, seed,
    )  # fmt: skip
    np.testing.assert_array_equal(out.view(np.int32), want.view(np.int32))


@pytest.mark.parametrize("overflow", [SATURATE, WRAP])
@pytest.mark.parametrize("rounding", ROUNDINGS)
@settings(max_examples=EXAMPLES)
@given(case=epilogue_cases(), seed=seeds, seed_b=seeds, cols=st.sampled_from([1, 2, 7]))
def test_split_epilogue_kernel_matches_reference(rounding, overflow, case, seed, seed_b, cols):
    """A weight-and-bias GEMM's codes (R, C + 1) in one call: the first C
    columns as the reference's pass over them (noise index r C + j, seed),
    the last as its pass over that column (index r, seed_b)."""
    acc, codes, _, _, out_fmt = case
    rows = codes.size // (cols + 1)
    codes = codes[: rows * (cols + 1)].reshape(rows, cols + 1)
    k = constants(out_fmt)
    out_w = np.full((rows, cols), np.nan, dtype=np.float32)
    out_b = np.full(rows, np.nan, dtype=np.float32)
    run = split_epilogue_kernel(rounding, overflow, rounding == STOCHASTIC)
    run(codes, acc.lsb, out_w, out_b, k[0], out_fmt.lsb, *k[1:], seed, seed_b)
    args = (None, 1, acc, SATURATE, k, out_fmt, rounding, overflow)
    want_w = epilogue_reference(codes[:, :-1].reshape(-1), *args, seed)
    want_b = epilogue_reference(codes[:, -1].copy(), *args, seed_b)
    np.testing.assert_array_equal(out_w.reshape(-1).view(np.int32), want_w.view(np.int32))
    np.testing.assert_array_equal(out_b.view(np.int32), want_b.view(np.int32))


# (w_rounding, a_rounding, overflow): each rounding in each slot
BIAS_MODES = [
    (r, ROUNDINGS[(j + 2) % 5], o) for j, r in enumerate(ROUNDINGS) for o in (SATURATE, WRAP)
]


@pytest.mark.parametrize("modes", BIAS_MODES, ids=str)
@settings(max_examples=EXAMPLES)
@given(data=st.data(), w_fmt=fixed_points(), a_fmt=fixed_points(), seed=seeds, a_seed=seeds)
def test_bias_kernel_matches_reference(modes, data, w_fmt, a_fmt, seed, a_seed):
    w_rounding, a_rounding, overflow = modes
    w_seeded, a_seeded = w_rounding == STOCHASTIC, a_rounding == STOCHASTIC
    x = data.draw(floats32(lsb=w_fmt.lsb))
    codes = np.full(x.size, -7, dtype=np.int64)
    run = bias_kernel(w_rounding, w_seeded, a_rounding, a_seeded, overflow)
    w, a = constants(w_fmt), constants(a_fmt)
    bad = run(x, codes, w[0], w_fmt.lsb, *w[1:], seed, *a, a_seed)
    want_codes, want_bad = bias_reference(
        x, w_fmt, w_rounding, seed, a_fmt, a_rounding, a_seed, overflow
    )
    assert int(bad) == want_bad
    np.testing.assert_array_equal(codes, want_codes)


@pytest.mark.parametrize("inner", [0, 1, 4])
def test_epilogue_kernel_of_an_empty_output(inner):
    """No elements, any ``inner`` (a conv output with no pixels has 0): nothing
    written, no error."""
    codes, out = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    bias = np.arange(3, dtype=np.int64)
    run = epilogue_kernel(SATURATE, True, NEAREST, SATURATE, False)
    run(codes, bias, inner, 3, -128, 127, 1.0, out, 1.0, 1.0, 2.0, -1, 1, np.uint64(0))
