"""The runner: failures and divergence recorded, resume, SIGKILL mid-sweep, Dask = local pool."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hwsim.study.runner import run_sweep, run_trial
from hwsim.study.spec import parse_spec
from hwsim.study.store import DB_NAME, ResultsStore

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}  # tests.study_tasks: named explicitly

SPEC = """
[study]
name = "runner"
task = "tests.study_tasks:quadratic"
[fixed]
steps = 30
[grid]
weight = ["fx8.6", "fx12.10"]
rounding = ["nearest", "stochastic"]
seed = [0, 1]
[baseline]
weight = "float"
rounding = "nearest"
[plot]
metric = "loss"
bits = "weight"
"""

BAD = """
[study]
name = "bad"
task = "tests.study_tasks:quadratic"
[fixed]
steps = 20
weight = "fx10.8"
[grid]
fail = [false, true]
diverge = [false, true]
nonfinite = [false, true]
[plot]
metric = "loss"
"""


def by_hash(folder) -> dict:
    with ResultsStore(folder, create=False) as store:
        return {r.hash: r for r in store.records()}


def test_run_trial_reports_status_without_raising():
    ok = run_trial("tests.study_tasks:quadratic", {"steps": 5, "weight": "fx8.6"})
    assert ok["status"] == "ok" and ok["error"] is None and len(ok["history"]) == 1
    assert ok["wall_s"] >= 0 and ok["hwsim_version"]
    failed = run_trial("tests.study_tasks:quadratic", {"fail": True})
    assert failed["status"] == "failed" and "this trial was asked to fail" in failed["error"]
    assert "Traceback" in failed["error"]
    diverged = run_trial("tests.study_tasks:quadratic", {"diverge": True, "steps": 20})
    assert diverged["status"] == "diverged" and not math.isfinite(diverged["metrics"]["loss"])
    nonfinite = run_trial("tests.study_tasks:quadratic", {"nonfinite": True, "weight": "fx8.6"})
    assert nonfinite["status"] == "diverged" and "NonFiniteError" in nonfinite["error"]


@pytest.mark.parametrize("workers", [0, 2])
def test_failed_and_diverged_trials_are_recorded_and_the_sweep_finishes(tmp_path, workers):
    spec = parse_spec(BAD)
    summary = run_sweep(spec, tmp_path, workers=workers, progress=False)
    assert summary.total == 8 and summary.ran == 8
    # fail wins over everything; diverge (inf loss) and nonfinite (NaN into quantize) diverge
    assert (summary.ok, summary.failed, summary.diverged) == (1, 4, 3)
    records = list(by_hash(tmp_path).values())
    assert len(records) == 8
    for r in records:
        expected = (
            "failed" if r.config["fail"]
            else "diverged" if r.config["diverge"] or r.config["nonfinite"]
            else "ok"
        )  # fmt: skip
        assert r.status == expected, r.config
        assert (r.error is None) == (expected == "ok")
    assert "failed" in str(summary) and "did not finish cleanly" in str(summary)


def test_resume_skips_finished_trials_and_retry_failed_reruns_them(tmp_path):
    spec = parse_spec(BAD)
    first = run_sweep(spec, tmp_path, workers=0, progress=False, limit=3)
    assert first.ran == 3 and first.ok + first.failed + first.diverged == 3
    before = by_hash(tmp_path)
    second = run_sweep(spec, tmp_path, workers=0, progress=False)
    assert second.skipped == 3 and second.ran == 5
    after = by_hash(tmp_path)
    assert len(after) == 8
    for h, rec in before.items():  # untouched
        assert after[h].finished == rec.finished
    third = run_sweep(spec, tmp_path, workers=0, progress=False)
    assert third.ran == 0 and third.skipped == 8
    retry = run_sweep(spec, tmp_path, workers=0, progress=False, retry_failed=True)
    assert retry.ran == 7 and retry.skipped == 1 and len(by_hash(tmp_path)) == 8


def test_a_folder_of_another_task_is_refused(tmp_path):
    run_sweep(parse_spec(BAD), tmp_path, workers=0, progress=False, limit=1)
    other = parse_spec(
        SPEC.replace("tests.study_tasks:quadratic", "tests.study_tasks:quadratic_alias")
    )
    with pytest.raises(ValueError, match="holds results of task"):
        run_sweep(other, tmp_path, workers=0, progress=False)


def test_local_pool_equals_inline_for_the_same_seeds(tmp_path):
    spec = parse_spec(SPEC)
    run_sweep(spec, tmp_path / "inline", workers=0, progress=False)
    run_sweep(spec, tmp_path / "pool", workers=2, progress=False)
    a, b = by_hash(tmp_path / "inline"), by_hash(tmp_path / "pool")
    assert set(a) == set(b) and len(a) == 10
    for h in a:
        assert a[h].metrics == b[h].metrics and a[h].history == b[h].history


def test_dask_local_cluster_equals_local_pool(tmp_path):
    distributed = pytest.importorskip("distributed")
    spec = parse_spec(SPEC)
    run_sweep(spec, tmp_path / "pool", workers=2, progress=False)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster, distributed.Client(cluster) as client:  # fmt: skip
        summary = run_sweep(spec, tmp_path / "dask", dask_client=client, progress=False)
        assert summary.ok == 10
        # by address too, as `hwsim sweep --dask ADDRESS` does (nothing left to run: resume)
        again = run_sweep(
            spec, tmp_path / "dask", dask_address=cluster.scheduler_address, progress=False
        )
        assert again.ran == 0 and again.skipped == 10
    a, b = by_hash(tmp_path / "pool"), by_hash(tmp_path / "dask")
    assert set(a) == set(b) and len(a) == 10
    for h in a:
        assert a[h].metrics == b[h].metrics and a[h].history == b[h].history
        assert a[h].status == b[h].status == "ok"


def _count_rows(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(db, timeout=5)
        try:
            return conn.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return 0


def test_sigkill_mid_sweep_loses_nothing_and_counts_nothing_twice(tmp_path):
    spec_path = tmp_path / "slow.toml"
    spec_path.write_text(
        """
        [study]
        name = "slow"
        task = "tests.study_tasks:quadratic"
        [fixed]
        steps = 10
        sleep = 0.25
        [grid]
        seed = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
        [plot]
        metric = "loss"
        """
    )
    out = tmp_path / "out"
    db = out / DB_NAME
    cmd = [sys.executable, "-m", "hwsim.cli", "sweep", str(spec_path), "--out", str(out),
           "--workers", "2", "--no-progress", "--no-plot"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, start_new_session=True, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while _count_rows(db) < 3:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the sweep made no progress"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # the runner dies mid-sweep, trials in flight
        proc.wait()
    finally:
        try:  # the orphaned pool workers
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.stderr.close()
    killed_at = by_hash(out)
    assert 3 <= len(killed_at) < 16, "the kill should land mid-sweep"
    done = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "16 ok" in done.stderr and f"{len(killed_at)} already done" in done.stderr
    final = by_hash(out)
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT hash, COUNT(*) FROM trials GROUP BY hash").fetchall()
    seeds = sorted(
        json_seed
        for (json_seed,) in conn.execute("SELECT json_extract(config, '$.seed') FROM trials")
    )
    conn.close()
    assert len(rows) == 16 and all(n == 1 for _, n in rows)
    assert seeds == list(range(16))  # every trial exactly once
    for h, rec in killed_at.items():  # finished before the kill: kept, not re-run
        assert final[h].finished == rec.finished and final[h].worker == rec.worker


def test_a_worker_process_that_dies_is_recorded_and_the_rest_finish(tmp_path):
    spec = parse_spec(
        """
        [study]
        name = "crash"
        task = "tests.study_tasks:quadratic"
        [fixed]
        steps = 10
        [grid]
        seed = [0, 1, 2]
        crash = [false, true]  # interleaved: innocent trials are in flight when workers die
        [plot]
        metric = "loss"
        """
    )
    summary = run_sweep(spec, tmp_path, workers=2, progress=False)
    assert (summary.ok, summary.failed, summary.diverged) == (3, 3, 0)
    for r in by_hash(tmp_path).values():
        assert r.status == ("failed" if r.config["crash"] else "ok")
        if r.config["crash"]:
            assert "worker process died" in r.error and "2 times" in r.error
            assert "exited with status 3" in r.error
    with ResultsStore(tmp_path) as store:
        events = store.get_meta("events")
    # each crashing trial killed two workers: re-queued once, then recorded as failed
    assert len(events) == 6 and all(e["reason"] == "it exited with status 3" for e in events)
    assert sorted(e["action"] for e in events) == ["re-queued"] * 3 + ["recorded as failed"] * 3
