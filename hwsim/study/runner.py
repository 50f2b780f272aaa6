"""The runner: stream a spec's trials, claim and run the unfinished ones, store each result.

Trials are generated one at a time (memory stays flat in the grid size) and
each is *claimed* in the store before it runs (a lease renewed while it
runs), so several sweeps, or a sweep and a Dask run, on one folder split the
work with nothing done twice. They run in a local pool of worker processes
(:mod:`hwsim.study.pool`: per-trial time limit, dead workers replaced and
their trials re-queued), or on an existing Dask cluster (``dask_address``, or
a ``distributed.Client`` object). Each finished trial is committed to the
store by this process as soon as it arrives; a trial that raises is recorded
as ``failed`` with its traceback, one that goes non-finite as ``diverged``,
one over its time limit as ``timeout``, and the sweep continues.

>>> from hwsim.study.spec import parse_spec
>>> import tempfile
>>> spec = parse_spec('''
... [study]
... name = "doc"
... task = "tests.study_tasks:quadratic"
... [grid]
... seed = [0, 1]
... [plot]
... metric = "loss"
... ''')
>>> with tempfile.TemporaryDirectory() as d:
...     summary = run_sweep(spec, d, workers=0, progress=False)
>>> summary.ok, summary.failed
(2, 0)
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hwsim.study.pool import WAIT, run_pool
from hwsim.study.spec import MAX_TRIALS, StudySpec, Trial
from hwsim.study.store import ResultsStore, StoreError, TrialRecord, make_owner
from hwsim.study.worker import blank_result, run_trial

LEASE_S = 60.0  # a claim not renewed for this long is taken over
HASHES_KEPT = 1_000_000  # trial hashes stored for plots (bigger grids: not stored)


@dataclasses.dataclass
class SweepSummary:
    """What a sweep did: counts over the whole study and over this run."""

    total: int
    skipped: int  # already in the store when the sweep started (or run by another sweep)
    ran: int
    ok: int  # in the store after the sweep, over the whole study
    failed: int
    diverged: int
    wall_s: float
    out: Path
    timeout: int = 0

    def __str__(self) -> str:
        bad = self.failed + self.diverged + self.timeout
        return (
            f"{self.total} trials: {self.ok} ok, {self.failed} failed, {self.diverged} diverged, "
            f"{self.timeout} timeout ({self.ran} run now, {self.skipped} already done) "
            f"in {self.wall_s:.1f} s"
            + (f"; {bad} did not finish cleanly (see `hwsim status {self.out}`)" if bad else "")
        )


def _worker_threads() -> int:
    value = os.environ.get("HWSIM_WORKER_THREADS", "1")
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(f"HWSIM_WORKER_THREADS must be an integer >= 1, got {value!r}")
    return threads


class _Source:
    """The trials this sweep should run, claimed one at a time as the pool asks."""

    def __init__(self, spec: StudySpec, store: ResultsStore, owner: str, limit: int | None):
        self.it = spec.iter_trials()
        self.store, self.owner, self.limit = store, owner, limit
        self.busy: list[Trial] = []  # held by another live sweep: retried later
        self.given = 0
        self.skipped = 0
        self.last_retry = 0.0

    def _take(self, trial: Trial) -> Any:
        state = self.store.claim(trial.hash, self.owner, LEASE_S)
        if state == "claimed":
            self.given += 1
            return trial
        if state == "busy":
            self.busy.append(trial)
        else:
            self.skipped += 1
        return None

    def __call__(self) -> Any:
        if self.limit is not None and self.given >= self.limit:
            return None
        for trial in self.it:
            if self.store.is_finished(trial.hash):
                self.skipped += 1
                continue
            got = self._take(trial)
            if got is not None:
                return got
        if not self.busy:
            return None
        if time.monotonic() - self.last_retry < 1.0:
            return WAIT
        self.last_retry = time.monotonic()
        pending, self.busy = self.busy, []
        for i, trial in enumerate(pending):
            got = self._take(trial)
            if got is not None:
                self.busy.extend(pending[i + 1 :])
                return got
        return WAIT if self.busy else None


class _Renewer:
    """Renews this sweep's leases from a thread with its own connection."""

    def __init__(self, folder: Path, owner: str):
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=self._run, args=(folder, owner), name="hwsim-lease", daemon=True
        )
        self.thread.start()

    def _run(self, folder: Path, owner: str) -> None:
        store = None
        try:
            store = ResultsStore(folder)
            while not self.stop.wait(LEASE_S / 4):
                store.renew(owner, LEASE_S)
        except StoreError:  # the main loop reports storage faults
            pass
        finally:
            if store is not None:
                store.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def _run_inline(spec: StudySpec, source: Callable) -> Iterator[tuple[Trial, dict]]:
    while (trial := source()) is not None:
        if trial is WAIT:
            time.sleep(0.5)
            continue
        yield trial, run_trial(spec.task_ref, trial.config, spec.tasks_from, inline=True)


