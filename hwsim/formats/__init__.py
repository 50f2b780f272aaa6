"""Number formats as value types.

``FixedPoint(wl, fl, signed)`` follows the convention of qtorch and of Gupta et
al. 2015: ``wl`` counts every bit, sign included, and the LSB is 2^-fl.

    signed:    codes in [-2^(wl-1), 2^(wl-1) - 1], values = code * 2^-fl
    unsigned:  codes in [0, 2^wl - 1],             values = code * 2^-fl

``fl`` may be negative (LSB > 1) or larger than ``wl`` (all bits fractional).

>>> f = FixedPoint(8, 4)
>>> f.lsb, f.min, f.max, f.int_bits
(0.0625, -8.0, 7.9375, 4)
>>> str(f), FixedPoint.parse(str(f)) == f
('fx8.4', True)

``FloatingPoint(exp, man)`` is an IEEE-style sign/exponent/mantissa format; see
its docstring for the OCP FP8 and MX variants.

>>> g = FloatingPoint.parse("fp8_e4m3")
>>> g.max, g.min_normal, g.min_subnormal, g.bits
(448.0, 0.015625, 0.001953125, 8)
"""

from __future__ import annotations

import dataclasses
import math
import re

MAX_WL = 62  # codes (and sums of two codes) stay inside int64
MIN_FL, MAX_FL = -256, 256

# float dtypes by name: (precision bits incl. the implicit one, min normal exp, max exp)
_FLOAT_TRAITS = {
    "float16": (11, -14, 15),
    "bfloat16": (8, -126, 127),
    "float32": (24, -126, 127),
    "float64": (53, -1022, 1023),
}


def _check_int(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        # numpy integers are fine; floats, bools and strings are not
        if hasattr(value, "__index__") and not isinstance(value, bool):
            value = int(value.__index__())
        else:
            raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True, slots=True)
class FixedPoint:
    """A fixed-point format: ``wl`` bits in all (sign included), LSB = 2^-fl."""

    wl: int
    fl: int
    signed: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "wl", _check_int("wl (word length)", self.wl, 1, MAX_WL))
        object.__setattr__(
            self, "fl", _check_int("fl (fractional length)", self.fl, MIN_FL, MAX_FL)
        )
        if not isinstance(self.signed, bool):
            raise ValueError(f"signed must be True or False, got {self.signed!r}")

    # -- codes -------------------------------------------------------------------
    @property
    def min_code(self) -> int:
        return -(1 << (self.wl - 1)) if self.signed else 0

    @property
    def max_code(self) -> int:
        return (1 << (self.wl - 1)) - 1 if self.signed else (1 << self.wl) - 1

    # -- values ------------------------------------------------------------------
    @property
    def lsb(self) -> float:
        """Value of one code step, 2^-fl."""
        return 2.0**-self.fl

    @property
    def min(self) -> float:
        return self.min_code * self.lsb

    @property
    def max(self) -> float:
        """Largest value (rounded to float64 when wl > 53)."""
        return self.max_code * self.lsb

    @property
    def bits(self) -> int:
        """Storage width, ``wl`` (as ``FloatingPoint.bits``: the bit-width axis of plots
        and the cost model take either kind)."""
        return self.wl

    @property
    def int_bits(self) -> int:
        """Bits left of the binary point, sign included: wl - fl (APyTypes' int_bits)."""
        return self.wl - self.fl

    def representable_in(self, dtype) -> bool:
        """True when every value of the format is exact in the float ``dtype``
        (a NumPy or torch dtype, or its name)."""
        name = str(dtype).replace("torch.", "")
        if name not in _FLOAT_TRAITS:
            raise ValueError(f"unknown float dtype {dtype!r}; known: {sorted(_FLOAT_TRAITS)}")
        prec, emin, emax = _FLOAT_TRAITS[name]
        mag_bits = self.wl - 1 if self.signed else self.wl
        # the largest magnitude code needs mag_bits significant bits (the signed
        # minimum -2^(wl-1) is a power of two and always fits)
        if mag_bits > prec:
            return False
        smallest_exp = -self.fl  # exponent of the LSB
        if smallest_exp < emin - (prec - 1):  # below the smallest subnormal
            return False
        # every magnitude is below 2^(mag_bits - fl); it must stay below 2^(emax + 1)
        return mag_bits - self.fl <= emax + 1

    # -- text --------------------------------------------------------------------
    def __str__(self) -> str:
        return f"{'' if self.signed else 'u'}fx{self.wl}.{self.fl}"

    _PATTERN = re.compile(r"^\s*(u?)fx(\d+)\.(-?\d+)\s*$", re.IGNORECASE)
    _REPR = re.compile(
        r"^\s*FixedPoint\(\s*(?:wl=)?(\d+)\s*,\s*(?:fl=)?(-?\d+)\s*(?:,\s*(?:signed=)?(True|False)\s*)?\)\s*$"
    )

    @classmethod
    def parse(cls, text: str) -> FixedPoint:
        """Parse ``"fx16.12"`` (signed), ``"ufx8.8"`` (unsigned) or the repr."""
        if not isinstance(text, str):
            raise ValueError(f"a fixed-point format string is needed, got {text!r}")
        m = cls._PATTERN.match(text)
        if m:
            return cls(int(m.group(2)), int(m.group(3)), signed=not m.group(1))
        m = cls._REPR.match(text)
        if m:
            return cls(int(m.group(1)), int(m.group(2)), signed=m.group(3) != "False")
        raise ValueError(
            f"cannot parse fixed-point format {text!r}: write 'fx<wl>.<fl>' for signed "
            f"or 'ufx<wl>.<fl>' for unsigned (e.g. 'fx16.12', 'ufx8.8', 'fx8.-2')"
        )


