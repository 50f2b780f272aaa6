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

import contextlib
import types

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


def serial_and_parallel(fn):
    """``(kernel(fn), parallel_kernel(fn))``: callers run small inputs on the
    serial one (waking the thread pool costs more than they do). Numba's disk
    cache names a function by its qualified name, not by its flags, so the
    parallel twin gets a name of its own; else whichever compiled first would
    be loaded for both."""
    twin = types.FunctionType(
        fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )
    twin.__qualname__ = f"{fn.__qualname__}_parallel"
    return kernel(fn), parallel_kernel(twin)


# -- threads -----------------------------------------------------------------------

SERIAL_BELOW = 1 << 22  # MACs: below this a GEMM-like kernel runs on one thread
SERIAL_BELOW_ELEMENTWISE = 1 << 16  # elements: same for memory-bound elementwise kernels


@contextlib.contextmanager
def threads_for(work: int, serial_below: int = SERIAL_BELOW):
    """Run Numba parallel kernels on one thread when ``work`` is small.

    Waking the OpenMP pool costs more than small kernels do, and when torch's
    own OpenMP threads are spinning after an op (training loops alternate
    torch ops and these kernels) the two pools fight over the cores: a
    64-100-10 MLP step ran 70x slower with both pools active on 2 cores."""
    if work >= serial_below:
        yield
        return
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(before)
