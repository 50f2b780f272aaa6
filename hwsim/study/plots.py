"""Plots of a finished (or running) sweep, from its results store.

Every plot is a function ``fn(data: StudyData) -> Figure | None`` registered
by name with :func:`register_plot`; ``None`` means "not applicable to this
study" (e.g. no learning-rate grid for the heatmap). :func:`make_plots` runs
them all and writes ``DIR/plots/<name>.png`` and ``.svg``. More plots plug in
without editing this module:

- a module that calls ``@register_plot("pareto")`` and is imported before
  plotting: list it in the spec (``[plot] plugins = ["my.module"]``), in the
  ``HWSIM_PLOT_PLUGINS`` environment variable (comma-separated), or as an entry
  point in the ``hwsim.plots`` group; ``hwsim.theory.plots`` and
  ``hwsim.cost.plots`` are imported when they exist;
- an overlay drawn onto a core plot's axes: ``@register_overlay("final_metric")``
  on ``fn(ax, data, panel)`` (e.g. a theory curve over the measured one).

>>> sorted(PLOTS)[:2]
['final_metric', 'heatmap']
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hwsim.formats import FloatingPoint, parse_format  # noqa: E402
from hwsim.study.cases import LABEL as CASE  # noqa: E402
from hwsim.study.store import ResultsStore, TrialRecord  # noqa: E402
from hwsim.study.trial import trial_hash  # noqa: E402

PlotFn = Callable[["StudyData"], Any]
OverlayFn = Callable[[Any, "StudyData", dict], None]

PLOTS: dict[str, PlotFn] = {}
OVERLAYS: dict[str, list[OverlayFn]] = {}
OPTIONAL_PLUGINS = ("hwsim.theory.plots", "hwsim.cost.plots", "hwsim.study.plots_telemetry")

# units for axis labels, by metric-name suffix or name
_UNITS = {
    "_db": "dB",
    "accuracy": "fraction correct",
    "stall_fraction": "fraction of weight updates lost",
    "saturation_fraction": "fraction of values saturated",
    "misadjustment": "ratio",
    "loss": "nats",
    "median_update_lsb": "LSB",
}


def register_plot(name: str) -> Callable[[PlotFn], PlotFn]:
    """Register ``fn(data) -> Figure | None`` as plot ``name`` (files ``name.png/.svg``)."""

    def deco(fn: PlotFn) -> PlotFn:
        PLOTS[name] = fn
        return fn

    return deco


def register_overlay(plot: str) -> Callable[[OverlayFn], OverlayFn]:
    """Register ``fn(ax, data, panel)`` to draw on every panel of core plot ``plot``.

    ``panel`` says what the axes show: ``{"metric": ..., "series": {...}}``.
    """

    def deco(fn: OverlayFn) -> OverlayFn:
        OVERLAYS.setdefault(plot, []).append(fn)
        return fn

    return deco


# full labels of metrics whose name alone says too little
LABELS = {
    "weight_error_db": "weight error |w - w_opt|² / |w_opt|² (dB)",
}


def metric_label(metric: str) -> str:
    """Axis label with units: ``excess_mse_db`` -> ``excess MSE (dB)``."""
    if metric in LABELS:
        return LABELS[metric]
    unit = None
    for key, value in _UNITS.items():
        if metric.endswith(key) or metric == key:
            unit = value
            break
    text = metric.removesuffix("_db").replace("_", " ").replace("mse", "MSE")
    return f"{text} ({unit})" if unit else text


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# -- the data -------------------------------------------------------------------------


@dataclass
class StudyData:
    """A study's stored results with the helpers plots need.

    spec: the stored spec (``StudySpec.to_json()``); plot: its ``[plot]`` table.
    records: every stored trial; ``ok``/``baseline`` filter them.
    """

    folder: Path
    spec: dict
    records: list[TrialRecord]
    plot: dict = field(init=False)
    expected: int | None = field(init=False, default=None)  # trials in the spec
    events: list = field(init=False, default_factory=list)  # worker deaths, as stored
    cases: dict = field(init=False, default_factory=dict)  # trial hash -> [[cases]] label

    def __post_init__(self) -> None:
        self.plot = dict(self.spec.get("plot", {}))

    @classmethod
    def load(cls, folder: str | Path, *, all_trials: bool = False) -> StudyData:
        """The results in ``folder``: the trials of the latest spec swept there
        (trials of an earlier, different spec stay stored but are left out unless
        ``all_trials``)."""
        with ResultsStore(folder, readonly=True) as store:
            spec = store.get_meta("spec")
            hashes = store.get_meta("trial_hashes")
            events = store.get_meta("events", [])
            count = store.get_meta("trial_count")
            cases = store.get_meta("trial_cases", {})
            records = store.records()
        if spec is None:
            raise ValueError(
                f"{str(folder)!r} has no stored spec; was it written by `hwsim sweep`?"
            )
        if hashes is not None and not all_trials:
            wanted = set(hashes)
            records = [r for r in records if r.hash in wanted]
        data = cls(Path(folder), spec, records)
        data.expected = len(hashes) if hashes is not None else count
        data.events = events
        data.cases = cases
        return data

    # what the axes are
    @property
    def metric(self) -> str:
        return self.plot["metric"]

    @property
    def goal(self) -> str:
        return self.plot.get("goal", "min")

    @property
    def bits_field(self) -> str | None:
        return self.plot.get("bits")

    @property
    def lr_field(self) -> str | None:
        lr = self.plot.get("lr")
        return lr if lr and len(self.spec["grid"].get(lr, [])) > 1 else None

    @property
    def series_fields(self) -> list[str]:
        """Grid fields that get one line each."""
        if self.plot.get("series"):
            return list(self.plot["series"])
        skip = {self.bits_field, self.plot.get("lr"), "seed"}
        case = [CASE] if len(self.spec.get("cases") or []) > 1 else []
        return case + [k for k, v in self.spec["grid"].items() if k not in skip and len(v) > 1]

    def case_of(self, config: dict) -> str | None:
        """The ``[[cases]]`` label of the trial with ``config`` (None: no cases)."""
        return self.cases.get(trial_hash(self.spec["task"], config)) if self.cases else None

    def bits_label(self) -> str:
        field_ = self.bits_field or "bits"
        if self.plot.get("bits_of", "wl") == "fl":
            return f"{field_} fractional bits FL (bits)"
        return f"{field_} word length (bits)"

    def bits_of(self, config: dict) -> float | None:
        """The bit-width of a trial (None for an unquantized trial): the format's
        ``bits`` (a fixed-point word length, or a float's sign + exponent +
        mantissa), or with ``bits_of = "fl"`` its fractional bits (a float's
        mantissa bits)."""
        value = config.get(self.bits_field)
        if value is None or isinstance(value, int):
            return value
        fmt = parse_format(value)
        if fmt is None:
            return None
        if self.plot.get("bits_of", "wl") == "fl":
            return fmt.man if isinstance(fmt, FloatingPoint) else fmt.fl
        return fmt.bits

    def format_kinds(self) -> list[str]:
        """The format families of the bits field's grid values, when floating-point
        formats are among them ("fixed point", "float e8", ...): formats of one
        width but different families (fx16.12, bf16, fp16) then get a line each.
        Empty for an all-fixed-point grid (its series are as they were)."""
        kinds = []
        for value in self.spec["grid"].get(self.bits_field, []) if self.bits_field else []:
            kind = _format_kind(value)
            if kind is not None and kind not in kinds:
                kinds.append(kind)
        return kinds if any(k != "fixed point" for k in kinds) else []

    def series_of(self, config: dict) -> tuple:
        series = tuple(
            (k, self.case_of(config) if k == CASE else config.get(k)) for k in self.series_fields
        )
        if self.format_kinds():
            series += ((f"{self.bits_field} kind", _format_kind(config.get(self.bits_field))),)
        return series

    def ok(self, role: str = "grid") -> list[TrialRecord]:
        return [r for r in self.records if r.status == "ok" and r.role == role]

    def baseline(self) -> list[TrialRecord]:
        return self.ok("baseline")

    def _better(self, a: float, b: float) -> bool:
        return a > b if self.goal == "max" else a < b

    def best_lr(self, records: list[TrialRecord], metric: str | None = None) -> Any:
        """Among ``records`` (one point of a plot), the learning rate with the best mean
        ``metric`` over seeds; a learning rate where any trial failed or diverged
        loses to one where all finished."""
        metric = metric or self.metric
        lr = self.plot.get("lr")
        if not lr:
            return None
        by_lr: dict[Any, list[TrialRecord]] = {}
        for r in records:
            by_lr.setdefault(r.config.get(lr), []).append(r)
        best, best_key = None, None
        for value, recs in by_lr.items():
            vals = [r.metrics.get(metric) for r in recs if r.status == "ok"]
            vals = [v for v in vals if v is not None and math.isfinite(v)]
            if not vals:
                continue
            clean = all(r.status == "ok" for r in recs)
            mean = statistics.fmean(vals)
            key = (clean, mean if self.goal == "max" else -mean)
            if best_key is None or key > best_key:
                best, best_key = value, key
        return best

    def points(self, metric: str | None = None, role: str = "grid", select: str | None = None):
        """Final-metric points: ``{series: {bits: Point}}`` at the best learning rate
        (chosen by ``select`` metric, default the study metric), over seeds."""
        metric = metric or self.metric
        groups: dict[tuple, dict[Any, list[TrialRecord]]] = {}
        for r in self.records:
            if r.role != role:
                continue
            groups.setdefault(self.series_of(r.config), {}).setdefault(
                self.bits_of(r.config), []
            ).append(r)
        out: dict[tuple, dict[Any, Point]] = {}
        for series, by_bits in groups.items():
            for bits, recs in by_bits.items():
                lr = self.best_lr(recs, select or self.metric)
                if self.plot.get("lr") and lr is None:
                    continue
                chosen = [r for r in recs if lr is None or r.config.get(self.plot["lr"]) == lr]
                vals = [r.metrics.get(metric) for r in chosen if r.status == "ok"]
                vals = [v for v in vals if v is not None and math.isfinite(v)]
                if vals:
                    out.setdefault(series, {})[bits] = Point(vals, lr, chosen)
        return out


@dataclass
class Point:
    """Values of one plot point over seeds, with the learning rate used."""

    values: list[float]
    lr: Any
    records: list[TrialRecord]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def spread(self) -> float:
        return statistics.pstdev(self.values) if len(self.values) > 1 else 0.0

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)


def series_label(series: tuple) -> str:
    return ", ".join(f"{k}={_fmt_value(v)}" for k, v in series) or "all trials"


_LINESTYLES = ["-", "--", "-.", ":"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X"]


def series_sort_key(series: tuple) -> tuple:
    """Sort key of series tuples (the legend order of the core plots)."""
    return tuple((k, (str(type(v)), v if v is not None else 0)) for k, v in series)


def series_style(data: StudyData, series: tuple) -> dict:
    """Matplotlib style of a series' line: colour by the first series field, line
    style and marker by the others (rounding x step reads as colour = rounding,
    dashes = step). Plug-ins drawing per-series overlays use it to match colours:
    ``ax.plot(x, y, color=series_style(data, series)["color"])``."""
    fields = data.series_fields
    grid = data.spec["grid"]
    kinds = data.format_kinds()
    values = dict(series)
    kind = _index(kinds, values.get(f"{data.bits_field} kind"))
    if not fields:  # fixed point vs float families (if any): colours
        return {"color": plt.cm.tab10.colors[kind % 10], "marker": _MARKERS[kind % 7],
                "linestyle": "-"}  # fmt: skip
    first = grid.get(fields[0], [values.get(fields[0])])
    color = plt.cm.tab10.colors[_index(first, values.get(fields[0])) % 10]
    rest = 0
    for f in fields[1:]:
        rest = rest * len(grid.get(f, [None])) + _index(grid.get(f, []), values.get(f))
    if kinds:  # fixed point vs float families: dashes and markers
        rest = rest * len(kinds) + kind
    return {"color": color, "linestyle": _LINESTYLES[rest % len(_LINESTYLES)],
            "marker": _MARKERS[rest % len(_MARKERS)], "markersize": 5}  # fmt: skip


def _format_kind(value) -> str | None:
    try:
        fmt = parse_format(value) if isinstance(value, str | dict) else value
    except ValueError:
        return None
    if isinstance(fmt, FloatingPoint):
        return f"float e{fmt.exp}"
    return "fixed point" if fmt is not None else None


def _index(values: list, value) -> int:
    try:
        return values.index(value)
    except ValueError:
        return 0


def _overlays(name: str, ax, data: StudyData, panel: dict) -> None:
    for fn in OVERLAYS.get(name, []):
        fn(ax, data, panel)


def _grid_axes(n: int, width: float = 4.6, height: float = 3.6):
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


# the core plots register themselves (after everything above is defined)
from hwsim.study.plots_core import (  # noqa: E402
    baselines,
    final_metric,
    heatmap,
    learning_curves,
    stall_fraction,
)
from hwsim.study.plots_run import check_metric, load_plugins, make_plots  # noqa: E402

__all__ = [
    "PLOTS",
    "OVERLAYS",
    "StudyData",
    "Point",
    "baselines",
    "check_metric",
    "final_metric",
    "heatmap",
    "learning_curves",
    "load_plugins",
    "make_plots",
    "metric_label",
    "register_overlay",
    "register_plot",
    "series_label",
    "series_sort_key",
    "series_style",
    "stall_fraction",
]
