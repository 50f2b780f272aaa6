"""The torch-ops execution path of one parameter's step (what runs on every
device), as functions over a :class:`ParamStep`: :func:`prepare` (the step
count and the accumulator's first codes), :func:`rule_step` (the rule on the
quantized gradient, its states stored quantized) and :func:`add_update` (the
update quantized, rounded onto the accumulator grid, added, and the weight
re-quantized). Float groups (every format None) step through torch's own
implementation instead (:mod:`hwsim.optim.float_path`). :mod:`hwsim.optim.fused_path` is the sibling path that runs
the elementwise part as one Numba pass; :class:`~hwsim.optim.base.
QuantizedOptimizer` picks between them per parameter.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from hwsim.errors import NonFiniteError
from hwsim.formats import FixedPoint, FloatingPoint
from hwsim.modes import Overflow, Rounding
from hwsim.optim.fused_check import max_abs
from hwsim.optim.kinds import (
    accumulator_dtype,
    at_limits,
    quantize_values,
)
from hwsim.optim.precision import (
    STREAM,
    GroupPrecision,
    mix_seed,
    uniforms,
)
from hwsim.optim.rules import real_view
from hwsim.optim.stack import Stack
from hwsim.optim.telemetry import sample_of
from hwsim.plan.checks import raise_non_finite_torch
from hwsim.torch_path.core import scaled_to_code_float, value_to_code_float
from hwsim.torch_path.quantize import all_finite

FUSED_DTYPES = (torch.float32, torch.float64)  # what the Numba kernel reads and writes


class ParamStep:
    """One parameter's step: what every path reads. ``p`` is the real view of
    a complex parameter (``whole`` the parameter itself); ``fused``: the
    parameter can take the fused path (:mod:`hwsim.optim.fused_path`)."""

    __slots__ = (
        "p",
        "whole",
        "index",
        "group",
        "prec",
        "fused_steps",
        "state",
        "step",
        "counts",
        "fused",
    )

    def __init__(
        self, whole, index, group, prec: GroupPrecision, fused_steps, state, counts, fused
    ):
        self.whole, self.index, self.group, self.prec = whole, index, group, prec
        self.fused_steps = fused_steps  # the group's FusedSteps, by rule input (fused_path)
        self.p = torch.view_as_real(whole) if whole.is_complex() else whole
        self.state, self.counts = state, counts
        self.step = int(state.get("step", 0)) + 1  # a float group keeps torch's tensor
        state["step"] = self.step
        self.fused = fused and self._fusable()

    def _fusable(self) -> bool:
        p = self.whole
        return (
            not p.is_complex()  # the views the fused step caches are of the parameter
            and self.prec.target is not None
            and self.prec.codes_pipeline  # integer codes: the kernel's kind
            and p.is_cpu
            and p.dtype in FUSED_DTYPES
            and p.is_contiguous()
        )

    def noise(self, stream: int, like: torch.Tensor) -> torch.Tensor:
        """The counter noise of ``stream`` for this (seed, step, parameter)."""
        return uniforms(mix_seed(self.prec.seed, self.step, self.index, stream), like)

    def quantize(
        self, x: torch.Tensor, fmt, rounding: Rounding, stream: int, inplace: bool = False
    ) -> torch.Tensor:
        """Float64 ``x`` on the grid of ``fmt`` (values, any kind:
        :func:`~hwsim.optim.kinds.quantize_values`; ``inplace``: ``x`` is a
        temporary it may overwrite), its non-finite values raised (gradients
        were checked in ``step()``), and so is a float format's overflow to
        Inf or NaN."""
        if stream != STREAM["grad"]:
            self.check_finite(x, stream)
        u = self.noise(stream, x) if rounding == Rounding.STOCHASTIC else None
        q = quantize_values(x, fmt, rounding, self.prec.overflow, u, inplace)
        if not isinstance(fmt, FixedPoint):
            self.check_finite(q, stream, fmt)
        return q

    def check_finite(self, x: torch.Tensor, stream: int, fmt=None) -> None:
        """NonFiniteError where ``x`` (this parameter's ``stream``, quantized
        to ``fmt`` if given) holds NaN or Inf."""
        if not all_finite(x):
            raise_non_finite(x, stream, self.p, self.index, fmt)

    def raw_grad(self) -> torch.Tensor:
        """The gradient as the step reads it (the real view of a complex one)."""
        return real_view(self.whole.grad)

    def each(self, *xs):
        """``(step, *xs)`` per parameter: this one."""
        yield (self, *xs)

    def count_fixed(self, raw_update, delta, acc, weight) -> None:
        """The telemetry of :func:`add_update`'s fixed-point tail."""
        prec = self.prec
        w = prec.weight
        weight_saturated = None
        if weight is not None:
            sample = sample_of(weight)
            weight_saturated = at_limits(sample * w.lsb if isinstance(w, FixedPoint) else sample, w)
        self.counts.add_fixed(raw_update, delta, acc, prec.target, weight_saturated)


