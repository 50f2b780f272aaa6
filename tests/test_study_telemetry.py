"""Telemetry rows through the study engine: the worker's check, the store's
table (and its migration), load(DIR).telemetry, hwsim export, the
where_the_bits_go plot, and the classify task recording them."""

from __future__ import annotations

import csv
import math
import sqlite3

import numpy as np
import pytest
import torch

import hwsim.nn as hnn
from hwsim.cli import main
from hwsim.study import load
from hwsim.study.plots import make_plots
from hwsim.study.plots_telemetry import choose_trial, grid
from hwsim.study.store import ResultsStore, TrialRecord
from hwsim.study.store_telemetry import check_rows
from hwsim.study.task import TrialResult
from hwsim.study.worker import check_result

ROWS = [
    {"step": 1, "layer": "net.0", "tensor": "weight", "numel": 10.0, "flush_fraction": 0.1,
     "saturation_fraction": 0.0},
    {"step": 1, "layer": "net.0", "tensor": "update", "numel": 8.0, "stall_fraction": 0.5},
    {"step": 2, "layer": "net.0", "tensor": "weight", "numel": 10.0, "flush_fraction": 0.2,
     "saturation_fraction": math.nan},
]  # fmt: skip


def test_rows_round_trip_through_the_store(tmp_path):
    with ResultsStore(tmp_path) as store:
        store.record(TrialRecord("a1", {"lr": 0.1}, "ok", metrics={"m": 1.0}, telemetry=ROWS))
        store.record(TrialRecord("b2", {"lr": 0.2}, "ok", metrics={"m": 2.0}))
        got = {r.hash: r.telemetry for r in store.records(telemetry=True)}
        assert [r.telemetry for r in store.records()] == [[], []]  # only when asked
    assert got["b2"] == []
    back = got["a1"]
    assert len(back) == 3 and back[:2] == ROWS[:2]
    assert back[2]["flush_fraction"] == 0.2 and math.isnan(back[2]["saturation_fraction"])
    with ResultsStore(tmp_path) as store:
        assert store.delete(["a1"]) == 1
        assert store.records(telemetry=True)[0].telemetry == []
        left = store.conn.execute("SELECT COUNT(*) FROM telemetry").fetchone()[0]
    assert left == 0


def test_a_store_from_before_the_table_stays_readable_and_gains_it(tmp_path):
    with ResultsStore(tmp_path) as store:
        store.record(TrialRecord("old", {"lr": 0.1}, "ok", metrics={"m": 1.0}))
    conn = sqlite3.connect(tmp_path / "results.sqlite")
    conn.execute("DROP TABLE telemetry")  # as written by an earlier hwsim
    conn.commit()
    conn.close()
    with ResultsStore(tmp_path, readonly=True) as store:
        assert store.records(telemetry=True)[0].telemetry == []
    assert load(tmp_path).telemetry.empty
    with ResultsStore(tmp_path) as store:  # a writer adds the table
        store.record(TrialRecord("new", {"lr": 0.2}, "ok", metrics={"m": 1.0}, telemetry=ROWS))
        assert len(store.records(telemetry=True)[1].telemetry) == 3


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("rows", "not a list"),
        ([1], "not a dict"),
        ([{"step": 1, "layer": "a"}], "lacks tensor"),
        ([{"step": -1, "layer": "a", "tensor": "w"}], "integer >= 0"),
        ([{"step": 1.5, "layer": "a", "tensor": "w"}], "integer >= 0"),
        ([{"step": 1, "layer": 3, "tensor": "w"}], "must be a string"),
        ([{"step": 1, "layer": "a", "tensor": "w", "flush_fraction": "x"}], "must be numbers"),
        ([{"step": 1, "layer": "a", "tensor": "w"}] * 2, "repeats step 1"),
    ],
)
def test_the_worker_rejects_bad_rows(rows, message):
    with pytest.raises(ValueError, match=message):
        check_result(TrialResult(metrics={"m": 1.0}, telemetry=rows))


def test_the_worker_passes_plain_rows():
    rows = [{"step": np.int64(1), "layer": "a", "tensor": "w", "numel": np.float32(3),
             "format": "fx8.6"}]  # fmt: skip
    out = check_result(TrialResult(metrics={"m": 1.0}, telemetry=rows))["telemetry"]
    assert out == [{"step": 1, "layer": "a", "tensor": "w", "numel": 3.0}]
    assert type(out[0]["step"]) is int
    assert check_rows(None) == []


def _train(precision, epochs=1, model_name="mlp"):
    """A tiny digits run as the classify task trains, with EpochTelemetry."""
    from models import datasets
    from models.nets import build_classifier
    from models.task_telemetry import EpochTelemetry

    split = datasets.load_digits(0)
    x, y = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
    model = build_classifier(model_name, tuple(split.x_train.shape[1:]), split.n_classes,
                             hidden=16, precision=precision, seed=0)  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    telem = EpochTelemetry(model, opt)
    for epoch in range(epochs):
        for idx in telem.last_of(datasets.batches(256, 32, 0, epoch)):
            i = torch.from_numpy(idx)
            opt.zero_grad()
            model.loss(model(x[i]), y[i]).backward()
            opt.step()
        telem.log(epoch + 1)
    return telem.close(), model


