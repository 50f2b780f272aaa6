"""The core plots every study gets: final metric and stall fraction vs bits,
learning curves and the learning-rate x bits heatmap (registered on import of
:mod:`hwsim.study.plots`)."""

from __future__ import annotations

import math
import statistics
from typing import Any

import matplotlib

from hwsim.study.plots import (
    CASE,
    StudyData,
    _grid_axes,
    _overlays,
    metric_label,
    plt,
    register_plot,
    series_label,
    series_sort_key,
    series_style,
)
from hwsim.study.store import TrialRecord

# -- the core plots ---------------------------------------------------------------------


def _metric_vs_bits(data: StudyData, metric: str, name: str, title: str):
    if not data.bits_field:
        return None
    pts = data.points(metric)
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(7.4, 4.8))
    for series, by_bits in sorted(pts.items(), key=lambda kv: series_sort_key(kv[0])):
        xs = sorted(b for b in by_bits if b is not None)
        if not xs:
            continue
        mean = [by_bits[b].mean for b in xs]
        low = [by_bits[b].low for b in xs]
        high = [by_bits[b].high for b in xs]
        style = series_style(data, series)
        nseeds = max(len(by_bits[b].values) for b in xs)
        ax.plot(xs, mean, label=series_label(series), **style)
        if nseeds > 1:
            ax.fill_between(xs, low, high, color=style["color"], alpha=0.15, linewidth=0)
        if None in by_bits:  # "float" was one of the grid's values: a per-series reference
            ax.axhline(by_bits[None].mean, color=style["color"], linestyle=":", linewidth=1.2,
                       label=f"{series_label(series)}, float")  # fmt: skip
    for label, style, ref in baselines(data, metric):
        ax.axhline(ref, linewidth=1.2, label=f"{label} ({ref:.4g})", **style)
    ax.set_xlabel(data.bits_label())
    ax.set_ylabel(metric_label(metric))
    lr_note = (
        f"; best {data.lr_field} per point"
        if data.lr_field and data.lr_field not in data.series_fields
        else ""
    )
    ax.set_title(f"{title}\n(mean over seeds, band = min..max{lr_note})", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    _overlays(name, ax, data, {"metric": metric, "series": None})
    _legend(fig, ax)
    return fig


def _legend(fig, ax) -> None:
    """Inside the axes when short; beside them (never over the data) when long."""
    handles, labels = ax.get_legend_handles_labels()
    if len(labels) <= 5:
        ax.legend(fontsize=8, loc="best", framealpha=0.85)
        fig.tight_layout()
        return
    width, height = fig.get_size_inches()
    fig.set_size_inches(width + 3.2, height)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.tight_layout()


def baselines(data: StudyData, metric: str) -> list[tuple[str, dict, float]]:
    """Float reference lines ``(label, matplotlib style, value)``: one per value of
    the series fields the baseline keeps (e.g. one per step size when step is a
    series), else one in all (black, dashed)."""
    overridden = set(data.spec.get("baseline") or {})
    kept = [f for f in data.series_fields if f not in overridden]
    groups: dict[tuple, list[float]] = {}
    for series, by_bits in data.points(metric, role="baseline").items():
        key = tuple((k, v) for k, v in series if k in kept)
        groups.setdefault(key, []).extend(v for p in by_bits.values() for v in p.values)
    out = []
    for key, values in sorted(groups.items(), key=lambda kv: series_sort_key(kv[0])):
        if not values:
            continue
        label = "float baseline" + (f", {series_label(key)}" if key else "")
        if len(groups) == 1:
            style = {"color": "black", "linestyle": "--"}
        else:
            full = tuple((f, dict(key).get(f)) for f in data.series_fields)
            measured = series_style(data, full)
            if data.series_fields[0] in kept:  # the colour of the lines it belongs to
                style = {"color": measured["color"], "linestyle": (0, (1, 1.5)), "alpha": 0.9}
            else:  # black, with the dash pattern of the lines it belongs to
                style = {"color": "black", "linestyle": measured["linestyle"], "alpha": 0.75}
        out.append((label, style, statistics.fmean(values)))
    return out


@register_plot("final_metric")
def final_metric(data: StudyData):
    """Final metric vs bit-width: one line per series, mean and min..max band over
    seeds, float baseline as a dashed reference line."""
    return _metric_vs_bits(
        data, data.metric, "final_metric", f"{data.spec['name']}: final {metric_label(data.metric)}"
    )


@register_plot("stall_fraction")
def stall_fraction(data: StudyData):
    """Fraction of weight updates lost to rounding vs bit-width (at the learning
    rate the final-metric plot chose)."""
    if not any("stall_fraction" in r.metrics for r in data.ok()):
        return None
    return _metric_vs_bits(
        data, "stall_fraction", "stall_fraction", f"{data.spec['name']}: stalled updates"
    )


@register_plot("learning_curves")
def learning_curves(data: StudyData):
    """Learning curves, one panel per series and one line per bit-width (best
    learning rate per bit-width, mean over seeds)."""
    curve = data.plot.get("curve_metric") or data.metric
    if not any(curve in row for r in data.ok() for row in r.history):
        return None
    pts = data.points()
    base = data.points(role="baseline")
    kept = set(data.series_fields) - set(data.spec.get("baseline") or {})
    if not pts:
        return None
    panels = sorted(pts.items(), key=lambda kv: series_sort_key(kv[0]))
    unit = "FL {}" if data.plot.get("bits_of") == "fl" else "{} bits"
    fig, axes = _grid_axes(len(panels))
    all_bits = sorted({b for _, by_bits in panels for b in by_bits if b is not None})
    cmap = plt.cm.viridis
    for ax, (series, by_bits) in zip(axes, panels, strict=True):
        for bits in sorted(by_bits, key=lambda b: (b is None, b)):
            steps, mean = _mean_curve(by_bits[bits].records, curve)
            if not steps:
                continue
            k = all_bits.index(bits) if bits in all_bits else 0
            color = cmap(k / max(1, len(all_bits) - 1))
            label = "float" if bits is None else unit.format(bits)
            ax.plot(steps, mean, color=color, label=label, linewidth=1.4)
        # the float runs of this panel: same values of the fields the baseline keeps
        wanted = {k: v for k, v in series if k in kept}
        base_recs = [
            r
            for base_series, by_bits_b in base.items()
            if all(dict(base_series).get(k) == v for k, v in wanted.items())
            for p in by_bits_b.values()
            for r in p.records
        ]
        if base_recs:
            steps, mean = _mean_curve(base_recs, curve)
            ax.plot(steps, mean, "k--", linewidth=1.2, label="float")
        ax.set_title(series_label(series), fontsize=9)
        ax.set_xlabel(data.plot.get("step_label") or "training step (as logged)")
        ax.set_ylabel(metric_label(curve))
        ax.grid(True, alpha=0.3)
        _overlays("learning_curves", ax, data, {"metric": curve, "series": dict(series)})
        ax.legend(fontsize=7, ncol=2, loc="best", framealpha=0.85)
    fig.suptitle(f"{data.spec['name']}: learning curves by {data.bits_label()}", fontsize=10)
    fig.tight_layout()
    return fig


def _mean_curve(records: list[TrialRecord], key: str) -> tuple[list, list]:
    by_step: dict[Any, list[float]] = {}
    for r in records:
        if r.status != "ok":
            continue
        for row in r.history:
            v = row.get(key)
            if v is not None and math.isfinite(v):
                by_step.setdefault(row.get("step"), []).append(v)
    steps = sorted(s for s in by_step if s is not None)
    return steps, [statistics.fmean(by_step[s]) for s in steps]


@register_plot("heatmap")
def heatmap(data: StudyData):
    """Final metric over bit-width x learning rate, one panel per series (mean over seeds)."""
    lr = data.lr_field
    if not lr or not data.bits_field:
        return None
    lrs = sorted(data.spec["grid"][lr])
    cells: dict[tuple, dict[tuple, list[float]]] = {}
    for r in data.ok():
        bits = data.bits_of(r.config)
        value = r.metrics.get(data.metric)
        if bits is None or value is None or not math.isfinite(value):
            continue
        # the lr field is the x axis: a panel per series *without* it, or each
        # panel would get a single filled column
        panel = tuple((k, v) for k, v in data.series_of(r.config) if k != lr)
        cells.setdefault(panel, {}).setdefault((bits, r.config.get(lr)), []).append(value)
    if not cells:
        return None
    bits_all = sorted({b for c in cells.values() for b, _ in c})
    panels = sorted(cells.items(), key=lambda kv: series_sort_key(kv[0]))
    fig, axes = _grid_axes(len(panels), width=5.0, height=0.45 * len(bits_all) + 2.2)
    import numpy as np

    values = [statistics.fmean(v) for c in cells.values() for v in c.values()]
    vmin, vmax = min(values), max(values)
    cmap = plt.cm.viridis if data.goal == "max" else plt.cm.viridis_r
    # a positive metric spanning decades (a loss, an MSE) reads better on a log scale
    norm = (
        matplotlib.colors.LogNorm(vmin, vmax)
        if vmin > 0 and vmax / vmin > 50
        else matplotlib.colors.Normalize(vmin, vmax)
    )
    for ax, (series, by_cell) in zip(axes, panels, strict=True):
        grid = np.full((len(bits_all), len(lrs)), np.nan)
        for (bits, lr_value), vals in by_cell.items():
            grid[bits_all.index(bits), lrs.index(lr_value)] = statistics.fmean(vals)
        image = ax.imshow(grid, aspect="auto", origin="lower", cmap=cmap, norm=norm)
        for i in range(len(bits_all)):
            for j in range(len(lrs)):
                if not np.isnan(grid[i, j]):
                    shade = cmap(norm(grid[i, j]))
                    dark = 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2] < 0.5
                    ax.text(
                        j,
                        i,
                        f"{grid[i, j]:.3g}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if dark else "black",
                    )
        ax.set_xticks(range(len(lrs)), [f"{v:g}" for v in lrs], rotation=45, fontsize=8)
        ax.set_yticks(range(len(bits_all)), [str(b) for b in bits_all], fontsize=8)
        ax.set_xlabel(f"{lr} (learning rate / step size)")
        ax.set_ylabel(data.bits_label())
        ax.set_title(series_label(series), fontsize=9)
        fig.colorbar(image, ax=ax, label=metric_label(data.metric))
    fig.suptitle(
        f"{data.spec['name']}: final {metric_label(data.metric)}, mean over seeds "
        "(blank = failed or diverged)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


@register_plot("cases")
def final_metric_by_case(data: StudyData):
    """Final metric per ``[[cases]]`` case (bars in spec order, mean over seeds,
    whiskers min..max), one bar colour per combination of the other series fields;
    drawn when the spec has cases."""
    labels = [c.get(CASE) for c in data.spec.get("cases") or []]
    if not labels or not data.cases:
        return None
    others = [f for f in data.series_fields if f != CASE]
    groups: dict[tuple, dict[str, list[float]]] = {}
    for r in data.ok():
        case = data.case_of(r.config)
        value = r.metrics.get(data.metric)
        if case is None or value is None or not math.isfinite(value):
            continue
        key = tuple((f, r.config.get(f)) for f in others)
        groups.setdefault(key, {}).setdefault(case, []).append(value)
    if not groups:
        return None
    keys = sorted(groups, key=series_sort_key)
    width = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(min(13.0, max(7.4, 2.0 + 0.3 * len(labels) * len(keys))), 4.8))
    for j, key in enumerate(keys):
        xs, means, err = [], [], [[], []]
        for i, label in enumerate(labels):
            vals = groups[key].get(label)
            if vals:
                m = statistics.fmean(vals)
                xs.append(i - 0.4 + width * (j + 0.5))
                means.append(m)
                err[0].append(m - min(vals))
                err[1].append(max(vals) - m)
        ax.bar(xs, means, width, yerr=err, capsize=2, label=series_label(key))
    for label, style, ref in baselines(data, data.metric):
        ax.axhline(ref, linewidth=1.2, label=f"{label} ({ref:.4g})", **style)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(metric_label(data.metric))
    ax.set_title(f"{data.spec['name']}: final {metric_label(data.metric)} per case\n"
                 "(mean over seeds, whiskers = min..max)", fontsize=10)  # fmt: skip
    _legend(fig, ax)
    return fig
