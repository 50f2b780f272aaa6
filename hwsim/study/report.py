"""Markdown report of a study folder: what ran, the plots, and summary tables.

``write_report(DIR)`` draws the plots (``hwsim.study.plots``) and writes
``DIR/report.md`` with: the study and its spec, trial counts by status and
timings, the final metric per series and bit-width (mean ± std over seeds at
the best learning rate), the float baseline, and the failed/diverged trials
with their errors.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from hwsim.study.plots import (
    PLOTS,
    StudyData,
    baselines,
    load_plugins,
    make_plots,
    metric_label,
    series_label,
)

SECTIONS: list = []
"""Plug-in report sections: ``fn(data: StudyData) -> list[str]`` (Markdown lines),
added after the summary tables (e.g. ``hwsim.theory.plots``: Pareto table,
theory vs measurement)."""


def register_section(fn):
    """Add ``fn(data) -> list[str]`` to every report (once)."""
    if fn not in SECTIONS:
        SECTIONS.append(fn)
    return fn


def _cell(value: float | None, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.{digits}g}"


def summary_table(data: StudyData, metric: str | None = None) -> list[str]:
    """Markdown rows: one row per series, one column per bit-width."""
    metric = metric or data.metric
    pts = data.points(metric)
    if not pts:
        return [f"_no finished trials report `{metric}`_"]
    bits_all = sorted(
        {b for by_bits in pts.values() for b in by_bits}, key=lambda b: (b is None, b)
    )
    unit = "FL {}" if data.plot.get("bits_of") == "fl" else "{} bits"
    head = ["series"] + [("float" if b is None else unit.format(b)) for b in bits_all]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for series, by_bits in sorted(pts.items(), key=lambda kv: str(kv[0])):
        cells = [series_label(series)]
        for b in bits_all:
            p = by_bits.get(b)
            if p is None:
                cells.append("—")
                continue
            text = _cell(p.mean)
            if len(p.values) > 1:
                text += f" ± {_cell(p.spread, 2)}"
            if p.lr is not None and data.lr_field and data.lr_field not in data.series_fields:
                text += f" (lr {p.lr:g})"
            cells.append(text)
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def write_report(
    folder: str | Path,
    *,
    plots: bool = True,
    tasks_from: tuple[str, ...] = (),
    out: str | Path | None = None,
) -> Path:
    """Write ``out/report.md`` (default ``folder``; drawing the plots first into
    ``out/plots``); the results store is only read. Returns the report's path."""
    folder = Path(folder)
    dest = Path(out) if out is not None else folder
    files = make_plots(folder, tasks_from=tasks_from, out=dest / "plots") if plots else []
    data = StudyData.load(folder)
    load_plugins(data, tasks_from)
    spec = data.spec
    lines = [f"# Study `{spec['name']}`", ""]
    if spec.get("description"):
        lines += [spec["description"], ""]
    counts = {"ok": 0, "failed": 0, "diverged": 0, "timeout": 0}
    for r in data.records:
        counts[r.status] += 1
    walls = [r.wall_s for r in data.records if r.wall_s is not None]
    versions = sorted({r.hwsim_version for r in data.records if r.hwsim_version})
    lines += [
        f"- task: `{spec['task']}`",
        f"- trials: {len(data.records)} stored — {counts['ok']} ok, {counts['failed']} failed, "
        f"{counts['diverged']} diverged, {counts['timeout']} timeout",
        f"- trial time: {sum(walls):.1f} s in all, {statistics.fmean(walls) if walls else 0:.2f} s mean",
        f"- hwsim version: {', '.join(versions) or 'unknown'}",
        f"- metric: `{data.metric}` ({'higher' if data.goal == 'max' else 'lower'} is better)",
        "",
        f"## Final {metric_label(data.metric)}",
        "",
        "Mean ± std over seeds"
        + (
            f", at the best `{data.lr_field}` per cell"
            if data.lr_field and data.lr_field not in data.series_fields
            else ""
        )
        + (f"; columns are {data.bits_label()}." if data.bits_field else "."),
        "",
    ]
    lines += summary_table(data)
    refs = baselines(data, data.metric)
    if refs:
        parts = [
            f"{_cell(value)} ({label.removeprefix('float baseline, ')})"
            if "," in label
            else _cell(value)
            for label, _, value in refs
        ]
        lines += ["", "Float baseline: " + "; ".join(parts) + "."]
    if any("stall_fraction" in r.metrics for r in data.ok()) and data.metric != "stall_fraction":
        lines += ["", "## Stall fraction", "", "Fraction of weight updates lost to rounding.", ""]
        lines += summary_table(data, "stall_fraction")
    for section in SECTIONS:
        lines += section(data)
    pngs = [f for f in files if f.suffix == ".png"]
    if pngs:
        lines += ["", "## Plots", ""]
        for f in pngs:
            doc = (
                (PLOTS.get(f.stem).__doc__ or "").strip().split("\n\n")[0]
                if f.stem in PLOTS
                else ""
            )
            lines += [f"### {f.stem.replace('_', ' ')}", "", " ".join(doc.split()), "",
                      f"![{f.stem}]({f.relative_to(dest).as_posix()})", ""]  # fmt: skip
    bad = [r for r in data.records if r.status != "ok"]
    if bad:
        lines += [
            "",
            "## Failed, diverged and timed-out trials",
            "",
            "| status | config | error |",
            "|---|---|---|",
        ]
        grid_keys = list(spec.get("grid", {}))
        for r in bad[:50]:
            config = ", ".join(f"{k}={r.config.get(k)}" for k in grid_keys)
            error = (r.error or "").strip().splitlines()
            error = error[-1] if error else ""
            lines.append(f"| {r.status} | {config} | {error.replace('|', '/')[:160]} |")
        if len(bad) > 50:
            lines.append(f"| … | {len(bad) - 50} more | |")
    lines += ["", "## Spec", "", "```toml", spec.get("source", "").strip(), "```", ""]
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / "report.md"
    path.write_text("\n".join(lines))
    return path
