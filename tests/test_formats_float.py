import dataclasses
import math
import pickle

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import hwsim
from hwsim import FixedPoint, FloatingPoint, parse_format


@st.composite
def float_formats(draw):
    exp, man = draw(st.integers(2, 11)), draw(st.integers(0, 52))
    inf = exp == 11 or draw(st.booleans())
    nan = inf or draw(st.booleans())
    if man == 0 and nan:
        man = 1
    return FloatingPoint(
        exp, man, subnormals=draw(st.booleans()), inf=inf, nan=nan, saturate=draw(st.booleans())
    )


# name -> (exp, man, max, min_normal, min_subnormal, bits); the numbers from
# torch.finfo / ml_dtypes.finfo (checked below) and the OCP specs
NAMED = {
    "fp32": (8, 23, 3.4028234663852886e38, 2.0**-126, 2.0**-149, 32),
    "fp16": (5, 10, 65504.0, 2.0**-14, 2.0**-24, 16),
    "bf16": (8, 7, 3.3895313892515355e38, 2.0**-126, 2.0**-133, 16),
    "fp8_e5m2": (5, 2, 57344.0, 2.0**-14, 2.0**-16, 8),
    "fp8_e4m3": (4, 3, 448.0, 2.0**-6, 2.0**-9, 8),
    "fp6_e3m2": (3, 2, 28.0, 0.25, 0.0625, 6),
    "fp6_e2m3": (2, 3, 7.5, 1.0, 0.125, 6),
    "fp4_e2m1": (2, 1, 6.0, 1.0, 0.5, 4),
}


@pytest.mark.parametrize("name", sorted(NAMED))
def test_named_formats(name):
    exp, man, mx, mn, sub, bits = NAMED[name]
    f = FloatingPoint.parse(name)
    assert (f.exp, f.man, f.max, f.min_normal, f.min_subnormal, f.bits) == (
        exp,
        man,
        mx,
        mn,
        sub,
        bits,
    )
    assert f.eps == 2.0**-man and f.bias == 2 ** (exp - 1) - 1 and f.emin == 1 - f.bias
    assert str(f) == name and parse_format(name) == f and parse_format(f" {name.upper()} ") == f


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("fp32", torch.float32),
        ("fp16", torch.float16),
        ("bf16", torch.bfloat16),
        ("fp8_e5m2", torch.float8_e5m2),
        ("fp8_e4m3", torch.float8_e4m3fn),
    ],
)
def test_against_torch_finfo(name, dtype):
    f, fi = FloatingPoint.parse(name), torch.finfo(dtype)
    assert (f.max, f.min_normal, f.eps, f.bits) == (fi.max, fi.smallest_normal, fi.eps, fi.bits)


@pytest.mark.parametrize(
    ("name", "md"),
    [
        ("fp8_e5m2", "float8_e5m2"),
        ("fp8_e4m3", "float8_e4m3fn"),
        ("fp6_e3m2", "float6_e3m2fn"),
        ("fp6_e2m3", "float6_e2m3fn"),
        ("fp4_e2m1", "float4_e2m1fn"),
    ],
)
def test_against_ml_dtypes_finfo(name, md):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    f, fi = FloatingPoint.parse(name), ml_dtypes.finfo(getattr(ml_dtypes, md))
    assert f.max == float(fi.max) and f.min_normal == float(fi.smallest_normal)
    assert f.min_subnormal == float(fi.smallest_subnormal) and f.eps == float(fi.eps)
    assert f.bits == fi.bits and f.emax == fi.maxexp - 1 and f.emin == fi.minexp


def test_generic_names_and_flags():
    assert FloatingPoint.parse("e4m3") == FloatingPoint(4, 3) and FloatingPoint(4, 3).max == 240
    assert FloatingPoint.parse("e4m3fn") == FloatingPoint.parse("fp8_e4m3")
    assert FloatingPoint.parse("e2m1fn_nonan") == FloatingPoint.parse("fp4_e2m1")
    assert FloatingPoint.parse("fp8_e4m3_nonan") == FloatingPoint(4, 3, inf=False, nan=False)
    assert FloatingPoint.parse("fp8_e4m3_sat") == FloatingPoint(4, 3, inf=False, saturate=True)
    g = FloatingPoint.parse("bf16_ftz_sat")
    assert g == FloatingPoint(8, 7, subnormals=False, saturate=True) and str(g) == "bf16_ftz_sat"
    assert g.min_subnormal == g.min_normal
    assert str(FloatingPoint(6, 9, inf=False)) == "e6m9fn"
    assert str(FloatingPoint(6, 9, inf=False, nan=False)) == "e6m9fn_nonan"
    # a format with neither Inf nor NaN can only saturate
    assert FloatingPoint(3, 2, inf=False, nan=False).saturate
    assert FloatingPoint(3, 2, inf=False, nan=False) == FloatingPoint.parse("fp6_e3m2_sat")
    assert FloatingPoint(2, 0, inf=False, nan=False).max == 4.0  # 2^emax, emax = bias + 1 = 2


@given(float_formats())
def test_value_type(f):
    g = dataclasses.replace(f)
    assert f == g and hash(f) == hash(g) and {f: 1}[g] == 1
    assert FloatingPoint.parse(str(f)) == f
    assert FloatingPoint.parse(repr(f)) == f
    assert parse_format(str(f)) == f
    assert pickle.loads(pickle.dumps(f)) == f
    assert f.max < math.inf and 0 < f.min_subnormal <= f.min_normal <= 1 <= f.max
    assert f.representable_in("float64")


