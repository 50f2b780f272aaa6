"""Theory and cost in study plots and reports (a plug-in of ``hwsim.study``).

Imported by ``hwsim plot`` / ``hwsim report`` (``hwsim.study.plots`` loads
``hwsim.theory.plots`` when it exists). It adds:

- ``lms_theory``: excess MSE vs step size of an LMS study, measured points
  and the predicted curves (integrated rounding model, white-noise model,
  optimal step) per weight format; and the predicted excess MSE at the best
  step drawn over the ``final_metric`` plot;
- the Sakr & Shanbhag accumulator prediction over the ``final_metric`` plot of
  a study sweeping an accumulator format (from the gradient format when the
  trials have one, else from gradients measured on the task's model);
- ``pareto``: the study metric vs the energy of one training step (Horowitz
  45 nm costs, :mod:`hwsim.cost`) for every study whose trials have a
  precision config, with the Pareto-optimal configs marked;
- report sections: the Pareto-optimal configs and theory vs measurement.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import matplotlib.ticker
import numpy as np

from hwsim import cost
from hwsim.formats import FixedPoint, parse_format
from hwsim.study.plots import (
    PLOTS,
    StudyData,
    metric_label,
    plt,
    register_overlay,
    register_plot,
    series_label,
    series_sort_key,
    series_style,
)
from hwsim.theory.accumulator import (
    accumulator_precision,
    accumulator_precision_from_statistics,
    measure_gradient_statistics,
)
from hwsim.theory.lms import lms_excess_mse, lms_optimal_step, lms_stall_step, lms_time_constant

GRAD_BITS = 8  # gradient word length assumed for a study whose gradients are float


def _task_name(data: StudyData) -> str:
    return data.spec["task"].rsplit(":", 1)[-1]


def _fmt(value) -> FixedPoint | None:
    try:
        return parse_format(value) if isinstance(value, str | type(None)) else value
    except ValueError:
        return None


def _db(x: float) -> float:
    return 10.0 * math.log10(x) if x > 0 and math.isfinite(x) else float("nan")


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


# -- accumulator ---------------------------------------------------------------------------


def _lr_min(config: dict) -> float | None:
    for key in ("lr_min", "lr"):
        if isinstance(config.get(key), int | float) and config[key] > 0:
            return float(config[key])
    return None


@functools.lru_cache(maxsize=32)
def _measured_statistics(dataset: str, model: str, hidden: int, seed: int, data_path):
    """Gradient statistics of the classify task's model at initialization, on a
    few training batches (needs the repository's ``models`` package)."""
    import torch

    from models.nets import build_classifier  # noqa: PLC0415 - optional, repository-level
    from models.tasks import load_split

    split = load_split(dataset, data_path, seed)
    net = build_classifier(
        model, tuple(split.x_train.shape[1:]), split.n_classes, hidden=hidden, seed=seed
    )
    x = torch.from_numpy(split.x_train[:512]).float()
    y = torch.from_numpy(split.y_train[:512]).long()
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, len(x), 64)]
    return measure_gradient_statistics(net, torch.nn.functional.cross_entropy, batches)


def accumulator_prediction(data: StudyData, config: dict) -> tuple[float, str] | None:
    """Predicted accumulator bits (in the study's bits unit) for one trial config,
    and how it was obtained; None when it cannot be predicted."""
    if data.bits_field != "accumulator":
        return None
    lr = _lr_min(config)
    weight = _fmt(config.get("weight"))
    acc = _fmt(config.get(data.bits_field))
    if lr is None:
        return None
    grad = _fmt(config.get("grad"))
    if isinstance(grad, FixedPoint) and isinstance(weight, FixedPoint):
        p = accumulator_precision(grad, lr, weight)
        how = f"rule, LSB_G from grad {grad}"
    else:
        try:
            stats = _measured_statistics(
                config.get("dataset", "digits"),
                config.get("model", "mlp"),
                int(config.get("hidden", 100)),
                int(config.get("seed", 0)),
                config.get("data_path"),
            )
        except Exception:  # noqa: BLE001 - no models package, or a task it cannot build
            return None
        rng = (2.0 ** (acc.int_bits - 1)) if isinstance(acc, FixedPoint) else None
        # Sakr & Shanbhag quantize the gradients too: an 8-bit per-tensor format
        # scaled to the measured largest |gradient| stands in for the float ones
        per_tensor = accumulator_precision_from_statistics(
            stats, lr, grad_bits=GRAD_BITS, weight_range=rng
        )
        if not per_tensor:
            return None
        p = max(per_tensor.values(), key=lambda q: q.fl)
        how = f"rule, LSB_G of a {GRAD_BITS}-bit gradient format fit to measured gradients"
    if data.plot.get("bits_of", "wl") == "fl":
        return float(p.fl), how
    if isinstance(acc, FixedPoint):  # word length at the study's integer bits
        return float(p.fl + acc.int_bits), how
    return float(p.wl), how


