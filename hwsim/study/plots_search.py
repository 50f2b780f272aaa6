"""The Pareto plot of a precision search (``hwsim search``): every evaluated
setting's metric against its cost (energy per training step from the task's
cost model where it has one, else total bits), the front of settings no other
is both cheaper and better than, and the answers marked."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from hwsim.study.plots import metric_label, plt
from hwsim.study.values import to_plain


def _front(points: list[tuple[float, float]], sign: float) -> list[tuple[float, float]]:
    """The Pareto front (cheapest first) of (cost, metric) points; ``sign`` +1
    when a larger metric is better."""
    front, best = [], -math.inf
    for cost, metric in sorted(points, key=lambda p: (p[0], -sign * p[1])):
        if sign * metric > best:
            front.append((cost, metric))
            best = sign * metric
    return front


def search_pareto(spec, result, out_dir: str | Path, energy: Callable | None = None,
                  analytical=None, formats=("png", "svg")) -> list[Path]:  # fmt: skip
    """Draw ``search_pareto.<fmt>`` in ``out_dir``; returns the files written."""
    fixed = to_plain(spec.study.fixed)

    def cost(setting: dict) -> float | None:
        if energy is not None:
            pj = energy({**fixed, **to_plain(setting)})
            return None if pj is None else float(pj)
        return float(sum(f.bits for f in setting.values() if f is not None))

    seen: dict[str, tuple[float, float, bool]] = {}
    for step in result.steps:
        c = cost(step.formats)
        if c is not None and math.isfinite(step.metric):
            seen[repr(sorted(to_plain(step.formats).items()))] = (c, step.metric, step.within)
    marks = [("uniform", result.uniform, result.uniform_metric, "s"),
             ("per tensor", result.per_tensor, result.per_tensor_metric, "*")]  # fmt: skip
    if analytical is not None:
        marks.append(("analytical", analytical[0], analytical[1], "D"))
    fig, ax = plt.subplots(figsize=(7.4, 4.8))
    for within, colour, label in ((False, "0.7", "outside tolerance"), (True, "C0", "within")):
        pts = [(c, m) for c, m, w in seen.values() if w == within]
        if pts:
            ax.scatter(*zip(*pts, strict=True), s=14, color=colour, label=label, zorder=2)
    sign = 1.0 if spec.goal == "max" else -1.0
    front = _front([(c, m) for c, m, w in seen.values() if w], sign)
    if front:
        ax.step(*zip(*front, strict=True), where="post", color="C0", linewidth=1, zorder=1)
    for label, setting, metric, marker in marks:
        c = cost(setting)
        if c is not None and math.isfinite(metric):
            ax.scatter([c], [metric], s=90, marker=marker, edgecolor="black", zorder=3,
                       label=f"{label} ({c:.4g}, {metric:.4g})")  # fmt: skip
    ax.axhline(result.float_metric, color="black", linestyle="--", linewidth=1, label="float")
    edge = result.float_metric - sign * spec.tolerance
    ax.axhline(edge, color="black", linestyle=":", linewidth=1, label="tolerance")
    span = max(spec.tolerance, 1e-3 * abs(result.float_metric), 1e-12)
    low, high = sorted((result.float_metric + sign * 2 * span, edge - sign * 4 * span))
    ax.set_ylim(low, high)  # the tolerance band and around it; worse settings fall off
    ax.set_xlabel("energy per training step (pJ)" if energy is not None else "total bits")
    ax.set_ylabel(metric_label(spec.metric))
    ax.set_title(f"{spec.study.name}: every evaluated setting", fontsize=10)
    ax.legend(fontsize=8, loc="best", framealpha=0.85)
    fig.tight_layout()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for fmt in formats:
        files.append(out / f"search_pareto.{fmt}")
        fig.savefig(files[-1], dpi=120)
    plt.close(fig)
    return files
