"""The accumulate-and-requantize half of the step pipeline as one Numba pass
(CPU tensors): round the update onto the accumulator grid, add with overflow,
re-quantize to the weight format, write the weight and count the telemetry.

The torch ops in :mod:`hwsim.optim.base` do the same in about ten passes over
memory; this kernel does one. Both are built from the same scalar arithmetic
(``hwsim.kernels.scalar``, mirrored by ``hwsim.torch_path.core``) and give the
same bits: the tests run every case both ways. Like ``torch.optim``'s
``fused=``, it is an implementation choice, never a different result.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from hwsim.kernels.jit import parallel_kernel, prange
from hwsim.kernels.scalar import apply_overflow, counter_uniform, value_to_code


@functools.cache
def accumulate_kernel(acc_rounding: int, weight_rounding: int, overflow: int, has_weight: bool,
                      acc_noise: bool, weight_noise: bool):
    """kernel(update, scale, acc, out, a_scale, a_inv, a_wrap, a_min, a_max,
    w_scale, w_inv, w_wrap, w_min, w_max, a_seed, w_seed)
    -> (nonzero, stalled, saturated, non_finite)

    ``update * scale``: the update, computed in float64 (``update`` float32 or
    float64; ``scale`` 1.0 or a rule's ``-lr``); ``acc``: float64 codes (updated in place);
    ``out``: the parameter's flat storage (float32 or float64)."""

    @parallel_kernel
    def run(update, scale, acc, out, a_scale, a_inv, a_wrap, a_min, a_max,
            w_scale, w_inv, w_wrap, w_min, w_max, a_seed, w_seed):
        nonzero = 0
        stalled = 0
        saturated = 0
        bad = 0
        for i in prange(update.size):
            v = np.float64(update[i]) * scale
            if not math.isfinite(v):
                bad += 1
                continue
            u = counter_uniform(a_seed, i) if acc_noise else 0.0
            d = value_to_code(v, a_scale, a_wrap, a_min, a_max, acc_rounding, overflow, u)
            a = apply_overflow(np.int64(acc[i]) + d, a_min, a_max, overflow)
            acc[i] = np.float64(a)
            sat = a == a_min or a == a_max
            if has_weight:
                uw = counter_uniform(w_seed, i) if weight_noise else 0.0
                w = value_to_code(a * a_inv, w_scale, w_wrap, w_min, w_max, weight_rounding, overflow, uw)
                out[i] = w * w_inv
                sat = sat or w == w_min or w == w_max
            else:
                out[i] = a * a_inv
            if v != 0.0:
                nonzero += 1
                if d == 0:
                    stalled += 1
            if sat:
                saturated += 1
        return nonzero, stalled, saturated, bad

    return run
