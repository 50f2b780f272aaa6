"""The import graph of ``hwsim`` keeps the layers of DESIGN.md as floors.

Floor order, bottom to top (a module imports only from its own floor or
below, and never from the repository's ``models/``):

====  ==================================================================
0     ``hwsim.errors``, ``hwsim.formats``, ``hwsim.modes``: value types
1     ``hwsim.plan``: backend-neutral decisions (GEMM plan, argument
      checks, seeds, a format's kernel constants, the LMS plan)
2     ``hwsim.kernels`` (Numba) and ``hwsim.torch_path`` (torch ops)
3     ``hwsim.ops`` and the package facade ``hwsim`` (its ``__init__``
      re-exports the ops): the public datapath functions, dispatching
4     ``hwsim.nn``, ``hwsim.optim``, ``hwsim.schedules``
5     ``hwsim.study``: spec, runner, store, plots, report
6     ``hwsim.theory``, ``hwsim.cost``
7     ``hwsim.cli``
====  ==================================================================

Every module's source is parsed (``ast``; nothing is imported, so no import
side effects count or hide anything), and every ``import`` statement is
checked, those inside functions included: a lazy import is still an arrow.
The packages' own graph must also be free of circles.
"""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "hwsim"

FLOORS: dict[str, int] = {
    "hwsim.errors": 0,
    "hwsim.formats": 0,
    "hwsim.modes": 0,
    "hwsim.plan": 1,
    "hwsim.kernels": 2,
    "hwsim.torch_path": 2,
    "hwsim.ops": 3,
    "hwsim": 3,
    "hwsim.nn": 4,
    "hwsim.optim": 4,
    "hwsim.schedules": 4,
    "hwsim.study": 5,
    "hwsim.theory": 6,
    "hwsim.cost": 6,
    "hwsim.cli": 7,
    "hwsim.cli_search": 7,
    "hwsim.__main__": 7,
}


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package under ``root``: dotted name -> source file
    (pkgutil over the directories, no imports)."""
    found = {"hwsim": root / "__init__.py"}

    def walk(path: Path, prefix: str) -> None:
        for info in pkgutil.iter_modules([str(path)]):
            name = f"{prefix}.{info.name}"
            if info.ispkg:
                found[name] = path / info.name / "__init__.py"
                walk(path / info.name, name)
            else:
                found[name] = path / f"{info.name}.py"

    walk(root, "hwsim")
    return found


def imported_names(name: str, path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in the module's source; ``from
    package import name`` counts as ``package.name`` (a submodule or a name
    defined in the package: :func:`owner` finds the package either way)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            out.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
    return out


def owner(dotted: str) -> str | None:
    """The entry of FLOORS that ``dotted`` belongs to (longest prefix), or
    None outside hwsim."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in FLOORS:
            return key
    return None


def violations(name: str, path: Path) -> list[str]:
    """Why the module breaks the floors (empty when it keeps them)."""
    here = owner(name)
    if here is None:
        return [f"{name} belongs to no floor; add it to FLOORS in {__file__}"]
    bad = []
    for line, target in imported_names(name, path):
        if target == "models" or target.startswith("models."):
            bad.append(f"{path.name}:{line} imports {target}: the library never imports models/")
            continue
        there = owner(target)
        if there is not None and FLOORS[there] > FLOORS[here]:
            bad.append(
                f"{path.name}:{line} imports {target} (floor {FLOORS[there]}, {there}) from "
                f"floor {FLOORS[here]} ({here})"
            )
    return bad


MODULES = modules()


def test_every_module_is_found_and_has_a_floor():
    assert {"hwsim.plan.gemm", "hwsim.kernels.lms", "hwsim.ops.matmul", "hwsim.cli"} <= set(MODULES)
    assert all(owner(name) is not None for name in MODULES), sorted(
        name for name in MODULES if owner(name) is None
    )


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_run_down_the_floors(name):
    assert violations(name, MODULES[name]) == []


def package_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """An arrow between two FLOORS entries for every import between them
    (the facade ``hwsim``'s own re-exports left out: it sits on the ops floor
    and imports below it by design)."""
    graph: dict[str, set[str]] = {key: set() for key in FLOORS}
    for name, path in mods.items():
        here = owner(name)
        for _, target in imported_names(name, path):
            there = owner(target)
            if there is not None and there != here and here != "hwsim":
                graph[here].add(there)
    return graph


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path (first node repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return trail[trail.index(nxt) :] + [nxt] if nxt in trail else trail + [nxt]
            if nxt not in state:
                found = visit(nxt, trail + [nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [node])
            if found:
                return found
    return None


def test_the_packages_import_no_circle():
    """With the floors this matters within one floor (kernels and torch_path;
    nn, optim and schedules)."""
    assert find_circle(package_graph(MODULES)) is None


def test_a_bad_import_is_caught(tmp_path):
    """The checks above can fail: a kernel module importing the ops, a torch
    path module importing models/, and a circle between two packages."""
    kernel = tmp_path / "jit.py"
    kernel.write_text("def f():\n    from hwsim.ops.quantize import quantize\n")
    assert violations("hwsim.kernels.jit", kernel) == [
        "jit.py:2 imports hwsim.ops.quantize.quantize (floor 3, hwsim.ops) from floor 2 "
        "(hwsim.kernels)"
    ]
    relative = tmp_path / "core.py"
    relative.write_text("from ..ops import matmul\nimport models.lms\n")
    found = violations("hwsim.torch_path.core", relative)
    assert len(found) == 2 and "hwsim.ops.matmul" in found[0] and "models/" in found[1]
    assert violations("hwsim.ops.matmul", relative) == [found[1]]  # same floor: fine
    graph = {key: set() for key in FLOORS}
    graph["hwsim.kernels"].add("hwsim.torch_path")
    assert find_circle(graph) is None
    graph["hwsim.torch_path"].add("hwsim.kernels")
    assert find_circle(graph) == ["hwsim.kernels", "hwsim.torch_path", "hwsim.kernels"]