def test_a_narrow_grad_weight_format_shows_underflow_in_that_layer():
    base = dict(weight="fx16.12", activation="fx16.8")
    narrow, model = _train(hnn.Precision(**base, grad_weight="fx8.7"), epochs=2)
    wide, _ = _train(hnn.Precision(**base, grad_weight="fx16.14"), epochs=2)
    assert all(m._telemetry is None for m in model.modules() if isinstance(m, hnn.QLinear))

    def gw(rows, step):
        return {r["layer"]: r for r in rows if r["tensor"] == "grad_weight" and r["step"] == step}

    assert sorted({r["step"] for r in narrow}) == [1, 2]
    layers = list(gw(narrow, 2))
    assert len(layers) == 2
    first = layers[0]
    assert gw(narrow, 2)[first]["flush_fraction"] > 0.15
    assert gw(narrow, 2)[first]["flush_fraction"] > 10 * gw(wide, 2)[first]["flush_fraction"]
    # measured on one batch: as many weight-gradient elements as the layer has parameters
    params = sum(p.numel() for p in model.get_submodule(first).parameters())
    assert gw(narrow, 1)[first]["numel"] == params
    assert {r["tensor"] for r in narrow} == {"weight", "activation", "grad_weight", "update"}
    stalls = [r["stall_fraction"] for r in narrow if r["tensor"] == "update"]
    assert stalls and all(0 <= s <= 1 for s in stalls)


SPEC = """
[study]
name = "telemetry"
task = "models.tasks:classify"
[fixed]
dataset = "digits"
model = "mlp"
hidden = 16
epochs = 2
batch_size = 64
activation = "fx8.4"
[grid]
weight = ["fx8.6", "fx16.12"]
[plot]
metric = "test_accuracy"
goal = "max"
bits = "weight"
"""


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    folder = tmp_path_factory.mktemp("telemetry")
    spec = folder / "spec.toml"
    spec.write_text(SPEC)
    out = folder / "out"
    argv = ["sweep", str(spec), "--out", str(out), "--workers", "0", "--no-progress", "--no-plot"]
    assert main(argv) == 0
    return out


def test_the_classify_task_stores_rows_per_logged_step(swept):
    trials, history, frame = load(swept).trials, load(swept).history, load(swept).telemetry
    assert len(trials) == 2 and len(history) == 4
    # lr is a parameter and logged per epoch: one column, the logged value
    assert history.columns.is_unique and frame.columns.is_unique and "lr" in history
    assert set(frame["step"]) == {1, 2}
    assert {"hash", "weight", "layer", "tensor", "flush_fraction", "saturation_fraction",
            "stall_fraction", "numel"} <= set(frame.columns)  # fmt: skip
    assert set(frame["tensor"]) == {"weight", "activation", "update"}
    assert len(frame) == 2 * 2 * 2 * 3  # trials x steps x layers x tensors
    # the coarser weight grid stalls more of the updates
    fx8 = frame[(frame["weight"] == "fx8.6") & (frame["tensor"] == "update")]
    fx16 = frame[(frame["weight"] == "fx16.12") & (frame["tensor"] == "update")]
    assert fx8["stall_fraction"].mean() > fx16["stall_fraction"].mean()


def test_export_writes_the_telemetry_table(swept, tmp_path):
    target = tmp_path / "r.csv"
    assert main(["export", str(swept), "--csv", str(target)]) == 0
    with (tmp_path / "telemetry.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(load(swept).telemetry)
    assert {r["tensor"] for r in rows} == {"weight", "activation", "update"}
    pytest.importorskip("pyarrow")
    import pandas as pd

    assert len(pd.read_parquet(tmp_path / "telemetry.parquet")) == len(rows)


def test_where_the_bits_go_draws_a_chosen_trial(swept, tmp_path):
    trials = load(swept).trials
    h = trials[trials["weight"] == "fx8.6"]["hash"].iloc[0]
    for selector in (h[:6], "weight=fx8.6", None):
        files = make_plots(swept, names=["where_the_bits_go"], out=tmp_path, trial=selector)
        assert sorted(p.name for p in files) == ["where_the_bits_go.png", "where_the_bits_go.svg"]
        assert (tmp_path / "where_the_bits_go.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="matches 2 trials"):
        make_plots(swept, names=["where_the_bits_go"], out=tmp_path, trial="hidden=16")
    with pytest.raises(ValueError, match="matches no trial"):
        make_plots(swept, names=["where_the_bits_go"], out=tmp_path, trial="zzzz")
    assert main(["plot", str(swept), "--only", "where_the_bits_go", "--trial", h[:8],
                 "--out", str(tmp_path / "cli")]) == 0  # fmt: skip
    assert (tmp_path / "cli" / "where_the_bits_go.png").exists()


def test_choose_trial_and_grid():
    recs = [TrialRecord("abc", {"w": "fx8.6", "lr": 0.1}, "ok"),
            TrialRecord("abd", {"w": "fx8.6", "lr": 0.2}, "ok")]  # fmt: skip
    assert choose_trial(recs, "abd").hash == "abd"
    assert choose_trial(recs, "w=fx8.6, lr=0.1").hash == "abc"
    for bad, message in (("ab", "matches 2"), ("lr", "matches no"), ("=3", "not key=value"),
                         ("", "hash prefix")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            choose_trial(recs, bad)
    layers, tensors, values = grid(ROWS, "flush_fraction")
    assert layers == ["net.0"] and tensors == ["weight"] and values.tolist() == [[0.2]]
