"""The contract between the study engine and the code a trial runs.

A *task* is a function taking one typed parameter object and returning a
:class:`TrialResult`. Register it with :func:`register_task`; a study spec
names it as ``"module.path:name"`` (e.g. ``"models.tasks:lms"``), and the
engine imports the module, which registers the task. The parameter class is a
dataclass: its fields, type hints (``Literal[...]`` for choices,
``FixedPoint | None`` for formats) and defaults are what a spec may set, so a
bad spec is rejected before any trial runs.

    @dataclasses.dataclass(frozen=True)
    class LMSParams:
        taps: int = 8
        rule: Literal["lms", "sign_error", "sign_data", "sign_sign"] = "lms"
        step: float = 0.01
        weight: FixedPoint | None = None
        rounding: Literal["nearest", "stochastic"] = "nearest"
        seed: int = 0

    @register_task("lms", LMSParams)
    def lms(p: LMSParams) -> TrialResult:
        ...
        return TrialResult(metrics={"excess_mse_db": -31.2}, history=[{"step": 0, "mse": 1.0}, ...])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass
class TrialResult:
    """What one trial reports.

    metrics: final scalar metrics (e.g. ``test_accuracy``, ``loss``,
        ``stall_fraction``); the engine stores and plots these.
    history: one dict per logged step or epoch, each with a ``"step"`` key (int)
        and float metrics; drawn as learning curves.
    diverged: True when the run went non-finite or blew up; the engine records
        the trial with status ``diverged``.
    info: anything else worth keeping (JSON-serializable).
    telemetry: per logged step, rows ``{"step", "layer", "tensor", <metric>:
        number, ...}`` (long format: one per layer and tensor, e.g.
        ``hwsim.nn.Telemetry.rows()`` with the step added); stored in the
        store's ``telemetry`` table (:mod:`hwsim.study.store_telemetry`).
    """

    metrics: dict[str, float]
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    diverged: bool = False
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    telemetry: list[dict[str, Any]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    params: type
    fn: Callable[[Any], TrialResult]
    metrics: tuple[str, ...] | None = None  # final metrics it reports (None: undeclared)


TASKS: dict[str, Task] = {}
ADAPTERS: dict[tuple[str, str], Callable] = {}


def register_task(name: str, params: type, *, metrics: tuple[str, ...] | None = None) -> Callable:
    """Decorator registering ``fn(params_instance) -> TrialResult`` under ``name``.

    metrics: the final metrics the task reports; a spec's ``plot.metric`` must
    then be one of them (checked before anything runs).
    """
    if not dataclasses.is_dataclass(params):
        raise TypeError(f"task {name!r}: params must be a dataclass, got {params!r}")

    def deco(fn):
        TASKS[name] = Task(name, params, fn, tuple(metrics) if metrics is not None else None)
        fn.task = TASKS[name]
        return fn

    return deco


def register_adapter(task: str, kind: str) -> Callable:
    """Decorator: ``fn`` gives theory/cost/plots what they need about ``task``.

    Kinds in use (``hwsim.theory.plots``): ``"energy"`` ``fn(config) -> pJ per
    training step``; ``"gradient_statistics"`` ``fn(config) -> {tensor: stats}``
    (``hwsim.theory.accumulator.measure_gradient_statistics``). A task module
    registers them next to the task, so the library never imports the task's
    package itself.
    """

    def deco(fn):
        ADAPTERS[(task, kind)] = fn
        return fn

    return deco


def get_adapter(task: str, kind: str, purpose: str) -> Callable:
    """The ``kind`` adapter of ``task``; LookupError naming what needs it."""
    try:
        return ADAPTERS[(task, kind)]
    except KeyError:
        have = sorted(k for t, k in ADAPTERS if t == task)
        raise LookupError(
            f"task {task!r} registers no {kind!r} adapter, which {purpose} needs "
            f"(its adapters: {have or 'none'}); register one with "
            f"hwsim.study.task.register_adapter({task!r}, {kind!r})"
        ) from None


def has_adapter(task: str, kind: str) -> bool:
    return (task, kind) in ADAPTERS
