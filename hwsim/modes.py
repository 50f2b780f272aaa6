"""Rounding and overflow modes: named choices, accepted as strings or enums.

The integer values are what the Numba kernels and the torch path receive; they
are part of the internal contract and must not change.
"""

from __future__ import annotations

import enum


class Rounding(enum.IntEnum):
    """How a value is rounded onto the fixed-point grid (LSB = 2^-fl).

    - ``nearest``: to the nearest grid point, ties to even (IEEE, ``torch.round``).
    - ``nearest_away``: to the nearest grid point, ties away from zero.
    - ``floor``: toward -inf (two's-complement truncation).
    - ``zero``: toward zero (sign-magnitude truncation).
    - ``stochastic``: up with probability equal to the distance from the lower
      neighbour in LSBs (unbiased), else down.
    """

    NEAREST = 0
    NEAREST_AWAY = 1
    FLOOR = 2
    ZERO = 3
    STOCHASTIC = 4

    def __str__(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: Rounding | str) -> Rounding:
        return _parse(cls, value, "rounding")


class Overflow(enum.IntEnum):
    """What happens to a code outside the format's range.

    - ``saturate``: clamp to the nearest representable value.
    - ``wrap``: two's-complement modulo 2^wl (unsigned: modulo 2^wl into [0, 2^wl)).
    """

    SATURATE = 0
    WRAP = 1

    def __str__(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: Overflow | str) -> Overflow:
        return _parse(cls, value, "overflow")


def _parse(cls, value, what):
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        key = value.strip().lower()
        for member in cls:
            if member.name.lower() == key:
                return member
    valid = ", ".join(repr(m.name.lower()) for m in cls)
    raise ValueError(f"unknown {what} mode {value!r}; valid modes are {valid}")
