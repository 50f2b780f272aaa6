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
import difflib
import hashlib
import importlib
import itertools
import json
import math
import sys
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal

from hwsim.formats import FixedPoint, parse_format
from hwsim.study.task import TASKS, Task


class SpecError(ValueError):
    """A study spec is invalid. ``problems`` lists every problem found."""

    def __init__(self, problems: list[str], source: str = "spec"):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid study {source}: {len(self.problems)} problem(s)\n{lines}")


# -- the task ---------------------------------------------------------------------


def import_task(ref: str, search_paths: list[str] | tuple[str, ...] = ()) -> Task:
    """Import ``"module.path:name"`` and return its registered :class:`Task`.

    ``search_paths`` are put at the front of ``sys.path`` first (the runner
    passes the current directory and the spec's repository root).
    """
    if not isinstance(ref, str) or ref.count(":") != 1:
        raise ValueError(
            f"study.task must be 'module.path:task_name' (e.g. 'models.tasks:lms'), got {ref!r}"
        )
    module_name, name = ref.split(":")
    for path in reversed([str(p) for p in search_paths]):
        if path not in sys.path:
            sys.path.insert(0, path)
    try:
        importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"study.task {ref!r}: cannot import module {module_name!r} ({exc}); "
            f"run from the repository root or put the module on PYTHONPATH"
        ) from exc
    if name not in TASKS:
        raise ValueError(
            f"study.task {ref!r}: module {module_name!r} registers no task {name!r}; "
            f"registered tasks: {sorted(TASKS)}"
        )
    return TASKS[name]


def repo_root_of(path: Path) -> Path:
    """The repository root above ``path`` (the first folder with pyproject.toml or .git)."""
    path = path.resolve()
    for folder in [path, *path.parents]:
        if (folder / "pyproject.toml").exists() or (folder / ".git").exists():
            return folder
    return path.parent if path.is_file() else path


# -- typing and coercion of one parameter value -----------------------------------------


def _is_format_type(tp) -> bool:
    args = typing.get_args(tp)
    return tp is FixedPoint or FixedPoint in args


def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if _is_format_type(tp):
        return "a fixed-point format like 'fx16.12', a table {wl=16, fl=12}, or 'float'"
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(a) for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(parts)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    return getattr(tp, "__name__", str(tp))


