"""quantize / to_codes on torch tensors."""

from __future__ import annotations

import math

import torch

from hwsim.formats import FixedPoint
from hwsim.modes import Overflow, Rounding
from hwsim.plan.checks import float64_holds_codes, fresh_seed, raise_non_finite_torch, seed64
from hwsim.torch_path.core import (
    code_to_value,
    counter_uniform,
    counter_uniform_at,
    signed64,
    value_to_code,
    value_to_code_float,
)


def stochastic_noise(x: torch.Tensor, seed=None, noise=None) -> torch.Tensor:
    """Float64 uniforms for stochastic rounding of ``x``: from an explicit
    ``noise`` tensor/array, a ``torch.Generator``, or an int seed (counter noise,
    identical to the Numba kernels)."""
    if noise is not None:
        try:
            u = torch.as_tensor(noise, dtype=torch.float64, device=x.device)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(
                f"noise must be an array of uniforms in [0, 1) of the input's shape "
                f"{tuple(x.shape)}, got {noise!r:.80}"
            ) from None
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


_GOLDEN_INVERSE = pow(0x9E3779B97F4A7C15, -1, 1 << 64)  # the hash's step is odd: invertible


def counter_uniforms(requests, device=None) -> list[torch.Tensor]:
    """``counter_uniform(seed, numel, device, offset)`` of each ``(seed, numel,
    offset)`` in ``requests`` (int seeds in [0, 2^64)), from one pass of the hash:
    at small sizes each of its dozen ops costs more than its arithmetic.

    The hash starts from ``(i + 1) * golden + seed`` modulo 2^64, so index ``i``
    under ``seed`` is index ``i + (seed - seed0) / golden`` under the first
    request's ``seed0`` (``golden`` is odd, so it has an inverse modulo 2^64)."""
    seed0 = requests[0][0]
    parts = [
        torch.arange(n, dtype=torch.int64, device=device).add_(
            signed64((seed - seed0) * _GOLDEN_INVERSE + offset)
        )
        for seed, n, offset in requests
    ]
    u = counter_uniform_at(seed0, parts[0] if len(parts) == 1 else torch.cat(parts))
    return list(u.split([n for _, n, _ in requests]))


CHUNK = 1 << 22  # elements per pass of a large quantize: bounds its float64 temporaries


def quantize_torch(
    x: torch.Tensor,
    fmt: FixedPoint,
    rounding: Rounding,
    overflow: Overflow,
    *,
    seed=None,
    noise=None,
    codes: bool = False,
    finite: bool = False,
) -> torch.Tensor:
    """Values (``x``'s float dtype, float64 for integers) or int64 codes.
    ``finite=True``: the caller knows ``x`` finite (values of codes), and the
    check (a reduction and a sync) is skipped.

    Above :data:`CHUNK` elements it runs chunk by chunk into the output, so
    the float64 temporaries (scaled values, noise, floors) take a chunk's
    memory, not several times the input's. The noise of element i is the
    same either way for an int seed (counter noise at flat index i) and for
    ``noise``; a ``torch.Generator`` is drawn chunk after chunk (on the CPU
    the same numbers as one draw; a CUDA generator's chunks are other, as
    valid, uniforms)."""
    if x.is_complex():
        raise ValueError(f"quantize takes real tensors, got dtype {x.dtype}")
    if noise is not None and rounding != Rounding.STOCHASTIC:
        raise ValueError(f"noise is only used by rounding='stochastic', not {str(rounding)!r}")
    out_dtype = x.dtype if x.is_floating_point() else torch.float64
    if not finite:
        check_finite(x)
    x = x.detach()
    if x.numel() <= CHUNK:
        u = stochastic_noise(x, seed, noise) if rounding == Rounding.STOCHASTIC else None
        return _quantize_block(x, fmt, rounding, overflow, u, codes, out_dtype)
    out = torch.empty(x.shape, dtype=torch.int64 if codes else out_dtype, device=x.device)
    src, dst = x.reshape(-1), out.view(-1)  # src: a view where x is contiguous
    draw = None
    if rounding == Rounding.STOCHASTIC:
        if noise is not None:
            whole = stochastic_noise(x, noise=noise).reshape(-1)
            draw = lambda start, stop: whole[start:stop]  # noqa: E731
        elif isinstance(seed, torch.Generator):
            draw = lambda start, stop: torch.rand(  # noqa: E731
                stop - start, generator=seed, dtype=torch.float64, device=x.device
            )
        else:
            key = fresh_seed() if seed is None else seed64(seed)
            draw = lambda start, stop: counter_uniform(  # noqa: E731
                key, stop - start, device=x.device, offset=start
            )
    for start in range(0, src.numel(), CHUNK):
        stop = min(start + CHUNK, src.numel())
        u = None if draw is None else draw(start, stop)
        dst[start:stop] = _quantize_block(
            src[start:stop], fmt, rounding, overflow, u, codes, out.dtype
        )
    return out


def _quantize_block(x, fmt, rounding, overflow, u, codes, out_dtype) -> torch.Tensor:
    if codes:
        return value_to_code(x, fmt, rounding, overflow, u)
    if float64_holds_codes(fmt):
        c = value_to_code_float(x, fmt, rounding, overflow, u)
        return c.mul_(fmt.lsb).to(out_dtype)
    return code_to_value(value_to_code(x, fmt, rounding, overflow, u), fmt, out_dtype)


def all_finite(x: torch.Tensor) -> bool:
    """True when ``x`` holds no NaN or Inf. One read-only reduction: a finite
    float64 sum proves every element finite; only a non-finite sum (NaN/Inf
    inside, or an overflowing sum of huge values) pays the exact check. The
    float64 sum of a float32 tensor makes a float64 copy: a large contiguous
    tensor is summed chunk by chunk (:data:`CHUNK`)."""
    if x.numel() > CHUNK and x.is_contiguous():
        flat = x.view(-1)
        return all(_all_finite(flat[i : i + CHUNK]) for i in range(0, flat.numel(), CHUNK))
    return _all_finite(x)


def _all_finite(x: torch.Tensor) -> bool:
    return (
        not x.numel()
        or math.isfinite(x.sum(dtype=torch.float64))  # a 0-d tensor: one sync, no more ops
        or bool(torch.isfinite(x).all())
    )


def check_finite(x: torch.Tensor) -> None:
    """Raise NonFiniteError (count and first index) if ``x`` holds NaN or Inf."""
    if not all_finite(x):
        raise_non_finite_torch(x)
