"""The ``hwsim`` command line.

    hwsim sweep SPEC --out DIR [--workers N] [--dask ADDRESS]   run (or resume) a study
    hwsim status DIR                                             trial counts, failures
    hwsim export DIR --csv                      DIR/results.csv, history.csv, telemetry.csv (+ .parquet)
    hwsim plot DIR                                               DIR/plots/*.png and *.svg
    hwsim report DIR                                             DIR/report.md with the plots
    hwsim search SPEC --out DIR                                  fewest bits per tensor within tolerance

``python -m hwsim ...`` works the same. Task and plot-plugin code comes only from
installed packages, ``hwsim.tasks`` entry points and folders named with
``--tasks-from DIR`` (see :mod:`hwsim.study.sources`). Every fault the user can
fix (a bad spec, a storage fault, an unreachable Dask) is one message and exit
status 2; a sweep stopped by Ctrl-C exits 130, by SIGTERM/SIGHUP 128 + signal.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import signal
import sys
from pathlib import Path


def _stop_on_signals() -> None:
    """SIGTERM and SIGHUP (timeout, Slurm, systemd, docker stop, a closed terminal)
    stop the sweep as Ctrl-C does: workers killed, committed trials kept."""

    def handler(signum, frame):
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)  # one clean shutdown, not a second one inside it
        raise _Stopped(signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


class _Stopped(KeyboardInterrupt):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _cmd_sweep(args) -> int:
    from hwsim.study.runner import estimate, run_sweep
    from hwsim.study.spec import MAX_TRIALS, SpecError, load_spec

    try:
        spec = load_spec(args.spec, tasks_from=args.tasks_from)
    except SpecError as exc:
        print(f"hwsim sweep: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("results") / spec.name
    total = spec.count()
    print(
        f"study {spec.name!r}: {estimate(spec)} of task {spec.task_ref} -> {out}", file=sys.stderr
    )
    large = total > MAX_TRIALS and not args.allow_large
    if args.dry_run:
        shown = total if args.list and not large else min(total, 5)
        for t in itertools.islice(spec.iter_trials(), shown):
            print(json.dumps({"hash": t.hash, "role": t.role, **t.config}))
        if shown < total:
            print(f"... {total - shown} more (--list prints them all)", file=sys.stderr)
    if large:
        print(
            f"hwsim sweep: {total} trials is more than {MAX_TRIALS}; pass --allow-large to "
            "run or list them",
            file=sys.stderr,
        )
        return 0 if args.dry_run and not args.list else 2
    if args.dry_run:
        return 0
    _stop_on_signals()
    try:
        summary = run_sweep(
            spec, out, workers=args.workers, dask_address=args.dask,
            progress=not args.no_progress, retry_failed=args.retry_failed,
            timeout_s=args.trial_timeout, allow_large=args.allow_large,
        )  # fmt: skip
    except KeyboardInterrupt as exc:
        how = (
            f"stopped by {signal.Signals(exc.signum).name}"
            if isinstance(exc, _Stopped)
            else "interrupted"
        )
        print(
            f"{how}: finished trials are stored in {out}; run the same command to resume",
            file=sys.stderr,
        )
        return 128 + exc.signum if isinstance(exc, _Stopped) else 130
    print(summary, file=sys.stderr)
    if args.plot and summary.ok:
        from hwsim.study.plots import make_plots

        files = make_plots(out, tasks_from=spec.tasks_from)
        print(f"wrote {len(files)} plot files to {out / 'plots'}", file=sys.stderr)
    return 0


def _cmd_status(args) -> int:
    from hwsim.study.plots import StudyData

    data = StudyData.load(args.dir)
    spec = data.spec
    counts = {"ok": 0, "failed": 0, "diverged": 0, "timeout": 0}
    for r in data.records:
        counts[r.status] += 1
    total = data.expected
    others = len(StudyData.load(args.dir, all_trials=True).records) - len(data.records)
    walls = [r.wall_s for r in data.records if r.wall_s]
    print(f"study {spec['name']!r} (task {spec['task']}) in {args.dir}")
    print(
        f"  {len(data.records)}" + (f" of {total}" if total is not None else "")
        + f" trials stored: {counts['ok']} ok, {counts['failed']} failed, "
        f"{counts['diverged']} diverged, {counts['timeout']} timeout"
    )  # fmt: skip
    if others:
        print(f"  ({others} more stored trials belong to an earlier version of the spec)")
    if walls:
        print(f"  trial time: {sum(walls):.1f} s in all, {sum(walls) / len(walls):.2f} s mean")
    deaths = data.events
    if deaths:
        last = deaths[-1]
        print(
            f"  {len(deaths)} worker process(es) died; the last: {last.get('reason')} "
            f"(trial {last.get('trial')}, {last.get('action')})"
        )
    grid_keys = list(spec.get("grid", {}))
    for r in [r for r in data.records if r.status != "ok"][: args.show]:
        config = ", ".join(f"{k}={r.config.get(k)}" for k in grid_keys)
        last = (r.error or "").strip().splitlines()
        print(f"  {r.status}: {config}: {last[-1] if last else ''}")
    return 0


def _cmd_export(args) -> int:
    from hwsim.study.frames import tables
    from hwsim.study.store import ResultsStore

    folder = Path(args.dir)
    with ResultsStore(folder, readonly=True) as store:
        records = store.records(telemetry=True)
    t = tables(records)
    results = Path(args.csv_path) if args.csv_path else folder / "results.csv"
    history = results.with_name("history.csv")
    telemetry = results.with_name("telemetry.csv")
    for path, columns, rows in _export_tables(t, results, history, telemetry):
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(columns)
            w.writerows(rows)
    print(f"wrote {results} ({len(records)} trials), {history} and {telemetry}")
    written = _export_parquet(
        t, *(p.with_suffix(".parquet") for p in (results, history, telemetry))
    )
    if written:
        print(f"wrote {', '.join(map(str, written))}")
    return 0


def _export_tables(t, results: Path, history: Path, telemetry: Path):
    return ((results, t.columns, t.rows), (history, t.history_columns, t.history_rows),
            (telemetry, t.telemetry_columns, t.telemetry_rows))  # fmt: skip


def _export_parquet(t, results: Path, history: Path, telemetry: Path) -> tuple[Path, ...] | None:
    """The same tables as Parquet, where pandas and pyarrow are installed."""
    try:
        import pandas as pd
        import pyarrow  # noqa: F401
    except ImportError:
        return None
    from hwsim.study.frames import parquet_ready

    for path, columns, rows in _export_tables(t, results, history, telemetry):
        parquet_ready(pd.DataFrame(rows, columns=columns)).to_parquet(path, index=False)
    return results, history, telemetry


def _cmd_plot(args) -> int:
    from hwsim.study.plots import make_plots

    files = make_plots(
        args.dir,
        names=args.only or None,
        tasks_from=args.tasks_from,
        out=args.out,
        trial=args.trial,
    )
    for f in files:
        print(f)
    if not files:
        print("no plot applies to these results (no finished trials?)", file=sys.stderr)
    return 0


def _cmd_report(args) -> int:
    from hwsim.study.report import write_report

    print(write_report(args.dir, tasks_from=args.tasks_from, out=args.out))
    return 0


def _tasks_from(p) -> None:
    p.add_argument(
        "--tasks-from",
        action="append",
        default=[],
        metavar="DIR",
        help="also load task and plot-plugin modules from DIR (after installed packages, "
        "which it cannot shadow); nothing is loaded from the spec's or the current folder",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hwsim",
        description="hwsim: fixed-point training studies (sweep, status, export, plot, report, "
        "search)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sweep", help="run or resume a study spec (TOML)")
    p.add_argument("spec", help="study spec, e.g. studies/quickstart.toml")
    p.add_argument("--out", help="results folder (default: results/<study name>)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local worker processes (default: CPU cores; 0 = run in this process); "
        "each uses HWSIM_WORKER_THREADS threads (default 1)",
    )
    p.add_argument(
        "--dask", metavar="ADDRESS", help="run on this Dask scheduler (e.g. tcp://host:8786)"
    )
    p.add_argument("--retry-failed", action="store_true", help="re-run failed and diverged trials")
    p.add_argument(
        "--no-plot", dest="plot", action="store_false", help="do not draw plots afterwards"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="validate, count the trials and show the first few; run nothing",
    )
    p.add_argument("--list", action="store_true", help="with --dry-run: print every trial")
    p.add_argument(
        "--trial-timeout",
        type=float,
        metavar="SECONDS",
        help="time limit per trial (default: the spec's study.timeout_s); a trial over it is "
        "recorded as 'timeout' and its worker replaced",
    )
    p.add_argument(
        "--allow-large",
        action="store_true",
        help="allow a grid of more than 1,000,000 trials",
    )
    _tasks_from(p)
    p.set_defaults(fn=_cmd_sweep)

    p = sub.add_parser("status", help="summarise a results folder")
    p.add_argument("dir")
    p.add_argument("--show", type=int, default=10, help="failed trials to list (default 10)")
    p.set_defaults(fn=_cmd_status)

    p = sub.add_parser(
        "export",
        help="write the results as tidy CSV tables (and Parquet where pyarrow is installed)",
    )
    p.add_argument("dir")
    p.add_argument(
        "--csv",
        dest="csv_path",
        nargs="?",
        const="",
        default="",
        help="output file (default DIR/results.csv; history goes beside it)",
    )
    p.set_defaults(fn=_cmd_export)

    p = sub.add_parser("plot", help="draw the plots (PNG and SVG) into DIR/plots")
    p.add_argument("dir")
    p.add_argument("--only", nargs="*", help="plot names to draw (default: all that apply)")
    p.add_argument("--out", help="folder for the plot files (default: DIR/plots)")
    p.add_argument(
        "--trial",
        help="the trial of where_the_bits_go: a hash prefix or key=value,... "
        "(default: the best trial with telemetry)",
    )
    _tasks_from(p)
    p.set_defaults(fn=_cmd_plot)

    p = sub.add_parser("report", help="write DIR/report.md with plots and tables")
    p.add_argument("dir")
    p.add_argument("--out", help="folder for report.md and its plots (default: DIR)")
    _tasks_from(p)
    p.set_defaults(fn=_cmd_report)

    from hwsim.cli_search import add_parser

    add_parser(sub, _tasks_from)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hwsim`` command."""
    from hwsim.study.store import StoreError

    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (OSError, ValueError, LookupError, StoreError, RuntimeError) as exc:
        # one message for everything the user can fix (a read-only folder included)
        text = str(exc) if isinstance(exc, ValueError) else " ".join(str(exc).split())
        print(f"hwsim {args.command}: {text}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    import os

    # as in hwsim/__main__.py: the current folder is not a source of code
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
    sys.exit(main())
