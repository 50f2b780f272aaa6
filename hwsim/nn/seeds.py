"""The per-call noise seeds of the quantized layers: a 64-bit mix (SplitMix
style) of integers, e.g. (seed, salt, call count, role)."""

from __future__ import annotations

_MASK64 = (1 << 64) - 1
_START = 0x9E3779B97F4A7C15


def mix(*parts: int) -> int:
    """A 64-bit seed from integers (SplitMix-style), for per-call stochastic noise."""
    return mix_into(_START, *parts)


def mix_into(z: int, *parts: int) -> int:
    """``mix(*head, *parts)`` from ``z = mix(*head)``: a shared head mixed once."""
    for p in parts:
        z = (z ^ (int(p) & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        z ^= z >> 31
    return z