@dataclasses.dataclass(frozen=True, slots=True)
class FloatingPoint:
    """A binary floating-point format: 1 sign bit, ``exp`` exponent bits, ``man``
    mantissa (fraction) bits, bias 2^(exp-1) - 1.

    - ``inf=True`` (IEEE 754 style): the all-ones exponent holds +-Inf and NaN;
      finite exponents run emin = 1 - bias .. emax = bias.
    - ``inf=False`` (OCP "fn" style): the all-ones exponent holds finite values,
      so emax = bias + 1. With ``nan=True`` the one code S.1..1.1..1 is NaN (OCP
      FP8 E4M3, max 448); with ``nan=False`` every code is a number (OCP MX FP6
      and FP4 element types).
    - ``subnormals=False``: results below ``min_normal`` are flushed to a zero
      of their sign after rounding (FTZ on the output).
    - ``saturate=True``: results beyond +-``max`` (+-Inf inputs included) become
      +-``max`` instead of +-Inf or NaN. A format with neither Inf nor NaN has
      nothing else to overflow to: it always saturates (the flag is set for it).

    The format must fit float64, where kernels compute: exp in [2, 11],
    man in [0, 52], and a largest value below 2^1024. ``man=0`` leaves no room
    for a NaN code, so it needs ``inf=False, nan=False``.

    >>> f = FloatingPoint(5, 10)
    >>> str(f), f.max, f.eps, f.emin, f.emax
    ('fp16', 65504.0, 0.0009765625, -14, 15)
    >>> FloatingPoint.parse("e3m2fn_nonan") == FloatingPoint.parse("fp6_e3m2")
    True
    """

    exp: int
    man: int
    subnormals: bool = dataclasses.field(default=True, kw_only=True)
    inf: bool = dataclasses.field(default=True, kw_only=True)
    nan: bool = dataclasses.field(default=True, kw_only=True)
    saturate: bool = dataclasses.field(default=False, kw_only=True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "exp", _check_int("exp (exponent bits)", self.exp, 2, 11))
        object.__setattr__(self, "man", _check_int("man (mantissa bits)", self.man, 0, 52))
        for name in ("subnormals", "inf", "nan", "saturate"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.inf and not self.nan:
            raise ValueError(
                "nan=False needs inf=False: with inf=True the all-ones exponent holds "
                "Inf and NaN codes (IEEE 754)"
            )
        if self.man == 0 and self.nan:
            raise ValueError(
                "man=0 has no room for a NaN code (with inf=True the all-ones exponent "
                "would hold only +-Inf; with inf=False the NaN code would take the whole "
                "top binade): use man >= 1, or inf=False, nan=False"
            )
        if not self.inf and self.exp == 11:
            raise ValueError(
                "exp=11 with inf=False exceeds float64 (its top binade is 2^1024); "
                "use exp <= 10 or inf=True"
            )
        if not self.inf and not self.nan:
            object.__setattr__(self, "saturate", True)  # no Inf, no NaN: only a clamp

    # -- exponent range ------------------------------------------------------------
    @property
    def bias(self) -> int:
        return (1 << (self.exp - 1)) - 1

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal number, 1 - bias."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        """Exponent of the largest finite number: bias, or bias + 1 without Inf."""
        return self.bias if self.inf else self.bias + 1

    @property
    def bits(self) -> int:
        """Storage width: sign + exponent + mantissa."""
        return 1 + self.exp + self.man

    # -- values --------------------------------------------------------------------
    @property
    def max(self) -> float:
        """Largest finite value: (2 - 2^-man) 2^emax, or (2 - 2^(1-man)) 2^emax when
        the all-ones code is NaN in a format without Inf (OCP E4M3: 448)."""
        top = (1 << (self.man + 1)) - (1 if self.inf or not self.nan else 2)
        return math.ldexp(top, self.emax - self.man)

    @property
    def min_normal(self) -> float:
        return math.ldexp(1.0, self.emin)

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value: 2^(emin - man), or min_normal without subnormals."""
        return math.ldexp(1.0, self.emin - self.man) if self.subnormals else self.min_normal

    @property
    def eps(self) -> float:
        """Distance from 1 to the next larger value, 2^-man."""
        return math.ldexp(1.0, -self.man)

    def representable_in(self, dtype) -> bool:
        """True when every value of the format is exact in the float ``dtype``
        (a NumPy or torch dtype, or its name)."""
        name = str(dtype).replace("torch.", "")
        if name not in _FLOAT_TRAITS:
            raise ValueError(f"unknown float dtype {dtype!r}; known: {sorted(_FLOAT_TRAITS)}")
        prec, emin, emax = _FLOAT_TRAITS[name]
        smallest = self.emin - self.man if self.subnormals else self.emin
        return self.man <= prec - 1 and self.emax <= emax and smallest >= emin - (prec - 1)

    # -- text ----------------------------------------------------------------------
    def __str__(self) -> str:
        base = dataclasses.replace(self, subnormals=True, saturate=False)
        name = _FLOAT_NAMES.get(base)
        if name is None:
            name = f"e{self.exp}m{self.man}" + ("" if self.inf else "fn")
            name += "" if self.nan else "_nonan"
        if not self.subnormals:
            name += "_ftz"
        if self.saturate and (self.inf or self.nan):
            name += "_sat"
        return name

    _GENERIC = re.compile(r"^e(\d+)m(\d+)(fn)?$")
    _MODIFIERS = re.compile(r"((?:_(?:sat|ftz|nonan))*)$")

    @classmethod
    def parse(cls, text: str) -> FloatingPoint:
        """Parse a name: ``fp32``, ``fp16``, ``bf16``, ``fp8_e5m2``, ``fp8_e4m3``
        (OCP, no Inf), ``fp6_e3m2``, ``fp6_e2m3``, ``fp4_e2m1`` (OCP MX: no Inf, no
        NaN), ``fp64``, or ``eXmY`` (IEEE style) / ``eXmYfn`` (no Inf, one NaN
        code); then any of the suffixes ``_nonan`` (``fn`` only: no NaN code
        either), ``_ftz`` (no subnormals) and ``_sat`` (saturate)."""
        if not isinstance(text, str):
            raise ValueError(f"a floating-point format name is needed, got {text!r}")
        key = text.strip().lower()
        if key.startswith("floatingpoint("):
            return cls._parse_repr(text)
        flags = cls._MODIFIERS.search(key).group(1)
        base = key[: len(key) - len(flags)]
        kinds = set(flags.split("_")) - {""}
        if base in _FLOAT_BY_NAME:
            fmt = _FLOAT_BY_NAME[base]
        else:
            m = cls._GENERIC.match(base)
            if not m:
                raise ValueError(
                    f"cannot parse floating-point format {text!r}: use one of "
                    f"{', '.join(sorted(_FLOAT_BY_NAME))}, or 'e<exp>m<man>' (IEEE style, "
                    f"e.g. 'e4m3') or 'e<exp>m<man>fn' (no Inf, one NaN code), optionally "
                    f"followed by '_nonan', '_ftz' and '_sat'"
                )
            if "nonan" in kinds and not m.group(3):
                raise ValueError(
                    f"{text!r}: '_nonan' applies to a format without Inf ('e<exp>m<man>fn')"
                )
            fmt = cls(
                int(m.group(1)), int(m.group(2)), inf=not m.group(3), nan="nonan" not in kinds
            )
        if "nonan" in kinds:
            if fmt.inf:
                raise ValueError(
                    f"{text!r}: '_nonan' applies to a format without Inf ('e<exp>m<man>fn')"
                )
            fmt = dataclasses.replace(fmt, nan=False)
        return dataclasses.replace(
            fmt,
            subnormals=fmt.subnormals and "ftz" not in kinds,
            saturate=fmt.saturate or "sat" in kinds,
        )

    _REPR = re.compile(
        r"^\s*FloatingPoint\(\s*(?:exp=)?(\d+)\s*,\s*(?:man=)?(\d+)\s*((?:,\s*\w+=\w+\s*)*)\)\s*$"
    )

    @classmethod
    def _parse_repr(cls, text: str) -> FloatingPoint:
        m = cls._REPR.match(text)
        flags = {}
        for item in (m.group(3).split(",") if m else [])[1:]:
            name, _, value = item.strip().partition("=")
            if name not in ("subnormals", "inf", "nan", "saturate") or value not in (
                "True",
                "False",
            ):
                m = None
                break
            flags[name] = value == "True"
        if not m:
            raise ValueError(
                f"cannot parse {text!r}: write FloatingPoint(exp, man, subnormals=.., inf=.., "
                f"nan=.., saturate=..) with True/False flags, or a name such as 'bf16'"
            )
        return cls(int(m.group(1)), int(m.group(2)), **flags)


_FLOAT_NAMES = {
    FloatingPoint(11, 52): "fp64",
    FloatingPoint(8, 23): "fp32",
    FloatingPoint(5, 10): "fp16",
    FloatingPoint(8, 7): "bf16",
    FloatingPoint(5, 2): "fp8_e5m2",
    FloatingPoint(4, 3, inf=False): "fp8_e4m3",
    FloatingPoint(3, 2, inf=False, nan=False): "fp6_e3m2",
    FloatingPoint(2, 3, inf=False, nan=False): "fp6_e2m3",
    FloatingPoint(2, 1, inf=False, nan=False): "fp4_e2m1",
}
_FLOAT_BY_NAME = {name: fmt for fmt, name in _FLOAT_NAMES.items()}


def is_float_format_name(text: str) -> bool:
    """True when ``text`` names a floating-point (not a fixed-point) format."""
    key = text.strip().lower()
    return key.startswith(("fp", "e", "bf", "floatingpoint("))


def parse_format(value):
    """A format from a spec value: a FixedPoint, FloatingPoint, BlockFloatingPoint
    MX or Scaled, a string (``"fx16.12"``, ``"bf16"``, ``"fp8_e4m3"``, ``"mxfp8_e4m3"``,
    ``"bfp8_b32"``, ``"scaled_fp8_e4m3"``, ...), a table ``{wl=.., fl=.., signed=..}`` or ``{exp=..,
    man=.., subnormals=.., inf=.., nan=.., saturate=..}``, or ``None``/``"float"``
    for no quantization."""
    from hwsim.formats.block import MX, BlockFloatingPoint, is_block_format_name, parse_block_format
    from hwsim.formats.scaled import Scaled, is_scaled_format_name

    if value is None or isinstance(value, FixedPoint | FloatingPoint | BlockFloatingPoint | MX):
        return value
    if isinstance(value, Scaled):
        return value
    if isinstance(value, str):
        if value.strip().lower() in ("float", "none", "float32"):
            return None
        if is_scaled_format_name(value):
            return Scaled.parse(value)
        if is_block_format_name(value):
            return parse_block_format(value)
        if is_float_format_name(value):
            return FloatingPoint.parse(value)
        return FixedPoint.parse(value)
    if isinstance(value, dict):
        if "exp" in value or "man" in value:
            allowed = {"exp", "man", "subnormals", "inf", "nan", "saturate"}
            unknown = set(value) - allowed
            if unknown or not {"exp", "man"} <= set(value):
                raise ValueError(
                    f"a floating-point format table needs keys exp and man (and optionally "
                    f"subnormals, inf, nan, saturate), got {sorted(value)}"
                )
            return FloatingPoint(**value)
        unknown = set(value) - {"wl", "fl", "signed"}
        if unknown or not {"wl", "fl"} <= set(value):
            raise ValueError(
                f"a format table needs keys wl and fl (and optionally signed), got {sorted(value)}"
            )
        return FixedPoint(value["wl"], value["fl"], value.get("signed", True))
    raise ValueError(
        f"cannot read a number format from {value!r}: use 'fx<wl>.<fl>', 'ufx<wl>.<fl>', "
        f"a float name ('bf16', 'fp8_e4m3', 'e5m2', ...), a block-scaled name ('mxfp8_e4m3', "
        f"'mxint8', 'bfp8_b32', ...), a scaled name ('scaled_fp8_e4m3_h16'), a table {{wl=.., fl=..}} or "
        f"{{exp=.., man=..}}, or 'float' for no quantization"
    )
