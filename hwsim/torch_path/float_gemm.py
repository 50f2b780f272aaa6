"""The MAC-array GEMM with a floating-point accumulator on torch tensors (any
device): ``hwsim.kernels.float_gemm`` (read its docstring) step for step, a
loop over k of elementwise float64/int64 ops on the whole (batch, M, N) tile
of accumulators, bit-identical to the Numba kernel."""

from __future__ import annotations

import torch

from hwsim.kernels.float_quantize import ABS_MASK, INF_BITS, FloatParams
from hwsim.modes import Rounding
from hwsim.torch_path.core import counter_uniform
from hwsim.torch_path.float_quantize import quantize_bits


def _from_bits(bits: torch.Tensor) -> torch.Tensor:
    return bits.view(torch.float64)


def _bits(v: torch.Tensor) -> torch.Tensor:
    return v.contiguous().view(torch.int64)


def grid_neighbours(b: torch.Tensor, p: FloatParams):
    """``hwsim.kernels.float_gemm.grid_neighbours`` on int64 tensors."""
    lo_n = b & p.keep_mask
    hi_n = lo_n + (1 << p.shift)
    k = torch.floor(_from_bits(b) * p.up_a * p.up_b)
    lo_s = _bits(k * p.down_a * p.down_b)
    hi_s = _bits((k + 1.0) * p.down_a * p.down_b)
    normal = b >= p.min_normal_bits
    return torch.where(normal, lo_n, lo_s), torch.where(normal, hi_n, hi_s)


def add_round(acc, t, p: FloatParams, rounding: Rounding, u, man52: bool):
    """``hwsim.kernels.float_gemm.add_round`` on float64 tensors."""
    s = acc + t
    bb = s - acc
    err = (acc - (s - bb)) + (t - bb)
    sbits = _bits(s)
    a = sbits & ABS_MASK
    negative = s < 0
    toward = (err < 0) != negative
    e_abs = err.abs()
    b = torch.where(toward & (a > 0), a - 1, a)
    lo, hi = grid_neighbours(b, p)
    lo_v = _from_bits(lo)
    q = _from_bits(hi) - lo_v
    if rounding == Rounding.ZERO:
        r = lo
    elif rounding == Rounding.FLOOR:
        r = torch.where(negative, hi, lo)
    elif rounding == Rounding.STOCHASTIC:
        e = torch.where(toward, -e_abs, e_abs)
        r = torch.where(u * q - (_from_bits(a) - lo_v) < e, hi, lo)
    else:
        r = torch.where(_from_bits(b) >= lo_v + 0.5 * q, hi, lo)
        if man52:
            grid64 = a
            if rounding == Rounding.NEAREST_AWAY:
                ulp = _from_bits(b + 1) - _from_bits(b)
                grid64 = torch.where(e_abs == 0.5 * ulp, b + 1, a)
            r = torch.where(b >= p.min_normal_bits, grid64, r)
    r = torch.where(a >= INF_BITS, a, r)  # a finite sum past 2^1024: an overflow
    if rounding == Rounding.ZERO or p.saturate:
        big = torch.full_like(r, p.max_bits)
    elif rounding == Rounding.FLOOR:
        big = torch.where(negative, p.over_bits, torch.full_like(r, p.max_bits))
    else:
        big = torch.full_like(r, p.over_bits)
    r = torch.where(r > p.max_bits, big, r)
    if p.ftz:
        r = torch.where(r < p.min_normal_bits, 0, r)
    inexact = torch.copysign(_from_bits(r), s)
    exact = quantize_bits(s, p, rounding, u)
    out = torch.where((err == 0) & (a < INF_BITS), exact, inexact)
    sa, st = _bits(acc) < 0, _bits(t) < 0
    minus = (sa & st) | ((sa | st) if rounding == Rounding.FLOOR else False)
    zero = torch.where(minus, -0.0, torch.zeros_like(s))
    out = torch.where(a == 0, zero, out)
    finite = torch.isfinite(acc) & torch.isfinite(t)
    special = quantize_bits(s, p, rounding, u)
    invalid = (
        s.isnan() & ~acc.isnan() & ~t.isnan()
    )  # Inf - Inf: a quiet NaN, the accumulator's sign
    nan = torch.copysign(torch.full_like(s, float("nan")).abs(), acc)
    special = torch.where(invalid, nan, special)
    special = torch.where(t.isnan(), t, special)
    special = torch.where(acc.isnan(), acc, special)
    return torch.where(finite, out, special)


def float_gemm(a3, b3, product_params, acc_params, rounding: Rounding, seed, man52: bool):
    """Values of the MAC-array product of float64 ``a3`` (Bt, M, K) and ``b3``
    (Bt, K, N) with a float accumulator (``acc_params``) and an optional float
    product format (``product_params`` or None)."""
    batches, m, k = a3.shape
    n = b3.shape[2]
    acc = torch.zeros((batches, m, n), dtype=torch.float64, device=a3.device)
    total = acc.numel()
    stochastic = rounding == Rounding.STOCHASTIC

    def noise(kk: int, stage: int):
        if not stochastic:
            return None
        u = counter_uniform(seed, total, device=a3.device, offset=(3 * kk + stage) * total)
        return u.reshape(acc.shape)

    for kk in range(k):
        t = a3[:, :, kk : kk + 1] * b3[:, kk : kk + 1, :]
        if product_params is not None:
            t = quantize_bits(t.contiguous(), product_params, rounding, noise(kk, 0))
        t = quantize_bits(t.contiguous(), acc_params, rounding, noise(kk, 1))
        acc = add_round(acc, t, acc_params, rounding, noise(kk, 2), man52)
    return acc
