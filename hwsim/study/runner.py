"""The runner: expand a spec into trials, run the unfinished ones, store each result.

Trials run in a local process pool (``workers`` processes; the Numba on-disk
cache is shared, so each kernel compiles once per machine), or on an existing
Dask cluster (``dask_address``, or a ``distributed.Client`` object). Each
finished trial is committed to the store by this process as soon as it
arrives; a trial that raises is recorded as ``failed`` with its traceback, a
trial that goes non-finite as ``diverged``, and the sweep continues.

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
import platform
import sys
import time
import traceback
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from hwsim.study.spec import StudySpec, Trial, import_task
from hwsim.study.store import ResultsStore, TrialRecord, is_finite_metrics


@dataclasses.dataclass
class SweepSummary:
    """What a sweep did: counts over the whole study and over this run."""

    total: int
    skipped: int  # already in the store when the sweep started
    ran: int
    ok: int  # in the store after the sweep, over the whole study
    failed: int
    diverged: int
    wall_s: float
    out: Path

    def __str__(self) -> str:
        bad = self.failed + self.diverged
        return (
            f"{self.total} trials: {self.ok} ok, {self.failed} failed, {self.diverged} diverged "
            f"({self.ran} run now, {self.skipped} already done) in {self.wall_s:.1f} s"
            + (f"; {bad} did not finish cleanly (see `hwsim status {self.out}`)" if bad else "")
        )


def _version() -> str:
    try:
        import hwsim

        return hwsim.__version__
    except Exception:  # pragma: no cover
        return "unknown"


def run_trial(task_ref: str, config: dict, search_paths: tuple[str, ...] = ()) -> dict:
    """Run one trial in the current process; never raises for a trial's own error.

    Returns a plain dict (picklable, JSON-ready): status, error, metrics,
    history, info, started, finished, wall_s, hwsim_version, worker.
    """
    from hwsim.errors import NonFiniteError
    from hwsim.study.spec import _params_types, coerce_value

    started = time.time()
    t0 = time.perf_counter()
    out: dict[str, Any] = {
        "status": "ok", "error": None, "metrics": {}, "history": [], "info": {},
        "started": started, "hwsim_version": _version(),
        "worker": f"{platform.node()}:{os.getpid()}",
    }  # fmt: skip
    try:
        task = import_task(task_ref, search_paths)
        types_ = _params_types(task)
        params = task.params(**{k: coerce_value(types_[k], v) for k, v in config.items()})
        _limit_threads()
        result = task.fn(params)
        out["metrics"] = {k: _scalar(v) for k, v in dict(result.metrics).items()}
        out["history"] = [{k: _scalar(v) for k, v in row.items()} for row in result.history]
        out["info"] = dict(result.info)
        if result.diverged or not is_finite_metrics(out["metrics"]):
            out["status"] = "diverged"
            out["error"] = (
                out["info"].get("error") or "non-finite metric or the task reported divergence"
            )
    except NonFiniteError as exc:
        out["status"] = "diverged"
        out["error"] = f"{type(exc).__name__}: {exc}"
    except BaseException as exc:  # noqa: BLE001 - a trial's failure must not stop the sweep
        if isinstance(exc, KeyboardInterrupt):
            raise
        out["status"] = "failed"
        out["error"] = "".join(traceback.format_exception(exc)).strip()
    out["finished"] = time.time()
    out["wall_s"] = time.perf_counter() - t0
    return out


def _scalar(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return float(value)


_WORKER_THREADS: int | None = None  # set in pool workers: torch threads per trial


def _init_worker(search_paths: tuple[str, ...], threads: int) -> None:
    global _WORKER_THREADS
    for path in reversed(search_paths):
        if path not in sys.path:
            sys.path.insert(0, path)
    _WORKER_THREADS = threads


def _worker_threads() -> int:
    value = os.environ.get("HWSIM_WORKER_THREADS", "1")
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(f"HWSIM_WORKER_THREADS must be an integer >= 1, got {value!r}")
    return threads


def _limit_threads() -> None:
    # share the cores between the pool's workers instead of oversubscribing them
    # (N workers x all-core thread pools ran 2-3x slower in all); torch is only
    # touched if the task imported it
    if _WORKER_THREADS is None:
        return
    numba = sys.modules.get("numba")
    if numba is not None and numba.get_num_threads() != _WORKER_THREADS:
        numba.set_num_threads(min(_WORKER_THREADS, numba.config.NUMBA_NUM_THREADS))
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != _WORKER_THREADS:
        torch.set_num_threads(_WORKER_THREADS)


# -- executors: each yields (trial, result dict) as trials finish -------------------------


def _run_inline(spec: StudySpec, trials: list[Trial]) -> Iterator[tuple[Trial, dict]]:
    for trial in trials:
        yield trial, run_trial(spec.task_ref, trial.config, spec.search_paths)


def _crashed(error: str) -> dict:
    return {
        "status": "failed", "error": error, "metrics": {}, "history": [], "info": {},
        "started": None, "finished": time.time(), "wall_s": None,
        "hwsim_version": _version(), "worker": None,
    }  # fmt: skip


def _run_pool(spec: StudySpec, trials: list[Trial], workers: int) -> Iterator[tuple[Trial, dict]]:
    """Run trials in ``workers`` spawned processes, yielding each as it finishes.

    If a worker process dies (a segfault, the OOM killer), the trials that were
    in flight are suspects: each is re-run alone in a fresh process, and only
    one that kills its process again is recorded as failed.
    """
    import multiprocessing as mp
    from concurrent.futures.process import BrokenProcessPool

    # spawn: no fork of a process holding torch/OpenMP threads
    ctx = mp.get_context("spawn")
    queue = list(reversed(trials))
    suspects: list[Trial] = []
    # one thread per worker unless asked: sweeps are parallel over trials, and the
    # Numba/torch thread pools on small per-trial arrays mostly spin (lms_precision
    # with 1 worker: 33 s at 1 thread, 191 s at 2 threads on a busy 2-core machine)
    threads = _worker_threads()
    while queue or suspects:
        alone = bool(suspects)
        source = suspects if alone else queue
        width = 1 if alone else workers
        pending: dict = {}
        pool = ProcessPoolExecutor(
            max_workers=width, mp_context=ctx, initializer=_init_worker,
            initargs=(spec.search_paths, threads),
        )  # fmt: skip
        broken = clean = False
        try:
            # at most 2 trials per worker in flight (suspects: 1 in all), so workers never
            # idle and a kill loses little queued work
            while (source or pending) and not broken:
                while source and len(pending) < (1 if alone else 2 * width):
                    try:
                        fut = pool.submit(
                            run_trial, spec.task_ref, source[-1].config, spec.search_paths
                        )
                    except BrokenProcessPool:
                        broken = True
                        break
                    pending[fut] = source.pop()
                if broken:
                    break
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    try:
                        result = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        continue
                    yield pending.pop(fut), result
            if broken and alone:
                (trial,) = pending.values()
                yield trial, _crashed("the worker process died while running this trial (alone)")
            elif broken:
                suspects.extend(pending.values())
            clean = not broken
        finally:
            if not clean:  # a crash or an interrupt (Ctrl-C): abandon the running trials
                for proc in list((getattr(pool, "_processes", None) or {}).values()):
                    proc.terminate()
            pool.shutdown(wait=clean, cancel_futures=True)


def _run_dask(spec: StudySpec, trials: list[Trial], client) -> Iterator[tuple[Trial, dict]]:
    from distributed import as_completed

    futures = {}
    for trial in trials:
        fut = client.submit(
            run_trial, spec.task_ref, trial.config, spec.search_paths,
            key=f"hwsim-trial-{trial.hash}", pure=False,
        )  # fmt: skip
        futures[fut] = trial
    for fut in as_completed(list(futures)):
        trial = futures[fut]
        try:
            result = fut.result()
        except Exception as exc:
            result = _crashed(f"dask task error: {type(exc).__name__}: {exc}")
        yield trial, result


# -- the sweep -------------------------------------------------------------------------


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
) -> SweepSummary:
    """Run every trial of ``spec`` not yet in ``out/results.sqlite``.

    workers: local processes (default: the number of CPU cores, at most the
        number of trials); 0 runs trials in this process (debugging).
    dask_address / dask_client: run on a Dask cluster instead.
    retry_failed: run failed and diverged trials again instead of skipping them.
    limit: run at most this many trials (then stop; re-run to continue).
    """
    if workers is not None and (
        isinstance(workers, bool) or not isinstance(workers, int) or workers < 0
    ):
        raise ValueError(f"workers must be an integer >= 0, got {workers!r}")
    t0 = time.perf_counter()
    out = Path(out)
    store = ResultsStore(out)
    try:
        previous = store.get_meta("spec")
        if previous is not None and previous.get("task") != spec.task_ref:
            raise ValueError(
                f"{str(out)!r} holds results of task {previous.get('task')!r}, not "
                f"{spec.task_ref!r}; use another --out folder"
            )
        store.set_meta("spec", spec.to_json())
        trials = spec.trials()
        store.set_meta("trial_hashes", [t.hash for t in trials])
        if retry_failed:
            bad = [r.hash for r in store.records() if r.status != "ok"]
            store.delete(bad)
        done = store.finished_hashes()
        todo = [t for t in trials if t.hash not in done]
        skipped = len(trials) - len(todo)
        if limit is not None:
            todo = todo[:limit]
        client = dask_client
        own_client = False
        if todo and client is None and dask_address is not None:
            try:
                from distributed import Client
            except ImportError:
                raise RuntimeError(
                    f"--dask {dask_address} needs the 'distributed' package: "
                    "pip install 'hwsim[dask]' (or run without --dask for local processes)"
                ) from None
            client = Client(dask_address)
            own_client = True
        if not todo:
            results: Iterable = ()
        elif client is not None:
            results = _run_dask(spec, todo, client)
        else:
            n = (os.cpu_count() or 1) if workers is None else workers
            n = min(n, len(todo))
            results = _run_inline(spec, todo) if n == 0 else _run_pool(spec, todo, n)
        bar = _progress_bar(len(todo), spec.name, progress)
        failed_now = 0
        try:
            for trial, res in results:
                store.record(TrialRecord(trial.hash, trial.config, role=trial.role, **res))
                if res["status"] != "ok":
                    failed_now += 1
                if bar is not None:
                    bar.set_postfix(failed=failed_now, refresh=False)
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            if own_client:
                client.close()
        hashes = {t.hash for t in trials}
        counts = {"ok": 0, "failed": 0, "diverged": 0}
        for rec in store.records():
            if rec.hash in hashes:
                counts[rec.status] += 1
        return SweepSummary(
            total=len(trials), skipped=skipped, ran=len(todo), wall_s=time.perf_counter() - t0,
            out=out, **counts,
        )  # fmt: skip
    finally:
        store.close()


def _progress_bar(total: int, name: str, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=name, unit="trial", dynamic_ncols=True, smoothing=0.1)


def estimate(trials: list[Trial]) -> str:
    """A one-line description of a sweep's size."""
    roles = {}
    for t in trials:
        roles[t.role] = roles.get(t.role, 0) + 1
    return ", ".join(f"{n} {role}" for role, n in roles.items()) + " trials"


__all__ = ["run_sweep", "run_trial", "SweepSummary", "estimate"]
