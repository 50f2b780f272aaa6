"""Block-scaled quantization kernels (block floating point and OCP MX).

The input is read as a C-contiguous flat array viewed as ``(outer, length,
inner)``, blocks running along the middle axis: block ``b`` of column
``(o, i)`` is the elements ``l`` in ``[b*block, min((b+1)*block, length))``
at flat index ``(o*length + l)*inner + i``. So any axis works without a
transpose, and element noise is drawn at the element's own flat index (the
stream of every other format kind).

Per block: ``amax`` of the magnitudes, then a shared exponent from
``floor(log2(amax))`` (``frexp``, exact), then each element through the one
element quantizer of its kind, unchanged:

- fixed-point elements (BFP, MXINT8): ``value_to_code`` at scale
  2^(fl - shared), saturating, then times 2^(shared - fl);
- float elements (MX FP8/6/4): ``quantize_value`` of ``x * 2^-shared``
  (exact while it stays above 2^-1022) on the saturating element format,
  then times 2^shared.

Three parallel passes: partial amax per chunk of each block, the exponent
per block, then every element, chunk by chunk (all threads busy whatever the block
geometry, one block per tensor included).

``mx=True`` (MX): the shared exponent is ``floor(log2 amax) - emax_element``,
clamped below at -127; above 127, or with a NaN/Inf in the block, the block is
NaN. ``mx=False`` (BFP): ``floor(log2 amax)`` clamped to [-127, 127];
non-finite inputs are counted (their outputs left 0) for the caller to raise.
``hwsim.torch_path.block_quantize`` mirrors these steps.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np

from hwsim.formats import FloatingPoint
from hwsim.formats.block import MX, BlockFloatingPoint
from hwsim.kernels.float_quantize import quantize_value
from hwsim.kernels.jit import kernel, parallel_kernel, prange
from hwsim.kernels.scalar import SATURATE, counter_uniform, value_to_code

NOISE_NONE, NOISE_ARRAY, NOISE_SEED = 0, 1, 2
SCALE_EMIN, SCALE_EMAX = -127, 127


@kernel
def shared_exponent(amax, emax_element, mx):
    """The block's shared exponent from its finite ``amax``, and whether the
    scale overflows (MX: a NaN block)."""
    if amax == 0.0:
        return SCALE_EMIN, False
    e = math.frexp(amax)[1] - 1 - emax_element  # floor(log2 amax) - emax_element
    if e > SCALE_EMAX:
        return SCALE_EMAX, mx
    return max(e, SCALE_EMIN), False


CHUNK = 4096  # elements of one block one thread scans for its amax


@parallel_kernel
def block_partials(x, outer, length, inner, block, chunk, nch, amax_out, finite_out):
    """Partial amax and finiteness of every chunk of ``chunk`` elements of
    every block (``nch`` chunks per block), in parallel: a few huge blocks (one
    per tensor) spread over the threads as well as many small ones."""
    nb = (length + block - 1) // block
    for t in prange(outer * nb * inner * nch):
        c = t % nch
        col = t // nch
        i = col % inner
        b = (col // inner) % nb
        o = col // (inner * nb)
        start = b * block + c * chunk
        stop = min(start + chunk, (b + 1) * block, length)
        base = o * length * inner + i
        amax = 0.0
        finite = True
        for j in range(start, stop):
            a = abs(np.float64(x[base + j * inner]))
            if a < np.inf:
                amax = max(amax, a)
            else:
                finite = False  # NaN or Inf
        amax_out[t] = amax
        finite_out[t] = finite


@parallel_kernel
def block_exponents(amax_p, finite_p, nch, emax_element, mx, exps, nan_blocks):
    """Each block's shared exponent, and whether it is a NaN block (MX)."""
    for col in prange(exps.size):
        amax = 0.0
        finite = True
        for c in range(col * nch, (col + 1) * nch):
            amax = max(amax, amax_p[c])
            finite = finite and finite_p[c]
        e, overflow = shared_exponent(amax, emax_element, mx)
        exps[col] = e
        nan_blocks[col] = overflow or (mx and not finite)


