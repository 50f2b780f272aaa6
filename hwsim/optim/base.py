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
float64; codes are held as float64 integers); when every format is ``None``
they compute in the parameter's own dtype, exactly like ``torch.optim``.
State tensors are stored after every change, quantized to their ``state``
format, and the rule continues from the stored value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from hwsim.errors import NonFiniteError
from hwsim.modes import Overflow, Rounding
from hwsim.ops._common import fresh_seed, raise_non_finite_torch
from hwsim.optim.precision import (
    ROUNDING_KEYS,
    STATE_STREAM_BASE,
    STREAM,
    GroupPrecision,
    mix_seed,
    normalize_group,
    uniforms,
)
from hwsim.optim.rules import Rule
from hwsim.torch_path.core import scaled_to_code_float, value_to_code_float
from hwsim.torch_path.quantize import all_finite

MEDIAN_SAMPLE = 4096  # elements per param sampled for the median update size

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


class QuantizedOptimizer(torch.optim.Optimizer):
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
        telemetry: compute :attr:`telemetry` after each step.
        fused: ``None`` or ``True``: for CPU tensors (of at least
            ``fused_min_numel`` = 16384 elements), run the accumulate /
            re-quantize / telemetry tail as one Numba pass
            (:mod:`hwsim.optim.fused`); ``False``: torch ops only (any device).
            The results are identical bit for bit.

    Every precision argument can also be set per param group.

    Attributes:
        telemetry: after each ``step()``, a list with one dict per param group
            (empty with ``telemetry=False``):

            - ``stall_fraction``: of the nonzero updates the rule produced, the
              fraction that changed nothing — rounded to zero on the accumulator
              grid (or on the weight grid without an accumulator; for float
              weights, too small to change the float — estimated there on a
              strided sample of at most 4096 elements per tensor);
            - ``saturation_fraction``: the fraction of weights whose accumulator
              or weight code sits at its format's min or max;
            - ``median_update_lsb``: the median |update| over the nonzero
              updates, in LSBs of the accumulator (else of the weight) format;
              from a strided sample of at most 4096 elements per tensor; NaN for
              float weights or when no update is nonzero.

            Counts are exact; everything is gathered with one host sync per
            group (inside the fused kernel on the CPU).
    """

    rule: Rule
    # below this many elements the parallel kernel's thread start-up costs more
    # than the torch ops it replaces
    fused_min_numel: int = 1 << 14

    def __init__(self, params, defaults: dict[str, Any], precision: dict[str, Any], telemetry: bool = True,
                 fused: bool | None = None):
        unknown = set(precision) - set(PRECISION_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown precision argument(s) {sorted(unknown)}; allowed: {sorted(PRECISION_DEFAULTS)}")
        merged = dict(PRECISION_DEFAULTS)
        merged.update(precision)
        if merged["seed"] is None:
            merged["seed"] = fresh_seed() >> 1  # non-negative int64, fits any checkpoint format
        self.telemetry_enabled = bool(telemetry)
        self.fused = fused is None or bool(fused)
        self.telemetry: list[dict[str, float]] = []
        super().__init__(params, {**defaults, **merged})

    # -- param groups ---------------------------------------------------------------
    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        normalize_group(self.param_groups[-1], self.rule.state_names)

    # -- the step -----------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        """One optimizer step; returns the closure's loss if one is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        telemetry = []
        index = 0
        for group in self.param_groups:
            prec = GroupPrecision.of(group, self.rule.state_names)
            counts = _Counts() if self.telemetry_enabled else None
            for p in group["params"]:
                if p.grad is not None:
                    if p.grad.is_sparse:
                        raise ValueError("hwsim optimizers do not support sparse gradients")
                    self._step_param(p, index, group, prec, counts)
                index += 1
            if counts is not None:
                telemetry.append(counts.summary(prec.target))
        self.telemetry = telemetry
        return loss

    def _step_param(self, p: torch.Tensor, index: int, group: dict, prec: GroupPrecision, counts) -> None:
        state = self.state[p]
        step = state.get("step", 0) + 1
        state["step"] = step
        fixed = prec.any_fixed
        dtype = torch.float64 if fixed else p.dtype
        seed = prec.seed

        def noise(stream: int, like: torch.Tensor) -> torch.Tensor:
            return uniforms(mix_seed(seed, step, index, stream), like)

        def quantize(x: torch.Tensor, fmt, rounding: Rounding, stream: int) -> torch.Tensor:
            if not all_finite(x):
                _raise_non_finite(x, stream, p, index)
            u = noise(stream, x) if rounding == Rounding.STOCHASTIC else None
            return value_to_code_float(x, fmt, rounding, prec.overflow, u).mul_(fmt.lsb)

        fusable = (self.fused and p.device.type == "cpu" and p.numel() >= self.fused_min_numel
                   and p.is_contiguous() and prec.target is not None and p.dtype in _FUSED_DTYPES)
        direct = None
        if (prec.grad is None and prec.update is None and fusable and self.rule.direct is not None
                and p.grad.dtype in _FUSED_DTYPES):
            # a stateless rule on the raw gradient: the fused kernel converts it to
            # float64 and scales it element by element (same bits, two passes fewer)
            direct = self.rule.direct(p.grad, group)
        grad = p.grad.to(dtype) if direct is None else p.grad
        if prec.grad is not None:
            grad = quantize(grad, prec.grad, prec.grad_rounding, STREAM["grad"])

        target = prec.target
        if target is not None and "accumulator" not in state:
            # the master copy starts as the current weight, on the accumulator grid
            state["accumulator"] = _codes(p.detach(), target, prec.target_rounding, prec.overflow, noise, STREAM["init"], p, index)

        def weight() -> torch.Tensor:
            if target is None:
                return p.detach().to(dtype)
            return state["accumulator"] * target.lsb

        state_fmts = prec.state

        def store(name: str, value: torch.Tensor) -> torch.Tensor:
            fmt = state_fmts.get(name)
            if fmt is not None:
                value = quantize(value, fmt, prec.state_rounding, STATE_STREAM_BASE + self.rule.state_names.index(name))
            state[name] = value
            return value

        if direct is not None:
            self._accumulate_fused(p, direct.numerator, direct.scale, state, prec, seed, step, index, counts)
            return
        step_ = self.rule.update(grad, weight, state, group, step, store)
        if target is None and prec.update is None and dtype == p.dtype:
            # float weights: torch.optim's own in-place ops, bit for bit
            if counts is None:
                step_.apply_(p)
            else:  # float stalls are estimated on a strided sample (cheap to leave on)
                stride = max(1, p.numel() // MEDIAN_SAMPLE)
                old = p.detach().reshape(-1)[::stride].clone()
                step_.apply_(p)
                counts.add_float(step_.numerator.reshape(-1)[::stride], p.detach().reshape(-1)[::stride] == old)
            return
        update = step_.value(weight)
        raw_update = update
        if prec.update is not None:
            update = quantize(update, prec.update, prec.update_rounding, STREAM["update"])
        if target is None:
            if not all_finite(update):
                _raise_non_finite(update, STREAM["update"], p, index)
            new = p + update.to(p.dtype)
            if counts is not None:
                counts.add_float(raw_update, new == p)
            p.copy_(new)
            return

        if fusable:
            self._accumulate_fused(p, update, 1.0, state, prec, seed, step, index, counts)
            return
        if not all_finite(update):
            _raise_non_finite(update, STREAM["update"], p, index)
        rounding = prec.target_rounding
        u = noise(STREAM["accumulator"], update) if rounding == Rounding.STOCHASTIC else None
        delta = scaled_to_code_float(update * (2.0**target.fl), target, rounding, prec.overflow, u, inplace=True)
        acc = state["accumulator"].add_(delta)
        if prec.overflow == Overflow.SATURATE:
            acc.clamp_(target.min_code, target.max_code)
        else:  # wrap the integer sum (rounding an integer is the identity)
            acc = scaled_to_code_float(acc, target, Rounding.NEAREST, Overflow.WRAP)
        state["accumulator"] = acc
        weight_codes = None
        if prec.accumulator is not None and prec.weight is not None:
            w = prec.weight
            wr = prec.weight_rounding
            uw = noise(STREAM["weight"], acc) if wr == Rounding.STOCHASTIC else None
            weight_codes = scaled_to_code_float(acc * (2.0 ** (w.fl - target.fl)), w, wr, prec.overflow, uw, inplace=True)
            torch.mul(weight_codes, w.lsb, out=p.data).add_(0.0)  # codes have no -0: nor do weights
        else:
            torch.mul(acc, target.lsb, out=p.data).add_(0.0)
        if counts is not None:
            counts.add_fixed(raw_update, delta, acc, target, weight_codes, prec.weight)

    def _accumulate_fused(self, p, update, scale, state, prec, seed, step, index, counts) -> None:
        """The accumulate/re-quantize tail in one Numba pass (same bits); the
        update is ``float64(update) * scale`` element by element."""
        from hwsim.optim.fused import accumulate_kernel

        target = prec.target
        has_weight = prec.accumulator is not None and prec.weight is not None
        w = prec.weight if has_weight else target
        ar, wr = prec.target_rounding, prec.weight_rounding
        kernel = accumulate_kernel(int(ar), int(wr), int(prec.overflow), has_weight,
                                   ar == Rounding.STOCHASTIC, has_weight and wr == Rounding.STOCHASTIC)
        if not all_finite(update):  # before the kernel writes anything: no weight changes
            _raise_non_finite(update, STREAM["update"], p, index)
        acc = state["accumulator"]
        nonzero, stalled, saturated, bad = kernel(
            update.detach().contiguous().reshape(-1).numpy(), float(scale), acc.reshape(-1).numpy(),
            p.data.reshape(-1).numpy(),
            2.0**target.fl, target.lsb, 2.0 ** (target.wl - target.fl), target.min_code, target.max_code,
            2.0**w.fl, w.lsb, 2.0 ** (w.wl - w.fl), w.min_code, w.max_code,
            _int64(mix_seed(seed, step, index, STREAM["accumulator"])),
            _int64(mix_seed(seed, step, index, STREAM["weight"])),
        )
        if bad:
            _raise_non_finite(update.to(torch.float64) * scale, STREAM["update"], p, index)
        if counts is not None:
            counts.add_counts(update, scale, nonzero, stalled, saturated)

    # -- checkpoints ----------------------------------------------------------------
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch's, but every tensor of the state keeps its saved dtype:
        torch would cast the float64 accumulator codes and states to the
        parameter's dtype (float32 loses codes above 2^24)."""
        super().load_state_dict(state_dict)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, p in zip(saved_ids, params, strict=True):
            saved = state_dict["state"].get(saved_id)
            if saved is None:
                continue
            for key, value in saved.items():
                if torch.is_tensor(value):
                    self.state[p][key] = value.detach().to(device=p.device, copy=True)
        for group in self.param_groups:
            normalize_group(group, self.rule.state_names)

    # -- introspection --------------------------------------------------------------
    def accumulator_codes(self, p: torch.Tensor) -> torch.Tensor | None:
        """The int64 codes of ``p``'s weight accumulator (``None`` before the
        first step or when the group has neither accumulator nor weight format)."""
        acc = self.state[p].get("accumulator")
        return None if acc is None else acc.to(torch.int64)


_FUSED_DTYPES = (torch.float32, torch.float64)  # what the Numba kernel reads and writes


def _int64(seed: int) -> int:
    """A 64-bit seed as the signed int Numba takes (same bits)."""
    return seed - (1 << 64) if seed >= 1 << 63 else seed


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
        err.add_note(f"hwsim.optim: the {what} of parameter {index} (shape {tuple(p.shape)}) is not finite")
        raise


class _Counts:
    """Per-group telemetry kept as tensors: per param one stacked count vector
    (nonzero updates, stalled updates, saturated weights) and a strided sample
    of |update| for the median; one host sync per group, in :meth:`summary`."""

    def __init__(self) -> None:
        self.counts: list[torch.Tensor] = []
        self.samples: list[torch.Tensor] = []
        self.numel = 0

    def add_float(self, update: torch.Tensor, unchanged: torch.Tensor) -> None:
        nz = update != 0
        self.counts.append(torch.stack([torch.count_nonzero(nz), torch.count_nonzero(unchanged.logical_and_(nz))]))
        self.numel += update.numel()

    def add_fixed(self, update, delta, acc, target, weight_codes, weight_fmt) -> None:
        nz = update != 0
        sat = (acc == target.min_code).logical_or_(acc == target.max_code)
        if weight_codes is not None:
            sat.logical_or_(weight_codes == weight_fmt.min_code).logical_or_(weight_codes == weight_fmt.max_code)
        stalled = (delta == 0).logical_and_(nz)
        self.counts.append(torch.stack([torch.count_nonzero(nz), torch.count_nonzero(stalled),
                                        torch.count_nonzero(sat)]))
        self.numel += update.numel()
        flat = update.reshape(-1)
        stride = max(1, flat.numel() // MEDIAN_SAMPLE)
        self.samples.append(flat[::stride])

    def add_counts(self, update, scale: float, nonzero: int, stalled: int, saturated: int) -> None:
        self.counts.append(torch.tensor([nonzero, stalled, saturated]))
        self.numel += update.numel()
        flat = update.reshape(-1)
        stride = max(1, flat.numel() // MEDIAN_SAMPLE)
        self.samples.append(flat[::stride].to(torch.float64) * scale)

    def summary(self, target) -> dict[str, float]:
        result = {"stall_fraction": 0.0, "saturation_fraction": 0.0, "median_update_lsb": math.nan}
        if not self.counts:
            return result
        if self.samples:
            counts = torch.stack(self.counts).sum(0).to(torch.float64)
            sample = torch.cat(self.samples).abs()
            median = torch.nanmedian(torch.where(sample != 0, sample, math.nan)).reshape(1)
            nonzero, stalled, saturated, median = torch.cat([counts, median.to(counts.dtype)]).tolist()
            result["median_update_lsb"] = median / target.lsb
        else:  # float weights
            nonzero, stalled = torch.stack(self.counts).sum(0).tolist()
            saturated = 0
        result["stall_fraction"] = stalled / nonzero if nonzero else 0.0
        result["saturation_fraction"] = saturated / self.numel if self.numel else 0.0
        return result
