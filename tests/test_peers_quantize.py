"""Bit-for-bit agreement with the peers: qtorch and APyTypes."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import hwsim
from hwsim import FixedPoint

pytestmark = pytest.mark.peers


@st.composite
def fmt_and_float32(draw):
    wl = draw(st.integers(2, 24))
    fl = draw(st.integers(-4, 20))
    n = draw(st.integers(1, 64))
    extra = 3
    # values on a grid 2^extra finer than the format, up to 4x beyond its range: exact in float32
    span = 1 << (wl + extra + 1)
    m = draw(st.lists(st.integers(-span, span), min_size=n, max_size=n))
    return wl, fl, np.array(m, dtype=np.float64) * 2.0 ** -(fl + extra)


@given(case=fmt_and_float32())
def test_qtorch_fixed_point_nearest_clamp(case):
    qtorch_quant = pytest.importorskip("qtorch.quant")
    wl, fl, x = case
    x32 = torch.tensor(x, dtype=torch.float32)
    ours = hwsim.quantize(x32, FixedPoint(wl, fl), "nearest", "saturate")
    theirs = qtorch_quant.fixed_point_quantize(
        x32, wl, fl, clamp=True, symmetric=False, rounding="nearest"
    )
    assert torch.equal(ours, theirs)


APY_ROUNDING = {
    "floor": "TRN",
    "zero": "TRN_ZERO",
    "nearest": "RND_CONV",
    "nearest_away": "RND_INF",
}


@st.composite
def fmt_and_exact_values(draw):
    wl = draw(st.integers(1, 36))
    fl = draw(st.integers(-6, 40))
    n = draw(st.integers(1, 40))
    extra = 8
    span = 1 << (wl + extra + 4)
    m = draw(
        st.lists(
            st.integers(-span, span)
            | st.integers(-span >> extra, span >> extra).map(lambda k: (2 * k + 1) << (extra - 1)),
            min_size=n,
            max_size=n,
        )
    )
    return wl, fl, extra, np.array(m, dtype=np.float64) * 2.0 ** -(fl + extra)


@pytest.mark.parametrize("overflow", ["saturate", "wrap"])
@pytest.mark.parametrize("rounding", list(APY_ROUNDING))
@given(case=fmt_and_exact_values())
def test_apytypes_cast(rounding, overflow, case):
    apy = pytest.importorskip("apytypes")
    wl, fl, extra, x = case
    src = apy.APyFixedArray.from_float(x, int_bits=wl - fl + 6, frac_bits=fl + extra)
    cast = src.cast(
        int_bits=wl - fl,
        frac_bits=fl,
        quantization=getattr(apy.QuantizationMode, APY_ROUNDING[rounding]),
        overflow=apy.OverflowMode.SAT if overflow == "saturate" else apy.OverflowMode.WRAP,
    )
    bits = np.array(cast.to_bits(), dtype=object).astype(
        np.int64
    )  # read through to_bits (to_numpy is wrong after WRAP in 0.5.1)
    theirs = np.where(bits >= (1 << (wl - 1)), bits - (1 << wl), bits)
    ours = hwsim.to_codes(x, FixedPoint(wl, fl), rounding, overflow)
    np.testing.assert_array_equal(ours, theirs)
