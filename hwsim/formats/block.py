"""Block-scaled formats: one power-of-two scale per block of elements.

A *block* is ``block`` consecutive elements along ``axis`` of the tensor; the
blocks start at index 0 of the axis, and when the axis length is not a
multiple of ``block`` the last block holds the remaining elements (its scale
comes from those alone, as if padded with zeros). ``block=None`` makes the
block the whole axis (one scale per 1-D slice along ``axis``); ``axis=None``
reads the tensor flattened in C order. The default axis is -1 with a block
size and ``None`` without one, so ``BlockFloatingPoint(8, None)`` has one
exponent per tensor (dynamic per-tensor fixed point). A 0-d input is one
element.

``BlockFloatingPoint(wl, block, axis)``: the block's shared exponent is
``e = floor(log2(amax))`` of its largest magnitude, held like E8M0 in
[-127, 127] (clamped; an all-zero block takes -127). Elements are ``wl``-bit
two's-complement fixed point ``FixedPoint(wl, wl - 2 - e)``: LSB
2^(e + 2 - wl), range [-2^(e+1), 2^(e+1) - LSB], so amax in [2^e, 2^(e+1))
fits and only its rounding up past the top code saturates. Fixed-point
element rounding (all five modes), always saturating. NaN or Inf input raises
``NonFiniteError`` as for fixed point.

>>> f = BlockFloatingPoint(8, 32)
>>> str(f), f.bits, f.effective_bits, BlockFloatingPoint.parse("bfp8_b32") == f
('bfp8_b32', 8, 8.25, True)

``MX(element, block=32, axis=-1)``: OCP Microscaling Formats v1.0. The
block's E8M0 scale is X = 2^(floor(log2(amax)) - emax_elem), the exponent
clamped below at -127 (an all-zero block takes it); above 127 (only float64
input beyond 2^127 times the element's range) the scale is the E8M0 NaN.
Elements are ``x / X`` cast to the element type with saturation (its
``_sat`` variant; FP6/FP4 always saturate), under round-to-nearest-even or
any rounding the element quantizer takes. A NaN or Inf anywhere in a block
makes its scale NaN, and every element of a NaN-scaled block is NaN (the
spec's rule), whatever the element type. ``mxint8`` elements are
``FixedPoint(8, 6)`` (two's complement, -2 .. 1 63/64, emax 0).

>>> m = MX.parse("mxfp8_e4m3")
>>> str(m.element), m.emax_element, m.bits, m.effective_bits
('fp8_e4m3_sat', 8, 8, 8.25)
"""

from __future__ import annotations

import dataclasses
import re

from hwsim.formats import FixedPoint, FloatingPoint

SCALE_BITS = 8  # E8M0 scale, and the BFP shared exponent
SCALE_EMIN, SCALE_EMAX = -127, 127
MAX_BFP_WL = 53  # element codes times their LSB stay exact in float64

_DEFAULT = object()  # axis not given: -1 with a block size, None without


def _check_block(block):
    if block is None:
        return None
    if isinstance(block, bool) or not hasattr(block, "__index__") or int(block) < 1:
        raise ValueError(
            f"block must be a positive integer (elements per block) or None (the whole "
            f"axis), got {block!r}"
        )
    return int(block)


def _check_axis(axis, block):
    if axis is _DEFAULT:
        return -1 if block is not None else None
    if axis is None:
        return None
    if isinstance(axis, bool) or not hasattr(axis, "__index__"):
        raise ValueError(f"axis must be an integer or None (the flattened tensor), got {axis!r}")
    return int(axis)


def _suffix(block, axis, default_block) -> str:
    text = "" if block == default_block else f"_b{block}" if block is not None else "_whole"
    default_axis = -1 if block is not None else None
    if axis != default_axis:
        text += "_flat" if axis is None else f"_axis{axis}"
    return text


_SUFFIX = re.compile(
    r"^(?P<base>.*?)(?:_b(?P<block>\d+)|_(?P<whole>whole))?(?:_(?P<flat>flat)|_axis(?P<axis>-?\d+))?$"
)


def _split(text: str):
    m = _SUFFIX.match(text.strip().lower())
    block = int(m.group("block")) if m.group("block") else ("whole" if m.group("whole") else None)
    if m.group("flat"):
        axis = None
    elif m.group("axis") is not None:
        axis = int(m.group("axis"))
    else:
        axis = _DEFAULT
    return m.group("base"), block, axis


