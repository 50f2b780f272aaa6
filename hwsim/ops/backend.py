"""The ``backend`` argument of the public ops: run NumPy arrays on the torch
path, or torch tensors on the Numba kernels, and hand the result back as the
caller's kind of array (on its device).

``None`` (the default) picks by array type: NumPy arrays and numbers go to the
Numba kernels, torch tensors to the torch path on their own device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np

from hwsim.kernels.jit import threads_for
from hwsim.plan.checks import is_torch

BACKENDS = ("numba", "torch")


def check_backend(backend: str | None) -> str | None:
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be None or one of {BACKENDS}, got {backend!r}")
    return backend


def on_backend(backend: str | None, *arrays) -> tuple[tuple, Callable]:
    """``(arrays for the backend, back)``: ``back(result)`` turns a result of
    the backend into the kind of ``arrays[0]`` (a tensor on its device, or a
    NumPy array). ``None`` entries pass through."""
    backend = check_backend(backend)
    first = arrays[0]
    if backend == "numba" and is_torch(first):
        import torch

        device = first.device
        converted = tuple(None if a is None else _tensor_to_numpy(a) for a in arrays)
        return converted, lambda r: torch.from_numpy(np.ascontiguousarray(r)).to(device)
    if backend == "torch" and not is_torch(first):
        import torch

        converted = tuple(None if a is None else torch.as_tensor(np.asarray(a)) for a in arrays)
        return converted, lambda r: r.cpu().numpy()
    return arrays, _same


def _tensor_to_numpy(t) -> np.ndarray:
    import torch

    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.to(torch.float32)  # exact widening; NumPy has no bfloat16
    return t.cpu().numpy()


def _same(result):
    return result


def small_work(backend: str | None, x):
    """Torch tensors run on the Numba kernels inside ``threads_for(numel)``:
    between torch ops, a small kernel on one thread beats waking the pool."""
    if backend == "numba" and is_torch(x):
        return threads_for(x.numel())
    return contextlib.nullcontext()
