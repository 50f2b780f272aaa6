"""The ``hwsim`` command line.

    hwsim sweep SPEC --out DIR [--workers N] [--dask ADDRESS]   run (or resume) a study
    hwsim status DIR                                             trial counts, failures
    hwsim export DIR --csv                                       DIR/results.csv, DIR/history.csv
    hwsim plot DIR                                               DIR/plots/*.png and *.svg
    hwsim report DIR                                             DIR/report.md with the plots

``python -m hwsim.cli ...`` works the same.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path


def _cmd_sweep(args) -> int:
    from hwsim.study.runner import estimate, run_sweep
    from hwsim.study.spec import SpecError, load_spec

    try:
        spec = load_spec(args.spec)
    except SpecError as exc:
        print(f"hwsim sweep: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("results") / spec.name
    trials = spec.trials()
    print(
        f"study {spec.name!r}: {estimate(trials)} of task {spec.task_ref} -> {out}", file=sys.stderr
    )
    if args.dry_run:
        for t in trials:
            print(json.dumps({"hash": t.hash, "role": t.role, **t.config}))
        return 0
    try:
        summary = run_sweep(
            spec, out, workers=args.workers, dask_address=args.dask,
            progress=not args.no_progress, retry_failed=args.retry_failed,
        )  # fmt: skip
    except KeyboardInterrupt:
        print(
            f"interrupted: finished trials are stored in {out}; run the same command to resume",
            file=sys.stderr,
        )
        return 130
    except RuntimeError as exc:  # e.g. --dask without the distributed package
        print(f"hwsim sweep: {exc}", file=sys.stderr)
        return 2
    print(summary, file=sys.stderr)
    if args.plot and summary.ok:
        from hwsim.study.plots import make_plots

        files = make_plots(out)
        print(f"wrote {len(files)} plot files to {out / 'plots'}", file=sys.stderr)
    return 0


def _cmd_status(args) -> int:
    from hwsim.study.plots import StudyData

    data = StudyData.load(args.dir)
    spec = data.spec
    counts = {"ok": 0, "failed": 0, "diverged": 0}
    for r in data.records:
        counts[r.status] += 1
    total = data.expected
    others = len(StudyData.load(args.dir, all_trials=True).records) - len(data.records)
    walls = [r.wall_s for r in data.records if r.wall_s]
    print(f"study {spec['name']!r} (task {spec['task']}) in {args.dir}")
    print(
        f"  {len(data.records)}" + (f" of {total}" if total is not None else "")
        + f" trials stored: {counts['ok']} ok, {counts['failed']} failed, {counts['diverged']} diverged"
    )  # fmt: skip
    if others:
        print(f"  ({others} more stored trials belong to an earlier version of the spec)")
    if walls:
        print(f"  trial time: {sum(walls):.1f} s in all, {sum(walls) / len(walls):.2f} s mean")
    grid_keys = list(spec.get("grid", {}))
    for r in [r for r in data.records if r.status != "ok"][: args.show]:
        config = ", ".join(f"{k}={r.config.get(k)}" for k in grid_keys)
        last = (r.error or "").strip().splitlines()
        print(f"  {r.status}: {config}: {last[-1] if last else ''}")
    return 0


def _cmd_export(args) -> int:
    from hwsim.study.store import ResultsStore

    folder = Path(args.dir)
    with ResultsStore(folder, create=False) as store:
        records = store.records()
    config_keys = sorted({k for r in records for k in r.config})
    metric_keys = sorted({k for r in records for k in r.metrics})
    results = Path(args.csv_path) if args.csv_path else folder / "results.csv"
    with results.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "hash",
                "role",
                "status",
                *config_keys,
                *metric_keys,
                "wall_s",
                "hwsim_version",
                "error",
            ]
        )
        for r in records:
            error = (r.error or "").strip().splitlines()
            w.writerow(
                [r.hash, r.role, r.status, *(r.config.get(k) for k in config_keys),
                 *(r.metrics.get(k) for k in metric_keys), r.wall_s, r.hwsim_version,
                 error[-1] if error else ""]
            )  # fmt: skip
    history_keys = sorted({k for r in records for row in r.history for k in row} - {"step"})
    history = results.with_name("history.csv")
    with history.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["hash", "status", *config_keys, "step", *history_keys])
        for r in records:
            for row in r.history:
                w.writerow(
                    [r.hash, r.status, *(r.config.get(k) for k in config_keys), row.get("step"),
                     *(row.get(k) for k in history_keys)]
                )  # fmt: skip
    print(f"wrote {results} ({len(records)} trials) and {history}")
    return 0


def _cmd_plot(args) -> int:
    from hwsim.study.plots import make_plots

    files = make_plots(args.dir, names=args.only or None)
    for f in files:
        print(f)
    if not files:
        print("no plot applies to these results (no finished trials?)", file=sys.stderr)
    return 0


def _cmd_report(args) -> int:
    from hwsim.study.report import write_report

    print(write_report(args.dir))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hwsim",
        description="hwsim: fixed-point training studies (sweep, status, export, plot, report)",
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
        "--dry-run", action="store_true", help="validate and list the trials; run nothing"
    )
    p.set_defaults(fn=_cmd_sweep)

    p = sub.add_parser("status", help="summarise a results folder")
    p.add_argument("dir")
    p.add_argument("--show", type=int, default=10, help="failed trials to list (default 10)")
    p.set_defaults(fn=_cmd_status)

    p = sub.add_parser("export", help="write the results as tidy CSV tables")
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
    p.set_defaults(fn=_cmd_plot)

    p = sub.add_parser("report", help="write DIR/report.md with plots and tables")
    p.add_argument("dir")
    p.set_defaults(fn=_cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hwsim`` command."""
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"hwsim {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
