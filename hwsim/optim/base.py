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

Arithmetic: when any format of a group is fixed point, the rule and the
pipeline compute in float64 (every code of a format up to 52 bits is exact in
float64; codes are held as float64 integers, the accumulator's as int32 where
they fit: :func:`accumulator_dtype`); when every format is ``None``
they compute in the parameter's own dtype, exactly like ``torch.optim``.
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

from hwsim.errors import NonFiniteError
from hwsim.modes import Overflow, Rounding
from hwsim.optim.compat import CheckpointMixin, check_group_keys
from hwsim.optim.fused import (
    CHECK_IN_KERNEL_FROM,
    AccumulatorBound,
    count_float_stalls,
    fused_step,
    gather_sample,
    max_abs,
    sample_index,
    sample_size,
    sample_stride,
    undo_step,
)
from hwsim.optim.precision import (
    ROUNDING_KEYS,
    STATE_STREAM_BASE,
    STREAM,
    GroupPrecision,
    mix_seed,
    normalize_group,
    uniforms,
)
from hwsim.optim.rules import Pointwise, Rule, real_view
from hwsim.plan.checks import fresh_seed, raise_non_finite_torch
from hwsim.torch_path.core import scaled_to_code_float, value_to_code_float
from hwsim.torch_path.quantize import all_finite

PRECISION_DEFAULTS: dict[str, Any] = {
    "weight": None,
    "accumulator": None,
    "grad": None,
    "state": None,
    "update": None,
    "rounding": "nearest",
    **{k: None for k in ROUNDING_KEYS},
    "overflow": "saturate",
    "seed": None,
}


