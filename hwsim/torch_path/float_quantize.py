"""Floating-point quantization on torch tensors (any device).

Mirrors ``hwsim.kernels.float_quantize`` op for op on the int64 bit patterns
of float64, so results are bit-identical to the Numba kernels.
"""

from __future__ import annotations

import math

import torch

from hwsim.formats import FloatingPoint
from hwsim.modes import Rounding

ABS_MASK = 0x7FFFFFFFFFFFFFFF
MAN52 = (1 << 52) - 1
INF_BITS = 0x7FF0000000000000
MAX_SHIFT = 62


def pow2(k: torch.Tensor) -> torch.Tensor:
    """2.0^k (float64) for int64 ``k`` in [-1022, 1023], from the bits."""
    return ((k + 1023) << 52).view(torch.float64)


def round_magnitude(
    v: torch.Tensor, man: int, emin: int, rounding: Rounding, u: torch.Tensor | None
) -> torch.Tensor:
    """|v| (float64, finite entries) rounded onto the format's grid with no upper
    exponent limit; ``floor`` rounds negative values' magnitudes up."""
    a = v.view(torch.int64) & ABS_MASK
    e = a >> 52
    sig = (a & MAN52) | ((e > 0).to(torch.int64) << 52)
    ex = e.clamp(min=1) - 1075
    q = (e - 1023).clamp(min=emin) - man
    d = q - ex
    ds = d.clamp(max=MAX_SHIFT)
    keep = sig >> ds
    rem = sig - (keep << ds)
    half = (torch.ones_like(ds) << ds) >> 1
    nonzero = rem != 0
    if rounding == Rounding.NEAREST:
        odd = (keep & 1) == 1
        if man == 0:  # the code's last bit is the exponent field's
            odd &= ((q + 1 - emin) & 1) == 1
        up = nonzero & ((rem > half) | ((rem == half) & odd))
    elif rounding == Rounding.NEAREST_AWAY:
        up = nonzero & (rem >= half)
    elif rounding == Rounding.ZERO:
        up = torch.zeros_like(nonzero)
    elif rounding == Rounding.FLOOR:
        up = nonzero & (v < 0)
    else:
        up = u < rem.to(torch.float64) * pow2(-ds) * pow2(ds - d)
    keep = keep + up.to(torch.int64)
    qa = q.clamp(min=-1022)
    return keep.to(torch.float64) * pow2(qa) * pow2(q - qa)


def quantize_float_torch(
    x: torch.Tensor, fmt: FloatingPoint, rounding: Rounding, *, seed=None, noise=None
) -> torch.Tensor:
    """``x`` rounded to ``fmt`` in ``x``'s dtype (integers become float64)."""
    from hwsim.ops.float_quantize import check_representable, float_params, raise_nan
    from hwsim.torch_path.quantize import stochastic_noise

    if x.is_complex():
        raise ValueError(f"quantize takes real tensors, got dtype {x.dtype}")
    out_dtype = x.dtype if x.is_floating_point() else torch.float64
    check_representable(fmt, out_dtype)
    u = stochastic_noise(x, seed, noise) if rounding == Rounding.STOCHASTIC else None
    p = float_params(fmt)
    v = x.detach().to(torch.float64).contiguous()
    if not fmt.nan and bool(v.isnan().any()):
        raise_nan(x, fmt)
    r = round_magnitude(v, fmt.man, fmt.emin, rounding, u)
    if fmt.saturate or rounding == Rounding.ZERO:
        to_max = torch.ones_like(r, dtype=torch.bool)
    elif rounding == Rounding.FLOOR:
        to_max = v > 0
    else:
        to_max = torch.zeros_like(r, dtype=torch.bool)
    over = torch.where(to_max, r.new_tensor(fmt.max), r.new_tensor(p["over"]))
    r = torch.where(r > fmt.max, over, r)
    if not fmt.subnormals:
        r = torch.where(r < fmt.min_normal, 0.0, r)
    a = v.view(torch.int64) & ABS_MASK
    inf_out = p["inf_out"]
    r = torch.where(a == INF_BITS, inf_out if not math.isnan(inf_out) else math.nan, r)
    r = torch.copysign(r, v)
    r = torch.where(a > INF_BITS, v, r)  # NaN passes through
    return r.to(out_dtype)
