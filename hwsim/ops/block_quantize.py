"""``quantize`` for block-scaled formats (BlockFloatingPoint, MX): argument
checks and dispatch (NumPy -> Numba kernels, torch -> torch path).

``hwsim.ops.quantize.quantize`` sends every block format here.
"""

from __future__ import annotations

import numpy as np

from hwsim.formats.block import MX, BlockFloatingPoint, is_block_format_name, parse_block_format
from hwsim.kernels import block_quantize as kb
from hwsim.kernels.float_quantize import float_params
from hwsim.kernels.jit import SERIAL_BELOW_ELEMENTWISE, threads_for
from hwsim.modes import Overflow, Rounding
from hwsim.ops.elementwise import check_noise_use, numpy_input, run_numpy
from hwsim.plan.checks import (
    check_noise_numpy,
    fresh_seed,
    is_torch,
    raise_non_finite_numpy,
    seed64,
)


def as_block_format(fmt) -> BlockFloatingPoint | MX | None:
    """``fmt`` as a block format when it is one or names one, else None."""
    if isinstance(fmt, BlockFloatingPoint | MX):
        return fmt
    if isinstance(fmt, str) and is_block_format_name(fmt):
        return parse_block_format(fmt)
    return None


def quantize_block(
    x, fmt: BlockFloatingPoint | MX, rounding, overflow, *, seed=None, noise=None, out=None
):
    """:func:`hwsim.quantize` for a block format (see its docstring and
    :mod:`hwsim.formats.block` for the rules)."""
    rounding = Rounding.parse(rounding)
    if Overflow.parse(overflow) != Overflow.SATURATE:
        raise ValueError(
            f"overflow={str(overflow)!r} does not apply to block format {fmt}: its elements "
            f"always saturate (the shared scale is chosen so that the block's largest "
            f"magnitude fits); leave overflow at its default"
        )
    check_noise_use(rounding, noise)
    if is_torch(x):
        if out is not None:
            raise ValueError("out is for NumPy arrays only")
        from hwsim.torch_path.block_quantize import quantize_block_torch

        return quantize_block_torch(x, fmt, rounding, seed=seed, noise=noise)
    scalar, arr, out_dtype = numpy_input(x)
    plan = kb.block_plan(fmt, arr.shape)
    # float64 results: exact before the final cast
    return run_numpy(
        scalar, arr, out_dtype, out, lambda a, o: _run(a, o, plan, rounding, seed, noise),
        result_dtype=np.float64,
    )  # fmt: skip


def _run(arr, out, plan: kb.BlockPlan, rounding: Rounding, seed, noise) -> None:
    noise_mode, noise_flat, key = kb.NOISE_NONE, _EMPTY, 0
    if noise is not None:
        noise_mode, noise_flat = kb.NOISE_ARRAY, check_noise_numpy(noise, arr.shape)
    elif rounding == Rounding.STOCHASTIC:
        key = seed64(fresh_seed() if seed is None else seed)
        noise_mode = kb.NOISE_SEED
    p = float_params(plan.float_element or _ANY_FLOAT)
    flat, out_flat = arr.reshape(-1), out.reshape(-1)
    with threads_for(flat.size, SERIAL_BELOW_ELEMENTWISE):
        bad = kb.run_block_quantize(
            flat, out_flat, plan, p, int(rounding), noise_mode, noise_flat, np.uint64(key)
        )
    if bad:
        raise_non_finite_numpy(arr)


_EMPTY = np.zeros(0, dtype=np.float64)
_ANY_FLOAT = kb.FloatingPoint(5, 10)  # params for the (unused) float branch of fixed elements


def no_block_codes(fmt, what: str) -> ValueError:
    return ValueError(
        f"{what} is for fixed-point formats; {fmt} is a block-scaled format (a scale per "
        f"block), whose values quantize() returns exactly in the input's float dtype"
    )