@register_overlay("final_metric")
def accumulator_overlay(ax, data: StudyData, panel: dict) -> None:
    """Vertical dashed line at the predicted accumulator precision per series."""
    if data.bits_field != "accumulator" or panel.get("metric") != data.metric:
        return
    pts = data.points(data.metric)
    first = True
    for series, by_bits in sorted(pts.items(), key=lambda kv: series_sort_key(kv[0])):
        recs = [r for p in by_bits.values() for r in p.records]
        if not recs:
            continue
        pred = accumulator_prediction(data, recs[0].config)
        if pred is None:
            continue
        ax.axvline(
            pred[0],
            color=series_style(data, series)["color"],
            linestyle="--",
            linewidth=1.1,
            label="predicted B_acc (Sakr & Shanbhag)" if first else None,
        )
        first = False


def measured_cliff(by_bits: dict, goal: str, tolerance: float = 0.02) -> float | None:
    """Smallest bits from which the metric stays within ``tolerance`` of the value
    at the widest precision (for accuracy: 2 points)."""
    bits = sorted(b for b in by_bits if b is not None)
    if len(bits) < 2:
        return None
    top = by_bits[bits[-1]].mean
    ok = (lambda v: v >= top - tolerance) if goal == "max" else (lambda v: v <= top + tolerance)
    for b in bits:
        if all(ok(by_bits[c].mean) for c in bits if c >= b):
            return b
    return None


# -- energy and the Pareto front --------------------------------------------------------------

_FORMAT_FIELDS = (
    "weight",
    "activation",
    "accumulator",
    "layer_accumulator",
    "grad",
    "state",
    "error",
    "data",
    "weight_accumulator",
    "product",
    "update",
)
EnergyFn = Callable[[dict], float | None]
ENERGY: dict[str, EnergyFn] = {}


def register_energy(task: str) -> Callable[[EnergyFn], EnergyFn]:
    """Register ``fn(config) -> pJ per training step`` for trials of task ``task``
    (the name after the colon in the spec's ``task``)."""

    def deco(fn: EnergyFn) -> EnergyFn:
        ENERGY[task] = fn
        return fn

    return deco


def has_precision_config(config: dict) -> bool:
    """True when any format field of the trial is fixed point."""
    return any(
        isinstance(_fmt(config.get(k)), FixedPoint)
        for k in _FORMAT_FIELDS
        if isinstance(config.get(k), str)
    )


@register_energy("lms")
def _lms_energy(config: dict) -> float | None:
    roles = {
        k: _fmt(config.get(k))
        for k in ("weight", "data", "accumulator", "error", "weight_accumulator")
    }
    if any(v is not None for v in roles.values()):
        try:  # the formats the task's datapath fills in for roles left at None
            from models.lms import resolve_formats

            f = resolve_formats(
                data=roles["data"],
                weight=roles["weight"],
                accumulator=roles["accumulator"],
                error=roles["error"],
                weight_accumulator=roles["weight_accumulator"],
            )
            roles = {k: getattr(f, k) for k in roles}
        except Exception:  # noqa: BLE001 - no models package: cost the None roles as fp32
            pass
    return cost.lms_step_energy(
        int(config.get("taps", 16)), rule=config.get("rule", "lms"), **roles
    )


_IN_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28)}


@functools.lru_cache(maxsize=64)
def _classifier(model: str, dataset: str, hidden: int):
    import torch

    shape = _IN_SHAPES.get(dataset)
    if shape is None:
        return None
    try:
        from models.nets import build_classifier  # the task's own network

        return build_classifier(model, shape, 10, hidden=hidden), shape
    except Exception:  # noqa: BLE001 - fall back to the MLP / linear models the task documents
        n_in = shape[0] * shape[1] * shape[2]
        if model == "mlp":
            net = torch.nn.Sequential(
                torch.nn.Flatten(),
                torch.nn.Linear(n_in, hidden),
                torch.nn.ReLU(),
                torch.nn.Linear(hidden, 10),
            )
        elif model in ("softmax", "svm"):
            net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(n_in, 10))
        else:
            return None
        return net, shape


