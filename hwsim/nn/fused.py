"""The fused step of a fixed-point layer: the same bits as
the layer's chain of quantizers and MAC arrays (``QuantizeFunction`` on the
input, weight and bias, ``MACLinearFunction`` / ``MACConv2dFunction``, the
output quantizer), in one autograd function with a few kernel calls.

A layer's formats, roundings and kernel constants are resolved once
(:func:`layer_plan`, cached on the Precision). Per call, each operand is
quantized straight to its MAC codes (``hwsim.kernels.layer.operand_kernel``:
the quantizer and the grid scan in one pass) and each GEMM's accumulator codes
go to the quantized float32 output in one pass (``epilogue_kernel``: bias,
float32 cast, next quantizer). The GEMMs themselves are the unfused path's.
This module holds the numba backend's steps; ``hwsim.nn.fused_torch`` the
torch backend's (same names), and ``hwsim.nn.fused_mac`` the autograd
functions that run either.

Taken when every tensor format is fixed point and exact in float32, every
accumulator fixed point, the tensors float32 (on the CPU for numba) and
telemetry off; anything else runs the unfused chain, which also words every
error.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import torch

from hwsim.formats import FixedPoint
from hwsim.kernels.layer import (
    bias_kernel,
    epilogue_kernel,
    operand_kernel,
    split_epilogue_kernel,
)
from hwsim.modes import Overflow, Rounding
from hwsim.ops.numpy_gemm import gemm_2d
from hwsim.plan.checks import float64_holds_codes, fresh_seed, kernel_constants, seed64

_MASK64 = (1 << 64) - 1
_ONES = (1, 1, 1)  # stats of a row of ones
_NO_SEED = np.uint64(0)


@dataclasses.dataclass(frozen=True)
class Quant:
    """One quantizer: format, modes, kernel constants and its two kernels' modes."""

    fmt: FixedPoint
    rounding: Rounding
    overflow: Overflow

    @functools.cached_property
    def constants(self):
        c = kernel_constants(self.fmt)
        return (c.scale, c.wrap_modulus, c.min_code, c.max_code)

    @functools.cached_property
    def operand_kernel(self):
        """``operand_kernel`` of these modes (looked up once, not per call)."""
        return operand_kernel(int(self.rounding), int(self.overflow), self.stochastic)

    @functools.cached_property
    def code_dtype(self):
        """int32 where every code of the format fits it (the MAC kernels'
        lane and BLAS's float copy then read half the bytes), else int64."""
        return np.int32 if self.fmt.wl <= 32 else np.int64

    @functools.cached_property
    def out_constants(self):
        """The constants of ``epilogue_kernel``'s output quantizer: scale,
        LSB, wrap modulus, min and max code."""
        scale, wrap, lo, hi = self.constants
        return scale, self.fmt.lsb, wrap, lo, hi

    def epilogue(self, acc_overflow: Overflow, has_bias: bool):
        """``epilogue_kernel`` into this quantizer (looked up once per mode)."""
        kernels = self.__dict__.setdefault("_epilogues", {})
        run = kernels.get((acc_overflow, has_bias))
        if run is None:
            run = kernels[acc_overflow, has_bias] = epilogue_kernel(
                int(acc_overflow), has_bias, int(self.rounding), int(self.overflow), self.stochastic
            )
        return run

    @functools.cached_property
    def split_epilogue(self):
        """``split_epilogue_kernel`` into this quantizer."""
        return split_epilogue_kernel(int(self.rounding), int(self.overflow), self.stochastic)

    @functools.cached_property
    def stochastic(self) -> bool:
        return self.rounding == Rounding.STOCHASTIC

    @functools.cached_property
    def float_codes(self) -> bool:
        """Whether float64 holds this quantizer's codes and scaled float32
        inputs exactly (saturate, ``float64_holds_codes``, ``0 <= fl <= 800``: no
        underflow, no overflow), as the torch backend's lean steps need."""
        fmt = self.fmt
        return (
            self.overflow == Overflow.SATURATE and float64_holds_codes(fmt) and 0 <= fmt.fl <= 800
        )

    def seed(self, seed) -> np.uint64:
        """The kernel's noise key, as ``hwsim.quantize`` takes it."""
        if not self.stochastic:
            return _NO_SEED
        return np.uint64(seed64(fresh_seed() if seed is None else seed))


