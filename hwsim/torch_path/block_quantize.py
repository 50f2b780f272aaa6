"""Block-scaled quantization on torch tensors (any device).

The arithmetic of ``hwsim.kernels.block_quantize`` (read its docstring) with
tensor ops, in two steps:

1. the blocks' exponents: magnitudes in the input's own dtype (``abs`` and
   ``amax`` are exact in any dtype) as ``(outer, length, inner)``, the length
   zero-padded to whole blocks (zeros leave a block's amax alone), ``amax``
   per block and its exponent (``frexp``, exact), clamped or NaN as the kernels;
2. the elements, :data:`CHUNK` at a time in flat order (bounded float64
   temporaries): each element finds its block's exponent by index arithmetic
   and goes through the torch twin of its element quantizer
   (``scaled_to_code_float`` for fixed-point elements, ``quantize_bits`` for
   float elements), so results are bit-identical to the Numba kernels.
"""

from __future__ import annotations

import torch

from hwsim.formats import FixedPoint
from hwsim.formats.block import MX, BlockFloatingPoint
from hwsim.kernels.block_quantize import SCALE_EMAX, SCALE_EMIN, BlockPlan, block_plan
from hwsim.kernels.float_quantize import float_params
from hwsim.modes import Overflow, Rounding
from hwsim.plan.checks import raise_non_finite_torch
from hwsim.torch_path.core import TINY, scaled_to_code_float
from hwsim.torch_path.float_quantize import quantize_bits

CHUNK = 1 << 22  # elements per pass of step 2


def pow2(e: torch.Tensor) -> torch.Tensor:
    """2^e, exactly, for int64 ``e`` in [-1022, 1023] (built from the bits)."""
    return ((e + 1023) << 52).view(torch.float64)


def block_exponents(x: torch.Tensor, plan: BlockPlan, finite: torch.Tensor | None):
    """Flat int64 exponents of the blocks (column order: outer, block, inner)
    and, for MX, which blocks are NaN (None when none can be)."""
    nb = -(-plan.length // plan.block)
    pad = nb * plan.block - plan.length

    def blocks(t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(plan.outer, plan.length, plan.inner)
        if pad:
            t = torch.nn.functional.pad(t, (0, 0, 0, pad))
        return t.reshape(plan.outer, nb, plan.block, plan.inner)

    mag = x.detach().abs()
    if finite is not None:
        mag = torch.where(finite, mag, 0)
    amax = blocks(mag).amax(dim=2).reshape(-1).to(torch.float64)
    e = torch.frexp(amax).exponent.to(torch.int64) - 1 - plan.emax_element
    e = torch.where(amax == 0, SCALE_EMIN, e.clamp(min=SCALE_EMIN))
    nan_blocks = None
    if plan.mx:
        nan_blocks = e > SCALE_EMAX
        if finite is not None:
            nan_blocks |= blocks(~finite).any(dim=2).reshape(-1)  # padding is finite
    return e.clamp(max=SCALE_EMAX), nan_blocks


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
    flat = x.detach().reshape(-1)
    if not flat.is_floating_point():
        flat = flat.to(torch.float64)
    finite = torch.isfinite(flat)
    if bool(finite.all()):
        finite = None
    elif not plan.mx:
        raise_non_finite_torch(x)
    exps, nan_blocks = block_exponents(flat, plan, finite)
    if nan_blocks is not None and not bool(nan_blocks.any()):
        nan_blocks = None
    out = torch.empty(flat.shape, dtype=out_dtype, device=x.device)
    u_flat = None if u is None else u.reshape(-1)
    for start in range(0, flat.numel(), CHUNK):
        stop = min(start + CHUNK, flat.numel())
        col = _columns(start, stop, plan, x.device)
        e = exps if col is None else exps[col]
        v = flat[start:stop].to(torch.float64)
        uc = None if u_flat is None else u_flat[start:stop]
        q = _elements(v, e, plan, rounding, uc, tiny=x.dtype == torch.float64)
        if nan_blocks is not None:
            q = torch.where(nan_blocks if col is None else nan_blocks[col], torch.nan, q)
        out[start:stop] = q
    return out.reshape(x.shape)


def _columns(start: int, stop: int, plan: BlockPlan, device) -> torch.Tensor | None:
    """The block (column) index of flat elements start..stop-1; None when the
    tensor is one block."""
    nb = -(-plan.length // plan.block)
    if plan.outer * nb * plan.inner == 1:
        return None
    k = torch.arange(start, stop, device=device)
    if plan.inner == 1 and plan.length % plan.block == 0:
        return k // plan.block  # whole blocks along the last axis: consecutive runs
    row = k // plan.inner
    col = ((row // plan.length) * nb + (row % plan.length) // plan.block) * plan.inner
    return col.add_(k % plan.inner)


def _elements(v, e, plan: BlockPlan, rounding: Rounding, u, tiny: bool) -> torch.Tensor:
    """Float64 values of the elements ``v`` whose blocks have exponents ``e``.
    ``tiny``: the scaled value may underflow (float64 input only: a float32
    value, >= 2^-149, times a scale >= 2^-(127 + 256) stays far above 2^-1022)."""
    if plan.float_element is not None:
        scaled = v * pow2(-e)
        return quantize_bits(scaled, float_params(plan.float_element), rounding, u) * pow2(e)
    s = v * pow2(plan.elem_fl - e)
    if tiny:  # a product that underflows keeps the sign of the tiny value, as scale_value does
        s = torch.where((s == 0) & (v != 0), torch.copysign(torch.full_like(s, TINY), v), s)
    element = FixedPoint((plan.max_code + 1).bit_length(), 0)  # the code range is all it reads
    codes = scaled_to_code_float(s, element, rounding, Overflow.SATURATE, u, inplace=True)
    return codes * pow2(e - plan.elem_fl)
