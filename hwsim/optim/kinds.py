"""What the optimizer step does differently by format kind, in one module:
quantizing a tensor's values (fixed point with the codes' torch twin, as the
fused kernel rounds; floating-point and block-scaled formats through
:func:`hwsim.ops.quantize`, the one quantizer of each kind), where a value
sits at its format's limits (telemetry's saturation), a float format's unit in
the last place (telemetry's update size) and how a weight accumulator is
stored. Which path a group's step takes is
:attr:`hwsim.optim.precision.GroupPrecision.codes_pipeline`.
"""

from __future__ import annotations

import torch

from hwsim.formats import FixedPoint, FloatingPoint
from hwsim.kernels.block_quantize import block_plan
from hwsim.modes import Overflow, Rounding
from hwsim.ops.quantize import quantize
from hwsim.optim.telemetry import sample_index
from hwsim.torch_path.block_quantize import block_exponents, pow2
from hwsim.torch_path.core import value_to_code_float


def quantize_values(
    x: torch.Tensor,
    fmt,
    rounding: Rounding,
    overflow: Overflow,
    u: torch.Tensor | None,
    inplace: bool = False,
) -> torch.Tensor:
    """Float64 ``x`` on the grid of ``fmt`` (float64 values), ``u`` the
    stochastic-rounding uniforms (element i rounds up iff ``u[i]`` is below
    its fraction). ``overflow`` applies to fixed point; a float format
    overflows as its ``saturate`` flag says and block elements saturate. A
    block format is applied to the flattened tensor (C order), as
    bitsandbytes blocks optimizer states. ``inplace``: ``x`` is a float64
    temporary of the caller's, which a fixed-point format may overwrite."""
    if isinstance(fmt, FixedPoint):
        return value_to_code_float(x, fmt, rounding, overflow, u, inplace=inplace).mul_(fmt.lsb)
    backend = "numba" if x.is_cpu else None  # the same bits as torch ops, faster on CPU
    if isinstance(fmt, FloatingPoint):
        return quantize(x, fmt, rounding, noise=u, backend=backend)
    noise = None if u is None else u.reshape(-1)
    flat = quantize(x.reshape(-1), fmt, rounding, noise=noise, backend=backend)
    return flat.reshape(x.shape)


def at_limits(values: torch.Tensor, fmt) -> torch.Tensor:
    """Where ``values`` (on ``fmt``'s grid) sit at the format's limits: fixed
    point at its min or max; floating point at +-max or beyond it (an
    overflow to Inf)."""
    if isinstance(fmt, FixedPoint):
        return (values == fmt.min).logical_or_(values == fmt.max)
    return values.abs() >= fmt.max


def saturated_sample(raw: torch.Tensor, stored: torch.Tensor, fmt) -> torch.Tensor:
    """On the telemetry sample of a state, where its stored value (``stored``:
    the sample) sits at the limits of ``fmt``; for a block format, at the
    largest element magnitude (or the most negative code) its block's scale
    allows, the scale taken from the block's largest |``raw``| as the
    quantizer takes it."""
    if isinstance(fmt, FixedPoint | FloatingPoint):
        return at_limits(stored, fmt)
    flat = raw.reshape(-1)
    if flat.numel() == 0:
        return torch.zeros(stored.shape, dtype=torch.bool, device=stored.device)
    plan = block_plan(fmt, (flat.numel(),))
    exponents, _ = block_exponents(flat, plan, None)
    e = exponents[
        torch.div(sample_index(flat.numel(), flat.device), plan.block, rounding_mode="floor")
    ]
    if plan.float_element is not None:
        return stored.abs() == pow2(e) * plan.float_element.max
    lsb = pow2(e - plan.elem_fl)
    return (stored == lsb * plan.max_code).logical_or_(stored == lsb * plan.min_code)


def ulps(values: torch.Tensor, fmt: FloatingPoint) -> torch.Tensor:
    """The unit in the last place of each of ``values`` (float64, on ``fmt``'s
    grid): 2^(max(floor(log2 |v|), emin) - man), the subnormal quantum at 0."""
    exponent = torch.frexp(values).exponent.to(torch.int64) - 1
    exponent = torch.where(values == 0, fmt.emin, exponent.clamp(min=fmt.emin))
    return torch.ldexp(torch.ones_like(values), exponent - fmt.man)


def state_dtype(fmt) -> torch.dtype:
    """How an optimizer state of a quantized group with state format ``fmt``
    is stored: float32 where every value of a fixed-point ``fmt`` is exact in
    it (24 bits or fewer: a momentum buffer in fx24.20 moves half the bytes),
    else float64. The rule's math runs in float64 either way, and the stored
    values are the same numbers."""
    if isinstance(fmt, FixedPoint) and fmt.representable_in("float32"):
        return torch.float32
    return torch.float64


def accumulator_dtype(fmt) -> torch.dtype:
    """How a weight accumulator of ``fmt`` is stored. Fixed point: integer
    codes, int32 where every code fits (half the memory and traffic of
    float64; the fused kernel adds in int32 where the sum provably stays in
    range), else float64 (exact for the up to 52-bit codes the optimizers
    allow). Floating point: its values, in float32 where they are exact
    (``fp32``, ``bf16``, ``fp16``, fp8 ...: the master copy of the usual
    recipe is a float32 tensor), else float64. Checkpoints keep the dtype they
    were saved with."""
    if isinstance(fmt, FloatingPoint):
        return torch.float32 if fmt.representable_in("float32") else torch.float64
    return torch.int32 if -(2**31) <= fmt.min_code and fmt.max_code < 2**31 else torch.float64


def accumulator_values(stored: torch.Tensor, fmt) -> torch.Tensor:
    """The float64 values of a weight accumulator stored as
    :func:`accumulator_dtype` says (a new tensor)."""
    if isinstance(fmt, FixedPoint):
        return stored.to(torch.float64) * fmt.lsb
    return stored.to(torch.float64, copy=True)
