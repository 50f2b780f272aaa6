"""Fused kernels of a quantized layer's step (``hwsim.nn.fused``): one call
quantizes a tensor straight to the codes a MAC array takes, one call turns the
accumulator codes into the layer's quantized output.

Each is the composition of kernels the unfused path runs one after another,
with the same scalar arithmetic (``hwsim.kernels.scalar``), so the bits are
the same:

- ``operand_kernel``: ``quantize`` (a float32 value per element, its format
  exact in float32) followed by the grid scan of those values: the codes on
  the format's grid, and their OR, min and max (0 included, as
  ``code_stats``), from which the caller finds the coarsest grid.
- ``epilogue_kernel``: the bias code added as one more MAC step (the
  accumulator's overflow), the value ``code * lsb`` cast to float32 (what the
  layer's tensor holds), then ``quantize`` of that float32 onto the next
  format, written as float32.
- ``bias_kernel``: ``quantize`` onto the weight format (the float32 values
  the unfused chain holds), then ``quantize`` of those values to codes on the
  accumulator's grid (``_add_bias_codes``).

Modes are compile-time constants, as in ``hwsim.kernels.quantize``. Serial:
a layer's tensors are small, and the caller runs between torch ops. Each
compiles with ``jit.widest_vectors``: float32 tensors and int32 codes next to
float64 rounding and the 64-bit counter hash.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from hwsim.kernels.jit import kernel, widest_vectors
from hwsim.kernels.scalar import apply_overflow, counter_uniform, value_to_code


@kernel
def noisy_code(v, i, k, rounding, overflow, seed, seeded):
    """``value_to_code`` of finite ``v`` (element ``i``) with the format's
    constants ``k`` = (scale, wrap_modulus, min_code, max_code), drawing the
    element's counter uniform where ``seeded``."""
    u = counter_uniform(seed, i) if seeded else 0.0
    return value_to_code(v, k[0], k[1], k[2], k[3], rounding, overflow, u)


@functools.cache
def operand_kernel(rounding: int, overflow: int, seeded: bool):
    """kernel(x, codes, scale, wrap_modulus, min_code, max_code, seed) ->
    (non-finite count, OR of codes, min code, max code)

    The loop vectorizes as written (LLVM turns the non-finite branch into
    masked stores and masked reductions); selecting 0.0 and code 0 for a
    non-finite value instead measured a few percent slower."""

    @kernel
    def run(x, codes, scale, wrap_modulus, min_code, max_code, seed):
        k = (scale, wrap_modulus, min_code, max_code)
        bad = 0
        ors, lo, hi = np.int64(0), np.int64(0), np.int64(0)
        for i in range(x.size):
            v = np.float64(x[i])
            if not math.isfinite(v):
                bad += 1
                codes[i] = 0
                continue
            c = noisy_code(v, i, k, rounding, overflow, seed, seeded)
            codes[i] = c
            ors |= c
            lo = min(lo, c)
            hi = max(hi, c)
        return bad, ors, lo, hi

    return widest_vectors(run)


