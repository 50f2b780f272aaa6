"""The NumPy side shared by the float and block quantizers: which input dtypes
are taken, the ``out=`` contract, and the allocating call (one place for both)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from hwsim.kernels import buffers
from hwsim.modes import Rounding


def check_noise_use(rounding: Rounding, noise) -> None:
    if noise is not None and rounding != Rounding.STOCHASTIC:
        raise ValueError(f"noise is only used by rounding='stochastic', not {str(rounding)!r}")


def numpy_input(x) -> tuple[bool, np.ndarray, np.dtype]:
    """(x was a scalar, the array, the output dtype): float16/32/64 keep their
    dtype, integers and bools give float64, anything else is an error."""
    scalar = np.isscalar(x)
    arr = np.asarray(x)
    if arr.dtype.kind in "iub":
        out_dtype = np.dtype(np.float64)
    elif arr.dtype in (np.float16, np.float32, np.float64):
        out_dtype = arr.dtype
    else:
        raise ValueError(
            f"quantize takes float16/float32/float64 or integer arrays, got dtype {arr.dtype}"
        )
    return scalar, arr, out_dtype


def run_numpy(
    scalar: bool,
    arr: np.ndarray,
    out_dtype: np.dtype,
    out,
    run: Callable[[np.ndarray, np.ndarray], None],
    result_dtype=None,
):
    """``run(input, output)`` into ``out`` (checked: C-contiguous, the input's
    shape and float32/float64 dtype) or into a fresh buffer of ``result_dtype``
    (default: the working dtype), cast to ``out_dtype``."""
    work = np.float32 if out_dtype == np.float16 else out_dtype  # float16 widens exactly
    arr = arr.astype(work, order="C", copy=False)
    if out is not None:
        if not (
            isinstance(out, np.ndarray)
            and out.shape == arr.shape
            and out.dtype == arr.dtype == out_dtype
            and out.flags.c_contiguous
        ):
            raise ValueError(
                f"out must be a C-contiguous NumPy array of shape {arr.shape} and dtype "
                f"{out_dtype} (float32 or float64 input only)"
            )
        run(arr, out)
        return out
    result = buffers.empty(arr.shape, result_dtype or arr.dtype)  # reused mapped pages
    run(arr, result)
    result = result.astype(out_dtype, copy=False)
    return float(result) if scalar else result
