"""The one step pipeline every hwsim optimizer shares.

    grad --quantize(grad)--> rule --quantize(update)--> round onto the
    accumulator grid --add, overflow--> accumulator --quantize(weight)--> weight

Semantics (DESIGN.md, "Weight accumulator"): the accumulator is the master
copy of each weight, kept as integer codes of the ``accumulator`` format. The
update is rounded onto the accumulator grid (``accumulator_rounding``), its
overflow mode applied, then added, and the overflow mode applied again to the
sum; the weight the model sees is the accumulator re-quantized to the
``weight`` format (``weight_rounding``). With no accumulator format the
weight grid is the accumulator: updates are rounded straight onto it
(``weight_rounding``), and one smaller than half an LSB is lost under nearest
rounding — the stall. With neither format the weight stays float.

A floating-point accumulator (``accumulator="fp32"``: the master copy of the
usual bf16 recipe) or float weight without one holds values:
``acc = Q_acc(acc + update)``, the sum formed in float64 and rounded once
(:mod:`hwsim.optim.float_step`); an update below half a unit in the last
place of the accumulator is lost under nearest rounding (the stall of pure
bf16 weights).

Arithmetic: when any tensor of a group has a format (fixed point, floating
point or, for states, block scaled), the rule and the pipeline compute in
float64 (every code of a format up to 52 bits is exact in
float64; codes are held as float64 integers, the accumulator's as int32 where
they fit: :func:`accumulator_dtype`); a group whose formats are all ``None``
steps through ``torch.optim``'s own implementation of the rule
(:mod:`hwsim.optim.float_path`): torch's bits at torch's speed.
State tensors are stored after every change, quantized to their ``state``
format, and the rule continues from the stored value.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from hwsim.formats import FloatingPoint
from hwsim.optim import float_path, fused_path, paths, rule_batch, rule_path
from hwsim.optim.compat import CheckpointMixin, check_group_keys
from hwsim.optim.fused import max_abs
from hwsim.optim.precision import (
    PRECISION_DEFAULTS,
    STREAM,
    GroupPrecision,
    check_precision_names,
    normalize_group,
    precision_docs,
    precision_signature,
)
from hwsim.optim.rule_math import MATH
from hwsim.optim.rules import Rule
from hwsim.optim.stack import Stack
from hwsim.optim.telemetry import Counts, sample_of
from hwsim.plan.checks import fresh_seed


class QuantizedOptimizer(CheckpointMixin, torch.optim.Optimizer):
    """Base class: a ``torch.optim.Optimizer`` whose step is the shared
    precision pipeline around a :class:`~hwsim.optim.rules.Rule`.

    Subclasses set ``rule`` and validate their hyperparameters. Precision
    arguments (every optimizer takes them; all default to float):

    Args:
        {precision}
        telemetry: gather :attr:`telemetry` in each step.
        fused: ``None`` or ``True``: for float32/float64 CPU tensors with an
            accumulator or weight format, run the elementwise part of the step
            as one Numba pass (:mod:`hwsim.optim.fused`): for SGD without
            momentum or weight decay and for sign SGD all of it, from the raw
            gradient; for the other rules everything after the rule.
            ``False``: torch ops only (what runs on other devices). The
            results are identical bit for bit. torch's implementation
            switches (``foreach``, ``differentiable``, ``capturable``) are
            taken by the subclasses: :func:`hwsim.optim.compat.torch_flags`.

    Every precision argument can also be set per param group.

    The accumulator (``state[p]["accumulator"]``: integer codes, int32 where
    they fit, else float64) is the master copy. Change it, if at all, with
    torch ops on that tensor or by assigning a new one: the fused step keeps a
    bound on its codes to leave out overflow steps that cannot act, and
    torch's version counter tells it when something else wrote them; writes
    through ``.data`` or a NumPy view bypass that counter. The same holds for
    the parameter: where the fused step wrote it last and torch's counter
    shows no other write, the kernel checks the gradient as it steps and, on a
    NaN or Inf anywhere in the ``step()``, takes the step back by writing the
    weight of the restored accumulator, which is what the parameter held. A
    value written into the parameter through ``.data`` or NumPy after the
    last step (the next step would replace it with the accumulator's weight
    anyway) is then replaced by that weight rather than kept.

    Attributes:
        telemetry: after each ``step()``, a list with one dict per param group
            (empty with ``telemetry=False``):

            - ``stall_fraction``: of the nonzero updates the rule produced, the
              fraction that changed nothing — rounded to zero on the accumulator
              grid (or on the weight grid without an accumulator; for float
              weights, too small to change the float);
            - ``saturation_fraction``: the fraction of weights whose accumulator
              or weight code sits at its format's min or max (a float format:
              at +-max, or beyond it);
            - ``median_update_lsb``: the median |update| over the nonzero
              updates, in LSBs of the accumulator (else of the weight) format,
              for a float format in units in the last place of the value it
              was added to (below 0.5 stalls under nearest rounding); NaN for
              float weights or when no update is nonzero.

            Each is measured on a sample of every tensor: 256 runs of 16
            consecutive elements, evenly spaced (``hwsim.optim.fused.
            sample_stride``), so it is exact for tensors of fewer than 8192
            elements and, above, an estimate from about 4096 elements
            (fractions weighted by tensor size). Counting every element would
            put vector reductions into the fused kernel's loop; the sample is
            counted while each chunk is in cache (``python
            benchmarks/optim.py --breakdown`` times the kernel with and
            without it), and runs keep the gathers of the torch path to a few
            hundred cache lines. The dicts are built when first read after a
            step, with one host sync per group.

            Where the group has state formats, also per quantized state
            (dicts by state name, on the same sample): ``state_flush_fraction``,
            the fraction of its elements whose nonzero value was stored as 0,
            and ``state_saturation_fraction``, of those at the format's min or
            max (a float format: +-max or beyond; a block format: the largest
            magnitude, or most negative code, its block's scale allows). A state format too narrow for the rule's values shows here
            (Adam's ``exp_avg_sq`` in ``"fx16.12"`` flushes entirely, ``eps``
            becomes the denominator and the weights saturate);
            :data:`hwsim.optim.STATE_FORMATS` gives a working format per rule.
    """

    rule: Rule
    precision_keys = tuple(PRECISION_DEFAULTS)  # written as strings in state dicts

    def __init_subclass__(cls, **kwargs) -> None:
        """A subclass writes its precision arguments as ``**precision``; its
        signature shows them (:func:`~hwsim.optim.precision.precision_signature`)."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None:
            init.__signature__ = precision_signature(init)

    def __init__(
        self,
        params,
        defaults: dict[str, Any],
        precision: dict[str, Any],
        telemetry: bool = True,
        fused: bool | None = None,
    ):
        check_precision_names(type(self).__name__, precision)
        merged = dict(PRECISION_DEFAULTS)
        merged.update(precision)
        if merged["seed"] is None:
            merged["seed"] = fresh_seed() >> 1  # non-negative int64, fits any checkpoint format
        self.telemetry_enabled = bool(telemetry)
        self.fused = fused is None or bool(fused)
        self._telemetry: list[dict[str, float]] | list[Counts] = []
        self._views: dict[torch.Tensor, fused_path.FlatViews] = {}  # see fused_path.flat_views
        self._precisions: dict[int, tuple] = {}  # see _precision
        self._buffers: dict[int, tuple] = {}  # see _scratch
        super().__init__(params, {**defaults, **merged})

    @property
    def telemetry(self) -> list[dict[str, float]]:
        """See the class docstring."""
        if self._telemetry and isinstance(self._telemetry[0], Counts):
            self._telemetry = [counts.summary() for counts in self._telemetry]
        return self._telemetry

    # -- param groups ---------------------------------------------------------------
    def add_param_group(self, param_group: dict) -> None:
        """As torch's; a key that is neither a hyperparameter nor a known
        metadata key raises ValueError naming the closest known key
        (:func:`~hwsim.optim.compat.check_group_keys`)."""
        if isinstance(param_group, dict):
            check_group_keys(param_group, self.defaults)
        super().add_param_group(param_group)
        normalize_group(self.param_groups[-1], self.rule.state_names)

    def _precision(self, position: int, group: dict) -> tuple[GroupPrecision, dict]:
        """The group's resolved precision and its fused steps (by rule input),
        rebuilt only when one of its precision entries changed (resolving
        them each step cost more than a small tensor's whole fused step)."""
        values = _PRECISION_VALUES(group)
        cached = self._precisions.get(position)
        if cached is None or cached[0] != values:  # identical objects compare without __eq__
            key = tuple(
                dict(v) if isinstance(v, dict) else v for v in values
            )  # a copy: dicts can change in place
            cached = self._precisions[position] = (
                key,
                GroupPrecision.of(group, self.rule.state_names),
                {},
            )
        return cached[1], cached[2]

    # -- the step -----------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        """One optimizer step; returns the closure's loss if one is given.

        In a group with any format, a NaN or Inf gradient raises
        :class:`~hwsim.NonFiniteError` before any parameter, accumulator or
        state changes (groups whose formats are all None propagate it, as
        ``torch.optim`` does); so does a float format's overflow to Inf or
        NaN, naming the tensor and format."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = []
        speculative = []  # fused steps that check their gradient in the kernel (_speculation)
        index = 0
        for position, group in enumerate(self.param_groups):
            prec, fused_steps = self._precision(position, group)
            fixed = prec.quantized
            items = []
            for p in group["params"]:
                grad = p.grad
                if grad is not None:
                    if grad.is_sparse:
                        self._check_sparse(fixed, index)
                    if not fixed:
                        items.append((p, index, _UNCHECKED))
                    elif p.is_complex():  # real and imaginary parts, as torch's view_as_real
                        items.append(
                            (p, index, paths.check_gradient(p, torch.view_as_real(grad), index))
                        )
                    else:
                        plan = fused_path.speculation(self, p, grad, group, fused_steps)
                        if plan is None:
                            items.append((p, index, paths.check_gradient(p, grad, index)))
                        else:
                            speculative.append((p, index, prec, plan))
                            items.append((p, index, _SPECULATIVE))
                index += 1
            work.append((group, prec, fused_steps, items))
        stepped, checked_now = (
            fused_path.step_speculative(self, speculative) if speculative else ({}, {})
        )
        telemetry = []
        for group, prec, fused_steps, items in work:
            counts = Counts(prec.target) if self.telemetry_enabled else None
            if not prec.quantized and float_path.step_group(self, group, items, counts):
                items = ()  # stepped by torch's own implementation
            pending = []  # the torch path's rule steps, run together (rule_batch)
            for p, index, checked in items:  # in order: the telemetry sums are float sums
                if checked is _SPECULATIVE:
                    result = stepped.get(index)
                    if result is not None:
                        if counts is not None:
                            counts.add_kernel(result[:4], p.numel(), len(result[3]))
                        continue
                    checked = checked_now[index]
                ctx = self._step_param(p, index, group, prec, fused_steps, counts, checked)
                if ctx is not None:
                    pending.append(ctx)
            for batch in rule_batch.batches(pending):
                updates = rule_batch.rule_updates(batch, self.rule)  # new tensors: owned
                if paths.BatchStep.takes(batch):
                    paths.add_update(paths.BatchStep(batch), Stack(updates), owned=True)
                else:
                    for ctx, update in zip(batch, updates, strict=True):
                        paths.add_update(ctx, update, owned=True)
            if counts is not None:
                telemetry.append(counts)
        self._telemetry = telemetry
        return loss

    def _check_sparse(self, fixed: bool, index: int) -> None:
        """Sparse gradients step as torch's where torch takes them (SGD and
        AdaGrad), in float groups; elsewhere a clear error."""
        name = type(self).__name__
        if not self.rule.sparse:
            raise RuntimeError(f"{name} does not support sparse gradients (parameter {index})")
        if fixed:
            raise RuntimeError(
                f"{name}: parameter {index} has a sparse gradient; hwsim takes sparse gradients "
                "only in groups whose formats are all None (float), not in quantized groups"
            )

    def _step_param(self, p, index, group, prec, fused_steps, counts, checked):
        """One parameter's step: the fused path from the raw gradient where the
        rule is pointwise, else the rule with torch ops and the rest of the
        pipeline fused or with torch ops (:mod:`hwsim.optim.paths`,
        :mod:`hwsim.optim.fused_path`: the same bits either way). A rule with
        math on the torch path is left to the caller, which runs the group's
        together: returns that step's :class:`~hwsim.optim.paths.ParamStep`,
        else None."""
        views = self._views.get(p)
        if views is not None:
            views.written = None  # until the fused step writes the parameter again
        state = self.state[p]
        ctx = paths.prepare(p, index, group, prec, fused_steps, state, counts, self.fused)
        if self.rule.math and not ctx.fused:
            return ctx
        grad_flat, grad_max = checked  # from here a rule with math has ctx.fused
        if grad_flat is not None and self.rule.math:
            pointwise = MATH[self.rule.math].pointwise_step(group)
            if pointwise is not None and fused_path.step_fused(
                self, ctx, grad_flat, pointwise, grad_max
            ):
                return
        if self.rule.math and grad_flat is not None and rule_path.fusable(ctx, self.rule):
            buffers = self._scratch(grad_flat.size)
            if rule_path.fused_rule_step(self, ctx, self.rule, checked, buffers):
                return
            update_flat, update_max, bad = rule_path.fused_rule_update(
                ctx, self.rule, grad_flat, buffers
            )
            update = None
            if bad:
                paths.raise_non_finite(
                    torch.from_numpy(update_flat).reshape(ctx.p.shape),
                    STREAM["update"],
                    ctx.p,
                    index,
                )
        else:
            update = rule_path.rule_update(ctx, self.rule)
        if update is not None:
            if not (ctx.fused and update.dtype == torch.float64 and update.device.type == "cpu"):
                paths.add_update(ctx, update, owned=bool(self.rule.math))  # the math's new tensor
                return
            update_flat = update.reshape(-1).numpy()
            update_max = max_abs(update_flat)  # the update is checked here (the gradient in step())
            if not math.isfinite(update_max):
                paths.raise_non_finite(update, STREAM["update"], ctx.p, index)
        if not fused_path.step_fused(self, ctx, update_flat, fused_path.IDENTITY, update_max):
            update = torch.from_numpy(update_flat).reshape(ctx.p.shape)
            paths.add_update(ctx, update, owned=True)  # a scratch buffer, or the math's tensor
        return None

    def _scratch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Two float64 buffers of ``n`` elements for the fused rule (its
        update, and zeros for the state slots a step does not use), kept
        between steps (a fresh buffer page-faults on every write)."""
        buffers = self._buffers.get(n)
        if buffers is None:
            buffers = self._buffers[n] = (np.empty(n), np.zeros(n))
        return buffers

    # -- introspection --------------------------------------------------------------
    def accumulator_codes(self, p: torch.Tensor) -> torch.Tensor | None:
        """The int64 codes of ``p``'s fixed-point weight accumulator (``None``
        before the first step or when the group has neither accumulator nor
        weight format). A floating-point accumulator holds values, not codes:
        ValueError (read ``state[p]["accumulator"]``)."""
        acc = self.state[p].get("accumulator")
        group = next((g for g in self.param_groups if any(q is p for q in g["params"])), None)
        target = None if group is None else (group["accumulator"] or group["weight"])
        if acc is not None and isinstance(target, FloatingPoint):
            raise ValueError(
                f"the weight accumulator of this parameter is in the floating-point format "
                f"{target}, which has no integer codes: read optimizer.state[p]['accumulator'] "
                f"for its values"
            )
        return None if acc is None else acc.to(torch.int64)


_PRECISION_VALUES = operator.itemgetter(*PRECISION_DEFAULTS)  # a group's entries, as a tuple
_UNCHECKED = paths.UNCHECKED
_SPECULATIVE = object()  # in place of a check: the kernel checks the gradient (speculation)
_sample = sample_of  # the telemetry sample the step counts (the tests gather it as the step)

# the precision arguments' entries of the docstring, from their one declaration
QuantizedOptimizer.__doc__ = QuantizedOptimizer.__doc__.replace(
    "        {precision}", precision_docs("        ")
)
