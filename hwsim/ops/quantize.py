"""``quantize``, ``to_codes`` and ``from_codes``: one public function each,
dispatching on the array type (NumPy -> Numba kernels, torch -> torch path)."""

from __future__ import annotations

import numpy as np

from hwsim.formats import FixedPoint
from hwsim.kernels import buffers
from hwsim.kernels.jit import SERIAL_BELOW_ELEMENTWISE, threads_for
from hwsim.modes import Overflow, Rounding
from hwsim.ops.backend import check_backend, on_backend, small_work
from hwsim.ops.block_quantize import as_block_format, no_block_codes, quantize_block
from hwsim.ops.float_quantize import as_float_format, no_codes, quantize_float
from hwsim.ops.scaled_quantize import as_scaled_format, quantize_scaled
from hwsim.plan.checks import (
    check_data,
    check_format,
    check_integers_exact,
    check_noise_numpy,
    fresh_seed,
    is_torch,
    kernel_constants,
    raise_non_finite_numpy,
    seed64,
)


def quantize(
    x,
    fmt,
    rounding="nearest",
    overflow="saturate",
    *,
    seed=None,
    noise=None,
    out=None,
    backend=None,
):
    """Round ``x`` onto the grid of ``fmt`` and apply its overflow mode.

    Args:
        x: a NumPy array (Numba kernels, CPU), a torch tensor (torch ops, on its
            own device) or a Python number. float16, bfloat16 (torch), float32,
            float64 and integer inputs work.
        fmt: a :class:`FixedPoint` or its string (``"fx16.12"``).
        rounding: ``nearest`` (ties to even), ``nearest_away``, ``floor``,
            ``zero`` or ``stochastic``.
        overflow: ``saturate`` or ``wrap``.
        seed: stochastic rounding only. An int gives counter-based noise: the
            uniform of element i (flat C order) is SplitMix64(seed, i), the same
            on both backends, so equal seeds give equal bits everywhere. A
            ``torch.Generator`` draws ``torch.rand`` noise instead. ``None``
            draws a fresh random seed.
        noise: stochastic rounding only: uniforms in [0, 1) of ``x``'s shape;
            element i rounds up iff ``noise[i] < frac(x[i] / lsb)``. Makes the
            result exactly determined.
        out: NumPy only: a preallocated C-contiguous array of ``x``'s shape and
            dtype (float32/float64) to write into, as memory-bound loops want
            (with a torch tensor ``x``, ValueError).
        backend: ``None`` (by array type), ``"numba"`` (a tensor is copied to
            the CPU, quantized by the kernels and copied back to its device)
            or ``"torch"`` (a NumPy array runs on the torch path). Equal seeds
            or noise give equal bits on both.

    Returns:
        The same kind of array, shape and dtype (integers become float64; a
        Python number stays a Python float). The result is computed exactly in
        float64/int64 and then cast to the input dtype: when ``fmt`` is not
        representable in that dtype (``fmt.representable_in(dtype)`` is False,
        e.g. fx16.12 in float16), the cast rounds to the nearest value of the
        dtype. Use :func:`to_codes` for exact results in any case.

    A value that rounds to code 0 is ``+0.0``, whatever its sign (codes
    carry no sign), on every backend.

    Raises:
        NonFiniteError: (a ValueError) NaN or Inf in ``x``, with the count and
            the first index.
        ValueError: integers beyond 2^53 in magnitude (not exact in float64),
            a meta tensor, a seed outside [0, 2^64), ``out`` with a tensor.

    >>> import numpy as np, hwsim
    >>> hwsim.quantize(np.array([0.3, -1.26, 9.0]), "fx8.4")
    array([ 0.3125, -1.25  ,  7.9375])

    A :class:`FloatingPoint` format (or its name, ``"bf16"``, ``"fp8_e4m3"``)
    goes to :func:`hwsim.ops.float_quantize.quantize_float`: NaN passes
    through, overflow follows the format's ``saturate`` flag. A
    :class:`BlockFloatingPoint` or :class:`MX` (``"bfp8_b32"``,
    ``"mxfp8_e4m3"``) goes to :func:`hwsim.ops.block_quantize.quantize_block`:
    one scale per block along the format's axis (see :mod:`hwsim.formats.block`).
    A :class:`Scaled` (``"scaled_fp8_e4m3"``) takes its power-of-two scale from
    the current amax (:mod:`hwsim.formats.scaled`; delayed scaling needs the
    state a layer keeps).
    """
    if (scaled := as_scaled_format(fmt)) is not None:  # per-tensor scale from the current amax
        if out is not None:
            raise ValueError(f"out is not taken with the scaled format {scaled}")
        return quantize_scaled(x, scaled, rounding, overflow, seed=seed, noise=noise,
                               backend=backend)  # fmt: skip
    block_fmt = as_block_format(fmt)
    float_fmt = None if block_fmt is not None else as_float_format(fmt)
    fmt = block_fmt or float_fmt or check_format(fmt)
    rounding, overflow = Rounding.parse(rounding), Overflow.parse(overflow)
    check_data(x)
    check_integers_exact(x)
    if is_torch(x) and out is not None:
        raise ValueError(
            "out is taken with NumPy input only; for a torch tensor x use the returned "
            "tensor (or out_tensor.copy_(hwsim.quantize(x, ...)))"
        )
    if _crosses(backend, x):
        if out is not None:
            raise ValueError("out is only taken by NumPy input on its own (numba) backend")
        if block_fmt is None and float_fmt is None and noise is None and _cpu_float_tensor(x):
            return _quantize_cpu_tensor(x, fmt, rounding, overflow, seed)
        result = _on_other_backend(quantize, backend, x, fmt, rounding, overflow, seed, noise)
        return result.to(x.dtype) if is_torch(x) else _as_input_kind(result, x)
    if block_fmt is not None:
        return quantize_block(x, block_fmt, rounding, overflow, seed=seed, noise=noise, out=out)
    if float_fmt is not None:
        return quantize_float(x, float_fmt, rounding, overflow, seed=seed, noise=noise, out=out)
    if is_torch(x):
        from hwsim.torch_path.quantize import quantize_torch

        return quantize_torch(x, fmt, rounding, overflow, seed=seed, noise=noise, codes=False)
    scalar = np.isscalar(x)
    arr, out_dtype = _as_float_array(x)
    if out is not None:
        if not (
            isinstance(out, np.ndarray)
            and out.shape == arr.shape
            and out.dtype == arr.dtype
            and out.dtype == out_dtype
            and out.flags.c_contiguous
        ):
            raise ValueError(
                f"out must be a C-contiguous NumPy array of shape {arr.shape} and dtype "
                f"{out_dtype} (float32 or float64 input only)"
            )
        _run_numba(arr, out, fmt, rounding, overflow, seed, noise)
        return out
    result = buffers.empty(arr.shape, arr.dtype)  # large outputs reuse mapped pages
    _run_numba(arr, result, fmt, rounding, overflow, seed, noise)
    result = result.astype(out_dtype, copy=False)
    return float(result) if scalar else result


