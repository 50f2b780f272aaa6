"""Backend-neutral checks of the floating-point MAC array (a float
accumulator): which formats combine, and the proof that every product
``a_ik * b_kj`` is exact in float64, where both backends form it.

A finite nonzero float64 is ``odd * 2^lsb`` with ``odd < 2^sig``; the product
of two such values is exact in float64 when ``sig_a + sig_b <= 53`` (the
product of the odd parts fits the significand), ``lsb_a + lsb_b >= -1074``
(no bit below the smallest subnormal) and ``top_a + top_b <= 1024`` (with
``|x| < 2^top``: no overflow). The span of each operand is measured once
from the data; values of formats with at most 25 mantissa bits and an
exponent range within float32's and a bit (fp32 and narrower) always pass
against each other.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from hwsim.formats import FixedPoint, FloatingPoint, parse_format
from hwsim.plan.checks import is_torch


class Span(NamedTuple):
    """Of an operand's nonzero values: the widest odd part in bits, the lowest
    set bit's exponent, and ``top`` with every |x| < 2^top."""

    sig: int
    lsb: int
    top: int


EMPTY_SPAN = Span(0, 0, -1100)  # no nonzero value: every product is a zero


def check_any_format(fmt, what: str) -> FixedPoint | FloatingPoint:
    """A FixedPoint or FloatingPoint from a format or its name (not None)."""
    if isinstance(fmt, FixedPoint | FloatingPoint):
        return fmt
    if not isinstance(fmt, str):
        raise ValueError(
            f"{what} must be a hwsim.FixedPoint or hwsim.FloatingPoint, or a name like "
            f"'fx16.12', 'bf16' or 'fp8_e4m3', got {fmt!r}"
        )
    parsed = parse_format(fmt)
    if parsed is None:
        raise ValueError(f"{what} must name a number format, got {fmt!r} (no quantization)")
    return parsed


def check_float_gemm_formats(accumulator, product) -> None:
    """The combinations the MAC arrays take: a fixed-point accumulator with an
    optional fixed-point product; a float accumulator with an optional float
    product. Operands (a_format/b_format) may be of either kind in both."""
    if isinstance(accumulator, FixedPoint) and isinstance(product, FloatingPoint):
        raise ValueError(
            f"product={product} is a floating-point format and accumulator={accumulator} a "
            f"fixed-point one: a float product format needs a float accumulator (e.g. "
            f"accumulator='fp32'); a fixed-point accumulator takes a fixed-point product"
        )
    if isinstance(accumulator, FloatingPoint) and isinstance(product, FixedPoint):
        raise ValueError(
            f"product={product} is a fixed-point format and accumulator={accumulator} a "
            f"floating-point one: a float accumulator takes a float product format (e.g. "
            f"product='bf16') or none"
        )


def operand_span(x) -> Span:
    """The :class:`Span` of a float64 NumPy array or torch tensor (finite)."""
    if is_torch(x):
        import torch

        nz = x[x != 0]
        if nz.numel() == 0:
            return EMPTY_SPAN
        m, e = torch.frexp(nz)
        mant = torch.ldexp(m.abs(), torch.tensor(53.0, dtype=torch.float64, device=x.device))
        mant = mant.to(torch.int64)
        tz = torch.frexp((mant & -mant).to(torch.float64)).exponent - 1
        sig, lsb = int((53 - tz).max()), int((e - 53 + tz).min())
        return Span(sig, lsb, int(e.max()))
    nz = x[x != 0]
    if nz.size == 0:
        return EMPTY_SPAN
    m, e = np.frexp(nz)
    mant = np.ldexp(np.abs(m), 53).astype(np.int64)
    tz = np.frexp((mant & -mant).astype(np.float64))[1] - 1
    return Span(int((53 - tz).max()), int((e - 53 + tz).min()), int(e.max()))


def check_exact_products(sa: Span, sb: Span, names=("a", "b")) -> None:
    """Raise unless every product of the two operands is exact in float64."""
    if sa is EMPTY_SPAN or sb is EMPTY_SPAN or sa.sig == 0 or sb.sig == 0:
        return
    what = None
    if sa.sig + sb.sig > 53:
        what = (
            f"their significands need {sa.sig} and {sb.sig} bits, {sa.sig + sb.sig} in a "
            f"product, more than float64's 53"
        )
    elif sa.lsb + sb.lsb < -1074:
        what = f"a product has a bit at 2^{sa.lsb + sb.lsb}, below float64's 2^-1074"
    elif sa.top + sb.top > 1024:
        what = f"a product may reach 2^{sa.top + sb.top}, past float64's range"
    if what:
        raise ValueError(
            f"the float MAC array forms each product {names[0]}_ik * {names[1]}_kj exactly in "
            f"float64, but {what}. Quantize the operands to narrower formats first "
            f"({names[0]}_format=, {names[1]}_format=, e.g. 'fp32' or 'bf16')."
        )
