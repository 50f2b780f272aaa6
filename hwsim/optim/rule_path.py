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

import numpy as np
import torch

from hwsim.formats import FixedPoint
from hwsim.modes import Overflow, Rounding
from hwsim.optim.kinds import accumulator_values, saturated_sample
from hwsim.optim.paths import ParamStep, _as_complex
from hwsim.optim.precision import STATE_STREAM_BASE, STREAM, mix_seed
from hwsim.optim.rule_math import DECAY, DECOUPLED, MATH
from hwsim.optim.rules import Rule, real_view
from hwsim.optim.telemetry import sample_of, sample_size
from hwsim.torch_path.core import signed64


def _slots(ctx: ParamStep, rule: Rule, like: torch.Tensor, used, unused=None):
    """The rule's state slots as float64 real views (created where missing,
    at the rule's initial value, shaped like ``like``), padded to three;
    a slot this step does not use is ``unused`` (default ``like``)."""
    entry = MATH[rule.math]
    unused = like if unused is None else unused
    slots = []
    for k, name in enumerate(rule.state_names):
        value = ctx.state.get(name)
        if not used[k]:
            slots.append(unused)
            continue
        if value is None:
            init = entry.slots[k][0]
            init = ctx.group[init] if isinstance(init, str) else init
            value = torch.full(like.shape, init, dtype=torch.float64, device=like.device)
        else:
            value = real_view(value)
            if value.dtype != torch.float64:  # e.g. float32 states loaded into a quantized group
                value = value.to(torch.float64)
        slots.append(value)
    return tuple(slots) + (unused,) * (3 - len(slots))


def _store_states(ctx: ParamStep, rule: Rule, new, used) -> None:
    complex_param = ctx.whole.is_complex()
    for k, name in enumerate(rule.state_names):
        if used[k]:
            ctx.state[name] = _as_complex(new[k], complex_param)


def _state_telemetry(ctx: ParamStep, name: str, raw_sample, stored_sample, raw, numel) -> None:
    fmt = ctx.prec.state.get(name)
    saturated = saturated_sample(raw, stored_sample, fmt)
    ctx.counts.add_state(name, raw_sample, stored_sample, saturated, numel)


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
        _state_telemetry(ctx, name, sample_of(x), sample_of(stored), x, x.numel())
    return stored


def rule_update(ctx: ParamStep, rule: Rule) -> torch.Tensor:
    """The rule's update (the parameter's real view; float64 in a quantized
    group) from the quantized gradient, with torch ops; the states stored
    quantized. A rule without math (:class:`~hwsim.optim.rules.Rule`'s
    ``update``) is called with the same gradient, master weight and store."""
    prec = ctx.prec
    grad = real_view(ctx.whole.grad).to(torch.float64 if prec.quantized else ctx.p.dtype)
    if prec.grad is not None:
        grad = ctx.quantize(grad, prec.grad, prec.grad_rounding, STREAM["grad"])
    if not rule.math:
        return _custom_update(ctx, rule, grad)
    entry = MATH[rule.math]
    h, opts = entry.hyper(ctx.group, ctx.step, ctx.state)
    used = entry.used(opts)
    w = _master(ctx, grad) if opts & (DECAY | DECOUPLED) else None

    def store(x: torch.Tensor, slot: int) -> torch.Tensor:
        return _stored(ctx, rule.state_names[slot], slot, x)

    update, new = entry.math(grad, w, _slots(ctx, rule, grad, used), h, opts, store)
    _store_states(ctx, rule, new, used)
    return update


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


def fused_rule_update(ctx: ParamStep, rule: Rule, grad_flat: np.ndarray, buffers):
    """:func:`rule_update` as one Numba pass: returns ``(update, max
    |update|, whether one is not finite)``, the update a flat float64 NumPy
    array. ``buffers``: two flat float64 arrays of the gradient's size kept
    between steps, the update's and a zero one the kernel reads for the
    slots this step does not use (not a used slot: the kernel's loop is
    vectorized only where its arrays do not overlap)."""
    scratch, zeros = buffers
    from hwsim.optim import rule_kernel as rk  # compiles the rules on first use

    prec = ctx.prec
    entry = MATH[rule.math]
    h, opts = entry.hyper(ctx.group, ctx.step, ctx.state)
    used = entry.used(opts)
    like = ctx.state["accumulator"]
    unused = torch.from_numpy(zeros).reshape(like.shape)
    slots = _slots(ctx, rule, unused, used, unused)
    slots = tuple(s if s.is_contiguous() else s.contiguous() for s in slots)
    formats = [prec.state.get(name) for name in rule.state_names]
    kernel_opts = rk.kernel_options(
        opts, used, formats, int(prec.state_rounding), prec.overflow == Overflow.WRAP
    )
    grad_rounding = -1 if prec.grad is None else int(prec.grad_rounding)
    streams = [STREAM["grad"]] + [STATE_STREAM_BASE + k for k in range(3)]
    seeds = np.zeros(4, np.int64)
    if Rounding.STOCHASTIC in (prec.grad_rounding, prec.state_rounding):
        seeds[:] = [signed64(mix_seed(prec.seed, ctx.step, ctx.index, s)) for s in streams]
    record = ctx.counts is not None and any(f is not None for f in formats)
    n = grad_flat.size
    raw = np.empty((3, sample_size(n))) if record else None  # the states before quantization
    arrays = (grad_flat, *(s.reshape(-1).numpy() for s in slots), like.reshape(-1).numpy())
    top, bad = rk.run_rule(
        rule.math,
        kernel_opts,
        grad_rounding,
        (*arrays, scratch),
        h,
        rk.constants_of(prec.grad, prec.target.lsb, formats),
        seeds,
        raw,
    )
    _store_states(ctx, rule, slots, used)
    if record:
        for k, name in enumerate(rule.state_names):
            if used[k] and formats[k] is not None:
                state = slots[k]
                _state_telemetry(ctx, name, torch.from_numpy(raw[k]), sample_of(state), state, n)
    return scratch, top, bad
