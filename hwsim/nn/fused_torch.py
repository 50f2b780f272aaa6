"""The torch-backend twins of :mod:`hwsim.nn.fused`'s per-tensor steps: the
same bits as the unfused chain (``hwsim.quantize`` then ``grid_codes``; codes
plus bias, their float32 values, then ``hwsim.quantize``), on the tensors'
device with torch ops, without the autograd nodes and argument checks of each
quantizer."""

from __future__ import annotations

import torch

from hwsim.torch_path.core import apply_overflow, code_to_value
from hwsim.torch_path.gemm import batched_gemm
from hwsim.torch_path.quantize import quantize_torch

_MASK64 = (1 << 64) - 1


def codes(t: torch.Tensor, q, seed):
    """(codes, fl, stats) of ``t`` quantized by ``q``, on the coarsest grid (as
    ``grid_codes`` finds it from the quantized float32 values); stats =
    (max |code|, min, max), 0 included, as the GEMM's plan takes them."""
    c = quantize_torch(t.detach(), q.fmt, q.rounding, q.overflow, seed=seed, codes=True)
    low = c & -c  # each code's lowest set bit (0 for code 0)
    top = int(low.max()) if c.numel() else 0
    if top == 0:  # all zero
        return torch.zeros(c.shape, dtype=torch.int64, device=c.device), 0, (0, 0, 0)
    # the coarsest grid: the fewest trailing zeros among nonzero codes
    finest = int(torch.where(low > 0, low, top).min())
    tz = finest.bit_length() - 1
    lo, hi = (int(v) for v in torch.aminmax(c))
    lo, hi = min(lo, 0) >> tz, max(hi, 0) >> tz
    return (c >> tz if tz else c), q.fmt.fl - tz, (max(-lo, hi), lo, hi)


def finish(acc_codes, mac, q, seed, bias=None, inner=1) -> torch.Tensor:
    """Accumulator codes (plus the bias codes ``bias[(i // inner) % len]``) to
    their float32 values, quantized by ``q``."""
    if bias is not None:  # (1, -1) on a linear layer's codes, (1, -1, 1, 1) on a conv's
        shape = (1, -1) + (1,) * (acc_codes.dim() - 2)
        acc_codes = apply_overflow(acc_codes + bias.reshape(shape), mac.acc, mac.overflow)
    v = code_to_value(acc_codes, mac.acc, torch.float32)
    # |value| < 2^(wl - fl): finite in float32 up to 2^127 (else the check raises, as unfused)
    finite = mac.acc.wl - mac.acc.fl <= 127
    return quantize_torch(v, q.fmt, q.rounding, q.overflow, seed=seed, finite=finite)


def bias_codes(b: torch.Tensor, plan, seeds):
    """The bias quantized to the weight format, then to accumulator codes with
    the forward MAC array's rounding (``_add_bias_codes``)."""
    w, mac = plan.w, plan.forward
    v = quantize_torch(b.detach(), w.fmt, w.rounding, w.overflow, seed=seeds[4])
    seed = seeds[10]
    if seed is not None:
        seed = (seed + 7) & _MASK64
    return quantize_torch(
        v, mac.acc, mac.rounding, mac.overflow, seed=seed, codes=True, finite=True
    )  # v: quantized values of a finite bias


def gemm(mac, a, b, seed):
    """Accumulator codes of a @ b, operands as (codes, fl, stats)."""
    return batched_gemm(
        a[0], a[1], b[0], b[1], mac.acc, mac.product, mac.rounding, mac.overflow, seed, "auto",
        (a[2], b[2]),
    )  # fmt: skip
