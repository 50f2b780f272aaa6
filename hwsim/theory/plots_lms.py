"""LMS theory in study plots: predicted excess MSE vs step, over the measured points."""

from __future__ import annotations

import functools
import math
import statistics

import matplotlib.ticker
import numpy as np

from hwsim.formats import FixedPoint
from hwsim.study.plots import (
    StudyData,
    metric_label,
    plt,
    register_overlay,
    register_plot,
    series_sort_key,
    series_style,
)
from hwsim.theory.lms import lms_excess_mse, lms_optimal_step, lms_stall_step, lms_time_constant
from hwsim.theory.plot_common import _db, _fmt, _task_name

# -- LMS --------------------------------------------------------------------------------


def _is_lms_study(data: StudyData) -> bool:
    return _task_name(data) == "lms" and any(
        "step" in r.config and "weight" in r.config for r in data.records
    )


def _lms_setting(record) -> dict | None:
    """Theory inputs of one LMS trial, or None when the theory does not cover it
    (float weights, sign-data/sign-sign rules, other roundings, equalization,
    a drifting system, a step schedule, a separate weight accumulator)."""
    c = record.config
    fmt = _fmt(c.get("weight"))
    if not isinstance(fmt, FixedPoint) or c.get("rule", "lms") not in ("lms", "sign_error"):
        return None
    if c.get("rounding", "nearest") not in ("nearest", "stochastic"):
        return None
    if c.get("problem", "system_id") != "system_id" or c.get("schedule", "constant") != "constant":
        return None
    if c.get("drift", 0.0):
        return None  # a drifting (tracking) system: the steady-state theory has no lag term
    if isinstance(_fmt(c.get("weight_accumulator")), FixedPoint):
        return None  # updates land on a finer grid than the weights: not this model
    if "mmse_db" in record.metrics and math.isfinite(record.metrics["mmse_db"]):
        min_mse = 10.0 ** (record.metrics["mmse_db"] / 10.0)
    else:  # unit-power desired signal at snr_db (models.datasets.system_identification)
        min_mse = 10.0 ** (-float(c.get("snr_db", 40.0)) / 10.0)
    wiener_db = record.metrics.get("wiener_power_db")
    return {
        "weight": fmt,
        "taps": int(c.get("taps", 16)),
        "n_samples": int(c.get("n_samples", 20000)),
        "input_power": 1.0,  # models.datasets: unit-variance input
        "min_mse": min_mse,
        # |w_opt|^2 when the task reports it (models.tasks:lms does), for weight_error_db
        "wiener_power": 10.0 ** (wiener_db / 10.0)
        if wiener_db is not None and math.isfinite(wiener_db)
        else None,
        "rule": c.get("rule", "lms"),
        "rounding": c.get("rounding", "nearest"),
    }


@functools.lru_cache(maxsize=4096)
def _lms_predict(
    step: float,
    weight: FixedPoint,
    taps: int,
    input_power: float,
    min_mse: float,
    rule: str,
    rounding: str,
    model: str,
) -> float:
    return float(
        lms_excess_mse(
            step,
            weight,
            taps=taps,
            input_power=input_power,
            min_mse=min_mse,
            rule=rule,
            rounding=rounding,
            model=model,
        )
    )


def steady_state_reached(setting: dict, step: float, n_samples: int) -> bool:
    """Whether a cold-start run of ``n_samples`` reaches the predicted steady state
    before its last 10% (the measurement window of ``models.tasks:lms``): five
    time constants at the steady-state MSE (:func:`lms_time_constant`)."""
    s = setting
    excess = _lms_predict(
        float(step), s["weight"], s["taps"], 1.0, s["min_mse"], s["rule"], s["rounding"], "exact"
    )
    if not math.isfinite(excess):
        return False
    tau = lms_time_constant(
        float(step),
        s["weight"],
        input_power=1.0,
        mse=s["min_mse"] + excess,
        rule=s["rule"],
        rounding=s["rounding"],
    )
    return 5.0 * tau <= 0.9 * n_samples


PREDICTED_METRICS = ("excess_mse_db", "misadjustment", "mse_db", "weight_error_db")