@register_energy("classify")
def _classify_energy(config: dict) -> float | None:
    built = _classifier(
        config.get("model", "mlp"), config.get("dataset", "digits"), int(config.get("hidden", 100))
    )
    if built is None:
        return None
    net, shape = built
    precision = SimpleNamespace(
        weight=_fmt(config.get("weight")),
        activation=_fmt(config.get("activation")),
        accumulator=_fmt(config.get("layer_accumulator")),
        grad_activation=None,
        grad_activation_accumulator=None,
        grad_weight_accumulator=None,
    )
    e = cost.training_step_energy(
        net,
        precision,
        input_shape=shape,
        batch_size=int(config.get("batch_size", 32)),
        optimizer=config.get("optimizer", "sgd"),
        momentum=float(config.get("momentum", 0.0)),
        weight_accumulator=_fmt(config.get("accumulator")),
        grad=_fmt(config.get("grad")),
        state=_fmt(config.get("state")),
    )
    return e.total


def trial_energy(data: StudyData, config: dict) -> float | None:
    fn = ENERGY.get(_task_name(data))
    if fn is None:
        return None
    try:
        return fn(config)
    except (ValueError, TypeError):
        return None


def pareto_points(data: StudyData) -> list[dict]:
    """Every config (seeds averaged) with its energy and metric; ``front`` marks the
    Pareto-optimal ones (no other config is both cheaper and at least as good)."""
    metric = data.metric
    groups: dict[str, list] = {}
    for r in data.records:
        if r.status != "ok" or metric not in r.metrics or not math.isfinite(r.metrics[metric]):
            continue
        key = repr(sorted((k, v) for k, v in r.config.items() if k != "seed"))
        groups.setdefault(key, []).append(r)
    out = []
    for recs in groups.values():
        config = recs[0].config
        if not has_precision_config(config) and recs[0].role != "baseline":
            continue
        energy = trial_energy(data, config)
        if energy is None:
            continue
        out.append(
            {
                "config": config,
                "energy": energy,
                "role": recs[0].role,
                "value": statistics.fmean(r.metrics[metric] for r in recs),
                "seeds": len(recs),
            }
        )
    if sum(1 for p in out if p["role"] == "grid") < 2:
        return []
    better = (lambda a, b: a > b) if data.goal == "max" else (lambda a, b: a < b)
    for p in out:
        p["front"] = not any(
            (q["energy"] <= p["energy"] and not better(p["value"], q["value"]))
            and (q["energy"] < p["energy"] or better(q["value"], p["value"]))
            for q in out
            if q is not p
        )
    return sorted(out, key=lambda p: p["energy"])


def _varying(data: StudyData) -> list[str]:
    return [k for k, v in data.spec.get("grid", {}).items() if len(v) > 1 and k != "seed"]


def _short(config: dict, keys: list[str]) -> str:
    return ", ".join(f"{k}={'float' if config.get(k) is None else config.get(k)}" for k in keys)


@register_plot("pareto")
def pareto(data: StudyData):
    """Final metric vs energy of one training step (Horowitz 45 nm table; fp32 for
    float tensors), one point per config (mean over seeds); the Pareto-optimal
    configs are circled and joined."""
    points = pareto_points(data)
    if not points:
        return None
    keys = _varying(data)
    fig, ax = plt.subplots(figsize=(7.4, 4.8))
    grid = [p for p in points if p["role"] == "grid"]
    ax.scatter(
        [p["energy"] for p in grid],
        [p["value"] for p in grid],
        s=16,
        color="tab:blue",
        alpha=0.55,
        label="configs",
    )
    front = [p for p in points if p["front"]]
    ax.plot(
        [p["energy"] for p in front],
        [p["value"] for p in front],
        "o-",
        color="tab:red",
        markerfacecolor="none",
        markersize=9,
        label="Pareto-optimal",
    )
    for p in front[:12]:
        ax.annotate(
            _short(p["config"], keys),
            (p["energy"], p["value"]),
            fontsize=6,
            xytext=(4, 4),
            textcoords="offset points",
        )
    base = [p for p in points if p["role"] == "baseline"]
    if base:
        ax.scatter(
            [p["energy"] for p in base],
            [p["value"] for p in base],
            marker="s",
            color="black",
            label="float baseline",
        )
    energies = [p["energy"] for p in points]
    if max(energies) > 20 * min(energies):
        ax.set_xscale("log")
    unit = "sample" if _task_name(data) == "lms" else "training step"
    ax.set_xlabel(f"energy per {unit} (pJ, 45 nm)")
    ax.set_ylabel(metric_label(data.metric))
    ax.set_title(f"{data.spec['name']}: {data.metric} vs energy", fontsize=10)
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


# -- report sections ---------------------------------------------------------------------------


def _num(v: Any, digits: int = 4) -> str:
    if v is None:
        return "float"
    if isinstance(v, float):
        return "—" if not math.isfinite(v) else f"{v:.{digits}g}"
    return str(v)


