"""Theory and cost in `hwsim plot` / `hwsim report`: small sweeps of stand-in
tasks named like the models' ``lms`` and ``classify`` (same parameter names),
registered only for these tests."""

from __future__ import annotations

import dataclasses
import importlib
import math
from typing import Literal

import pytest

import hwsim
from hwsim.formats import FixedPoint
from hwsim.study.task import ADAPTERS, TASKS, TrialResult, register_adapter, register_task

try:
    from test_theory import _digits, simulate_lms, train_softmax
except ImportError:  # imported as tests.test_theory_plots by the study runner
    from tests.test_theory import _digits, simulate_lms, train_softmax


@dataclasses.dataclass(frozen=True)
class LMSParams:
    taps: int = 8
    rule: Literal["lms", "sign_error"] = "lms"
    step: float = 0.004
    weight: FixedPoint | None = None
    rounding: Literal["nearest", "stochastic"] = "nearest"
    n_samples: int = 40000
    snr_db: float = 30.0
    seed: int = 0


def lms(p: LMSParams) -> TrialResult:
    min_mse = 10.0 ** (-p.snr_db / 10)
    q = p.weight.lsb if p.weight is not None else 2.0**-40
    # steady state = the last 10% of the samples, as models.tasks:lms measures it
    excess, stalls = simulate_lms(
        p.step,
        q,
        taps=p.taps,
        min_mse=min_mse,
        rule=p.rule,
        rounding=p.rounding,
        samples=p.n_samples,
        seed=p.seed,
        skip=p.n_samples - p.n_samples // 10,
    )
    return TrialResult(
        metrics={
            "excess_mse_db": 10 * math.log10(excess),
            "mmse_db": 10 * math.log10(min_mse),
            "stall_fraction": stalls,
        }
    )


@dataclasses.dataclass(frozen=True)
class ClassifyParams:
    dataset: Literal["digits"] = "digits"
    model: Literal["softmax"] = "softmax"
    optimizer: Literal["sgd"] = "sgd"
    lr: float = 2.0**-6
    weight: FixedPoint | None = FixedPoint(8, 5)
    grad: FixedPoint | None = FixedPoint(6, 5)
    accumulator: FixedPoint | None = None
    epochs: int = 10
    batch_size: int = 64
    seed: int = 0


_DATA = []


def classify(p: ClassifyParams) -> TrialResult:
    if not _DATA:
        _DATA.append(_digits())
    accuracy = train_softmax(
        p.accumulator,
        p.lr,
        grad=p.grad,
        weight=p.weight,
        epochs=p.epochs,
        batch=p.batch_size,
        data=_DATA[0],
    )
    return TrialResult(metrics={"test_accuracy": accuracy})


def _lms_energy(config: dict) -> float:
    from hwsim.theory.energy import lms_energy

    return lms_energy(config)  # roles left at None are float here: costed as fp32


def _classify_energy(config: dict) -> float:
    import torch

    from hwsim.theory.energy import classifier_energy

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))  # the softmax model
    return classifier_energy(config, net, (1, 8, 8))


def install() -> None:
    register_task("lms", LMSParams)(lms)
    register_task("classify", ClassifyParams)(classify)
    register_adapter("lms", "energy")(_lms_energy)
    register_adapter("classify", "energy")(_classify_energy)


LMS_SPEC = """
[study]
name = "lms_theory_test"
task = "tests.test_theory_plots:lms"
[fixed]
n_samples = 40000
[grid]
rounding = ["nearest", "stochastic"]
weight = ["fx10.8", "fx12.10", "fx14.12"]
step = [0.001, 0.004, 0.016]
seed = [0]
[baseline]
weight = "float"
rounding = "nearest"
[plot]
metric = "excess_mse_db"
goal = "min"
bits = "weight"
lr = "step"
"""

ACC_SPEC = """
[study]
name = "accumulator_theory_test"
task = "tests.test_theory_plots:classify"
[grid]
accumulator = ["fx12.9", "fx13.10", "fx14.11", "fx15.12", "fx16.13"]
lr = [0.015625, 0.0078125]
seed = [0]
[baseline]
accumulator = "float"
weight = "float"
grad = "float"
[plot]
metric = "test_accuracy"
goal = "max"
bits = "accumulator"
bits_of = "fl"
lr = "lr"
series = ["lr"]
"""


@pytest.fixture(scope="module")
def stand_in_tasks():
    saved, saved_adapters = dict(TASKS), dict(ADAPTERS)
    importlib.import_module("tests.test_theory_plots").install()
    yield
    TASKS.clear()
    TASKS.update(saved)
    ADAPTERS.clear()
    ADAPTERS.update(saved_adapters)


