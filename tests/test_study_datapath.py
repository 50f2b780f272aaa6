"""Study specs name every knob of the training datapath (models.datapath_params):
the library's lists, old names refused, tables and lists through the engine."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from pathlib import Path

import pytest
import torch

import hwsim.nn
from hwsim.formats import FixedPoint
from hwsim.optim import OPTIMIZERS
from hwsim.optim.precision import PRECISION_ARGS, GroupPrecision
from hwsim.study.spec import SpecError, _params_types, coerce_value, parse_spec, trial_hash
from models import datapath_params as dp
from models import tasks
from models.nets import build_classifier

ROOT = Path(__file__).resolve().parents[1]
HEAD = '[study]\nname = "t"\ntask = "models.tasks:classify"\n'
PLOT = '\n[plot]\nmetric = "test_accuracy"\n'


def _fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_classify_takes_every_precision_field_opt_format_and_hyperparameter():
    names = _fields(tasks.ClassifyParams)
    precision = {f.name for f in dataclasses.fields(hwsim.nn.Precision)} - {"seed"}
    assert precision <= names and "layers" in names
    for arg in PRECISION_ARGS:
        if arg.name not in ("rounding", "overflow", "seed"):
            assert f"opt_{arg.name}" in names
    for cls in OPTIMIZERS.values():  # the optimizers' own hyperparameters, by their names
        for name in inspect.signature(cls.__init__).parameters:
            if name not in dp._NOT_HYPERPARAMETERS and name != "precision":
                assert name in names, (cls.__name__, name)
    assert set(dp.HYPERPARAMETERS) >= {"momentum", "dampening", "nesterov", "weight_decay",
        "betas", "eps", "amsgrad", "alpha", "centered", "lr_decay", "decoupled_weight_decay"}  # fmt: skip
    assert {"layer_accumulator", "grad", "state", "grad_rounding"}.isdisjoint(names)


def test_readme_lists_every_classify_parameter():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Classify parameters") :]
    section = section[: section.index("\n## ", 3)]
    for name in _fields(tasks.ClassifyParams):
        assert f"`{name}`" in section, name
    example = section[section.index("```toml\n") + 8 :]
    spec = parse_spec(example[: example.index("```")])  # the example is a valid spec
    assert spec.count() == 12


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("layer_accumulator", "'accumulator'"),
        ("grad", "'opt_grad'"),
        ("state", "'opt_state'"),
        ("grad_rounding", "'opt_grad_rounding'"),
    ],  # fmt: skip
)
def test_old_names_are_refused_with_the_new_name(old, new):
    with pytest.raises(SpecError) as err:
        parse_spec(HEAD + f'[fixed]\n{old} = "fx8.6"\n' + PLOT)
    assert f"parameter {old!r} was renamed; use {new}" in str(err.value)
    with pytest.raises(TypeError):
        tasks.ClassifyParams(**{old: "fx8.6"})


def test_kmeans_optimizer_formats_are_opt_fields():
    p = tasks.KMeansParams(weight="fx16.12", opt_accumulator="fx24.20", momentum=0.5)
    opt = tasks.make_optimizer(p, [torch.nn.Parameter(torch.zeros(3))])
    group = opt.param_groups[0]
    assert str(group["accumulator"]) == "fx24.20" and str(group["weight"]) == "fx16.12"
    assert group["momentum"] == 0.5
    with pytest.raises(SpecError, match="'accumulator' was renamed; use 'opt_accumulator'"):
        parse_spec(HEAD.replace("classify", "kmeans") + '[fixed]\naccumulator = "fx8.6"\n'
                   '\n[plot]\nmetric = "inertia"\n')  # fmt: skip


def test_hyperparameters_reach_the_optimizer_and_unset_means_its_default():
    p = tasks.ClassifyParams(optimizer="adam", betas=[0.8, 0.95], eps=1e-6, amsgrad=True)
    group = tasks.make_optimizer(p, [torch.nn.Parameter(torch.zeros(2))]).param_groups[0]
    assert (group["betas"], group["eps"], group["amsgrad"]) == ((0.8, 0.95), 1e-6, True)
    p = tasks.ClassifyParams(optimizer="sgd", momentum=0.9, nesterov=True)
    group = tasks.make_optimizer(p, [torch.nn.Parameter(torch.zeros(2))]).param_groups[0]
    assert group["nesterov"] is True and group["momentum"] == 0.9
    for name in OPTIMIZERS:  # a grid over `optimizer` with the fields unset
        group = tasks.make_optimizer(
            tasks.ClassifyParams(optimizer=name), [torch.nn.Parameter(torch.zeros(2))]
        ).param_groups[0]
        assert group["weight_decay"] == 0
    msg = r"centered: True is set but optimizer 'adam' does not take 'centered'.*\['rmsprop'\]"
    with pytest.raises(ValueError, match=msg):
        tasks.ClassifyParams(optimizer="adam", centered=True)
    with pytest.raises(ValueError, match="betas: must be a list of 2 numbers"):
        tasks.ClassifyParams(optimizer="adam", betas=[0.9])


def test_opt_formats_reach_the_optimizer_and_state_tables_are_checked():
    p = tasks.ClassifyParams(
        optimizer="adam", weight="fx16.12", opt_weight="fx12.8", opt_accumulator="fx24.20",
        opt_state={"exp_avg": "fx16.14", "exp_avg_sq": "ufx32.32"}, opt_update="fx24.22",
        opt_grad="fx8.7", opt_grad_rounding="stochastic", weight_rounding="zero",
    )  # fmt: skip
    opt = tasks.make_optimizer(p, [torch.nn.Parameter(torch.zeros(2))])
    g = GroupPrecision.of(opt.param_groups[0], opt.rule.state_names)
    assert (str(g.weight), str(g.accumulator), str(g.grad), str(g.update)) == (
        "fx12.8", "fx24.20", "fx8.7", "fx24.22")  # fmt: skip
    assert str(g.state["exp_avg"]) == "fx16.14" and str(g.state["exp_avg_sq"]) == "ufx32.32"
    assert g.grad_rounding.name == "STOCHASTIC" and g.weight_rounding.name == "ZERO"
    assert dp.quantized_layers(p)  # the layers' weight grid is not the optimizer's
    follow = tasks.ClassifyParams(weight="fx16.12")
    assert str(tasks.make_optimizer(follow, [torch.nn.Parameter(torch.zeros(1))])
               .param_groups[0]["weight"]) == "fx16.12"  # fmt: skip
    assert not dp.quantized_layers(follow)  # as before: the optimizer's grid is the model's
    float_master = tasks.ClassifyParams(weight="fx8.6", opt_weight="float")
    assert float_master.opt_weight is None and dp.quantized_layers(float_master)
    with pytest.raises(ValueError, match=r"opt_state: state\(s\) \['exp_avg'\] are not states "
                       r"of optimizer 'sgd'; its states are \['momentum_buffer'\]"):  # fmt: skip
        tasks.ClassifyParams(opt_state={"exp_avg": "fx16.14"})
    with pytest.raises(ValueError, match="optimizer 'sgd' refuses a format.*block-scaled"):
        tasks.ClassifyParams(opt_grad="mxint8")


def test_every_format_kind_is_accepted_by_the_layers():
    p = tasks.ClassifyParams(weight="mxint8", activation="bfp8", opt_weight="float",
                             grad_weight="fp8_e4m3", grad_activation="bf16")  # fmt: skip
    assert (str(p.weight), str(p.activation), str(p.grad_weight)) == ("mxint8", "bfp8", "fp8_e4m3")


def test_per_layer_overrides_build_each_layer_with_its_own_precision():
    p = tasks.ClassifyParams(
        weight="fx16.12", activation="fx16.12", grad_weight="fx12.11",
        layers={"1": {"weight": "fx8.6", "grad_activation": "fx10.9", "straight_through": False}},
    )  # fmt: skip
    per_layer = {i: dp.layer_precision(p, i) for i in range(2)}
    net = build_classifier("mlp", (1, 8, 8), 10, hidden=8, precision=per_layer)
    first, second = [m for m in net.modules() if isinstance(m, hwsim.nn.QLinear)]
    assert first.precision.weight == FixedPoint(16, 12) and first.precision.grad_activation is None
    assert second.precision.weight == FixedPoint(8, 6) and not second.precision.straight_through
    assert second.precision.grad_weight == FixedPoint(12, 11)  # the task-wide field under it
    only_second = build_classifier("mlp", (1, 8, 8), 10, hidden=8, precision={1: per_layer[1]})
    assert [type(m).__name__ for m in only_second.body] == ["Flatten", "Linear", "ReLU", "QLinear"]
    with pytest.raises(ValueError, match=r"precision names layer\(s\) \[2\]"):
        build_classifier("mlp", (1, 8, 8), 10, precision={2: per_layer[1]})
    with pytest.raises(ValueError, match=r"layers.2: '2' is not a layer.*'0' to '1'"):
        tasks.ClassifyParams(layers={"2": {"weight": "fx8.6"}})
    with pytest.raises(ValueError, match=r"layers.body.1: 'body.1' is not a layer"):
        tasks.ClassifyParams(layers={"body.1": {"weight": "fx8.6"}})
    with pytest.raises(ValueError, match=r"layers.0: unknown field\(s\) \['wieght'\]"):
        tasks.ClassifyParams(layers={"0": {"wieght": "fx8.6"}})
    with pytest.raises(ValueError, match=r"layers.0.weight: bad format 'fx8'"):
        tasks.ClassifyParams(layers={"0": {"weight": "fx8"}})
    with pytest.raises(ValueError, match=r"layers.0: Precision.accumulator is set"):
        tasks.ClassifyParams(layers={"0": {"accumulator": "fx24.16"}})


def test_layer_counts_match_the_models():
    from models.task_classify import N_LAYERS

    for model, n in N_LAYERS.items():
        net = build_classifier(model, (1, 8, 8), 10, hidden=8)
        assert n == sum(isinstance(m, torch.nn.Linear | torch.nn.Conv2d) for m in net.modules())


SPEC = (
    HEAD
    + """[fixed]
