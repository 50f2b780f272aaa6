"""Study specs: a TOML file naming a task, fixed parameters, a grid and plot settings.

A spec is read, typed and validated against the task's parameter dataclass
(see :mod:`hwsim.study.task`) *before* any trial runs; every problem is
reported at once, each naming the field, the bad value and what is allowed.

    [study]
    name = "quickstart"
    task = "models.tasks:lms"          # "module.path:registered_name"
    description = "LMS: nearest vs stochastic rounding over weight bit-widths"

    [fixed]                            # parameters shared by every trial
    taps = 8
    n_samples = 4000

    [grid]                             # the cartesian product of these lists
    weight = ["fx8.6", "fx10.8", {wl = 12, fl = 10}]
    rounding = ["nearest", "stochastic"]
    step = [0.01, 0.003]
    seed = [0, 1, 2]

    # a value may be a table or a list (layers = {"0" = {weight = "fx8.6"}},
    # betas = [0.9, 0.99]); a quoted dotted grid key ("layers.0.weight" = [...])
    # sweeps one entry of a table parameter

    [[cases]]                          # optional: tied parameter sets, each crossed
    case = "narrow"                    # with the grid (see hwsim.study.cases)
    weight = "fx6.4"

    [baseline]                         # optional: the float reference trials
    weight = "float"                   # (grid minus the bit-width field, these overrides)

    [plot]
    metric = "excess_mse_db"           # final metric on the y axis
    bits = "weight"                    # grid field giving the bit-width axis
    bits_of = "wl"                     # "wl" (word length) or "fl" (fractional bits)
    lr = "step"                        # grid field giving the learning-rate axis
    goal = "min"                       # "min" or "max": which metric value is better

>>> spec = parse_spec('''
... [study]
... name = "demo"
... task = "tests.study_tasks:quadratic"
... [grid]
... weight = ["fx8.6", "fx12.10"]
... seed = [0, 1]
... [plot]
... metric = "loss"
... bits = "weight"
... ''')
>>> len(spec.trials())
4
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
import sys
import tomllib
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hwsim.study.cases import LABEL, parse_cases
from hwsim.study.sources import check_ref, resolve_task
from hwsim.study.spec_plot import parse_plot
from hwsim.study.task import Task
from hwsim.study.trial import PlotSpec, Trial, trial_hash
from hwsim.study.values import (
    _check_schedule,
    _union_args,
    coerce_value,
    expand_dotted,
    to_plain,
)
from hwsim.study.values import unknown as _unknown

MAX_TRIALS = 1_000_000  # a bigger grid needs allow_large (CLI: --allow-large)
VALIDATE_TRIALS = 20_000  # trials built (checked by the task) before anything runs
MAX_TIMEOUT_S = 7 * 24 * 3600.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class SpecError(ValueError):
    """A study spec is invalid. ``problems`` lists every problem found."""

    def __init__(self, problems: list[str], source: str = "spec"):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid study {source}: {len(self.problems)} problem(s)\n{lines}")


def import_task(ref: str, tasks_from: list[str] | tuple[str, ...] = ()) -> Task:
    """The registered :class:`Task` named by ``ref`` (see :mod:`hwsim.study.sources`)."""
    return resolve_task(ref, tuple(tasks_from))


def check_name(name: object) -> str | None:
    """None when ``name`` is a plain study name (it becomes results/<name>)."""
    if isinstance(name, str) and _NAME.match(name) and name not in (".", ".."):
        return None
    return (
        f"study.name must be a plain name of 1-100 characters (letters, digits, '.', '_', '-', "
        f"starting with a letter or digit; no '/' or '..'), got {name!r}"
    )


# -- the spec ---------------------------------------------------------------------

_SECTIONS = {
    "study",
    "fixed",
    "grid",
    "cases",
    "baseline",
    "plot",
    "search",
}  # search: hwsim search
_STUDY_KEYS = {"name", "task", "description", "timeout_s"}


@dataclasses.dataclass(frozen=True)
class StudySpec:
    """A validated study spec; see the module docstring for the TOML layout."""

    name: str
    task_ref: str
    task: Task
    fixed: dict[str, Any]
    grid: dict[str, list[Any]]
    baseline: dict[str, Any] | None
    plot: PlotSpec
    description: str = ""
    source: str = ""  # the TOML text
    tasks_from: tuple[str, ...] = ()  # folders named with --tasks-from
    timeout_s: float | None = None  # per-trial time limit
    cases: tuple[tuple[str, dict[str, Any]], ...] = ()  # [[cases]]: (label, values)

    def _make(self, values: dict[str, Any], role: str, case: str | None = None) -> Trial:
        params = self.task.params(**expand_dotted(values))
        config = {f.name: to_plain(getattr(params, f.name)) for f in dataclasses.fields(params)}
        return Trial(params, config, trial_hash(self.task_ref, config), role, case)

    def _baseline_names(self) -> list[str]:
        assert self.baseline is not None
        return [n for n in self.grid if n != self.plot.bits and n not in self.baseline]

    def _grid_count(self) -> int:
        return math.prod(len(v) for v in self.grid.values()) * max(1, len(self.cases))

    @property
    def _baseline_is_grid(self) -> bool:
        """True when the baseline trials are grid trials already (counted once)."""
        if self.baseline is None:
            return False
        names = self._baseline_names()
        first = self._make(
            {**self.fixed, **{n: self.grid[n][0] for n in names}, **self.baseline}, "baseline"
        )
        grid_first = next(self.iter_trials(baseline=False))
        for key, value in first.config.items():
            if key in self.grid:
                plain = [json.dumps(to_plain(v), sort_keys=True) for v in self.grid[key]]
                if json.dumps(value, sort_keys=True) not in plain:
                    return False
            elif value != grid_first.config[key]:
                return False
        return True

    def count(self) -> int:
        """How many trials, from the grid's shape (nothing is expanded)."""
        n = self._grid_count()
        if self.baseline is not None and not self._baseline_is_grid:
            n += math.prod(len(self.grid[k]) for k in self._baseline_names())
        return n

    def count_by_role(self) -> dict[str, int]:
        grid = self._grid_count()
        return {"grid": grid, **({"baseline": self.count() - grid} if self.count() > grid else {})}

    def iter_trials(self, *, baseline: bool = True) -> Iterator[Trial]:
        """Every trial, generated one at a time: the grid product, then the baseline.

        Grid values of one field are distinct (checked), so grid trials are distinct;
        baseline trials that coincide with grid trials are not repeated.
        """
        names = list(self.grid)
        for combo in itertools.product(*(self.grid[n] for n in names)):
            point = {**self.fixed, **dict(zip(names, combo, strict=True))}
            for label, values in self.cases or ((None, {}),):
                yield self._make({**point, **values}, "grid", label)
        if baseline and self.baseline is not None and not self._baseline_is_grid:
            names = self._baseline_names()
            for combo in itertools.product(*(self.grid[n] for n in names)):
                values = {**self.fixed, **dict(zip(names, combo, strict=True)), **self.baseline}
                yield self._make(values, "baseline")

    def trials(self) -> list[Trial]:
        """Every trial as a list (small studies; large ones use :meth:`iter_trials`)."""
        return list(self.iter_trials())

    def to_json(self) -> dict:
        """Plain form stored with the results (plots and reports read it back)."""
        return {
            "name": self.name,
            "task": self.task_ref,
            "description": self.description,
            "fixed": to_plain(self.fixed),
            "grid": to_plain(self.grid),
            "cases": [{LABEL: label, **to_plain(values)} for label, values in self.cases],
            "baseline": to_plain(self.baseline),
            "plot": dataclasses.asdict(self.plot),
            "source": self.source,
            "timeout_s": self.timeout_s,
        }


