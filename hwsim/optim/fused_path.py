"""The fused execution path of a parameter's step: the elementwise pipeline
from a flat source (the raw gradient of a pointwise rule, or a rule's float64
update) to the weight, as one Numba pass over CPU memory
(:mod:`hwsim.optim.fused`; the same bits as :mod:`hwsim.optim.paths`), and
the speculative variant that checks the gradient in the same pass and takes
the step back should any gradient of the ``step()`` be bad.

The optimizer keeps, per parameter, cached flat views of its accumulator and
storage (:class:`FlatViews`, in ``QuantizedOptimizer._views``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from hwsim.errors import NonFiniteError
from hwsim.optim.fused import (
    CHECK_IN_KERNEL_FROM,
    AccumulatorBound,
    Draw,
    fused_step,
    undo_step,
)
from hwsim.optim.paths import ParamStep, check_gradient, numpy_view
from hwsim.optim.rule_math import MATH, Pointwise

CODE_DTYPES = (torch.int32, torch.float64)  # the accumulator's storage (accumulator_dtype)
IDENTITY = Pointwise(False, 1.0)  # a rule's update, added as it is


class FlatViews:
    """A parameter's cached views (see :func:`flat_views`)."""

    __slots__ = ("acc", "storage", "acc_flat", "param", "bound", "version", "written", "states")

    def __init__(
        self, acc: torch.Tensor, storage: tuple, acc_flat: np.ndarray, param: np.ndarray
    ) -> None:
        self.acc, self.storage, self.acc_flat, self.param = acc, storage, acc_flat, param
        self.bound = AccumulatorBound()
        self.version: int | None = None  # the accumulator's, when the bound was last true
        # (fused step, the parameter's version, k with max |gradient| < 2^k) of the last
        # step, where the fused step wrote the parameter; else None (see speculation)
        self.written: tuple | None = None
        # (zeros buffer, its view shaped as the parameter, the state slots, their flat
        # NumPy views) of the last fused rule step (rule_path._fused_inputs)
        self.states: tuple | None = None


def version_of(t: torch.Tensor) -> int | None:
    """torch's version counter of ``t`` (None for an inference tensor, which has none)."""
    try:
        return t._version
    except RuntimeError:
        return None


def step_fused(opt, ctx: ParamStep, source: np.ndarray, rule: Pointwise, source_max: float) -> bool:
    """The elementwise pipeline from ``source`` (finite, at most ``source_max``
    in magnitude) to the weight, as one Numba pass. Returns False, having
    changed nothing, where the torch ops must run instead."""
    state, prec, p = ctx.state, ctx.prec, ctx.p
    if state["accumulator"].dtype not in CODE_DTYPES:  # a hand-made state: torch ops take any
        return False
    fused = fused_step_of(ctx, rule)
    views = flat_views(opt, p, state)
    counts = ctx.counts
    result = fused(
        source,
        views.acc_flat,
        views.param,
        float(rule.scale),
        source_max,
        Draw(prec.seed, ctx.step, ctx.index),
        counts is not None,
        views.bound,
    )
    if result is None:
        return False
    if rule is not IDENTITY:  # the parameter holds the weight of the accumulator (speculation)
        views.written = (fused, version_of(p), math.frexp(source_max)[1])  # |source| < 2^exponent
    if counts is not None:
        counts.add_kernel(result, source.size, len(result[3]))
    return True


def fused_step_of(ctx: ParamStep, rule: Pointwise):
    """The group's :class:`~hwsim.optim.fused.FusedStep` for ``rule``'s input
    (a pointwise rule's gradient, or :data:`IDENTITY`: a rule's update)."""
    prec, fused_steps = ctx.prec, ctx.fused_steps
    key = rule.sign if rule is not IDENTITY else None
    fused = fused_steps.get(key)
    if fused is None:
        fused = fused_steps[key] = fused_step(
            rule.sign,
            prec.grad if rule is not IDENTITY else None,
            prec.update,
            prec.target,
            prec.weight if prec.accumulator is not None else None,
            (
                int(prec.grad_rounding),
                int(prec.update_rounding),
                int(prec.target_rounding),
                int(prec.weight_rounding),
            ),
            int(prec.overflow),
        )
    return fused


