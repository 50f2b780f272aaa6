"""Study specs: typing, validation errors (field, bad value, what is allowed), trial expansion, hashing."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwsim.formats import FixedPoint
from hwsim.study.spec import SpecError, coerce_value, load_spec, parse_spec, trial_hash

HEAD = """
[study]
name = "t"
task = "tests.study_tasks:quadratic"
"""
PLOT = """
[plot]
metric = "loss"
bits = "weight"
"""


def spec_of(body: str, plot: str = PLOT):
    return parse_spec(HEAD + body + plot)


def problems_of(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    return info.value.problems


def test_grid_expands_to_cartesian_product_with_typed_params():
    spec = spec_of(
        """
        [fixed]
        steps = 5
        [grid]
        weight = ["fx8.6", {wl = 12, fl = 10}, "float"]
        rounding = ["nearest", "stochastic"]
        lr = [0.1, 1]
        """
    )
    trials = spec.trials()
    assert len(trials) == 12
    assert {t.params.weight for t in trials} == {FixedPoint(8, 6), FixedPoint(12, 10), None}
    assert all(t.params.steps == 5 for t in trials)
    assert {type(t.params.lr) for t in trials} == {float}  # the int 1 became 1.0
    assert len({t.hash for t in trials}) == 12
    # the config is plain JSON, defaults included
    assert trials[0].config["weight"] == "fx8.6" and trials[0].config["dim"] == 8


def test_baseline_trials_drop_the_bits_field_and_deduplicate():
    spec = spec_of(
        """
        [grid]
        weight = ["fx8.6", "fx10.8"]
        rounding = ["nearest", "stochastic"]
        seed = [0, 1, 2]
        [baseline]
        weight = "float"
        rounding = "nearest"
        """
    )
    trials = spec.trials()
    base = [t for t in trials if t.role == "baseline"]
    assert len(trials) == 12 + 3
    assert sorted(t.params.seed for t in base) == [0, 1, 2]
    assert all(t.params.weight is None and t.params.rounding == "nearest" for t in base)


def test_hash_is_the_same_however_the_spec_spells_the_trial():
    a = spec_of(
        '[fixed]\nweight = "fx16.12"\nlr = 0.1\n[grid]\nseed = [3]\n', "[plot]\nmetric='loss'\n"
    )
    b = spec_of("[grid]\nweight = [{wl = 16, fl = 12}]\nseed = [3]\n", "[plot]\nmetric='loss'\n")
    assert [t.hash for t in a.trials()] == [t.hash for t in b.trials()]
    c = spec_of("[grid]\nweight = ['fx16.11']\nseed = [3]\n", "[plot]\nmetric='loss'\n")
    assert a.trials()[0].hash != c.trials()[0].hash
    assert trial_hash("x:y", {"a": 1}) != trial_hash("x:z", {"a": 1})


def test_unknown_parameter_names_field_and_suggests():
    problems = problems_of(HEAD + "[grid]\nweigth = ['fx8.6']\n" + "[plot]\nmetric='loss'\n")
    assert len(problems) == 1
    msg = problems[0]
    assert "'weigth'" in msg and "did you mean 'weight'" in msg and "rounding" in msg


def test_bad_format_names_field_index_value_and_allowed():
    problems = problems_of(HEAD + "[grid]\nweight = ['fx8.6', 'fx8.x']\n" + PLOT)
    assert len(problems) == 1
    assert problems[0].startswith("grid.weight[1]:")
    assert "'fx8.x'" in problems[0] and "fx<wl>.<fl>" in problems[0]


def test_bad_format_table_is_rejected():
    problems = problems_of(HEAD + "[fixed]\nweight = {wl = 8}\n" + "[plot]\nmetric='loss'\n")
    assert "fixed.weight" in problems[0] and "wl and fl" in problems[0]


def test_bad_choice_lists_allowed_values():
    problems = problems_of(
        HEAD + "[grid]\nweight=['fx8.6']\nrounding = ['nearest', 'stochastik']\n" + PLOT
    )
    assert len(problems) == 1
    msg = problems[0]
    assert "grid.rounding[1]" in msg and "'stochastik'" in msg
    assert "'nearest_away'" in msg and "did you mean 'stochastic'" in msg


@pytest.mark.parametrize(
    "line, field, fragment",
    [
        ("steps = 2.5", "fixed.steps", "an integer"),
        ("steps = true", "fixed.steps", "an integer"),
        ("lr = 'fast'", "fixed.lr", "a number"),
        ("fail = 1", "fixed.fail", "true or false"),
        ("lr = nan", "fixed.lr", "finite"),
    ],
)
def test_wrong_types(line, field, fragment):
    problems = problems_of(HEAD + f"[fixed]\n{line}\n" + "[plot]\nmetric='loss'\n")
    assert len(problems) == 1 and problems[0].startswith(field) and fragment in problems[0]


def test_every_problem_is_reported_at_once():
    text = HEAD + (
        "colour = 1\n"  # unknown study key
        "[fixed]\nsteps = 'x'\n"
        "[grid]\nweight = []\nrounding = 'nearest'\nlr = [0.1, 0.1]\n"
        "[plot]\nmetric = 'loss'\nbits = 'dim'\ngoal = 'best'\nbits_of = 'width'\n"
    )
    problems = problems_of(text)
    joined = "\n".join(problems)
    for fragment in [
        "study key 'colour'",
        "fixed.steps",
        "grid.weight: a non-empty list",
        "grid.rounding: a non-empty list",
        "grid.lr: repeated values",
        "plot.bits 'dim' must be a grid field",
        "plot.goal 'best'",
        "plot.bits_of 'width'",
    ]:
        assert fragment in joined, fragment
    assert len(problems) == 8
    # the message of the exception itself carries every problem
    with pytest.raises(SpecError, match="8 problem"):
        parse_spec(text)


def test_bits_field_must_be_a_format_or_int():
    problems = problems_of(HEAD + "[grid]\nlr = [0.1, 0.2]\n[plot]\nmetric='loss'\nbits='lr'\n")
    assert "plot.bits 'lr' must be a format or integer field" in problems[0]


def test_task_reference_errors():
    bad_form = '[study]\nname="t"\ntask="tests.study_tasks.quadratic"\n[plot]\nmetric="loss"\n'
    assert "module.path:task_name" in problems_of(bad_form)[0]
    missing = '[study]\nname="t"\ntask="no_such_module_xyz:lms"\n[plot]\nmetric="loss"\n'
    assert "module 'no_such_module_xyz' cannot be imported" in problems_of(missing)[0]
    unknown = '[study]\nname="t"\ntask="tests.study_tasks:quadratc"\n[plot]\nmetric="loss"\n'
    msg = problems_of(unknown)[0]
    assert "registers no task 'quadratc'" in msg and "quadratic" in msg


def test_missing_study_table_and_unknown_section_and_bad_toml():
    assert "[study] table" in problems_of("[grid]\nseed=[1]\n")[-1]
    assert "section 'grids'" in problems_of(HEAD + "[grids]\nseed=[1]\n[plot]\nmetric='loss'\n")[0]
    assert "not valid TOML" in problems_of("[study\nname=")[0]


def test_parameter_in_fixed_and_grid_is_rejected():
    problems = problems_of(HEAD + "[fixed]\nlr=0.1\n[grid]\nlr=[0.2]\n[plot]\nmetric='loss'\n")
    assert "grid.lr: also set in [fixed]" in problems[0]


def test_task_post_init_rejection_happens_before_running():
    problems = problems_of(HEAD + "[grid]\nsteps=[5, 0]\n[plot]\nmetric='loss'\n")
    assert "rejected by task 'quadratic'" in problems[0] and "steps must be >= 1" in problems[0]


def test_baseline_needs_bits():
    problems = problems_of(
        HEAD + "[grid]\nseed=[1]\n[baseline]\nweight='float'\n[plot]\nmetric='loss'\n"
    )
    assert "[baseline] needs plot.bits" in problems[0]


def test_load_spec_missing_file(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.toml")


def test_load_spec_from_file(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(HEAD + "[grid]\nweight=['fx8.6']\nseed=[0,1]\n" + PLOT)
    spec = load_spec(path)
    assert spec.name == "t" and len(spec.trials()) == 2


def test_coerce_value_optional_and_format_required():
    from typing import Literal

    assert coerce_value(FixedPoint | None, "float") is None
    assert coerce_value(FixedPoint | None, {"wl": 8, "fl": 4, "signed": False}) == FixedPoint(
        8, 4, False
    )
    with pytest.raises(ValueError, match="required here"):
        coerce_value(FixedPoint, "float")
    assert coerce_value(str | None, None) is None
    with pytest.raises(ValueError, match="allowed: one of 'a', 'b'"):
        coerce_value(Literal["a", "b"], "c")
    # True == 1 in Python, but a bool is not a valid integer choice
    with pytest.raises(ValueError):
        coerce_value(Literal[1, 2], True)


_SPECS = sorted((Path(__file__).resolve().parents[1] / "studies").glob("*.toml"))
# search specs (a [search] table) are run by `hwsim search`, the rest by `hwsim sweep`
SEARCHES = [p for p in _SPECS if "\n[search]" in p.read_text()]
STUDIES = [p for p in _SPECS if p not in SEARCHES]


def test_the_builtin_studies_exist():
    names = {p.stem for p in STUDIES}
    assert {"quickstart", "lms_precision", "digits_rounding", "accumulator_precision",
            "adam_precision", "gear_shifting"} <= names  # fmt: skip


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_builtin_studies_validate_against_their_tasks(path):
    pytest.importorskip(
        "models.tasks", reason="the reference models (models/tasks.py) are not here"
    )
    spec = load_spec(path)
    trials = spec.trials()
    assert trials and len({t.hash for t in trials}) == len(trials)
    # a [[cases]] study (format comparisons) may plot by case, with no bit-width axis
    assert spec.plot.bits in spec.grid or (spec.plot.bits is None and spec.cases)


@pytest.mark.parametrize("path", SEARCHES, ids=lambda p: p.stem)
def test_builtin_search_specs_validate_against_their_tasks(path):
    pytest.importorskip("models.tasks")
    from hwsim.study.search import load_search

    spec = load_search(path)
    assert spec.params and set(spec.start) == set(spec.params)


def test_builtin_accumulator_study_tests_the_rule_directly():
    """studies/accumulator_precision.toml quantizes the gradients (stochastically,
    into a nearest accumulator), so the prediction comes from LSB_G itself, moves
    one bit per halving of lr, and the sweep brackets it with room for a cliff."""
    pytest.importorskip("models.tasks")
    from hwsim.study.plots import StudyData
    from hwsim.theory import plots as tp

    spec = load_spec(Path(__file__).resolve().parents[1] / "studies" / "accumulator_precision.toml")
    data = StudyData(Path("."), spec.to_json(), [])
    trials = [t for t in spec.trials() if t.role == "grid"]
    assert {t.config["opt_grad_rounding"] for t in trials} == {"stochastic"}
    assert {t.config["rounding"] for t in trials} == {"nearest"}
    predicted = {}
    for t in trials:
        fl, how = tp.accumulator_prediction(data, t.config)
        assert how.startswith("rule, LSB_G from grad")
        predicted.setdefault(t.config["lr"], set()).add(fl)
    assert all(len(v) == 1 for v in predicted.values())
    fls = {lr: v.pop() for lr, v in predicted.items()}
    lrs = sorted(fls)
    for small, large in zip(lrs, lrs[1:], strict=False):
        if large == 2 * small:
            assert fls[small] == fls[large] + 1
    swept = sorted({data.bits_of(t.config) for t in trials})
    assert all(swept[0] <= fl - 2 and fl + 2 <= swept[-1] for fl in fls.values())


formats = st.builds(
    lambda wl, fl, signed: {"wl": wl, "fl": fl, "signed": signed},
    st.integers(2, 40), st.integers(-4, 44), st.booleans(),
)  # fmt: skip


@settings(max_examples=40)
@given(
    weights=st.lists(formats, min_size=1, max_size=4, unique_by=lambda f: tuple(f.values())),
    lrs=st.lists(st.floats(1e-6, 10.0), min_size=1, max_size=3, unique=True),
    seeds=st.lists(st.integers(0, 2**31), min_size=1, max_size=3, unique=True),
    as_string=st.booleans(),
)
def test_trials_rebuild_exactly_from_their_stored_config(weights, lrs, seeds, as_string):
    """The product has every combination once, and a worker rebuilding the params
    from the JSON config gets the very same params (and hash)."""
    import json

    from hwsim.study.spec import _params_types, trial_hash

    def spell(f):
        return str(FixedPoint(**f)) if as_string else f

    grid = {"weight": [spell(f) for f in weights], "lr": lrs, "seed": seeds}
    toml_grid = "\n".join(f"{k} = {json.dumps(v)}" for k, v in grid.items())
    toml_grid = toml_grid.replace('{"wl": ', "{wl = ").replace(', "fl": ', ", fl = ")
    toml_grid = toml_grid.replace(', "signed": true}', ", signed = true}")
    toml_grid = toml_grid.replace(', "signed": false}', ", signed = false}")
    spec = parse_spec(HEAD + "[grid]\n" + toml_grid + "\n[plot]\nmetric='loss'\nbits='weight'\n")
    trials = spec.trials()
    assert len(trials) == len(weights) * len(lrs) * len(seeds)
    assert len({t.hash for t in trials}) == len(trials)
    types_ = _params_types(spec.task)
    for t in trials:
        config = json.loads(json.dumps(t.config))  # as stored and sent to a worker
        rebuilt = spec.task.params(**{k: coerce_value(types_[k], v) for k, v in config.items()})
        assert rebuilt == t.params
        assert trial_hash(spec.task_ref, config) == t.hash
