"""Floating-point quantization on torch tensors (any device).

The arithmetic of ``hwsim.kernels.float_quantize`` (read its docstring) on
tensors: the same integer rounding of the float64 magnitude bits and the same
float64 rescale below 2^emin, so results are bit-identical to the Numba
kernels (tests/test_quantize_float.py checks every mode). The final selects
(overflow, FTZ, Inf, NaN, sign) are done on values with ``torch.where``.
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


def normal_bits(a, negative, p: FloatParams, rounding: Rounding, u):
    """``hwsim.kernels.float_quantize.normal_bits`` on int64 tensors."""
    if rounding == Rounding.NEAREST:
        return (a + p.half_minus_one + ((a >> p.shift) & p.last_bit)) & p.keep_mask
    if rounding == Rounding.NEAREST_AWAY:
        return (a + p.half) & p.keep_mask
    if rounding == Rounding.ZERO:
        return a & p.keep_mask
    if rounding == Rounding.FLOOR:
        return (a + negative.to(torch.int64) * p.drop_mask) & p.keep_mask
    frac = (a & p.drop_mask).to(torch.float64) * p.inv_quantum
    return (a & p.keep_mask) + ((u < frac).to(torch.int64) << p.shift)


def subnormal_value(v, negative, p: FloatParams, rounding: Rounding, u):
    """``hwsim.kernels.float_quantize.subnormal_value`` on float64 tensors."""
    s = v.abs() * p.up_a * p.up_b
    if rounding == Rounding.NEAREST:
        k = torch.round(s)  # half to even
    else:
        k = torch.floor(s)
        frac = s - k
        if rounding == Rounding.NEAREST_AWAY:
            k += (frac >= 0.5).to(torch.float64)
        elif rounding == Rounding.FLOOR:
            k += (negative & (frac != 0)).to(torch.float64)
        elif rounding != Rounding.ZERO:
            k += (u < frac).to(torch.float64)
    return k * p.down_a * p.down_b


def quantize_bits(v: torch.Tensor, p: FloatParams, rounding: Rounding, u) -> torch.Tensor:
    """The format's values of float64 ``v`` (a new float64 tensor)."""
    a = v.view(torch.int64) & ABS_MASK
    negative = v < 0
    normal = normal_bits(a, negative, p, rounding, u).view(torch.float64)
    r = torch.where(a >= p.min_normal_bits, normal, subnormal_value(v, negative, p, rounding, u))
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
