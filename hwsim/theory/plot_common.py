"""Helpers shared by the theory plot modules (:mod:`hwsim.theory.plots`)."""

from __future__ import annotations

import math

from hwsim.formats import FixedPoint, parse_format
from hwsim.study.plots import StudyData

GRAD_BITS = 8  # gradient word length assumed for a study whose gradients are float


def _task_name(data: StudyData) -> str:
    return data.spec["task"].rsplit(":", 1)[-1]


def _fmt(value) -> FixedPoint | None:
    try:
        return parse_format(value) if isinstance(value, str | type(None)) else value
    except ValueError:
        return None


def _db(x: float) -> float:
    return 10.0 * math.log10(x) if x > 0 and math.isfinite(x) else float("nan")
