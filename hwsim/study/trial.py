"""Plot settings, one trial, and a trial's identity (used by :mod:`hwsim.study.spec`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Literal


@dataclasses.dataclass(frozen=True)
class PlotSpec:
    """What the plots show.

    metric: final metric on the y axis (a key of the task's metrics).
    bits: grid field giving the bit-width axis (a format field or an int field).
    bits_of: for a format field, ``"wl"`` (word length) or ``"fl"`` (fractional bits).
    lr: grid field giving the learning-rate axis of the heatmap (optional).
    goal: ``"max"`` or ``"min"``: which metric value is better (used to pick the
        best learning rate per point).
    series: grid fields that get one line each (default: every grid field other
        than bits, lr and seed).
    curve_metric: history key drawn as learning curves (default: ``metric``).
    step_label: x-axis label of the learning curves (e.g. "epoch", "sample").
    plugins: modules imported before plotting; they register more plots.
    """

    metric: str
    bits: str | None = None
    bits_of: Literal["wl", "fl"] = "wl"
    lr: str | None = None
    goal: Literal["min", "max"] = "min"
    series: tuple[str, ...] | None = None
    curve_metric: str | None = None
    plugins: tuple[str, ...] = ()
    step_label: str | None = None


@dataclasses.dataclass(frozen=True)
class Trial:
    """One point of the sweep: the full, typed parameter set and its identity."""

    params: Any  # an instance of the task's params dataclass
    config: dict  # plain JSON form of every parameter (defaults included)
    hash: str
    role: str = "grid"  # "grid" or "baseline"
    case: str | None = None  # the [[cases]] label it belongs to


def trial_hash(task_ref: str, config: dict) -> str:
    """Identity of a trial: SHA-256 of the task and its full canonical config.

    Defaults are included in ``config``, so a trial is the same trial however
    the spec spells it (fixed vs grid, "fx16.12" vs {wl=16, fl=12}).
    """
    blob = json.dumps({"task": task_ref, "params": config}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:20]
