"""Theory and cost in study plots and reports (a plug-in of ``hwsim.study``).

Imported by ``hwsim plot`` / ``hwsim report`` (``hwsim.study.plots`` loads
``hwsim.theory.plots`` when it exists). It adds:

- ``lms_theory``: excess MSE vs step size of an LMS study, measured points
  and the predicted curves (integrated rounding model, white-noise model,
  optimal step) per weight format; and the predicted excess MSE at the best
  step drawn over the ``final_metric`` plot;
- ``lms_theory_agreement``: predicted minus measured per (weight, step) cell,
  where each model holds (within 25%) and where rounding noise dominates;
- the Sakr & Shanbhag accumulator prediction over the ``final_metric`` plot of
  a study sweeping an accumulator format (from the gradient format when the
  trials have one, else from gradients measured on the task's model);
- ``pareto``: the study metric vs the energy of one training step (Horowitz
  45 nm costs, :mod:`hwsim.cost`) for every study whose trials have a
  precision config, with the Pareto-optimal configs marked;
- report sections: the Pareto-optimal configs and theory vs measurement.
"""

from __future__ import annotations

# importing the modules registers their plots, overlays and report sections
from hwsim.study.plots import PLOTS, StudyData, series_label
from hwsim.theory.energy import (
    classifier_energy,
    has_precision_config,
    lms_energy,
    register_energy,
    trial_energy,
)
from hwsim.theory.plots_accumulator import (
    accumulator_overlay,
    accumulator_prediction,
    measured_cliff,
    sweeps_weight_accumulator,
)
from hwsim.theory.plots_lms import (
    _is_lms_study,
    _predict_metric,
    lms_final_overlay,
    lms_rows,
    lms_theory,
    steady_state_reached,
)
from hwsim.theory.plots_lms_agreement import agreement_counts, lms_agreement, lms_theory_agreement
from hwsim.theory.plots_pareto import _num, pareto, pareto_points, pareto_section


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
    if sweeps_weight_accumulator(data):
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
                how = "cannot predict (no grad format)" if pred is None else pred[1]
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
    "_predict_metric",
    "accumulator_overlay",
    "agreement_counts",
    "classifier_energy",
    "lms_energy",
    "lms_final_overlay",
    "lms_agreement",
    "lms_theory",
    "lms_theory_agreement",
    "pareto",
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