class BatchStep(ParamStep):
    """Several parameters' steps of one group as one: their tensors as
    :class:`~hwsim.optim.stack.Stack` operands, so :func:`add_update`, written
    once, runs each operation once for all of them (``torch._foreach_`` ops);
    noise, non-finite errors and telemetry stay each parameter's. Its
    :func:`add_update` needs a fixed-point target (:meth:`takes`)."""

    __slots__ = ("steps",)

    def __init__(self, steps: list[ParamStep]):  # noqa: D107 (no ParamStep.__init__)
        self.steps = steps
        first = steps[0]
        self.prec, self.counts = first.prec, first.counts
        self.p = Stack(c.p for c in steps)
        self.state = {}
        if first.prec.target is not None:
            self.state["accumulator"] = Stack(c.state["accumulator"] for c in steps)

    @staticmethod
    def takes(steps: list[ParamStep]) -> bool:
        """The tail of these steps can run as one (a fixed-point target)."""
        return len(steps) > 1 and isinstance(steps[0].prec.target, FixedPoint)

    def raw_grad(self) -> Stack:
        return Stack(c.raw_grad() for c in self.steps)

    def each(self, *xs):
        """``(step, *xs)`` per parameter, a Stack among ``xs`` taken element by element."""
        for i, c in enumerate(self.steps):
            yield (c, *(x.tensors[i] if isinstance(x, Stack) else x for x in xs))

    def noise(self, stream: int, like: Stack) -> Stack:
        return Stack(c.noise(stream, t) for c, t in zip(self.steps, like.tensors, strict=True))

    def quantize(self, x: Stack, fmt, rounding: Rounding, stream: int, inplace=False) -> Stack:
        if isinstance(fmt, FixedPoint):
            return ParamStep.quantize(self, x, fmt, rounding, stream, inplace)
        return Stack(  # a float or block format: its quantizer takes one tensor
            c.quantize(t, fmt, rounding, stream, inplace)
            for c, t in zip(self.steps, x.tensors, strict=True)
        )

    def check_finite(self, x: Stack, stream: int, fmt=None) -> None:
        """One reduction per tensor, one synchronization for all (the
        infinity norm is NaN or Inf exactly where a value is)."""
        full = [t for t in x.tensors if t.numel()]
        if full and not torch.stack(torch._foreach_norm(full, math.inf)).isfinite().all():
            for c, t in zip(self.steps, x.tensors, strict=True):
                c.check_finite(t, stream, fmt)


def prepare(
    whole, index, group, prec: GroupPrecision, fused_steps, state, counts, fused: bool
) -> ParamStep:
    """Count the step and, on the first, start the accumulator as the current
    weight on its grid (codes of a fixed-point format, values of a float one)."""
    ctx = ParamStep(whole, index, group, prec, fused_steps, state, counts, fused)
    target = prec.target
    if target is not None and "accumulator" not in state:
        x = ctx.p.detach().to(torch.float64)
        rounding = prec.target_rounding
        if isinstance(target, FloatingPoint):
            start = ctx.quantize(x, target, rounding, STREAM["init"])
        else:
            if not all_finite(x):
                raise_non_finite(x, STREAM["init"], ctx.p, index)
            u = ctx.noise(STREAM["init"], x) if rounding == Rounding.STOCHASTIC else None
            start = value_to_code_float(x, target, rounding, prec.overflow, u).add_(0.0)  # no -0
        state["accumulator"] = start.to(accumulator_dtype(target))
    return ctx


