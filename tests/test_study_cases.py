"""[[cases]]: tied parameter sets crossed with the grid, stored with their labels,
plotted per case; bad cases refused with the case and key named."""

from __future__ import annotations

import pytest

from hwsim.study.plots import StudyData, make_plots
from hwsim.study.runner import run_sweep
from hwsim.study.spec import SpecError, parse_spec
from tests.study_tasks import bits_error

SPEC = """
[study]
name = "cases"
task = "tests.study_tasks:bits"

[fixed]
c = "fx16.15"

[grid]
seed = [0, 1]

[[cases]]
case = "narrow"
a = "fx4.3"
b = "fx6.2"

[[cases]]
case = "wide"
a = "fx12.11"
b = "fx12.8"
c = "fx20.19"

[[cases]]
a = "fx8.7"

[plot]
metric = "err"
goal = "min"
"""


def test_every_grid_point_runs_once_per_case_and_cases_override_fixed():
    spec = parse_spec(SPEC)
    trials = spec.trials()
    assert spec.count() == len(trials) == 6
    assert [t.case for t in trials] == ["narrow", "wide", "a=fx8.7"] * 2
    wide = trials[1].config
    assert (wide["a"], wide["b"], wide["c"]) == ("fx12.11", "fx12.8", "fx20.19")
    assert trials[0].config["c"] == "fx16.15"  # from [fixed]
    assert trials[2].config["b"] is None  # a case sets only what it names
    assert len({t.hash for t in trials}) == 6
    assert spec.to_json()["cases"][0] == {"case": "narrow", "a": "fx4.3", "b": "fx6.2"}


def test_a_sweep_stores_the_case_of_each_trial_and_plots_per_case(tmp_path):
    spec = parse_spec(SPEC)
    run_sweep(spec, tmp_path, workers=0, progress=False)
    data = StudyData.load(tmp_path)
    assert data.series_fields == ["case"]
    by_case = {}
    for r in data.ok():
        by_case.setdefault(data.case_of(r.config), []).append(r.metrics["err"])
    assert set(by_case) == {"narrow", "wide", "a=fx8.7"}
    want = bits_error({"a": "fx4.3", "b": "fx6.2", "c": "fx16.15"})
    assert by_case["narrow"] == [want, want]
    assert max(by_case["wide"]) < min(by_case["narrow"])
    files = make_plots(tmp_path, ["cases"], formats=("png",))
    assert [f.name for f in files] == ["cases.png"] and files[0].stat().st_size > 0


@pytest.mark.parametrize(
    "cases, message",
    [
        ('[[cases]]\ncase = "x"\nseed = 3\n', "cases[0].seed: also a grid field"),
        ('[[cases]]\ncase = "x"\nzz = 3\n', "cases[0].zz: parameter 'zz' is unknown"),
        ('[[cases]]\ncase = "x"\na = "fx99.1"\n', "cases[0].a"),
        ('[[cases]]\ncase = "x"\n', "cases[0]: a case must set at least one parameter"),
        (
            '[[cases]]\ncase = "x"\na = "fx8.7"\n[[cases]]\ncase = "x"\na = "fx9.7"\n',
            "repeated labels ['x']",
        ),  # fmt: skip
        ('[[cases]]\ncase = 5\na = "fx8.7"\n', "cases[0].case must be a text"),
        ("cases = 3\n", "cases must be a non-empty array of tables"),
    ],
)
def test_bad_cases_are_refused_naming_the_case_and_key(cases, message):
    head = SPEC.split("[[cases]]")[0]
    text = head + cases + '\n[plot]\nmetric = "err"\n'
    if cases.startswith("cases ="):
        text = text.replace("[study]", cases + "[study]")
    with pytest.raises(SpecError) as err:
        parse_spec(text)
    assert message in str(err.value)


def test_plot_series_may_name_case():
    text = SPEC.replace('goal = "min"', 'goal = "min"\nseries = ["case", "seed"]')
    assert parse_spec(text).plot.series == ("case", "seed")
    without = SPEC.split("[[cases]]")[0] + '[plot]\nmetric = "err"\nseries = ["case"]\n'
    with pytest.raises(SpecError, match="plot.series must be a list of grid fields"):
        parse_spec(without)