def to_codes(
    x, fmt, rounding="nearest", overflow="saturate", *, seed=None, noise=None, backend=None
):
    """Integer codes (int64) of ``x`` in ``fmt``: ``quantize(x) == codes * fmt.lsb``
    exactly, for every word length up to 62. Same arguments as :func:`quantize`."""
    if (block_fmt := as_block_format(fmt) or as_scaled_format(fmt)) is not None:
        raise no_block_codes(block_fmt, "to_codes")
    if (float_fmt := as_float_format(fmt)) is not None:
        raise no_codes(float_fmt, "to_codes")
    fmt = check_format(fmt)
    rounding, overflow = Rounding.parse(rounding), Overflow.parse(overflow)
    check_data(x)
    check_integers_exact(x)
    if _crosses(backend, x):
        return _on_other_backend(to_codes, backend, x, fmt, rounding, overflow, seed, noise)
    if is_torch(x):
        from hwsim.torch_path.quantize import quantize_torch

        return quantize_torch(x, fmt, rounding, overflow, seed=seed, noise=noise, codes=True)
    arr, _ = _as_float_array(x)
    out = np.empty(arr.shape, dtype=np.int64)
    _run_numba(arr, out, fmt, rounding, overflow, seed, noise)
    return out


def from_codes(codes, fmt):
    """Values (float64) of int64 ``codes`` in ``fmt``: ``codes * 2^-fl``.

    Raises ValueError if a code lies outside the format's range."""
    if (block_fmt := as_block_format(fmt)) is not None:
        raise no_block_codes(block_fmt, "from_codes")
    if (float_fmt := as_float_format(fmt)) is not None:
        raise no_codes(float_fmt, "from_codes")
    fmt = check_format(fmt)
    check_data(codes, "codes")
    if is_torch(codes):
        import torch

        from hwsim.torch_path.core import code_to_value

        if codes.is_floating_point() or codes.is_complex():
            raise ValueError(f"codes must be an integer tensor, got dtype {codes.dtype}")
        bad = (codes < fmt.min_code) | (codes > fmt.max_code)
        if bool(bad.any()):
            raise ValueError(_range_message(int(bad.sum()), fmt))
        return code_to_value(codes.to(torch.int64), fmt)
    arr = np.asarray(codes)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"codes must be an integer array, got dtype {arr.dtype}")
    bad = (arr < fmt.min_code) | (arr > fmt.max_code)
    if bad.any():
        raise ValueError(_range_message(int(np.count_nonzero(bad)), fmt))
    from hwsim.kernels.quantize import codes_to_values

    flat = np.ascontiguousarray(arr, dtype=np.int64).reshape(-1)
    out = np.empty(flat.shape, dtype=np.float64)
    with threads_for(flat.size, SERIAL_BELOW_ELEMENTWISE):
        codes_to_values(flat, out, fmt.lsb)
    return out.reshape(arr.shape)


