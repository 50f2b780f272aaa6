"""The ``[plot]`` table of a study spec: validated into a :class:`PlotSpec`."""

from __future__ import annotations

from typing import Any

from hwsim.study.cases import LABEL
from hwsim.study.trial import PlotSpec
from hwsim.study.values import _describe, _is_format_type
from hwsim.study.values import unknown as _unknown

PLOT_KEYS = {
    "metric",
    "bits",
    "bits_of",
    "lr",
    "goal",
    "series",
    "plugins",
    "curve_metric",
    "step_label",
}


def parse_plot(
    raw: dict, grid_raw: dict, fixed_raw: dict, types_: dict[str, Any], task, cases,
    problems: list[str],
) -> PlotSpec:  # fmt: skip
    """The ``[plot]`` table ``raw`` as a PlotSpec; problems appended to ``problems``."""
    plot_raw = dict(raw)
    for key in plot_raw:
        if key not in PLOT_KEYS:
            problems.append(_unknown("plot key", key, PLOT_KEYS))
    metric = plot_raw.get("metric")
    if not isinstance(metric, str) or not metric:
        problems.append(f"plot.metric must name the task metric to plot, got {metric!r}")
        metric = ""
    elif task.metrics is not None and metric not in task.metrics:
        problems.append(_unknown("plot.metric", metric, task.metrics) + f" (task {task.name!r})")
    bits = plot_raw.get("bits")
    if bits is not None:
        if bits not in grid_raw:
            problems.append(
                f"plot.bits {bits!r} must be a grid field; grid fields: {sorted(grid_raw)}"
            )
        elif bits in types_ and not (_is_format_type(types_[bits]) or types_[bits] is int):
            problems.append(
                f"plot.bits {bits!r} must be a format or integer field, "
                f"but it is {_describe(types_[bits])}"
            )
    lr = plot_raw.get("lr")
    if lr is not None and lr not in grid_raw and lr not in fixed_raw and lr not in types_:
        problems.append(
            f"plot.lr {lr!r} must be a parameter of the task; allowed: {sorted(types_)}"
        )
    bits_of = plot_raw.get("bits_of", "wl")
    if bits_of not in ("wl", "fl"):
        problems.append(f"plot.bits_of {bits_of!r} is not allowed; allowed: 'wl', 'fl'")
    default_goal = "max" if "acc" in metric.lower() else "min"
    goal = plot_raw.get("goal", default_goal)
    if goal not in ("min", "max"):
        problems.append(f"plot.goal {goal!r} is not allowed; allowed: 'min', 'max'")
    series = plot_raw.get("series")
    if series is not None:
        fields = sorted(grid_raw) + ([LABEL] if cases else [])
        if not isinstance(series, list) or any(s not in fields for s in series):
            problems.append(f"plot.series must be a list of grid fields {fields}, got {series!r}")
        series = tuple(series)
    plugins = plot_raw.get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        problems.append(f"plot.plugins must be a list of module names, got {plugins!r}")
        plugins = []
    curve_metric = plot_raw.get("curve_metric")
    step_label = plot_raw.get("step_label")
    for key, value in (("curve_metric", curve_metric), ("step_label", step_label)):
        if value is not None and not isinstance(value, str):
            problems.append(f"plot.{key} must be a string, got {value!r}")
    return PlotSpec(
        metric, bits, bits_of, lr, goal, series, curve_metric, tuple(plugins), step_label
    )
