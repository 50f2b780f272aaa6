"""The torch path's steps of a group's parameters, run together: the rule's
math (:mod:`hwsim.optim.rule_math`) once per operation for all of them on
:class:`~hwsim.optim.stack.Stack` operands (``torch._foreach_`` ops), through
a :class:`~hwsim.optim.paths.BatchStep`, whose quantizers, noise, errors and
telemetry are each parameter's: the same bits as :func:`~hwsim.optim.
rule_path.rule_update` per parameter.
"""

from __future__ import annotations

import torch

from hwsim.optim.paths import BatchStep, ParamStep
from hwsim.optim.rule_math import DECAY, DECOUPLED, MATH
from hwsim.optim.rule_path import (
    _gradient,
    _master,
    _slots,
    _store_states,
    _stored,
    rule_update,
)
from hwsim.optim.rules import Rule
from hwsim.optim.stack import Stack

CPU_TOGETHER_BELOW = 2048  # elements: a CPU tensor at least this large steps alone


def batches(ctxs: list[ParamStep]) -> list[list[ParamStep]]:
    """The torch path's steps of a group, as the batches :func:`rule_updates`
    and :func:`~hwsim.optim.paths.add_update` take them together. On a GPU,
    all of them: one launch per operation for the group. On the CPU a
    parameter's pipeline runs a few dozen passes over it, which stay in cache
    while it is small enough alone; run together, each pass streams every
    parameter through memory: measured with ``benchmarks/optim.py --tensors``,
    together was faster for 200 tensors of 500 elements and slower for 200
    of 5000. So CPU tensors of :data:`CPU_TOGETHER_BELOW` elements or more
    step alone; the others go together, one batch per device."""
    alone, together = [], {}
    for c in ctxs:
        if c.p.is_cpu and c.p.numel() >= CPU_TOGETHER_BELOW:
            alone.append([c])
        else:  # one batch per device: a batch's check syncs once, on one device
            together.setdefault(c.p.device, []).append(c)
    return list(together.values()) + alone


def rule_updates(ctxs: list[ParamStep], rule: Rule) -> list[torch.Tensor]:
    """:func:`rule_update` of several parameters of one group (a rule with
    math), the math run once per operation for all of them on
    :class:`~hwsim.optim.stack.Stack` operands (``torch._foreach_`` ops),
    each state stored through its own parameter's quantizer and telemetry:
    the same bits, in the order of ``ctxs``. Parameters whose steps differ
    (their count, a first momentum step) run as separate batches."""
    entry = MATH[rule.math]
    batches: dict[tuple, list[int]] = {}
    hyper = []
    for j, ctx in enumerate(ctxs):
        h, opts = entry.hyper(ctx.group, ctx.step, ctx.state)
        hyper.append((h, opts))
        batches.setdefault((ctx.step, opts), []).append(j)
    updates: list = [None] * len(ctxs)
    for members in batches.values():
        if len(members) == 1:
            updates[members[0]] = rule_update(ctxs[members[0]], rule)
            continue
        batch = BatchStep([ctxs[j] for j in members])
        h, opts = hyper[members[0]]
        used = entry.used(opts)
        grads = _gradient(batch)
        w = None
        if opts & (DECAY | DECOUPLED):
            w = Stack(_master(ctx, g) for ctx, g in batch.each(grads))
        slots = [_slots(ctx, rule, g, used) for ctx, g in batch.each(grads)]
        # the math runs in float64; slot k of every parameter, as one operand
        states = tuple(Stack(s[k].to(torch.float64) for s in slots) for k in range(3))

        def store(x: Stack, slot: int, batch=batch) -> Stack:
            return _stored(batch, rule.state_names[slot], slot, x)

        update, new = entry.math(grads, w, states, h, opts, store)
        for i, j in enumerate(members):
            _store_states(ctxs[j], rule, tuple(s.tensors[i] for s in new), used, slots[i])
            updates[j] = update.tensors[i]
    return updates
