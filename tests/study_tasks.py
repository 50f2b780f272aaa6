"""Small, fast tasks for the study-engine tests (no dependency on models/).

``quadratic``: SGD on a noisy quadratic 0.5 * ||w - w*||^2 with the weights on
a fixed-point grid; ``fail``, ``diverge``, ``nonfinite``, ``crash`` and ``sleep``
make a trial raise, blow up, feed NaN to quantize, kill its process or take
time, so the engine's handling of each can be tested. ``misbehave``: a trial
that hangs, returns a poison result (a lambda in ``info``, a string metric,
...), raises ``KeyboardInterrupt``/``SystemExit``, or logs each run to a file
(to count how often a trial ran).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Literal

import numpy as np

import hwsim
from hwsim.formats import FixedPoint, FloatingPoint
from hwsim.study.task import TrialResult, register_adapter, register_task


@dataclasses.dataclass(frozen=True)
class QuadraticParams:
    dim: int = 8
    lr: float = 0.1
    steps: int = 60
    noise: float = 0.05
    weight: FixedPoint | FloatingPoint | None = None  # any format hwsim.quantize takes
    rounding: Literal["nearest", "nearest_away", "floor", "zero", "stochastic"] = "nearest"
    schedule: str = "constant"
    fail: bool = False
    diverge: bool = False
    nonfinite: bool = False
    sleep: float = 0.0
    crash: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


@register_task("quadratic", QuadraticParams, metrics=("loss", "stall_fraction"))
def quadratic(p: QuadraticParams) -> TrialResult:
    """Noisy-gradient SGD on a quadratic; metrics ``loss`` and ``stall_fraction``."""
    if p.fail:
        raise RuntimeError("this trial was asked to fail")
    if p.crash:
        os._exit(3)  # the whole worker process dies, as on a segfault
    rng = np.random.default_rng(p.seed)
    target = rng.uniform(-1.0, 1.0, p.dim)
    w = np.zeros(p.dim)
    lr = 2.5 if p.diverge else p.lr  # lr > 2 makes the iteration blow up
    with np.errstate(over="ignore", invalid="ignore"):
        w, history, stalls = _descend(p, rng, target, w, lr)
    loss = 0.5 * float(np.sum((w - target) ** 2))
    return TrialResult(
        metrics={"loss": loss, "stall_fraction": stalls / (p.steps * p.dim)},
        history=history,
        diverged=not np.isfinite(loss),
        info={"final_w0": float(w[0])},
    )


def _descend(p: QuadraticParams, rng, target, w, lr):
    history = []
    stalls = 0
    for t in range(p.steps):
        if p.sleep:
            time.sleep(p.sleep / p.steps)
        grad = (w - target) + p.noise * rng.standard_normal(p.dim)
        if p.diverge:
            grad = grad * 1e30  # reaches inf within a few steps
        new = w - lr * grad
        if p.weight is not None and not p.diverge:  # saturation would stop the blow-up
            if p.nonfinite and t == p.steps // 2:
                new[0] = np.nan  # quantize raises NonFiniteError
            new = hwsim.quantize(new, p.weight, p.rounding, seed=p.seed * 1_000_003 + t)
            stalls += int(np.count_nonzero((new == w) & (grad != 0)))
        w = new
        loss = 0.5 * float(np.sum((w - target) ** 2))
        if t % 10 == 9 or t == p.steps - 1:
            history.append(
                {"step": t + 1, "loss": loss, "stall_fraction": stalls / ((t + 1) * p.dim)}
            )
    return w, history, stalls


@register_task("quadratic_alias", QuadraticParams)
def quadratic_alias(p: QuadraticParams) -> TrialResult:
    """The same task under another name (a results folder belongs to one task)."""
    return quadratic(p)


@dataclasses.dataclass(frozen=True)
class MisbehaveParams:
    kind: Literal[
        "ok", "hang", "lambda_info", "string_metric", "keyboard_interrupt", "system_exit",
        "bad_history", "not_a_result", "big_history",
    ] = "ok"  # fmt: skip
    sleep: float = 0.0
    log: str = ""  # a file each run appends "seed pid" to
    seed: int = 0


@register_task("misbehave", MisbehaveParams, metrics=("value",))
def misbehave(p: MisbehaveParams):
    """One kind of bad behaviour per trial (see the module docstring)."""
    if p.log:
        with open(p.log, "a") as fh:
            fh.write(f"{p.seed} {os.getpid()}\n")
    time.sleep(p.sleep)
    if p.kind == "hang":
        while True:
            time.sleep(1.0)
    if p.kind == "keyboard_interrupt":
        raise KeyboardInterrupt
    if p.kind == "system_exit":
        raise SystemExit(4)
    if p.kind == "not_a_result":
        return {"value": 1.0}
    metrics = {"value": float(p.seed)}
    info = {}
    history = []
    if p.kind == "lambda_info":
        info = {"fn": lambda: 1}
    elif p.kind == "string_metric":
        metrics = {"value": "high"}
    elif p.kind == "bad_history":
        history = [{"step": 1, "loss": object()}]
    elif p.kind == "big_history":  # ~200 KB stored per trial (fills a small disk)
        history = [{"step": i, "loss": float(i)} for i in range(8000)]
    return TrialResult(metrics=metrics, history=history, info=info)


@dataclasses.dataclass(frozen=True)
class BitsParams:
    """Three tensors with known needs: ``a`` holds 0.70710678 (fractional bits
    matter), ``b`` holds 5.3 (needs integer bits), ``c`` holds 0.0123 (tiny)."""

    a: FixedPoint | None = None
    b: FixedPoint | None = None
    c: FixedPoint | None = None
    seed: int = 0


BITS_VALUES = {"a": 0.70710678, "b": 5.3, "c": 0.0123}


def bits_error(formats: dict) -> float:
    """Sum over the tensors of the relative error of their value on their format."""
    err = 0.0
    for name, x in BITS_VALUES.items():
        fmt = formats.get(name)
        q = x if fmt is None else float(hwsim.quantize(np.array([x]), fmt)[0])
        err += abs(q - x) / abs(x)
    return err


@register_task("bits", BitsParams, metrics=("err",))
def bits(p: BitsParams) -> TrialResult:
    """Relative quantization error of three known values (instant, deterministic)."""
    return TrialResult(metrics={"err": bits_error({"a": p.a, "b": p.b, "c": p.c})})


BITS_RULE = {"a": "fx9.8", "b": "fx5.1", "c": "fx10.9"}
"""The stand-in analytical rule of the ``bits`` task (what ``hwsim search`` compares)."""


@register_adapter("bits", "analytical_precision")
def bits_rule(config: dict, target: float) -> dict:
    """A fixed answer, whatever the target."""
    return dict(BITS_RULE)
