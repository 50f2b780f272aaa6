"""Argument checks and array-type dispatch shared by the public ops."""

from __future__ import annotations

import secrets

import numpy as np

from hwsim.errors import NonFiniteError
from hwsim.formats import FixedPoint


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
    return secrets.randbits(64)


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
    noise = np.ascontiguousarray(np.asarray(noise, dtype=np.float64))
    if noise.shape != tuple(shape):
        raise ValueError(f"noise must have the input's shape {tuple(shape)}, got {noise.shape}")
    if noise.size and not (np.all(noise >= 0.0) and np.all(noise < 1.0)):
        raise ValueError("noise must hold uniforms in [0, 1); found values outside (or NaN)")
    return noise.reshape(-1)
