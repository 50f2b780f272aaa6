"""Typing and coercion of one spec value against a task parameter's type hint."""

from __future__ import annotations

import difflib
import math
import types
import typing
from typing import Any, Literal

from hwsim.formats import FixedPoint, FloatingPoint, parse_format
from hwsim.formats.block import MX, BlockFloatingPoint
from hwsim.formats.scaled import Scaled

MAX_INT = 2**63 - 1  # what SQLite and JSON readers keep exactly


def _takes(tp, kind) -> bool:
    return tp is kind or kind in typing.get_args(tp)


def _is_format_type(tp) -> bool:
    """A parameter typed with a format kind: ``FixedPoint | None``,
    ``FixedPoint | FloatingPoint | None``, ``FloatingPoint``, ..."""
    return _takes(tp, FixedPoint) or _takes(tp, FloatingPoint)


def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if _is_format_type(tp):
        kinds = []
        if _takes(tp, FixedPoint):
            kinds.append("a fixed-point format like 'fx16.12' or a table {wl=16, fl=12}")
        if _takes(tp, FloatingPoint):
            kinds.append(
                "a floating-point format like 'bf16', 'fp8_e4m3', 'e5m2' or a table {exp=8, man=7}"
            )
        none = ", or 'float'" if type(None) in typing.get_args(tp) else ""
        return ", ".join(kinds) + none
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
    if origin is dict:
        return f"a table of {_describe(typing.get_args(tp)[1])}"
    if origin is tuple:
        return "a list of " + ", ".join(_describe(a) for a in typing.get_args(tp))
    if tp is Any:
        return "any value"
    return getattr(tp, "__name__", str(tp))


_FORMAT_TABLE_KEYS = {"wl", "fl", "signed", "exp", "man", "subnormals", "inf", "nan", "saturate"}


def _union_args(tp) -> tuple:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def coerce_value(tp, value: Any) -> Any:
    """Convert a TOML value to the parameter type ``tp``; ValueError saying what is allowed.

    Besides scalars, formats and ``Literal`` choices: ``dict[str, V]`` takes a
    table (each value coerced to ``V``; a format table such as ``{wl=16, fl=12}``
    stays a format where the type takes one) and ``tuple[A, B]`` a list of that
    length."""
    origin = typing.get_origin(tp)
    for arg in _union_args(tp):  # a named choice beside a format, e.g. Literal["weight"]
        if typing.get_origin(arg) is Literal and isinstance(value, str):
            if value in typing.get_args(arg):
                return value
    dict_types = [a for a in _union_args(tp) if typing.get_origin(a) is dict]
    if dict_types and isinstance(value, dict):
        if not (_is_format_type(tp) and set(value) <= _FORMAT_TABLE_KEYS):
            _, inner = typing.get_args(dict_types[0])
            out = {}
            for k, v in value.items():
                try:
                    out[str(k)] = coerce_value(inner, v)
                except ValueError as exc:
                    raise ValueError(f"[{k!r}]: {exc}") from None
            return out
    tuple_types = [a for a in _union_args(tp) if typing.get_origin(a) is tuple]
    if tuple_types and isinstance(value, list | tuple):
        items = typing.get_args(tuple_types[0])
        if len(value) != len(items):
            raise ValueError(f"{value!r} is not allowed; allowed: a list of {len(items)} values")
        return tuple(coerce_value(a, v) for a, v in zip(items, value, strict=True))
    if _is_format_type(tp):
        if isinstance(value, str) and not value.isascii():
            raise ValueError(
                f"{value!r} is not a number format: only ASCII letters and digits are "
                "allowed (e.g. 'fx16.12')"
            )
        try:
            fmt = parse_format(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a number format: {exc}") from None
        if fmt is None and type(None) not in typing.get_args(tp):
            raise ValueError(f"{value!r}: a number format is required here (not float)")
        for kind, name in ((FixedPoint, "fixed-point"), (FloatingPoint, "floating-point")):
            if isinstance(fmt, kind) and not _takes(tp, kind):
                raise ValueError(
                    f"{value!r} is a {name} format, which this parameter does not take; "
                    f"allowed: {_describe(tp)}"
                )
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
            if abs(value) > MAX_INT:
                raise ValueError(f"{value!r} is not allowed; allowed: an integer in ±(2**63 - 1)")
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
    """A JSON/TOML-friendly form of a parameter value (formats as 'fx16.12' or
    'bf16', float as None)."""
    if isinstance(value, FixedPoint | FloatingPoint | BlockFloatingPoint | MX | Scaled):
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


def expand_dotted(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with each dotted key ``"a.b.c" = v`` set as ``a[b][c] = v`` into
    the table parameter ``a`` (merged over a table given for ``a`` itself):
    how a grid sweeps one entry of a table, e.g. ``"layers.0.weight"``."""
    out = {k: v for k, v in values.items() if "." not in k}
    for key, value in values.items():
        if "." not in key:
            continue
        head, *path, last = key.split(".")
        table = out[head] = _copy_tables(out.get(head) or {})
        for part in path:
            table = table.setdefault(part, {})
        table[last] = value
    return out


def _copy_tables(value: Any) -> Any:
    return {k: _copy_tables(v) for k, v in value.items()} if isinstance(value, dict) else value


def unknown(kind: str, key: str, allowed) -> str:
    allowed = sorted(allowed)
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{kind} {key!r} is unknown{hint}; allowed: {', '.join(allowed)}"
