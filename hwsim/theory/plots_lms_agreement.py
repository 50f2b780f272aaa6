"""Where the LMS rounding models hold: predicted vs measured per (weight, step) cell.

:func:`lms_agreement` lists every cell of an LMS study that the theory covers
(see :func:`hwsim.theory.plots_lms._lms_setting`) with the measured metric (mean
over seeds), both models' predictions, whether rounding noise dominates the
white model's excess MSE (its ``M sigma_q^2 / (2 mu)`` term larger than the
gradient-noise term), whether a cold-start run reaches the steady state, and
whether each model is within 25% of the measurement (on the linear excess MSE:
|predicted / measured - 1| <= 0.25). The ``lms_theory_agreement`` plot draws
predicted minus measured (dB) of one model per cell, so where a model holds and
where it does not is visible at a glance.
"""

from __future__ import annotations

import math
import statistics

import numpy as np

from hwsim.study.plots import StudyData, metric_label, plt, register_plot
from hwsim.theory.lms import rounding_noise_variance
from hwsim.theory.plots_lms import (
    PREDICTED_METRICS,
    _is_lms_study,
    _lms_predict,
    _lms_setting,
    _predict_metric,
    steady_state_reached,
)

MODELS = ("exact", "white")
TOLERANCE = 0.25  # relative, on the linear excess MSE


def _rounding_dominates(s: dict, step: float) -> bool:
    sq2 = rounding_noise_variance(s["weight"], s["rounding"])
    if s["rule"] == "lms":
        return sq2 / step > step * s["min_mse"]  # M sq2/(2 mu) > mu M sx2 J/2 (sx2 = 1)
    return sq2 / step > step  # sign-error: the k factor's two terms, sx2 = 1


def lms_agreement(data: StudyData) -> list[dict]:
    """One row per covered (rule, rounding, weight, step) cell, ``measured`` the
    mean over seeds of the study's metric, ``exact``/``white`` the predictions of
    the two models in the same metric, ``rounding_dominates``, ``reached`` and
    ``within_25`` (a dict per model)."""
    if not _is_lms_study(data) or data.metric not in PREDICTED_METRICS:
        return []
    cells: dict[tuple, list] = {}
    settings: dict[tuple, dict] = {}
    for r in data.ok():
        s = _lms_setting(r)
        if s is None or not math.isfinite(r.metrics.get(data.metric, math.nan)):
            continue
        key = (s["rule"], s["rounding"], str(s["weight"]), float(r.config["step"]))
        settings.setdefault(key, s)
        cells.setdefault(key, []).append(r)
    rows = []
    for key, recs in sorted(
        cells.items(), key=lambda kv: (kv[0][:2], settings[kv[0]]["weight"].wl, kv[0][3])
    ):
        s = dict(settings[key])
        s["min_mse"] = statistics.fmean(_lms_setting(r)["min_mse"] for r in recs)
        powers = [_lms_setting(r)["wiener_power"] for r in recs]
        wiener = statistics.fmean(powers) if None not in powers else None
        step = key[3]
        measured = statistics.fmean(r.metrics[data.metric] for r in recs)
        row = {"rule": key[0], "rounding": key[1], "weight": key[2], "step": step,
               "measured": measured, "rounding_dominates": _rounding_dominates(s, step),
               "reached": steady_state_reached(s, step, s["n_samples"]), "within_25": {}}  # fmt: skip
        for model in MODELS:
            excess = _lms_predict(
                step, s["weight"], s["taps"], 1.0, s["min_mse"], s["rule"], s["rounding"], model
            )
            row[model] = _predict_metric(data.metric, excess, s["min_mse"], wiener)
            row["within_25"][model] = _within(data.metric, row[model], measured, s["min_mse"])
        rows.append(row)
    return rows


def _within(metric: str, predicted: float, measured: float, min_mse: float) -> bool:
    if not (math.isfinite(predicted) and math.isfinite(measured)):
        return False
    if metric == "misadjustment":
        ratio = predicted / measured if measured else math.inf
    elif metric == "mse_db":  # compare the excess parts
        excess = [10 ** (v / 10) - min_mse for v in (predicted, measured)]
        ratio = excess[0] / excess[1] if excess[1] > 0 else math.inf
    else:  # a dB of something proportional to the excess MSE
        ratio = 10 ** ((predicted - measured) / 10)
    return abs(ratio - 1.0) <= TOLERANCE


def agreement_counts(rows: list[dict], model: str) -> dict[str, tuple[int, int]]:
    """(within 25%, cells) for: all cells, rounding-dominated cells, and those of
    them that reach the steady state."""
    groups = {
        "all": rows,
        "rounding dominates": [r for r in rows if r["rounding_dominates"]],
        "rounding dominates, steady state reached": [
            r for r in rows if r["rounding_dominates"] and r["reached"]
        ],
    }
    return {k: (sum(r["within_25"][model] for r in g), len(g)) for k, g in groups.items()}


@register_plot("lms_theory_agreement")
def lms_theory_agreement(data: StudyData, model: str = "exact"):
    """Predicted minus measured (dB) per (weight, step) cell, one panel per
    (rule, rounding), for ``model`` ("exact": the integrated rounding model that
    ``lms_theory`` draws solid; "white": Caraiscos & Liu 1984, dashed there).
    Cells within 25% are marked with a dot; x: the run freezes before the steady
    state; a black frame: rounding noise dominates."""
    rows = lms_agreement(data)
    if not rows:
        return None
    panels: dict[tuple, list[dict]] = {}
    for row in rows:
        panels.setdefault((row["rule"], row["rounding"]), []).append(row)
    ncols = min(len(panels), 2)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(5.8 * ncols, 4.2 * nrows), squeeze=False, layout="constrained"
    )
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    image = None
    for ax, ((rule, rounding), prows) in zip(axes.flat, sorted(panels.items()), strict=False):
        weights = sorted({r["weight"] for r in prows}, key=lambda w: int(w[2:].split(".")[0]))
        steps = sorted({r["step"] for r in prows})
        grid = np.full((len(weights), len(steps)), np.nan)
        for r in prows:
            i, j = weights.index(r["weight"]), steps.index(r["step"])
            grid[i, j] = r[model] - r["measured"]
            if r["within_25"][model]:
                ax.plot(j, i, "o", color="black", markersize=3)
            if not r["reached"]:
                ax.plot(j, i, "x", color="dimgray", markersize=7)
            if r["rounding_dominates"]:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, linewidth=1.2))
        image = ax.imshow(grid, cmap="coolwarm", vmin=-10, vmax=10, aspect="auto", origin="lower")
        ax.set_xticks(range(len(steps)), [f"{s:g}" for s in steps], fontsize=7)
        ax.set_yticks(range(len(weights)), weights, fontsize=7)
        ax.set_xlabel("step size mu")
        ax.set_ylabel("weight format")
        n, total = agreement_counts(prows, model)["rounding dominates, steady state reached"]
        ax.set_title(f"{rule}, {rounding}: {n}/{total} framed cells\nthat reach steady state within 25%",
                     fontsize=8)  # fmt: skip
    fig.colorbar(
        image, ax=list(axes.flat), label=f"predicted - measured, {metric_label(data.metric)}"
    )
    fig.suptitle(
        f"{data.spec['name']}: {model} model vs measurement\n(dot: within 25%, x: freezes "
        "before steady state, frame: rounding noise dominates)",
        fontsize=9,
    )
    return fig