hidden = 8
epochs = 1
optimizer = "adam"
lr = 0.01
weight = "fx16.12"
activation = "fx16.12"
betas = [0.9, 0.99]
opt_state = {exp_avg = "fx16.14", exp_avg_sq = "ufx32.32"}
layers = {"1" = {activation = {wl = 12, fl = 8}}}
[grid]
"layers.0.weight" = ["fx8.6", "fx12.10"]
grad_weight = ["fx8.7", "float"]
"""
    + PLOT
)


def test_dotted_grid_keys_sweep_one_entry_of_a_table_and_tables_hash_canonically():
    spec = parse_spec(SPEC)
    trials = spec.trials()
    assert [t.config["layers"] for t in trials[::2]] == [
        {"1": {"activation": "fx12.8"}, "0": {"weight": "fx8.6"}},
        {"1": {"activation": "fx12.8"}, "0": {"weight": "fx12.10"}},
    ]
    assert trials[0].config["betas"] == [0.9, 0.99]
    assert trials[0].config["opt_state"] == {"exp_avg": "fx16.14", "exp_avg_sq": "ufx32.32"}
    types_ = _params_types(spec.task)
    for t in trials:  # a worker rebuilds the same params from the stored JSON
        config = json.loads(json.dumps(t.config))
        rebuilt = spec.task.params(**{k: coerce_value(types_[k], v) for k, v in config.items()})
        assert rebuilt == t.params and trial_hash(spec.task_ref, config) == t.hash
    spelled = SPEC.replace("{wl = 12, fl = 8}", '"fx12.8"')
    assert [t.hash for t in parse_spec(spelled).trials()] == [t.hash for t in trials]
    with pytest.raises(SpecError, match="'epochs' is not a table parameter"):
        parse_spec(HEAD + '[grid]\n"epochs.0" = [1, 2]\n' + PLOT)
    with pytest.raises(SpecError, match="layers.3: '3' is not a layer"):
        parse_spec(HEAD + '[grid]\n"layers.3.weight" = ["fx8.6"]\n' + PLOT)


def test_tables_and_lists_go_through_sweep_status_export_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from hwsim.cli import main

    spec = tmp_path / "t.toml"
    spec.write_text(SPEC.replace('grad_weight = ["fx8.7", "float"]', "seed = [0]"))
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out), "--workers", "1"]) == 0
    assert main(["status", str(out)]) == 0
    assert "2 of 2 trials stored: 2 ok" in capsys.readouterr().out
    assert main(["export", str(out), "--csv"]) == 0
    header, *rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 2 and "layers" in header.split(",")
    if (out / "results.parquet").exists():
        import pandas as pd

        frame = pd.read_parquet(out / "results.parquet")
        assert json.loads(frame["betas"][0]) == [0.9, 0.99]
    assert main(["plot", str(out)]) == 0
    assert list((out / "plots").glob("*.png"))


def test_narrow_backward_formats_change_training():
    """The backward knobs are live: gradients in fx6.5 rounded to nearest flush
    most of the activation gradients, and the training differs from float."""
    kw = dict(hidden=16, epochs=1, weight="fx16.12", activation="fx16.12")
    wide = tasks.classify(tasks.ClassifyParams(**kw))
    narrow = tasks.classify(tasks.ClassifyParams(grad_activation="fx6.5", **kw))
    assert narrow.metrics["train_loss"] != wide.metrics["train_loss"]


def test_classifier_energy_costs_the_backward_gemms_and_opt_formats():
    from hwsim.theory.energy import classifier_energy

    net = build_classifier("mlp", (1, 8, 8), 10, hidden=32)
    fx = {"weight": "fx8.6", "activation": "fx8.6", "grad_activation": "fx8.6"}
    base = classifier_energy({**fx, "accumulator": "fx16.8"}, net, (1, 8, 8))
    backward = classifier_energy(
        {**fx, "accumulator": "fx16.8", "grad_activation_accumulator": "fx16.8",
         "grad_weight_accumulator": "fx16.8"}, net, (1, 8, 8))  # fmt: skip
    assert backward < base  # fp32 backward adds replaced by 16-bit ones
    state = {"optimizer": "adam", "opt_state": {"exp_avg": "fx16.14", "exp_avg_sq": "ufx32.32"}}
    wide = classifier_energy({**fx, **state}, net, (1, 8, 8))
    narrow = classifier_energy({**fx, **state, "opt_state": "fx16.14"}, net, (1, 8, 8))
    assert narrow < wide  # a table is costed at its widest state format
    acc16, acc24 = (
        classifier_energy({**fx, "opt_accumulator": f}, net, (1, 8, 8))
        for f in ("fx16.12", "fx24.20")
    )
    assert acc16 < acc24  # the weight accumulator is read from opt_accumulator


def test_docs_name_no_old_parameter():
    old = re.compile(r"\b(layer_accumulator|grad_rounding)\b")
    for path in [ROOT / "README.md", ROOT / "docs" / "STUDIES.md", *ROOT.glob("studies/*.toml")]:
        text = path.read_text()
        hits = [m.group(0) for m in old.finditer(text)
                if not text[max(0, m.start() - 4) : m.start()].endswith("opt_")
                and not text[m.end() : m.end() + 4] == "` ->"]  # the list of renamed ones  # fmt: skip
        assert not hits, (path.name, hits)