def _predict_metric(
    metric: str,
    excess: float,
    min_mse: float,
    wiener_power: float | None = None,
    input_power: float = 1.0,
) -> float:
    """The study metric predicted from the excess MSE; NaN when it cannot be.
    ``weight_error_db`` (|w - w_opt|^2 / |w_opt|^2): for white input the excess MSE
    is input_power * |w - w_opt|^2, so it needs |w_opt|^2 (``wiener_power``)."""
    if metric == "weight_error_db":
        if not wiener_power or wiener_power <= 0:
            return float("nan")
        return _db(excess / (input_power * wiener_power))
    if metric == "excess_mse_db":
        return _db(excess)
    if metric == "misadjustment":
        return excess / min_mse
    if metric == "mse_db":
        return _db(min_mse + excess)
    return float("nan")


def lms_rows(data: StudyData) -> list[dict]:
    """One row per (series, weight format) of an LMS study: the best measured step
    and its metric (mean over seeds) next to the predictions."""
    metric = data.metric
    groups: dict[tuple, dict[float, list]] = {}
    settings: dict[tuple, dict] = {}
    for r in data.ok():
        s = _lms_setting(r)
        if s is None or metric not in r.metrics:
            continue
        key = (s["rule"], s["rounding"], str(s["weight"]), s["taps"])
        settings.setdefault(key, s)
        groups.setdefault(key, {}).setdefault(float(r.config["step"]), []).append(r)
    rows = []
    sign = 1.0 if data.goal == "max" else -1.0
    # by word length, not by the format's text (fx6.4 before fx10.8)
    for key, by_step in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], settings[kv[0]]["weight"].wl)
    ):
        s = settings[key]
        means = {}
        for st, recs in by_step.items():
            vals = [r.metrics[metric] for r in recs if math.isfinite(r.metrics[metric])]
            if vals:
                means[st] = statistics.fmean(vals)
        if not means:
            continue
        best = max(means, key=lambda st: sign * means[st])
        min_mse = statistics.fmean(
            [_lms_setting(r)["min_mse"] for recs in by_step.values() for r in recs]
        )
        powers = [_lms_setting(r)["wiener_power"] for recs in by_step.values() for r in recs]
        wiener = statistics.fmean(powers) if powers and None not in powers else None
        args = (s["weight"], s["taps"], 1.0, min_mse, s["rule"], s["rounding"])
        rows.append(
            {
                "rule": s["rule"],
                "rounding": s["rounding"],
                "weight": str(s["weight"]),
                "best_step": best,
                "measured": means[best],
                "exact": _predict_metric(
                    metric, _lms_predict(best, *args, "exact"), min_mse, wiener
                ),
                "white": _predict_metric(
                    metric, _lms_predict(best, *args, "white"), min_mse, wiener
                ),
                "optimal_step": lms_optimal_step(
                    s["weight"],
                    input_power=1.0,
                    min_mse=min_mse,
                    rule=s["rule"],
                    rounding=s["rounding"],
                ),
                "stall_step": lms_stall_step(
                    s["weight"], input_power=1.0, min_mse=min_mse, rule=s["rule"]
                ),
                "means": means,
                "setting": {**s, "min_mse": min_mse, "wiener_power": wiener},
                "reached": steady_state_reached({**s, "min_mse": min_mse}, best, s["n_samples"]),
            }
        )
    return rows


