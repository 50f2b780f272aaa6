"""Telemetry rows of a trial in the results store (table ``telemetry``), long
format: one row per (trial hash, step, layer, tensor, metric) with its value.

A task reports them in :attr:`hwsim.study.task.TrialResult.telemetry` as dicts
``{"step": int, "layer": str, "tensor": str, <metric>: number, ...}`` (e.g.
``hwsim.nn.Telemetry.rows()`` plus the step); the worker checks them with
:func:`check_rows`. Stores written before this table have none: writers
create it on open, readers find no rows.
"""

from __future__ import annotations

import math
import sqlite3
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS telemetry (
    hash TEXT NOT NULL,
    step INTEGER NOT NULL,
    layer TEXT NOT NULL,
    tensor TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (hash, step, layer, tensor, metric)
);
"""
KEYS = ("step", "layer", "tensor")
TEXT = ("format",)  # text a row may carry but the store drops: the trial's config says it


def check_rows(rows: Any) -> list[dict]:
    """Plain telemetry rows, or ValueError naming the first bad one and what is allowed."""
    if rows is None:
        return []
    if not isinstance(rows, list | tuple):
        raise ValueError(f"telemetry is {type(rows).__name__}, not a list of dicts")
    out, seen = [], set()
    for i, row in enumerate(rows):
        where = f"telemetry[{i}]"
        if not isinstance(row, dict):
            raise ValueError(f"{where} is {type(row).__name__}, not a dict")
        missing = [k for k in KEYS if k not in row]
        if missing:
            raise ValueError(
                f"{where} lacks {', '.join(missing)}: every row needs step, layer, tensor"
            )
        step = row["step"]
        if hasattr(step, "item"):
            step = step.item()
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"{where}['step'] must be an integer >= 0, got {row['step']!r}")
        for k in ("layer", "tensor"):
            if not isinstance(row[k], str):
                raise ValueError(f"{where}[{k!r}] must be a string, got {row[k]!r}")
        key = (step, row["layer"], row["tensor"])
        if key in seen:
            raise ValueError(f"{where} repeats step {step}, layer {key[1]!r}, tensor {key[2]!r}")
        seen.add(key)
        plain = {"step": step, "layer": row["layer"], "tensor": row["tensor"]}
        for k, v in row.items():
            if k in KEYS or k in TEXT:
                continue
            if hasattr(v, "item") and not isinstance(v, str):
                v = v.item()
            if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, int | float):
                raise ValueError(f"{where}[{k!r}] is {v!r:.60}: metrics must be numbers")
            plain[k] = float(v)
        out.append(plain)
    return out


def insert(conn: sqlite3.Connection, hash_: str, rows: list[dict]) -> None:
    """Write ``rows`` of trial ``hash_`` (inside the caller's transaction)."""
    conn.executemany(
        "INSERT OR REPLACE INTO telemetry (hash, step, layer, tensor, metric, value) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [
            (hash_, r["step"], r["layer"], r["tensor"], k, None if math.isnan(v) else v)
            for r in rows
            for k, v in r.items()
            if k not in KEYS and k not in TEXT
        ],
    )


def has_table(conn: sqlite3.Connection) -> bool:
    return bool(
        conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'telemetry'"
        ).fetchall()
    )


def read(conn: sqlite3.Connection, hashes: list[str] | None = None) -> dict[str, list[dict]]:
    """Per trial hash, its rows (wide again: one dict per step, layer, tensor),
    in step order; an older store without the table gives none."""
    if not has_table(conn):
        return {}
    query = "SELECT hash, step, layer, tensor, metric, value FROM telemetry"
    args: tuple = ()
    if hashes is not None:
        query += f" WHERE hash IN ({', '.join('?' * len(hashes))})"
        args = tuple(hashes)
    out: dict[str, dict[tuple, dict]] = {}
    for h, step, layer, tensor, metric, value in conn.execute(query + " ORDER BY rowid", args):
        row = out.setdefault(h, {}).setdefault(
            (step, layer, tensor), {"step": step, "layer": layer, "tensor": tensor}
        )
        row[metric] = math.nan if value is None else value
    return {h: sorted(rows.values(), key=lambda r: r["step"]) for h, rows in out.items()}


def delete(conn: sqlite3.Connection, hashes: list[str]) -> None:
    if has_table(conn):
        conn.executemany("DELETE FROM telemetry WHERE hash = ?", [(h,) for h in hashes])
