"""Automatic precision search: the fewest bits per tensor that keep a metric
within a tolerance of the float baseline (``hwsim search SPEC``).

A search spec is a study spec (``[study]``, ``[fixed]``, ``[plot] metric`` and
``goal``, an optional ``[grid] seed = [...]`` whose trials are averaged) with a
``[search]`` table::

    [search]
    params = ["weight", "activation", "accumulator"]   # format fields of the task
    start = "fx16.12"          # or a table: {weight = "fx16.12", activation = "fx16.8"}
    tolerance = 0.01           # |metric - float metric| allowed on the bad side
    min_bits = 2               # no word shorter than this

The search is greedy, in moves of one bit: from the current precision it tries,
for every searched parameter, dropping its least significant bit (``wl - 1,
fl - 1``) and its most significant bit (``wl - 1``, same ``fl``), evaluates all
of them as one batch of trials, takes the move whose metric is best among those
within tolerance (ties: the first in ``params`` order, LSB before MSB), and stops
when no move keeps the tolerance. It first runs the same search with every
parameter tied to one shared format (the best *uniform* precision), then the
per-parameter search from ``start``, so the answer can be compared with it.

Every evaluated trial is a trial of the study folder's results store, run by the
sweep engine (local pool or Dask): a killed search resumes from the stored
trials, and as decisions depend only on stored metrics, it gives the same answer.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hwsim.formats import FixedPoint, parse_format
from hwsim.study.spec import SpecError, StudySpec, _params_types, parse_spec
from hwsim.study.store import ResultsStore
from hwsim.study.values import _is_format_type, to_plain

_SEARCH_KEYS = {"params", "start", "tolerance", "min_bits"}


@dataclasses.dataclass(frozen=True)
class SearchSpec:
    """A validated search spec (see the module docstring)."""

    study: StudySpec
    params: tuple[str, ...]
    start: dict[str, FixedPoint]
    tolerance: float
    min_bits: int = 2

    @property
    def metric(self) -> str:
        return self.study.plot.metric

    @property
    def goal(self) -> str:
        return self.study.plot.goal


@dataclasses.dataclass(frozen=True)
class _Batch(StudySpec):
    """A study spec whose trials are an explicit list of parameter settings, each
    run for every combination of the study's grid (the seeds)."""

    points: tuple[tuple[tuple[str, Any], ...], ...] = ()

    def _grid_count(self) -> int:
        return len(self.points) * math.prod(len(v) for v in self.grid.values())

    def count(self) -> int:
        return self._grid_count()

    def count_by_role(self) -> dict[str, int]:
        return {"search": self.count()}

    def iter_trials(self, *, baseline: bool = True):
        names = list(self.grid)
        for point in self.points:
            for combo in itertools.product(*(self.grid[n] for n in names)):
                values = {**self.fixed, **dict(zip(names, combo, strict=True)), **dict(point)}
                yield self._make(values, "search")


def parse_search(text: str, *, source: str = "spec", tasks_from=()) -> SearchSpec:
    """Parse a search spec; raises :class:`SpecError` listing every problem."""
    study = parse_spec(text, source=source, tasks_from=tasks_from)
    raw = tomllib.loads(text.removeprefix("\ufeff")).get("search")
    if not isinstance(raw, dict):
        raise SpecError(["a [search] table with params, start and tolerance is required"], source)
    problems = [f"search.{k}: unknown key; allowed: {sorted(_SEARCH_KEYS)}" for k in raw
                if k not in _SEARCH_KEYS]  # fmt: skip
    extra = [k for k in study.grid if k != "seed"]
    if study.cases:
        problems.append("a search spec takes no [[cases]]: the search chooses the formats")
    if extra or study.baseline is not None:
        problems.append(
            f"a search spec's [grid] may only list seeds (averaged per evaluation) and it has "
            f"no [baseline]; got grid fields {extra}"
            + (" and a [baseline]" if study.baseline else "")
        )
    types_ = _params_types(study.task)
    params = raw.get("params")
    if not isinstance(params, list) or not params or not all(isinstance(p, str) for p in params):
        problems.append(f"search.params must be a non-empty list of format fields, got {params!r}")
        params = []
    fmt_fields = sorted(k for k, t in types_.items() if _is_format_type(t))
    for p in params:
        if p not in fmt_fields:
            problems.append(f"search.params: {p!r} is not a format field of task "
                            f"{study.task.name!r}; format fields: {fmt_fields}")  # fmt: skip
        if p in study.fixed:
            problems.append(f"search.params: {p!r} is also set in [fixed]; set it in one place")
    if len(set(params)) != len(params):
        problems.append(f"search.params: repeated names in {params!r}")
    start_raw = raw.get("start")
    start: dict[str, FixedPoint] = {}
    per = start_raw if isinstance(start_raw, dict) else dict.fromkeys(params, start_raw)
    for p in params:
        try:
            fmt = parse_format(per.get(p))
        except (TypeError, ValueError) as exc:
            problems.append(f"search.start for {p!r}: {exc}")
            continue
        if not isinstance(fmt, FixedPoint):
            problems.append(f"search.start for {p!r} must be a fixed-point format, got {fmt!r}")
        else:
            start[p] = fmt
    tol = raw.get("tolerance")
    if isinstance(tol, bool) or not isinstance(tol, int | float) or not 0 <= tol < math.inf:
        problems.append(f"search.tolerance must be a finite number >= 0, got {tol!r}")
    min_bits = raw.get("min_bits", 2)
    if isinstance(min_bits, bool) or not isinstance(min_bits, int) or not 1 <= min_bits <= 64:
        problems.append(f"search.min_bits must be an integer in [1, 64], got {min_bits!r}")
    if problems:
        raise SpecError(problems, source)
    return SearchSpec(study, tuple(params), start, float(tol), min_bits)