def _run_dask(spec: StudySpec, source: Callable, client, window: int) -> Iterator:
    from distributed import as_completed

    futures: dict = {}
    done = as_completed()

    def fill() -> bool:
        while len(futures) < window:
            trial = source()
            if trial is None or trial is WAIT:
                return trial is WAIT
            fut = client.submit(
                run_trial, spec.task_ref, trial.config, spec.tasks_from,
                key=f"hwsim-trial-{trial.hash}-{time.time_ns()}", pure=False,
            )  # fmt: skip
            futures[fut] = trial
            done.add(fut)
        return False

    waiting = fill()
    while futures or waiting:
        if not futures:
            time.sleep(0.5)
            waiting = fill()
            continue
        fut = next(done)
        trial = futures.pop(fut)
        try:
            result = fut.result()
        except Exception as exc:  # noqa: BLE001 - recorded with the trial
            result = blank_result("failed", f"dask task error: {type(exc).__name__}: {exc}")
        yield trial, result
        waiting = fill()


def _connect_dask(address: str):
    try:
        from distributed import Client
    except ImportError:
        raise RuntimeError(
            f"--dask {address} needs the 'distributed' package: "
            "pip install 'hwsim[dask]' (or run without --dask for local processes)"
        ) from None
    try:
        return Client(address, timeout="10s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise RuntimeError(
            f"cannot reach the Dask scheduler at {address!r} ({type(exc).__name__}: {exc}); "
            "check the address and that the scheduler runs, or run without --dask"
        ) from None


