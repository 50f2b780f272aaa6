"""Argument checks, seeds and error wording shared by every backend and the
public ops: the bottom of the datapath, below the kernels and the torch path."""

from __future__ import annotations

import functools
import secrets
from typing import NamedTuple

import numpy as np

from hwsim.errors import NonFiniteError
from hwsim.formats import FixedPoint

EXACT_FLOAT = 1 << 53  # float64 holds every integer up to this in magnitude (not 2^53 + 1)
EXACT_FLOAT32 = 1 << 24  # float32 likewise


def is_torch(x) -> bool:
    """True for a torch.Tensor, without importing torch when it is not loaded."""
    return type(x).__module__.startswith("torch") and hasattr(x, "dtype") and hasattr(x, "device")


def check_format(fmt, what: str = "fmt") -> FixedPoint:
    if isinstance(fmt, str):
        return FixedPoint.parse(fmt)
    if not isinstance(fmt, FixedPoint):
        raise ValueError(
            f"{what} must be a hwsim.FixedPoint or a string like 'fx16.12', got {fmt!r}"
        )
    return fmt


def fresh_seed() -> int:
    """A random 64-bit seed, for stochastic rounding when the caller gives none."""
    return secrets.randbits(64)


def seed64(seed) -> int:
    """An int seed as the unsigned 64-bit counter-noise key both backends use:
    an int in [0, 2^64); others raise (rather than wrap modulo 2^64 onto another seed)."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ValueError(
            f"seed must be an int (or, for torch tensors, a torch.Generator), got {seed!r}"
        )
    if not 0 <= int(seed) < 1 << 64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {int(seed)}")
    return int(seed)


check_seed = seed64  # the name hwsim.optim uses


def check_data(x, name: str = "x") -> None:
    """Raise on a torch meta tensor (a shape without values) before any op
    fails on it deep inside torch."""
    if is_torch(x) and x.device.type == "meta":
        raise ValueError(
            f"{name} is a meta tensor (shape {tuple(x.shape)}, no values); hwsim computes on "
            "values: give a tensor on a real device (cpu, cuda, ...)"
        )


def check_integers_exact(x, name: str = "x") -> None:
    """Integer input is taken exactly or not at all: the ops compute in
    float64, exact for integers up to 2^53 in magnitude."""
    limit = EXACT_FLOAT
    if is_torch(x):
        if x.is_floating_point() or x.is_complex() or str(x.dtype) == "torch.bool":
            return
        bad = (x > limit) | (x < -limit)
        if x.numel() and bool(bad.any()):
            value = int(x.reshape(-1)[bad.reshape(-1)][0])
            raise ValueError(_inexact_message(name, value, int(bad.sum())))
        return
    arr = np.asarray(x)
    if arr.dtype.kind in "iu" and arr.size:
        bad = (arr > limit) | (arr < -limit) if arr.dtype.kind == "i" else arr > limit
        if bad.any():
            value = int(arr.reshape(-1)[bad.reshape(-1)][0])
            raise ValueError(_inexact_message(name, value, int(np.count_nonzero(bad))))


def _inexact_message(name: str, value: int, count: int) -> str:
    return (
        f"{name} holds {count} integer(s) beyond 2**53 in magnitude (the first: {value}), which "
        "float64 cannot hold exactly; integer input must lie in [-2**53, 2**53]"
    )


class KernelConstants(NamedTuple):
    """What the scalar quantizer (``hwsim.kernels.scalar.value_to_code`` and its
    torch twin) takes for a :class:`FixedPoint`: ``code = round(x * scale)``,
    wrap reduces ``x`` modulo ``wrap_modulus`` first, saturation clamps the code."""

    scale: float  # 2^fl
    lsb: float  # 2^-fl
    wrap_modulus: float  # 2^(wl - fl), the range's span in values
    min_code: int
    max_code: int


FLOAT64_CODE_WL = 52  # the widest format float64 code arithmetic is exact on


def float64_holds_codes(fmt: FixedPoint) -> bool:
    """Whether float64 arithmetic on ``fmt``'s codes is exact: every code,
    ``code - min_code`` (wrap's offset, below 2^wl) and the sum of two codes
    are integers below ``EXACT_FLOAT`` in magnitude (``wl <= 52``). The
    torch path's float64 code steps and the fused layers' lean path need it."""
    return fmt.wl <= FLOAT64_CODE_WL


@functools.cache
def kernel_constants(fmt: FixedPoint) -> KernelConstants:
    """The one place a format becomes its quantizer constants.

    >>> kernel_constants(FixedPoint(8, 4))
    KernelConstants(scale=16.0, lsb=0.0625, wrap_modulus=16.0, min_code=-128, max_code=127)
    """
    return KernelConstants(
        2.0**fmt.fl, fmt.lsb, 2.0 ** (fmt.wl - fmt.fl), fmt.min_code, fmt.max_code
    )


def raise_non_finite_numpy(x: np.ndarray) -> None:
    bad = ~np.isfinite(x)
    count = int(np.count_nonzero(bad))
    first = np.unravel_index(int(np.flatnonzero(bad.ravel())[0]), x.shape) if x.ndim else ()
    raise NonFiniteError(count, first, x.shape)


def raise_non_finite_torch(x) -> None:
    import torch

    bad = ~torch.isfinite(x)
    count = int(bad.sum())
    flat = int(torch.nonzero(bad.reshape(-1))[0, 0])
    first = np.unravel_index(flat, tuple(x.shape)) if x.dim() else ()
    raise NonFiniteError(count, first, tuple(x.shape))


def check_noise_numpy(noise, shape) -> np.ndarray:
    try:
        noise = np.ascontiguousarray(np.asarray(noise, dtype=np.float64))
    except (TypeError, ValueError):
        raise ValueError(
            f"noise must be an array of uniforms in [0, 1) of the input's shape {tuple(shape)}, "
            f"got {noise!r:.80}"
        ) from None
    if noise.shape != tuple(shape):
        raise ValueError(f"noise must have the input's shape {tuple(shape)}, got {noise.shape}")
    if noise.size and not (np.all(noise >= 0.0) and np.all(noise < 1.0)):
        raise ValueError("noise must hold uniforms in [0, 1); found values outside (or NaN)")
    return noise.reshape(-1)
