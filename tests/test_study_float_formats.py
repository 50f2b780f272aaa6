"""Floating-point formats in study specs and grids, the plots' bit-width axis
and series, on the small ``quadratic`` task (weight: FixedPoint | FloatingPoint)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hwsim.formats import FixedPoint, FloatingPoint
from hwsim.study.plots import StudyData, series_style
from hwsim.study.plots_core import final_metric
from hwsim.study.spec import SpecError, _params_types, coerce_value, parse_spec, trial_hash
from hwsim.study.store import TrialRecord

SPEC = """
[study]
name = "floats"
task = "tests.study_tasks:quadratic"
[fixed]
steps = 5
[grid]
weight = ["fx16.12", "bf16", "fp8_e4m3", "fx8.6", {exp = 5, man = 2}, "fp8_e4m3_sat", "float"]
rounding = ["nearest", "stochastic"]
[plot]
metric = "loss"
bits = "weight"
"""


def test_grid_takes_float_formats_beside_fixed_point():
    spec = parse_spec(SPEC)
    trials = spec.trials()
    assert len(trials) == 14
    weights = {t.params.weight for t in trials}
    assert weights == {
        FixedPoint(16, 12), FloatingPoint(8, 7), FloatingPoint(4, 3, inf=False), FixedPoint(8, 6),
        FloatingPoint(5, 2), FloatingPoint(4, 3, inf=False, saturate=True), None,
    }  # fmt: skip
    configs = {t.config["weight"] for t in trials}
    assert configs == {"fx16.12", "bf16", "fp8_e4m3", "fx8.6", "fp8_e5m2", "fp8_e4m3_sat", None}
    # the stored config rebuilds the same trial (hash and params), as a worker does
    types_ = _params_types(spec.task)
    for t in trials:
        config = json.loads(json.dumps(t.config))
        rebuilt = spec.task.params(**{k: coerce_value(types_[k], v) for k, v in config.items()})
        assert rebuilt == t.params
        assert trial_hash(spec.task_ref, config) == t.hash


def test_float_into_a_fixed_point_only_parameter_is_a_clear_error():
    with pytest.raises(ValueError, match="'bf16' is a floating-point format.*fixed-point format"):
        coerce_value(FixedPoint | None, "bf16")
    with pytest.raises(ValueError, match="'fx8.4' is a fixed-point format.*'bf16'"):
        coerce_value(FloatingPoint | None, "fx8.4")
    assert coerce_value(FixedPoint | FloatingPoint | None, "fp4_e2m1") == FloatingPoint(
        2, 1, inf=False, nan=False
    )
    bad = SPEC.replace('"fp8_e4m3", "fx8.6"', '"fp8_e9m3", "fx8.6"')
    with pytest.raises(SpecError) as info:
        parse_spec(bad)
    assert any("fp8_e9m3" in p and "weight" in p for p in info.value.problems)


def _data(grid_weights, records):
    spec = {
        "name": "f",
        "task": "tests.study_tasks:quadratic",
        "grid": {"weight": grid_weights, "rounding": ["nearest", "stochastic"]},
        "plot": {"metric": "loss", "bits": "weight", "series": ["rounding"]},
    }
    return StudyData(Path("."), spec, records)


def test_bits_axis_uses_bits_of_either_kind_and_families_get_their_own_lines():
    weights = ["fx8.6", "fx16.12", "fp8_e4m3", "bf16", "fp16", "float"]
    records = [
        TrialRecord(f"{w}{r}", {"weight": w, "rounding": r}, "ok", metrics={"loss": 1.0})
        for w in weights
        for r in ["nearest", "stochastic"]
    ]
    data = _data(weights, records)
    assert [data.bits_of({"weight": w}) for w in weights] == [8, 16, 8, 16, 16, None]
    assert data.format_kinds() == ["fixed point", "float e4", "float e8", "float e5"]
    points = data.points()
    fixed = (("rounding", "nearest"), ("weight kind", "fixed point"))
    e8 = (("rounding", "nearest"), ("weight kind", "float e8"))
    assert sorted(points[fixed]) == [8, 16] and sorted(points[e8]) == [16]
    assert series_style(data, fixed)["linestyle"] != series_style(data, e8)["linestyle"]
    assert series_style(data, fixed)["color"] == series_style(data, e8)["color"]
    data.plot["bits_of"] = "fl"
    assert data.bits_of({"weight": "bf16"}) == 7 and data.bits_of({"weight": "fx8.6"}) == 6
    fig = final_metric(_data(weights, records))
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any("float e8" in label for label in labels)


def test_all_fixed_point_grids_keep_their_series():
    data = _data(["fx8.6", "fx16.12"], [])
    assert data.format_kinds() == []
    assert data.series_of({"weight": "fx8.6", "rounding": "nearest"}) == (("rounding", "nearest"),)


def test_a_sweep_over_float_and_fixed_formats_runs_and_stores_names(tmp_path):
    from hwsim.cli import main

    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.replace('"nearest", "stochastic"', '"stochastic"'))
    out = tmp_path / "out"
    args = ["sweep", str(spec), "--out", str(out), "--workers", "0", "--no-progress", "--no-plot"]
    assert main(args) == 0
    data = StudyData.load(out)
    assert {r.status for r in data.records} == {"ok"}
    assert {r.config["weight"] for r in data.records} >= {"bf16", "fp8_e4m3_sat", "fx16.12"}
