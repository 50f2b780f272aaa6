"""Shared by the study tasks (:mod:`models.tasks`): field validation, schedules, dB."""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Literal

import numpy as np

from hwsim.formats import FixedPoint, parse_format

RoundingName = Literal["nearest", "nearest_away", "floor", "zero", "stochastic"]
OptimizerName = Literal["sgd", "signsgd", "adam", "adagrad", "rmsprop"]


def _validate(params) -> None:
    """Check every field against its type hint; convert format strings.

    ``Literal`` fields must be one of their choices, ``FixedPoint | None``
    fields accept a FixedPoint, a format string or ``"float"``/None, numbers
    must be numbers (bools are not). The datapath fields a class gets from
    :func:`models.datapath_params.with_datapath` are checked there."""
    hints = typing.get_type_hints(type(params))
    skip = getattr(type(params), "DATAPATH_FIELDS", ())
    for f in dataclasses.fields(params):
        if f.name in skip:
            continue
        value = getattr(params, f.name)
        hint = hints[f.name]
        where = f"{type(params).__name__}.{f.name}"
        if typing.get_origin(hint) is Literal:
            if value not in typing.get_args(hint):
                raise ValueError(
                    f"{where}: {value!r} is not allowed; choose one of {list(typing.get_args(hint))}"
                )
        elif FixedPoint in typing.get_args(hint):
            try:
                object.__setattr__(params, f.name, parse_format(value))
            except (ValueError, TypeError) as err:
                raise ValueError(
                    f"{where}: bad format {value!r} ({err}); use e.g. 'fx16.12' or 'float'"
                ) from None
        elif hint is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{where}: must be true or false, got {value!r}")
        elif hint is int:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{where}: must be an integer, got {value!r}")
        elif hint is float:
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
            ):
                raise ValueError(f"{where}: must be a finite number, got {value!r}")
            object.__setattr__(params, f.name, float(value))


def _require(params, name: str, ok: bool, allowed: str) -> None:
    if not ok:
        raise ValueError(
            f"{type(params).__name__}.{name}: {getattr(params, name)!r} is not allowed; "
            f"it must be {allowed}"
        )


def _parse_schedule(params):
    """The gear-shift policy of ``params.schedule`` (``hwsim.schedules``), or
    None for a constant step."""
    if isinstance(params.schedule, str) and params.schedule.strip().lower() == "constant":
        return None
    from hwsim.schedules import GearShiftPolicy

    try:
        return GearShiftPolicy.parse(params.schedule)
    except ValueError as err:
        raise ValueError(f"{type(params).__name__}.schedule: {err}") from None


def _db(value: float) -> float:
    return 10.0 * math.log10(value) if value > 0 else -math.inf


SEED_MAX = 2**32 - 1


def _require_seed(params) -> None:
    _require(params, "seed", 0 <= params.seed <= SEED_MAX, f"an integer in [0, {SEED_MAX}]")
