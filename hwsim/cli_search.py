"""``hwsim search SPEC``: the automatic precision search (:mod:`hwsim.study.search`)
on the command line; prints the answer and writes ``DIR/search.md``."""

from __future__ import annotations

import functools
import sys
from pathlib import Path


def _energy(task_name: str):
    """The task's energy adapter (config -> pJ per training step), or None."""
    import hwsim.theory.plots  # noqa: F401 - registers the built-in energy adapters
    from hwsim.study.task import get_adapter, has_adapter

    if not has_adapter(task_name, "energy"):
        return None
    fn = get_adapter(task_name, "energy", "the search table")

    def energy(config: dict) -> float | None:
        try:
            return fn(config)
        except (ValueError, TypeError):
            return None

    return energy


def _analytical(spec, out, run):
    """The task's analytical per-tensor precision for the searched parameters
    (mismatch target = the tolerance), evaluated as one more setting: ``(formats,
    metric, name)``, or None where the task registers no such rule."""
    from hwsim.formats import parse_format
    from hwsim.study.search import evaluate_setting
    from hwsim.study.task import get_adapter, has_adapter
    from hwsim.study.values import to_plain

    name = spec.study.task.name
    if not has_adapter(name, "analytical_precision"):
        return None
    config = {**to_plain(spec.study.fixed), "seed": spec.study.grid.get("seed", [0])[0]}
    rule = get_adapter(name, "analytical_precision", "the search table")(config, spec.tolerance)
    setting = {p: parse_format(to_plain(rule.get(p))) for p in spec.params}
    metric = evaluate_setting(spec, out, run, setting)
    return setting, metric, "analytical"


def cmd_search(args) -> int:
    from hwsim.study.runner import run_sweep
    from hwsim.study.search import load_search, markdown, run_search
    from hwsim.study.spec import SpecError

    try:
        spec = load_search(args.spec, tasks_from=args.tasks_from)
    except SpecError as exc:
        print(f"hwsim search: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("results") / spec.study.name
    print(f"search {spec.study.name!r}: {', '.join(spec.params)} of task "
          f"{spec.study.task_ref} -> {out}", file=sys.stderr)  # fmt: skip
    run = functools.partial(
        run_sweep, out=out, workers=args.workers, dask_address=args.dask, progress=False
    )
    try:
        result = run_search(spec, out, lambda batch: run(batch))
    except KeyboardInterrupt:
        print(f"interrupted: evaluated trials are stored in {out}; run the same command to "
              "resume", file=sys.stderr)  # fmt: skip
        return 130
    try:
        analytical = _analytical(spec, out, run)
    except KeyboardInterrupt:
        print(f"interrupted: evaluated trials are stored in {out}; run the same command to "
              "resume", file=sys.stderr)  # fmt: skip
        return 130
    energy = _energy(spec.study.task.name)
    text = markdown(spec, result, energy, analytical)
    (out / "search.md").write_text(text)
    from hwsim.study.plots_search import search_pareto

    search_pareto(spec, result, out / "plots", energy, analytical)
    print(text)
    print(f"wrote {out / 'search.md'} and {out / 'plots' / 'search_pareto.png'}", file=sys.stderr)
    return 0


def add_parser(sub, tasks_from) -> None:
    p = sub.add_parser(
        "search",
        help="find the fewest bits per tensor that keep a metric within tolerance of float",
    )
    p.add_argument("spec", help="search spec (a study spec with a [search] table)")
    p.add_argument("--out", help="results folder (default: results/<study name>)")
    p.add_argument("--workers", type=int, default=None, help="local worker processes")
    p.add_argument("--dask", metavar="ADDRESS", help="run on this Dask scheduler")
    tasks_from(p)
    p.set_defaults(fn=cmd_search)
