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

import hashlib
import platform
import sys
import types

import llvmlite.binding as llvm
import numba
from numba.core.compiler_lock import global_compiler_lock

JIT_FLAGS = dict(cache=True, nogil=True, fastmath=False, error_model="numpy")


def kernel(fn=None, **extra):
    """A serial kernel or a scalar helper called from kernels (``extra``
    overrides a flag: ``cache=False`` for a function only ever compiled into
    a cached caller, see :data:`COMPILED_INTO_CALLERS`)."""
    flags = {**JIT_FLAGS, **extra}
    if fn is None:
        return lambda f: numba.njit(**flags)(f)
    return numba.njit(**flags)(fn)


COMPILED_INTO_CALLERS = dict(cache=False)
"""The flags of a helper that only cached kernels call, from another file:
its own disk cache is keyed by its file's timestamp when saved, so a process
still running older code can save that code under the new file's stamp,
and a kernel compiled later would inline it (seen: an edited rule's kernel
computed with the old rule). Uncached, it is compiled from the code in
memory whenever a caller is; the caller's cache holds the result, keyed by
:func:`source_salt`."""


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


def widest_vectors(dispatcher):
    """``dispatcher``, compiled with LLVM's loop vectorizer choosing its vector
    factor from the narrowest type in a loop, not the widest
    (``-vectorizer-maximize-bandwidth``, set only while it compiles, under
    Numba's compiler lock). For loops that mix narrow data (int16/int32
    lanes, float32 tensors) with 64-bit arithmetic (the counter hash,
    float64 rounding, int64 codes): by default the 64-bit type caps the
    factor at 4 on 256-bit vectors and the narrow work runs a quarter or half
    full. The option changes only how a loop is vectorized, never what it
    computes. x86 only, where the option's default (false) is the target's
    own: elsewhere, setting it back to false would override the target's
    preference for every kernel compiled afterwards."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return dispatcher
    compile_ = dispatcher.compile

    def compile_widest(sig):
        with global_compiler_lock:
            llvm.set_option("", "-vectorizer-maximize-bandwidth=true")
            try:
                return compile_(sig)
            finally:
                llvm.set_option("", "-vectorizer-maximize-bandwidth=false")

    dispatcher.compile = compile_widest
    return dispatcher


def source_salt(*modules) -> int:
    """A number that changes when any of ``modules``' source changes, for a
    kernel closure to hold as a cell. Numba's disk cache checks only the
    timestamp of the file that defines the cached function, and keys a
    closure by its cells; a kernel that inlines functions from other files
    (a rule's math, the scalar roundings) would otherwise load stale machine
    code after those files change (seen: an edited rule kept its old bits)."""
    digest = hashlib.sha256()
    for module in modules:
        with open(module.__file__, "rb") as f:
            digest.update(f.read())
    return int.from_bytes(digest.digest()[:7], "little")


# -- threads -----------------------------------------------------------------------

SERIAL_BELOW = 1 << 22  # MACs: below this a GEMM-like kernel runs on one thread
SERIAL_BELOW_ELEMENTWISE = 1 << 16  # elements: same for memory-bound elementwise kernels


class threads_for:  # noqa: N801  (used as a function: ``with threads_for(work):``)
    """Run Numba parallel kernels on one thread when ``work`` is small.

    Waking the OpenMP pool costs more than small kernels do, and when torch's
    own OpenMP threads are spinning after an op (training loops alternate
    torch ops and these kernels) the two pools fight over the cores: a
    64-100-10 MLP step ran 70x slower with both pools active on 2 cores.
    A class, not a ``contextlib`` generator: a layer step enters it dozens
    of times, and the generator's setup cost more than the check."""

    __slots__ = ("_work", "_serial_below", "_before")

    def __init__(self, work: int, serial_below: int = SERIAL_BELOW):
        self._work, self._serial_below, self._before = work, serial_below, None

    def __enter__(self):
        get, set_ = _THREAD_COUNT or _thread_count()
        if self._work < self._serial_below:
            before = get()
            if before != 1:
                set_(1)
                self._before = before

    def __exit__(self, *exc):
        if self._before is not None:
            _THREAD_COUNT[1](self._before)
            self._before = None


_THREAD_COUNT = None


def _thread_count():
    """(get, set) of Numba's thread count for the calling thread. A training
    step enters ``threads_for`` about a hundred times: Numba's public pair
    takes a lock and checks its argument on every call (5 us a get and set),
    the C functions behind it 0.5 us; they exist once the pool is launched.

    Launching the pool (first use) sets OpenMP's thread count to Numba's,
    overriding a ``torch.set_num_threads`` made before (one libgomp serves
    both); the count torch had is put back."""
    global _THREAD_COUNT
    if _THREAD_COUNT is None:
        torch = sys.modules.get("torch")
        torch_threads = torch.get_num_threads() if torch is not None else None
        numba.get_num_threads()  # launches the pool
        if torch_threads is not None and torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)
        from numba.np.ufunc import parallel

        get = getattr(parallel, "_get_num_threads", None)
        set_ = getattr(parallel, "_set_num_threads", None)
        if not (callable(get) and callable(set_)):
            get, set_ = numba.get_num_threads, numba.set_num_threads
        _THREAD_COUNT = (get, set_)
    return _THREAD_COUNT
