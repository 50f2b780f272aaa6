"""``quantize`` for :class:`hwsim.formats.scaled.Scaled` (per-tensor power-of-two
scaling): the scale exponent from an amax, then the element's own quantizer
(fixed point: the grid ``FixedPoint(wl, fl - s)``; float: ``x * 2^-s`` cast to
the element, times ``2^s``, exact in float64). ``hwsim.ops.quantize.quantize``
sends every Scaled format here; the layers' delayed-scaling state
(:class:`hwsim.nn.AmaxHistory`) calls :func:`quantize_scaled` with its exponent.
"""

from __future__ import annotations

import math

import numpy as np

from hwsim.formats import FixedPoint
from hwsim.formats.scaled import Scaled, is_scaled_format_name, scale_exponent
from hwsim.modes import Overflow, Rounding
from hwsim.plan.checks import is_torch, raise_non_finite_numpy, raise_non_finite_torch


def as_scaled_format(fmt) -> Scaled | None:
    """``fmt`` as a Scaled format when it is one or names one, else None."""
    if isinstance(fmt, Scaled):
        return fmt
    if isinstance(fmt, str) and is_scaled_format_name(fmt):
        return Scaled.parse(fmt)
    return None


def amax_of(x) -> float:
    """The largest magnitude of ``x`` (0 when empty); NonFiniteError on NaN/Inf."""
    if is_torch(x):
        import torch

        v = x.detach().to(torch.float64)
        if not bool(torch.isfinite(v).all()):
            raise_non_finite_torch(v)
        return float(v.abs().max()) if v.numel() else 0.0
    v = np.asarray(x, dtype=np.float64)
    if not np.isfinite(v).all():
        raise_non_finite_numpy(v)
    return float(np.abs(v).max()) if v.size else 0.0


def quantize_scaled(
    x, fmt: Scaled, rounding="nearest", overflow="saturate", *, exponent=None, seed=None,
    noise=None, backend=None,
):  # fmt: skip
    """``element(x / 2^s) * 2^s`` with ``s = exponent``, or (None) the exponent
    of the current amax (``scale_exponent(amax_of(x), fmt)``). Same dtype as
    ``x``; stochastic rounding takes ``seed``/``noise`` as ``hwsim.quantize``."""
    from hwsim.ops.quantize import quantize

    if Overflow.parse(overflow) != Overflow.SATURATE:
        raise ValueError(
            f"overflow={str(overflow)!r} does not apply to {fmt}: its elements always "
            f"saturate; leave overflow at its default"
        )
    rounding = Rounding.parse(rounding)
    if exponent is None:
        exponent = scale_exponent(amax_of(x), fmt)
    elif isinstance(exponent, bool) or not isinstance(exponent, int | np.integer):
        raise ValueError(f"exponent must be an int (the scale 2^exponent), got {exponent!r}")
    element = fmt.element
    if isinstance(element, FixedPoint):
        grid = FixedPoint(element.wl, element.fl - int(exponent))
        return quantize(x, grid, rounding, "saturate", seed=seed, noise=noise, backend=backend)
    down, up = math.ldexp(1.0, -int(exponent)), math.ldexp(1.0, int(exponent))
    if is_torch(x):
        import torch

        v = x.detach().to(torch.float64) * down
        q = quantize(v, element, rounding, seed=seed, noise=noise, backend=backend)
        return (q * up).to(x.dtype)
    scalar = np.ndim(x) == 0 and not isinstance(x, np.ndarray)
    arr = np.asarray(x)
    q = quantize(arr.astype(np.float64) * down, element, rounding, seed=seed, noise=noise,
                 backend=backend) * up  # fmt: skip
    if scalar:
        return float(q)
    return q.astype(arr.dtype if arr.dtype.kind == "f" else np.float64)