@register_plot("lms_theory")
def lms_theory(data: StudyData):
    """Excess MSE vs step size, measured (points, mean over seeds) and predicted
    (solid: rounding integrated over the update distribution, dotted where the
    run is too short to reach that steady state; dashed: white rounding noise,
    Caraiscos & Liu 1984; triangle: its optimal step; vertical dotted line: the
    nearest-rounding stall threshold), one colour per weight format."""
    if not _is_lms_study(data) or data.metric not in PREDICTED_METRICS:
        return None
    rows = [r for r in lms_rows(data) if math.isfinite(r["exact"])]
    if not rows:
        return None
    panels: dict[tuple, list[dict]] = {}
    for row in rows:
        panels.setdefault((row["rule"], row["rounding"]), []).append(row)
    ncols = min(len(panels), 2)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.2 * ncols, 4.4 * nrows), squeeze=False)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    all_steps = sorted({st for row in rows for st in row["means"]})
    lo, hi = min(all_steps) / 2, max(all_steps) * 2
    grid = np.geomspace(lo, hi, 60)
    for ax, ((rule, rounding), prows) in zip(axes.flat, sorted(panels.items()), strict=False):
        prows = sorted(prows, key=lambda r: r["setting"]["weight"].fl)
        for i, row in enumerate(prows):
            color = plt.cm.viridis(i / max(1, len(prows) - 1))
            s = row["setting"]
            steps = sorted(row["means"])
            ax.plot(
                steps, [row["means"][st] for st in steps], "o", color=color, label=row["weight"]
            )
            args = (s["weight"], s["taps"], 1.0, s["min_mse"], rule, rounding)
            pm = functools.partial(
                _predict_metric, data.metric, min_mse=s["min_mse"], wiener_power=s["wiener_power"]
            )
            exact = np.array([pm(_lms_predict(float(m), *args, "exact")) for m in grid])
            white = [pm(_lms_predict(float(m), *args, "white")) for m in grid]
            # solid where a run of n_samples reaches the steady state, dotted where it freezes first
            reached = np.array([steady_state_reached(s, float(m), s["n_samples"]) for m in grid])
            ax.plot(grid, np.where(reached, exact, np.nan), "-", color=color, linewidth=1.3)
            ax.plot(grid, np.where(reached, np.nan, exact), ":", color=color, linewidth=1.0)
            ax.plot(grid, white, "--", color=color, linewidth=0.9, alpha=0.8)
            mu = row["optimal_step"]
            if lo <= mu <= hi:
                ax.plot(
                    [mu],
                    [pm(_lms_predict(mu, *args, "white"))],
                    "v",
                    color=color,
                    markersize=7,
                    markeredgecolor="black",
                )
            if rounding == "nearest" and lo <= row["stall_step"] <= hi:
                ax.axvline(row["stall_step"], color=color, linestyle=":", linewidth=0.9)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no overlapping labels
        ax.set_xlabel("step size mu (per sample)")
        ax.set_ylabel(metric_label(data.metric))
        ax.set_title(f"rule={rule}, rounding={rounding}", fontsize=9)
        ax.grid(True, alpha=0.3)
        finite = [v for row in prows for v in row["means"].values() if math.isfinite(v)]
        if finite and data.metric.endswith("_db"):
            ax.set_ylim(min(finite) - 8, max(finite) + 8)
        ax.legend(fontsize=7, title="weight", title_fontsize=7, loc="best", framealpha=0.85)
    fig.suptitle(
        f"{data.spec['name']}: measured (points) vs predicted (solid: integrated model, "
        "dashed: white noise, v: optimal step)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


@register_overlay("final_metric")
def lms_final_overlay(ax, data: StudyData, panel: dict) -> None:
    """Predicted metric at the best measured step, per series, dashed in the series'
    colour (:func:`hwsim.study.plots.series_style`). Draws nothing, and adds no
    legend entry, where the metric cannot be predicted."""
    if not _is_lms_study(data) or panel.get("metric") != data.metric:
        return
    if data.metric not in PREDICTED_METRICS:
        return
    rows = lms_rows(data)
    if not rows:
        return
    pts = data.points(data.metric)
    drawn = False
    for series, by_bits in sorted(pts.items(), key=lambda kv: series_sort_key(kv[0])):
        sd = dict(series)
        xs, ys = [], []
        for bits, point in sorted((b, p) for b, p in by_bits.items() if b is not None):
            rec = point.records[0]
            s = _lms_setting(rec)
            if s is None or not all(sd.get(k, s[k]) == s[k] for k in ("rule", "rounding")):
                continue
            match = [
                r
                for r in rows
                if r["rule"] == s["rule"]
                and r["rounding"] == s["rounding"]
                and r["weight"] == str(s["weight"])
            ]
            if not match:
                continue
            m = match[0]["setting"]
            step = float(point.lr if point.lr is not None else rec.config["step"])
            y = _predict_metric(
                data.metric,
                _lms_predict(
                    step,
                    s["weight"],
                    s["taps"],
                    1.0,
                    m["min_mse"],
                    s["rule"],
                    s["rounding"],
                    "exact",
                ),
                m["min_mse"],
                m["wiener_power"],
            )
            # a cold-start run that freezes first (nearest rounding, small step, short
            # word) never reaches the predicted steady state: no point there
            if math.isfinite(y) and steady_state_reached(m, step, s["n_samples"]):
                xs.append(bits)
                ys.append(y)
        if xs:
            ax.plot(
                xs,
                ys,
                "x--",
                color=series_style(data, series)["color"],
                linewidth=1.0,
                alpha=0.9,
                label="theory, same step (where steady state is reached)" if not drawn else None,
            )
            drawn = True
