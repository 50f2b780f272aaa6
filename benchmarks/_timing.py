"""Timing helpers shared by the benchmark scripts (the one place for them)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


def best_time(
    fn: Callable[[], object], repeat: int = 7, warmup: int = 1, budget_s: float | None = None
) -> float:
    """Best wall time of ``fn()`` in seconds over up to ``repeat`` runs after
    ``warmup`` calls (JIT compile, thread pools); stops early once ``budget_s``
    seconds have been spent on the timed runs."""
    for _ in range(warmup):
        fn()
    best, start = math.inf, time.perf_counter()
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        if budget_s is not None and time.perf_counter() - start > budget_s:
            break
    return best


def interleaved_best(
    fns: dict[str, Callable[[], object]], rounds: int = 7, warmup: int = 1
) -> dict[str, float]:
    """Best wall time of each function over ``rounds`` rounds that alternate
    between them, so load on a shared machine hits them alike and the ratios
    between them stay meaningful."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    best = dict.fromkeys(fns, math.inf)
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def print_table(headers: list[str], rows: list[list]) -> None:
    """A Markdown table; floats to 3 significant digits."""
    cells = [[str(h) for h in headers]] + [
        [f"{c:.3g}" if isinstance(c, float) else str(c) for c in r] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(cells[0], widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