@dataclasses.dataclass(frozen=True, slots=True, init=False)
class BlockFloatingPoint:
    """Block floating point: a shared exponent per block, ``wl``-bit signed
    fixed-point elements below it (see the module docstring for the exact rule).

    Names: ``bfp<wl>`` (one exponent per tensor), ``bfp<wl>_b<block>`` (blocks
    along the last axis), then ``_axis<k>`` or ``_flat`` for another axis, and
    ``bfp<wl>_axis<k>`` for one exponent per slice along axis k."""

    wl: int
    block: int | None
    axis: int | None

    def __init__(self, wl: int, block: int | None = None, axis=_DEFAULT) -> None:
        if isinstance(wl, bool) or not hasattr(wl, "__index__") or not 2 <= int(wl) <= MAX_BFP_WL:
            raise ValueError(
                f"wl (element word length, sign included) must be an integer in "
                f"[2, {MAX_BFP_WL}], got {wl!r}"
            )
        block = _check_block(block)
        object.__setattr__(self, "wl", int(wl))
        object.__setattr__(self, "block", block)
        object.__setattr__(self, "axis", _check_axis(axis, block))

    @property
    def bits(self) -> int:
        """Bits per element: ``wl``."""
        return self.wl

    @property
    def effective_bits(self) -> float:
        """Bits per element with the 8-bit shared exponent spread over its block
        (``wl`` when ``block`` is None: one exponent per tensor or slice)."""
        return self.wl + (SCALE_BITS / self.block if self.block else 0.0)

    def element(self, exponent: int) -> FixedPoint:
        """The elements' fixed-point format under shared exponent ``exponent``."""
        return FixedPoint(self.wl, self.wl - 2 - exponent)

    def __str__(self) -> str:
        return f"bfp{self.wl}" + _suffix(self.block, self.axis, None)

    def __repr__(self) -> str:
        return f"BlockFloatingPoint(wl={self.wl}, block={self.block}, axis={self.axis})"

    @classmethod
    def parse(cls, text: str) -> BlockFloatingPoint:
        """Parse ``bfp8``, ``bfp8_b32``, ``bfp8_b16_axis0``, ``bfp8_axis1``, ``bfp8_b32_flat``."""
        if not isinstance(text, str):
            raise ValueError(f"a block floating-point format name is needed, got {text!r}")
        base, block, axis = _split(text)
        m = re.fullmatch(r"bfp(\d+)", base)
        if not m or block == "whole":
            raise ValueError(
                f"cannot parse block floating-point format {text!r}: write 'bfp<wl>' (one "
                f"exponent per tensor), 'bfp<wl>_b<block>' (blocks along the last axis), "
                f"optionally followed by '_axis<k>' or '_flat' (e.g. 'bfp8_b32', 'bfp8_axis0')"
            )
        return cls(int(m.group(1)), block, axis)


_MX_ELEMENTS = {
    "mxfp8_e4m3": FloatingPoint.parse("fp8_e4m3_sat"),
    "mxfp8_e5m2": FloatingPoint.parse("fp8_e5m2_sat"),
    "mxfp6_e3m2": FloatingPoint.parse("fp6_e3m2"),
    "mxfp6_e2m3": FloatingPoint.parse("fp6_e2m3"),
    "mxfp4_e2m1": FloatingPoint.parse("fp4_e2m1"),
    "mxint8": FixedPoint(8, 6),
}
_MX_NAMES = {element: name for name, element in _MX_ELEMENTS.items()}


def element_emax(e: FloatingPoint | FixedPoint) -> int:
    """Exponent of an element type's largest binade (FixedPoint: of its top bit)."""
    return e.emax if isinstance(e, FloatingPoint) else e.wl - 2 - e.fl


