"""The convolution without im2col columns (``hwsim.ops.implicit_conv``, the
``implicit_conv_kernel`` MAC array): against the slow integer reference
(each output's terms in (c, kh, kw) order, padding included, through
``naive_gemm.mac_gemm``) and against the im2col GEMM it replaces, on random
shapes, pads (crops too), row strides, formats and every deterministic
rounding, saturating and wrapping; where it declines, the im2col GEMM runs."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from naive_gemm import mac_gemm

from hwsim import FixedPoint
from hwsim.kernels import gemm as kg
from hwsim.modes import Overflow, Rounding
from hwsim.ops.im2col import conv_shape
from hwsim.ops.implicit_conv import implicit_conv

matmul_module = sys.modules["hwsim.ops.matmul"]

ROUNDINGS = ["nearest", "floor", "zero", "nearest_away"]


def stats(codes):
    return tuple(int(v) for v in kg.code_stats(np.ascontiguousarray(codes).reshape(-1)))


def reference(cx, cw, fx, fw, stride, pads, acc, product, rounding, overflow):
    """Direct loops on the padded (or cropped) input: one row of weights times
    one column of window codes per output, through the integer reference."""
    top, bottom, left, right = pads
    x = cx[
        :,
        :,
        max(-top, 0) : cx.shape[2] - max(-bottom, 0),
        max(-left, 0) : cx.shape[3] - max(-right, 0),
    ]
    x = np.pad(x, ((0, 0), (0, 0), (max(top, 0), max(bottom, 0)), (max(left, 0), max(right, 0))))
    n, o, ho, wo = conv_shape(cx, cw, stride, pads)
    _, c, kh, kw = cw.shape
    sh, sw = stride
    rows = [[float(v) * 2.0**-fw for v in cw.reshape(o, -1)[r]] for r in range(o)]
    out = np.zeros((n, o, ho, wo), dtype=np.int64)
    for b in range(n):
        cols = [
            [
                float(x[b, ci, y * sh + i, q * sw + j]) * 2.0**-fx
                for y in range(ho)
                for q in range(wo)
            ]
            for ci in range(c)
            for i in range(kh)
            for j in range(kw)
        ]
        codes = mac_gemm([rows], [cols], acc, product, rounding, overflow)
        out[b] = np.array(codes[0], dtype=np.int64).reshape(o, ho, wo)
    return out


def case(seed, wl_x, wl_w):
    rng = np.random.default_rng(seed)
    n, c, o = (int(v) for v in rng.integers(1, 4, 3))
    h, w = (int(v) for v in rng.integers(2, 7, 2))
    kh, kw = (int(v) for v in rng.integers(1, 4, 2))
    pads = tuple(int(v) for v in rng.integers(-1, 3, 4))
    sh = int(rng.integers(1, 4))
    if h + pads[0] + pads[1] < kh or w + pads[2] + pads[3] < kw:
        return None
    half_x, half_w = 1 << (wl_x - 1), 1 << (wl_w - 1)
    cx = rng.integers(-half_x, half_x, (n, c, h, w))
    cx[rng.random(cx.shape) < 0.3] = 0  # a ReLU's zeros
    cw = rng.integers(-half_w, half_w, (o, c, kh, kw))
    cw[rng.random(cw.shape) < 0.2] = 0  # zero weights are skipped
    return cx, cw, (sh, 1), pads


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from(ROUNDINGS),
    st.sampled_from(["saturate", "wrap"]),
    st.sampled_from([("fx12.9", None), ("fx8.6", None), ("fx20.8", "fx14.7"), ("fx40.9", None)]),
    st.sampled_from([(6, 8), (12, 14), (20, 24)]),
)
def test_implicit_conv_equals_the_integer_reference(seed, rounding, overflow, formats, widths):
    """Codes of up to 20 bits go through int16, int32 or int64 lanes; the
    narrow accumulators saturate or wrap, the product format rounds too."""
    made = case(seed, *widths)
    if made is None:
        return
    cx, cw, stride, pads = made
    fx, fw = 5, 6  # products on 2^-11: every accumulator here rounds them
    acc = FixedPoint.parse(formats[0])
    product = None if formats[1] is None else FixedPoint.parse(formats[1])
    shape = conv_shape(cx, cw, stride, pads)
    got = implicit_conv(cx, fx, cw, fw, stride, pads, shape, acc, product,
                        Rounding.parse(rounding), Overflow.parse(overflow), "auto",
                        (stats(cx), stats(cw)))  # fmt: skip
    if got is None:  # every term rounds, so it runs, unless all are zero (exact)
        assert stats(cx)[0] == 0 or stats(cw)[0] == 0
        return
    want = reference(cx, cw, fx, fw, stride, pads, acc, product, rounding, overflow)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("rounding", ROUNDINGS + ["stochastic"])
@pytest.mark.parametrize("overflow", ["saturate", "wrap"])
def test_implicit_conv_equals_the_im2col_gemm(rounding, overflow, monkeypatch):
    """Through ``conv2d_on_codes`` (ops.matmul's, which takes crops): the same codes with the implicit kernel as
    with it turned off (im2col columns and the GEMM); stochastic rounding, a
    column stride of 2 and exact terms decline it."""
    ran = []

    def spy(*args):
        out = implicit_conv(*args)
        ran.append(out is not None)
        return out

    for seed in range(12):
        made = case(seed, 12, 12)
        if made is None:
            continue
        cx, cw, stride, pads = made
        if seed % 4 == 3:
            stride = (stride[0], 2)
        for acc in ("fx24.10", "fx16.12", "fx32.11"):  # exact, saturating and wrapping rounds
            args = (cx, 5, cw, 6, stride, pads, FixedPoint.parse(acc), None,
                    Rounding.parse(rounding), Overflow.parse(overflow), seed, "auto",
                    (stats(cx), stats(cw)))  # fmt: skip
            monkeypatch.setattr(matmul_module, "implicit_conv", spy)
            got = matmul_module.conv2d_on_codes(*args)  # crops too: the unchecked entry
            monkeypatch.setattr(matmul_module, "implicit_conv", lambda *a: None)
            want = matmul_module.conv2d_on_codes(*args)
            assert np.array_equal(got, want), (seed, acc)
    if rounding == "stochastic":
        assert not any(ran)
    else:
        assert any(ran) and not all(ran)
