"""The fixed-point LMS sample loop with torch ops (any device): the twin of
``hwsim.kernels.lms.lms_kernel``, equal to it bit for bit (weights, outputs,
errors and counts).

The same int64 arithmetic (``hwsim.torch_path.core``), vectorized over the
taps. It is slow on a CPU (tens of torch ops per sample) and serves as the
cross-check and the device path.
"""

from __future__ import annotations

import numpy as np
import torch

from hwsim.modes import Overflow, Rounding
from hwsim.plan.lms import (
    C_A_SHIFT,
    C_D_SHIFT,
    C_E_SHIFT,
    C_MU,
    C_P_SHIFT,
    C_U_SHIFT,
    C_W_SHIFT,
    C_Y_SHIFT,
    N_ROLES,
    ROLE_ACCUMULATE,
    ROLE_ERROR,
    ROLE_PRODUCT,
    ROLE_UPDATE,
    ROLE_WEIGHT,
    LMSFormats,
)
from hwsim.torch_path import core

STAGES = ("product", "accumulator", "error", "update", "weight")


def lms_run_torch(
    xp: np.ndarray,
    d: np.ndarray,
    start: int,
    weight_codes: np.ndarray,
    accumulator_codes: np.ndarray,
    cfg: np.ndarray,
    formats: LMSFormats,
    roundings: dict[str, Rounding],
    overflow: Overflow,
    seed: int,
    rule: str,
    device: torch.device,
):
    """Run the filter over one block; the arguments are those of the Numba
    kernel (``xp``: the K-1 previous input codes, then the block's; ``start``:
    the global index of the first sample) plus the formats and roundings.

    Returns ``(y codes, e codes, [nonzero, stalls, saturated], weight codes,
    accumulator codes, last K-1 input codes)``, all NumPy int64."""
    f, r, ov, dev = formats, roundings, overflow, device
    cfg = [int(v) for v in cfg]
    taps = weight_codes.size
    uses_e = rule in ("lms", "sign_data")
    uses_x = rule in ("lms", "sign_error")
    stochastic = any(r[k] == Rounding.STOCHASTIC for k in STAGES)
    xp = torch.as_tensor(xp, device=dev)
    d = d.tolist()
    w = torch.as_tensor(weight_codes, device=dev).clone()
    wacc = torch.as_tensor(accumulator_codes, device=dev).clone()
    y_out = np.empty(len(d), dtype=np.int64)
    e_out = np.empty(len(d), dtype=np.int64)
    nonzero = stalls = saturated = 0
    zeros = torch.zeros(taps + 1, N_ROLES, dtype=torch.float64, device=dev)
    for j in range(len(d)):
        n = start + j
        u = (
            core.counter_uniform(
                seed, (taps + 1) * N_ROLES, dev, offset=n * (taps + 1) * N_ROLES
            ).view(taps + 1, N_ROLES)
            if stochastic
            else zeros
        )
        xs = xp[j : j + taps].flip(0)  # x(n - i), i = 0 .. K-1
        p = core.shift_round_code(w * xs, cfg[C_P_SHIFT], r["product"], u[:taps, ROLE_PRODUCT])
        p = core.apply_overflow(p, f.product, ov)
        p = core.shift_round_code(p, cfg[C_A_SHIFT], r["accumulator"], u[:taps, ROLE_ACCUMULATE])
        p = core.apply_overflow(p, f.accumulator, ov)
        acc = _accumulate(p, f.accumulator, ov)
        y_out[j] = acc
        exact_e = torch.tensor([(d[j] << cfg[C_D_SHIFT]) - (acc << cfg[C_Y_SHIFT])], device=dev)
        e = core.shift_round_code(exact_e, cfg[C_E_SHIFT], r["error"], u[taps:, ROLE_ERROR])
        e = int(core.apply_overflow(e, f.error, ov)[0])
        e_out[j] = e
        a = cfg[C_MU] * (e if uses_e else (e > 0) - (e < 0))
        if a == 0:
            continue
        g = a * (xs if uses_x else torch.sign(xs))
        du = core.shift_round_code(g, cfg[C_U_SHIFT], r["update"], u[:taps, ROLE_UPDATE])
        moved = du != 0
        nonzero += int((g != 0).sum())
        stalls += int(((g != 0) & ~moved).sum())
        du = core.apply_overflow(du, f.weight_accumulator, ov)
        s = wacc + du
        t = core.apply_overflow(s, f.weight_accumulator, ov)
        saturated += int((moved & (t != s)).sum())
        wacc = torch.where(moved, t, wacc)
        wq = core.shift_round_code(t, cfg[C_W_SHIFT], r["weight"], u[:taps, ROLE_WEIGHT])
        w = torch.where(moved, core.apply_overflow(wq, f.weight, ov), w)
    history = xp[xp.numel() - (taps - 1) :] if taps > 1 else xp[:0]
    counts = np.array([nonzero, stalls, saturated], dtype=np.int64)
    return (
        y_out,
        e_out,
        counts,
        w.cpu().numpy().copy(),
        wacc.cpu().numpy().copy(),
        history.cpu().numpy().copy(),
    )


def _accumulate(p: torch.Tensor, fmt, overflow: Overflow, limit: int = 1 << 62) -> int:
    """The MAC accumulator over the taps in order, overflow after every add.

    When every partial sum stays inside the accumulator range, one cumulative
    sum is exact and equals the step-by-step one; otherwise step through."""
    if int(p.abs().max()) * p.numel() < limit:
        partial = torch.cumsum(p, 0)
        if int(partial.min()) >= fmt.min_code and int(partial.max()) <= fmt.max_code:
            return int(partial[-1])
    acc = torch.zeros((), dtype=torch.int64, device=p.device)
    for v in p:
        acc = core.apply_overflow(acc + v, fmt, overflow)
    return int(acc)
