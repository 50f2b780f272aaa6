"""The hwsim command line: sweep, status, export, plot, report; plot plug-ins."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hwsim.cli import main
from hwsim.study import plots as plots_mod
from hwsim.study.plots import PLOTS, StudyData, metric_label, register_overlay, register_plot

REPO = Path(__file__).resolve().parents[1]

SPEC = """
[study]
name = "cli"
task = "tests.study_tasks:quadratic"
description = "CLI test study"
[fixed]
steps = 20
[grid]
weight = ["fx6.4", "fx10.8"]
rounding = ["nearest", "stochastic"]
lr = [0.3, 0.03]
seed = [0, 1]
fail = [false, true]
[baseline]
weight = "float"
rounding = "nearest"
fail = false
[plot]
metric = "loss"
bits = "weight"
lr = "lr"
series = ["rounding"]
step_label = "step (iterations)"
"""


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    spec = folder / "spec.toml"
    spec.write_text(SPEC)
    out = folder / "out"
    assert (
        main(
            ["sweep", str(spec), "--out", str(out), "--workers", "0", "--no-progress", "--no-plot"]
        )
        == 0
    )
    return out


def test_sweep_wrote_every_trial(swept):
    data = StudyData.load(swept)
    assert len(data.records) == 32 + 4
    assert sum(r.status == "failed" for r in data.records) == 16
    assert data.spec["name"] == "cli" and data.spec["plot"]["lr"] == "lr"


def test_status(swept, capsys):
    assert main(["status", str(swept)]) == 0
    out = capsys.readouterr().out
    assert "36 of 36 trials stored: 20 ok, 16 failed, 0 diverged" in out
    assert "failed: fail=True, lr=" in out and "this trial was asked to fail" in out


def test_export_csv(swept):
    assert main(["export", str(swept), "--csv"]) == 0
    with (swept / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 36
    assert {
        "hash",
        "status",
        "weight",
        "rounding",
        "lr",
        "seed",
        "loss",
        "stall_fraction",
        "error",
    } <= set(rows[0])
    assert {r["status"] for r in rows} == {"ok", "failed"}
    assert all(
        r["error"] == "RuntimeError: this trial was asked to fail"
        for r in rows
        if r["status"] == "failed"
    )
    assert {r["weight"] for r in rows} == {"fx6.4", "fx10.8", ""}  # "" = float baseline
    with (swept / "history.csv").open() as fh:
        hist = list(csv.DictReader(fh))
    assert len(hist) == 20 * 2  # 2 logged steps per ok trial
    assert {"hash", "step", "loss", "stall_fraction", "lr"} <= set(hist[0])


def test_export_to_named_file(swept, tmp_path):
    target = tmp_path / "table.csv"
    assert main(["export", str(swept), "--csv", str(target)]) == 0
    assert target.exists() and (tmp_path / "history.csv").exists()


def test_load_gives_the_exported_tables_as_dataframes(swept):
    pd = pytest.importorskip("pandas")
    from hwsim.study import load

    db = swept / "results.sqlite"
    before = (db.stat().st_mtime_ns, db.read_bytes())
    trials, history = load(swept)
    assert (db.stat().st_mtime_ns, db.read_bytes()) == before  # read-only
    assert isinstance(trials, pd.DataFrame) and len(trials) == 36
    assert {"hash", "status", "weight", "rounding", "lr", "loss", "error"} <= set(trials.columns)
    assert set(trials["weight"].dropna()) == {"fx6.4", "fx10.8"}  # None = float baseline
    assert len(history) == 40 and {"hash", "step", "loss"} <= set(history.columns)
    ok, _ = load(swept, status="ok")
    assert len(ok) == 20 and set(ok["status"]) == {"ok"}
    # the same rows as the CSV export (one layout for both)
    assert main(["export", str(swept), "--csv"]) == 0
    csv_trials = pd.read_csv(swept / "results.csv")
    assert list(csv_trials.columns) == list(trials.columns)
    assert sorted(csv_trials["hash"]) == sorted(trials["hash"])
    with pytest.raises(FileNotFoundError, match="run `hwsim sweep` first"):
        load(swept / "nothing-here")


def test_export_writes_parquet_where_pyarrow_is_installed(swept):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    from hwsim.study import load

    assert main(["export", str(swept), "--csv"]) == 0
    table = pd.read_parquet(swept / "results.parquet")
    trials, history = load(swept)
    assert list(table.columns) == list(trials.columns) and len(table) == len(trials)
    # formats as text, the float baseline's None as a null
    assert set(table["weight"].dropna()) == {"fx6.4", "fx10.8"}
    assert table["weight"].isna().sum() == trials["weight"].isna().sum() > 0
    by_hash = table.set_index("hash")
    for _, row in trials.iterrows():
        if row["loss"] == row["loss"]:  # not NaN
            assert by_hash.loc[row["hash"], "loss"] == row["loss"]
    assert len(pd.read_parquet(swept / "history.parquet")) == len(history)


def test_plot_writes_png_and_svg(swept):
    assert main(["plot", str(swept)]) == 0
    for name in ["final_metric", "learning_curves", "heatmap", "stall_fraction"]:
        for ext in ["png", "svg"]:
            path = swept / "plots" / f"{name}.{ext}"
            assert path.exists() and path.stat().st_size > 1000, path
    svg = (swept / "plots" / "final_metric.svg").read_text()
    assert "weight word length (bits)" in svg and "float baseline" in svg
    assert "rounding=stochastic" in svg and "rounding=nearest" in svg


def test_points_pick_the_best_learning_rate_and_average_seeds(swept):
    data = StudyData.load(swept)
    pts = data.points()
    assert set(pts) == {(("rounding", "nearest"),), (("rounding", "stochastic"),)}
    for by_bits in pts.values():
        assert set(by_bits) == {6, 10}
        for bits, point in by_bits.items():
            assert len(point.values) == 2  # two seeds; failed trials excluded
            candidates = {}
            for r in data.ok():
                if data.bits_of(r.config) == bits and data.series_of(r.config) == data.series_of(
                    point.records[0].config
                ):
                    candidates.setdefault(r.config["lr"], []).append(r.metrics["loss"])
            best = min(candidates, key=lambda lr: sum(candidates[lr]) / len(candidates[lr]))
            assert point.lr == best
            assert point.mean == pytest.approx(sum(candidates[best]) / 2)


def test_report(swept):
    assert main(["report", str(swept)]) == 0
    text = (swept / "report.md").read_text()
    assert text.startswith("# Study `cli`")
    assert "20 ok, 16 failed" in text
    assert "![final_metric](plots/final_metric.png)" in text
    assert "| rounding=nearest |" in text and "6 bits" in text
    assert "Float baseline" in text and "## Failed, diverged and timed-out trials" in text
    assert "```toml" in text and 'task = "tests.study_tasks:quadratic"' in text


def test_plot_plugins_and_overlays(swept, monkeypatch):
    calls = []

    @register_plot("test_extra")
    def extra(data):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        ax.plot([1, 2], [1, 2])
        return fig

    @register_overlay("final_metric")
    def overlay(ax, data, panel):
        calls.append(panel["metric"])
        ax.axhline(0.5, label="theory")

    try:
        files = plots_mod.make_plots(swept, names=["final_metric", "test_extra"])
        assert {f.name for f in files} == {
            "final_metric.png",
            "final_metric.svg",
            "test_extra.png",
            "test_extra.svg",
        }
        assert calls == ["loss"]
        assert "theory" in (swept / "plots" / "final_metric.svg").read_text()
    finally:
        PLOTS.pop("test_extra")
        plots_mod.OVERLAYS["final_metric"].remove(overlay)
    with pytest.raises(ValueError, match="unknown plot 'nope'"):
        plots_mod.make_plots(swept, names=["nope"])
    monkeypatch.setenv("HWSIM_PLOT_PLUGINS", "no_such_plugin_module_xyz")
    with pytest.raises(ValueError, match="plot plug-in 'no_such_plugin_module_xyz' cannot be"):
        plots_mod.make_plots(swept)


def test_metric_labels_have_units():
    assert metric_label("excess_mse_db") == "excess MSE (dB)"
    assert metric_label("test_accuracy") == "test accuracy (fraction correct)"
    assert metric_label("stall_fraction").endswith("(fraction of weight updates lost)")


def test_bad_spec_exits_2_with_the_problem(tmp_path, capsys):
    spec = tmp_path / "bad.toml"
    spec.write_text(
        SPEC.replace('rounding = ["nearest", "stochastic"]', 'rounding = ["nearest", "sthocastic"]')
    )
    assert main(["sweep", str(spec), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "grid.rounding[1]" in err and "'sthocastic'" in err
    assert not (tmp_path / "o").exists()  # nothing ran, nothing written


def test_status_of_a_missing_folder(tmp_path, capsys):
    assert main(["status", str(tmp_path / "none")]) == 2
    assert "hwsim sweep" in capsys.readouterr().err


def test_dry_run_lists_trials(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC)
    assert main(["sweep", str(spec), "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 5  # the first few; the count is in stderr
    assert "32 grid, 4 baseline trials" in captured.err and "31 more (--list" in captured.err
    assert main(["sweep", str(spec), "--dry-run", "--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 36 and '"role": "baseline"' in lines[-1]


@pytest.mark.parametrize("module", ["hwsim", "hwsim.cli"])
def test_python_dash_m_entry_point(swept, module):
    done = subprocess.run(
        [sys.executable, "-m", module, "status", str(swept)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and "20 ok, 16 failed" in done.stdout


def test_a_changed_spec_shows_only_its_own_trials(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    small = SPEC.replace("fail = [false, true]", "fail = [false]").replace(
        "seed = [0, 1]", "seed = [0]"
    )
    spec.write_text(small)
    out = tmp_path / "out"
    assert (
        main(
            ["sweep", str(spec), "--out", str(out), "--workers", "0", "--no-progress", "--no-plot"]
        )
        == 0
    )
    spec.write_text(small.replace('weight = ["fx6.4", "fx10.8"]', 'weight = ["fx10.8"]'))
    assert (
        main(
            ["sweep", str(spec), "--out", str(out), "--workers", "0", "--no-progress", "--no-plot"]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "6 of 6 trials stored" in text and "(4 more stored trials belong to an earlier" in text
    data = StudyData.load(out)
    assert {r.config["weight"] for r in data.records} == {"fx10.8", None}
    assert len(StudyData.load(out, all_trials=True).records) == 10


def test_series_style_colour_by_first_field_dashes_by_the_rest():
    from hwsim.study.plots import series_style

    spec = {
        "name": "s",
        "grid": {"rounding": ["nearest", "stochastic"], "lr": [0.1, 0.01], "weight": ["fx8.6"]},
        "plot": {"metric": "loss", "bits": "weight", "series": ["rounding", "lr"]},
    }
    data = StudyData(Path("."), spec, [])
    styles = {
        (r, lr): series_style(data, (("rounding", r), ("lr", lr)))
        for r in ["nearest", "stochastic"]
        for lr in [0.1, 0.01]
    }
    assert styles["nearest", 0.1]["color"] == styles["nearest", 0.01]["color"]
    assert styles["nearest", 0.1]["color"] != styles["stochastic", 0.1]["color"]
    assert styles["nearest", 0.1]["linestyle"] == styles["stochastic", 0.1]["linestyle"]
    assert styles["nearest", 0.1]["linestyle"] != styles["nearest", 0.01]["linestyle"]


def test_heatmap_puts_a_series_lr_field_on_the_x_axis_not_in_the_panels():
    import numpy as np

    from hwsim.study.plots import heatmap
    from hwsim.study.store import TrialRecord

    grid = {"weight": ["fx6.4", "fx8.6"], "rounding": ["nearest", "stochastic"],
            "step": [0.003, 0.01, 0.03]}  # fmt: skip
    spec = {"name": "h", "grid": grid,
            "plot": {"metric": "loss", "bits": "weight", "lr": "step",
                     "series": ["rounding", "step"]}}  # fmt: skip
    records = [
        TrialRecord(
            f"{w}{r}{s}", {"weight": w, "rounding": r, "step": s}, "ok", metrics={"loss": 1.0 + s}
        )  # fmt: skip
        for w in grid["weight"]
        for r in grid["rounding"]
        for s in grid["step"]
    ]
    fig = heatmap(StudyData(Path("."), spec, records))
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert sorted(ax.get_title() for ax in panels) == ["rounding=nearest", "rounding=stochastic"]
    for ax in panels:
        cells = np.asarray(ax.get_images()[0].get_array())
        assert cells.shape == (2, 3) and not np.isnan(cells).any()  # bits x step, all filled
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0.003", "0.01", "0.03"]


def test_dask_without_distributed_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import builtins

    from hwsim import cli

    real_import = builtins.__import__

    def no_distributed(name, *args, **kwargs):
        if name == "distributed" or name.startswith("distributed."):
            raise ImportError("No module named 'distributed'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_distributed)
    spec = Path(__file__).parent.parent / "studies" / "quickstart.toml"
    code = cli.main(
        ["sweep", str(spec), "--out", str(tmp_path / "out"), "--dask", "tcp://127.0.0.1:1"]
    )
    assert code == 2
    assert "needs the 'distributed' package: pip install 'hwsim[dask]'" in capsys.readouterr().err
