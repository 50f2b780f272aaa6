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
from hwsim.plan.checks import (
    EXACT_FLOAT,
    EXACT_FLOAT32,
    float64_holds_codes,
    raise_non_finite_torch,
)
from hwsim.plan.gemm import (
    STAGE_LEFT,
    STAGE_NONE,
    STAGE_ROUND,
    blas_code_sums,
    broadcast_operands,
    check_grid_span,
    fast_chunk,
    float_sum_upper,
    plan_gemm,
    products_nonneg,
    squeeze_result,
    thin_product,
    use_fast_path,
)
from hwsim.torch_path.core import (
    apply_overflow,
    counter_uniform,
    counter_uniform_at,
    shift_round_code,
)
from hwsim.torch_path.residue import MAX_SHIFT, residue_sums, residue_tables


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
    stats=(None, None),
    float_sums: bool = False,
) -> torch.Tensor:
    """Codes of the MAC-array product of int64 codes ``ca`` (..., M, K), ``cb`` (..., K, N).
    ``stats``: the operands' (max |code|, min, max) where the caller knows them
    (each else takes reductions on the device and a sync). ``float_sums``:
    where the saturating fast path's float64 sums hold the codes exactly
    (``float64_holds_codes(acc)``), return them as integral float64, not int64 (a layer's
    step goes on in float64: no round trip through int64)."""
    if ca.device != cb.device:
        raise ValueError(f"operands are on different devices: {ca.device} and {cb.device}")
    ca, cb, squeeze, batch = broadcast_operands(ca, cb, torch)
    m, k = ca.shape[-2:]
    n = cb.shape[-1]
    bt = 1
    for size in batch:
        bt *= size
    if ca.dim() == cb.dim() == 2:  # one product: the fast path's BLAS call takes it as is
        a3, b3 = ca, cb
    else:
        a3 = ca.expand(batch + (m, k)).reshape(bt, m, k)
        b3 = cb.expand(batch + (k, n)).reshape(bt, k, n)
    sa, sb = stats
    if a3.numel() and b3.numel() and sa is not None and sb is not None:
        # read from the operands as given: broadcasting repeats, adds no code
        max_a, max_b = sa[0], sb[0]
        nonneg = products_nonneg(sa, sb)
    else:
        max_a = int(a3.abs().max()) if a3.numel() else 0
        max_b = int(b3.abs().max()) if b3.numel() else 0
        nonneg = True
        if a3.numel() and b3.numel():
            nonneg = bool((a3.min() >= 0) & (b3.min() >= 0)) or bool(
                (a3.max() <= 0) & (b3.max() <= 0)
            )
    plan = plan_gemm(fa, fb, max_a, max_b, nonneg, acc, product, overflow)

    def tight_bound() -> float:
        if a3.numel() == 0 or b3.numel() == 0:
            return 0.0
        return float(torch.matmul(a3.abs().to(torch.float64), b3.abs().to(torch.float64)).max())

    if use_fast_path(plan, path, k, overflow, tight_bound):
        fa3, fb3 = a3.to(torch.float64), b3.to(torch.float64)
        out, _ = blas_code_sums(fa3, fb3, fast_chunk(plan, overflow, k))
        saturating = overflow == Overflow.SATURATE
        if float_sums and saturating and out.dtype == torch.float64 and float64_holds_codes(acc):
            # exact: a power of two, the codes below 2^53; saturating (one chunk)
            out = out.mul_(2.0**plan.left_shift).clamp_(acc.min_code, acc.max_code)
        else:
            out = out.to(torch.int64)  # exact integers (chunked sums are int64 already)
            out = apply_overflow(out << plan.left_shift, acc, overflow)
    else:
        out = _sequential(
            a3.reshape(bt, m, k), b3.reshape(bt, k, n), plan, rounding, overflow, seed
        )
    return squeeze_result(out.reshape(batch + (m, n)), squeeze)


TERMS_PER_CHUNK = 1 << 21  # int64 terms formed at once by the vectorized MAC
# On the CPU a smaller chunk stays in cache: a LeNet conv (32x16x16 outputs,
# K = 150) took 13.4 ms in the k loop, 1.4 ms vectorized in chunks of 2^18
# terms (stochastic: 22.8 -> 10.9 ms); the loop wins only where a chunk
# would hold a few k.
CPU_TERMS_PER_CHUNK = 1 << 18
LOOP_ABOVE = 1 << 16  # CPU accumulators: from here the k loop


