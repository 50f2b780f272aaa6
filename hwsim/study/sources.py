"""Where task and plot-plugin code comes from: the trust model.

Code runs only from installed packages (``sys.path`` as Python set it up,
never the spec's folder or the current folder put in front), from the
``hwsim.tasks`` entry-point group that installed packages extend, and from a
folder the user names explicitly (``--tasks-from DIR``). Such a folder is
appended to the *end* of ``sys.path``, so it cannot shadow an installed module;
a module of that folder that an installed one would shadow is an error.

A spec names a task as ``"module.path:name"`` (the module registers it with
:func:`hwsim.study.task.register_task`), or by a bare ``"name"`` that an
entry point of group ``hwsim.tasks`` provides (``name = "package.module:fn"``).
The built-in tasks of the ``models`` package are registered that way in
``pyproject.toml`` (``lms``, ``classify``, ``kmeans``, ``two_layer``).
"""

from __future__ import annotations

import importlib
import re
import sys
from importlib.metadata import entry_points
from pathlib import Path

from hwsim.study.task import TASKS, Task

ENTRY_POINT_GROUP = "hwsim.tasks"
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_MODULE = re.compile(rf"^{_IDENT}(?:\.{_IDENT})*$")
_NAME = re.compile(rf"^{_IDENT}$")
ALLOWED = (
    "'module.path:task_name' (e.g. 'models.tasks:lms'; the module must be installed or in a "
    "--tasks-from folder) or a task name registered by an installed package's "
    f"'{ENTRY_POINT_GROUP}' entry point"
)


def check_ref(ref: object) -> str | None:
    """None when ``ref`` is a well-formed task reference, else what is wrong with it."""
    if not isinstance(ref, str) or not ref:
        return f"study.task must be {ALLOWED}, got {ref!r}"
    if ":" not in ref:
        if _NAME.match(ref):
            return None
        return f"study.task {ref!r} is not a task name; it must be {ALLOWED}"
    module, _, name = ref.partition(":")
    if not module:
        return f"study.task {ref!r} names no module before ':'; it must be {ALLOWED}"
    if module.startswith("."):
        return f"study.task {ref!r}: relative module names are not allowed; it must be {ALLOWED}"
    if not _MODULE.match(module):
        return f"study.task {ref!r}: {module!r} is not a dotted module name; it must be {ALLOWED}"
    if not _NAME.match(name):
        return f"study.task {ref!r}: {name!r} is not a task name; it must be {ALLOWED}"
    return None


def add_tasks_from(folders: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Append each folder (resolved) to the end of ``sys.path``; returns them resolved."""
    out = []
    for folder in folders:
        path = Path(folder).expanduser().resolve()
        if not path.is_dir():
            raise ValueError(f"--tasks-from {str(folder)!r} is not a folder")
        out.append(str(path))
        if str(path) not in sys.path:
            sys.path.append(str(path))
    return tuple(out)


def import_module(name: str, tasks_from: tuple[str, ...] = (), what: str = "module"):
    """Import ``name`` from installed packages or a ``tasks_from`` folder (appended last)."""
    folders = add_tasks_from(tasks_from)
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        where = f" or the --tasks-from folders {list(folders)}" if folders else ""
        raise ValueError(
            f"{what} {name!r} cannot be imported ({exc}): it is searched in installed "
            f"packages{where}; to load it from a folder, name that folder with --tasks-from DIR"
        ) from exc
    _check_not_shadowed(name, module, folders)
    return module


def _check_not_shadowed(name: str, module, folders: tuple[str, ...]) -> None:
    top = name.split(".")[0]
    for folder in folders:
        local = Path(folder) / top
        if local.is_dir() or local.with_suffix(".py").is_file():
            origin = getattr(sys.modules.get(top), "__file__", None) or ""
            if origin and not Path(origin).resolve().is_relative_to(folder):
                raise ValueError(
                    f"module {top!r} of --tasks-from {folder!r} is shadowed by the installed "
                    f"{origin!r}; rename the module in {folder!r}"
                )


def entry_point_tasks() -> dict[str, str]:
    """Task name -> ``module:attr`` of every ``hwsim.tasks`` entry point installed."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def resolve_task(ref: str, tasks_from: tuple[str, ...] = ()) -> Task:
    """The :class:`Task` that ``ref`` names; ValueError saying why not."""
    problem = check_ref(ref)
    if problem:
        raise ValueError(problem)
    if ":" in ref:
        module_name, _, name = ref.partition(":")
    else:
        registered = entry_point_tasks()
        if ref not in registered:
            raise ValueError(
                f"study.task {ref!r}: no installed package registers a task {ref!r} "
                f"(entry points {ENTRY_POINT_GROUP}: {sorted(registered) or 'none'}); "
                f"it must be {ALLOWED}"
            )
        module_name, name = registered[ref].partition(":")[0], ref
    module = import_module(module_name, tasks_from, what=f"study.task {ref!r}: module")
    task = TASKS.get(name)
    if task is None:
        raise ValueError(
            f"study.task {ref!r}: module {module.__name__!r} registers no task {name!r}; "
            f"registered tasks: {sorted(TASKS) or 'none'}"
        )
    return task