def _sweep(tmp_path_factory, name, text):
    from hwsim.cli import main

    folder = tmp_path_factory.mktemp(name)
    (folder / "spec.toml").write_text(text)
    out = folder / "out"
    assert (
        main(
            [
                "sweep",
                str(folder / "spec.toml"),
                "--out",
                str(out),
                "--workers",
                "0",
                "--no-progress",
                "--no-plot",
            ]
        )
        == 0
    )
    return out


@pytest.fixture(scope="module")
def lms_study(stand_in_tasks, tmp_path_factory):
    return _sweep(tmp_path_factory, "lms", LMS_SPEC)


@pytest.fixture(scope="module")
def acc_study(stand_in_tasks, tmp_path_factory):
    return _sweep(tmp_path_factory, "acc", ACC_SPEC)


def test_lms_theory_rows_agree_with_the_sweep(lms_study):
    from hwsim.study.plots import StudyData
    from hwsim.theory import plots as tp

    data = StudyData.load(lms_study)
    rows = tp.lms_rows(data)
    assert {(r["rounding"], r["weight"]) for r in rows} == {
        (rd, w) for rd in ("nearest", "stochastic") for w in ("fx10.8", "fx12.10", "fx14.12")
    }
    reached = 0
    for r in rows:
        assert r["setting"]["min_mse"] == pytest.approx(1e-3)
        for step, measured in r["means"].items():
            if not tp.steady_state_reached(r["setting"], step, n_samples=40000):
                continue
            reached += 1
            predicted = tp._predict_metric(
                "excess_mse_db",
                hwsim.theory.lms_excess_mse(
                    step,
                    r["setting"]["weight"],
                    taps=8,
                    input_power=1.0,
                    min_mse=1e-3,
                    rounding=r["rounding"],
                    model="exact",
                ),
                1e-3,
            )
            assert abs(measured - predicted) < 1.5, (r["rounding"], r["weight"], step)
    assert reached >= 12


def test_lms_plots_and_report(lms_study):
    from hwsim.study.plots import StudyData, make_plots, plt
    from hwsim.study.report import write_report
    from hwsim.theory import plots as tp

    files = {f.name for f in make_plots(lms_study)}
    assert {"lms_theory.png", "pareto.png", "final_metric.png"} <= files
    # the theory overlay draws one dashed line per series on the final-metric axes
    data = StudyData.load(lms_study)
    fig, ax = plt.subplots()
    tp.lms_final_overlay(ax, data, {"metric": "excess_mse_db", "series": None})
    assert len(ax.lines) == 2
    plt.close(fig)
    text = write_report(lms_study).read_text()
    assert "## Theory vs measurement: finite-precision LMS" in text
    assert "| lms | nearest | fx12.10 |" in text
    assert "## Accuracy vs energy: Pareto-optimal configs" in text
    assert "![pareto](plots/pareto.png)" in text and "![lms_theory](plots/lms_theory.png)" in text


def _with_weight_error(data, wiener_power_db):
    """The study re-labelled as a weight-error study: weight_error_db = excess MSE
    (unit input power) over |w_opt|^2, with |w_opt|^2 reported or not."""
    import copy

    from hwsim.study.plots import StudyData

    records = []
    for r in data.records:
        r = copy.deepcopy(r)
        if "excess_mse_db" in r.metrics:
            r.metrics["weight_error_db"] = r.metrics["excess_mse_db"] - (wiener_power_db or 0.0)
            if wiener_power_db is not None:
                r.metrics["wiener_power_db"] = wiener_power_db
        records.append(r)
    spec = copy.deepcopy(data.spec)
    spec["plot"]["metric"] = "weight_error_db"
    spec["plot"]["series"] = ["rounding"]
    return StudyData(data.folder, spec, records)


def test_lms_overlay_predicts_weight_error_in_the_series_colours(lms_study):
    from hwsim.study.plots import StudyData, plt, series_style
    from hwsim.theory import plots as tp

    data = StudyData.load(lms_study)
    data.spec["plot"]["series"] = ["rounding"]
    data.plot["series"] = ["rounding"]
    fig, ax = plt.subplots()
    tp.lms_final_overlay(ax, data, {"metric": "excess_mse_db", "series": None})
    excess = {tuple(line.get_color()): list(line.get_ydata()) for line in ax.lines}
    plt.close(fig)
    colours = {
        tuple(series_style(data, (("rounding", r),))["color"]) for r in ("nearest", "stochastic")
    }
    assert set(excess) == colours and len(colours) == 2  # theory lines in their series' colour
    # weight error = excess / (sigma_x^2 |w_opt|^2): with |w_opt|^2 = 2 (3.01 dB) the
    # prediction is the excess-MSE one shifted down by 3.01 dB
    werr = _with_weight_error(data, 10 * math.log10(2.0))
    fig, ax = plt.subplots()
    tp.lms_final_overlay(ax, werr, {"metric": "weight_error_db", "series": None})
    assert len(ax.lines) == 2 and ax.get_legend_handles_labels()[1][0].startswith("theory")
    for line in ax.lines:
        expect = excess[tuple(line.get_color())]
        assert list(line.get_ydata()) == pytest.approx([y - 10 * math.log10(2.0) for y in expect])
    plt.close(fig)
    # |w_opt|^2 unknown, or a metric the theory does not predict: no line, no legend entry
    for case, metric in [
        (_with_weight_error(data, None), "weight_error_db"),
        (data, "stall_fraction"),
    ]:
        case.plot["metric"] = case.spec["plot"]["metric"] = metric
        fig, ax = plt.subplots()
        tp.lms_final_overlay(ax, case, {"metric": metric, "series": None})
        assert len(ax.lines) == 0 and ax.get_legend_handles_labels() == ([], [])
        plt.close(fig)