def coerce_value(tp, value: Any) -> Any:
    """Convert a TOML value to the parameter type ``tp``; ValueError saying what is allowed."""
    origin = typing.get_origin(tp)
    if _is_format_type(tp):
        try:
            fmt = parse_format(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a number format: {exc}") from None
        if fmt is None and type(None) not in typing.get_args(tp):
            raise ValueError(f"{value!r}: a fixed-point format is required here (not float)")
        return fmt
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and type(value) in {type(c) for c in choices}:
            return value
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{value!r} is not allowed; allowed: {_describe(tp)}{hint}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce_value(arg, value)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(f"{value!r} is not allowed; allowed: {_describe(tp)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{value!r} is not allowed; allowed: true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{value!r} is not allowed; allowed: an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ValueError(f"{value!r} is not allowed; allowed: a finite number")
            return float(value)
        raise ValueError(f"{value!r} is not allowed; allowed: a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{value!r} is not allowed; allowed: a string")
    if tp is Any or tp is object:
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ValueError(f"{value!r} is not allowed; allowed: {_describe(tp)}")


def to_plain(value: Any) -> Any:
    """A JSON/TOML-friendly form of a parameter value (formats as 'fx16.12', float as None)."""
    if isinstance(value, FixedPoint):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    return value


def _check_schedule(value: str) -> None:
    """Validate a schedule string with hwsim.schedules when that module exists."""
    try:
        from hwsim.schedules import GearShiftPolicy  # type: ignore[import-not-found]
    except ImportError:
        return
    GearShiftPolicy.parse(value)


# -- the spec ---------------------------------------------------------------------

_SECTIONS = {"study", "fixed", "grid", "baseline", "plot"}
_STUDY_KEYS = {"name", "task", "description"}
_PLOT_KEYS = {
    "metric",
    "bits",
    "bits_of",
    "lr",
    "goal",
    "series",
    "plugins",
    "curve_metric",
    "step_label",
}


@dataclasses.dataclass(frozen=True)
class PlotSpec:
    """What the plots show.

    metric: final metric on the y axis (a key of the task's metrics).
    bits: grid field giving the bit-width axis (a format field or an int field).
    bits_of: for a format field, ``"wl"`` (word length) or ``"fl"`` (fractional bits).
    lr: grid field giving the learning-rate axis of the heatmap (optional).
    goal: ``"max"`` or ``"min"``: which metric value is better (used to pick the
        best learning rate per point).
    series: grid fields that get one line each (default: every grid field other
        than bits, lr and seed).
    curve_metric: history key drawn as learning curves (default: ``metric``).
    step_label: x-axis label of the learning curves (e.g. "epoch", "sample").
    plugins: modules imported before plotting; they register more plots.
    """

    metric: str
    bits: str | None = None
    bits_of: Literal["wl", "fl"] = "wl"
    lr: str | None = None
    goal: Literal["min", "max"] = "min"
    series: tuple[str, ...] | None = None
    curve_metric: str | None = None
    plugins: tuple[str, ...] = ()
    step_label: str | None = None


@dataclasses.dataclass(frozen=True)
class Trial:
    """One point of the sweep: the full, typed parameter set and its identity."""

    params: Any  # an instance of the task's params dataclass
    config: dict  # plain JSON form of every parameter (defaults included)
    hash: str
    role: str = "grid"  # "grid" or "baseline"


def trial_hash(task_ref: str, config: dict) -> str:
    """Identity of a trial: SHA-256 of the task and its full canonical config.

    Defaults are included in ``config``, so a trial is the same trial however
    the spec spells it (fixed vs grid, "fx16.12" vs {wl=16, fl=12}).
    """
    blob = json.dumps({"task": task_ref, "params": config}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


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
    search_paths: tuple[str, ...] = ()

    def _make(self, values: dict[str, Any], role: str) -> Trial:
        params = self.task.params(**values)
        config = {f.name: to_plain(getattr(params, f.name)) for f in dataclasses.fields(params)}
        return Trial(params, config, trial_hash(self.task_ref, config), role)

    def trials(self) -> list[Trial]:
        """Every trial: the grid product, then the baseline trials; duplicates dropped."""
        out: dict[str, Trial] = {}
        names = list(self.grid)
        for combo in itertools.product(*(self.grid[n] for n in names)):
            trial = self._make({**self.fixed, **dict(zip(names, combo, strict=True))}, "grid")
            out.setdefault(trial.hash, trial)
        if self.baseline is not None:
            names = [n for n in self.grid if n != self.plot.bits and n not in self.baseline]
            for combo in itertools.product(*(self.grid[n] for n in names)):
                values = {**self.fixed, **dict(zip(names, combo, strict=True)), **self.baseline}
                trial = self._make(values, "baseline")
                out.setdefault(trial.hash, trial)
        return list(out.values())

    def to_json(self) -> dict:
        """Plain form stored with the results (plots and reports read it back)."""
        return {
            "name": self.name,
            "task": self.task_ref,
            "description": self.description,
            "fixed": to_plain(self.fixed),
            "grid": to_plain(self.grid),
            "baseline": to_plain(self.baseline),
            "plot": dataclasses.asdict(self.plot),
            "source": self.source,
        }


def _params_types(task: Task) -> dict[str, Any]:
    module = sys.modules.get(task.params.__module__)
    hints = typing.get_type_hints(task.params, vars(module) if module else None)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(task.params)}


def _unknown(kind: str, key: str, allowed) -> str:
    allowed = sorted(allowed)
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{kind} {key!r} is unknown{hint}; allowed: {', '.join(allowed)}"


def parse_spec(
    text: str,
    *,
    source: str = "spec",
    search_paths: list[str] | tuple[str, ...] = (),
) -> StudySpec:
    """Parse and validate TOML ``text``; raises :class:`SpecError` listing every problem."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError([f"not valid TOML: {exc}"], source) from None
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
    if not isinstance(name, str) or not name:
        problems.append(f"study.name must be a non-empty string, got {name!r}")
    task_ref = study.get("task")
    try:
        task = import_task(task_ref, search_paths)
    except ValueError as exc:
        raise SpecError(problems + [str(exc)], source) from None
    types_ = _params_types(task)

    def check_param(where: str, key: str, value: Any) -> Any:
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
    baseline = None
    if base_raw is not None:
        baseline = {k: check_param(f"baseline.{k}", k, v) for k, v in base_raw.items()}

    plot_raw = dict(raw.get("plot", {}))
    for key in plot_raw:
        if key not in _PLOT_KEYS:
            problems.append(_unknown("plot key", key, _PLOT_KEYS))
    metric = plot_raw.get("metric")
    if not isinstance(metric, str) or not metric:
        problems.append(f"plot.metric must name the task metric to plot, got {metric!r}")
        metric = ""
    bits = plot_raw.get("bits")
    if bits is not None:
        if bits not in grid_raw:
            problems.append(
                f"plot.bits {bits!r} must be a grid field; grid fields: {sorted(grid_raw)}"
            )
        elif bits in types_ and not (_is_format_type(types_[bits]) or types_[bits] is int):
            problems.append(
                f"plot.bits {bits!r} must be a format or integer field, "
                f"but it is {_describe(types_[bits])}"
            )
    lr = plot_raw.get("lr")
    if lr is not None and lr not in grid_raw and lr not in fixed_raw and lr not in types_:
        problems.append(
            f"plot.lr {lr!r} must be a parameter of the task; allowed: {sorted(types_)}"
        )
    bits_of = plot_raw.get("bits_of", "wl")
    if bits_of not in ("wl", "fl"):
        problems.append(f"plot.bits_of {bits_of!r} is not allowed; allowed: 'wl', 'fl'")
    default_goal = "max" if "acc" in metric.lower() else "min"
    goal = plot_raw.get("goal", default_goal)
    if goal not in ("min", "max"):
        problems.append(f"plot.goal {goal!r} is not allowed; allowed: 'min', 'max'")
    series = plot_raw.get("series")
    if series is not None:
        if not isinstance(series, list) or any(s not in grid_raw for s in series):
            problems.append(
                f"plot.series must be a list of grid fields {sorted(grid_raw)}, got {series!r}"
            )
        series = tuple(series)
    plugins = plot_raw.get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        problems.append(f"plot.plugins must be a list of module names, got {plugins!r}")
        plugins = []
    curve_metric = plot_raw.get("curve_metric")
    step_label = plot_raw.get("step_label")
    for key, value in (("curve_metric", curve_metric), ("step_label", step_label)):
        if value is not None and not isinstance(value, str):
            problems.append(f"plot.{key} must be a string, got {value!r}")
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
        plot=PlotSpec(
            metric, bits, bits_of, lr, goal, series, curve_metric, tuple(plugins), step_label
        ),
        description=str(study.get("description", "")),
        source=text,
        search_paths=tuple(str(p) for p in search_paths),
    )
    # build every trial now so a parameter combination the task's own
    # __post_init__ rejects also fails before anything runs
    try:
        trials = spec.trials()
    except (ValueError, TypeError) as exc:
        raise SpecError(
            [f"a trial's parameters were rejected by task {task.name!r}: {exc}"], source
        ) from None
    if not trials:
        raise SpecError(["the spec expands to no trials"], source)
    return spec


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate the spec file at ``path``.

    The current directory and the spec's repository root go on ``sys.path`` so
    that ``task = "models.tasks:lms"`` imports from the repository.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError([f"spec file {str(path)!r} does not exist"], str(path))
    search = [str(Path.cwd()), str(repo_root_of(path))]
    return parse_spec(path.read_text(), source=str(path), search_paths=search)
