"""BlockFloatingPoint and MX as value types: frozen, equal by value, hashable,
``str``/``parse`` round trips, bits, the names, and clear errors."""

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

import hwsim
from hwsim import MX, BlockFloatingPoint, FixedPoint, FloatingPoint

OCP = {
    "mxfp8_e4m3": ("fp8_e4m3_sat", 8, 8),
    "mxfp8_e5m2": ("fp8_e5m2_sat", 8, 15),
    "mxfp6_e3m2": ("fp6_e3m2", 6, 4),
    "mxfp6_e2m3": ("fp6_e2m3", 6, 2),
    "mxfp4_e2m1": ("fp4_e2m1", 4, 2),
    "mxint8": ("fx8.6", 8, 0),
}


@pytest.mark.parametrize("name", OCP)
def test_the_ocp_mx_names(name):
    element, bits, emax = OCP[name]
    fmt = hwsim.parse_format(name)
    assert isinstance(fmt, MX) and str(fmt) == name and (fmt.block, fmt.axis) == (32, -1)
    assert str(fmt.element) == element and fmt.bits == bits and fmt.emax_element == emax
    assert fmt.effective_bits == bits + 0.25
    assert MX(hwsim.parse_format(element) if "fx" in element else element) == fmt


def test_value_semantics():
    a, b = MX("fp8_e4m3"), MX.parse("mxfp8_e4m3")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert MX(FloatingPoint.parse("fp8_e4m3")) == MX(FloatingPoint.parse("fp8_e4m3_sat"))
    assert MX("fp8_e4m3", 16) != a and MX("fp8_e4m3", axis=0) != a
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.block = 16
    f = BlockFloatingPoint(8, 32)
    assert f == BlockFloatingPoint(8, 32, -1) and f != BlockFloatingPoint(8, 32, None)
    assert BlockFloatingPoint(8, None).axis is None  # per tensor
    assert BlockFloatingPoint(8).block is None and BlockFloatingPoint(8, 4).axis == -1
    assert f.element(3) == FixedPoint(8, 3) and f.bits == 8 and f.effective_bits == 8.25
    assert BlockFloatingPoint(8).effective_bits == 8.0
    assert repr(f) == "BlockFloatingPoint(wl=8, block=32, axis=-1)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.wl = 4


@given(
    wl=st.integers(2, 53),
    block=st.sampled_from([None, 1, 7, 32, 1024]),
    axis=st.sampled_from(["default", None, -3, -1, 0, 2]),
)
def test_bfp_str_parse_round_trip(wl, block, axis):
    fmt = (
        BlockFloatingPoint(wl, block) if axis == "default" else BlockFloatingPoint(wl, block, axis)
    )
    assert BlockFloatingPoint.parse(str(fmt)) == fmt
    assert hwsim.parse_format(str(fmt)) == fmt and hwsim.parse_format(fmt) is fmt


@st.composite
def elements(draw):
    if draw(st.booleans()):
        return draw(
            st.sampled_from(["fp8_e4m3", "fp8_e5m2", "fp6_e3m2", "fp4_e2m1", "e3m4", "bf16"])
        )
    wl = draw(st.integers(2, 16))
    return FixedPoint(wl, draw(st.integers(-4, 20)))


@given(
    element=elements(),
    block=st.sampled_from([None, 1, 16, 32, 64]),
    axis=st.sampled_from(["default", None, -2, -1, 0, 3]),
)
def test_mx_str_parse_round_trip(element, block, axis):
    fmt = MX(element, block) if axis == "default" else MX(element, block, axis)
    assert MX.parse(str(fmt)) == fmt
    assert hwsim.parse_format(str(fmt)) == fmt


def test_the_name_grammar():
    assert str(BlockFloatingPoint(8)) == "bfp8"
    assert str(BlockFloatingPoint(8, None, axis=0)) == "bfp8_axis0"
    assert str(BlockFloatingPoint(6, 16, axis=None)) == "bfp6_b16_flat"
    assert str(MX("fp4_e2m1", 16, axis=0)) == "mxfp4_e2m1_b16_axis0"
    assert str(MX("fp8_e4m3", None)) == "mxfp8_e4m3_whole"
    assert str(MX("e3m4")) == "mx_e3m4_sat" and str(MX("fx6.4")) == "mx_fx6.4"
    assert hwsim.parse_format("bfp8_b32") == BlockFloatingPoint(8, 32)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: BlockFloatingPoint(1, 4), r"wl .* \[2, 53\], got 1"),
        (lambda: BlockFloatingPoint(54), r"\[2, 53\], got 54"),
        (lambda: BlockFloatingPoint(8.0), "wl"),
        (lambda: BlockFloatingPoint(8, 0), "block must be a positive integer .* got 0"),
        (lambda: BlockFloatingPoint(8, 2.5), "block must be a positive integer"),
        (lambda: MX("fp8_e4m3", True), "block must be a positive integer"),
        (lambda: MX("fp8_e4m3", axis="last"), "axis must be an integer or None"),
        (lambda: MX(FixedPoint(8, 8, signed=False)), "signed FixedPoint"),
        (lambda: MX("fp64"), "inside fp32's range"),
        (lambda: MX(3), "element must be"),
        (lambda: MX.parse("mxfp9"), "cannot parse MX format 'mxfp9'"),
        (lambda: MX.parse("mx_zz"), "cannot parse MX format 'mx_zz'"),
        (lambda: BlockFloatingPoint.parse("bfp"), "cannot parse block floating-point"),
        (lambda: BlockFloatingPoint.parse("bfp8_whole"), "cannot parse block floating-point"),
        (lambda: hwsim.parse_format("bfp8_x"), "cannot parse block floating-point"),
        (lambda: MX.parse(8), "an MX format name is needed"),
    ],
)
def test_bad_formats_say_what_is_allowed(make, message):
    with pytest.raises(ValueError, match=message):
        make()