def _sequential(a3, b3, plan, rounding, overflow, seed) -> torch.Tensor:
    """The MAC array's codes. Every term (product, its product and accumulator
    stages) depends on its own k only, so the terms of a chunk of k are formed
    at once; the accumulation is the one sequential step. Under wrap it is
    addition modulo 2^wl, which any order gives; under saturate it equals the
    plain sum when no partial sum can leave the range (sum_k |t_k| within it),
    else the k loop runs."""
    batches, m, k = a3.shape
    n = b3.shape[2]
    acc_fmt = plan.accumulator
    reach = max(-acc_fmt.min_code, acc_fmt.max_code)  # largest |term| after its stages
    total = batches * m * n
    big = a3.device.type == "cpu" and total > LOOP_ABOVE
    if k <= 1 or total == 0 or big or k * reach >= 1 << 62:
        return _mac_loop(a3, b3, plan, rounding, overflow, seed)
    step = max(1, (CPU_TERMS_PER_CHUNK if a3.device.type == "cpu" else TERMS_PER_CHUNK) // total)
    exact = _float_terms_exact(plan, rounding, overflow, k * reach)
    a_codes, b_codes = a3, b3
    saturable = overflow == Overflow.SATURATE and k * plan.term_max > reach_of(acc_fmt)
    residues = exact and _by_residues(plan, rounding, m, n, a_codes)
    kc = _float32_chunk(plan) if exact else 0
    if exact and (saturable or residues or not kc):  # float64 codes: exact below 2^53
        a3, b3 = a3.to(torch.float64), b3.to(torch.float64)
    sums_dtype = torch.float64 if exact else a3.dtype
    sums = torch.zeros((batches, m, n), dtype=sums_dtype, device=a3.device)
    mags = None  # sum_k |t_k|, where neither the plan's term bound nor |a| @ |b| rules
    if saturable and not (exact and _sums_within(a3, b3, plan, k)):  # saturation out
        mags = torch.zeros_like(sums)
    if residues and mags is None:
        sums = residue_sums(a_codes, b_codes, a3, b3, plan.acc_shift, rounding)
        return sums.to(torch.int64)
    a_terms, b_terms = a3, b3
    if kc:  # float32 terms, half the bytes per pass: the same integers
        step = min(step, kc)
        a_terms = a_codes.to(torch.float32).mul_(2.0**-plan.acc_shift)
        b_terms = b_codes.to(torch.float32)
    elif exact:  # the grid move folded into a: a power of two, exact on every product
        a_terms = a3 * 2.0**-plan.acc_shift
    flat = None
    into, mags_into = sums, mags  # where each chunk's sums go (views of these)
    if rounding == Rounding.STOCHASTIC:
        flat = torch.arange(total, dtype=torch.int64, device=a3.device).reshape(batches, m, 1, n)
    elif thin_product(m, n):  # a broadcast multiply of short rows is slow
        m, n, into = n, m, sums.transpose(1, 2)
        a_terms, b_terms = b_terms.transpose(1, 2), a_terms.transpose(1, 2)
        mags_into = None if mags is None else mags.transpose(1, 2)
    # one buffer for every chunk's terms: a fresh large CPU tensor page-faults
    buffer = torch.empty(total * min(step, k), dtype=a_terms.dtype, device=a3.device)
    for k0 in range(0, k, step):
        k1 = min(k, k0 + step)
        t = buffer[: total * (k1 - k0)].view(batches, m, k1 - k0, n)
        torch.mul(a_terms[:, :, k0:k1, None], b_terms[:, None, k0:k1, :], out=t)  # (Bt, M, kc, N)

        def noise(stage: int, k0=k0, k1=k1):
            if flat is None:
                return None
            kk = torch.arange(k0, k1, dtype=torch.int64, device=a3.device).reshape(1, 1, -1, 1)
            return counter_uniform_at(seed, (2 * kk + stage) * total + flat)

        t = (
            _float_terms(t, plan, rounding, noise)
            if exact
            else _terms(t, plan, rounding, overflow, noise)
        )
        into += t.sum(2)
        if mags_into is not None:
            mags_into += t.abs().sum(2)
    if overflow == Overflow.WRAP:
        return apply_overflow(sums, acc_fmt, overflow)
    if mags is not None:
        bound = int(mags.max())
        if bound > acc_fmt.max_code or -bound < acc_fmt.min_code:
            return _mac_loop(a3.to(torch.int64), b3.to(torch.int64), plan, rounding, overflow, seed)
    return sums.to(torch.int64)  # no partial sum left the range


def _float32_chunk(plan) -> int:
    """How many k a float32 chunk of exact float terms takes (0: float64): every
    product, term and chunk sum of |terms| below 2^24, where float32 is exact."""
    top = plan.rounded_term_top
    if plan.max_product >= EXACT_FLOAT32 or top >= EXACT_FLOAT32:
        return 0
    return int(EXACT_FLOAT32 // top)


def _by_residues(plan, rounding, m: int, n: int, a_codes) -> bool:
    """Whether :func:`residue_sums` gives the terms' sum (no partial sum
    saturating, the caller has checked) and pays: terms rounded by a small
    shift with a rounding a residue decides, never clamped, every sum of
    products exact in float64, and outputs many against the operands (its
    lookups cost per operand element, the terms per output and k; the torch
    rows of ``benchmarks/train.py`` time it on the LeNet layers' shapes)."""
    batches, _, k = a_codes.shape
    if m * n < 10 * (m + n) or batches * m * n * k < 1 << 16:
        return False
    if plan.acc_stage != STAGE_ROUND or rounding not in (Rounding.NEAREST, Rounding.FLOOR):
        return False
    if plan.acc_shift > MAX_SHIFT or a_codes.dtype != torch.int64:
        return False
    if (
        k * plan.max_product >= EXACT_FLOAT
        or len(residue_tables(plan.acc_shift, rounding)[1][0]) > 8
    ):
        return False
    return plan.rounded_term_top <= reach_of(plan.accumulator)


def reach_of(acc: FixedPoint) -> int:
    """The largest |sum| no saturation touches: min(-min_code, max_code)."""
    return min(-acc.min_code, acc.max_code)


def _sums_within(a3, b3, plan, k: int) -> bool:
    """Whether ``sum_k |t_k|`` stays inside the accumulator's range for every
    output, from the float64 codes' ``|a| @ |b|`` (one BLAS call, not a pass
    over the terms): a term is at most its exact product on the accumulator
    grid plus 1 (rounding), and ``float_sum_upper`` bounds the exact sums of
    products from the float64 ones. False where that bound cannot tell."""
    top = float(torch.matmul(a3.abs(), b3.abs()).max())
    bound = float_sum_upper(top * 2.0**-plan.acc_shift, k) + k
    return bound <= reach_of(plan.accumulator)


_FLOAT_ROUNDINGS = (Rounding.NEAREST, Rounding.FLOOR, Rounding.ZERO, Rounding.STOCHASTIC)


def _float_terms_exact(plan, rounding, overflow, sum_bound: int) -> bool:
    """Whether float64 forms the terms and sums exactly: no product format,
    saturation, products and shifted terms and ``sum_bound`` below 2^53, and a
    rounding float64 does as the integer steps (half to even, floor, toward
    zero, up iff u < the dropped fraction)."""
    if plan.product_stage != STAGE_NONE or overflow != Overflow.SATURATE:
        return False
    if sum_bound >= EXACT_FLOAT or plan.max_product >= EXACT_FLOAT:
        return False
    if plan.acc_stage == STAGE_LEFT:
        return plan.max_product << -plan.acc_shift < EXACT_FLOAT
    return rounding in _FLOAT_ROUNDINGS


def _float_terms(t, plan, rounding, noise) -> torch.Tensor:
    """:func:`_terms` on exact float64 products already on the accumulator's
    scale (see ``_float_terms_exact``), in place where it can."""
    acc = plan.accumulator
    if plan.acc_stage != STAGE_LEFT:
        if rounding == Rounding.NEAREST:
            t.round_()
        elif rounding == Rounding.FLOOR:
            t.floor_()
        elif rounding == Rounding.ZERO:
            t.trunc_()
        else:
            f = torch.floor(t)
            t = f.add_(noise(1) < t.sub_(f))  # a bool adds as 0.0 or 1.0
    # a term past the range: only where the plan's largest term is
    top = plan.rounded_term_top
    if top > acc.max_code or -top < acc.min_code:
        t.clamp_(acc.min_code, acc.max_code)
    return t


def _terms(t, plan, rounding, overflow, noise) -> torch.Tensor:
    """The exact products ``t`` through the product and accumulator stages."""
    if plan.product_stage == STAGE_LEFT:
        t = apply_overflow(t << -plan.product_shift, plan.product, overflow)
    elif plan.product_stage == STAGE_ROUND:
        t = shift_round_code(t, plan.product_shift, rounding, noise(0))
        t = apply_overflow(t, plan.product, overflow)
    if plan.acc_stage == STAGE_LEFT:
        return apply_overflow(t << -plan.acc_shift, plan.accumulator, overflow)
    t = shift_round_code(t, plan.acc_shift, rounding, noise(1))
    return apply_overflow(t, plan.accumulator, overflow)


def _mac_loop(a3, b3, plan, rounding, overflow, seed) -> torch.Tensor:
    """One k at a time, the accumulator's overflow after every addition."""
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
