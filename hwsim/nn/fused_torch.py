"""The torch-backend twins of :mod:`hwsim.nn.fused`'s per-tensor steps: the
same bits as the unfused chain (``hwsim.quantize`` then ``grid_codes``; codes
plus bias, their float32 values, then ``hwsim.quantize``), on the tensors'
device with torch ops, without the autograd nodes and argument checks of each
quantizer.

Where float64 holds every code exactly (``Quant.float_codes``: saturate,
``wl <= 52``) a step rounds, clamps and adds in float64 on one owned
temporary, with the ops of ``hwsim.torch_path.core`` in their order (same
bits) and without its per-call checks: at a layer's batch sizes each op and
each conversion costs more than its arithmetic. Anything else runs the
general torch-path functions.
"""

from __future__ import annotations

import math

import torch

from hwsim.modes import Overflow, Rounding
from hwsim.plan.checks import float64_holds_codes, fresh_seed, seed64
from hwsim.torch_path.core import (
    apply_overflow,
    code_to_value,
    round_scaled_,
    scaled_to_code_float,
)
from hwsim.torch_path.gemm import batched_gemm
from hwsim.torch_path.quantize import CHUNK, counter_uniforms, quantize_torch, stochastic_noise

_MASK64 = (1 << 64) - 1
_FAR = 1 << 62  # above every code's lowest set bit (|code| < 2^62: wl <= MAX_WL = 62)


def _noise(t: torch.Tensor, q, seed):
    """The uniforms of ``q``'s stochastic rounding of ``t`` (None: not
    stochastic). ``seed``: an int, None, or the uniforms themselves (from
    :func:`noises`)."""
    if not q.stochastic:
        return None
    if isinstance(seed, torch.Tensor):
        return seed.view(t.shape)
    return stochastic_noise(t, seed)


def _scaled(t: torch.Tensor, q) -> torch.Tensor:
    """``t * 2^fl`` in a new float64 tensor (a saturating format with
    ``fl`` of any sign: a float32 value times 2^fl cannot underflow float64)."""
    return t.detach().to(torch.float64, copy=True).mul_(q.constants[0])


def _rounded(t: torch.Tensor, q, seed) -> torch.Tensor:
    """``t * 2^fl`` rounded by ``q`` (``round_scaled_``), not yet clamped; a
    non-finite ``t`` stays non-finite. Only the codes matter to the caller
    (not the sign of a zero), so values all on the grid, which no noise
    changes, draw none (e.g. a gradient the next layer's backward already
    quantized)."""
    s = _scaled(t, q)
    if q.stochastic and not bool((s != torch.floor(s)).any()):  # NaN: != itself
        return s
    return round_scaled_(s, q.rounding, _noise(t, q, seed))


def noises(like: torch.Tensor, *requests) -> list:
    """What :func:`finish` takes as ``seed`` for each request ``(q, seed, numel)``
    (or None): the seed itself, or where two or more quantizers round
    stochastically on the lean path, their counter noise drawn at once
    (``counter_uniforms``: one pass of the hash for all)."""
    out = [None if r is None else r[1] for r in requests]
    todo = [
        j for j, r in enumerate(requests)
        if r is not None and r[0].stochastic and r[0].float_codes and 0 < r[2] <= CHUNK
    ]  # fmt: skip
    if len(todo) < 2:
        return out
    keys = [(fresh_seed() if out[j] is None else seed64(out[j]), requests[j][2], 0) for j in todo]
    for j, u in zip(todo, counter_uniforms(keys, like.device), strict=True):
        out[j] = u
    return out


def _lean(t: torch.Tensor, q) -> bool:
    return q.float_codes and 0 < t.numel() <= CHUNK


def codes(t: torch.Tensor, q, seed):
    """(codes, fl, stats) of ``t`` quantized by ``q``, on the coarsest grid (as
    ``grid_codes`` finds it from the quantized float32 values); stats =
    (max |code|, min, max), 0 included, as the GEMM's plan takes them. None
    on a non-finite value (the caller runs the unfused quantizer, which raises)."""
    if not _lean(t, q):
        return _codes(
            quantize_torch(t.detach(), q.fmt, q.rounding, q.overflow, seed=seed, codes=True), q
        )
    r = _rounded(t, q, seed)
    lo, hi = (float(v) for v in torch.aminmax(r))  # NaN or +-Inf: a non-finite input
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    fmt = q.fmt
    lo = min(int(max(lo, fmt.min_code)), fmt.max_code, 0)  # the clamp's, 0 included
    hi = max(int(min(hi, fmt.max_code)), fmt.min_code, 0)
    return _coarsest(r.clamp_(fmt.min_code, fmt.max_code).to(torch.int64), fmt.fl, lo, hi)


def _codes(c: torch.Tensor, q):
    """:func:`codes` of the int64 codes ``c`` of ``q``'s format (owned: shifted in place)."""
    lo, hi = (int(v) for v in torch.aminmax(c)) if c.numel() else (0, 0)
    return _coarsest(c, q.fmt.fl, min(lo, 0), max(hi, 0))