def element_type(element, names: dict, what: str, examples: str) -> FloatingPoint | FixedPoint:
    """The element type of a scaled format (MX, Scaled): a :class:`FloatingPoint`
    inside fp32's range (stored as its saturating variant, so scaled values stay
    exact in float64), a signed :class:`FixedPoint` of at most 53 bits, or a name
    (a key of ``names``, ``fx``/``ufx`` text, or a float name)."""
    if isinstance(element, str):
        key = element.strip().lower()
        if key in names:
            element = names[key]
        elif key.startswith(("fx", "ufx")):
            element = FixedPoint.parse(key)
        else:
            element = FloatingPoint.parse(key)
    if isinstance(element, FloatingPoint):
        if element.emax > 127 or element.emin - element.man < -149:
            raise ValueError(
                f"{what} element type must lie inside fp32's range (emax <= 127, smallest "
                f"subnormal >= 2^-149) so that scaled values stay exact in float64; got {element}"
            )
        return dataclasses.replace(element, saturate=True)
    if not (isinstance(element, FixedPoint) and element.signed and element.wl <= 53):
        raise ValueError(
            f"element must be a FloatingPoint, a signed FixedPoint with wl <= 53 or a name "
            f"(e.g. {examples}), got {element!r}"
        )
    return element


@dataclasses.dataclass(frozen=True, slots=True, init=False)
class MX:
    """An OCP Microscaling format: E8M0 scale per block, ``element`` values.

    ``element`` is a :class:`FloatingPoint` (stored as its saturating variant)
    or a signed :class:`FixedPoint` (MXINT8: ``fx8.6``), or a name. Names:
    ``mxfp8_e4m3``, ``mxfp8_e5m2``, ``mxfp6_e3m2``, ``mxfp6_e2m3``,
    ``mxfp4_e2m1``, ``mxint8`` (block 32, last axis), other elements as
    ``mx_<element>`` (``mx_e3m4``, ``mx_fx6.4``); then ``_b<block>`` or
    ``_whole`` (the whole axis) and ``_axis<k>`` or ``_flat``."""

    element: FloatingPoint | FixedPoint
    block: int | None
    axis: int | None

    def __init__(self, element, block: int | None = 32, axis=_DEFAULT) -> None:
        element = element_type(element, _MX_ELEMENTS, "an MX", "'fp8_e4m3', 'fp4_e2m1', 'fx8.6'")
        block = _check_block(block)
        object.__setattr__(self, "element", element)
        object.__setattr__(self, "block", block)
        object.__setattr__(self, "axis", _check_axis(axis, block))

    @property
    def emax_element(self) -> int:
        """Exponent of the element type's largest binade (FixedPoint: of its top bit)."""
        return element_emax(self.element)

    @property
    def bits(self) -> int:
        """Bits per element (the element type's)."""
        return self.element.bits

    @property
    def effective_bits(self) -> float:
        """Bits per element with the 8-bit scale spread over its block."""
        return self.bits + (SCALE_BITS / self.block if self.block else 0.0)

    def __str__(self) -> str:
        name = _MX_NAMES.get(self.element) or f"mx_{self.element}"
        return name + _suffix(self.block, self.axis, 32)

    def __repr__(self) -> str:
        return f"MX(element={str(self.element)!r}, block={self.block}, axis={self.axis})"

    @classmethod
    def parse(cls, text: str) -> MX:
        """Parse ``mxfp8_e4m3``, ``mxint8_b16``, ``mxfp4_e2m1_axis0``, ``mx_e3m4_whole``..."""
        if not isinstance(text, str):
            raise ValueError(f"an MX format name is needed, got {text!r}")
        base, block, axis = _split(text)
        block = 32 if block is None else (None if block == "whole" else block)
        if base in _MX_ELEMENTS:
            return cls(_MX_ELEMENTS[base], block, axis)
        if base.startswith("mx_"):
            try:
                return cls(base[3:], block, axis)
            except ValueError as err:
                raise ValueError(f"cannot parse MX format {text!r}: {err}") from None
        raise ValueError(
            f"cannot parse MX format {text!r}: use one of {', '.join(_MX_ELEMENTS)} or "
            f"'mx_<element>' (e.g. 'mx_e3m4'), optionally followed by '_b<block>' or '_whole' "
            f"and '_axis<k>' or '_flat'"
        )


def is_block_format_name(text: str) -> bool:
    """True when ``text`` names a block-scaled format (``bfp...`` or ``mx...``)."""
    key = text.strip().lower()
    return key.startswith(("mx", "bfp"))


def parse_block_format(text: str) -> BlockFloatingPoint | MX:
    key = text.strip().lower()
    return BlockFloatingPoint.parse(key) if key.startswith("bfp") else MX.parse(key)
