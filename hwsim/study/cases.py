"""``[[cases]]``: tied parameter sets, crossed with the grid.

A grid sweeps each field independently; a *case* sets several fields together,
e.g. one number format for every tensor of a datapath::

    [[cases]]
    case = "static fx8"            # the label plots and reports use (optional)
    weight = "fx8.6"
    activation = "fx8.4"

    [[cases]]
    case = "mxint8"
    weight = "mxint8"
    activation = "mxint8"

Every grid combination runs once per case; a case's values override
``[fixed]`` (so ``[fixed]`` can hold the common default) and may not name a
grid field (set a parameter in one place). Without a ``case`` key a case is
labelled by its values (``weight=fx8.6, activation=fx8.4``). Labels are
distinct. The baseline trials (``[baseline]``) are not crossed with the cases.
Plots group trials by case (the pseudo-field ``case`` in ``plot.series``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

LABEL = "case"
MAX_LABEL = 100


def _label(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "(no change)"


def parse_cases(
    raw: Any,
    grid_raw: dict,
    check_param: Callable[[str, str, Any], Any],
    problems: list[str],
) -> tuple[tuple[str, dict[str, Any]], ...]:
    """The validated ``[[cases]]`` as ``(label, values)`` pairs; problems are
    appended to ``problems`` (each naming the case and key)."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw or not all(isinstance(c, dict) for c in raw):
        problems.append(
            "cases must be a non-empty array of tables ([[cases]] blocks of key = value), "
            f"got {raw!r}"
        )
        return ()
    out: list[tuple[str, dict[str, Any]]] = []
    for i, case in enumerate(raw):
        where = f"cases[{i}]"
        label = case.get(LABEL)
        if label is not None and not (isinstance(label, str) and 0 < len(label) <= MAX_LABEL):
            problems.append(f"{where}.{LABEL} must be a text of 1-{MAX_LABEL} characters, "
                            f"got {label!r}")  # fmt: skip
            label = None
        values = {}
        for key, value in case.items():
            if key == LABEL:
                continue
            if key in grid_raw:
                problems.append(
                    f"{where}.{key}: also a grid field; set a parameter in the grid or in "
                    "the cases, not both"
                )
                continue
            values[key] = check_param(f"{where}.{key}", key, value)
        if not values:
            problems.append(f"{where}: a case must set at least one parameter")
        out.append((label if label is not None else _label(case_plain(case)), values))
    labels = [label for label, _ in out]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        problems.append(f"cases: repeated labels {repeated}; give each case its own `case` name")
    return tuple(out)


def case_plain(case: dict) -> dict:
    return {k: v for k, v in case.items() if k != LABEL}