def flat_views(opt, p: torch.Tensor, state: dict) -> FlatViews:
    """Flat NumPy views of the accumulator and of the parameter's storage,
    kept between steps while both tensors stay the same (building them
    costs more Python time than a small tensor's step), with the bound on
    the accumulator's codes that the fused kernel keeps; the bound is
    dropped when torch's version counter shows that something other than
    the kernel (which writes through NumPy) changed the accumulator."""
    acc = state["accumulator"]
    if not acc.is_contiguous():
        acc = state["accumulator"] = acc.contiguous()
    storage = (p.data_ptr(), p.dtype)
    views = opt._views.get(p)
    if views is None or views.acc is not acc:
        views = opt._views[p] = FlatViews(
            acc, storage, acc.reshape(-1).numpy(), p.detach().reshape(-1).numpy()
        )
    elif views.storage != storage:
        views.storage, views.param = storage, p.detach().reshape(-1).numpy()
    version = version_of(acc)
    if version is None or version != views.version:  # an inference tensor: never trust it
        views.bound.top, views.version = None, version
    return views


def speculation(opt, p: torch.Tensor, grad: torch.Tensor, group: dict, fused_steps: dict):
    """``(fused step, scale, views, flat gradient, exponent)`` where ``p``'s
    step can check its gradient inside the fused kernel
    (:meth:`~hwsim.optim.fused.FusedStep.speculate`, which saves a read of
    the gradient), else ``None``. It can where the step could be exactly
    undone should any gradient of this ``step()`` hold a NaN or an Inf: the
    previous step of ``p`` was the same fused step, and neither the parameter
    nor the accumulator changed since (torch's version counters; a write
    through ``.data`` or NumPy bypasses them: see QuantizedOptimizer), so the
    parameter holds the weight of the accumulator; and ``p`` is large
    (``CHECK_IN_KERNEL_FROM``: for a small tensor the separate check costs
    little, and the max |grad| of a few elements often more than doubles
    between steps, which would undo every other step). The plan assumes
    |grad| is at most twice the power of two above its previous max
    (``exponent``: :func:`~hwsim.optim.fused.top_exponent`); a larger one is
    caught in the kernel, undone, and stepped the usual way."""
    views = opt._views.get(p)
    if views is None or views.written is None or views.acc_flat.size < CHECK_IN_KERNEL_FROM:
        return None
    fused, version, exponent = views.written
    acc = views.acc
    if (
        version != version_of(p)
        or views.version is None
        or views.version != version_of(acc)
        or opt.state[p].get("accumulator") is not acc
        or views.storage != (p.data_ptr(), p.dtype)
        or not p.is_contiguous()
    ):
        return None
    pointwise = MATH[opt.rule.math].pointwise_step(group) if opt.rule.math else None
    if pointwise is None or fused_steps.get(pointwise.sign) is not fused:
        return None
    flat = numpy_view(grad)
    if flat is None:
        return None
    return fused, float(pointwise.scale), views, flat, exponent


def step_speculative(opt, speculative: list) -> tuple[dict, dict]:
    """Run the steps :func:`speculation` planned, all or none: where a
    gradient holds a NaN, an Inf or a magnitude the plan did not allow,
    every one of them is undone and they take the usual path, after the
    usual check (which raises, the parameters unchanged, on a NaN or an
    Inf). Returns the kernel's results of the steps that ran and the
    check's of those left to the usual path, by parameter index."""
    done, deferred = [], []
    telemetry = opt.telemetry_enabled
    for p, index, prec, (fused, scale, views, flat, exponent) in speculative:
        result = fused.speculate(
            flat,
            views.acc_flat,
            views.param,
            scale,
            exponent,
            Draw(prec.seed, opt.state[p]["step"] + 1, index),
            telemetry,
            views.bound,
        )
        if result is False:
            for *_, taken in reversed(done):
                undo_step(taken[5])
            deferred = [(p, index) for p, index, *_ in speculative]
            done = []
            break
        if result is None:  # not run: checked and stepped the usual way
            deferred.append((p, index))
        else:
            done.append((p, index, views, result))
    try:
        checked = {index: check_gradient(p, p.grad, index) for p, index in deferred}
    except NonFiniteError:
        for *_, taken in reversed(done):
            undo_step(taken[5])
        raise
    for p, _, views, result in done:
        opt.state[p]["step"] += 1
        fused, version, _ = views.written
        views.written = (fused, version, result[4])
    return {index: result for _, index, _, result in done}, checked
