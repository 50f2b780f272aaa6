"""Storage faults, read-only readers, where code comes from, spec ranges and lazy grids."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from hwsim.cli import main
from hwsim.study.runner import run_sweep
from hwsim.study.spec import parse_spec
from hwsim.study.store import DB_NAME, ResultsStore, StoreError

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
QUAD = '[study]\nname = "q"\ntask = "tests.study_tasks:quadratic"\n[fixed]\nsteps = 5\n'


def quad(grid: str = "seed = [0, 1, 2]", plot: str = 'metric = "loss"') -> str:
    return QUAD + f"[grid]\n{grid}\n[plot]\n{plot}\n"


def hwsim(*args, cwd, env=ENV) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hwsim", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True)  # fmt: skip
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


# -- storage faults -------------------------------------------------------------------


def test_a_corrupt_store_is_an_error_and_left_untouched(tmp_path, capsys):
    (tmp_path / "s.toml").write_text(quad())
    out = tmp_path / "out"
    out.mkdir()
    garbage = b"this is not sqlite" * 100
    (out / DB_NAME).write_bytes(garbage)
    for argv in (["sweep", str(tmp_path / "s.toml"), "--out", str(out), "--workers", "0"],
                 ["status", str(out)], ["export", str(out)]):  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "Traceback" not in "\n".join(err) and err[-1].startswith(f"hwsim {argv[0]}: ")
        assert "is not a readable results store" in err[-1] and "left untouched" in err[-1]
    assert (out / DB_NAME).read_bytes() == garbage


def test_a_truncated_store_is_an_error_and_nothing_committed_is_lost(tmp_path, capsys):
    run_sweep(parse_spec(quad()), tmp_path, workers=0, progress=False)
    data = (tmp_path / DB_NAME).read_bytes()
    (tmp_path / DB_NAME).write_bytes(data[: len(data) // 2])
    assert main(["status", str(tmp_path)]) == 2
    assert "hwsim status:" in capsys.readouterr().err


def test_out_naming_a_file(tmp_path, capsys):
    (tmp_path / "s.toml").write_text(quad())
    (tmp_path / "afile").write_text("x")
    assert main(["sweep", str(tmp_path / "s.toml"), "--out", str(tmp_path / "afile")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "afile").read_text() == "x"


def test_a_lock_held_too_long(tmp_path, monkeypatch):
    run_sweep(parse_spec(quad()), tmp_path, workers=0, progress=False)
    monkeypatch.setattr("hwsim.study.store.LOCK_TIMEOUT_S", 0.5)
    holder = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match=r"is locked by another process for over 0 s"):
            run_sweep(parse_spec(quad("seed = [5]")), tmp_path, workers=0, progress=False)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_an_unreachable_dask_scheduler(tmp_path, capsys):
    pytest.importorskip("distributed")
    (tmp_path / "s.toml").write_text(quad())
    argv = ["sweep", str(tmp_path / "s.toml"), "--out", str(tmp_path / "o"), "--no-progress",
            "--dask", "tcp://127.0.0.1:9"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "cannot reach the Dask scheduler at 'tcp://127.0.0.1:9'" in err[-1]


def test_disk_full_is_one_line_and_keeps_committed_trials(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(
        '[study]\nname = "full"\ntask = "tests.study_tasks:misbehave"\n[fixed]\n'
        'kind = "big_history"\n[grid]\nseed = '
        + str(list(range(60)))
        + '\n[plot]\nmetric = "value"\n'
    )
    with tmpfs(tmp_path / "small", "2m") as disk:
        done = hwsim("sweep", str(spec), "--out", str(disk / "out"), "--workers", "1",
                     "--no-progress", "--no-plot", cwd=tmp_path)  # fmt: skip
        assert done.returncode == 2, done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("hwsim sweep: disk full writing") and "free space" in last
        with ResultsStore(disk / "out", readonly=True) as store:
            kept = store.records()
        assert 0 < len(kept) < 60 and all(r.status == "ok" for r in kept)


# -- read-only readers ----------------------------------------------------------------


def test_every_reader_works_on_a_read_only_mount(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(
        quad('weight = ["fx8.6", "fx10.8"]\nseed = [0, 1]', 'metric = "loss"\nbits = "weight"')
    )
    with tmpfs(tmp_path / "ro", "8m") as mnt:
        assert main(["sweep", str(spec), "--out", str(mnt / "out"), "--workers", "0",
                     "--no-progress", "--no-plot"]) == 0  # fmt: skip
        before = sorted(os.listdir(mnt / "out"))
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        elsewhere = tmp_path / "elsewhere"
        for argv in (["status", str(mnt / "out")],
                     ["export", str(mnt / "out"), "--csv", str(elsewhere / "r.csv")],
                     ["plot", str(mnt / "out"), "--out", str(elsewhere / "plots")],
                     ["report", str(mnt / "out"), "--out", str(elsewhere / "report")]):  # fmt: skip
            elsewhere.mkdir(exist_ok=True)
            done = hwsim(*argv, cwd=tmp_path)
            assert done.returncode == 0, (argv, done.stderr)
        assert (elsewhere / "r.csv").exists() and (elsewhere / "report" / "report.md").exists()
        assert (elsewhere / "plots" / "final_metric.png").exists()
        assert sorted(os.listdir(mnt / "out")) == before


def test_readers_open_the_store_read_only(tmp_path):
    run_sweep(parse_spec(quad()), tmp_path, workers=0, progress=False)
    with ResultsStore(tmp_path, readonly=True) as store:
        assert len(store.records()) == 3
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store.conn.execute("DELETE FROM trials")
    with pytest.raises(FileNotFoundError, match="run `hwsim sweep` first"):
        ResultsStore(tmp_path / "none", readonly=True)
    assert not (tmp_path / "none").exists()


def test_an_old_store_gains_the_timeout_status(tmp_path):
    conn = sqlite3.connect(tmp_path / DB_NAME)
    conn.executescript(
        "CREATE TABLE trials (hash TEXT PRIMARY KEY, role TEXT NOT NULL DEFAULT 'grid', "
        "config TEXT NOT NULL, status TEXT NOT NULL CHECK (status IN ('ok', 'failed', "
        "'diverged')), error TEXT, metrics TEXT NOT NULL, history TEXT NOT NULL, info TEXT "
        "NOT NULL, started REAL, finished REAL, wall_s REAL, hwsim_version TEXT, worker TEXT);"
        "INSERT INTO trials (hash, config, status, metrics, history, info) "
        "VALUES ('a', '{}', 'ok', '{}', '[]', '{}');"
    )
    conn.commit()
    conn.close()
    from hwsim.study.store import TrialRecord

    with ResultsStore(tmp_path) as store:
        assert store.record(TrialRecord("b", {}, "timeout", error="timed out"))
        assert [r.status for r in store.records()] == ["ok", "timeout"]