def _crosses(backend, x) -> bool:
    """True when ``backend`` is not the one ``x``'s array type runs on."""
    return check_backend(backend) is not None and (backend == "torch") != is_torch(x)


def _cpu_float_tensor(x) -> bool:
    return is_torch(x) and x.device.type == "cpu" and str(x.dtype) in _NUMPY_FLOATS


_NUMPY_FLOATS = ("torch.float32", "torch.float64")


def _quantize_cpu_tensor(x, fmt, rounding, overflow, seed):
    """A float32/float64 CPU tensor on the Numba kernels, checked once (a
    layer quantizes a few tensors per step: the general crossing checks and
    converts twice). The kernel reads the tensor's memory and writes a fresh
    array the returned tensor shares."""
    import torch

    arr = x.detach().contiguous().numpy()
    result = np.empty(arr.shape, dtype=arr.dtype)
    with small_work("numba", x):
        _run_numba(arr, result, fmt, rounding, overflow, seed, None)
    return torch.from_numpy(result)


def _on_other_backend(op, backend, x, fmt, rounding, overflow, seed, noise):
    (xb, noise_b), back = on_backend(backend, x, noise)
    with small_work(backend, x):
        return back(op(xb, fmt, rounding, overflow, seed=seed, noise=noise_b))


def _as_input_kind(result: np.ndarray, x):
    """A NumPy result for NumPy input; a Python float for a Python number."""
    return float(result) if np.isscalar(x) else result


def _range_message(count: int, fmt: FixedPoint) -> str:
    return (
        f"{count} code(s) lie outside the range of {fmt}: codes must be integers in "
        f"[{fmt.min_code}, {fmt.max_code}]"
    )


def _as_float_array(x) -> tuple[np.ndarray, np.dtype]:
    """A C-contiguous float32/float64 array the kernels take, and the dtype to return."""
    arr = np.asarray(x)
    if arr.dtype == np.float16:
        return arr.astype(np.float32, order="C"), arr.dtype  # exact widening
    if arr.dtype in (np.float32, np.float64):
        return arr.astype(arr.dtype, order="C", copy=False), arr.dtype
    if arr.dtype.kind in "iub":
        return arr.astype(np.float64, order="C"), np.dtype(np.float64)
    raise ValueError(
        f"quantize takes float16/float32/float64 or integer arrays, got dtype {arr.dtype}"
    )


def _run_numba(arr, out, fmt, rounding, overflow, seed, noise) -> None:
    from hwsim.kernels import quantize as kq

    noise_mode, noise_flat, seed_bits = kq.NOISE_NONE, _EMPTY, 0
    if noise is not None:
        if rounding != Rounding.STOCHASTIC:
            raise ValueError(f"noise is only used by rounding='stochastic', not {str(rounding)!r}")
        noise_mode, noise_flat = kq.NOISE_ARRAY, check_noise_numpy(noise, arr.shape)
    elif rounding == Rounding.STOCHASTIC:
        seed_bits = seed64(fresh_seed() if seed is None else seed)
        noise_mode = kq.NOISE_SEED
    flat, out_flat = arr.reshape(-1), out.reshape(-1)
    run = kq.quantize_kernel(int(rounding), int(overflow), noise_mode, out.dtype == np.int64)
    c = kernel_constants(fmt)
    with threads_for(flat.size, SERIAL_BELOW_ELEMENTWISE):
        bad = run(
            flat,
            out_flat,
            c.scale,
            c.lsb,
            c.wrap_modulus,
            c.min_code,
            c.max_code,
            noise_flat,
            np.uint64(seed_bits),
        )
    if bad:
        raise_non_finite_numpy(arr)


_EMPTY = np.zeros(0, dtype=np.float64)