@functools.cache
def block_elements_kernel(
    rounding: int, noise_mode: int, float_element: bool, ftz: bool, wide: bool
):
    """kernel(x, out, outer, length, inner, block, chunk, nch, exps,
    nan_blocks, elem_fl, min_code, max_code, params, noise, seed) -> non-finite
    inputs outside NaN blocks (BFP; their outputs are left 0 for the caller to
    raise). Parallel over the chunks of :func:`block_partials`, the block's
    scales computed once per chunk; ``params`` are the float element's
    ``FloatParams`` (unused for fixed-point elements)."""

    @parallel_kernel
    def run(
        x, out, outer, length, inner, block, chunk, nch, exps, nan_blocks, elem_fl,
        min_code, max_code, p, noise, seed,
    ):  # fmt: skip
        nb = (length + block - 1) // block
        bad = 0
        for t in prange(outer * nb * inner * nch):  # the chunks of block_partials
            c = t % nch
            col = t // nch
            i = col % inner
            b = (col // inner) % nb
            o = col // (inner * nb)
            start = b * block + c * chunk
            stop = min(start + chunk, (b + 1) * block, length)
            base = o * length * inner + i
            e = exps[col]
            nan_block = nan_blocks[col]
            up, down = math.ldexp(1.0, e), math.ldexp(1.0, -e)
            scale, lsb = math.ldexp(1.0, elem_fl - e), math.ldexp(1.0, e - elem_fl)
            for j in range(start, stop):
                k = base + j * inner
                v = np.float64(x[k])
                if nan_block:
                    out[k] = np.nan
                elif not math.isfinite(v):
                    bad += 1
                    out[k] = 0.0
                else:
                    u = 0.0
                    if noise_mode == NOISE_ARRAY:
                        u = noise[k]
                    elif noise_mode == NOISE_SEED:
                        u = counter_uniform(seed, k)
                    if float_element:
                        out[k] = quantize_value(v * down, p, rounding, u, ftz, wide) * up
                    else:
                        code = value_to_code(
                            v, scale, 1.0, min_code, max_code, rounding, SATURATE, u
                        )
                        out[k] = code * lsb
        return bad

    return run


def run_block_quantize(flat, out, plan, params, rounding: int, noise_mode: int, noise, seed) -> int:
    """Quantize the flat C-order ``flat`` into ``out`` under ``plan`` (a
    :class:`BlockPlan`); returns the count of non-finite inputs (BFP raises)."""
    chunk = min(plan.block, CHUNK)
    nch = (plan.block + chunk - 1) // chunk
    nb = (plan.length + plan.block - 1) // plan.block
    columns = plan.outer * nb * plan.inner
    amax_p = np.empty(columns * nch, dtype=np.float64)
    finite_p = np.empty(columns * nch, dtype=np.bool_)
    block_partials(
        flat, plan.outer, plan.length, plan.inner, plan.block, chunk, nch, amax_p, finite_p
    )
    exps = np.empty(columns, dtype=np.int64)
    nan_blocks = np.empty(columns, dtype=np.bool_)
    block_exponents(amax_p, finite_p, nch, plan.emax_element, plan.mx, exps, nan_blocks)
    run = block_elements_kernel(
        rounding, noise_mode, plan.float_element is not None, params.ftz, params.wide
    )
    return run(
        flat,
        out,
        plan.outer,
        plan.length,
        plan.inner,
        plan.block,
        chunk,
        nch,
        exps,
        nan_blocks,
        plan.elem_fl,
        plan.min_code,
        plan.max_code,
        params,
        noise,
        seed,
    )


class BlockPlan(NamedTuple):
    """What both backends take for a block format on an input shape."""

    outer: int
    length: int
    inner: int
    block: int
    emax_element: int  # subtracted from floor(log2 amax): MX's emax_elem, 0 for BFP
    elem_fl: int  # fixed-point elements: fl at shared exponent 0 (wl - 2 for BFP)
    min_code: int
    max_code: int
    float_element: FloatingPoint | None
    mx: bool


def block_plan(fmt: BlockFloatingPoint | MX, shape: tuple[int, ...]) -> BlockPlan:
    """The ``(outer, length, inner)`` view of ``shape`` for ``fmt``'s axis, and
    the element constants. Raises ValueError for an axis outside the shape."""
    shape = tuple(int(n) for n in shape) or (1,)  # a 0-d input is one element
    size = math.prod(shape)
    if fmt.axis is None:
        outer, length, inner = 1, size, 1
    else:
        if not -len(shape) <= fmt.axis < len(shape):
            raise ValueError(
                f"axis {fmt.axis} of {fmt} is out of range for an input of shape {shape}: "
                f"use an axis in [{-len(shape)}, {len(shape) - 1}] or None (flattened)"
            )
        axis = fmt.axis % len(shape)
        outer, length, inner = math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1 :])
    block = max(length, 1) if fmt.block is None else fmt.block
    if isinstance(fmt, MX):
        element = fmt.element
        if isinstance(element, FloatingPoint):
            return BlockPlan(outer, length, inner, block, fmt.emax_element, 0, 0, 0, element, True)
        return BlockPlan(
            outer, length, inner, block, fmt.emax_element, element.fl,
            element.min_code, element.max_code, None, True,
        )  # fmt: skip
    element = fmt.element(0)
    return BlockPlan(
        outer, length, inner, block, 0, element.fl, element.min_code, element.max_code, None, False
    )
