"""Rounding, overflow and counter noise on torch tensors (any device).

Mirrors ``hwsim.kernels.scalar`` op for op; all arithmetic is float64 or int64,
whatever the input dtype, so results are bit-identical to the Numba kernels.
"""

from __future__ import annotations

import torch

from hwsim.formats import FixedPoint
from hwsim.kernels.jit import SERIAL_BELOW_ELEMENTWISE
from hwsim.kernels.quantize import UNIFORMS_AT, UNIFORMS_FROM
from hwsim.modes import Overflow, Rounding
from hwsim.plan.checks import FLOAT64_CODE_WL, float64_holds_codes, kernel_constants

TWO62 = 4611686018427387904.0
TINY = 5e-324
INV_2_53 = 1.0 / 9007199254740992.0


def signed64(v: int) -> int:
    """An integer's low 64 bits as a signed int64 (what torch and Numba take)."""
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


_GOLDEN = signed64(0x9E3779B97F4A7C15)
_MIX1 = signed64(0xBF58476D1CE4E5B9)
_MIX2 = signed64(0x94D049BB133111EB)


def _lsr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 viewed as uint64 (a new tensor)."""
    return (z >> k).bitwise_and_((1 << (64 - k)) - 1)


def counter_uniform(seed: int, numel: int, device=None, offset: int = 0) -> torch.Tensor:
    """Float64 uniforms in [0, 1) for flat indices offset .. offset+numel-1;
    equal bit for bit to ``hwsim.kernels.scalar.counter_uniform`` (on the
    CPU its Numba kernel draws them: one pass, where the torch ops take a
    dozen)."""
    if device is None or torch.device(device).type == "cpu":
        out = torch.empty(numel, dtype=torch.float64)
        UNIFORMS_FROM[numel >= SERIAL_BELOW_ELEMENTWISE](signed64(int(seed)), offset, out.numpy())
        return out
    i = torch.arange(offset, offset + numel, dtype=torch.int64, device=device)
    return counter_uniform_ops(seed, i)


def counter_uniform_at(seed: int, i: torch.Tensor) -> torch.Tensor:
    """:func:`counter_uniform` at the int64 flat indices ``i`` (any shape)."""
    if i.is_cpu:
        flat = i.reshape(-1).contiguous().numpy()
        out = torch.empty(i.shape, dtype=torch.float64)
        UNIFORMS_AT[flat.size >= SERIAL_BELOW_ELEMENTWISE](
            signed64(int(seed)), flat, out.view(-1).numpy()
        )
        return out
    return counter_uniform_ops(seed, i)


def counter_uniform_ops(seed: int, i: torch.Tensor) -> torch.Tensor:
    """:func:`counter_uniform_at` with torch ops (what runs on other devices).
    In place on one int64 tensor after the first op: the hash is a dozen
    elementwise ops on small tensors, where each allocation counts."""
    # (i + 1) * golden + seed == i * golden + (golden + seed), int64 wrapping mod 2^64
    z = (i * _GOLDEN).add_(signed64(int(seed) + _GOLDEN))
    z.bitwise_xor_(_lsr(z, 30)).mul_(_MIX1)
    z.bitwise_xor_(_lsr(z, 27)).mul_(_MIX2)
    z.bitwise_xor_(_lsr(z, 31))
    return _lsr(z, 11).to(torch.float64).mul_(INV_2_53)


def wrap_reduce(x: torch.Tensor, modulus: float) -> torch.Tensor:
    """fmod(x, modulus) for a power-of-two modulus, exactly, as
    ``hwsim.kernels.scalar.wrap_reduce`` (torch.fmod computes a - trunc(a/b)*b,
    which is NaN when a/b overflows)."""
    a = x.abs()
    r = x - modulus * torch.trunc(x / modulus)  # exact wherever |x / modulus| < 2^53
    r = torch.where(a >= modulus * 9007199254740992.0, torch.zeros_like(x), r)
    return torch.where(a < modulus, x, r)


def round_scaled_(
    s: torch.Tensor, rounding: Rounding, u: torch.Tensor | None = None
) -> torch.Tensor:
    """Round float64 ``s`` (LSB units) to integral float64, in place where it can."""
    if rounding == Rounding.NEAREST:
        return s.round_()  # half to even
    if rounding == Rounding.NEAREST_AWAY:
        t = torch.trunc(s)
        d = s - t
        return t + (d >= 0.5).to(s.dtype) - (d <= -0.5).to(s.dtype)
    if rounding == Rounding.FLOOR:
        return s.floor_()
    if rounding == Rounding.ZERO:
        return s.trunc_()
    f = torch.floor(s)
    return f.add_(u < s.sub_(f))  # a bool adds as 0.0 or 1.0, no conversion op


def apply_overflow(code: torch.Tensor, fmt: FixedPoint, overflow: Overflow) -> torch.Tensor:
    if overflow == Overflow.SATURATE:
        return code.clamp(fmt.min_code, fmt.max_code)
    return ((code - fmt.min_code) & ((1 << fmt.wl) - 1)) + fmt.min_code


def scaled_to_code_float(
    s: torch.Tensor,
    fmt: FixedPoint,
    rounding: Rounding,
    overflow: Overflow,
    u: torch.Tensor | None = None,
    *,
    inplace: bool = False,
) -> torch.Tensor:
    """Codes of ``fmt`` as integral float64, from float64 ``s`` already in LSB
    units of ``fmt`` (``s = x * 2^fl``); ``fmt.wl <= 52``, where every code and
    ``code - min_code`` are exact in float64.

    Same codes as :func:`value_to_code` with fewer kernel launches and no int64
    round trip: hot loops (the optimizers' weight accumulators) keep codes in
    float64 and call this each step. It also rescales codes between grids: a
    code ``c`` on a grid with ``fl0`` fractional bits is ``s = c * 2^(fmt.fl - fl0)``.
    ``inplace=True`` lets it overwrite ``s``.
    """
    if not float64_holds_codes(fmt):
        raise ValueError(f"float64 code arithmetic needs wl <= {FLOAT64_CODE_WL}, got {fmt}")
    if overflow == Overflow.WRAP:
        s = wrap_reduce(s, 2.0**fmt.wl)  # a multiple of 2^wl codes: rounding commutes with it
    elif not inplace:
        s = s.clone()
    r = round_scaled_(s, rounding, u)
    if overflow == Overflow.SATURATE:
        # + 0.0: code 0 is +0.0 whatever the sign of what rounded to it (codes have no
        # sign; as the Numba kernels); the wrap branch's sums already give +0.0
        return r.clamp_(fmt.min_code, fmt.max_code).add_(0.0)
    return r.sub_(fmt.min_code).remainder_(float(1 << fmt.wl)).add_(fmt.min_code)


def value_to_code_float(
    x: torch.Tensor,
    fmt: FixedPoint,
    rounding: Rounding,
    overflow: Overflow,
    u: torch.Tensor | None = None,
    *,
    inplace: bool = False,
) -> torch.Tensor:
    """``value_to_code(x, ...).to(torch.float64)`` for ``fmt.wl <= 52``, computed
    without int64: a new tensor, or, with ``inplace=True`` and a float64
    ``x`` (a temporary the caller owns), ``x`` itself overwritten (no
    allocation: a fresh CPU tensor of a few MB costs several passes in page
    faults)."""
    s = _scaled(x, fmt, overflow, inplace)
    return scaled_to_code_float(s, fmt, rounding, overflow, u, inplace=True)


def value_to_code(
    x: torch.Tensor,
    fmt: FixedPoint,
    rounding: Rounding,
    overflow: Overflow,
    u: torch.Tensor | None = None,
) -> torch.Tensor:
    """Int64 codes of finite ``x`` (any float dtype) in ``fmt``."""
    if float64_holds_codes(fmt):
        return value_to_code_float(x, fmt, rounding, overflow, u).to(torch.int64)
    s = _scaled(x, fmt, overflow)
    r = round_scaled_(s, rounding, u).clamp_(-TWO62, TWO62)
    return apply_overflow(r.to(torch.int64), fmt, overflow)


def _scaled(x: torch.Tensor, fmt: FixedPoint, overflow: Overflow, inplace=False) -> torch.Tensor:
    """x * 2^fl in a new float64 tensor (``inplace``: in ``x`` itself where it
    is float64), wrap-reduced and underflow-guarded like
    ``hwsim.kernels.scalar.value_to_code``."""
    c = kernel_constants(fmt)
    x = x.to(torch.float64)
    if overflow == Overflow.WRAP:
        x = wrap_reduce(x, c.wrap_modulus)
    elif inplace and fmt.fl >= 0:  # (fl < 0 reads x again, below)
        return x.mul_(c.scale)
    s = x * c.scale
    if fmt.fl < 0:
        s = torch.where((s == 0) & (x != 0), torch.copysign(torch.full_like(s, TINY), x), s)
    return s


def code_to_value(code: torch.Tensor, fmt: FixedPoint, dtype=torch.float64) -> torch.Tensor:
    """Values of codes (int64, or integral float64 from :func:`value_to_code_float`)."""
    v = code.to(torch.float64) if code.dtype != torch.float64 else code.clone()
    return v.mul_(fmt.lsb).to(dtype)


def shift_round_code(
    code: torch.Tensor, shift: int, rounding: Rounding, u: torch.Tensor | None = None
) -> torch.Tensor:
    """Round int64 ``code`` to a grid 2^shift times coarser (shift >= 0), exactly
    in integers; a shift < 0 is an exact left shift. Mirrors
    ``hwsim.kernels.scalar.shift_round_code`` (no overflow applied)."""
    if shift <= 0:
        return code << (-shift)
    q = code >> shift  # floor
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
        up = u < rem.to(torch.float64) / float(1 << shift)
    return q + up.to(torch.int64)
