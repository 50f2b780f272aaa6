"""``matmul`` and ``conv2d`` with a floating-point accumulator: the operands'
float64 values (quantized onto ``a_format``/``b_format`` first, fixed-point or
float), the exactness check of ``hwsim.plan.float_gemm``, then the Numba
kernel (``hwsim.kernels.float_gemm``) for NumPy arrays or the torch path for
tensors. ``hwsim.ops.matmul`` sends every float accumulator here."""

from __future__ import annotations

import numpy as np

from hwsim.formats import FloatingPoint
from hwsim.kernels.jit import threads_for
from hwsim.modes import Overflow, Rounding
from hwsim.plan.checks import (
    check_data,
    check_integers_exact,
    is_torch,
    raise_non_finite_numpy,
    raise_non_finite_torch,
)
from hwsim.plan.float_gemm import check_exact_products, operand_span
from hwsim.plan.gemm import broadcast_operands, seed_bits, squeeze_result, sub_seed


def _check_path(path: str) -> None:
    if path == "fast":
        raise ValueError(
            "path='fast' (float64 BLAS on fixed-point codes) does not apply to a "
            "floating-point accumulator, which rounds after every addition; use "
            "path='auto' or 'sequential'"
        )


def operand_values(x, fmt, name, rounding: Rounding, overflow: Overflow, seed):
    """Float64 values of an operand (NumPy array or tensor), on ``fmt`` if given."""
    from hwsim.ops.quantize import quantize

    check_data(x, name)
    check_integers_exact(x, name)  # integers beyond 2^53 would round in float64
    if is_torch(x):
        import torch

        if x.dtype == torch.bool or x.is_complex():
            raise ValueError(f"{name} must be a real float or integer tensor, got {x.dtype}")
        v = x.detach().to(torch.float64)
        if not bool(torch.isfinite(v).all()):
            raise_non_finite_torch(v)
    else:
        arr = np.asarray(x)
        if arr.dtype == np.bool_ or arr.dtype.kind not in "iuf":
            raise ValueError(f"{name} must be a float or integer array, got dtype {arr.dtype}")
        v = np.ascontiguousarray(arr, dtype=np.float64)
        if not np.isfinite(v).all():
            raise_non_finite_numpy(v)
    if fmt is not None:
        over = Overflow.SATURATE if isinstance(fmt, FloatingPoint) else overflow
        v = quantize(v, fmt, rounding, over, seed=seed)
    return v


def float_matmul(a, b, acc, product, rounding, overflow, a_format, b_format, seed, path):
    """Float64 values (NumPy or torch, as the operands) of ``a @ b`` through a
    MAC array with the float accumulator ``acc``."""
    _check_path(path)
    if is_torch(a) != is_torch(b):
        raise ValueError("matmul takes two NumPy arrays or two torch tensors, not a mix")
    va = operand_values(a, a_format, "a", rounding, overflow, sub_seed(seed, 1))
    vb = operand_values(b, b_format, "b", rounding, overflow, sub_seed(seed, 2))
    return float_gemm_values(va, vb, acc, product, rounding, seed, ("a", "b"))


def float_gemm_values(va, vb, acc, product, rounding, seed, names):
    """The MAC-array product of float64 operands (..., M, K) @ (..., K, N)."""
    check_exact_products(operand_span(va), operand_span(vb), names)
    xp = None if is_torch(va) else np
    va, vb, squeeze, batch = broadcast_operands(va, vb, xp)
    m, k = va.shape[-2:]
    n = vb.shape[-1]
    bt = int(np.prod(batch, dtype=np.int64))
    man52 = acc.man == 52
    if is_torch(va):
        from hwsim.kernels.float_quantize import float_params
        from hwsim.torch_path.float_gemm import float_gemm

        if va.device != vb.device:
            raise ValueError(f"operands are on different devices: {va.device} and {vb.device}")
        a3 = va.expand(batch + (m, k)).reshape(bt, m, k)
        b3 = vb.expand(batch + (k, n)).reshape(bt, k, n)
        pp = None if product is None else float_params(product)
        out = float_gemm(a3, b3, pp, float_params(acc), rounding, seed_bits(seed), man52)
        if not acc.nan and bool(out.isnan().any()):
            _raise_nan(acc, product)
        return squeeze_result(out.reshape(batch + (m, n)), squeeze)
    from hwsim.kernels import float_gemm as kfg
    from hwsim.kernels.float_quantize import float_params

    a3 = np.ascontiguousarray(np.broadcast_to(va, batch + (m, k))).reshape(bt, m, k)
    b3 = np.ascontiguousarray(np.broadcast_to(vb, batch + (k, n))).reshape(bt, k, n)
    ap = float_params(acc)
    pp = ap if product is None else float_params(product)
    run = kfg.float_gemm_kernel(int(rounding), product is not None)
    out = np.empty((bt, m, n), dtype=np.float64)
    with threads_for(bt * m * n * max(k, 1)):
        run(a3, b3, out, pp, ap, man52, np.uint64(seed_bits(seed)))
    if not acc.nan and np.isnan(out).any():
        _raise_nan(acc, product)
    return squeeze_result(out.reshape(batch + (m, n)), squeeze)


