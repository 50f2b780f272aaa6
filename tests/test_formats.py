import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwsim import FixedPoint, Overflow, Rounding, parse_format

formats = st.builds(FixedPoint, st.integers(1, 62), st.integers(-256, 256), st.booleans())


def test_properties_signed():
    f = FixedPoint(8, 4)
    assert (f.lsb, f.min, f.max, f.int_bits) == (0.0625, -8.0, 7.9375, 4)
    assert (f.min_code, f.max_code) == (-128, 127)


def test_properties_unsigned():
    f = FixedPoint(8, 8, signed=False)
    assert (f.min, f.max, f.min_code, f.max_code) == (0.0, 255 / 256, 0, 255)


def test_negative_and_large_fl():
    assert FixedPoint(4, -2).lsb == 4.0 and FixedPoint(4, -2).max == 28.0
    assert FixedPoint(4, 10).max == 7 / 1024


@given(formats)
def test_value_type(f):
    g = FixedPoint(f.wl, f.fl, f.signed)
    assert f == g and hash(f) == hash(g) and {f: 1}[g] == 1
    assert FixedPoint.parse(str(f)) == f
    assert FixedPoint.parse(repr(f)) == f
    assert pickle.loads(pickle.dumps(f)) == f


def test_frozen():
    f = FixedPoint(8, 4)
    with pytest.raises(AttributeError):
        f.wl = 9


@pytest.mark.parametrize(
    "args, msg",
    [
        ((0, 4), r"wl .* \[1, 62\], got 0"),
        ((63, 4), r"wl .* \[1, 62\], got 63"),
        ((8.0, 4), r"wl .* integer"),
        ((True, 4), r"wl .* integer"),
        ((8, 1.5), r"fl .* integer"),
        ((8, 300), r"fl .* \[-256, 256\]"),
        (("8", 4), r"wl .* integer"),
    ],
)
def test_invalid_arguments(args, msg):
    with pytest.raises(ValueError, match=msg):
        FixedPoint(*args)


def test_invalid_signed():
    with pytest.raises(ValueError, match="signed must be True or False"):
        FixedPoint(8, 4, signed=1)


@pytest.mark.parametrize("text", ["q8.4", "fx8", "fx8.4.1", "", "fx0.4"])
def test_parse_errors(text):
    with pytest.raises(ValueError, match="fx|wl"):
        FixedPoint.parse(text)


def test_parse_format_variants():
    assert parse_format("fx16.12") == FixedPoint(16, 12)
    assert parse_format("ufx8.-2") == FixedPoint(8, -2, signed=False)
    assert parse_format({"wl": 16, "fl": 12}) == FixedPoint(16, 12)
    assert parse_format("float") is None and parse_format(None) is None
    with pytest.raises(ValueError, match="keys wl and fl"):
        parse_format({"wl": 16})
    with pytest.raises(ValueError, match="cannot read"):
        parse_format(3.5)


def test_representable_in():
    assert FixedPoint(25, 10).representable_in("float32")
    assert not FixedPoint(26, 10).representable_in("float32")
    assert FixedPoint(24, 0, signed=False).representable_in("float32")
    assert not FixedPoint(16, 12).representable_in("float16")
    assert FixedPoint(8, 4).representable_in("bfloat16")
    assert FixedPoint(53, 30).representable_in("float64")
    assert not FixedPoint(8, 1100 // 10).representable_in(
        "float16"
    )  # LSB below float16's subnormals
    with pytest.raises(ValueError, match="unknown float dtype"):
        FixedPoint(8, 4).representable_in("int8")


@pytest.mark.parametrize(
    "name", ["nearest", "NEAREST", "nearest_away", "floor", "zero", "stochastic"]
)
def test_rounding_parse(name):
    assert str(Rounding.parse(name)) == name.lower()
    assert Rounding.parse(Rounding.parse(name)) is Rounding.parse(name)


def test_mode_errors_list_valid_names():
    with pytest.raises(
        ValueError, match="'nearest', 'nearest_away', 'floor', 'zero', 'stochastic'"
    ):
        Rounding.parse("round_half_up")
    with pytest.raises(ValueError, match="'saturate', 'wrap'"):
        Overflow.parse("clip")
    assert Overflow.parse("wrap") is Overflow.WRAP
