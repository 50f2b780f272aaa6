"""The results store: one SQLite file per study output folder (``DIR/results.sqlite``).

Each finished trial is written in one transaction, keyed by its config hash,
so a sweep killed at any moment (SIGKILL included) keeps every trial it
finished and, when re-run, skips them: nothing lost, nothing counted twice.
Only the sweep's main process writes; workers return results to it.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     store = ResultsStore(d)
...     store.record(TrialRecord("abc", {"lr": 0.1}, "ok", metrics={"loss": 0.5}))
...     [r.metrics for r in store.records()]
...     store.close()
[{'loss': 0.5}]
"""

from __future__ import annotations

import dataclasses
import json
import math
import sqlite3
import time
from pathlib import Path
from typing import Any

DB_NAME = "results.sqlite"
STATUSES = ("ok", "failed", "diverged")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
    hash TEXT PRIMARY KEY,
    role TEXT NOT NULL DEFAULT 'grid',
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed', 'diverged')),
    error TEXT,
    metrics TEXT NOT NULL,
    history TEXT NOT NULL,
    info TEXT NOT NULL,
    started REAL,
    finished REAL,
    wall_s REAL,
    hwsim_version TEXT,
    worker TEXT
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _dumps(value: Any) -> str:
    # NaN/inf are legitimate metric values (a diverged loss); JSON keeps them as NaN/Infinity
    return json.dumps(value, sort_keys=True, default=_default)


def _default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


@dataclasses.dataclass
class TrialRecord:
    """One finished trial as stored."""

    hash: str
    config: dict
    status: str
    error: str | None = None
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    role: str = "grid"
    started: float | None = None
    finished: float | None = None
    wall_s: float | None = None
    hwsim_version: str | None = None
    worker: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"trial status must be one of {STATUSES}, got {self.status!r}")


class ResultsStore:
    """SQLite results of one study folder. Opening creates the folder and tables."""

    def __init__(self, folder: str | Path, *, create: bool = True):
        self.folder = Path(folder)
        self.path = self.folder / DB_NAME
        if not create and not self.path.exists():
            raise FileNotFoundError(
                f"no results in {str(self.folder)!r}: {DB_NAME} is missing (run `hwsim sweep` first)"
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: explicit BEGIN/COMMIT around each trial
        self.conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a commit is in the OS once COMMIT returns, so it survives the
        # sweep being killed (SIGKILL included); only a power loss can drop the last
        # few commits, and those trials are simply run again on resume. FULL (an
        # fsync per trial) cost ~4 ms a trial, as much as an LMS trial itself.
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(_SCHEMA)

    # -- writing -----------------------------------------------------------------------
    def record(self, rec: TrialRecord) -> bool:
        """Commit one finished trial in one transaction. Returns False (and writes
        nothing) when a trial with that hash is already stored."""
        row = (
            rec.hash, rec.role, _dumps(rec.config), rec.status, rec.error,
            _dumps(rec.metrics), _dumps(rec.history), _dumps(rec.info),
            rec.started, rec.finished, rec.wall_s, rec.hwsim_version, rec.worker,
        )  # fmt: skip
        with self._transaction():
            cur = self.conn.execute(
                "INSERT OR IGNORE INTO trials (hash, role, config, status, error, metrics, "
                "history, info, started, finished, wall_s, hwsim_version, worker) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
        return cur.rowcount == 1

    def delete(self, hashes: list[str]) -> int:
        """Forget trials (e.g. failed ones to retry). Returns how many were removed."""
        with self._transaction():
            cur = self.conn.executemany("DELETE FROM trials WHERE hash = ?", [(h,) for h in hashes])
        return cur.rowcount

    def set_meta(self, key: str, value: Any) -> None:
        with self._transaction():
            self.conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, _dumps(value))
            )

    def _transaction(self):
        conn = self.conn

        class _Tx:
            def __enter__(self_inner):
                conn.execute("BEGIN IMMEDIATE")

            def __exit__(self_inner, exc_type, exc, tb):
                conn.execute("ROLLBACK" if exc_type else "COMMIT")
                return False

        return _Tx()

    # -- reading -----------------------------------------------------------------------
    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def finished_hashes(self) -> set[str]:
        return {h for (h,) in self.conn.execute("SELECT hash FROM trials")}

    def records(self, status: str | None = None) -> list[TrialRecord]:
        """Every stored trial (optionally of one status), in the order they finished."""
        query = (
            "SELECT hash, config, status, error, metrics, history, info, role, started, "
            "finished, wall_s, hwsim_version, worker FROM trials"
        )
        args: tuple = ()
        if status is not None:
            query += " WHERE status = ?"
            args = (status,)
        out = []
        for row in self.conn.execute(query + " ORDER BY finished, rowid", args):
            h, config, st, error, metrics, history, info, role, *rest = row
            out.append(
                TrialRecord(
                    h,
                    json.loads(config),
                    st,
                    error,
                    json.loads(metrics),
                    json.loads(history),
                    json.loads(info),
                    role,
                    *rest,
                )  # fmt: skip
            )
        return out

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for status, n in self.conn.execute("SELECT status, COUNT(*) FROM trials GROUP BY status"):
            counts[status] = n
        return counts

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def is_finite_metrics(metrics: dict[str, Any]) -> bool:
    """True when every numeric metric is finite."""
    for value in metrics.values():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                return False
    return True


def now() -> float:
    return time.time()