class QuantizedOptimizer(CheckpointMixin, torch.optim.Optimizer):
    """Base class: a ``torch.optim.Optimizer`` whose step is the shared
    precision pipeline around a :class:`~hwsim.optim.rules.Rule`.

    Subclasses set ``rule`` and validate their hyperparameters. Precision
    arguments (every optimizer takes them; all default to float):

    Args:
        weight: format of the weight the model sees.
        accumulator: format of the weight accumulator (master copy).
        grad: format the gradient is quantized to before the rule.
        state: format of the rule's state tensors, or a dict from state name
            to format.
        update: format of the update before it is added.
        rounding: rounding of every quantized tensor (``"nearest"``,
            ``"nearest_away"``, ``"floor"``, ``"zero"``, ``"stochastic"``).
        weight_rounding, accumulator_rounding, grad_rounding, state_rounding,
            update_rounding: per-tensor overrides of ``rounding``.
        overflow: ``"saturate"`` or ``"wrap"``, for every quantized tensor.
        seed: seed of the stochastic rounding noise. The noise of a tensor is
            counter-based, keyed by (seed, step, param index, tensor), so a
            run resumed from a checkpoint continues bit-identically. ``None``
            draws a fresh seed (stored in the param groups, hence in
            ``state_dict()``).
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
              or weight code sits at its format's min or max;
            - ``median_update_lsb``: the median |update| over the nonzero
              updates, in LSBs of the accumulator (else of the weight) format;
              NaN for float weights or when no update is nonzero.

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
    """

    rule: Rule
    precision_keys = tuple(PRECISION_DEFAULTS)  # written as strings in state dicts

    def __init__(
        self,
        params,
        defaults: dict[str, Any],
        precision: dict[str, Any],
        telemetry: bool = True,
        fused: bool | None = None,
    ):
        unknown = set(precision) - set(PRECISION_DEFAULTS)
        if unknown:
            raise ValueError(
                f"unknown precision argument(s) {sorted(unknown)}; allowed: {sorted(PRECISION_DEFAULTS)}"
            )
        merged = dict(PRECISION_DEFAULTS)
        merged.update(precision)
        if merged["seed"] is None:
            merged["seed"] = fresh_seed() >> 1  # non-negative int64, fits any checkpoint format
        self.telemetry_enabled = bool(telemetry)
        self.fused = fused is None or bool(fused)
        self._telemetry: list[dict[str, float]] | list[_Counts] = []
        self._views: dict[torch.Tensor, _FlatViews] = {}  # see _flat_views
        self._precisions: dict[int, tuple] = {}  # see _precision
        super().__init__(params, {**defaults, **merged})

    @property
    def telemetry(self) -> list[dict[str, float]]:
        """See the class docstring."""
        if self._telemetry and isinstance(self._telemetry[0], _Counts):
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

        In a group with any fixed-point format, a NaN or Inf gradient raises
        :class:`~hwsim.NonFiniteError` before any parameter, accumulator or
        state changes (float groups propagate it, as ``torch.optim`` does)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = []
        speculative = []  # fused steps that check their gradient in the kernel (_speculation)
        index = 0
        for position, group in enumerate(self.param_groups):
            prec, fused_steps = self._precision(position, group)
            fixed = prec.any_fixed
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
                            (p, index, _check_gradient(p, torch.view_as_real(grad), index))
                        )
                    else:
                        plan = self._speculation(p, grad, group, fused_steps)
                        if plan is None:
                            items.append((p, index, _check_gradient(p, grad, index)))
                        else:
                            speculative.append((p, index, prec, plan))
                            items.append((p, index, _SPECULATIVE))
                index += 1
            work.append((group, prec, fused_steps, items))
        stepped, checked_now = self._step_speculative(speculative) if speculative else ({}, {})
        telemetry = []
        for group, prec, fused_steps, items in work:
            counts = _Counts(prec.target) if self.telemetry_enabled else None
            for p, index, checked in items:  # in order: the telemetry sums are float sums
                if checked is _SPECULATIVE:
                    result = stepped.get(index)
                    if result is not None:
                        if counts is not None:
                            counts.add_kernel(result[:4], p.numel(), len(result[3]))
                        continue
                    checked = checked_now[index]
                self._step_param(p, index, group, prec, fused_steps, counts, checked)
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
                "only in groups whose formats are all None (float), not in fixed-point groups"
            )

    def _speculation(self, p: torch.Tensor, grad: torch.Tensor, group: dict, fused_steps: dict):
        """``(fused step, scale, views, flat gradient, exponent)`` where ``p``'s
        step can check its gradient inside the fused kernel
        (:meth:`FusedStep.speculate`, which saves a read of the gradient),
        else ``None``. It can where the step could be exactly undone should
        any gradient of this ``step()`` hold a NaN or an Inf: the previous
        step of ``p`` was the same fused step, and neither the parameter nor
        the accumulator changed since (torch's version counters; a write
        through ``.data`` or NumPy bypasses them: see the class docstring), so
        the parameter holds the weight of the accumulator; and ``p`` is large
        (``CHECK_IN_KERNEL_FROM``: for a small tensor the separate check
        costs little, and the max |grad| of a few elements often more than
        doubles between steps, which would undo every other step). The plan assumes
        |grad| is at most twice the power of two above its previous max
        (``exponent``: :func:`~hwsim.optim.fused.top_exponent`); a larger one
        is caught in the kernel, undone, and stepped the usual way."""
        views = self._views.get(p)
        if views is None or views.written is None or views.acc_flat.size < CHECK_IN_KERNEL_FROM:
            return None
        fused, version, exponent = views.written
        acc = views.acc
        if (
            version != _version(p)
            or views.version is None
            or views.version != _version(acc)
            or self.state[p].get("accumulator") is not acc
            or views.storage != (p.data_ptr(), p.dtype)
            or not p.is_contiguous()
        ):
            return None
        pointwise = self.rule.pointwise(group)
        if pointwise is None or fused_steps.get(pointwise.sign) is not fused:
            return None
        flat = _numpy_view(grad)
        if flat is None:
            return None
        return fused, float(pointwise.scale), views, flat, exponent

    def _step_speculative(self, speculative: list) -> tuple[dict, dict]:
        """Run the steps :meth:`_speculation` planned, all or none: where a
        gradient holds a NaN, an Inf or a magnitude the plan did not allow,
        every one of them is undone and they take the usual path, after the
        usual check (which raises, the parameters unchanged, on a NaN or an
        Inf). Returns the kernel's results of the steps that ran and the
        check's of those left to the usual path, by parameter index."""
        done, deferred = [], []
        telemetry = self.telemetry_enabled
        for p, index, prec, (fused, scale, views, flat, exponent) in speculative:
            result = fused.speculate(
                flat,
                views.acc_flat,
                views.param,
                scale,
                exponent,
                prec.seed,
                self.state[p]["step"] + 1,
                index,
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
            checked = {index: _check_gradient(p, p.grad, index) for p, index in deferred}
        except NonFiniteError:
            for *_, taken in reversed(done):
                undo_step(taken[5])
            raise
        for p, _, views, result in done:
            self.state[p]["step"] += 1
            fused, version, _ = views.written
            views.written = (fused, version, result[4])
        return {index: result for _, index, _, result in done}, checked

    def _step_param(
        self,
        p: torch.Tensor,
        index: int,
        group: dict,
        prec: GroupPrecision,
        fused_steps: dict,
        counts,
        checked: tuple[np.ndarray | None, float | None],
    ) -> None:
        views = self._views.get(p)
        if views is not None:
            views.written = None  # until the fused step writes the parameter again
        state = self.state[p]
        # a complex parameter: the rule gets complex tensors and takes their real
        # views where torch's does (hwsim.optim.rules); the rest steps the real view
        complex_param = p.is_complex()
        whole, p = p, (torch.view_as_real(p) if complex_param else p)
        step = state.get("step", 0) + 1
        state["step"] = step
        seed = prec.seed
        target = prec.target

        def noise(stream: int, like: torch.Tensor) -> torch.Tensor:
            return uniforms(mix_seed(seed, step, index, stream), like)

        if target is not None and "accumulator" not in state:
            # the master copy starts as the current weight, on the accumulator grid
            codes = _codes(
                p.detach(),
                target,
                prec.target_rounding,
                prec.overflow,
                noise,
                STREAM["init"],
                p,
                index,
            )
            state["accumulator"] = codes.to(accumulator_dtype(target))
        fused = (
            self.fused
            and not complex_param  # the views the fused step caches are of the parameter
            and target is not None
            and p.is_cpu
            and p.dtype in _FUSED_DTYPES
            and p.is_contiguous()
        )
        grad_flat, grad_max = checked
        if fused and grad_flat is not None and self.rule.pointwise is not None:
            pointwise = self.rule.pointwise(group)
            if pointwise is not None and self._step_fused(
                p, grad_flat, pointwise, grad_max, state, prec, fused_steps, step, index, counts
            ):
                return

        def quantize(x: torch.Tensor, fmt, rounding: Rounding, stream: int) -> torch.Tensor:
            if stream != STREAM["grad"] and not all_finite(x):  # gradients were checked in step()
                _raise_non_finite(x, stream, p, index)
            u = noise(stream, x) if rounding == Rounding.STOCHASTIC else None
            return value_to_code_float(x, fmt, rounding, prec.overflow, u).mul_(fmt.lsb)

        dtype = torch.float64 if prec.any_fixed else p.dtype
        grad = whole.grad.to(_complex(dtype) if complex_param else dtype)
        if prec.grad is not None:
            grad = _as_complex(
                quantize(real_view(grad), prec.grad, prec.grad_rounding, STREAM["grad"]),
                complex_param,
            )

        def weight() -> torch.Tensor:
            if target is None:
                return whole.detach().to(grad.dtype)
            w = state["accumulator"].to(torch.float64) * target.lsb
            return _as_complex(w, complex_param)

        for name in self.rule.state_names:  # e.g. float32 states loaded into a fixed-point group
            value = state.get(name)
            if torch.is_tensor(value) and value.dtype != grad.dtype and not value.is_sparse:
                state[name] = value.to(grad.dtype)
        state_fmts = prec.state

        def store(name: str, value: torch.Tensor) -> torch.Tensor:
            fmt = state_fmts.get(name)
            if fmt is not None:
                stream = STATE_STREAM_BASE + self.rule.state_names.index(name)
                codes = quantize(real_view(value), fmt, prec.state_rounding, stream)
                value = _as_complex(codes, value.is_complex())
            state[name] = _as_complex(value, complex_param)  # torch keeps complex states
            return value

        step_ = self.rule.update(grad, weight, state, group, step, store, prec.any_fixed)
        if target is None and prec.update is None and dtype == p.dtype:
            # float weights: torch.optim's own in-place ops, bit for bit
            weight_flat = None if counts is None else _numpy_view(p)
            numerator_flat = None if weight_flat is None else _numpy_view(step_.numerator)
            if counts is None:
                step_.apply_(whole)
            elif numerator_flat is not None:
                # stalls on the telemetry sample, in Numba (torch ops on a 4096-element
                # sample cost more than a float SGD step)
                stride = sample_stride(weight_flat.size)
                before = np.empty(sample_size(weight_flat.size), weight_flat.dtype)
                gather_sample(weight_flat, stride, before)
                step_.apply_(whole)
                nonzero, stalled = count_float_stalls(numerator_flat, before, weight_flat, stride)
                counts.add_kernel((nonzero, stalled, 0, None), p.numel(), before.size)
            else:  # stalls on the telemetry sample, torch ops (other devices and dtypes)
                old = _sample(p.detach())
                step_.apply_(whole)
                numerator = step_.numerator
                if numerator.is_sparse:  # the sample's elements where the gradient has none are 0
                    numerator = numerator.to_dense()
                counts.add_float(
                    _sample(real_view(numerator)), _sample(p.detach()) == old, p.numel()
                )
            return
        update = real_view(step_.value(weight))
        if fused and update.dtype == torch.float64 and update.device.type == "cpu":
            update_flat = update.reshape(-1).numpy()
            update_max = max_abs(
                update_flat
            )  # the gradient was checked in step(); the update is checked here
            if not math.isfinite(update_max):
                _raise_non_finite(update, STREAM["update"], p, index)
            if self._step_fused(
                p, update_flat, _IDENTITY, update_max, state, prec, fused_steps, step, index, counts
            ):
                return
        raw_update = update
        if prec.update is not None:
            update = quantize(update, prec.update, prec.update_rounding, STREAM["update"])
        if target is None:
            if not all_finite(update):
                _raise_non_finite(update, STREAM["update"], p, index)
            new = p + update.to(p.dtype)
            if counts is not None:
                counts.add_float(
                    _sample(raw_update), _sample(new) == _sample(p.detach()), p.numel()
                )
            p.copy_(new)
            return

        if not all_finite(update):
            _raise_non_finite(update, STREAM["update"], p, index)
        rounding = prec.target_rounding
        u = noise(STREAM["accumulator"], update) if rounding == Rounding.STOCHASTIC else None
        delta = value_to_code_float(update, target, rounding, prec.overflow, u)
        stored = state["accumulator"]
        acc = (stored if stored.dtype == torch.float64 else stored.to(torch.float64)).add_(delta)
        if prec.overflow == Overflow.SATURATE:
            acc.clamp_(target.min_code, target.max_code)
        else:  # wrap the integer sum (rounding an integer is the identity)
            acc = scaled_to_code_float(acc, target, Rounding.NEAREST, Overflow.WRAP)
        if acc is not stored:
            stored.copy_(
                acc
            )  # in place: the fused path's cached views, and its bound, see the change
        weight_codes = None
        if prec.accumulator is not None and prec.weight is not None:
            w = prec.weight
            wr = prec.weight_rounding
            uw = noise(STREAM["weight"], acc) if wr == Rounding.STOCHASTIC else None
            weight_codes = scaled_to_code_float(
                acc * (2.0 ** (w.fl - target.fl)), w, wr, prec.overflow, uw, inplace=True
            )
            torch.mul(weight_codes, w.lsb, out=p.data).add_(0.0)  # codes have no -0: nor do weights
        else:
            torch.mul(acc, target.lsb, out=p.data).add_(0.0)
        if counts is not None:
            counts.add_fixed(raw_update, delta, acc, target, weight_codes, prec.weight)

    def _step_fused(
        self,
        p,
        source: np.ndarray,
        rule: Pointwise,
        source_max: float,
        state,
        prec: GroupPrecision,
        fused_steps: dict,
        step: int,
        index: int,
        counts,
    ) -> bool:
        """The elementwise pipeline from ``source`` (the flat raw gradient of a
        pointwise rule, or a rule's float64 update; finite, at most
        ``source_max`` in magnitude) to the weight, as one Numba pass over CPU
        memory (:mod:`hwsim.optim.fused`; same bits as the torch ops). Returns
        False, having changed nothing, where the torch ops must run instead."""
        if (
            state["accumulator"].dtype not in _CODE_DTYPES
        ):  # a hand-made state: the torch ops take any dtype
            return False
        fused = fused_steps.get(rule.sign if rule is not _IDENTITY else None)
        if fused is None:
            weight_fmt = prec.weight if prec.accumulator is not None else None
            fused = fused_steps[rule.sign if rule is not _IDENTITY else None] = fused_step(
                rule.sign,
                prec.grad if rule is not _IDENTITY else None,
                prec.update,
                prec.target,
                weight_fmt,
                int(prec.grad_rounding),
                int(prec.update_rounding),
                int(prec.target_rounding),
                int(prec.weight_rounding),
                int(prec.overflow),
            )
        views = self._flat_views(p, state)
        result = fused(
            source,
            views.acc_flat,
            views.param,
            float(rule.scale),
            source_max,
            prec.seed,
            step,
            index,
            counts is not None,
            views.bound,
        )
        if result is None:
            return False
        if (
            rule is not _IDENTITY
        ):  # the parameter holds the weight of the accumulator (_speculation)
            views.written = (fused, _version(p), math.frexp(source_max)[1])  # |source| < 2^exponent
        if counts is not None:
            counts.add_kernel(result, source.size, len(result[3]))
        return True

    def _flat_views(self, p: torch.Tensor, state: dict) -> _FlatViews:
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
        views = self._views.get(p)
        if views is None or views.acc is not acc:
            views = self._views[p] = _FlatViews(
                acc, storage, acc.reshape(-1).numpy(), p.detach().reshape(-1).numpy()
            )
        elif views.storage != storage:
            views.storage, views.param = storage, p.detach().reshape(-1).numpy()
        version = _version(acc)
        if (
            version is None or version != views.version
        ):  # an inference tensor: never trust the bound
            views.bound.top, views.version = None, version
        return views

    # -- introspection --------------------------------------------------------------
    def accumulator_codes(self, p: torch.Tensor) -> torch.Tensor | None:
        """The int64 codes of ``p``'s weight accumulator (``None`` before the
        first step or when the group has neither accumulator nor weight format)."""
        acc = self.state[p].get("accumulator")
        return None if acc is None else acc.to(torch.int64)


_FUSED_DTYPES = (torch.float32, torch.float64)  # what the Numba kernel reads and writes
_CODE_DTYPES = (torch.int32, torch.float64)  # the accumulator's storage (accumulator_dtype)
_PRECISION_VALUES = operator.itemgetter(
    *PRECISION_DEFAULTS
)  # a group's precision entries, as a tuple
_IDENTITY = Pointwise(False, 1.0)  # a rule's update, added as it is


_UNCHECKED = (None, None)
_SPECULATIVE = object()  # in place of a check: the kernel checks the gradient (_speculation)


class _FlatViews:
    """A parameter's cached views (see ``QuantizedOptimizer._flat_views``)."""

    __slots__ = ("acc", "storage", "acc_flat", "param", "bound", "version", "written")

    def __init__(
        self, acc: torch.Tensor, storage: tuple, acc_flat: np.ndarray, param: np.ndarray
    ) -> None:
        self.acc, self.storage, self.acc_flat, self.param = acc, storage, acc_flat, param
        self.bound = AccumulatorBound()
        self.version: int | None = None  # the accumulator's, when the bound was last true
        # (fused step, the parameter's version, k with max |gradient| < 2^k) of the last
        # step, where the fused step wrote the parameter; else None (see _speculation)
        self.written: tuple | None = None


def _version(t: torch.Tensor) -> int | None:
    """torch's version counter of ``t`` (None for an inference tensor, which has none)."""
    try:
        return t._version
    except RuntimeError:
        return None


def _check_gradient(
    p: torch.Tensor, grad: torch.Tensor, index: int
) -> tuple[np.ndarray | None, float | None]:
    """Raise NonFiniteError if ``grad`` (``p.grad``) holds NaN or Inf. Returns
    the flat NumPy view of the gradient and max |grad| where the Numba check
    ran (CPU float32/float64, contiguous), else ``(None, None)``."""
    flat = _numpy_view(grad)
    if flat is not None:
        top = max_abs(flat)
        if not math.isfinite(top):
            _raise_non_finite(grad, STREAM["grad"], p, index)
        return flat, top
    if not all_finite(grad):
        _raise_non_finite(grad, STREAM["grad"], p, index)
    return _UNCHECKED


def accumulator_dtype(fmt) -> torch.dtype:
    """How accumulator codes of ``fmt`` are stored: int32 where every code
    fits (half the memory and traffic of float64; the fused kernel adds in
    int32 where the sum provably stays in range), else float64 (exact for the
    up to 52-bit codes the optimizers allow). Either way the arithmetic is on
    the integer codes; checkpoints keep the dtype they were saved with."""
    return torch.int32 if -(2**31) <= fmt.min_code and fmt.max_code < 2**31 else torch.float64


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


def _numpy_view(t: torch.Tensor) -> np.ndarray | None:
    """The flat NumPy view of a contiguous float32/float64 CPU tensor, else None."""
    if t.layout == torch.strided and t.is_cpu and t.dtype in _FUSED_DTYPES and t.is_contiguous():
        return (t.detach() if t.requires_grad else t).numpy().reshape(-1)
    return None


def _sample(t: torch.Tensor) -> torch.Tensor:
    """The telemetry sample of ``t`` (:func:`hwsim.optim.fused.sample_stride`), gathered."""
    return t.reshape(-1)[sample_index(t.numel(), t.device)]


def _codes(x, fmt, rounding, overflow, noise, stream, p, index):
    x = x.to(torch.float64)
    if not all_finite(x):
        _raise_non_finite(x, stream, p, index)
    u = noise(stream, x) if rounding == Rounding.STOCHASTIC else None
    return value_to_code_float(x, fmt, rounding, overflow, u).add_(0.0)  # integer codes: no -0


_STREAM_NAMES = {v: k for k, v in STREAM.items()}


def _raise_non_finite(x, stream, p, index):
    what = _STREAM_NAMES.get(stream, "state")
    try:
        raise_non_finite_torch(x)
    except NonFiniteError as err:
        err.add_note(
            f"hwsim.optim: the {what} of parameter {index} (shape {tuple(p.shape)}) is not finite"
        )
        raise


class _Counts:
    """Per-group telemetry, gathered in the step and summarized when read: per
    param the counts over its telemetry sample (nonzero updates, stalled ones,
    saturated weights: tensors on the torch path, ints from the kernel), the
    sample's size and the param's, and the sampled updates."""

    def __init__(self, target) -> None:
        self.target = target  # the grid of median_update_lsb (None: float weights)
        self.counts: list = []
        self.sizes: list[tuple[int, int]] = []  # (sampled, numel)
        self.samples: list = []

    def add_float(self, update: torch.Tensor, unchanged: torch.Tensor, numel: int) -> None:
        """``update`` and ``unchanged``: the param's telemetry sample."""
        nz = update != 0
        self.counts.append(
            torch.stack(
                [
                    torch.count_nonzero(nz),
                    torch.count_nonzero(unchanged.logical_and_(nz)),
                    torch.zeros((), dtype=torch.int64, device=nz.device),
                ]
            )
        )
        self.sizes.append((update.numel(), numel))

    def add_fixed(self, update, delta, acc, target, weight_codes, weight_fmt) -> None:
        """Full tensors; counted on the telemetry sample, like the kernel."""
        numel = update.numel()
        update, delta, acc = _sample(update), _sample(delta), _sample(acc)
        nz = update != 0
        sat = (acc == target.min_code).logical_or_(acc == target.max_code)
        if weight_codes is not None:
            w = _sample(weight_codes)
            sat.logical_or_(w == weight_fmt.min_code).logical_or_(w == weight_fmt.max_code)
        stalled = (delta == 0).logical_and_(nz)
        self.counts.append(
            torch.stack(
                [torch.count_nonzero(nz), torch.count_nonzero(stalled), torch.count_nonzero(sat)]
            )
        )
        self.sizes.append((update.numel(), numel))
        self.samples.append(update)

    def add_kernel(
        self, result: tuple[int, int, int, np.ndarray | None], numel: int, sampled: int
    ) -> None:
        """Counts from the fused kernel, or from NumPy on a float weight (no
        update sample: ``None``)."""
        nonzero, stalled, saturated, sample = result
        self.counts.append((nonzero, stalled, saturated))
        self.sizes.append((sampled, numel))
        if sample is not None:
            self.samples.append(sample)

    def summary(self) -> dict[str, float]:
        result = {"stall_fraction": 0.0, "saturation_fraction": 0.0, "median_update_lsb": math.nan}
        if not self.counts:
            return result
        tensors = [c for c in self.counts if torch.is_tensor(c)]
        host = iter(
            torch.stack(tensors).tolist() if tensors else []
        )  # one sync for the torch path's counts
        nonzero = stalled = saturated = 0.0
        for c, (sampled, numel) in zip(self.counts, self.sizes, strict=True):
            nz, st, sat = next(host) if torch.is_tensor(c) else c
            weight = numel / sampled if sampled else 0.0  # the elements each sampled one stands for
            nonzero += nz * weight
            stalled += st * weight
            saturated += sat * weight
        result["stall_fraction"] = stalled / nonzero if nonzero else 0.0
        total = sum(n for _, n in self.sizes)
        result["saturation_fraction"] = saturated / total if total else 0.0
        if self.samples and self.target is not None:
            sample = np.abs(
                np.concatenate(
                    [s.detach().cpu().numpy() if torch.is_tensor(s) else s for s in self.samples]
                )
            )
            sample = sample[sample != 0]
            if sample.size:
                result["median_update_lsb"] = float(np.median(sample)) / self.target.lsb
        return result