def _params_types(task: Task) -> dict[str, Any]:
    module = sys.modules.get(task.params.__module__)
    hints = typing.get_type_hints(task.params, vars(module) if module else None)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(task.params)}


def parse_spec(
    text: str,
    *,
    source: str = "spec",
    tasks_from: list[str] | tuple[str, ...] = (),
) -> StudySpec:
    """Parse and validate TOML ``text``; raises :class:`SpecError` listing every problem.

    Allowed ranges (checked here, before anything runs): ``study.name`` a plain
    name (:func:`check_name`); ``study.task`` see :mod:`hwsim.study.sources`;
    ``study.timeout_s`` a number in (0, 604800] seconds; integers within
    ±(2**63 - 1), numbers finite; format strings ASCII; each parameter within
    the range its task documents (the task's ``__post_init__`` checks the first
    ``VALIDATE_TRIALS`` trials now, the rest as they are generated);
    ``plot.metric`` one of the task's declared metrics.
    """
    text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark is not part of the TOML
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError([f"not valid TOML: {exc}"], source) from None
    except RecursionError:
        raise SpecError(
            ["not valid TOML: arrays or tables are nested too deeply"], source
        ) from None
    problems: list[str] = []
    for key in raw:
        if key not in _SECTIONS:
            problems.append(_unknown("section", key, _SECTIONS))
    study = raw.get("study")
    if not isinstance(study, dict):
        raise SpecError(problems + ["a [study] table with name and task is required"], source)
    for key in study:
        if key not in _STUDY_KEYS:
            problems.append(_unknown("study key", key, _STUDY_KEYS))
    name = study.get("name")
    if check_name(name):
        problems.append(check_name(name))
    timeout_s = study.get("timeout_s")
    if timeout_s is not None and (
        isinstance(timeout_s, bool)
        or not isinstance(timeout_s, int | float)
        or not 0 < timeout_s <= MAX_TIMEOUT_S
    ):
        problems.append(
            f"study.timeout_s must be a number of seconds in (0, {MAX_TIMEOUT_S:.0f}], "
            f"got {timeout_s!r}"
        )
        timeout_s = None
    task_ref = study.get("task")
    if check_ref(task_ref):
        raise SpecError(problems + [check_ref(task_ref)], source)
    try:
        task = import_task(task_ref, tasks_from)
    except ValueError as exc:
        raise SpecError(problems + [str(exc)], source) from None
    types_ = _params_types(task)

    renamed = getattr(task.params, "RENAMED", {})  # old name -> what replaced it

    def check_param(where: str, key: str, value: Any) -> Any:
        head = key.split(".")[0]
        if "." in key and head in types_:  # one entry of a table parameter, e.g. layers.0.weight
            if not any(typing.get_origin(a) is dict for a in _union_args(types_[head])):
                problems.append(f"{where}: {head!r} is not a table parameter, so {key!r} names "
                                f"nothing; dotted keys set one entry of a table")  # fmt: skip
                return None
            return to_plain(value)
        if key not in types_ and key in renamed:
            problems.append(
                f"{where}: parameter {key!r} was renamed; use {renamed[key]} (task {task.name!r})"
            )
            return None
        if key not in types_:
            problems.append(_unknown(f"{where}: parameter", key, types_) + f" (task {task.name!r})")
            return None
        try:
            out = coerce_value(types_[key], value)
            if key == "schedule" and isinstance(out, str):
                _check_schedule(out)
            return out
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            return None

    fixed_raw = raw.get("fixed", {})
    grid_raw = raw.get("grid", {})
    base_raw = raw.get("baseline")
    tables_ok = True
    for sect, value in (("fixed", fixed_raw), ("grid", grid_raw), ("baseline", base_raw or {}),
                        ("plot", raw.get("plot", {}))):  # fmt: skip
        if not isinstance(value, dict):
            problems.append(f"[{sect}] must be a table of key = value, got {value!r}")
            tables_ok = False
    if not tables_ok:
        raise SpecError(problems, source)

    fixed = {k: check_param(f"fixed.{k}", k, v) for k, v in fixed_raw.items()}
    grid: dict[str, list[Any]] = {}
    for key, values in grid_raw.items():
        if not isinstance(values, list) or not values:
            problems.append(f"grid.{key}: a non-empty list of values is required, got {values!r}")
            continue
        if key in fixed_raw:
            problems.append(f"grid.{key}: also set in [fixed]; set a parameter in one place")
        grid[key] = [check_param(f"grid.{key}[{i}]", key, v) for i, v in enumerate(values)]
        if key in types_:
            plain = [json.dumps(to_plain(v), sort_keys=True) for v in grid[key]]
            if len(set(plain)) != len(plain):
                problems.append(f"grid.{key}: repeated values {grid_raw[key]!r}")
    cases = parse_cases(raw.get("cases"), grid_raw, check_param, problems)
    baseline = None
    if base_raw is not None:
        baseline = {k: check_param(f"baseline.{k}", k, v) for k, v in base_raw.items()}

    plot = parse_plot(raw.get("plot", {}), grid_raw, fixed_raw, types_, task, cases, problems)
    bits = plot.bits
    if baseline is not None and bits is None:
        problems.append("[baseline] needs plot.bits (the grid field it replaces)")
    if problems:
        raise SpecError(problems, source)

    spec = StudySpec(
        name=name,
        task_ref=task_ref,
        task=task,
        fixed=fixed,
        grid=grid,
        baseline=baseline,
        plot=plot,
        description=str(study.get("description", "")),
        source=text,
        tasks_from=tuple(str(p) for p in tasks_from),
        timeout_s=float(timeout_s) if timeout_s is not None else None,
        cases=cases,
    )
    # build the first trials now so a parameter combination the task's own
    # __post_init__ rejects fails before anything runs (a huge grid: the rest are
    # checked as they are generated, and a rejected one is recorded as failed)
    try:
        n = spec.count()
        for _ in itertools.islice(spec.iter_trials(), VALIDATE_TRIALS):
            pass
    except Exception as exc:  # noqa: BLE001 - any rejection by the task is a spec problem
        raise SpecError(
            [f"a trial's parameters were rejected by task {task.name!r}: {exc}"], source
        ) from None
    if n == 0:
        raise SpecError(["the spec expands to no trials"], source)
    return spec


def load_spec(path: str | Path, tasks_from: list[str] | tuple[str, ...] = ()) -> StudySpec:
    """Read and validate the spec file at ``path``.

    Nothing is imported from the spec's folder or the current folder: the task
    comes from installed packages, ``hwsim.tasks`` entry points, or a folder in
    ``tasks_from`` (see :mod:`hwsim.study.sources`).
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError([f"spec file {str(path)!r} does not exist"], str(path))
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecError([f"the file is not UTF-8 text ({exc})"], str(path)) from None
    return parse_spec(text, source=str(path), tasks_from=tasks_from)