def load_search(path: str | Path, tasks_from=()) -> SearchSpec:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([f"cannot read the spec: {exc}"], str(path)) from None
    return parse_search(text, source=str(path), tasks_from=tasks_from)


@dataclasses.dataclass
class Step:
    formats: dict[str, FixedPoint | None]
    metric: float
    within: bool


@dataclasses.dataclass
class SearchResult:
    """``uniform``/``per_tensor``: the chosen formats and their mean metric;
    ``float_metric``: the float baseline; ``steps``: every evaluated setting."""

    float_metric: float
    uniform: dict[str, FixedPoint]
    uniform_metric: float
    per_tensor: dict[str, FixedPoint]
    per_tensor_metric: float
    steps: list[Step]
    trials: int

    @staticmethod
    def bits(formats: dict[str, FixedPoint]) -> int:
        return sum(f.bits for f in formats.values() if f is not None)


def _moves(fmt: FixedPoint, min_bits: int) -> list[FixedPoint]:
    if fmt.wl - 1 < min_bits:
        return []
    out = [FixedPoint(fmt.wl - 1, fmt.fl - 1, signed=fmt.signed)]  # drop the LSB
    out.append(FixedPoint(fmt.wl - 1, fmt.fl, signed=fmt.signed))  # drop the MSB
    return out


def run_search(spec: SearchSpec, out: str | Path, run: Callable[[StudySpec], Any]) -> SearchResult:
    """Run the search; ``run(batch_spec)`` runs a batch of trials into ``out``
    (e.g. ``functools.partial(run_sweep, out=out, progress=False)``)."""
    out = Path(out)
    steps: list[Step] = []
    seen: dict[str, tuple[float, bool]] = {}
    count = [0]
    sign = 1.0 if spec.goal == "max" else -1.0

    def evaluate(settings: list[dict[str, FixedPoint | None]], ref: float | None):
        points = tuple(_point(s) for s in settings)
        todo = [p for p in dict.fromkeys(points) if _key(p) not in seen]
        if todo:
            for p, (metric, ok, n) in zip(todo, run_points(spec, out, run, todo), strict=True):
                count[0] += n
                seen[_key(p)] = (metric, ok)
        results = []
        for s, p in zip(settings, points, strict=True):
            m, ok = seen[_key(p)]
            within = ok and ref is not None and sign * (m - ref) >= -spec.tolerance
            steps.append(Step(dict(s), m, within))
            results.append((m, within))
        return results

    float_metric = evaluate([dict.fromkeys(spec.params)], None)[0][0]
    if not math.isfinite(float_metric):
        raise RuntimeError(
            f"the float baseline trial(s) did not finish with a finite {spec.metric!r}"
        )

    def greedy(current: dict[str, FixedPoint], tied: bool) -> tuple[dict[str, FixedPoint], float]:
        ((metric, within),) = evaluate([current], float_metric)
        if not within:
            raise ValueError(
                f"the starting precision {_show(current)} misses the tolerance: {spec.metric} "
                f"{metric:.6g} against the float baseline's {float_metric:.6g} "
                f"(tolerance {spec.tolerance:g}); start from wider formats"
            )
        while True:
            if tied:
                first = current[spec.params[0]]
                cands = [dict.fromkeys(spec.params, f) for f in _moves(first, spec.min_bits)]
            else:
                cands = [{**current, p: f} for p in spec.params
                         for f in _moves(current[p], spec.min_bits)]  # fmt: skip
            if not cands:
                return current, metric
            scored = evaluate(cands, float_metric)
            good = [(sign * m, -i, c, m) for i, (c, (m, w)) in enumerate(zip(cands, scored,
                    strict=True)) if w]  # fmt: skip
            if not good:
                return current, metric
            _, _, current, metric = max(good, key=lambda g: (g[0], g[1]))

    widest = max(spec.start.values(), key=lambda f: (f.wl, f.fl))
    uniform, uniform_metric = greedy(dict.fromkeys(spec.params, widest), tied=True)
    per, per_metric = greedy(dict(spec.start), tied=False)
    return SearchResult(float_metric, uniform, uniform_metric, per, per_metric, steps, count[0])