def _coarsest(c: torch.Tensor, fl: int, lo: int, hi: int):
    """(codes, fl, stats) of the int64 codes ``c`` on the grid of ``fl``
    fractional bits, moved to the coarsest grid that holds them (the fewest
    trailing zeros among the nonzero codes; ``c`` shifted in place); ``lo``,
    ``hi``: the codes' min and max, 0 included. All zero: fl 0."""
    if lo == hi == 0:
        return c, 0, (0, 0, 0)
    tz = 0
    if not int((c & 1).max()):  # every code even: the coarsest grid is coarser
        low = c & -c  # each code's lowest set bit (0 for code 0)
        tz = int(torch.where(low > 0, low, _FAR).min()).bit_length() - 1
        c >>= tz
        lo, hi = lo >> tz, hi >> tz
    return c, fl - tz, (max(-lo, hi), lo, hi)


def finish(acc_codes, mac, q, seed, bias=None, inner=1) -> torch.Tensor:
    """Accumulator codes (int64, or integral float64 that this step may
    overwrite, as :func:`gemm` gives them; plus the bias codes
    ``bias[(i // inner) % len]``) to their float32 values, quantized by ``q``
    (``seed``: as :func:`noises` gives it)."""
    a = mac.acc
    # |value| < 2^(wl - fl): finite in float32 up to 2^127 (else the check raises, as unfused)
    finite = a.wl - a.fl <= 127
    lean = float64_holds_codes(a) and mac.overflow == Overflow.SATURATE and _lean(acc_codes, q)
    if not (finite and lean):
        return _finish(acc_codes, mac, q, seed, bias, finite)
    v = acc_codes.to(torch.float64)
    if bias is not None:  # (1, -1) on a linear layer's codes, (1, -1, 1, 1) on a conv's
        shape = (1, -1) + (1,) * (acc_codes.dim() - 2)
        v.add_(bias.reshape(shape)).clamp_(a.min_code, a.max_code)
    y = v.mul_(a.lsb).to(torch.float32)  # the accumulator's values, as the unfused layer's
    fmt = q.fmt
    r = scaled_to_code_float(
        _scaled(y, q), fmt, q.rounding, q.overflow, _noise(y, q, seed), inplace=True
    )
    return r.mul_(fmt.lsb).to(torch.float32)


def finish_split(acc_codes, mac, q, seed_w, seed_b):
    """:func:`finish` of a weight-and-bias GEMM's codes (R, C + 1): the
    first C columns with ``seed_w``, the last with ``seed_b``. One pass where
    no noise or both noises are drawn already (:func:`noises`): element
    (r, j) then rounds with the uniform its own pass would have taken."""
    rows, cols = acc_codes.shape[0], acc_codes.shape[1] - 1
    drawn = isinstance(seed_w, torch.Tensor) and isinstance(seed_b, torch.Tensor)
    if drawn or not q.stochastic:
        u = torch.cat([seed_w.view(rows, cols), seed_b.view(rows, 1)], dim=1) if drawn else None
        out = finish(acc_codes, mac, q, u)
        return out[:, :-1].contiguous(), out[:, -1].contiguous()
    w = finish(acc_codes[:, :-1].contiguous(), mac, q, seed_w)
    return w, finish(acc_codes[:, -1].contiguous(), mac, q, seed_b)


def _finish(acc_codes, mac, q, seed, bias, finite) -> torch.Tensor:
    if bias is not None:
        shape = (1, -1) + (1,) * (acc_codes.dim() - 2)
        acc_codes = apply_overflow(acc_codes + bias.reshape(shape), mac.acc, mac.overflow)
    v = code_to_value(acc_codes, mac.acc, torch.float32)
    if isinstance(seed, torch.Tensor):  # uniforms from noises()
        u = seed.view(v.shape)
        return quantize_torch(v, q.fmt, q.rounding, q.overflow, noise=u, finite=finite)
    return quantize_torch(v, q.fmt, q.rounding, q.overflow, seed=seed, finite=finite)


def bias_codes(b: torch.Tensor, plan, seeds):
    """The bias quantized to the weight format, then to accumulator codes with
    the forward MAC array's rounding (``_add_bias_codes``); None on a
    non-finite value."""
    w, mac = plan.w, plan.forward
    a = mac.acc
    seed = seeds[10]
    if seed is not None:
        seed = (seed + 7) & _MASK64
    lean = float64_holds_codes(a) and mac.overflow == Overflow.SATURATE and _lean(b, w)
    if lean and a.fl >= w.fmt.fl:
        s = _scaled(b, w)
        if not math.isfinite(float(s.sum())):
            return None
        r = scaled_to_code_float(
            s, w.fmt, w.rounding, w.overflow, _noise(b, w, seeds[4]), inplace=True
        )
        # a weight code rescaled to the finer accumulator grid is exact: every rounding
        # leaves it (nearest draws no noise); the accumulator's clamp remains
        r.mul_(2.0 ** (a.fl - w.fmt.fl))
        return scaled_to_code_float(r, a, Rounding.NEAREST, mac.overflow, inplace=True)
    v = quantize_torch(b.detach(), w.fmt, w.rounding, w.overflow, seed=seeds[4])
    return quantize_torch(
        v, a, mac.rounding, mac.overflow, seed=seed, codes=True, finite=True
    )  # v: quantized values of a finite bias


def gemm(mac, a, b, seed):
    """Accumulator codes of a @ b, operands as (codes, fl, stats): int64, or
    integral float64 (the fast path's sums, for :func:`finish`)."""
    return batched_gemm(
        a[0], a[1], b[0], b[1], mac.acc, mac.product, mac.rounding, mac.overflow, seed,
        "auto", (a[2], b[2]), float_sums=True,
    )  # fmt: skip