@dataclasses.dataclass(frozen=True)
class Mac:
    """One MAC array: accumulator, product, rounding, overflow."""

    acc: FixedPoint
    product: FixedPoint | None
    rounding: Rounding
    overflow: Overflow

    @functools.cached_property
    def acc_constants(self):
        """(min code, max code, LSB) of the accumulator."""
        return self.acc.min_code, self.acc.max_code, self.acc.lsb

    def seed(self, seed):
        """The GEMM's seed, as ``check_gemm_args`` makes it."""
        if seed is not None:
            return seed64(seed)
        return fresh_seed() if self.rounding == Rounding.STOCHASTIC else None

    def gemm(self, a, b, seed):
        """Accumulator codes of a @ b, operands as (codes, fl, stats)."""
        return gemm_2d(
            a[0], a[1], b[0], b[1], self.acc, self.product, self.rounding, self.overflow,
            seed, (a[2], b[2]),
        )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    x: Quant  # activation / grad_activation
    gx: Quant
    w: Quant  # weight (and bias) / grad_weight
    gw: Quant
    y: Quant  # output (its gradient: gx's format)
    gy: Quant
    forward: Mac
    grad_input: Mac
    grad_weight: Mac

    @functools.cached_property
    def bias_acc(self) -> Quant:
        """The forward accumulator as the quantizer of the bias's codes."""
        return Quant(self.forward.acc, self.forward.rounding, self.forward.overflow)


_FORMATS = ("activation", "weight", "output", "grad_activation", "grad_weight")
_ACCS = ("accumulator", "grad_activation_accumulator", "grad_weight_accumulator")


@functools.cache
def layer_plan(p) -> LayerPlan | None:
    """The fused plan of a Precision, or None where the fused path does not apply."""
    if not p.straight_through or not (p.product is None or type(p.product) is FixedPoint):
        return None
    for f in _FORMATS:
        fmt = getattr(p, f)
        if type(fmt) is not FixedPoint or not fmt.representable_in("float32"):
            return None
    if any(type(getattr(p, a)) is not FixedPoint for a in _ACCS):
        return None
    over = p.overflow_mode

    def q(field, fmt_field=None):
        return Quant(getattr(p, fmt_field or field), p.rounding_of(field), over)

    def mac(acc):
        return Mac(getattr(p, acc), p.product, p.rounding_of(acc), over)

    return LayerPlan(
        q("activation"),
        q("grad_activation"),
        q("weight"),
        q("grad_weight"),
        q("output"),
        q("grad_activation"),
        *(mac(a) for a in _ACCS),
    )


def fused_plan(layer, x: torch.Tensor) -> LayerPlan | None:
    """The layer's plan when this call may take the fused path."""
    rec = layer._telemetry
    if rec is not None and rec.active:
        return None
    w = layer.weight
    if x.dtype != torch.float32 or w.dtype != torch.float32 or x.numel() == 0:
        return None
    if x.device != w.device or (layer.backend == "numba" and x.device.type != "cpu"):
        return None
    return derived(layer, "_fused_plan", layer.precision, layer_plan)


def derived(layer, name: str, source, make):
    """``make(source)``, kept in the layer's ``__dict__`` under ``name``
    while ``source`` stays the same object (a layer call asks it every
    time; hashing a Precision costs more than this identity check)."""
    cached = layer.__dict__.get(name)
    if cached is None or cached[0] is not source:
        cached = layer.__dict__[name] = (source, make(source))
    return cached[1]


