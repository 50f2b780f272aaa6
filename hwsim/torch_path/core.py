"""Rounding, overflow and counter noise on torch tensors (any device).

Mirrors ``hwsim.kernels.scalar`` op for op; all arithmetic is float64 or int64,
whatever the input dtype, so results are bit-identical to the Numba kernels.
"""

from __future__ import annotations

import torch

from hwsim.formats import FixedPoint
from hwsim.modes import Overflow, Rounding

TWO62 = 4611686018427387904.0
TINY = 5e-324
INV_2_53 = 1.0 / 9007199254740992.0


def _signed64(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


_GOLDEN = _signed64(0x9E3779B97F4A7C15)
_MIX1 = _signed64(0xBF58476D1CE4E5B9)
_MIX2 = _signed64(0x94D049BB133111EB)


def _lsr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 viewed as uint64."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def counter_uniform(seed: int, numel: int, device=None, offset: int = 0) -> torch.Tensor:
    """Float64 uniforms in [0, 1) for flat indices offset .. offset+numel-1;
    equal bit for bit to ``hwsim.kernels.scalar.counter_uniform``."""
    i = torch.arange(offset, offset + numel, dtype=torch.int64, device=device)
    z = (i + 1) * _GOLDEN + _signed64(int(seed))  # int64 arithmetic wraps mod 2^64
    z = (z ^ _lsr(z, 30)) * _MIX1
    z = (z ^ _lsr(z, 27)) * _MIX2
    z = z ^ _lsr(z, 31)
    return _lsr(z, 11).to(torch.float64) * INV_2_53


def round_scaled(s: torch.Tensor, rounding: Rounding, u: torch.Tensor | None = None) -> torch.Tensor:
    """Round float64 ``s`` (LSB units) to integral float64."""
    if rounding == Rounding.NEAREST:
        return torch.round(s)  # half to even
    if rounding == Rounding.NEAREST_AWAY:
        t = torch.trunc(s)
        d = s - t
        return t + (d >= 0.5).to(s.dtype) - (d <= -0.5).to(s.dtype)
    if rounding == Rounding.FLOOR:
        return torch.floor(s)
    if rounding == Rounding.ZERO:
        return torch.trunc(s)
    f = torch.floor(s)
    return f + (u < s - f).to(s.dtype)


def apply_overflow(code: torch.Tensor, fmt: FixedPoint, overflow: Overflow) -> torch.Tensor:
    if overflow == Overflow.SATURATE:
        return code.clamp(fmt.min_code, fmt.max_code)
    return ((code - fmt.min_code) & ((1 << fmt.wl) - 1)) + fmt.min_code


def value_to_code(
    x: torch.Tensor,
    fmt: FixedPoint,
    rounding: Rounding,
    overflow: Overflow,
    u: torch.Tensor | None = None,
) -> torch.Tensor:
    """Int64 codes of finite ``x`` (any float dtype) in ``fmt``."""
    x = x.to(torch.float64)
    if overflow == Overflow.WRAP:
        x = torch.fmod(x, 2.0 ** (fmt.wl - fmt.fl))
    s = x * (2.0**fmt.fl)
    if fmt.fl < 0:
        s = torch.where((s == 0) & (x != 0), torch.copysign(torch.full_like(s, TINY), x), s)
    r = round_scaled(s, rounding, u).clamp(-TWO62, TWO62)
    return apply_overflow(r.to(torch.int64), fmt, overflow)


def code_to_value(code: torch.Tensor, fmt: FixedPoint, dtype=torch.float64) -> torch.Tensor:
    return (code.to(torch.float64) * fmt.lsb).to(dtype)


def shift_round_code(code: torch.Tensor, shift: int, rounding: Rounding,
                     u: torch.Tensor | None = None) -> torch.Tensor:
    """Round int64 codes to a grid 2^shift times coarser (``shift`` >= 0) in
    integers; ``shift`` < 0 shifts left (exact). Mirrors
    ``hwsim.kernels.scalar.shift_round_code``; no overflow applied."""
    if shift <= 0:
        return code << (-shift)
    q = code >> shift  # arithmetic shift: floor
    rem = code - (q << shift)  # in [0, 2^shift)
    half = 1 << (shift - 1)
    if rounding == Rounding.FLOOR:
        return q
    if rounding == Rounding.ZERO:
        up = (code < 0) & (rem != 0)
    elif rounding == Rounding.NEAREST:
        up = (rem > half) | ((rem == half) & ((q & 1) == 1))
    elif rounding == Rounding.NEAREST_AWAY:
        up = (rem > half) | ((rem == half) & (code > 0))
    else:
        up = (rem != 0) & (u < rem.to(torch.float64) / float(1 << shift))
    return q + up.to(torch.int64)
