"""Plot ``where_the_bits_go``: for one trial, a layers x tensors heatmap of the
fraction of elements flushed to zero and saturated (and the update stall
fraction per layer), at its last logged step, from the store's telemetry rows
(:mod:`hwsim.nn.telemetry` defines them).

The trial: ``hwsim plot DIR --trial SELECTOR`` or ``[plot] trial = SELECTOR``
in the spec, where SELECTOR is a hash prefix (``"3fa9"``) or parameters
(``"grad_weight=fx8.7,lr=0.1"``, compared as text); by default the finished
trial with telemetry that is best on the study's metric.
"""

from __future__ import annotations

import math
import textwrap

import numpy as np

from hwsim.study import store_telemetry
from hwsim.study.plots import StudyData, plt, register_plot
from hwsim.study.store import ResultsStore, TrialRecord

ORDER = ("weight", "activation", "output", "accumulator", "grad_activation_in",
         "grad_activation_out", "grad_activation_accumulator", "grad_weight",
         "grad_weight_accumulator")  # fmt: skip
PANELS = (("flush_fraction", "flushed to zero"), ("saturation_fraction", "saturated"))


def choose_trial(records: list[TrialRecord], selector: str) -> TrialRecord:
    """The one record ``selector`` names (hash prefix, or ``key=value,...``);
    ValueError when none or several match."""
    if not isinstance(selector, str) or not selector.strip():
        raise ValueError(f"a trial selector is a hash prefix or 'key=value,...', got {selector!r}")
    if "=" in selector:
        wanted = {}
        for part in selector.split(","):
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"trial selector part {part!r} is not key=value")
            wanted[key.strip()] = value.strip()
        found = [r for r in records
                 if all(k in r.config and str(r.config[k]) == v for k, v in wanted.items())]  # fmt: skip
    else:
        found = [r for r in records if r.hash.startswith(selector.strip())]
    if len(found) != 1:
        what = "no trial" if not found else f"{len(found)} trials"
        raise ValueError(
            f"trial selector {selector!r} matches {what}; give a longer hash prefix or more "
            f"parameters (stored hashes: {', '.join(r.hash[:8] for r in records[:10])}"
            f"{', ...' if len(records) > 10 else ''})"
        )
    return found[0]


def _rows_of(folder, hashes: list[str]) -> dict[str, list[dict]]:
    with ResultsStore(folder, readonly=True) as store:
        return store_telemetry.read(store.conn, hashes)


def _default(data: StudyData, rows: dict[str, list[dict]]) -> TrialRecord | None:
    with_rows = [r for r in data.ok() if rows.get(r.hash)]
    scored = [r for r in with_rows if data.metric in r.metrics and not math.isnan(r.metrics[data.metric])]  # fmt: skip
    if not scored:
        return with_rows[0] if with_rows else None
    sign = 1 if data.goal == "max" else -1
    return max(scored, key=lambda r: sign * r.metrics[data.metric])


def grid(rows: list[dict], metric: str) -> tuple[list[str], list[str], np.ndarray]:
    """(layers, tensors, values) of ``metric`` at the last step of ``rows`` (NaN: absent)."""
    last = max(r["step"] for r in rows)
    rows = [r for r in rows if r["step"] == last and metric in r]
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    tensors = [t for t in ORDER if any(r["tensor"] == t for r in rows)]
    tensors += sorted({r["tensor"] for r in rows} - set(tensors))
    values = np.full((len(layers), len(tensors)), math.nan)
    for r in rows:
        values[layers.index(r["layer"]), tensors.index(r["tensor"])] = r[metric]
    return layers, tensors, values


@register_plot("where_the_bits_go")
def where_the_bits_go(data: StudyData):
    """Layers x tensors heatmaps of underflow and saturation for one trial."""
    candidates = data.ok() + data.baseline()
    selector = data.plot.get("trial")
    rows = _rows_of(data.folder, [r.hash for r in candidates])
    rec = choose_trial(candidates, str(selector)) if selector else _default(data, rows)
    if rec is None or not rows.get(rec.hash):
        if selector:
            raise ValueError(f"trial {rec.hash[:8]} has no telemetry rows to plot")
        return None
    trows = rows[rec.hash]
    panels = [p for p in PANELS if any(p[0] in r for r in trows)]
    stall = any("stall_fraction" in r for r in trows)
    fig, axes = plt.subplots(1, len(panels) + stall, figsize=(5.2 * len(panels) + 2 * stall, 4.2),
                             squeeze=False, width_ratios=[5] * len(panels) + [1] * stall)  # fmt: skip
    for ax, (metric, title) in zip(axes[0], panels, strict=False):
        layers, tensors, values = grid(trows, metric)
        _heatmap(fig, ax, values, layers, tensors, f"fraction {title}")
    if stall:
        layers, _, values = grid(trows, "stall_fraction")
        _heatmap(fig, axes[0][-1], values, layers, ["update"], "stalled updates")
    params = ", ".join(f"{k}={v}" for k, v in sorted(rec.config.items()) if v is not None)
    params = "\n".join(textwrap.wrap(params, 160)[:3])
    step = max(r["step"] for r in trows)
    fig.suptitle(f"Where the bits go: trial {rec.hash[:8]} at step {step}\n{params}", fontsize=8)
    fig.tight_layout()
    return fig


def _heatmap(fig, ax, values, layers, tensors, title) -> None:
    masked = np.ma.masked_invalid(values)
    image = ax.imshow(masked, vmin=0, vmax=1, cmap="magma_r", aspect="auto")
    ax.set_xticks(range(len(tensors)), tensors, fontsize=7, rotation=35, ha="right")
    ax.set_yticks(range(len(layers)), layers, fontsize=8)
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    for (i, j), v in np.ndenumerate(values):
        if not math.isnan(v):
            ax.text(j, i, f"{100 * v:.0f}%" if v >= 0.01 or v == 0 else "<1%", ha="center",
                    va="center", fontsize=7, color="white" if v > 0.5 else "black")  # fmt: skip
    fig.colorbar(image, ax=ax, fraction=0.046)
