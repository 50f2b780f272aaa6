"""What runs inside a worker process: one trial at a time, its result validated.

A worker never outlives the sweep that started it: it asks the kernel to kill
it when its parent dies (``prctl(PR_SET_PDEATHSIG, SIGKILL)`` on Linux) and a
watchdog thread polls its parent's pid as a fallback (other systems, or a
parent that died before the request took effect). It ignores Ctrl-C (the
sweep handles that and stops its workers), and anything a task does -
raising, ``KeyboardInterrupt``, ``SystemExit``, returning a result that is not
plain numbers and JSON - becomes that trial's recorded failure, so one bad
trial never stops a sweep.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import sys
import threading
import time
import traceback
from typing import Any

WATCHDOG_S = 0.5
_WORKER_THREADS: int | None = None  # set in pool workers: torch/numba threads per trial


def _version() -> str:
    try:
        import hwsim

        return hwsim.__version__
    except Exception:  # pragma: no cover
        return "unknown"


def blank_result(status: str, error: str | None, wall_s: float | None = None) -> dict:
    return {
        "status": status, "error": error, "metrics": {}, "history": [], "info": {},
        "started": None, "finished": time.time(), "wall_s": wall_s,
        "hwsim_version": _version(), "worker": None,
    }  # fmt: skip


def _number(where: str, value: Any) -> float | int:
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, TypeError):
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where} is {type(value).__name__} {value!r:.60}, not a number")
    return value


def _plain(value: Any) -> Any:
    """numpy/torch scalars and arrays as plain numbers and lists; anything else fails."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def check_result(result: Any) -> dict:
    """Plain, JSON-ready metrics/history/info of a task's result; ValueError naming the
    first bad entry (a string metric, an info value JSON cannot hold, ...)."""
    from hwsim.study.task import TrialResult

    if not isinstance(result, TrialResult):
        raise ValueError(f"the task returned {type(result).__name__}, not a TrialResult")
    if not isinstance(result.metrics, dict):
        raise ValueError(f"metrics is {type(result.metrics).__name__}, not a dict")
    metrics = {}
    for k, v in result.metrics.items():
        if not isinstance(k, str):
            raise ValueError(f"metric name {k!r} is not a string")
        metrics[k] = _number(f"metric {k!r}", v)
    history = []
    for i, row in enumerate(result.history or []):
        if not isinstance(row, dict):
            raise ValueError(f"history[{i}] is {type(row).__name__}, not a dict")
        history.append({str(k): _number(f"history[{i}][{k!r}]", v) for k, v in row.items()})
    info = result.info or {}
    try:
        info = json.loads(json.dumps(info, allow_nan=True, default=_plain))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"info is not JSON-serializable: {exc}") from None
    if not isinstance(info, dict):
        raise ValueError(f"info is {type(info).__name__}, not a dict")
    from hwsim.study.store_telemetry import check_rows

    return {"metrics": metrics, "history": history, "info": info, "diverged": result.diverged,
            "telemetry": check_rows(result.telemetry)}  # fmt: skip


def run_trial(task_ref: str, config: dict, tasks_from: tuple[str, ...] = (), *, inline=False):
    """Run one trial in the current process; never raises for a trial's own error
    (``inline``: a KeyboardInterrupt is the user's Ctrl-C and stops the sweep).

    Returns a plain dict (picklable, JSON-ready): status, error, metrics,
    history, info, started, finished, wall_s, hwsim_version, worker.
    """
    from hwsim.errors import NonFiniteError
    from hwsim.study.spec import _params_types, import_task
    from hwsim.study.store import is_finite_metrics
    from hwsim.study.values import coerce_value

    started = time.time()
    t0 = time.perf_counter()
    out: dict[str, Any] = {
        "status": "ok", "error": None, "metrics": {}, "history": [], "info": {},
        "started": started, "hwsim_version": _version(),
        "worker": f"{platform.node()}:{os.getpid()}",
    }  # fmt: skip
    try:
        task = import_task(task_ref, tasks_from)
        types_ = _params_types(task)
        params = task.params(**{k: coerce_value(types_[k], v) for k, v in config.items()})
        _limit_threads()
        checked = check_result(task.fn(params))
        out.update({k: checked[k] for k in ("metrics", "history", "info", "telemetry")})
        if checked["diverged"] or not is_finite_metrics(out["metrics"]):
            out["status"] = "diverged"
            error = out["info"].get("error")
            out["error"] = (
                error
                if isinstance(error, str)
                else "non-finite metric or the task reported divergence"
            )
    except NonFiniteError as exc:
        out["status"] = "diverged"
        out["error"] = f"{type(exc).__name__}: {exc}"
    except BaseException as exc:  # noqa: BLE001 - a trial's failure must not stop the sweep
        if inline and isinstance(exc, KeyboardInterrupt):
            raise
        out.update(status="failed", metrics={}, history=[], info={}, telemetry=[])
        out["error"] = "".join(traceback.format_exception(exc)).strip()
    out["finished"] = time.time()
    out["wall_s"] = time.perf_counter() - t0
    return out


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


def die_with_parent(parent_pid: int) -> None:
    """Exit when ``parent_pid`` is no longer this process's parent."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            PR_SET_PDEATHSIG = 1
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - the watchdog still runs
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(WATCHDOG_S)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="hwsim-parent-watchdog", daemon=True).start()


def worker_main(conn, parent_pid: int, tasks_from: tuple[str, ...], threads: int) -> None:
    """A pool worker: receive (task_ref, config), send back the checked result dict."""
    global _WORKER_THREADS
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER_THREADS = threads
    from hwsim.study.sources import add_tasks_from

    add_tasks_from(tasks_from)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        task_ref, config = msg
        result = run_trial(task_ref, config, tasks_from)
        try:
            conn.send(result)
        except Exception as exc:  # noqa: BLE001 - checked results pickle; this is a last guard
            conn.send(blank_result("failed", f"the trial's result could not be sent: {exc}"))
