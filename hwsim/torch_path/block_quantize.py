"""Block-scaled quantization on torch tensors (any device).

The arithmetic of ``hwsim.kernels.block_quantize`` (read its docstring) with
tensor ops: the input as ``(outer, length, inner)``, the length padded with
zeros to whole blocks (zeros leave a block's amax alone), the amax and its
exponent (``frexp``, exact) per block, and every element through the torch
twin of its element quantizer (``scaled_to_code_float`` for fixed-point
elements, ``quantize_bits`` for float elements), so results are bit-identical
to the Numba kernels.
"""

from __future__ import annotations

import torch

from hwsim.formats import FixedPoint
from hwsim.formats.block import MX, BlockFloatingPoint
from hwsim.kernels.block_quantize import SCALE_EMAX, SCALE_EMIN, block_plan
from hwsim.kernels.float_quantize import float_params
from hwsim.modes import Overflow, Rounding
from hwsim.plan.checks import raise_non_finite_torch
from hwsim.torch_path.core import TINY, scaled_to_code_float
from hwsim.torch_path.float_quantize import quantize_bits


def pow2(e: torch.Tensor) -> torch.Tensor:
    """2^e, exactly, for int64 ``e`` in [-1022, 1023] (built from the bits)."""
    return ((e + 1023) << 52).view(torch.float64)


def quantize_block_torch(
    x: torch.Tensor, fmt: BlockFloatingPoint | MX, rounding: Rounding, *, seed=None, noise=None
) -> torch.Tensor:
    """``x`` rounded to ``fmt`` in ``x``'s dtype (integers become float64)."""
    from hwsim.torch_path.quantize import stochastic_noise

    if x.is_complex():
        raise ValueError(f"quantize takes real tensors, got dtype {x.dtype}")
    out_dtype = x.dtype if x.is_floating_point() else torch.float64
    plan = block_plan(fmt, tuple(x.shape))
    u = stochastic_noise(x, seed, noise) if rounding == Rounding.STOCHASTIC else None
    v = x.detach().to(torch.float64).reshape(-1)
    finite = torch.isfinite(v)
    if not plan.mx and not bool(finite.all()):
        raise_non_finite_torch(x)
    nb = -(-plan.length // plan.block) if plan.length else 0
    pad = nb * plan.block - plan.length

    def blocks(t: torch.Tensor) -> torch.Tensor:
        """(outer, nb, block, inner) view of a flat tensor, zero-padded."""
        t = t.reshape(plan.outer, plan.length, plan.inner)
        if pad:
            t = torch.nn.functional.pad(t, (0, 0, 0, pad))
        return t.reshape(plan.outer, nb, plan.block, plan.inner)

    vb = blocks(v)
    fin = ~blocks(~finite)  # padding is finite
    amax = torch.where(fin, vb.abs(), 0.0).amax(dim=2, keepdim=True)
    exponent = torch.frexp(amax).exponent.to(torch.int64) - 1 - plan.emax_element
    e = torch.where(amax == 0, SCALE_EMIN, exponent.clamp(min=SCALE_EMIN))
    nan_block = None
    if plan.mx:
        nan_block = (e > SCALE_EMAX) | ~fin.all(dim=2, keepdim=True)
    e = e.clamp(max=SCALE_EMAX)
    ub = None if u is None else blocks(u.reshape(-1))
    if plan.float_element is not None:
        scaled = vb * pow2(-e)
        q = quantize_bits(scaled, float_params(plan.float_element), rounding, ub) * pow2(e)
    else:
        s = vb * pow2(plan.elem_fl - e)
        # a product that underflows keeps the sign of the tiny value, as scale_value does
        s = torch.where((s == 0) & (vb != 0), torch.copysign(torch.full_like(s, TINY), vb), s)
        element = FixedPoint(_wl(plan), 0)
        codes = scaled_to_code_float(s, element, rounding, Overflow.SATURATE, ub, inplace=True)
        q = codes * pow2(e - plan.elem_fl)
    if nan_block is not None:
        q = torch.where(nan_block, torch.nan, q)
    q = q.reshape(plan.outer, nb * plan.block, plan.inner)[:, : plan.length]
    return q.reshape(x.shape).to(out_dtype)


def _wl(plan) -> int:
    """The elements' word length from their code range."""
    return (plan.max_code + 1).bit_length()
