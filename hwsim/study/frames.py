"""Results as data: the tidy tables of a study folder, as rows or pandas DataFrames.

One definition of the layout, used by ``hwsim export`` (CSV, and Parquet where
pyarrow is installed) and by :func:`load`:

- trials: one row per stored trial: ``hash``, ``role``, ``status``, every config
  parameter, every metric, ``wall_s``, ``hwsim_version``, ``error`` (its last line);
- history: one row per logged step: ``hash``, ``status``, every config
  parameter, ``step``, every logged quantity;
- telemetry: one row per logged step, layer and tensor: ``hash``, ``status``,
  every config parameter, ``step``, ``layer``, ``tensor``, every telemetry
  metric (``numel``, ``flush_fraction``, ``saturation_fraction``,
  ``stall_fraction``, ...; NaN where a row lacks it).

>>> from hwsim.study import load                       # doctest: +SKIP
>>> trials, history = load("results/quickstart")       # doctest: +SKIP
>>> trials.groupby(["weight", "rounding"])["weight_error_db"].mean()  # doctest: +SKIP
>>> load("results/digits").telemetry                  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, NamedTuple

from hwsim.study.store import ResultsStore, TrialRecord


class Tables(NamedTuple):
    columns: list[str]
    rows: list[list[Any]]
    history_columns: list[str]
    history_rows: list[list[Any]]
    telemetry_columns: list[str]
    telemetry_rows: list[list[Any]]


def tables(records: list[TrialRecord]) -> Tables:
    """The tidy tables of ``records`` (column names and rows); telemetry from
    the records' ``telemetry`` (``ResultsStore.records(telemetry=True)``)."""
    config_keys = sorted({k for r in records for k in r.config})
    metric_keys = sorted({k for r in records for k in r.metrics})
    columns = ["hash", "role", "status", *config_keys, *metric_keys, "wall_s", "hwsim_version",
               "error"]  # fmt: skip
    rows = []
    for r in records:
        error = (r.error or "").strip().splitlines()
        rows.append(
            [r.hash, r.role, r.status, *(r.config.get(k) for k in config_keys),
             *(r.metrics.get(k) for k in metric_keys), r.wall_s, r.hwsim_version,
             error[-1] if error else ""]
        )  # fmt: skip
    history_keys = sorted({k for r in records for row in r.history for k in row} - {"step"})
    # a parameter also logged per step (lr under a schedule) is a column once: the logged value
    config_h = [k for k in config_keys if k not in history_keys]
    history_columns = ["hash", "status", *config_h, "step", *history_keys]
    history_rows = [
        [r.hash, r.status, *(r.config.get(k) for k in config_h), row.get("step"),
         *(row.get(k) for k in history_keys)]
        for r in records
        for row in r.history
    ]  # fmt: skip
    keys = ("step", "layer", "tensor")
    metric_names = sorted({k for r in records for row in r.telemetry for k in row} - set(keys))
    config_t = [k for k in config_keys if k not in metric_names and k not in keys]
    telemetry_columns = ["hash", "status", *config_t, *keys, *metric_names]
    telemetry_rows = [
        [r.hash, r.status, *(r.config.get(k) for k in config_t), *(row[k] for k in keys),
         *(row.get(k, math.nan) for k in metric_names)]
        for r in records
        for row in r.telemetry
    ]  # fmt: skip
    return Tables(columns, rows, history_columns, history_rows, telemetry_columns, telemetry_rows)


def _pandas():
    try:
        import pandas
    except ImportError:
        raise ImportError(
            "hwsim.study.load needs pandas: pip install pandas (or read the CSV tables "
            "that `hwsim export DIR --csv` writes)"
        ) from None
    return pandas


class Results(tuple):
    """``(trials, history)`` (so ``trials, history = load(DIR)`` unpacks as
    before), with ``.trials``, ``.history`` and ``.telemetry`` DataFrames."""

    def __new__(cls, trials, history, telemetry):
        self = super().__new__(cls, (trials, history))
        self.trials, self.history, self.telemetry = trials, history, telemetry
        return self


def load(folder: str | Path, status: str | None = None) -> Results:
    """The trials, the logged history and the per-layer telemetry of a study
    folder as pandas DataFrames (read-only: the store is not changed). ``status`` keeps only trials with that
    status (``"ok"``, ``"failed"``, ...). Config values keep their stored types
    (a float-format parameter is ``None``), metrics are floats (NaN included)."""
    pd = _pandas()
    with ResultsStore(folder, readonly=True) as store:
        records = store.records(status, telemetry=True)
    t = tables(records)
    return Results(
        pd.DataFrame(t.rows, columns=t.columns),
        pd.DataFrame(t.history_rows, columns=t.history_columns),
        pd.DataFrame(t.telemetry_rows, columns=t.telemetry_columns),
    )


def parquet_ready(frame):
    """A copy whose object columns Parquet can store: a column that mixes types
    (``"fx8.6"`` and ``None``, numbers and text, tables) becomes text, JSON for
    tables and lists, empty for None."""
    out = frame.copy()
    for name in out.columns:
        col = out[name]
        if col.dtype != object:
            continue
        kinds = {type(v) for v in col if v is not None}
        if len(kinds) <= 1 and not kinds & {dict, list, tuple}:
            continue
        out[name] = [
            "" if v is None else json.dumps(v, sort_keys=True) if isinstance(v, (dict, list, tuple))
            else str(v)
            for v in col
        ]  # fmt: skip
    return out