def _raise_nan(acc, product):
    """Only a product format with NaN can bring one into an accumulator without
    (the operands are finite and such an accumulator saturates)."""
    raise ValueError(
        f"a product overflowed to NaN in product format {product}, and accumulator {acc} has "
        f"no NaN code; use a saturating product format (e.g. '{product}_sat') or a wider one"
    )


def float_conv2d(x, w, stride, pads, acc, product, rounding, overflow, x_format, w_format, seed):
    """Float64 values (N, O, Ho, Wo) of the convolution through a float MAC
    array; im2col as ``hwsim.ops.matmul.conv2d_on_codes`` (order (c, kh, kw))."""
    from hwsim.ops.im2col import im2col

    if is_torch(x) != is_torch(w):
        raise ValueError("conv2d takes two NumPy arrays or two torch tensors, not a mix")
    vx = operand_values(x, x_format, "x", rounding, overflow, sub_seed(seed, 1))
    vw = operand_values(w, w_format, "w", rounding, overflow, sub_seed(seed, 2))
    cols, (n, o, ho, wo) = im2col(vx, vw, stride, pads)
    out = float_gemm_values(vw.reshape(1, o, -1), cols, acc, product, rounding, seed, ("w", "x"))
    return out.reshape(n, o, ho, wo)


def add_float(values, addend, fmt, rounding="nearest", *, seed=None, backend=None):
    """``values + addend`` through the accumulator's adder: ``addend`` is rounded
    to the float format ``fmt`` (the cast) and the exact sum rounded once, as
    one more step of the MAC array (a layer's bias, after the K products).
    ``values``: float64 values of ``fmt`` (NumPy array or tensor); ``addend``
    broadcasts to its shape. Stochastic rounding: the cast takes the derived
    seed ``sub_seed(seed, 1)``, the addition counter noise of ``seed`` by
    element. Returns float64 values of ``fmt``.

    >>> import numpy as np
    >>> add_float(np.array([1.0, 1.0]), np.array([2.0**-3, 2.0**-2]), "e5m2").tolist()
    [1.0, 1.25]
    """
    from hwsim.ops.backend import check_backend, on_backend
    from hwsim.ops.quantize import quantize
    from hwsim.plan.checks import fresh_seed, seed64
    from hwsim.plan.float_gemm import check_any_format

    fmt = check_any_format(fmt, "fmt")
    if not isinstance(fmt, FloatingPoint):
        raise ValueError(f"add_float takes a floating-point format, got {fmt} (use add_codes)")
    rounding = Rounding.parse(rounding)
    stochastic = rounding == Rounding.STOCHASTIC
    seed = seed64(seed) if seed is not None else fresh_seed() if stochastic else 0
    if is_torch(values) != is_torch(addend):
        raise ValueError("add_float takes two NumPy arrays or two torch tensors, not a mix")
    back = None
    if check_backend(backend) is not None and (backend == "torch") != is_torch(values):
        (values, addend), back = on_backend(backend, values, addend)
    if is_torch(values):
        import torch

        from hwsim.kernels.float_quantize import float_params
        from hwsim.torch_path.core import counter_uniform
        from hwsim.torch_path.float_gemm import add_round

        acc = values.detach().to(torch.float64)
        t = addend.detach().to(device=acc.device, dtype=torch.float64).expand(acc.shape)
        t = quantize(t.contiguous(), fmt, rounding, seed=sub_seed(seed, 1))
        u = None
        if rounding == Rounding.STOCHASTIC:
            u = counter_uniform(seed, acc.numel(), device=acc.device).reshape(acc.shape)
        out = add_round(acc.contiguous(), t, float_params(fmt), rounding, u, fmt.man == 52)
    else:
        from hwsim.kernels import float_gemm as kfg
        from hwsim.kernels.float_quantize import float_params

        acc = np.ascontiguousarray(values, dtype=np.float64)
        t = np.ascontiguousarray(np.broadcast_to(np.asarray(addend, np.float64), acc.shape))
        t = quantize(t, fmt, rounding, seed=sub_seed(seed, 1))
        out = np.empty(acc.shape, dtype=np.float64)
        with threads_for(out.size, 1 << 16):
            kfg.add_round_kernel(int(rounding))(
                acc.reshape(-1), t.reshape(-1), out.reshape(-1), float_params(fmt),
                fmt.man == 52, np.uint64(seed),
            )  # fmt: skip
    return back(out) if back is not None else out