def run_sweep(
    spec: StudySpec,
    out: str | Path,
    *,
    workers: int | None = None,
    dask_address: str | None = None,
    dask_client=None,
    progress: bool = True,
    retry_failed: bool = False,
    limit: int | None = None,
    timeout_s: float | None = None,
    allow_large: bool = False,
) -> SweepSummary:
    """Run every trial of ``spec`` not yet in ``out/results.sqlite``.

    workers: local processes (default: the number of CPU cores, at most the
        number of trials); 0 runs trials in this process (debugging; no time limit).
    dask_address / dask_client: run on a Dask cluster instead.
    retry_failed: run failed, diverged and timed-out trials again instead of skipping them.
    limit: run at most this many trials (then stop; re-run to continue).
    timeout_s: per-trial time limit in seconds (default: the spec's ``timeout_s``).
    allow_large: needed for a grid of more than ``MAX_TRIALS`` trials.
    Raises StoreError for a storage fault, RuntimeError for an unreachable Dask.
    """
    if workers is not None and (
        isinstance(workers, bool) or not isinstance(workers, int) or workers < 0
    ):
        raise ValueError(f"workers must be an integer >= 0, got {workers!r}")
    timeout_s = spec.timeout_s if timeout_s is None else timeout_s
    if timeout_s is not None and not (isinstance(timeout_s, int | float) and timeout_s > 0):
        raise ValueError(f"trial timeout must be a number of seconds > 0, got {timeout_s!r}")
    total = spec.count()
    if total > MAX_TRIALS and not allow_large:
        raise ValueError(
            f"the grid has {total} trials, more than {MAX_TRIALS}: pass --allow-large "
            "(allow_large=True) to run it"
        )
    t0 = time.perf_counter()
    out = Path(out)
    store = ResultsStore(out)
    owner = make_owner()
    renewer = None
    client, own_client = dask_client, False
    try:
        previous = store.get_meta("spec")
        if previous is not None and previous.get("task") != spec.task_ref:
            raise ValueError(
                f"{str(out)!r} holds results of task {previous.get('task')!r}, not "
                f"{spec.task_ref!r}; use another --out folder"
            )
        store.set_meta("spec", spec.to_json())
        store.set_meta("trial_count", total)
        if total <= HASHES_KEPT:
            store.set_meta("trial_hashes", [t.hash for t in spec.iter_trials()])
            if spec.cases:  # the [[cases]] label of each trial, for plots and reports
                store.set_meta("trial_cases", {t.hash: t.case for t in spec.iter_trials()})
        if retry_failed:
            store.delete([r.hash for r in store.records() if r.status != "ok"])
        source = _Source(spec, store, owner, limit)
        renewer = _Renewer(out, owner)
        if client is None and dask_address is not None:
            client, own_client = _connect_dask(dask_address), True
        n = (os.cpu_count() or 1) if workers is None else workers
        n = min(n, total)
        if client is not None:
            if timeout_s is not None:
                print(
                    f"hwsim: the trial timeout ({timeout_s:g} s) is not enforced on Dask; "
                    "use the scheduler's own limits",
                    file=sys.stderr,
                )
            results = _run_dask(spec, source, client, window=2 * max(1, n))
        elif n == 0:
            if timeout_s is not None:
                raise ValueError("a trial timeout needs worker processes (workers >= 1)")
            results = _run_inline(spec, source)
        else:
            results = run_pool(
                spec.task_ref, source, n, tasks_from=spec.tasks_from, threads=_worker_threads(),
                timeout_s=timeout_s, on_event=store.add_event,
            )  # fmt: skip
        ran = _consume(results, store, spec, total - len(store.finished_hashes()), progress)
        counts = {"ok": 0, "failed": 0, "diverged": 0, "timeout": 0}
        for status, k in _study_counts(store, spec, total).items():
            counts[status] += k
        return SweepSummary(
            total=total, skipped=source.skipped, ran=ran,
            wall_s=time.perf_counter() - t0, out=out, **counts,
        )  # fmt: skip
    finally:
        if renewer is not None:
            renewer.close()
        try:
            store.release(owner)
        except StoreError:
            pass
        store.close()
        if own_client:
            client.close()


def _consume(results, store: ResultsStore, spec: StudySpec, todo: int, progress: bool) -> int:
    bar = _progress_bar(max(todo, 0), spec.name, progress)
    ran = failed_now = 0
    try:
        for trial, res in results:
            store.record(TrialRecord(trial.hash, trial.config, role=trial.role, **res))
            ran += 1
            if res["status"] != "ok":
                failed_now += 1
            if bar is not None:
                bar.set_postfix(failed=failed_now, refresh=False)
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return ran


def _study_counts(store: ResultsStore, spec: StudySpec, total: int) -> dict[str, int]:
    hashes = store.get_meta("trial_hashes") if total <= HASHES_KEPT else None
    if hashes is None:
        return store.counts()
    wanted = set(hashes)
    counts: dict[str, int] = {}
    for rec in store.records():
        if rec.hash in wanted:
            counts[rec.status] = counts.get(rec.status, 0) + 1
    return counts


def _progress_bar(total: int, name: str, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=name, unit="trial", dynamic_ncols=True, smoothing=0.1)


def estimate(spec: StudySpec) -> str:
    """A one-line description of a sweep's size, from the grid's shape."""
    return ", ".join(f"{n} {role}" for role, n in spec.count_by_role().items()) + " trials"


__all__ = ["run_sweep", "run_trial", "SweepSummary", "estimate", "LEASE_S"]
