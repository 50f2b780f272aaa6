"""The kernels that finish float BLAS on integer codes (the NumPy GEMM's
fast path, ``hwsim.ops.numpy_gemm``): exact integer sums of products, as
float32, float64 or chunked int64, shifted onto the accumulator's grid with
its overflow; and a layer's small fast-path GEMM in one call."""

from __future__ import annotations

import functools

import numpy as np
from numba.extending import overload

from hwsim.kernels.jit import (
    JIT_FLAGS,
    SERIAL_BELOW_ELEMENTWISE,
    kernel,
    parallel_kernel,
    prange,
    serial_and_parallel,
)
from hwsim.kernels.scalar import apply_overflow


@functools.cache
def reduce_codes_kernel(overflow: int):
    """kernel(sums, out, shift_left, c_min, c_max): out = overflow_C(sums << shift_left).

    Finishes the BLAS fast path: ``sums`` are exact integer sums of products,
    as integral float64 (below 2^53), float32 (below 2^24) or int64 (wrapped
    modulo 2^64, harmless modulo 2^wl with wl <= 62)."""

    def run(sums, out, shift_left, c_min, c_max):
        for i in prange(sums.size):
            out[i] = _reduced(sums[i], shift_left, c_min, c_max, overflow)

    serial, parallel = serial_and_parallel(run)

    def reduce(sums, out, *args):
        (parallel if sums.size >= SERIAL_BELOW_ELEMENTWISE else serial)(sums, out, *args)

    return reduce


@kernel(inline="always")
def _reduced(s, shift_left, c_min, c_max, overflow):
    """One exact integer sum of products (a float, or int64) onto the
    accumulator: shifted onto its grid, then its overflow."""
    return apply_overflow(np.int64(s) << shift_left, c_min, c_max, overflow)


def _floats(X, ftype):
    """A float copy of the 2-D code array X for BLAS, in X's own memory
    order: a column-major X (a transposed view, as a layer's weight or
    gradient operand and a conv's columns are) gives the transpose of a
    row-major copy of X.T, which BLAS takes as it lies. Read and written
    contiguously either way: copied row by row, a conv's column-major
    columns were read with a stride of a whole column."""


@overload(_floats, jit_options=dict(JIT_FLAGS, cache=False))
def _floats_by_layout(X, ftype):
    if X.layout == "F":
        return lambda X, ftype: _row_major_floats(X.T, ftype).T
    return lambda X, ftype: _row_major_floats(X, ftype)


@kernel(inline="always")
def _row_major_floats(X, ftype):
    rows, cols = X.shape
    f = np.empty((rows, cols), dtype=ftype)
    for i in range(rows):
        for j in range(cols):
            f[i, j] = X[i, j]
    return f


@functools.cache
def blas_codes_kernel(overflow: int, single: bool):
    """kernel(A, B, out, shift_left, c_min, c_max): ``reduce_codes_kernel``
    of the BLAS product of 2-D code arrays A (M, K) and B (K, N) (any
    strides), in one call: the codes converted to float32 (``single``) or
    float64, the product through BLAS (``np.dot``, SciPy's), each sum onto the
    accumulator. For a layer's small fast-path GEMMs, where the NumPy
    conversions, matmul and reduction cost more in calls than in work. The
    caller has proven every partial sum an exact integer in that float."""
    ftype = np.float32 if single else np.float64

    @kernel
    def run(A, B, out, shift_left, c_min, c_max):
        m, k = A.shape
        n = B.shape[1]
        sums = np.dot(_floats(A, ftype), _floats(B, ftype))
        for i in range(m):
            for j in range(n):
                out[i, j] = _reduced(sums[i, j], shift_left, c_min, c_max, overflow)

    return run


@functools.cache
def reduce_float_sums_kernel(overflow: int, scaled: bool, shifted: bool, values: bool):
    """kernel(sums, out, scale, shift_left, c_min, c_max, lsb):
    code = overflow_C(int64(sums * scale) << shift_left), out = code (int64) or
    code * lsb (float64, ``values``). With ``scaled``, ``sums`` are float64 and
    ``sums * scale`` must be an exact integer below 2^63 (scale a power of two);
    without, ``sums`` are int64 and ``scale`` is ignored. Without ``shifted``
    the shift is skipped (the caller folded it into ``scale``)."""

    @parallel_kernel
    def run(sums, out, scale, shift_left, c_min, c_max, lsb):
        for i in prange(sums.size):
            if scaled:
                code = np.int64(sums[i] * scale)
            else:
                code = np.int64(sums[i])
            if shifted:
                code = code << shift_left
            code = apply_overflow(code, c_min, c_max, overflow)
            if values:
                out[i] = code * lsb
            else:
                out[i] = code

    return run
