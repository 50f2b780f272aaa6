"""Drawing a study's plots: plug-ins (the task and its adapters included), the
metric check, and :func:`make_plots` (re-exported by :mod:`hwsim.study.plots`)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from hwsim.study.plots import OPTIONAL_PLUGINS, PLOTS, StudyData, plt

# -- running them ------------------------------------------------------------------------


def load_plugins(data: StudyData | None = None, tasks_from: tuple[str, ...] = ()) -> list[str]:
    """Import the study's task (it registers the adapters theory and cost plots use),
    the plot plug-ins (spec, ``HWSIM_PLOT_PLUGINS``, ``hwsim.plots`` entry points) and
    the optional hwsim modules. Returns the modules imported.

    Modules come from installed packages or the ``tasks_from`` folders only; one
    that cannot be imported is an error (ValueError), never skipped.
    """
    from hwsim.study.sources import import_module, resolve_task

    loaded = []
    if data is not None and data.spec.get("task"):
        task = resolve_task(data.spec["task"], tuple(tasks_from))
        loaded.append(task.fn.__module__)
    for name in OPTIONAL_PLUGINS:
        try:
            importlib.import_module(name)
            loaded.append(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue  # an optional module that does not exist (yet)
            raise
    names = list(data.plot.get("plugins") or []) if data is not None else []
    names += [n.strip() for n in os.environ.get("HWSIM_PLOT_PLUGINS", "").split(",") if n.strip()]
    for name in names:
        import_module(name, tuple(tasks_from), what="plot plug-in")
        loaded.append(name)
    from importlib.metadata import entry_points

    for ep in entry_points(group="hwsim.plots"):
        ep.load()
        loaded.append(ep.value)
    return loaded


def check_metric(data: StudyData) -> None:
    """ValueError when finished trials exist but none reports the study's metric."""
    ok = data.ok() + data.baseline()
    if ok and not any(data.metric in r.metrics for r in ok):
        have = sorted({k for r in ok for k in r.metrics})
        raise ValueError(
            f"plot.metric {data.metric!r} is not a metric of these results; "
            f"the trials report: {', '.join(have)}"
        )


def make_plots(
    folder: str | Path,
    names: list[str] | None = None,
    formats=("png", "svg"),
    *,
    tasks_from: tuple[str, ...] = (),
    out: str | Path | None = None,
    trial: str | None = None,
) -> list[Path]:
    """Draw every applicable registered plot of the study in ``folder``; write
    ``out/<name>.<fmt>`` (default ``folder/plots``; the store is only read).
    ``trial`` (a hash prefix or ``key=value,...``) picks the trial of the
    single-trial plots (``where_the_bits_go``), as ``[plot] trial`` does.
    Returns the files written."""
    data = StudyData.load(folder)
    if trial is not None:
        data.plot["trial"] = trial
    load_plugins(data, tasks_from)
    check_metric(data)
    out_dir = Path(out) if out is not None else Path(folder) / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names or list(PLOTS):
        if name not in PLOTS:
            raise ValueError(f"unknown plot {name!r}; registered plots: {sorted(PLOTS)}")
        fig = PLOTS[name](data)
        if fig is None:
            continue
        for fmt in formats:
            path = out_dir / f"{name}.{fmt}"
            fig.savefig(path, dpi=130)
            written.append(path)
        plt.close(fig)
    return written