def add_update(ctx: ParamStep, update: torch.Tensor, owned: bool = False) -> None:
    """The rule's update (float64, the real view) through the rest of the
    pipeline with torch ops: the update format, the accumulator grid and its
    overflow, the weight format. A floating-point accumulator (or weight,
    without one) is :func:`hwsim.optim.float_step.add_to_float`'s.
    ``owned``: ``update`` is a temporary this step may overwrite (where
    telemetry does not read it afterwards)."""
    p, prec, counts = ctx.p, ctx.prec, ctx.counts
    target = prec.target
    raw_update = update
    owned = owned and counts is None and update.dtype == torch.float64
    if prec.update is not None:
        update = ctx.quantize(update, prec.update, prec.update_rounding, STREAM["update"], owned)
        owned = counts is None  # a new tensor
    ctx.check_finite(update, STREAM["update"])
    if target is None:
        new = p + update.to(p.dtype)
        if counts is not None:
            counts.add_float(
                sample_of(raw_update), sample_of(new) == sample_of(p.detach()), p.numel()
            )
        p.copy_(new)
        return
    if isinstance(target, FloatingPoint):
        from hwsim.optim.float_step import add_to_float

        add_to_float(ctx, raw_update, update)
        return
    rounding = prec.target_rounding
    u = ctx.noise(STREAM["accumulator"], update) if rounding == Rounding.STOCHASTIC else None
    delta = value_to_code_float(update, target, rounding, prec.overflow, u, inplace=owned)
    stored = ctx.state["accumulator"]
    acc = (stored if stored.dtype == torch.float64 else stored.to(torch.float64)).add_(delta)
    if prec.overflow == Overflow.SATURATE:
        acc.clamp_(target.min_code, target.max_code)
    else:  # wrap the integer sum (rounding an integer is the identity)
        acc = scaled_to_code_float(acc, target, Rounding.NEAREST, Overflow.WRAP)
    if acc is not stored:
        stored.copy_(acc)  # in place: the fused path's cached views, and its bound, see the change
    weight = None  # the weight's values (a float format) or codes (fixed point)
    w, wr = prec.weight, prec.weight_rounding
    if prec.accumulator is None or w is None:
        torch.mul(acc, target.lsb, out=p.data).add_(0.0)
    elif isinstance(w, FloatingPoint):
        weight = ctx.quantize(acc * target.lsb, w, wr, STREAM["weight"])
        p.data.copy_(weight)
    else:
        uw = ctx.noise(STREAM["weight"], acc) if wr == Rounding.STOCHASTIC else None
        k = 2.0 ** (w.fl - target.fl)
        # a float64 copy of the stored codes is this step's: scaled in place (telemetry
        # reads the codes after)
        scaled = acc.mul_(k) if acc is not stored and counts is None else acc * k
        weight = scaled_to_code_float(scaled, w, wr, prec.overflow, uw, inplace=True)
        torch.mul(weight, w.lsb, out=p.data).add_(0.0)  # codes have no -0: nor do weights
    if counts is not None:
        for step, *args in ctx.each(raw_update, delta, acc, weight):
            step.count_fixed(*args)


def check_gradient(
    p: torch.Tensor, grad: torch.Tensor, index: int
) -> tuple[np.ndarray | None, float | None]:
    """Raise NonFiniteError if ``grad`` (``p.grad``) holds NaN or Inf. Returns
    the flat NumPy view of the gradient and max |grad| where the Numba check
    ran (CPU float32/float64, contiguous), else ``(None, None)``."""
    flat = numpy_view(grad)
    if flat is not None:
        top = max_abs(flat)
        if not math.isfinite(top):
            raise_non_finite(grad, STREAM["grad"], p, index)
        return flat, top
    if not all_finite(grad):
        raise_non_finite(grad, STREAM["grad"], p, index)
    return UNCHECKED


UNCHECKED = (None, None)


def numpy_view(t: torch.Tensor) -> np.ndarray | None:
    """The flat NumPy view of a contiguous float32/float64 CPU tensor, else None."""
    if t.layout == torch.strided and t.is_cpu and t.dtype in FUSED_DTYPES and t.is_contiguous():
        return (t.detach() if t.requires_grad else t).numpy().reshape(-1)
    return None


def _complex(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype whose real view has ``dtype``."""
    return {torch.float16: torch.complex32, torch.float64: torch.complex128}.get(
        dtype, torch.complex64
    )


def _as_complex(t: torch.Tensor, complex_param: bool) -> torch.Tensor:
    """``t`` (a real view, last dim 2) as the complex tensor of a complex param."""
    if complex_param and not t.is_complex():
        return torch.view_as_complex(t.contiguous())
    return t


_STREAM_NAMES = {v: k for k, v in STREAM.items()}


def raise_non_finite(x, stream, p, index, fmt=None):
    """NonFiniteError for ``x``, noting which tensor of which parameter it was
    (``fmt``: the float format ``x`` overflowed in, quantized)."""
    what = _STREAM_NAMES.get(stream, "state")
    try:
        raise_non_finite_torch(x)
    except NonFiniteError as err:
        note = (
            f"hwsim.optim: the {what} of parameter {index} (shape {tuple(p.shape)}) is not finite"
        )
        if fmt is not None:
            note += f" after its quantization to {fmt}: it overflowed the format"
            if isinstance(fmt, FloatingPoint) and not fmt.saturate:
                note += f" ('{fmt}_sat' clamps at its largest value instead)"
        err.add_note(note)
        raise