def pareto_section(data: StudyData) -> list[str]:
    """Markdown: the Pareto-optimal configs (energy vs the study metric)."""
    points = pareto_points(data)
    if not points:
        return []
    keys = _varying(data)
    unit = "sample" if _task_name(data) == "lms" else "step"
    lines = [
        "",
        "## Accuracy vs energy: Pareto-optimal configs",
        "",
        f"Energy of one training {unit} from the Horowitz 45 nm table (`hwsim.cost`; float "
        f"tensors costed as fp32). No other config is both cheaper and at least as good in "
        f"`{data.metric}` (mean over seeds).",
        "",
        "| " + " | ".join(keys + [f"energy (pJ/{unit})", data.metric, "seeds"]) + " |",
        "|" + "---|" * (len(keys) + 3),
    ]
    for p in points:
        if p["front"]:
            lines.append(
                "| "
                + " | ".join(
                    [_num(p["config"].get(k)) for k in keys]
                    + [_num(p["energy"]), _num(p["value"]), str(p["seeds"])]
                )
                + " |"
            )
    base = [p for p in points if p["role"] == "baseline"]
    if base:
        b = min(base, key=lambda p: p["energy"])
        lines += ["", f"Float baseline: {_num(b['value'])} at {_num(b['energy'])} pJ/{unit}."]
    return lines


def theory_section(data: StudyData) -> list[str]:
    """Markdown: predictions next to measurements (LMS steps, accumulator cliffs)."""
    lines: list[str] = []
    if _is_lms_study(data):
        rows = lms_rows(data)
        if rows:
            lines += [
                "",
                "## Theory vs measurement: finite-precision LMS",
                "",
                f"`{data.metric}` at the best measured step (mean over seeds) vs the "
                "prediction at that step: *integrated* = rounding integrated over the update "
                "distribution (holds through the stall region), *white* = white rounding noise "
                "(Caraiscos & Liu 1984; valid above the stall step). mu_opt is the white "
                "model's optimal step, mu_stall the nearest-rounding stall threshold; *steady state "
                "reached*: five time constants fit before the measurement window "
                "(`hwsim.theory.lms_time_constant`).",
                "",
                "| rule | rounding | weight | best step | measured | integrated | white | mu_opt | mu_stall | steady state reached |",
                "|---|---|---|---|---|---|---|---|---|---|",
            ]
            for r in rows:
                lines.append(
                    f"| {r['rule']} | {r['rounding']} | {r['weight']} | {r['best_step']:g} | "
                    f"{_num(r['measured'])} | {_num(r['exact'])} | {_num(r['white'])} | "
                    f"{r['optimal_step']:.3g} | {r['stall_step']:.3g} | "
                    f"{'yes' if r['reached'] else 'no (frozen early)'} |"
                )
    if data.bits_field == "accumulator":
        pts = data.points(data.metric)
        rows = []
        for series, by_bits in sorted(pts.items(), key=lambda kv: str(kv[0])):
            recs = [r for p in by_bits.values() for r in p.records]
            pred = accumulator_prediction(data, recs[0].config) if recs else None
            cliff = measured_cliff(by_bits, data.goal)
            rows.append((series_label(series), pred, cliff))
        if rows:
            lines += [
                "",
                "## Theory vs measurement: weight-accumulator precision",
                "",
                f"Predicted {data.bits_label()} (Sakr & Shanbhag 2019: LSB_acc = "
                "2^floor(log2(lr_min LSB_G))) vs the measured cliff: the fewest bits from "
                f"which `{data.metric}` stays within 0.02 of the widest accumulator's.",
                "",
                "| series | predicted | how | measured cliff | difference |",
                "|---|---|---|---|---|",
            ]
            for label, pred, cliff in rows:
                p = "—" if pred is None else f"{pred[0]:g}"
                how = (
                    "cannot predict (no grad format, no models package)"
                    if pred is None
                    else pred[1]
                )
                c = "—" if cliff is None else f"{cliff:g}"
                d = "—" if pred is None or cliff is None else f"{cliff - pred[0]:+g}"
                lines.append(f"| {label} | {p} | {how} | {c} | {d} |")
    return lines


def _register_sections() -> None:
    try:
        from hwsim.study.report import register_section
    except ImportError:  # an engine without report sections
        return
    register_section(pareto_section)
    register_section(theory_section)


_register_sections()

__all__ = [
    "PLOTS",
    "accumulator_prediction",
    "has_precision_config",
    "lms_rows",
    "measured_cliff",
    "pareto_points",
    "pareto_section",
    "steady_state_reached",
    "register_energy",
    "theory_section",
    "trial_energy",
]
