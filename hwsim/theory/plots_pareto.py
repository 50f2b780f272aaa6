"""The Pareto plot and report table: study metric vs energy per training step."""

from __future__ import annotations

import math
import statistics
from typing import Any

from hwsim.study.plots import (
    StudyData,
    metric_label,
    plt,
    register_plot,
)
from hwsim.theory.energy import has_precision_config, trial_energy
from hwsim.theory.plot_common import _task_name


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
