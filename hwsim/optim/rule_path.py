"""A quantized group's rule, run from its one definition
(:mod:`hwsim.optim.rule_math`) two ways: :func:`rule_update` with torch ops
on float64 tensors (any device: the reference, and what a GPU runs), and
:func:`fused_rule_update`, one Numba pass over CPU memory
(:mod:`hwsim.optim.rule_kernel`). Both return the rule's update, which the
pipeline's tail (:mod:`hwsim.optim.paths`, :mod:`hwsim.optim.fused_path`)
adds into the accumulator; both store the states quantized, with the same
counter noise, so their bits are equal.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from hwsim.formats import FixedPoint
from hwsim.kernels.jit import SERIAL_BELOW_ELEMENTWISE
from hwsim.modes import Overflow, Rounding
from hwsim.optim import fused_path
from hwsim.optim import rule_kernel as rk
from hwsim.optim.fused import Draw
from hwsim.optim.kinds import accumulator_values, saturated_sample, state_dtype
from hwsim.optim.paths import ParamStep, _as_complex
from hwsim.optim.precision import STATE_STREAM_BASE, STREAM, mix_seed
from hwsim.optim.rule_math import DECAY, DECOUPLED, MATH
from hwsim.optim.rules import Rule, real_view
from hwsim.optim.telemetry import sample_of, sample_size, sample_stride, state_counts
from hwsim.torch_path.core import signed64


def _slots(ctx: ParamStep, rule: Rule, like: torch.Tensor, used, unused=None):
    """The rule's state slots as real views in their storage dtypes, padded to
    three; a slot this step does not use is ``unused`` (default ``like``).
    A missing state is created at the rule's initial value, shaped like
    ``like``, as :func:`~hwsim.optim.kinds.state_dtype` stores its format
    (float64 where the initial value is not exact in float32); a state keeps
    its dtype where that holds every value of its format exactly (float64,
    or float32 where the format fits), else (e.g. a float32 state loaded for a
    32-bit format) it is converted to float64. Both paths keep each state's
    dtype: the fused kernel writes in place, :func:`_store_states` casts."""
    entry = MATH[rule.math]
    unused = like if unused is None else unused
    slots = []
    for k, name in enumerate(rule.state_names):
        value = ctx.state.get(name)
        if not used[k]:
            slots.append(unused)
            continue
        dtype = state_dtype(ctx.prec.state.get(name))
        if value is None:
            init = entry.slots[k][0]
            init = ctx.group[init] if isinstance(init, str) else init
            if float(torch.tensor(init, dtype=dtype)) != init:
                dtype = torch.float64
            value = torch.full(like.shape, init, dtype=dtype, device=like.device)
        else:
            value = real_view(value)
            if value.dtype not in (dtype, torch.float64):
                value = value.to(torch.float64)
        slots.append(value)
    return tuple(slots) + (unused,) * (3 - len(slots))


def _store_states(ctx: ParamStep, rule: Rule, new, used, like=None) -> None:
    """Store the states a step wrote (``new``), each in the dtype of its slot
    in ``like`` (:func:`_slots`' tuple; None: as they are)."""
    complex_param = ctx.whole.is_complex()
    for k, name in enumerate(rule.state_names):
        if used[k]:
            value = new[k] if like is None else new[k].to(like[k].dtype)
            ctx.state[name] = _as_complex(value, complex_param)


def _master(ctx: ParamStep, like: torch.Tensor) -> torch.Tensor:
    """The master weight: the accumulator's values, else the parameter's."""
    target = ctx.prec.target
    if target is None:
        return ctx.p.detach().to(like.dtype)
    return accumulator_values(ctx.state["accumulator"], target).reshape(like.shape)


def _stored(ctx: ParamStep, name: str, slot: int, x: torch.Tensor) -> torch.Tensor:
    """State ``name`` (stream slot ``slot``) quantized to its format, its
    telemetry counted; ``x`` itself where it has no format."""
    fmt = ctx.prec.state.get(name)
    if fmt is None:
        return x
    stored = ctx.quantize(x, fmt, ctx.prec.state_rounding, STATE_STREAM_BASE + slot)
    if ctx.counts is not None:
        for step, raw, value in ctx.each(x, stored):
            kept = sample_of(value)
            saturated = saturated_sample(raw, kept, fmt)
            step.counts.add_state(name, sample_of(raw), kept, saturated, raw.numel())
    return stored


def rule_update(ctx: ParamStep, rule: Rule) -> torch.Tensor:
    """The rule's update (the parameter's real view; float64 in a quantized
    group) from the quantized gradient, with torch ops; the states stored
    quantized. A rule without math (:class:`~hwsim.optim.rules.Rule`'s
    ``update``) is called with the same gradient, master weight and store."""
    grad = _gradient(ctx)
    if not rule.math:
        return _custom_update(ctx, rule, grad)
    entry = MATH[rule.math]
    h, opts = entry.hyper(ctx.group, ctx.step, ctx.state)
    used = entry.used(opts)
    w = _master(ctx, grad) if opts & (DECAY | DECOUPLED) else None

    def store(x: torch.Tensor, slot: int) -> torch.Tensor:
        return _stored(ctx, rule.state_names[slot], slot, x)

    slots = _slots(ctx, rule, grad, used)
    states = tuple(s.to(torch.float64) for s in slots)  # the math runs in float64
    update, new = entry.math(grad, w, states, h, opts, store)
    _store_states(ctx, rule, new, used, slots)
    return update


def _gradient(ctx: ParamStep) -> torch.Tensor:
    """The parameter's gradient (real view) in float64 (a quantized group),
    on its format's grid (a Stack of them for a BatchStep)."""
    prec = ctx.prec
    raw = ctx.raw_grad()
    grad = raw.to(torch.float64 if prec.quantized else ctx.p.dtype)
    if prec.grad is not None:  # in place where ``to`` made a copy
        grad = ctx.quantize(grad, prec.grad, prec.grad_rounding, STREAM["grad"], grad is not raw)
    return grad


def _custom_update(ctx: ParamStep, rule: Rule, grad: torch.Tensor) -> torch.Tensor:
    complex_param = ctx.whole.is_complex()

    def store(name: str, value: torch.Tensor) -> torch.Tensor:
        stored = _stored(ctx, name, rule.state_names.index(name), real_view(value))
        ctx.state[name] = _as_complex(stored, complex_param)  # torch keeps complex states
        return stored

    def weight() -> torch.Tensor:
        return _master(ctx, grad)

    states = {k: real_view(v) if torch.is_tensor(v) else v for k, v in ctx.state.items()}
    return rule.update(grad, weight, states, ctx.group, ctx.step, store, ctx.prec.quantized)


def fusable(ctx: ParamStep, rule: Rule) -> bool:
    """The fused pass takes this step: CPU float32/float64 contiguous
    parameter with a fixed-point pipeline (``ctx.fused``) and fixed-point (or
    no) state formats. (A pointwise step, :meth:`RuleMath.pointwise_step`,
    has a single pass of its own, tried first.)"""
    return (
        ctx.fused
        and all(isinstance(f, FixedPoint) for f in ctx.prec.state.values() if f is not None)
        and ctx.whole.grad.is_contiguous()
    )


class _Static(NamedTuple):
    """What a group's fused steps of a rule share for one set of flags, kept
    in the group's ``fused_steps`` (rebuilt with its precision): working it
    out per parameter and step cost more than a small tensor's kernel."""

    used: tuple
    formats: list
    kernel_opts: int
    grad_rounding: int
    constants: np.ndarray  # the rule pass's format constants (rule_kernel.constants_of)
    tops: list  # per state slot: max |stored value| (inf: no format)
    lows: list  # per state slot: the least stored value (-inf: no format)


class _Fused(NamedTuple):
    """What both fused forms of a rule's step read (:func:`_fused_inputs`)."""

    h: tuple
    opts: int
    static: _Static  # what the flags fix: formats, kernel options, constants
    slots: tuple  # the states' tensors (float32 or float64), padded to three
    seeds: np.ndarray
    arrays: tuple  # flat NumPy views: the states, the accumulator


def _static(ctx: ParamStep, rule: Rule, opts: int) -> _Static:
    key = ("rule", rule.math, opts)
    static = ctx.fused_steps.get(key)
    if static is None:
        prec = ctx.prec
        used = MATH[rule.math].used(opts)
        formats = [prec.state.get(name) for name in rule.state_names]
        kernel_opts = rk.kernel_options(
            opts, used, formats, int(prec.state_rounding), prec.overflow == Overflow.WRAP
        )
        padded = formats + [None] * (3 - len(formats))
        static = ctx.fused_steps[key] = _Static(
            used,
            formats,
            kernel_opts,
            -1 if prec.grad is None else int(prec.grad_rounding),
            rk.constants_of(prec.grad, prec.target.lsb, formats),
            [_top(f) for f in padded],
            [-math.inf if f is None else f.min_code * f.lsb for f in padded],
        )
    return static


def _fused_inputs(ctx: ParamStep, rule: Rule, zeros: np.ndarray, hyper=None, views=None) -> _Fused:
    """The rule's hyperparameters and flags (``hyper``, where the caller has
    them), state slots (created where missing, not yet stored; an unused one
    reads ``zeros``: not a used slot, as the kernel's loop is vectorized only
    where its arrays do not overlap) and the kernel's options and seeds.
    ``views``: the parameter's :class:`~hwsim.optim.fused_path.FlatViews`,
    which keep the slots' flat NumPy views while the slots stay the same
    tensors (building them cost more than a small tensor's kernel)."""
    prec = ctx.prec
    h, opts = hyper or MATH[rule.math].hyper(ctx.group, ctx.step, ctx.state)
    static = _static(ctx, rule, opts)
    used = static.used
    like = ctx.state["accumulator"]
    cached = None if views is None else views.states
    if cached is not None and cached[0] is zeros and views.acc is like:
        unused = cached[1]
    else:
        unused, cached = torch.from_numpy(zeros).reshape(like.shape), None
    slots = _slots(ctx, rule, unused, used, unused)
    slots = tuple(s if s.is_contiguous() else s.contiguous() for s in slots)
    seeds = np.zeros(4, np.int64)
    if rule_stochastic(prec):
        streams = (STREAM["grad"], STATE_STREAM_BASE, STATE_STREAM_BASE + 1, STATE_STREAM_BASE + 2)
        seeds[:] = [signed64(mix_seed(prec.seed, ctx.step, ctx.index, s)) for s in streams]
    where = tuple((s, s.data_ptr()) for s in slots)  # the same tensors on the same memory
    if cached is not None and all(
        a is b and p == q for (a, p), (b, q) in zip(cached[2], where, strict=True)
    ):
        arrays = cached[3]
    else:
        arrays = (*(s.reshape(-1).numpy() for s in slots), like.reshape(-1).numpy())
        if views is not None:
            views.states = (zeros, unused, where, arrays)
    return _Fused(h, opts, static, slots, seeds, arrays)


def _finish(ctx: ParamStep, rule: Rule, f: _Fused, raw) -> None:
    """Store the states the kernel wrote; their telemetry from ``raw`` (the
    values before quantization at the sample, :func:`~hwsim.optim.
    rule_kernel.sample_kernel`'s) where given."""
    _store_states(ctx, rule, f.slots, f.static.used)
    if raw is None:
        return
    n = f.arrays[-1].size
    stride = sample_stride(n)
    for k, name in enumerate(rule.state_names):
        fmt = f.static.formats[k]
        if f.static.used[k] and fmt is not None:  # fixed point (rule_path.fusable)
            counted = state_counts(raw[k], f.arrays[k], stride, fmt.min, fmt.max)
            ctx.counts.add_state_counts(name, counted, raw.shape[1], n)


def fused_rule_update(ctx: ParamStep, rule: Rule, grad_flat: np.ndarray, buffers):
    """:func:`rule_update` as one Numba pass: returns ``(update, max
    |update|, whether one is not finite)``, the update a flat float64 NumPy
    array. ``buffers``: two flat float64 arrays of the gradient's size kept
    between steps, the update's and a zero one (:func:`_fused_inputs`)."""
    scratch, zeros = buffers
    f = _fused_inputs(ctx, rule, zeros)
    static = f.static
    record = ctx.counts is not None and any(fmt is not None for fmt in static.formats)
    raw = np.empty((3, sample_size(grad_flat.size))) if record else None
    top, bad = rk.run_rule(
        rule.math,
        static.kernel_opts,
        static.grad_rounding,
        (grad_flat, *f.arrays, scratch),
        f.h,
        static.constants,
        f.seeds,
        raw,
    )
    _finish(ctx, rule, f, raw)
    return scratch, top, bad


_PRODUCT_SAFE = 2.0**400  # bounds below this: no product of two of them overflows


def _top(fmt) -> float:
    """max |value| of a fixed-point format (inf: no format)."""
    return math.inf if fmt is None else max(-fmt.min_code, fmt.max_code) * fmt.lsb


def update_bound(ctx: ParamStep, rule: Rule, h, opts: int, grad_max: float) -> float | None:
    """A bound on |update| of this step from its math (``RuleMath.bound``),
    the gradient's max and the formats, with a margin for the bound's own
    rounding; ``None`` where none can be proved, or where the math's
    intermediate values could overflow (the torch ops then raise)."""
    bound = MATH[rule.math].bound
    prec = ctx.prec
    if bound is None:
        return None
    g = grad_max
    if prec.grad is not None:  # a rounding moves a value by less than an LSB
        g = _top(prec.grad)
        g = g if prec.overflow == Overflow.WRAP else min(g, grad_max + prec.grad.lsb)
    static = _static(ctx, rule, opts)
    tops = static.tops
    w = _top(prec.target)
    b = bound(h, opts, g, w, tops, static.lows) * (1 + 2.0**-30)
    finite = [x for x in (g, w, *tops) if math.isfinite(x)]
    return b if b < _PRODUCT_SAFE and max(finite) < _PRODUCT_SAFE else None


ONE_PASS_ALWAYS = False  # tests set it: the one pass wherever a bound is proved


def _pays(fused, prepared, prec) -> bool:
    """Whether the one pass is the faster (``python benchmarks/optim.py
    --passes``, 1M parameters, 2 threads, one pass / two: SGD momentum 0.94
    with nearest rounding; where the bound is loose, as Adam's and AdaGrad's
    (the update's overflow step and the accumulator's clamps), 1.1, and
    with stochastic rounding, four counter hashes in one loop, 1.07-1.19)."""
    delta_overflow = prepared[2][1]
    return not (delta_overflow or fused.any_stochastic or rule_stochastic(prec))


def rule_stochastic(prec) -> bool:
    """The rule's own stages (gradient, states) round stochastically."""
    return Rounding.STOCHASTIC in (prec.grad_rounding, prec.state_rounding)


def fused_rule_step(opt, ctx: ParamStep, rule: Rule, checked, buffers) -> bool:
    """The whole step in one Numba pass (:func:`~hwsim.optim.rule_kernel.
    rule_kernel`: the rule's math, then the update added by the fused
    step's stages, planned for :func:`update_bound`), the same bits as
    :func:`fused_rule_update` and the fused step after it, with neither the
    update's buffer nor its check. Returns False, having changed nothing,
    where no bound is proved or the fused step's plan declines."""
    grad_flat, grad_max = checked
    state, prec = ctx.state, ctx.prec
    if state["accumulator"].dtype not in fused_path.CODE_DTYPES:
        return False
    h, opts = MATH[rule.math].hyper(ctx.group, ctx.step, state)
    limit = update_bound(ctx, rule, h, opts, grad_max)
    if limit is None:
        return False
    fused = fused_path.fused_step_of(ctx, fused_path.IDENTITY)
    views = fused_path.flat_views(opt, ctx.p, state)
    telemetry = ctx.counts is not None
    n = grad_flat.size
    draw = Draw(prec.seed, ctx.step, ctx.index)
    prepared = fused._prepare(
        grad_flat, views.acc_flat, views.param, 1.0, limit, draw, telemetry, views.bound
    )
    if prepared is None or not (ONE_PASS_ALWAYS or _pays(fused, prepared, prec)):
        return False
    key, (_, _, _, tail_constants, tail_seeds, sample, stride), _, top_after = prepared
    scratch, zeros = buffers
    f = _fused_inputs(ctx, rule, zeros, (h, opts), views)
    static = f.static
    hyper = np.zeros(8)
    hyper[: len(f.h)] = f.h
    rule_constants = static.constants
    constants = np.concatenate([hyper, rule_constants, tail_constants, [limit]])
    seeds = np.concatenate([f.seeds, tail_seeds])
    states, acc = tuple(f.arrays[:3]), views.acc_flat
    raw = None
    if telemetry:  # the states before quantization and the updates, at the sample
        raw = np.empty((3, sample.size))
        kernel = rk.sample_kernel(rule.math, static.kernel_opts, static.grad_rounding)
        kernel(grad_flat, states, acc, scratch, hyper, rule_constants, f.seeds, stride, raw)
    kernels = rk.rule_kernel(rule.math, static.kernel_opts, static.grad_rounding, fused.modes(key))
    run = kernels[n >= SERIAL_BELOW_ELEMENTWISE]
    *counted, beyond, _ = run(
        grad_flat, states, acc, views.param, constants, seeds, scratch, sample, stride
    )
    if beyond:
        raise RuntimeError(
            f"hwsim internal error: {beyond} updates of parameter {ctx.index} exceeded their "
            f"proved bound {limit} (rule {rule.math}); please report it"
        )
    views.bound.top = top_after
    _finish(ctx, rule, f, raw if any(fmt is not None for fmt in static.formats) else None)
    if telemetry:
        ctx.counts.add_kernel((*counted, sample), n, len(sample))
    return True
