"""The study engine on real processes: no orphans on any signal, per-trial
timeouts, poison trials, worker deaths, concurrent sweeps on one folder."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from hwsim.study.runner import run_sweep
from hwsim.study.spec import parse_spec
from hwsim.study.store import DB_NAME, ResultsStore

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def misbehave_spec(grid: str, fixed: str = "", study: str = "") -> str:
    return (
        f'[study]\nname = "mis"\ntask = "tests.study_tasks:misbehave"\n{study}\n'
        f'[fixed]\n{fixed}\n[grid]\n{grid}\n[plot]\nmetric = "value"\n'
    )


def records(out: Path) -> dict:
    with ResultsStore(out, readonly=True) as store:
        return {r.config["seed"]: r for r in store.records()}


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def _count_rows(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP])
def test_killing_the_sweep_leaves_no_process(tmp_path, sig):
    spec = tmp_path / "s.toml"
    spec.write_text(misbehave_spec("seed = " + str(list(range(40))), "sleep = 0.4"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "hwsim", "sweep", str(spec), "--out", str(out),
           "--workers", "2", "--no-progress", "--no-plot"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=ENV, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while _count_rows(out / DB_NAME) < 2:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the sweep made no progress"
            time.sleep(0.05)
        family = descendants(proc.pid)
        assert len(family) >= 2  # the workers (and the resource tracker)
        os.kill(proc.pid, sig)  # the parent only, as timeout/Slurm/systemd do
        code = proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(alive(p) for p in family) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [p for p in family if alive(p)]
        assert not left, f"processes of the sweep still alive 10 s after {sig.name}: {left}"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        err = proc.stderr.read()
        proc.stderr.close()
    if sig != signal.SIGKILL:  # handled like Ctrl-C: clean stop, resumable
        assert code == 128 + sig, err
        assert f"stopped by {sig.name}" in err and "run the same command to resume" in err
    with sqlite3.connect(out / DB_NAME) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT COUNT(*) FROM trials WHERE status != 'ok'").fetchone() == (0,)
    done = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "40 trials: 40 ok" in done.stderr


def test_a_hanging_trial_is_recorded_as_timeout_and_the_rest_finish(tmp_path):
    spec = parse_spec(misbehave_spec('seed = [0, 1, 2, 3, 4, 5]\nkind = ["ok", "hang"]'))
    t0 = time.perf_counter()
    summary = run_sweep(spec, tmp_path, workers=2, progress=False, timeout_s=3.0)
    wall = time.perf_counter() - t0
    assert (summary.ok, summary.timeout, summary.failed) == (6, 6, 0)
    with ResultsStore(tmp_path, readonly=True) as store:
        for r in store.records():
            if r.config["kind"] == "hang":
                assert r.status == "timeout" and 3.0 <= r.wall_s < 10.0
                assert "timed out after" in r.error and "limit 3 s" in r.error
            else:
                assert r.status == "ok"
    assert wall < 120  # six hangs on two workers: each killed and replaced


def test_timeout_from_the_spec_and_its_range():
    text = misbehave_spec("seed = [0]", study="timeout_s = 0.5")
    assert parse_spec(text).timeout_s == 0.5
    for bad in ("0", "-1", '"1"', "1e9", "true"):
        with pytest.raises(ValueError, match=r"study.timeout_s must be a number of seconds"):
            parse_spec(misbehave_spec("seed = [0]", study=f"timeout_s = {bad}"))
    with pytest.raises(ValueError, match="needs worker processes"):
        run_sweep(parse_spec(text), "/tmp/unused-hwsim", workers=0, progress=False)


def test_poison_trials_become_failures_with_the_reason(tmp_path):
    kinds = ["ok", "lambda_info", "string_metric", "keyboard_interrupt", "system_exit",
             "bad_history", "not_a_result"]  # fmt: skip
    spec = parse_spec(misbehave_spec(f"kind = {kinds!r}".replace("'", '"')))
    summary = run_sweep(spec, tmp_path, workers=2, progress=False)
    assert (summary.ok, summary.failed) == (1, 6)
    with ResultsStore(tmp_path, readonly=True) as store:
        by_kind = {r.config["kind"]: r for r in store.records()}
    reasons = {
        "lambda_info": "info is not JSON-serializable",
        "string_metric": "metric 'value' is str 'high', not a number",
        "keyboard_interrupt": "KeyboardInterrupt",
        "system_exit": "SystemExit: 4",
        "bad_history": "history[0]['loss'] is object",
        "not_a_result": "the task returned dict, not a TrialResult",
    }
    for kind, reason in reasons.items():
        assert by_kind[kind].status == "failed" and reason in by_kind[kind].error, kind
        assert by_kind[kind].metrics == {}
    # the stored results plot and report (nothing that is not a number got in)
    from hwsim.study.report import write_report

    assert write_report(tmp_path).exists()


def test_a_worker_killed_from_outside_is_replaced_and_its_trial_rerun(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(misbehave_spec("seed = [0, 1, 2, 3]", "sleep = 3.0"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "hwsim", "sweep", str(spec), "--out", str(out),
           "--workers", "2", "--no-progress", "--no-plot"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stderr=subprocess.PIPE, text=True)
    victim = None
    deadline = time.monotonic() + 60
    while victim is None and time.monotonic() < deadline:
        for pid in descendants(proc.pid):
            if "worker_main" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace") or (
                "multiprocessing" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
                and "resource_tracker"
                not in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
            ):
                victim = pid
                break
        time.sleep(0.1)
    assert victim is not None
    time.sleep(1.5)  # mid-trial
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "4 trials: 4 ok" in err
    with ResultsStore(out, readonly=True) as store:
        events = store.get_meta("events")
    assert len(events) == 1 and events[0]["action"] == "re-queued"
    assert events[0]["reason"].startswith("it was killed by SIGKILL")
    status = subprocess.run([sys.executable, "-m", "hwsim", "status", str(out)], env=ENV,
                            capture_output=True, text=True)  # fmt: skip
    assert "1 worker process(es) died; the last: it was killed by SIGKILL" in status.stdout


def test_two_sweeps_on_one_folder_run_every_trial_exactly_once(tmp_path):
    log = tmp_path / "runs.log"
    spec = tmp_path / "s.toml"
    spec.write_text(misbehave_spec("seed = " + str(list(range(24))), f'sleep = 0.3\nlog = "{log}"'))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "hwsim", "sweep", str(spec), "--out", str(out),
           "--workers", "1", "--no-progress", "--no-plot"]  # fmt: skip
    procs = [
        subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs
    runs = Counter(int(line.split()[0]) for line in log.read_text().splitlines())
    assert sorted(runs) == list(range(24)) and set(runs.values()) == {1}, runs
    pids = Counter(r.worker for r in records(out).values())
    assert len(pids) == 2, pids  # both sweeps did part of the work
    assert all("24 trials: 24 ok" in e for e in errs), errs
    with ResultsStore(out, readonly=True) as store:
        assert store.conn.execute("SELECT COUNT(*) FROM claims").fetchone() == (0,)


def test_a_sweep_and_a_dask_run_on_one_folder_split_the_work(tmp_path):
    distributed = pytest.importorskip("distributed")
    log = tmp_path / "runs.log"
    text = misbehave_spec("seed = " + str(list(range(16))), f'sleep = 0.3\nlog = "{log}"')
    (tmp_path / "s.toml").write_text(text)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "hwsim", "sweep", str(tmp_path / "s.toml"), "--out", str(out),
           "--workers", "1", "--no-progress", "--no-plot"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not log.exists() and time.monotonic() < deadline:  # the sweep has started work
        time.sleep(0.05)
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster, distributed.Client(cluster) as client:  # fmt: skip
        summary = run_sweep(parse_spec(text), out, dask_client=client, progress=False)
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 0, err
    runs = Counter(int(line.split()[0]) for line in log.read_text().splitlines())
    assert sorted(runs) == list(range(16)) and set(runs.values()) == {1}, runs
    assert 0 < summary.ran < 16 and summary.ok == 16
