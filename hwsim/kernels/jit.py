"""The one place for Numba JIT flags.

Kernels never choose their own flags: they use these decorators.

- ``cache=True``: compiled code is written next to the source and reused by
  later processes (sweep workers included), so only the first run pays the JIT.
- ``nogil=True``: kernels release the GIL, so threads can overlap them.
- ``fastmath=False``: bit-true emulation forbids reassociation and
  flush-to-zero; every float operation must be the IEEE one.
- ``error_model="numpy"``: no Python-style zero-division checks in hot loops.

Compilation is lazy (no signatures here), so importing hwsim compiles nothing.
"""

from __future__ import annotations

import numba

JIT_FLAGS = dict(cache=True, nogil=True, fastmath=False, error_model="numpy")


def kernel(fn=None, **extra):
    """A serial kernel or a scalar helper called from kernels."""
    if fn is None:
        return lambda f: numba.njit(**JIT_FLAGS, **extra)(f)
    return numba.njit(**JIT_FLAGS, **extra)(fn)


def parallel_kernel(fn=None, **extra):
    """A kernel whose outer loop is a ``numba.prange`` over disjoint outputs."""
    if fn is None:
        return lambda f: numba.njit(parallel=True, **JIT_FLAGS, **extra)(f)
    return numba.njit(parallel=True, **JIT_FLAGS, **extra)(fn)


prange = numba.prange
