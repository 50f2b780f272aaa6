"""Slow, obviously correct reference of the block-scaled MAC array, on Fractions.

Follows ``hwsim.ops.block_gemm``'s docstring literally, one output at a time:
operands quantized by the block references of tests/naive_block.py with their
blocks along K (a: rows, b: columns), K cut into blocks of ``kb`` from k = 0,
each block's dot product summed exactly as Fractions, then cast to the
accumulator (tests/naive_gemm.py ``cast`` for fixed point; the float MAC
reference's ``ref_add`` for a float accumulator) and added in block order.
Stochastic noise of block j's cast: counter_uniform(sub_seed(seed, 3 + j), e)
for output e in C order (float: the cast takes sub_seed of that seed, 1).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from naive_block import ref_bfp, ref_mx
from naive_float import ref_float
from naive_float_gemm import flags, ref_add
from naive_gemm import cast

from hwsim import FixedPoint, FloatingPoint
from hwsim.formats.block import MX, BlockFloatingPoint
from hwsim.kernels.scalar import counter_uniform


def sub_seed(seed, offset):  # as hwsim.plan.gemm.sub_seed: documented, restated here
    return (seed * 0x2545F4914F6CDD1D + offset) & ((1 << 64) - 1)


def ref_operand(x: np.ndarray, fmt, along_rows: bool) -> np.ndarray:
    """x (2-D) quantized (nearest) with blocks along K: rows of a, columns of b."""
    axis = -1 if along_rows else 0
    if isinstance(fmt, MX):
        ax = None if (fmt.block is None and fmt.axis is None) else axis
        return ref_mx(x, fmt.element, fmt.emax_element, fmt.block, ax)
    if isinstance(fmt, BlockFloatingPoint):
        ax = None if (fmt.block is None and fmt.axis is None) else axis
        return ref_bfp(x, fmt.wl, fmt.block, ax)
    if isinstance(fmt, FixedPoint):
        return np.array([[float(cast(Fraction(float(v)), fmt, "nearest", "saturate", 0.0))
                          for v in row] for row in x])  # fmt: skip
    return np.array([[ref_float(float(v), fmt.exp, fmt.man, rounding="nearest", **flags(fmt))
                      for v in row] for row in x])  # fmt: skip


def ref_block_matmul(a, b, acc, a_fmt, b_fmt, kb, rounding="nearest", seed=0):
    """Float values (M, N) of a (M, K) @ b (K, N) through the block MAC array."""
    qa, qb = ref_operand(a, a_fmt, True), ref_operand(b, b_fmt, False)
    m, k = qa.shape
    n = qb.shape[1]
    out = np.zeros((m, n))
    for i in range(m):
        for j in range(n):
            e = i * n + j
            total = Fraction(0) if isinstance(acc, FixedPoint) else 0.0
            for blk, k0 in enumerate(range(0, k, kb)):
                s = sum((Fraction(float(qa[i, t])) * Fraction(float(qb[t, j]))
                         for t in range(k0, min(k0 + kb, k))), Fraction(0))  # fmt: skip
                key = sub_seed(seed, 3 + blk)
                if isinstance(acc, FixedPoint):
                    u = counter_uniform(np.uint64(key), e) if rounding == "stochastic" else 0.0
                    total = cast(total + cast(s, acc, rounding, "saturate", u), acc, "floor",
                                 "saturate", 0.0)  # fmt: skip
                else:
                    assert isinstance(acc, FloatingPoint)
                    uc = ua = 0.0
                    if rounding == "stochastic":
                        uc = counter_uniform(np.uint64(sub_seed(key, 1)), e)
                        ua = counter_uniform(np.uint64(key), e)
                    t = ref_float(float(s), acc.exp, acc.man, rounding=rounding, u=uc, **flags(acc))
                    total = ref_add(total, t, acc, rounding, ua)
            out[i, j] = float(total)
    return out