def test_pareto_front_is_the_set_of_undominated_configs(lms_study):
    from hwsim.study.plots import StudyData
    from hwsim.theory import plots as tp

    data = StudyData.load(lms_study)
    points = tp.pareto_points(data)
    assert len(points) == 2 * 3 * 3 + 3  # grid configs + float baselines (one per step)
    for p in points:
        dominated = any(
            q["energy"] <= p["energy"]
            and q["value"] <= p["value"]
            and (q["energy"] < p["energy"] or q["value"] < p["value"])
            for q in points
        )
        assert p["front"] == (not dominated)
    # more weight bits cost more energy at the same step
    e = {
        p["config"]["weight"]: p["energy"]
        for p in points
        if p["config"]["step"] == 0.004 and p["config"]["rounding"] == "nearest"
    }
    assert e["fx10.8"] < e["fx12.10"] < e["fx14.12"]
    assert tp.has_precision_config({"weight": "fx8.4"}) and not tp.has_precision_config(
        {"weight": None}
    )


def test_accumulator_prediction_and_cliff_in_report(acc_study):
    from hwsim.study.plots import StudyData, make_plots, plt
    from hwsim.study.report import write_report
    from hwsim.theory import plots as tp

    data = StudyData.load(acc_study)
    pts = data.points()
    for series, by_bits in pts.items():
        lr = dict(series)["lr"]
        predicted, how = tp.accumulator_prediction(
            data, next(iter(by_bits.values())).records[0].config
        )
        assert predicted == hwsim.theory.accumulator_precision("fx6.5", lr, "fx8.5").fl
        assert "grad fx6.5" in how
        cliff = tp.measured_cliff(by_bits, "max")
        assert abs(cliff - predicted) <= 2
    fig, ax = plt.subplots()
    tp.accumulator_overlay(ax, data, {"metric": "test_accuracy", "series": None})
    assert len(ax.lines) == 2  # one predicted line per learning rate
    plt.close(fig)
    assert "pareto.png" in {f.name for f in make_plots(acc_study)}
    text = write_report(acc_study).read_text()
    assert "## Theory vs measurement: weight-accumulator precision" in text
    assert "| lr=0.015625 | 11 |" in text and "| lr=0.0078125 | 12 |" in text
    # the float baseline costs the most; the cheapest Pareto config is fixed point
    points = tp.pareto_points(data)
    base = [p for p in points if p["role"] == "baseline"]
    assert base and all(
        b["energy"] > max(p["energy"] for p in points if p["role"] == "grid") for b in base
    )
    cheapest_front = min((p for p in points if p["front"]), key=lambda p: p["energy"])
    assert cheapest_front["role"] == "grid"
    assert "## Accuracy vs energy: Pareto-optimal configs" in text


def test_lms_agreement_cells_and_plot(lms_study):
    from hwsim.study.plots import StudyData, plt
    from hwsim.theory import plots as tp
    from hwsim.theory.plots_lms_agreement import _within

    data = StudyData.load(lms_study)
    rows = tp.lms_agreement(data)
    assert len(rows) == sum(len(r["means"]) for r in tp.lms_rows(data))  # one per cell
    for r in rows:
        for model in ("exact", "white"):
            ok = (
                math.isfinite(r[model]) and abs(10 ** ((r[model] - r["measured"]) / 10) - 1) <= 0.25
            )
            assert r["within_25"][model] == ok
    counts = tp.agreement_counts(rows, "exact")
    assert counts["all"][1] == len(rows) and counts["all"][0] > 0
    assert _within("excess_mse_db", -40.9, -40.0, 1e-3) and not _within(
        "excess_mse_db", -41.3, -40.0, 1e-3
    )
    assert _within("misadjustment", 1.2, 1.0, 1e-3) and not _within("misadjustment", 1.3, 1.0, 1e-3)
    fig = tp.lms_theory_agreement(data)
    assert fig is not None and len([a for a in fig.axes if a.get_visible()]) >= 2
    plt.close(fig)
