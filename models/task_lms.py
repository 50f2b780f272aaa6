"""The ``lms`` study task: an adaptive FIR filter in fixed point (:mod:`models.lms`)."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Literal

import numpy as np

from hwsim.formats import FixedPoint
from hwsim.study.task import TrialResult, register_adapter, register_task
from models import datasets
from models.lms import FixedLMS, FloatLMS, config_array
from models.task_common import (
    RoundingName,
    _db,
    _parse_schedule,
    _require,
    _require_seed,
    _validate,
)

# --------------------------------------------------------------------------- lms


@dataclasses.dataclass(frozen=True)
class LMSParams:
    """An adaptive FIR filter trial (see :mod:`models.lms`).

    ``weight``, ``accumulator`` (the filter's MAC accumulator), ``error``,
    ``data`` and ``weight_accumulator``: formats, ``None`` = wide (all ``None``:
    the float64 baseline). ``rounding`` applies to every stage (data, products,
    accumulator, error, update, weight). ``step`` is held with 16 significant
    bits. ``schedule``: a ``hwsim.schedules.GearShiftPolicy``
    text; ``every=`` counts samples, the plateau metric is the block MSE.
    ``drift`` > 0 (system identification only): the unknown system is a random
    walk (``models.datasets.system_identification``), a tracking problem; the
    excess MSE is then measured against its noise-free output and the weight
    error against the system at the last sample.
    ``blocks``: how many blocks (history rows) the run is cut into.
    """

    taps: int = 16
    rule: Literal["lms", "sign_error", "sign_data", "sign_sign"] = "lms"
    step: float = 0.01
    weight: FixedPoint | None = None
    accumulator: FixedPoint | None = None
    error: FixedPoint | None = None
    data: FixedPoint | None = None
    rounding: RoundingName = "nearest"
    n_samples: int = 20000
    snr_db: float = 40.0
    color: float = 0.0
    problem: Literal["system_id", "equalization"] = "system_id"
    drift: float = 0.0
    schedule: str = "constant"
    seed: int = 0
    weight_accumulator: FixedPoint | None = None
    blocks: int = 50

    def __post_init__(self) -> None:
        _validate(self)
        _require(self, "taps", 1 <= self.taps <= 1024, "an integer in [1, 1024]")
        _require(self, "step", 1e-15 <= self.step <= 1e3, "a number in [1e-15, 1000]")
        _require(self, "n_samples", self.n_samples <= 10**8, "an integer in [max(taps, 10), 10**8]")
        _require(self, "snr_db", -20.0 <= self.snr_db <= 200.0, "a number in [-20, 200] (dB)")
        _require(self, "drift", self.drift <= 1.0, "a number in [0, 1]")
        _require_seed(self)
        _require(
            self, "n_samples", self.n_samples >= max(self.taps, 10), "an integer >= max(taps, 10)"
        )
        _require(self, "color", 0.0 <= self.color < 1.0, "in [0, 1)")
        _require(
            self,
            "drift",
            self.drift >= 0 and (self.drift == 0 or self.problem == "system_id"),
            "a number >= 0 (0 unless problem is 'system_id')",
        )
        _require(self, "blocks", 1 <= self.blocks <= self.n_samples, "an integer in [1, n_samples]")
        _parse_schedule(self)
        if not self.is_float:
            try:
                filt = FixedLMS(
                    self.taps,
                    self.rule,
                    data=self.data,
                    weight=self.weight,
                    accumulator=self.accumulator,
                    error=self.error,
                    weight_accumulator=self.weight_accumulator,
                )  # checks the formats
                config_array(filt.formats, self.rule, self.step)  # ... and the step with them
            except ValueError as err:
                raise ValueError(
                    f"LMSParams formats (weight, accumulator, error, data, "
                    f"weight_accumulator) and step: {err}"
                ) from None

    @property
    def is_float(self) -> bool:
        return all(
            f is None
            for f in (self.weight, self.accumulator, self.error, self.data, self.weight_accumulator)
        )


def _typical_update_lsb(p: LMSParams, filt, mu: float, e: np.ndarray, x: np.ndarray) -> float:
    """A typical |mu g| in weight-accumulator LSBs: rms error and input in place
    of the sign-less factors (the precision floor of a gear-shift policy)."""
    if p.is_float:
        return math.inf
    size = mu
    if p.rule in ("lms", "sign_data"):
        size *= float(np.sqrt(np.mean(e * e)))
    if p.rule in ("lms", "sign_error"):
        size *= float(np.sqrt(np.mean(x * x)))
    return size / filt.formats.weight_accumulator.lsb


LMS_METRICS = (
    "mse_db", "excess_mse_db", "misadjustment", "stall_fraction", "final_stall_fraction",
    "weight_error_db", "mmse_db", "wiener_power_db", "final_step", "saturated_updates",
)  # fmt: skip


@register_task("lms", LMSParams, metrics=LMS_METRICS)
def lms(p: LMSParams) -> TrialResult:
    """System identification or channel equalization with one LMS variant.

    Metrics (steady state = the last 10% of the samples): ``mse_db``,
    ``excess_mse_db`` (the power of the filter output minus the Wiener
    filter's output, i.e. the MSE above the minimum), ``misadjustment``
    (excess / minimum MSE), ``stall_fraction`` (nonzero tap updates rounded
    to zero, whole run), ``final_stall_fraction`` (steady state),
    ``weight_error_db`` (||w - w_wiener||^2 / ||w_wiener||^2), ``wiener_power_db``
    (||w_wiener||^2), ``final_step``.
    """
    started = time.perf_counter()
    if p.problem == "system_id":
        data = datasets.system_identification(
            p.n_samples, p.taps, color=p.color, snr_db=p.snr_db, seed=p.seed, drift=p.drift
        )
    else:
        data = datasets.channel_equalization(
            p.n_samples, p.taps, color=p.color, snr_db=p.snr_db, seed=p.seed
        )
    if p.is_float:
        filt = FloatLMS(p.taps, p.rule)
    else:
        filt = FixedLMS(
            p.taps,
            p.rule,
            data=p.data,
            weight=p.weight,
            accumulator=p.accumulator,
            error=p.error,
            weight_accumulator=p.weight_accumulator,
            rounding=p.rounding,
            seed=p.seed,
        )
        # the data quantized once (one kernel call; the noise is per sample
        # index, so this equals quantizing block by block)
        x_codes = filt.data_codes(data.x, 1, 0)
        d_codes = filt.data_codes(data.d, 2, 0)
    policy = _parse_schedule(p)
    block = max(1, p.n_samples // p.blocks)
    if policy is not None and policy.every is not None:  # block edges must fall on the shift points
        block = math.gcd(block, policy.every)
    steady_from = p.n_samples - max(p.n_samples // 10, 1)
    y = np.empty(p.n_samples)
    mu = p.step
    history: list[dict[str, float]] = []
    nonzero = stalls = saturated = 0
    steady_nonzero = steady_stalls = 0
    diverged = False
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, p.n_samples, block):
            stop = min(start + block, p.n_samples)
            if p.is_float:
                r = filt.run(data.x[start:stop], data.d[start:stop], mu)
            else:
                r = filt.run_codes(x_codes[start:stop], d_codes[start:stop], mu)
            y[start:stop] = r.y
            nonzero += r.nonzero_updates
            stalls += r.stalls
            saturated += r.saturated
            if start >= steady_from:
                steady_nonzero += r.nonzero_updates
                steady_stalls += r.stalls
            err = data.d[start:stop] - r.y
            mse = float(np.mean(err * err))
            history.append(
                {
                    "step": stop,
                    "mse_db": _db(mse),
                    "stall_fraction": r.stall_fraction,
                    "step_size": mu,
                }
            )
            if not math.isfinite(mse):
                diverged = True
                break
            if policy is not None:
                mu = policy.next_lr(
                    mu,
                    stop,
                    metric=mse,
                    typical_update_lsb=_typical_update_lsb(
                        p, filt, mu, r.error, data.x[start:stop]
                    ),
                )
    err = data.d[steady_from:] - y[steady_from:]
    # excess MSE measured directly as the power of (filter output - Wiener
    # output): the a-priori excess error, orthogonal to the Wiener error, so
    # no noisy "MSE - MMSE" subtraction (that cannot resolve excess below ~5%
    # of the MMSE over a few thousand samples)
    # (a drifting system: its own noise-free output, the best any tracker can do)
    wiener_out = (
        data.clean if data.clean is not None else np.convolve(data.x, data.wiener)[: p.n_samples]
    )
    eps = y[steady_from:] - wiener_out[steady_from:]
    with np.errstate(over="ignore", invalid="ignore"):
        mse = float(np.mean(err * err)) if not diverged else math.inf
        excess = float(np.mean(eps * eps)) if not diverged else math.inf
    weights = filt.weights
    with np.errstate(over="ignore", invalid="ignore"):
        weight_error = float(np.sum((weights - data.wiener) ** 2) / np.sum(data.wiener**2))
    metrics = {
        "mse_db": _db(mse),
        "excess_mse_db": _db(max(excess, 1e-30)) if math.isfinite(excess) else math.inf,
        "misadjustment": excess / data.mmse,
        "stall_fraction": stalls / nonzero if nonzero else 0.0,
        "final_stall_fraction": steady_stalls / steady_nonzero if steady_nonzero else 0.0,
        "weight_error_db": _db(weight_error) if math.isfinite(weight_error) else math.inf,
        "mmse_db": _db(data.mmse),
        # |w_opt|^2: turns a predicted excess MSE into the weight error (hwsim.theory.plots)
        "wiener_power_db": _db(float(np.sum(data.wiener**2))),
        "final_step": mu,
        "saturated_updates": float(saturated),
    }
    info = {
        "seconds": time.perf_counter() - started,
        "tap_updates": p.taps * p.n_samples,
        "formats": None
        if p.is_float
        else {k: str(v) for k, v in dataclasses.asdict(filt.formats).items()},
    }
    if diverged:
        info["error"] = "the float filter's MSE went non-finite (step too large)"
    return TrialResult(metrics=metrics, history=history, diverged=diverged, info=info)


@register_adapter("lms", "energy")
def lms_energy(config: dict) -> float:
    """pJ per sample (hwsim.cost), with the formats this datapath fills in for
    roles left at None (:func:`models.lms.resolve_formats`)."""
    from hwsim.theory.energy import lms_energy as cost_of
    from models.lms import resolve_formats

    return cost_of(config, resolve=resolve_formats)
