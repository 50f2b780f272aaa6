"""quantize / to_codes on torch tensors."""

from __future__ import annotations

import torch

from hwsim.formats import FixedPoint
from hwsim.modes import Overflow, Rounding
from hwsim.plan.checks import fresh_seed, raise_non_finite_torch, seed64
from hwsim.torch_path.core import code_to_value, counter_uniform, value_to_code, value_to_code_float


def stochastic_noise(x: torch.Tensor, seed=None, noise=None) -> torch.Tensor:
    """Float64 uniforms for stochastic rounding of ``x``: from an explicit
    ``noise`` tensor/array, a ``torch.Generator``, or an int seed (counter noise,
    identical to the Numba kernels)."""
    if noise is not None:
        u = torch.as_tensor(noise, dtype=torch.float64, device=x.device)
        if tuple(u.shape) != tuple(x.shape):
            raise ValueError(
                f"noise must have the input's shape {tuple(x.shape)}, got {tuple(u.shape)}"
            )
        if u.numel() and not bool(((u >= 0) & (u < 1)).all()):
            raise ValueError("noise must hold uniforms in [0, 1); found values outside (or NaN)")
        return u
    if isinstance(seed, torch.Generator):
        return torch.rand(x.shape, generator=seed, dtype=torch.float64, device=x.device)
    seed = fresh_seed() if seed is None else seed64(seed)
    return counter_uniform(seed, x.numel(), device=x.device).reshape(x.shape)


def quantize_torch(
    x: torch.Tensor,
    fmt: FixedPoint,
    rounding: Rounding,
    overflow: Overflow,
    *,
    seed=None,
    noise=None,
    codes: bool = False,
) -> torch.Tensor:
    if x.is_complex():
        raise ValueError(f"quantize takes real tensors, got dtype {x.dtype}")
    if noise is not None and rounding != Rounding.STOCHASTIC:
        raise ValueError(f"noise is only used by rounding='stochastic', not {str(rounding)!r}")
    out_dtype = x.dtype if x.is_floating_point() else torch.float64
    check_finite(x)
    u = stochastic_noise(x, seed, noise) if rounding == Rounding.STOCHASTIC else None
    x = x.detach()
    if codes:
        return value_to_code(x, fmt, rounding, overflow, u)
    if fmt.wl <= 52:
        c = value_to_code_float(x, fmt, rounding, overflow, u)
        return c.mul_(fmt.lsb).to(out_dtype)
    return code_to_value(value_to_code(x, fmt, rounding, overflow, u), fmt, out_dtype)


def all_finite(x: torch.Tensor) -> bool:
    """True when ``x`` holds no NaN or Inf. One read-only reduction: a finite
    float64 sum proves every element finite; only a non-finite sum (NaN/Inf
    inside, or an overflowing sum of huge values) pays the exact check."""
    return (
        not x.numel()
        or bool(torch.isfinite(x.sum(dtype=torch.float64)))
        or bool(torch.isfinite(x).all())
    )


def check_finite(x: torch.Tensor) -> None:
    """Raise NonFiniteError (count and first index) if ``x`` holds NaN or Inf."""
    if not all_finite(x):
        raise_non_finite_torch(x)
