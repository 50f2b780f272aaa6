"""Block-scaled formats against the peers: gfloat's MX ``quantize_block`` and
qtorch's ``block_quantize`` (block floating point), bit for bit.

Where qtorch's block floating point differs from hwsim's (so the qtorch test
draws inputs that avoid these cases):

- qtorch rounds by adding 6 * 2^e to the value in float32 and rounding the
  sum's bits half up: ties go toward +inf (hwsim: the rounding mode's rule,
  ties to even for ``nearest``), and the float32 addition itself rounds
  values with bits below 2^(e-21) first (double rounding);
- qtorch's elements are symmetric: -2^(e+1) is clipped to -(2^(e+1) - LSB),
  where hwsim keeps the two's-complement code -2^(wl-1);
- qtorch takes e from the float32 exponent field of amax (a subnormal amax
  breaks it) and has no exponent clamp; hwsim clamps e to [-127, 127];
- qtorch has one exponent per tensor (``dim=-1``) or per index of one dim;
  hwsim's ``BlockFloatingPoint(wl, None)`` and ``(wl, None, axis=1)`` on a
  2-D tensor are those two; hwsim's fixed-size blocks have no qtorch twin;
- qtorch's stochastic rounding draws from its own unseeded generator, so
  only ``nearest`` compares bit for bit.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import hwsim
from hwsim.formats.block import BlockFloatingPoint

pytestmark = pytest.mark.peers

GFLOAT_NAMES = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4_e2m1", "mxint8"]


@st.composite
def mx_blocks(draw):
    """Rows of 32 float32-exact values over a wide range of binades, with
    ties on every element grid (few significant bits) and zeros."""
    rows = draw(st.integers(1, 4))
    base = draw(st.integers(-120, 110))
    vals = []
    for _ in range(rows * 32):
        if draw(st.integers(0, 7)) == 0:
            vals.append(draw(st.sampled_from([0.0, -0.0])))
        else:
            k = draw(st.integers(16, 31))
            e = base - draw(st.integers(0, 20))
            vals.append(draw(st.sampled_from([1.0, -1.0])) * math.ldexp(k, e - 4))
    return np.array(vals, dtype=np.float64).reshape(rows, 32)


@given(name=st.sampled_from(GFLOAT_NAMES), x=mx_blocks())
def test_gfloat_mx_quantize_block(name, x):
    gfloat = pytest.importorskip("gfloat")
    from gfloat import formats

    info = getattr(formats, f"format_info_{name}")
    theirs = np.stack([gfloat.quantize_block(info, row, gfloat.compute_scale_amax) for row in x])
    for arr in (x, torch.from_numpy(x)):
        ours = hwsim.quantize(arr, name)
        ours = ours.numpy() if isinstance(ours, torch.Tensor) else ours
        assert np.array_equal(ours.view(np.int64), theirs.view(np.int64)), (name, x, ours, theirs)


@st.composite
def qtorch_case(draw):
    """(wl, per_row, x): float32 values whose sum with qtorch's 6 * 2^e base is
    exact in float32, no ties on the wl-bit grid, no negative value that
    rounds to -2^(e+1) (see the module docstring)."""
    wl = draw(st.integers(3, 16))
    rows, cols = draw(st.integers(1, 5)), draw(st.integers(1, 40))
    per_row = draw(st.booleans())
    x = np.zeros((rows, cols))
    for r in range(rows):
        e = draw(st.integers(-100, 100))
        step = 2.0 ** (e + 2 - 23)  # float32 resolution of the sum 6 * 2^e + x
        lsb_steps = 1 << (23 - wl)  # one element LSB in steps
        m = draw(st.lists(st.integers(-(1 << 22) + 1, (1 << 22) - 1), min_size=cols, max_size=cols))
        m = np.array(m)
        m[(m % lsb_steps) == lsb_steps // 2] += 1  # off the tie
        low = -((1 << 22) - lsb_steps)  # keeps |x| <= 2^(e+1) - LSB for negatives
        m = np.where(m < low, low, m)
        m[draw(st.integers(0, cols - 1))] = (1 << 21) + draw(st.integers(0, (1 << 21) - 1))
        x[r] = m * step
    if not per_row:  # one exponent per tensor: every row's values under the largest
        x = x / np.abs(x).max(axis=1, keepdims=True) * np.abs(x).max()
        x = x.astype(np.float32).astype(np.float64)
        top = math.frexp(np.abs(x).max())[1] - 1
        step = 2.0 ** (top + 2 - 23)
        x = np.round(x / step) * step
        lsb = 2.0 ** (top + 2 - wl)
        ties = np.abs(x / lsb - np.floor(x / lsb) - 0.5) == 0
        x[ties] += step
        x = np.maximum(x, -(2.0 ** (top + 1)) + lsb)
    return wl, per_row, x.astype(np.float32)


@given(case=qtorch_case())
def test_qtorch_block_quantize_nearest(case):
    qtorch_quant = pytest.importorskip("qtorch.quant")
    wl, per_row, x = case
    xt = torch.from_numpy(x)
    fmt = BlockFloatingPoint(wl, None, axis=1) if per_row else BlockFloatingPoint(wl, None)
    theirs = qtorch_quant.block_quantize(xt, wl, dim=0 if per_row else -1, rounding="nearest")
    for ours in (hwsim.quantize(xt, fmt), torch.from_numpy(hwsim.quantize(x, fmt))):
        assert torch.equal(ours.view(torch.int32), theirs.view(torch.int32)), (wl, x, ours, theirs)


def test_qtorch_differs_where_documented():
    """The cases the module docstring lists, shown: a tie (qtorch rounds it up,
    hwsim to even) and -2^(e+1) (qtorch clips it symmetric)."""
    qtorch_quant = pytest.importorskip("qtorch.quant")
    tie = torch.tensor([1.0, 0.5 + 1 / 128], dtype=torch.float32)  # wl 8, e 0: LSB 2^-6
    assert hwsim.quantize(tie, "bfp8")[1].item() == 0.5
    assert qtorch_quant.block_quantize(tie, 8, rounding="nearest")[1].item() == 0.515625
    low = torch.tensor([1.5, -1.999], dtype=torch.float32)
    assert hwsim.quantize(low, "bfp8")[1].item() == -2.0
    assert qtorch_quant.block_quantize(low, 8, rounding="nearest")[1].item() == -1.984375