def _point(setting: dict) -> tuple:
    return tuple(sorted((k, v) for k, v in setting.items()))


def run_points(spec: SearchSpec, out: Path, run: Callable, points: list[tuple]) -> list[tuple]:
    """Run each parameter setting (a sorted tuple of (name, format) pairs) for every
    seed of the spec as one batch of trials in ``out``; per point ``(mean metric,
    ok, trials)``, ``ok`` False (and the metric NaN) when a trial failed."""
    batch = _Batch(**{f.name: getattr(spec.study, f.name)
                      for f in dataclasses.fields(StudySpec)}, points=tuple(points))  # fmt: skip
    run(batch)
    with ResultsStore(out, readonly=True) as store:
        by_hash = {r.hash: r for r in store.records()}
    results = []
    for p in points:
        trials = list(dataclasses.replace(batch, points=(p,)).iter_trials())
        vals = [by_hash[t.hash].metrics.get(spec.metric) for t in trials
                if t.hash in by_hash and by_hash[t.hash].status == "ok"]  # fmt: skip
        ok = len(vals) == len(trials) and all(_finite(v) for v in vals)
        results.append((statistics.fmean(vals) if ok else math.nan, ok, len(trials)))
    return results


def evaluate_setting(spec: SearchSpec, out: str | Path, run: Callable, setting: dict) -> float:
    """The mean metric of one setting of the searched parameters (e.g. an
    analytical rule's answer), run through the same store (NaN if a trial failed)."""
    ((metric, _, _),) = run_points(spec, Path(out), run, [_point(setting)])
    return metric


def _key(point) -> str:
    return repr([(k, to_plain(v)) for k, v in point])


def _finite(v) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def _show(formats: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in formats.items())


def markdown(
    spec: SearchSpec,
    result: SearchResult,
    energy: Callable | None = None,
    analytical: tuple[dict[str, FixedPoint], float, str] | None = None,
) -> str:
    """The answer as a Markdown table (with energy per training step where ``energy``
    maps a config to picojoules, and a column for an ``analytical`` rule's
    ``(formats, metric, name)`` where given)."""
    columns = [("uniform", result.uniform, result.uniform_metric),
               ("per tensor", result.per_tensor, result.per_tensor_metric)]  # fmt: skip
    if analytical is not None:
        columns.append((analytical[2], analytical[0], analytical[1]))

    def row(name: str, cells) -> str:
        return f"| {name} | " + " | ".join(str(c) for c in cells) + " |"

    lines = [f"# Precision search: {spec.study.name}", "",
             f"Metric {spec.metric!r} ({spec.goal}), tolerance {spec.tolerance:g} against the "
             f"float baseline's {result.float_metric:.6g}; {result.trials} trials evaluated.", "",
             row("parameter", [c[0] for c in columns]), "|---" * (len(columns) + 1) + "|"]  # fmt: skip
    for p in spec.params:
        lines.append(row(p, [c[1].get(p) for c in columns]))
    lines.append(row("total bits", [result.bits(c[1]) for c in columns]))
    lines.append(row(spec.metric, [f"{c[2]:.6g}" for c in columns]))
    if energy is not None:
        cells = []
        for _, formats, _ in columns:
            pj = energy({**to_plain(spec.study.fixed), **to_plain(formats)})
            cells.append("n/a" if pj is None else f"{pj:.4g}")
        lines.append(row("energy per step (pJ)", cells))
    return "\n".join(lines) + "\n"
