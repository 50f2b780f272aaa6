"""The Sakr & Shanbhag accumulator prediction over a study sweeping an accumulator format."""

from __future__ import annotations

from hwsim.formats import FixedPoint
from hwsim.study.plots import (
    StudyData,
    register_overlay,
    series_sort_key,
    series_style,
)
from hwsim.study.task import get_adapter
from hwsim.theory.accumulator import (
    accumulator_precision,
    accumulator_precision_from_statistics,
)
from hwsim.theory.plot_common import GRAD_BITS, _fmt, _task_name

# -- accumulator ---------------------------------------------------------------------------


def _lr_min(config: dict) -> float | None:
    for key in ("lr_min", "lr"):
        if isinstance(config.get(key), int | float) and config[key] > 0:
            return float(config[key])
    return None


def sweeps_weight_accumulator(data: StudyData, config: dict | None = None) -> bool:
    """True when the study's bits axis is the optimizer's weight accumulator:
    ``opt_accumulator`` (the classify task's name), or ``accumulator`` in a task
    that has no ``opt_accumulator`` (where ``accumulator`` is the weight
    accumulator; in classify it is the layers' MAC accumulator)."""
    if data.bits_field == "opt_accumulator":
        return True
    if data.bits_field != "accumulator":
        return False
    configs = [config] if config is not None else [r.config for r in data.records[:1]]
    return not any("opt_accumulator" in c for c in configs)


def accumulator_prediction(data: StudyData, config: dict) -> tuple[float, str] | None:
    """Predicted accumulator bits (in the study's bits unit) for one trial config,
    and how it was obtained; None when it cannot be predicted."""
    if not sweeps_weight_accumulator(data, config):
        return None
    lr = _lr_min(config)
    weight = _fmt(config.get("weight"))
    acc = _fmt(config.get(data.bits_field))
    if lr is None:
        return None
    grad = _fmt(config.get("opt_grad" if data.bits_field == "opt_accumulator" else "grad"))
    if isinstance(grad, FixedPoint) and isinstance(weight, FixedPoint):
        p = accumulator_precision(grad, lr, weight)
        how = f"rule, LSB_G from grad {grad}"
    else:
        # the task measures them on its own model (hwsim never imports the task's package);
        # a task without that adapter is an error, not a silent "cannot predict"
        stats = get_adapter(
            _task_name(data),
            "gradient_statistics",
            "the accumulator prediction of a study with float gradients",
        )(config)
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
    if not sweeps_weight_accumulator(data) or panel.get("metric") != data.metric:
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