def test_frozen_and_distinct_from_fixed_point():
    f = FloatingPoint(4, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.man = 2
    assert f != FloatingPoint(4, 3, inf=False) and f != FixedPoint(8, 3)


def test_representable_in():
    assert FloatingPoint.parse("bf16").representable_in("float32")
    assert not FloatingPoint.parse("bf16").representable_in("float16")
    assert FloatingPoint.parse("fp8_e4m3").representable_in(torch.float16)
    assert FloatingPoint.parse("fp8_e4m3").representable_in("bfloat16")
    assert FloatingPoint.parse("fp8_e5m2").representable_in("bfloat16")
    assert FloatingPoint.parse("fp8_e5m2").representable_in("float16")
    assert not FloatingPoint.parse("e5m11").representable_in("float16")
    assert not FloatingPoint.parse("e6m2").representable_in("float16")
    assert not FloatingPoint.parse("e5m10fn").representable_in("float16")  # emax 16
    assert FloatingPoint.parse("e5m3_ftz").representable_in("float16")
    assert not FloatingPoint.parse("fp32").representable_in("float16")
    assert FloatingPoint.parse("fp32").representable_in("float32")
    with pytest.raises(ValueError, match="unknown float dtype"):
        FloatingPoint(4, 3).representable_in("int8")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(exp=1, man=3), r"exp \(exponent bits\) must be an integer in \[2, 11\], got 1"),
        (dict(exp=12, man=3), r"exp \(exponent bits\) must be an integer in \[2, 11\], got 12"),
        (dict(exp=4, man=53), r"man \(mantissa bits\) must be an integer in \[0, 52\], got 53"),
        (dict(exp=4.0, man=3), r"exp .* got 4.0"),
        (dict(exp=4, man=3, inf=1), "inf must be True or False, got 1"),
        (dict(exp=4, man=3, nan=False), "nan=False needs inf=False"),
        (dict(exp=4, man=0), "man=0 has no room for a NaN code"),
        (dict(exp=4, man=0, inf=False), "man=0 has no room for a NaN code"),
        (dict(exp=11, man=3, inf=False), "exp=11 with inf=False exceeds float64"),
    ],
)
def test_bad_fields(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FloatingPoint(**kwargs)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fp8", "cannot parse floating-point format 'fp8': use one of .*fp8_e4m3"),
        ("e4", "cannot parse floating-point format 'e4'"),
        ("fp8_e4m3_round", "cannot parse floating-point format"),
        ("e5m2_nonan", "'_nonan' applies to a format without Inf"),
        ("bf16_nonan", "'_nonan' applies to a format without Inf"),
        ("e1m2", r"exp \(exponent bits\) must be an integer in \[2, 11\], got 1"),
        ("FloatingPoint(4, 3, inf=yes)", "cannot parse 'FloatingPoint"),
    ],
)
def test_bad_names(text, message):
    with pytest.raises(ValueError, match=message):
        FloatingPoint.parse(text)
    with pytest.raises(ValueError, match=message):
        parse_format(text)


def test_parse_format_tables_and_fixed_point():
    assert parse_format({"exp": 5, "man": 2}) == FloatingPoint.parse("fp8_e5m2")
    assert parse_format({"exp": 4, "man": 3, "inf": False, "saturate": True}) == (
        FloatingPoint.parse("fp8_e4m3_sat")
    )
    with pytest.raises(ValueError, match="needs keys exp and man .* got \\['exp', 'mantissa'\\]"):
        parse_format({"exp": 5, "mantissa": 2})
    assert parse_format("fx16.12") == FixedPoint(16, 12) and parse_format("float") is None
    assert parse_format(FloatingPoint(5, 10)) == FloatingPoint.parse("fp16")
    with pytest.raises(ValueError, match="a float name"):
        parse_format(3.5)
    with pytest.raises(ValueError, match="a floating-point format name is needed, got 3"):
        FloatingPoint.parse(3)


# -- consumers: float formats reach layers through the one quantizer ------------


def test_nn_layers_quantize_to_float_formats():
    from hwsim import nn as hnn

    x = torch.randn(6, 3, requires_grad=True)
    y = hnn.quantizer(x, "bf16", "fp8_e5m2")
    y.backward(torch.full_like(y, 0.3))
    assert torch.equal(y, hwsim.quantize(x.detach(), "bf16"))
    assert torch.equal(x.grad, hwsim.quantize(torch.full_like(y, 0.3), "fp8_e5m2"))
    p = hnn.Precision(weight="bf16", activation="fp8_e4m3_sat", grad_activation="fp8_e5m2")
    assert p.activation == FloatingPoint(4, 3, inf=False, saturate=True)
    for backend in ("torch", "numba"):
        torch.manual_seed(0)
        model = hnn.quantize_model(torch.nn.Sequential(torch.nn.Linear(3, 2)), p, backend=backend)
        out = model(torch.randn(5, 3))
        out.sum().backward()
        w = model[0].weight
        assert torch.isfinite(out).all() and w.grad is not None


def test_float_formats_rejected_where_not_supported_yet():
    from hwsim import nn as hnn
    from hwsim.optim import SGD

    with pytest.raises(ValueError, match="float product format needs a float accumulator"):
        hnn.Precision(weight="bf16", activation="bf16", accumulator="fx24.10", product="bf16")
    with pytest.raises(ValueError, match="float accumulator takes a float product"):
        hnn.Precision(weight="fx8.6", activation="fx8.4", accumulator="fp16", product="fx16.8")
    with pytest.raises(ValueError, match="weight: the block-scaled format mxint8 is taken by"):
        SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, weight="mxint8")
