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
"""

from __future__ import annotations

import dataclasses
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


def parse_format(value) -> FixedPoint | None:
    """A format from a spec value: a FixedPoint, a string, a table
    ``{wl=.., fl=.., signed=..}``, or ``None``/``"float"`` for no quantization."""
    if value is None or isinstance(value, FixedPoint):
        return value
    if isinstance(value, str):
        if value.strip().lower() in ("float", "none", "fp32", "float32"):
            return None
        return FixedPoint.parse(value)
    if isinstance(value, dict):
        unknown = set(value) - {"wl", "fl", "signed"}
        if unknown or not {"wl", "fl"} <= set(value):
            raise ValueError(
                f"a format table needs keys wl and fl (and optionally signed), got {sorted(value)}"
            )
        return FixedPoint(value["wl"], value["fl"], value.get("signed", True))
    raise ValueError(
        f"cannot read a number format from {value!r}: use 'fx<wl>.<fl>', 'ufx<wl>.<fl>', "
        f"a table {{wl=.., fl=..}}, or 'float' for no quantization"
    )
