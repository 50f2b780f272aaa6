"""The sample loop of a fixed-point LMS filter (and its float64 baseline) as
Numba kernels on int64 codes. The configuration vector comes from
``hwsim.plan.lms.config_array``; ``hwsim.torch_path.lms`` is the torch twin,
equal bit for bit. Semantics and references: ``models/lms.py``.
"""

from __future__ import annotations

import functools

import numpy as np

from hwsim.kernels.jit import kernel
from hwsim.kernels.scalar import apply_overflow, counter_uniform, shift_round_code


@functools.cache
def lms_kernel(
    rule: int,
    product_rounding: int,
    accumulator_rounding: int,
    error_rounding: int,
    update_rounding: int,
    weight_rounding: int,
    overflow: int,
):
    """The sample loop, specialized on the rule and modes (compile-time constants).

    ``run(xp, d, start, w, wacc, cfg, seed, y_out, e_out, counts)``: ``xp`` holds
    the K-1 previous input codes followed by this block's; ``d`` the desired
    codes; ``start`` the global index of the first sample (for the noise
    counter); ``w`` / ``wacc`` are updated in place; ``y_out`` / ``e_out``
    receive the output (accumulator codes) and error (error codes);
    ``counts`` accumulates [nonzero exact updates, stalled ones, saturated
    weight-accumulator adds].
    """
    stochastic = (
        product_rounding == 4,
        accumulator_rounding == 4,
        error_rounding == 4,
        update_rounding == 4,
        weight_rounding == 4,
    )
    sp, sa, se, su, sw = stochastic
    uses_e = rule == 0 or rule == 2  # lms, sign_data
    uses_x = rule == 0 or rule == 1  # lms, sign_error

    @kernel
    def run(xp, d, start, w, wacc, cfg, seed, y_out, e_out, counts):
        taps = w.size
        p_shift, p_min, p_max = cfg[0], cfg[1], cfg[2]
        a_shift, a_min, a_max = cfg[3], cfg[4], cfg[5]
        d_shift, y_shift = cfg[6], cfg[7]
        e_shift, e_min, e_max = cfg[8], cfg[9], cfg[10]
        mu = cfg[11]
        u_shift, wa_min, wa_max = cfg[12], cfg[13], cfg[14]
        w_shift, w_min, w_max = cfg[15], cfg[16], cfg[17]
        p_exact, a_exact = cfg[18] != 0, cfg[19] != 0
        nonzero = 0
        stalls = 0
        saturated = 0
        for j in range(d.size):
            base = (start + j) * (taps + 1) * 4
            acc = np.int64(0)
            for i in range(taps):
                xi = xp[j + taps - 1 - i]
                p = w[i] * xi
                if not p_exact:
                    u = counter_uniform(seed, base + i * 4) if sp else 0.0
                    p = apply_overflow(
                        shift_round_code(p, p_shift, product_rounding, u), p_min, p_max, overflow
                    )
                if not a_exact:
                    u = counter_uniform(seed, base + i * 4 + 1) if sa else 0.0
                    p = apply_overflow(
                        shift_round_code(p, a_shift, accumulator_rounding, u),
                        a_min,
                        a_max,
                        overflow,
                    )
                acc = apply_overflow(acc + p, a_min, a_max, overflow)
            y_out[j] = acc
            exact_e = (d[j] << d_shift) - (acc << y_shift)
            u = counter_uniform(seed, base + taps * 4) if se else 0.0
            e = apply_overflow(
                shift_round_code(exact_e, e_shift, error_rounding, u), e_min, e_max, overflow
            )
            e_out[j] = e
            if uses_e:
                a = mu * e
            else:
                a = mu * ((e > 0) - (e < 0))
            if a == 0:
                continue
            for i in range(taps):
                xi = xp[j + taps - 1 - i]
                if uses_x:
                    g = a * xi
                else:
                    g = a * ((xi > 0) - (xi < 0))
                if g == 0:
                    continue
                nonzero += 1
                u = counter_uniform(seed, base + i * 4 + 2) if su else 0.0
                du = shift_round_code(g, u_shift, update_rounding, u)
                if du == 0:
                    stalls += 1
                    continue
                du = apply_overflow(du, wa_min, wa_max, overflow)
                s = wacc[i] + du
                t = apply_overflow(s, wa_min, wa_max, overflow)
                if t != s:
                    saturated += 1
                wacc[i] = t
                u = counter_uniform(seed, base + i * 4 + 3) if sw else 0.0
                w[i] = apply_overflow(
                    shift_round_code(t, w_shift, weight_rounding, u), w_min, w_max, overflow
                )
        counts[0] += nonzero
        counts[1] += stalls
        counts[2] += saturated

    return run


@kernel
def lms_float_kernel(xp, d, w, mu, rule, y_out, e_out):
    """The float64 reference loop (no quantization): the float baseline."""
    taps = w.size
    for j in range(d.size):
        y = 0.0
        for i in range(taps):
            y += w[i] * xp[j + taps - 1 - i]
        y_out[j] = y
        e = d[j] - y
        e_out[j] = e
        if rule == 0 or rule == 2:
            a = mu * e
        else:
            a = mu * ((e > 0) - (e < 0))
        for i in range(taps):
            xi = xp[j + taps - 1 - i]
            if rule == 0 or rule == 1:
                w[i] += a * xi
            else:
                w[i] += a * ((xi > 0) - (xi < 0))
