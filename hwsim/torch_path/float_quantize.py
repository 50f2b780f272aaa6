"""Floating-point quantization on torch tensors (any device).

Mirrors ``hwsim.kernels.float_quantize`` op for op (read its docstring) on the
int64 bit patterns of float64, so results are bit-identical to the Numba kernels.
"""

from __future__ import annotations

import torch

from hwsim.formats import FloatingPoint
from hwsim.kernels.float_quantize import (
    ABS_MASK,
    INF_BITS,
    FloatParams,
    check_representable,
    float_params,
    raise_nan,
)
from hwsim.modes import Rounding


def round_up(rem, half, odd, negative, frac, rounding: Rounding, u):
    """``hwsim.kernels.float_quantize.round_up`` on tensors (a bool tensor)."""
    nonzero = rem != 0
    if rounding == Rounding.NEAREST:
        return nonzero & ((rem > half) | ((rem == half) & odd))
    if rounding == Rounding.NEAREST_AWAY:
        return nonzero & (rem >= half)
    if rounding == Rounding.ZERO:
        return torch.zeros_like(nonzero)
    if rounding == Rounding.FLOOR:
        return nonzero & negative
    return u < frac


def quantize_bits(v: torch.Tensor, p: FloatParams, rounding: Rounding, u) -> torch.Tensor:
    """The format's values of float64 ``v`` (a new float64 tensor)."""
    a = v.view(torch.int64) & ABS_MASK
    negative = v < 0
    keep = a >> p.shift
    rem = a - (keep << p.shift)
    frac = rem.to(torch.float64) * p.inv_quantum if rounding == Rounding.STOCHASTIC else None
    up = round_up(rem, p.half, (keep & 1) == 1, negative, frac, rounding, u)
    normal = ((keep + up.to(torch.int64)) << p.shift).view(torch.float64)
    s = v.abs() * p.up_a * p.up_b
    f = torch.floor(s)
    fs = s - f
    odd_f = (f - 2.0 * torch.floor(0.5 * f)) == 1.0
    up_s = round_up(fs, 0.5, odd_f, negative, fs, rounding, u)
    sub = (f + up_s.to(torch.float64)) * p.down_a * p.down_b
    r = torch.where(a >= p.min_normal_bits, normal, sub)
    if rounding == Rounding.ZERO or p.saturate:
        big = torch.full_like(r, p.max_value)
    elif rounding == Rounding.FLOOR:
        big = torch.where(v > 0, p.max_value, torch.full_like(r, p.over))
    else:
        big = torch.full_like(r, p.over)
    r = torch.where(r > p.max_value, big, r)
    if p.ftz:
        r = torch.where(r < p.min_normal, 0.0, r)
    r = torch.where(a == INF_BITS, torch.full_like(r, p.inf_out), r)
    r = torch.copysign(r, v)
    return torch.where(a > INF_BITS, v, r)  # NaN passes through


def quantize_float_torch(
    x: torch.Tensor, fmt: FloatingPoint, rounding: Rounding, *, seed=None, noise=None
) -> torch.Tensor:
    """``x`` rounded to ``fmt`` in ``x``'s dtype (integers become float64)."""
    from hwsim.torch_path.quantize import stochastic_noise

    if x.is_complex():
        raise ValueError(f"quantize takes real tensors, got dtype {x.dtype}")
    out_dtype = x.dtype if x.is_floating_point() else torch.float64
    check_representable(fmt, out_dtype)
    u = stochastic_noise(x, seed, noise) if rounding == Rounding.STOCHASTIC else None
    v = x.detach().to(torch.float64).contiguous()
    if not fmt.nan and bool(v.isnan().any()):
        raise_nan(v.isnan().cpu().numpy(), fmt)
    return quantize_bits(v, float_params(fmt), rounding, u).to(out_dtype)
