"""A process pool built for sweeps: one trial per worker at a time, a time limit
per trial, and a worker that dies (segfault, OOM killer) is replaced while its
trial goes back into the queue.

- A trial over ``timeout_s`` is recorded as ``timeout`` with its elapsed time;
  its worker is killed and replaced, the sweep goes on.
- A worker death is recorded (``on_event``) with why it died (the signal, the
  exit status, out of memory when the cgroup's OOM-kill count rose); its trial
  is re-queued into the pool, and recorded as ``failed`` only when it kills
  ``MAX_DEATHS`` workers. A worker runs one trial at a time, so a death is never
  blamed on a trial that was not running in that worker.
- Workers die with the sweep (see :mod:`hwsim.study.worker`); on an exception
  in the sweep (Ctrl-C, SIGTERM) they are killed at once.

The trial source is a callable returning the next Trial, :data:`WAIT` (none
now, maybe later: another sweep holds the rest) or None (no more).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Iterator
from multiprocessing.connection import wait as mp_wait
from pathlib import Path
from typing import Any

from hwsim.study.worker import blank_result, worker_main

WAIT = object()
MAX_DEATHS = 2
TICK_S = 1.0


def oom_kills() -> int | None:
    """The cgroup's OOM-kill count (Linux cgroup v2), None when unknown."""
    try:
        text = Path("/sys/fs/cgroup/memory.events").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return None


def death_reason(exitcode: int | None, oom_before: int | None) -> str:
    """Why a worker died, in words."""
    if exitcode is None:
        return "it stopped answering"
    if exitcode >= 0:
        return f"it exited with status {exitcode}"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    if -exitcode == signal.SIGKILL:
        after = oom_kills()
        if oom_before is not None and after is not None and after > oom_before:
            return "it was killed by SIGKILL: out of memory (the cgroup's OOM-kill count rose)"
        return "it was killed by SIGKILL (the out-of-memory killer, or another process)"
    return f"it was killed by {name}"


class _Worker:
    def __init__(self, ctx, tasks_from: tuple[str, ...], threads: int):
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(
            target=worker_main, args=(child, os.getpid(), tasks_from, threads), daemon=True
        )
        self.proc.start()
        child.close()
        self.trial: Any = None
        self.started = 0.0

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()


def run_pool(
    task_ref: str,
    next_trial: Callable[[], Any],
    workers: int,
    *,
    tasks_from: tuple[str, ...] = (),
    threads: int = 1,
    timeout_s: float | None = None,
    on_event: Callable[[dict], None] | None = None,
    on_tick: Callable[[], None] | None = None,
) -> Iterator[tuple[Any, dict]]:
    """Yield ``(trial, result dict)`` as trials finish (see the module docstring)."""
    # spawn: no fork of a process holding torch/OpenMP threads
    ctx = mp.get_context("spawn")
    pool: list[_Worker] = []
    requeue: deque = deque()
    deaths: dict[str, list[str]] = {}
    exhausted = False
    clean = False
    try:
        while True:
            # hand a trial to every idle worker (starting workers as needed)
            while not exhausted or requeue:
                idle = [w for w in pool if w.trial is None]
                if not idle and len(pool) >= workers:
                    break
                trial = requeue.popleft() if requeue else next_trial()
                if trial is None:
                    exhausted = True
                    break
                if trial is WAIT:
                    break
                w = idle[0] if idle else _Worker(ctx, tasks_from, threads)
                if not idle:
                    pool.append(w)
                w.trial, w.started = trial, time.monotonic()
                w.conn.send((task_ref, trial.config))
            busy = [w for w in pool if w.trial is not None]
            if not busy:
                if exhausted and not requeue:
                    break
                time.sleep(TICK_S / 2)  # other sweeps hold the remaining trials
                if on_tick:
                    on_tick()
                continue
            now = time.monotonic()
            wait_s = TICK_S
            if timeout_s is not None:
                wait_s = min(wait_s, max(0.0, min(w.started + timeout_s for w in busy) - now))
            oom_before = oom_kills()
            ready = set(mp_wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], wait_s))
            for w in busy:
                if w.conn in ready:
                    try:
                        result = w.conn.recv()
                    except (EOFError, OSError):
                        result = None
                    if result is not None:
                        trial, w.trial = w.trial, None
                        yield trial, result
                        continue
                if w.conn in ready or w.proc.sentinel in ready:
                    w.proc.join(5)
                    reason = death_reason(w.proc.exitcode, oom_before)
                    yield from _died(w, reason, deaths, requeue, on_event)
                    pool.remove(w)
                    w.kill()
                elif timeout_s is not None and time.monotonic() - w.started > timeout_s:
                    elapsed = time.monotonic() - w.started
                    trial, w.trial = w.trial, None
                    pool.remove(w)
                    w.kill()
                    res = blank_result(
                        "timeout",
                        f"timed out after {elapsed:.1f} s (limit {timeout_s:g} s); "
                        "its worker was killed and replaced",
                        wall_s=elapsed,
                    )
                    yield trial, res
            if on_tick:
                on_tick()
        clean = True
    finally:
        for w in pool:
            if clean:
                try:
                    w.conn.send(None)
                except OSError:
                    pass
        for w in pool:
            if clean:
                w.proc.join(2)
            w.kill()


def _died(w: _Worker, reason: str, deaths: dict, requeue: deque, on_event) -> Iterator:
    trial = w.trial
    w.trial = None
    history = deaths.setdefault(trial.hash, [])
    history.append(reason)
    if on_event:
        on_event(
            {"time": time.time(), "event": "worker died", "pid": w.proc.pid,
             "trial": trial.hash, "reason": reason,
             "action": "re-queued" if len(history) < MAX_DEATHS else "recorded as failed"}
        )  # fmt: skip
    if len(history) < MAX_DEATHS:
        requeue.append(trial)
        return
    yield (
        trial,
        blank_result(
            "failed",
            f"the worker process died while running this trial, {len(history)} times: "
            + "; ".join(history),
        ),
    )
