"""A linear layer's weight and bias gradients in one GEMM (``g^T @ [x | 1]``,
``hwsim.nn.fused_mac._ones_column``): the unfused chain's bits, where the
running sums saturate or wrap, with a product format and every deterministic
rounding, on both backends; stochastic MAC rounding keeps two GEMMs. The
conv layers' twin: the forward's im2col columns with a row of ones appended."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import hwsim.nn as hnn
from hwsim.nn import fused_mac
from tests.test_nn_fused import BASE, train

VARIANTS = {
    "base": BASE,
    # the batch sums (and weight gradient sums) saturate at +-2^3
    "saturating": dataclasses.replace(BASE, grad_weight_accumulator="fx12.8"),
    "wrap": dataclasses.replace(BASE, grad_weight_accumulator="fx12.8", overflow="wrap"),
    "product": dataclasses.replace(BASE, product="fx24.14", rounding="floor"),
    "coarse": dataclasses.replace(BASE, grad_weight_accumulator="fx24.6", rounding="zero"),
    "stochastic": dataclasses.replace(BASE, grad_weight_accumulator_rounding="stochastic"),
}


MODELS = {
    "linear": (lambda: nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)), (9, 5)),
    # the conv layers' columns get the row of ones (stride 2 too); x in 2-D
    "conv": (
        lambda: nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 2, stride=2)
        ),
        (9, 2, 4, 4),
    ),
}


def steps(precision, backend, kind, fused: bool, monkeypatch, columns: list):
    build, shape = MODELS[kind]
    with monkeypatch.context() as m:
        if fused:
            real = fused_mac._ones_column
            m.setattr(
                fused_mac,
                "_ones_column",
                lambda *a, **k: columns.append(real(*a, **k)) or columns[-1],
            )
        else:
            m.setattr(fused_mac, "fused_plan", lambda *args: None)
        torch.manual_seed(0)
        model = hnn.quantize_model(build(), precision, backend=backend)
        gen = torch.Generator().manual_seed(2)
        # past 1.0; the hidden layer's below
        inputs = [torch.rand(shape, generator=gen) * 6 - 2 for _ in range(3)]
        return train(model, inputs, weighted_sum, 0.5)


def weighted_sum(out):
    """A loss whose gradients are large enough to saturate narrow accumulators."""
    return (out * torch.linspace(-40, 40, out.numel()).reshape(out.shape)).sum()


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_weight_and_bias_gradients_in_one_gemm(variant, backend, kind, monkeypatch):
    columns: list = []
    got = steps(VARIANTS[variant], backend, kind, True, monkeypatch, columns)
    want = steps(VARIANTS[variant], backend, kind, False, monkeypatch, [])
    if variant == "stochastic":
        assert not columns  # its noise is keyed by the output index: two GEMMs
    else:
        assert any(c is not None for c in columns)  # the one-GEMM path ran
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


def test_ones_column_needs_one_near_the_codes():
    import numpy as np

    codes = np.array([[3, -5], [0, 2]], dtype=np.int64)
    stats = (5, -5, 3)
    assert fused_mac._ones_column((codes, 7, stats), 9) is None  # 1.0 = 128 > 5 * 16
    assert fused_mac._ones_column((codes, -1, stats), 9) is None  # 1.0 is no code at fl -1
    assert fused_mac._ones_column((codes, 6, stats), 1 << 56) is None  # 2^62 products
    cc, fl, got = fused_mac._ones_column((codes, 6, stats), 9)  # 1.0 = 64 <= 80
    assert fl == 6 and got == (64, -5, 64)
    assert np.array_equal(cc, [[3, -5, 64], [0, 2, 64]])
    cc, fl, got = fused_mac._ones_column((codes, 2, stats), 9)  # 1.0 = 4 within the codes
    assert got == (5, -5, 4)
    assert np.array_equal(cc, [[3, -5, 4], [0, 2, 4]])
    # a conv layer's columns with a spare last row: the ones go there, in place
    spare = np.array([[3, -5], [0, 2], [7, 7]], dtype=np.int32)
    cc, fl, got = fused_mac._ones_column((spare, 6, stats), 9, axis=0, in_place=True)
    assert cc is spare and np.array_equal(cc, [[3, -5], [0, 2], [64, 64]]) and got == (64, -5, 64)
    assert fused_mac._ones_column((spare, 7, stats), 9, axis=0, in_place=True) is None
    # int32 codes (a format of at most 32 bits): 1.0 must be an int32 code too
    big = np.array([[1 << 28, -5]], dtype=np.int32)
    assert fused_mac._ones_column((big, 31, (1 << 28, -5, 1 << 28)), 1) is None  # 2^31
    cc, fl, got = fused_mac._ones_column((big, 30, (1 << 28, -5, 1 << 28)), 1)
    assert cc.dtype == np.int32 and cc[0, -1] == 1 << 30


def test_operand_codes_are_int32_where_the_format_fits():
    """The fused step's operand codes are int32 for formats of at most 32
    bits (the kernels' lanes read them without a copy), int64 past that."""
    import numpy as np

    from hwsim.formats import FixedPoint
    from hwsim.modes import Overflow, Rounding
    from hwsim.nn import fused

    x = torch.tensor([[0.5, -0.25, 3.0]])
    for fmt, dtype in (("fx32.20", np.int32), ("fx33.20", np.int64), ("fx8.4", np.int32)):
        q = fused.Quant(FixedPoint.parse(fmt), Rounding.NEAREST, Overflow.SATURATE)
        codes, fl, stats = fused.codes(x, q, None)
        assert codes.dtype == dtype
        assert np.array_equal(codes * 2.0**-fl, x.numpy())
