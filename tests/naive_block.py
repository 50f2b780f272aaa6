"""Slow, obviously correct reference for block-scaled formats, on Fractions.

Follows the OCP Microscaling Formats (MX) v1.0 conversion literally, block by
block with Python loops (no hwsim code): amax of the block, shared exponent
``floor(log2 amax) - emax_elem`` (clamped below at -127; NaN above 127 or with
a NaN/Inf in the block), ``X = 2^shared``, every element ``x / X`` cast to the
element type by the Fraction references of tests/naive_float.py (float
elements, saturating) and tests/naive.py (fixed-point elements, saturating),
then times ``X``. Block floating point: exponent ``floor(log2 amax)`` clamped
to [-127, 127], elements FixedPoint(wl, wl - 2 - e).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
from naive import ref_code
from naive_float import floor_log2, ref_float

from hwsim import FloatingPoint


def blocks_of(shape: tuple[int, ...], block: int | None, axis: int | None) -> list[list[int]]:
    """The flat C-order indices of every block: ``block`` consecutive elements
    along ``axis`` (None: the whole axis; axis None: the flattened tensor)."""
    shape = shape or (1,)
    index = np.arange(math.prod(shape)).reshape(shape)
    if axis is None:
        lines = [list(index.reshape(-1))]
    else:
        moved = np.moveaxis(index, axis, -1)
        lines = [list(row) for row in moved.reshape(-1, shape[axis])]
    out = []
    for line in lines:
        size = block or max(len(line), 1)
        out += [line[k : k + size] for k in range(0, len(line), size)]
    return out


def ref_element(v: float, element, rounding: str, u: float) -> Fraction | float:
    """``v`` cast to the element type, saturating."""
    if isinstance(element, FloatingPoint):
        r = ref_float(
            v,
            element.exp,
            element.man,
            subnormals=element.subnormals,
            inf=element.inf,
            nan=element.nan,
            saturate=True,
            rounding=rounding,
            u=u,
        )
        return r
    code = ref_code(v, element.wl, element.fl, True, rounding, "saturate", u)
    return code * Fraction(2) ** -element.fl


def ref_mx(x: np.ndarray, element, emax_elem: int, block, axis, rounding="nearest", noise=None):
    """The MX value of every element of float ``x`` (float64 array, x's shape)."""
    flat = x.reshape(-1).astype(np.float64)
    u = np.zeros(flat.size) if noise is None else np.asarray(noise, np.float64).reshape(-1)
    out = np.zeros(flat.size)
    for idx in blocks_of(x.shape, block, axis):
        vals = [float(flat[i]) for i in idx]
        if any(not math.isfinite(v) for v in vals):
            out[idx] = math.nan
            continue
        amax = max(abs(Fraction(v)) for v in vals)
        shared = -127 if amax == 0 else max(floor_log2(amax) - emax_elem, -127)
        if shared > 127:
            out[idx] = math.nan
            continue
        scale = Fraction(2) ** shared
        for i, v in zip(idx, vals, strict=True):
            scaled = math.ldexp(v, -shared)
            assert Fraction(scaled) == Fraction(v) / scale, "test values must scale exactly"
            r = ref_element(scaled, element, rounding, float(u[i]))
            if isinstance(r, float):  # a float element keeps the sign of zero
                out[i] = math.copysign(float(abs(Fraction(r)) * scale), r)
            else:
                out[i] = float(r * scale)
    return out.reshape(x.shape)


def ref_bfp(x: np.ndarray, wl: int, block, axis, rounding="nearest", noise=None):
    """The block floating-point value of every element of float ``x``."""
    flat = x.reshape(-1).astype(np.float64)
    u = np.zeros(flat.size) if noise is None else np.asarray(noise, np.float64).reshape(-1)
    out = np.zeros(flat.size)
    for idx in blocks_of(x.shape, block, axis):
        amax = max(abs(Fraction(float(flat[i]))) for i in idx)
        e = -127 if amax == 0 else min(max(floor_log2(amax), -127), 127)
        fl = wl - 2 - e
        for i in idx:
            code = ref_code(float(flat[i]), wl, fl, True, rounding, "saturate", float(u[i]))
            out[i] = float(code * Fraction(2) ** -fl)
    return out.reshape(x.shape)
