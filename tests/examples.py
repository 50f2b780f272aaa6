"""How many examples the costliest property tests draw: fewer under CI
(``CI`` set: 2 cores, the suite's time budget), where each also runs
derandomized (tests/conftest.py); the full count locally. The cost of these
tests is mostly the JIT compiling a kernel per drawn mode combination, so
fewer examples compile fewer kernels."""

from __future__ import annotations

import os

CI = bool(os.environ.get("CI"))


def examples(local: int, ci: int) -> int:
    """``local`` examples, or ``ci`` under CI."""
    return ci if CI else local
