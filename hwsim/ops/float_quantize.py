"""``quantize`` for floating-point formats: argument checks and dispatch
(NumPy -> Numba kernels on the IEEE bits, torch -> torch path).

``hwsim.ops.quantize.quantize`` sends every :class:`FloatingPoint` here.
"""

from __future__ import annotations

import numpy as np

from hwsim.formats import FloatingPoint, is_float_format_name
from hwsim.kernels import float_quantize as kf
from hwsim.kernels.jit import SERIAL_BELOW_ELEMENTWISE, threads_for
from hwsim.modes import Overflow, Rounding
from hwsim.ops.elementwise import check_noise_use, numpy_input, run_numpy
from hwsim.plan.checks import check_noise_numpy, fresh_seed, is_torch, seed64


def quantize_float(x, fmt: FloatingPoint, rounding, overflow, *, seed=None, noise=None, out=None):
    """:func:`hwsim.quantize` for a float format (see its docstring)."""
    rounding = Rounding.parse(rounding)
    if Overflow.parse(overflow) != Overflow.SATURATE:
        raise ValueError(
            f"overflow={str(overflow)!r} does not apply to floating-point format {fmt}: a float "
            f"overflows to Inf, NaN or its largest value as the format's saturate flag says "
            f"(e.g. '{fmt}_sat'); leave overflow at its default"
        )
    check_noise_use(rounding, noise)
    if is_torch(x):
        if out is not None:
            raise ValueError("out is for NumPy arrays only")
        from hwsim.torch_path.float_quantize import quantize_float_torch

        return quantize_float_torch(x, fmt, rounding, seed=seed, noise=noise)
    scalar, arr, out_dtype = numpy_input(x)
    kf.check_representable(fmt, out_dtype)
    return run_numpy(
        scalar, arr, out_dtype, out, lambda a, o: _run(a, o, fmt, rounding, seed, noise)
    )


def _run(arr, out, fmt, rounding, seed, noise) -> None:
    noise_mode, noise_flat, key = kf.NOISE_NONE, _EMPTY, 0
    if noise is not None:
        noise_mode, noise_flat = kf.NOISE_ARRAY, check_noise_numpy(noise, arr.shape)
    elif rounding == Rounding.STOCHASTIC:
        key = seed64(fresh_seed() if seed is None else seed)
        noise_mode = kf.NOISE_SEED
    flat, out_flat = arr.reshape(-1), out.reshape(-1)
    p = kf.float_params(fmt)
    run = kf.float_quantize_kernel(int(rounding), noise_mode, p.ftz, p.wide, p.has_nan)
    with threads_for(flat.size, SERIAL_BELOW_ELEMENTWISE):
        bad = run(flat, out_flat, p, noise_flat, np.uint64(key))
    if bad:
        kf.raise_nan(np.isnan(arr), fmt)


_EMPTY = np.zeros(0, dtype=np.float64)


def as_float_format(fmt) -> FloatingPoint | None:
    """``fmt`` as a FloatingPoint when it is one or names one, else None."""
    if isinstance(fmt, FloatingPoint):
        return fmt
    if isinstance(fmt, str) and is_float_format_name(fmt):
        return FloatingPoint.parse(fmt)
    return None


def no_codes(fmt: FloatingPoint, what: str) -> ValueError:
    return ValueError(
        f"{what} is for fixed-point formats; {fmt} is a floating-point format, whose values "
        f"quantize() returns exactly in the input's float dtype"
    )
