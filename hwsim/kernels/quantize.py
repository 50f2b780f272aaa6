"""Elementwise quantization kernels (flat, contiguous arrays; parallel).

Each (rounding, overflow, noise source, output kind) gets its own kernel, built
by ``quantize_kernel`` with the modes as compile-time constants: the mode
branches of ``value_to_code`` fold away and the loop vectorizes (a single
kernel with runtime mode arguments ran ~30x slower than a copy). Numba caches
each specialization on disk like any other kernel.

A kernel writes into a preallocated output and returns the number of
non-finite inputs it met (their outputs are left 0); the caller raises.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from hwsim.kernels.jit import parallel_kernel, prange, serial_and_parallel, widest_vectors
from hwsim.kernels.scalar import counter_uniform, value_to_code

NOISE_NONE, NOISE_ARRAY, NOISE_SEED = 0, 1, 2


@functools.cache
def quantize_kernel(rounding: int, overflow: int, noise_mode: int, to_codes: bool):
    """kernel(x, out, scale, inv_scale, wrap_modulus, min_code, max_code, noise, seed) -> bad"""

    @parallel_kernel
    def run(x, out, scale, inv_scale, wrap_modulus, min_code, max_code, noise, seed):
        bad = 0
        for i in prange(x.size):
            v = np.float64(x[i])
            if not math.isfinite(v):
                bad += 1
                out[i] = 0
                continue
            u = 0.0
            if noise_mode == 1:
                u = noise[i]
            elif noise_mode == 2:
                u = counter_uniform(seed, i)
            c = value_to_code(v, scale, wrap_modulus, min_code, max_code, rounding, overflow, u)
            if to_codes:
                out[i] = c
            else:
                out[i] = c * inv_scale
        return bad

    return widest_vectors(run)


@parallel_kernel
def codes_to_values(codes, out, inv_scale):
    for i in prange(codes.size):
        out[i] = codes[i] * inv_scale


@parallel_kernel
def copy_kernel(x, out):
    """A plain parallel copy: the memory-bandwidth ceiling for benchmarks."""
    for i in prange(x.size):
        out[i] = x[i]


def _uniforms_at(seed, index, out):
    """``out[j] = counter_uniform(seed, index[j])``: the counter noise the torch
    path draws with a dozen int64 tensor ops, in one pass on the CPU."""
    for j in prange(out.size):
        out[j] = counter_uniform(seed, index[j])


def _uniforms_from(seed, offset, out):
    """``out[j] = counter_uniform(seed, offset + j)``."""
    for j in prange(out.size):
        out[j] = counter_uniform(seed, offset + j)


UNIFORMS_AT = serial_and_parallel(_uniforms_at)  # (serial, parallel): threads for large arrays
UNIFORMS_FROM = serial_and_parallel(_uniforms_from)
