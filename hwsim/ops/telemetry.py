"""What a quantizer did to a tensor: how many elements it flushed to zero and
how many it saturated, from the input, the output and the format. The one
definition of both, for every format kind, used by ``hwsim.nn.telemetry`` (and
free for the optimizers' state telemetry).

- *flushed*: the input is nonzero and the output is zero (underflow: below
  half an LSB of fixed point, below the smallest subnormal of a float format,
  or of a block's scale in a block format).
- *saturated*: the input lies beyond the format's range, so the output was
  clipped (``overflow="saturate"``) or wrapped (``"wrap"``):

  - fixed point: ``x > fmt.max`` or ``x < fmt.min``;
  - floating point: a finite input with ``|x| > fmt.max``, or a finite input
    whose output is Inf or NaN (rounded up past the largest value);
  - block formats (:class:`BlockFloatingPoint`, :class:`MX`): the element
    beyond its block's range: the block's shared exponent ``e`` comes from
    the block's largest magnitude as the quantizer takes it, and the element
    range is ``[min_code, max_code] * 2^(e - elem_fl)`` for fixed-point
    elements, ``|x| <= element.max * 2^e`` for float elements (MX elements
    whose block amax lies in the top binade past the element's largest value);
  - per-tensor scaled (:class:`Scaled`, possibly a delayed scale): the input
    beyond the largest output when that is the element's largest value times
    a power of two (the clipped elements' common value).

NaN inputs count as neither. Counts are int64 tensors (no host sync), so a
caller can sum them over many calls and read them once.

>>> import torch, hwsim
>>> x = torch.tensor([0.001, 0.5, 9.0, -9.0, 0.0])
>>> quantization_counts(x, hwsim.quantize(x, "fx8.4"), "fx8.4").tolist()
[5, 1, 2]
"""

from __future__ import annotations

import math

import numpy as np
import torch

from hwsim.formats import FixedPoint, FloatingPoint, parse_format
from hwsim.formats.block import MX, BlockFloatingPoint
from hwsim.formats.scaled import Scaled

__all__ = ["quantization_counts", "flushed_mask", "saturated_mask"]


def _tensor(a) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.detach()
    return torch.as_tensor(np.asarray(a))


def _pair(x, q) -> tuple[torch.Tensor, torch.Tensor]:
    x, q = _tensor(x), _tensor(q)
    if x.shape != q.shape:
        raise ValueError(
            f"input and output shapes differ: {tuple(x.shape)} vs {tuple(q.shape)}; pass a "
            f"quantizer's input and its output"
        )
    return x, q


def flushed_mask(x, q) -> torch.Tensor:
    """Elements whose nonzero input became zero."""
    x, q = _pair(x, q)
    return (x != 0) & (q == 0) & ~torch.isnan(x)


def saturated_mask(x, q, fmt) -> torch.Tensor:
    """Elements whose input lay beyond ``fmt``'s range (see the module docstring)."""
    fmt = parse_format(fmt)
    x, q = _pair(x, q)
    if isinstance(fmt, FixedPoint):
        return (x > fmt.max) | (x < fmt.min)
    if isinstance(fmt, FloatingPoint):
        finite = torch.isfinite(x)
        return finite & ((x.abs() > fmt.max) | ~torch.isfinite(q))
    if isinstance(fmt, BlockFloatingPoint | MX):
        return _block_saturated(x, fmt)
    if isinstance(fmt, Scaled):
        return _scaled_saturated(x, q, fmt)
    raise ValueError(
        f"fmt must be a FixedPoint, FloatingPoint, BlockFloatingPoint, MX or Scaled (or its name), "
        f"got {fmt!r}"
    )


def _scaled_saturated(x: torch.Tensor, q: torch.Tensor, fmt: Scaled) -> torch.Tensor:
    """A per-tensor scaled format (its scale, possibly delayed, is not passed):
    an element saturated when the output's largest magnitude is the element's
    largest value times a power of two (the scale's top, which every clipped
    element takes) and the input lies beyond it."""
    top = float(q.abs().max()) if q.numel() else 0.0
    if top == 0 or not math.isfinite(top):
        return torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    s = round(math.log2(top / fmt.element.max))
    if math.ldexp(fmt.element.max, s) != top:
        return torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    return torch.isfinite(x) & (x.abs() > top)


def _block_saturated(x: torch.Tensor, fmt) -> torch.Tensor:
    """Per element, whether it lies beyond its block's element range (the
    exponents as ``hwsim.torch_path.block_quantize`` finds them)."""
    from hwsim.kernels.block_quantize import block_plan
    from hwsim.torch_path.block_quantize import block_exponents, pow2

    plan = block_plan(fmt, tuple(x.shape))
    flat = x.reshape(-1)
    if not flat.is_floating_point():
        flat = flat.to(torch.float64)
    finite = torch.isfinite(flat)
    exps, _ = block_exponents(flat, plan, None if bool(finite.all()) else finite)
    nb = -(-plan.length // plan.block)
    e = exps.reshape(plan.outer, nb, 1, plan.inner).expand(plan.outer, nb, plan.block, plan.inner)
    e = e.reshape(plan.outer, nb * plan.block, plan.inner)[:, : plan.length].reshape(-1)
    v = flat.to(torch.float64)
    if plan.float_element is not None:
        out = v.abs() > plan.float_element.max * pow2(e)
    else:
        step = pow2(e - plan.elem_fl)
        out = (v > plan.max_code * step) | (v < plan.min_code * step)
    return (out & finite).reshape(x.shape)


def quantization_counts(x, q, fmt) -> torch.Tensor:
    """``[numel, flushed, saturated]`` (int64 tensor on ``x``'s device) of the
    quantization ``x -> q`` onto ``fmt`` (NumPy arrays or torch tensors)."""
    x, q = _pair(x, q)
    return torch.stack(
        [
            torch.tensor(x.numel(), dtype=torch.int64, device=x.device),
            torch.count_nonzero(flushed_mask(x, q)),
            torch.count_nonzero(saturated_mask(x, q, fmt)),
        ]
    )
