"""The MAC-array GEMM with torch ops, on any device: the reference path.

Same plan (``hwsim.plan.gemm.plan_gemm``) and the same integer steps as
``hwsim.kernels.gemm``; the sequential path is a loop over k of elementwise
int64 ops on the whole (batch, M, N) tile of accumulators, and the fast path is
float64 ``torch.matmul`` on the codes (exact below 2^53, cuBLAS included).
"""

from __future__ import annotations

import torch

from hwsim.formats import FixedPoint, FloatingPoint
from hwsim.modes import Overflow, Rounding
from hwsim.plan.checks import raise_non_finite_torch
from hwsim.plan.gemm import (
    STAGE_LEFT,
    STAGE_ROUND,
    blas_code_sums,
    broadcast_operands,
    check_grid_span,
    fast_chunk,
    plan_gemm,
    squeeze_result,
    use_fast_path,
)
from hwsim.torch_path.core import apply_overflow, counter_uniform, shift_round_code


def grid_codes(x: torch.Tensor, name: str) -> tuple[torch.Tensor, int]:
    """(int64 codes, fl) with ``x == codes * 2^-fl`` exactly, smallest fl."""
    if x.dtype == torch.bool or x.is_complex():
        raise ValueError(f"{name} must be a real float or integer tensor, got dtype {x.dtype}")
    x = x.detach()
    if not x.is_floating_point():
        return x.to(torch.int64).contiguous(), 0
    f = x.to(torch.float64)
    if not bool(torch.isfinite(f).all()):
        raise_non_finite_torch(f)
    nz = f[f != 0]
    if nz.numel() == 0:
        return torch.zeros(f.shape, dtype=torch.int64, device=f.device), 0
    m, e = torch.frexp(nz)
    mant = torch.ldexp(m, torch.tensor(53.0, dtype=torch.float64, device=f.device))
    mant = mant.to(torch.int64)
    low = mant & -mant
    tz = torch.frexp(low.to(torch.float64)).exponent - 1
    fl = int((53 - e - tz).max())
    check_grid_span(int(e.max()) + fl, fl, name)
    scale = torch.tensor(float(fl), dtype=torch.float64, device=f.device)
    return torch.ldexp(f, scale).to(torch.int64), fl


def operand_codes(x, fmt: FixedPoint | None, name, rounding, overflow, seed):
    if fmt is None:
        return grid_codes(x, name)
    if isinstance(fmt, FloatingPoint):  # float operands into a fixed-point accumulator
        from hwsim.torch_path.float_quantize import quantize_float_torch

        values = quantize_float_torch(x.detach().to(torch.float64), fmt, rounding, seed=seed)
        return grid_codes(values, name)
    from hwsim.torch_path.quantize import quantize_torch

    return quantize_torch(x.detach(), fmt, rounding, overflow, seed=seed, codes=True), fmt.fl


def batched_gemm(
    ca: torch.Tensor,
    fa: int,
    cb: torch.Tensor,
    fb: int,
    acc: FixedPoint,
    product: FixedPoint | None,
    rounding: Rounding,
    overflow: Overflow,
    seed,
    path: str,
) -> torch.Tensor:
    """Codes of the MAC-array product of int64 codes ``ca`` (..., M, K), ``cb`` (..., K, N)."""
    if ca.device != cb.device:
        raise ValueError(f"operands are on different devices: {ca.device} and {cb.device}")
    ca, cb, squeeze, batch = broadcast_operands(ca, cb, torch)
    m, k = ca.shape[-2:]
    n = cb.shape[-1]
    bt = 1
    for size in batch:
        bt *= size
    a3 = ca.expand(batch + (m, k)).reshape(bt, m, k)
    b3 = cb.expand(batch + (k, n)).reshape(bt, k, n)
    max_a = int(a3.abs().max()) if a3.numel() else 0
    max_b = int(b3.abs().max()) if b3.numel() else 0
    nonneg = True
    if a3.numel() and b3.numel():
        nonneg = bool((a3.min() >= 0) & (b3.min() >= 0)) or bool((a3.max() <= 0) & (b3.max() <= 0))
    plan = plan_gemm(fa, fb, max_a, max_b, nonneg, acc, product, overflow)

    def tight_bound() -> float:
        if a3.numel() == 0 or b3.numel() == 0:
            return 0.0
        return float(torch.matmul(a3.abs().to(torch.float64), b3.abs().to(torch.float64)).max())

    if use_fast_path(plan, path, k, overflow, tight_bound):
        fa3, fb3 = a3.to(torch.float64), b3.to(torch.float64)
        out, _ = blas_code_sums(fa3, fb3, fast_chunk(plan, overflow, k))
        out = out.to(torch.int64)  # exact integers (chunked sums are int64 already)
        out = apply_overflow(out << plan.left_shift, acc, overflow)
    else:
        out = _sequential(a3, b3, plan, rounding, overflow, seed)
    return squeeze_result(out.reshape(batch + (m, n)), squeeze)


def _sequential(a3, b3, plan, rounding, overflow, seed) -> torch.Tensor:
    batches, m, k = a3.shape
    n = b3.shape[2]
    acc = torch.zeros((batches, m, n), dtype=torch.int64, device=a3.device)
    total = acc.numel()
    stochastic = rounding == Rounding.STOCHASTIC

    def noise(k_index: int, stage: int):
        if not stochastic:
            return None
        u = counter_uniform(seed, total, device=a3.device, offset=(2 * k_index + stage) * total)
        return u.reshape(acc.shape)

    for kk in range(k):
        t = a3[:, :, kk : kk + 1] * b3[:, kk : kk + 1, :]
        if plan.product_stage == STAGE_LEFT:
            t = apply_overflow(t << -plan.product_shift, plan.product, overflow)
        elif plan.product_stage == STAGE_ROUND:
            t = apply_overflow(
                shift_round_code(t, plan.product_shift, rounding, noise(kk, 0)),
                plan.product,
                overflow,
            )
        if plan.acc_stage == STAGE_LEFT:
            t = apply_overflow(t << -plan.acc_shift, plan.accumulator, overflow)
        else:
            t = apply_overflow(
                shift_round_code(t, plan.acc_shift, rounding, noise(kk, 1)),
                plan.accumulator,
                overflow,
            )
        acc = apply_overflow(acc + t, plan.accumulator, overflow)
    return acc