def gemm(mac: Mac, a, b, seed):
    """Accumulator codes of a @ b, operands as (codes, fl, stats)."""
    return mac.gemm(a, b, seed)


def codes(t: torch.Tensor, q: Quant, seed):
    """(codes, fl, stats) of ``t`` quantized by ``q``, as ``grid_codes`` finds
    them from the quantized float32 values; None on a non-finite value (the
    caller runs the unfused quantizer, which raises)."""
    arr = t.detach().contiguous().numpy()
    out = np.empty(arr.shape, dtype=q.code_dtype)
    bad, ors, lo, hi = q.operand_kernel(
        arr.reshape(-1), out.reshape(-1), *q.constants, q.seed(seed)
    )
    if bad:
        return None
    ors, lo, hi = int(ors), int(lo), int(hi)
    if ors == 0:
        return out, 0, (0, 0, 0)
    tz = (ors & -ors).bit_length() - 1
    if tz:
        np.right_shift(out, tz, out=out)
        lo, hi = lo >> tz, hi >> tz
    return out, q.fmt.fl - tz, (max(-lo, hi), lo, hi)


def noises(like, *requests) -> list:
    """The seed of each request ``(q, seed, numel)`` (or None), as :func:`finish`
    takes it (the torch backend's twin may draw the noise itself)."""
    return [None if r is None else r[1] for r in requests]


def finish(acc_codes, mac: Mac, q: Quant, seed, bias=None, inner=1) -> torch.Tensor:
    """Accumulator codes (plus the bias codes ``bias[(i // inner) % len]``) to
    their float32 values, quantized by ``q``: a float32 tensor."""
    flat = np.ascontiguousarray(acc_codes).reshape(-1)
    out = np.empty(acc_codes.shape, dtype=np.float32)
    has_bias = bias is not None
    run = q.epilogue(mac.overflow, has_bias)
    if not has_bias:
        bias = flat[:1]
    lo, hi, lsb = mac.acc_constants
    run(flat, bias, inner, max(bias.size, 1), lo, hi, lsb, out.reshape(-1), *q.out_constants,
        q.seed(seed))  # fmt: skip
    return torch.from_numpy(out)


def finish_split(acc_codes, mac: Mac, q: Quant, seed_w, seed_b):
    """:func:`finish` of a weight-and-bias GEMM's codes (R, C + 1): (the
    first C columns (R, C) with ``seed_w``, the last (R,) with ``seed_b``),
    in one kernel call."""
    rows, cols = acc_codes.shape[0], acc_codes.shape[1] - 1
    out_w = np.empty((rows, cols), dtype=np.float32)
    out_b = np.empty(rows, dtype=np.float32)
    q.split_epilogue(acc_codes, mac.acc_constants[2], out_w, out_b, *q.out_constants,
                     q.seed(seed_w), q.seed(seed_b))  # fmt: skip
    return torch.from_numpy(out_w), torch.from_numpy(out_b)


def bias_codes(b: torch.Tensor, plan: LayerPlan, seeds) -> np.ndarray | None:
    """The bias quantized to the weight format (float32), then to accumulator
    codes with the forward MAC array's rounding (``_add_bias_codes``); None on
    a non-finite value."""
    arr = b.detach().contiguous().numpy().reshape(-1)
    out = np.empty(arr.shape, dtype=np.int64)
    w = plan.w
    seed = seeds[10]
    if seed is not None:
        seed = (seed + 7) & _MASK64
    acc = plan.bias_acc
    run = bias_kernel(
        int(w.rounding), w.stochastic,
        int(acc.rounding), acc.stochastic, int(w.overflow),
    )  # fmt: skip
    scale, wrap, lo, hi = w.constants
    bad = run(arr, out, scale, w.fmt.lsb, wrap, lo, hi, w.seed(seeds[4]), *acc.constants,
              acc.seed(seed))  # fmt: skip
    return None if bad else out