@functools.cache
def epilogue_kernel(acc_overflow: int, has_bias: bool, rounding: int, overflow: int, seeded: bool):
    """kernel(codes, bias, inner, count, c_min, c_max, acc_lsb, out, scale,
    inv_scale, wrap_modulus, min_code, max_code, seed) -> None; element i
    takes ``bias[(i // inner) % count]`` (``inner, count >= 1`` unless empty).

    Nested loops whose innermost runs over contiguous elements with an index
    that vectorizes: for ``inner == 1`` (a linear layer) the rows of ``count``
    columns, ``bias[column]``; else blocks of ``inner`` elements sharing one
    bias. (A running channel counter in one flat loop, or a division per
    element, kept the loop scalar.)"""

    value = _output_value(rounding, overflow, seeded)

    @kernel
    def run(
        codes,
        bias,
        inner,
        count,
        c_min,
        c_max,
        acc_lsb,
        out,
        scale,
        inv_scale,
        wrap_modulus,
        min_code,
        max_code,
        seed,
    ):
        k = (scale, wrap_modulus, min_code, max_code)
        n = codes.size
        if not has_bias:
            for i in range(n):
                out[i] = value(codes[i], i, acc_lsb, k, inv_scale, seed)
        elif n == 0:  # an empty conv output may have inner == 0 (no range step of 0)
            pass
        elif inner == 1:
            for start in range(0, n, count):
                for j in range(min(count, n - start)):
                    i = np.uintp(start + j)  # unsigned: no negative-index wrap (a gather)
                    c = apply_overflow(codes[i] + bias[j], c_min, c_max, acc_overflow)
                    out[i] = value(c, i, acc_lsb, k, inv_scale, seed)
        else:
            ch = 0
            for start in range(0, n, inner):
                b = bias[ch]
                for i in range(np.uintp(start), np.uintp(min(start + inner, n))):
                    c = apply_overflow(codes[i] + b, c_min, c_max, acc_overflow)
                    out[i] = value(c, i, acc_lsb, k, inv_scale, seed)
                ch = ch + 1 if ch + 1 < count else 0

    return widest_vectors(run)


@functools.cache
def _output_value(rounding: int, overflow: int, seeded: bool):
    """value(c, i, acc_lsb, k, inv_scale, seed): element i's output from its
    accumulator code ``c`` (bias added): its float32 value, quantized."""

    @kernel
    def value(c, i, acc_lsb, k, inv_scale, seed):
        v = np.float64(np.float32(c * acc_lsb))
        return noisy_code(v, i, k, rounding, overflow, seed, seeded) * inv_scale

    return value


@functools.cache
def split_epilogue_kernel(rounding: int, overflow: int, seeded: bool):
    """kernel(codes, acc_lsb, out_w, out_b, scale, inv_scale, wrap_modulus,
    min_code, max_code, seed_w, seed_b) -> None: ``epilogue_kernel`` (no
    bias) of a weight-and-bias GEMM's accumulator codes (R, C + 1), in one
    call for its two outputs: column j < C of row r into out_w (R, C),
    drawing its noise at index r C + j from ``seed_w``; the last column into
    out_b (R,), index r, ``seed_b`` (the indices of the two separate passes)."""
    value = _output_value(rounding, overflow, seeded)

    @kernel
    def run(codes, acc_lsb, out_w, out_b, scale, inv_scale, wrap_modulus, min_code, max_code,
            seed_w, seed_b):  # fmt: skip
        k = (scale, wrap_modulus, min_code, max_code)
        rows, cols = out_w.shape
        for r in range(rows):
            line = codes[r]
            for j in range(cols):
                out_w[r, j] = value(line[j], r * cols + j, acc_lsb, k, inv_scale, seed_w)
            out_b[r] = value(line[cols], r, acc_lsb, k, inv_scale, seed_b)

    return widest_vectors(run)


@functools.cache
def bias_kernel(w_rounding: int, w_seeded: bool, a_rounding: int, a_seeded: bool, overflow: int):
    """kernel(x, codes, w_scale, w_inv_scale, w_wrap, w_min, w_max, w_seed,
    a_scale, a_wrap, a_min, a_max, a_seed) -> non-finite count (their codes 0)."""

    @kernel
    def run(x, codes, w_scale, w_inv_scale, w_wrap, w_min, w_max, w_seed,
            a_scale, a_wrap, a_min, a_max, a_seed):  # fmt: skip
        w_k, a_k = (w_scale, w_wrap, w_min, w_max), (a_scale, a_wrap, a_min, a_max)
        bad = 0
        for i in range(x.size):
            v = np.float64(x[i])
            if not math.isfinite(v):
                bad += 1
                codes[i] = 0
                continue
            c = noisy_code(v, i, w_k, w_rounding, overflow, w_seed, w_seeded)
            v = np.float64(np.float32(c * w_inv_scale))  # the weight format's float32 value
            codes[i] = noisy_code(v, i, a_k, a_rounding, overflow, a_seed, a_seeded)
        return bad

    return widest_vectors(run)
