"""Backend-neutral decisions of the MAC array with block-scaled operands: the
operand formats placed along the reduction axis K, the K-block size, and the
proof that every block's dot product is exact in float64.

An operand's values in one K-block are ``element * 2^s`` with one shared
scale ``2^s`` and elements on a grid: integers (block floating point, MXINT8,
a fixed-point format) or floats of an element type. With ``span`` such that
every element is at most ``2^span`` of its grid's step (the element type's
smallest subnormal for a float), every partial sum of ``kb`` products is a
multiple of the products' step and at most ``kb * 2^(span_a + span_b)`` of
them: float64 holds it exactly when ``span_a + span_b + ceil(log2 kb) <= 53``.
Then any summation order (BLAS, FMA, any device) gives the exact block sum.
"""

from __future__ import annotations

import dataclasses
import math

from hwsim.formats import FixedPoint, FloatingPoint
from hwsim.formats.block import MX, BlockFloatingPoint
from hwsim.formats.scaled import Scaled

EXACT_BITS = 53  # float64's significand


def is_block(fmt) -> bool:
    return isinstance(fmt, BlockFloatingPoint | MX)


def is_scaled(fmt) -> bool:
    """A per-tensor scaled format (:class:`hwsim.formats.scaled.Scaled`)."""
    return isinstance(fmt, Scaled)


def element_span(fmt) -> int:
    """Bits from an element's grid step to its largest magnitude (see the
    module docstring); ``fmt`` is a block, fixed-point or float format."""
    if isinstance(fmt, BlockFloatingPoint):
        return fmt.wl - 1
    if isinstance(fmt, MX | Scaled):
        fmt = fmt.element
    if isinstance(fmt, FixedPoint):
        return fmt.wl - 1 if fmt.signed else fmt.wl
    # a float: max < 2^(emax+1), smallest step 2^(emin - man)
    return fmt.emax + 1 - (fmt.emin - fmt.man)


def along_k(fmt, k_axis: int):
    """``fmt`` with its blocks along the GEMM's K axis (``-1`` for a, ``-2``
    for b); one scale per tensor (``block=None, axis=None``) stays as it is,
    and ``block=None`` with an axis becomes one scale per row of a / column of b."""
    if not is_block(fmt) or (fmt.block is None and fmt.axis is None):
        return fmt
    return dataclasses.replace(fmt, axis=k_axis)


def k_block(a_format, b_format, k: int) -> int:
    """The MAC array's K-block: the operands' block size along K (they must
    agree when both have one), or the whole K when neither has one."""
    sizes = {f.block for f in (a_format, b_format) if is_block(f) and f.block is not None}
    if len(sizes) > 1:
        raise ValueError(
            f"a_format {a_format} and b_format {b_format} have different block sizes along K; "
            f"a block-scaled MAC array needs one K-block (use the same block size, or one "
            f"operand with one scale per tensor/row or a fixed-point format)"
        )
    return sizes.pop() if sizes else max(k, 1)


def check_block_gemm(a_format, b_format, accumulator, product, kb: int) -> None:
    """ValueError unless the block-scaled MAC array can form every block sum exactly."""
    if product is not None:
        raise ValueError(
            f"product={product} does not apply with block-scaled operands: the MAC array "
            f"forms each block's dot product exactly and casts that to the accumulator; "
            f"leave product=None"
        )
    if not isinstance(accumulator, FixedPoint | FloatingPoint):
        raise ValueError(
            f"accumulator must be a fixed-point or floating-point format, got {accumulator!r}"
        )
    for fmt, name in ((a_format, "a_format"), (b_format, "b_format")):
        if fmt is None:
            raise ValueError(
                f"{name} is None while the other operand is block-scaled: a block-scaled MAC "
                f"array needs both operands' formats (a block, fixed-point or float format) "
                f"to prove its block sums exact"
            )
    bits = element_span(a_format) + element_span(b_format) + math.ceil(math.log2(kb))
    if bits > EXACT_BITS:
        raise ValueError(
            f"a_format {a_format} and b_format {b_format} with K-block {kb}: a block's dot "
            f"product spans up to {bits} bits, more than float64's {EXACT_BITS}, so it cannot "
            f"be formed exactly (mxfp8_e5m2 and wide float elements are not supported in the "
            f"MAC array yet); use narrower elements or a smaller block"
        )
