"""The results store: one SQLite file per study output folder (``DIR/results.sqlite``).

Each finished trial is written in one transaction, keyed by its config hash,
so a sweep killed at any moment (SIGKILL included) keeps every trial it
finished and, when re-run, skips them: nothing lost, nothing counted twice.
Only a sweep's main process writes; workers return results to it. Before a
trial runs, the sweep *claims* it with a lease (table ``claims``), so several
sweeps on one folder split the work; a lease whose holder died (its process
is gone, or it stopped renewing) is taken over.

Readers (``status``, ``export``, ``plot``, ``report``) open the store
read-only (``readonly=True``), so a read-only mount or another user's folder
can be read. Every storage fault (disk full, a corrupt file, a lock held too
long, ``--out`` naming a file) is a :class:`StoreError` with one line saying
what is wrong and what to do; a store is never replaced or rewritten.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     store = ResultsStore(d)
...     store.record(TrialRecord("abc", {"lr": 0.1}, "ok", metrics={"loss": 0.5}))
...     [r.metrics for r in store.records()]
...     store.close()
True
[{'loss': 0.5}]
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import random
import sqlite3
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from hwsim.study import store_telemetry

DB_NAME = "results.sqlite"
STATUSES = ("ok", "failed", "diverged", "timeout")
LOCK_TIMEOUT_S = 60.0

_TRIALS = """
CREATE TABLE IF NOT EXISTS {name} (
    hash TEXT PRIMARY KEY,
    role TEXT NOT NULL DEFAULT 'grid',
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed', 'diverged', 'timeout')),
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
"""
_SCHEMA = (
    _TRIALS.format(name="trials")
    + """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS claims (hash TEXT PRIMARY KEY, owner TEXT NOT NULL, expires REAL NOT NULL);
"""
)
_COLUMNS = (
    "hash, role, config, status, error, metrics, history, info, started, finished, wall_s, "
    "hwsim_version, worker"
)


class StoreError(RuntimeError):
    """A storage fault, as one line: what is wrong and what to do."""


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
    telemetry: list[dict] = dataclasses.field(default_factory=list)  # store_telemetry rows

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"trial status must be one of {STATUSES}, got {self.status!r}")


def _fault(path: Path, exc: BaseException, committed: str = "") -> StoreError:
    """Translate an sqlite3/OS error into a one-line StoreError."""
    text = str(exc)
    low = text.lower()
    keep = committed or "trials committed so far are kept"
    if "disk is full" in low or "no space" in low or getattr(exc, "errno", None) == 28:
        return StoreError(f"disk full writing {path}: free space, then run again ({keep})")
    if "locked" in low or "busy" in low:
        return StoreError(
            f"{path} is locked by another process for over {LOCK_TIMEOUT_S:.0f} s: "
            f"wait for it or stop it, then run again ({keep})"
        )
    if "not a database" in low or "malformed" in low or "corrupt" in low:
        return StoreError(
            f"{path} is not a readable results store ({text}); it was left untouched: "
            "move it away or restore it from a backup, or use another --out folder"
        )
    if "readonly" in low or "read-only" in low or "permission" in low or "unable to open" in low:
        return StoreError(
            f"cannot write {path} ({text}): use a folder you can write (--out), "
            "or read it with status/export/plot/report"
        )
    return StoreError(f"results store {path}: {text}")


class ResultsStore:
    """SQLite results of one study folder.

    create: make the folder and tables when missing (a writer); otherwise the
        store must exist. readonly: open read-only (every reader command); the
        results file is never changed (where the folder is writable SQLite may
        create its -wal/-shm index files beside it, as any WAL reader does; on a
        read-only folder nothing is created).
    """

    def __init__(self, folder: str | Path, *, create: bool = True, readonly: bool = False):
        self.folder = Path(folder)
        self.path = self.folder / DB_NAME
        self.readonly = readonly
        if self.folder.exists() and not self.folder.is_dir():
            raise StoreError(f"{str(self.folder)!r} is a file, not a folder: name a folder (--out)")
        if (readonly or not create) and not self.path.exists():
            raise FileNotFoundError(
                f"no results in {str(self.folder)!r}: {DB_NAME} is missing (run `hwsim sweep` first)"
            )
        if self.path.exists() and not self.path.is_file():
            raise StoreError(f"{self.path} is not a file: move it away or use another --out")
        try:
            if readonly:
                self.conn = self._open_readonly()
            else:
                self.folder.mkdir(parents=True, exist_ok=True)
                self.conn = self._open_writer()
        except (sqlite3.Error, OSError) as exc:
            raise _fault(self.path, exc) from None

    def _open_writer(self) -> sqlite3.Connection:
        # Two sweeps opening a new store at once can deadlock while it is still in
        # rollback mode (both hold SHARED, both want EXCLUSIVE to switch to WAL): SQLite
        # then answers "locked" at once instead of calling the busy handler. Such a
        # refusal is retried until LOCK_TIMEOUT_S, like any other wait for the lock.
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            # isolation_level=None: explicit BEGIN/COMMIT around each trial
            conn = sqlite3.connect(self.path, timeout=LOCK_TIMEOUT_S, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                # WAL + NORMAL: a commit is in the OS once COMMIT returns, so it survives the
                # sweep being killed (SIGKILL included); only a power loss can drop the last
                # few commits, and those trials are simply run again on resume. FULL (an
                # fsync per trial) cost ~4 ms a trial, as much as an LMS trial itself.
                conn.execute("PRAGMA synchronous=NORMAL")
                self.conn = conn
                self._check()
                self._migrate()
                conn.executescript(_SCHEMA + store_telemetry.SCHEMA)
                return conn
            except sqlite3.OperationalError as exc:
                conn.close()
                low = str(exc).lower()
                if ("locked" not in low and "busy" not in low) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01 + 0.05 * random.random())

    def _open_readonly(self) -> sqlite3.Connection:
        uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=LOCK_TIMEOUT_S, isolation_level=None)
        try:
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError as exc:
            # a WAL store on a read-only mount: SQLite cannot make its -shm file there;
            # with no writer possible the file is immutable, so read it as such
            if "unable to open" not in str(exc).lower():
                raise
            conn.close()
            conn = sqlite3.connect(uri + "&immutable=1", uri=True, isolation_level=None)
        self.conn = conn
        self._check()
        return conn

    def _check(self) -> None:
        names = {n for (n,) in self.conn.execute("SELECT name FROM sqlite_master")}
        if self.readonly and "trials" not in names:
            raise StoreError(f"{self.path} holds no results table: was it written by hwsim sweep?")

    def _migrate(self) -> None:
        # stores written before the 'timeout' status: rebuild the table with the new
        # CHECK, in one transaction (all rows kept, or nothing changed)
        row = self.conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'trials'"
        ).fetchone()
        if row is None or "'timeout'" in row[0]:
            return
        with self._transaction():
            self.conn.execute(_TRIALS.format(name="trials_v2"))
            self.conn.execute(
                f"INSERT INTO trials_v2 ({_COLUMNS}) SELECT {_COLUMNS} FROM trials ORDER BY rowid"
            )
            self.conn.execute("DROP TABLE trials")
            self.conn.execute("ALTER TABLE trials_v2 RENAME TO trials")

    # -- writing -----------------------------------------------------------------------
    def record(self, rec: TrialRecord, owner: str | None = None) -> bool:
        """Commit one finished trial (and drop its claim) in one transaction. Returns
        False (and writes nothing) when a trial with that hash is already stored."""
        row = (
            rec.hash, rec.role, _dumps(rec.config), rec.status, rec.error,
            _dumps(rec.metrics), _dumps(rec.history), _dumps(rec.info),
            rec.started, rec.finished, rec.wall_s, rec.hwsim_version, rec.worker,
        )  # fmt: skip
        with self._transaction():
            cur = self.conn.execute(
                f"INSERT OR IGNORE INTO trials ({_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            if cur.rowcount == 1 and rec.telemetry:
                store_telemetry.insert(self.conn, rec.hash, rec.telemetry)
            self.conn.execute("DELETE FROM claims WHERE hash = ?", (rec.hash,))
        return cur.rowcount == 1

    def delete(self, hashes: list[str]) -> int:
        """Forget trials (e.g. failed ones to retry). Returns how many were removed."""
        with self._transaction():
            cur = self.conn.executemany("DELETE FROM trials WHERE hash = ?", [(h,) for h in hashes])
            store_telemetry.delete(self.conn, hashes)
        return cur.rowcount

    def set_meta(self, key: str, value: Any) -> None:
        with self._transaction():
            self.conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, _dumps(value))
            )

    def add_event(self, event: dict, keep: int = 1000) -> None:
        """Append ``event`` to the meta list ``events`` (the newest ``keep`` are kept)."""
        with self._transaction():
            row = self.conn.execute("SELECT value FROM meta WHERE key = 'events'").fetchone()
            events = (json.loads(row[0]) if row else []) + [event]
            self.conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('events', ?)",
                (_dumps(events[-keep:]),),
            )

    # -- claims ------------------------------------------------------------------------
    def claim(self, hash_: str, owner: str, lease_s: float) -> str:
        """Claim a trial for ``owner``: 'claimed', 'done' (already stored) or 'busy'
        (another live owner holds it)."""
        now = time.time()
        with self._transaction():
            if self.conn.execute("SELECT 1 FROM trials WHERE hash = ?", (hash_,)).fetchone():
                return "done"
            row = self.conn.execute(
                "SELECT owner, expires FROM claims WHERE hash = ?", (hash_,)
            ).fetchone()
            if row is not None and row[0] != owner and row[1] > now and owner_alive(row[0]):
                return "busy"
            self.conn.execute(
                "INSERT OR REPLACE INTO claims (hash, owner, expires) VALUES (?, ?, ?)",
                (hash_, owner, now + lease_s),
            )
        return "claimed"

    def renew(self, owner: str, lease_s: float) -> None:
        with self._transaction():
            self.conn.execute(
                "UPDATE claims SET expires = ? WHERE owner = ?", (time.time() + lease_s, owner)
            )

    def release(self, owner: str, hashes: list[str] | None = None) -> None:
        with self._transaction():
            if hashes is None:
                self.conn.execute("DELETE FROM claims WHERE owner = ?", (owner,))
            else:
                self.conn.executemany(
                    "DELETE FROM claims WHERE hash = ? AND owner = ?", [(h, owner) for h in hashes]
                )

    @contextlib.contextmanager
    def _transaction(self):
        """BEGIN IMMEDIATE ... COMMIT; any sqlite fault inside becomes a StoreError."""
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _fault(self.path, exc) from None
        try:
            yield
            conn.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise _fault(self.path, exc) from None
            raise

    # -- reading -----------------------------------------------------------------------
    def _query(self, sql: str, args: tuple = ()) -> list:
        try:
            return self.conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise _fault(self.path, exc) from None

    def get_meta(self, key: str, default: Any = None) -> Any:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else default

    def finished_hashes(self) -> set[str]:
        return {h for (h,) in self._query("SELECT hash FROM trials")}

    def is_finished(self, hash_: str) -> bool:
        return bool(self._query("SELECT 1 FROM trials WHERE hash = ?", (hash_,)))

    def records(self, status: str | None = None, telemetry: bool = False) -> list[TrialRecord]:
        """Every stored trial (optionally of one status), in the order they finished;
        ``telemetry``: with their telemetry rows (else empty)."""
        query = (
            "SELECT hash, config, status, error, metrics, history, info, role, started, "
            "finished, wall_s, hwsim_version, worker FROM trials"
        )
        args: tuple = ()
        if status is not None:
            query += " WHERE status = ?"
            args = (status,)
        out = []
        for row in self._query(query + " ORDER BY finished, rowid", args):
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
        if telemetry:
            rows = store_telemetry.read(self.conn)
            for rec in out:
                rec.telemetry = rows.get(rec.hash, [])
        return out

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for status, n in self._query("SELECT status, COUNT(*) FROM trials GROUP BY status"):
            counts[status] = n
        return counts

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_owner() -> str:
    """A claim owner id for this process: ``host:pid:start``."""
    return f"{platform.node()}:{os.getpid()}:{time.time():.6f}"


def owner_alive(owner: str) -> bool:
    """False when ``owner`` is a process of this host that no longer exists."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != platform.node() or not pid.isdigit():
        return True  # another machine: only its lease expiring says it died
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_finite_metrics(metrics: dict[str, Any]) -> bool:
    """True when every numeric metric is finite."""
    for value in metrics.values():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                return False
    return True


def now() -> float:
    return time.time()
