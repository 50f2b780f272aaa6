"""Energy of one trial's training step (:mod:`hwsim.cost`) for Pareto plots."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from hwsim import cost
from hwsim.formats import FixedPoint, FloatingPoint
from hwsim.study.plots import (
    StudyData,
)
from hwsim.study.task import get_adapter, has_adapter, register_adapter
from hwsim.theory.plot_common import _fmt, _task_name

# -- energy and the Pareto front --------------------------------------------------------------

_LAYER_FORMATS = ("weight", "activation", "output", "grad_activation", "grad_weight",
                  "accumulator", "grad_activation_accumulator", "grad_weight_accumulator",
                  "product")  # hwsim.nn.Precision's  # fmt: skip
_FORMAT_FIELDS = (
    *_LAYER_FORMATS,
    *(f"opt_{t}" for t in ("weight", "accumulator", "grad", "state", "update")),
    "grad",  # the two-layer and test tasks' gradient format
    "error",
    "data",
    "weight_accumulator",
    "update",
)
EnergyFn = Callable[[dict], float | None]
LMS_ROLES = ("weight", "data", "accumulator", "error", "weight_accumulator")


def register_energy(task: str) -> Callable[[EnergyFn], EnergyFn]:
    """Register ``fn(config) -> pJ per training step`` for trials of task ``task``
    (the task's ``"energy"`` adapter, :func:`hwsim.study.task.register_adapter`)."""
    return register_adapter(task, "energy")


def has_precision_config(config: dict) -> bool:
    """True when any format field of the trial is fixed point or floating point."""
    values = [config.get(k) for k in _FORMAT_FIELDS]
    values += [v for d in values if isinstance(d, dict) for v in d.values()]  # opt_state tables
    return any(
        isinstance(_fmt(v), FixedPoint | FloatingPoint) for v in values if isinstance(v, str)
    )


def lms_energy(config: dict, resolve: Callable[..., Any] | None = None) -> float:
    """pJ per sample of an LMS filter trial (:func:`hwsim.cost.lms_step_energy`).

    resolve: the task's ``resolve_formats(**roles)`` filling the formats its
    datapath uses for roles left at None; without it (a task whose None roles
    are float) those roles are costed as fp32.
    """
    roles = {k: _fmt(config.get(k)) for k in LMS_ROLES}
    if resolve is not None and any(v is not None for v in roles.values()):
        resolved = resolve(**roles)
        roles = {k: getattr(resolved, k) for k in roles}
    return cost.lms_step_energy(
        int(config.get("taps", 16)), rule=config.get("rule", "lms"), **roles
    )


def classifier_energy(config: dict, net, input_shape: tuple[int, ...]) -> float:
    """pJ per training step of a classify trial whose network is ``net``
    (:func:`hwsim.cost.training_step_energy`): the forward and both backward
    GEMMs at the trial's ``hwsim.nn.Precision`` fields (operands and
    accumulators; per-layer ``layers`` overrides are not costed, every layer
    takes the task-wide formats), the optimizer at ``opt_accumulator``, the
    gradient it reads (``opt_grad``, else the layers' ``grad_weight``) and its
    state (``opt_state``; a table per state is costed at its widest format)."""
    precision = SimpleNamespace(**{k: _fmt(config.get(k)) for k in _LAYER_FORMATS})
    grad = _fmt(config.get("opt_grad")) or _fmt(config.get("grad_weight"))
    state = config.get("opt_state")
    if isinstance(state, dict):
        formats = [f for f in map(_fmt, state.values()) if f is not None]
        state = max(formats, key=lambda f: f.bits, default=None)
    e = cost.training_step_energy(
        net,
        precision,
        input_shape=input_shape,
        batch_size=int(config.get("batch_size", 32)),
        optimizer=config.get("optimizer", "sgd"),
        momentum=float(config.get("momentum") or 0.0),
        weight_accumulator=_fmt(config.get("opt_accumulator")),
        grad=grad,
        state=_fmt(state),
    )
    return e.total


def trial_energy(data: StudyData, config: dict) -> float | None:
    """The task's ``"energy"`` adapter applied to ``config``; None when the task has
    none (no Pareto plot) or the cost model does not cover the config."""
    task = _task_name(data)
    if not has_adapter(task, "energy"):
        return None
    try:
        return get_adapter(task, "energy", "the Pareto plot")(config)
    except (ValueError, TypeError):
        return None
