"""The training-datapath parameters of a study task, named as the library names them.

Every list here is read from the library, so a field added to
``hwsim.nn.Precision``, a precision argument added to ``hwsim.optim`` or a
hyperparameter added to one of the five optimizers becomes a task parameter
without an edit here (``tests/test_models_tasks.py`` checks the README lists
them all):

- :data:`LAYER_FIELDS`: the fields of :class:`hwsim.nn.Precision` but ``seed``
  (the trial's ``seed`` seeds it): the layers' formats (``weight``,
  ``activation``, ``output``, ``grad_activation``, ``grad_weight``,
  ``accumulator`` = the forward MAC accumulator, ``grad_activation_accumulator``,
  ``grad_weight_accumulator``, ``product``), their ``<field>_rounding``,
  ``rounding`` (the default of every tensor, layer and optimizer), ``overflow``
  (layers and optimizer) and ``straight_through``;
- :data:`OPT_FIELDS`: the optimizer's own formats ``opt_<t>`` and roundings
  ``opt_<t>_rounding`` for each tensor ``t`` of :data:`hwsim.optim.precision.TENSORS`
  (``weight``, ``accumulator``, ``grad``, ``state``, ``update``);
- :data:`HYPERPARAMETERS`: every hyperparameter of the optimizers' signatures
  (``momentum``, ``betas``, ``eps``, ...) with the optimizers that take it.
  ``None`` (the default) leaves the chosen optimizer's own default.

:func:`with_datapath` adds them to a task's parameter dataclass.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any, Literal

from hwsim.formats import FixedPoint, FloatingPoint, parse_format
from hwsim.formats.block import MX, BlockFloatingPoint
from hwsim.modes import Overflow
from hwsim.nn.precision import TENSOR_FIELDS, Precision
from hwsim.optim import OPTIMIZERS
from hwsim.optim.precision import PRECISION_ARGS, PRECISION_DEFAULTS, normalize_group
from models.task_common import RoundingName

Format = FixedPoint | FloatingPoint | BlockFloatingPoint | MX | None
"""Any format kind the library parses (``None``/``"float"``: not quantized)."""

_FORMAT_KEYS = {"wl", "fl", "signed", "exp", "man", "subnormals", "inf", "nan", "saturate"}
FOLLOW_WEIGHT = "weight"  # opt_weight's default: the optimizer keeps the layers' weight format

# -- the lists, read from the library ----------------------------------------------

LAYER_FIELDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(Precision) if f.name != "seed"
)
LAYER_FORMATS: tuple[str, ...] = TENSOR_FIELDS
_SHARED = ("rounding", "overflow", "seed")  # one value for the layers and the optimizer
OPT_FIELDS: tuple[str, ...] = tuple(
    f"opt_{a.name}"
    for a in PRECISION_ARGS
    if a.kind in ("format", "rounding") and a.name not in _SHARED
)
OPT_FORMATS: tuple[str, ...] = tuple(f"opt_{a.name}" for a in PRECISION_ARGS if a.kind == "format")

# keyword arguments that are not hyperparameters of the rule: torch's execution
# flags, hwsim's telemetry switch, and ``maximize`` (a task minimizes its loss)
_NOT_HYPERPARAMETERS = {"self", "params", "lr", "maximize", "telemetry", "fused", "foreach",
                        "differentiable", "capturable", *PRECISION_DEFAULTS}  # fmt: skip


def _hyperparameters() -> dict[str, tuple[Any, tuple[str, ...]]]:
    """name -> (type hint, names of the optimizers that take it), in signature order."""
    out: dict[str, tuple[Any, list[str]]] = {}
    for opt_name, cls in OPTIMIZERS.items():
        hints = typing.get_type_hints(cls.__init__)
        for name, param in inspect.signature(cls.__init__).parameters.items():
            if name in _NOT_HYPERPARAMETERS or param.kind is inspect.Parameter.VAR_KEYWORD:
                continue
            out.setdefault(name, (hints[name], []))[1].append(opt_name)
    return {name: (hint, tuple(takers)) for name, (hint, takers) in out.items()}


HYPERPARAMETERS: dict[str, tuple[Any, tuple[str, ...]]] = _hyperparameters()

RENAMED: dict[str, str] = {
    "layer_accumulator": "'accumulator' (the layers' forward MAC accumulator)",
    "grad": "'opt_grad' (the optimizer's gradient format; 'grad_weight' is the layers' "
    "weight-gradient format)",
    "state": "'opt_state'",
    "grad_rounding": "'opt_grad_rounding'",
}
"""Old task parameter names and their new ones (a spec using one is refused)."""


def _field_type(name: str) -> Any:
    if name in LAYER_FORMATS:
        return Format
    if name == "opt_weight":
        return Format | Literal["weight"]
    if name == "opt_state":
        return Format | dict[str, Format]
    if name in OPT_FORMATS:
        return Format
    if name.endswith("_rounding"):
        return RoundingName | None
    if name == "rounding":
        return RoundingName
    if name == "overflow":
        return Literal["saturate", "wrap"]
    return bool  # straight_through


def datapath_fields(*, layers: bool = True) -> list[tuple[str, Any, dataclasses.Field]]:
    """The fields :func:`with_datapath` adds, for ``dataclasses.make_dataclass``."""
    precision_defaults = {f.name: f.default for f in dataclasses.fields(Precision)}
    names = LAYER_FIELDS if layers else ("weight", "weight_rounding", "rounding", "overflow")
    fields = [(n, _field_type(n), dataclasses.field(default=precision_defaults[n])) for n in names]
    if layers:
        fields.append(
            ("layers", dict[str, dict[str, Any]], dataclasses.field(default_factory=dict))
        )
    for name in OPT_FIELDS:
        default = FOLLOW_WEIGHT if name == "opt_weight" else None
        fields.append((name, _field_type(name), dataclasses.field(default=default)))
    for name, (hint, _) in HYPERPARAMETERS.items():
        fields.append((name, hint | None, dataclasses.field(default=None)))
    return fields


# -- validation ----------------------------------------------------------------------


def _fail(params, name: str, message: str) -> typing.NoReturn:
    raise ValueError(f"{type(params).__name__}.{name}: {message}")


def _format(params, name: str, value):
    try:
        return parse_format(value)
    except (ValueError, TypeError) as err:
        _fail(params, name, f"bad format {value!r} ({err}); use e.g. 'fx16.12', 'bf16', "
              "'mxfp8_e4m3' or 'float'")  # fmt: skip


def _rounding(params, name: str, value, optional: bool = True):
    if value is None and optional:
        return None
    choices = typing.get_args(RoundingName)
    if value not in choices:
        allowed = f"None (follow rounding) or one of {list(choices)}" if optional else choices
        _fail(params, name, f"{value!r} is not allowed; choose {allowed}")
    return value


def _set(params, name: str, value) -> None:
    object.__setattr__(params, name, value)


def _check_value(params, name: str, value, where: str | None = None):
    """``value`` of field ``name`` parsed (formats) and checked; errors name ``where``."""
    where = where or name
    if name in LAYER_FORMATS or (name in OPT_FORMATS and name not in ("opt_weight", "opt_state")):
        return _format(params, where, value)
    if name.endswith("_rounding"):
        return _rounding(params, where, value)
    if name == "rounding":
        return _rounding(params, where, value, optional=False)
    if name == "overflow":
        try:
            return str(Overflow.parse(value))
        except ValueError as err:
            _fail(params, where, str(err))
    if name == "straight_through" and not isinstance(value, bool):
        _fail(params, where, f"must be true or false, got {value!r}")
    return value


def _check_opt_state(params, state_names: tuple[str, ...]):
    value = params.opt_state
    if not isinstance(value, dict) or set(value) <= _FORMAT_KEYS:
        return _format(params, "opt_state", value)
    unknown = sorted(set(value) - set(state_names))
    if unknown:
        _fail(params, "opt_state", f"state(s) {unknown} are not states of optimizer "
              f"{params.optimizer!r}; its states are {list(state_names)}")  # fmt: skip
    return {k: _format(params, f"opt_state.{k}", v) for k, v in value.items()}


def _check_hyperparameter(params, name: str, hint, takers: tuple[str, ...]):
    value = getattr(params, name)
    if value is None:
        return None
    optimizer = getattr(params, "optimizer", "sgd")
    if optimizer not in takers:
        _fail(params, name, f"{value!r} is set but optimizer {optimizer!r} does not take "
              f"{name!r}; the optimizers that take it: {list(takers)} (leave it unset for "
              f"{optimizer!r})")  # fmt: skip
    if hint is bool:
        if not isinstance(value, bool):
            _fail(params, name, f"must be true or false, got {value!r}")
        return value
    if typing.get_origin(hint) is tuple:
        items = typing.get_args(hint)
        if not isinstance(value, list | tuple) or len(value) != len(items):
            _fail(params, name, f"must be a list of {len(items)} numbers, got {value!r}")
        return tuple(_number(params, name, v) for v in value)
    return _number(params, name, value)


def _number(params, name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        _fail(params, name, f"must be a number, got {value!r}")
    return float(value)


def check_datapath(params, n_layers: int | None = None) -> None:
    """Parse and check the datapath fields of ``params`` in place (ValueError
    naming the field, the bad value and what is allowed). ``n_layers``: how
    many quantizable layers the model has (the keys ``layers`` may use)."""
    names = {f.name for f in dataclasses.fields(params)}
    for name in (*LAYER_FIELDS, *OPT_FIELDS):
        if name in names:
            _set(params, name, _check_value(params, name, getattr(params, name)))
    if "opt_weight" in names and params.opt_weight != FOLLOW_WEIGHT:
        _set(params, "opt_weight", _format(params, "opt_weight", params.opt_weight))
    optimizer = getattr(params, "optimizer", "sgd")
    _set(params, "opt_state", _check_opt_state(params, OPTIMIZERS[optimizer].rule.state_names))
    for name, (hint, takers) in HYPERPARAMETERS.items():
        _set(params, name, _check_hyperparameter(params, name, hint, takers))
    _check_optimizer_precision(params)
    if "layers" in names:
        _set(params, "layers", _check_layers(params, n_layers))
        for index in range(n_layers or 1):
            layer_precision(params, index)  # Precision's own checks, before anything runs


def _check_optimizer_precision(params) -> None:
    """The optimizer's own parsing of its precision arguments, now rather than
    when the trial runs (a format kind it does not take fails here)."""
    kwargs = optimizer_kwargs(params)
    group = {k: kwargs.get(k, v) for k, v in PRECISION_DEFAULTS.items()}
    try:
        normalize_group(group, OPTIMIZERS[params.optimizer].rule.state_names)
    except ValueError as err:
        _fail(
            params, "opt_*", f"optimizer {params.optimizer!r} refuses a format (opt_<name>): {err}"
        )


def _check_layers(params, n_layers: int | None) -> dict[str, dict[str, Any]]:
    table = params.layers
    if not isinstance(table, dict):
        _fail(params, "layers", f"must be a table from layer index to fields, got {table!r}")
    out = {}
    for key, fields in table.items():
        where = f"layers.{key}"
        if not (isinstance(key, str) and key.isdigit() and int(key) < (n_layers or 0)):
            _fail(params, where, f"{key!r} is not a layer: keys are the index of a Linear/Conv2d "
                  f"layer in the model, in order, '0' to '{(n_layers or 1) - 1}'")  # fmt: skip
        if not isinstance(fields, dict):
            _fail(params, where, f"must be a table of Precision fields, got {fields!r}")
        unknown = sorted(set(fields) - set(LAYER_FIELDS))
        if unknown:
            _fail(params, where, f"unknown field(s) {unknown}; a layer takes {list(LAYER_FIELDS)}")
        out[key] = {k: _check_value(params, k, v, f"{where}.{k}") for k, v in fields.items()}
    return out


# -- what the task builds from them ---------------------------------------------------


def layer_precision(params, index: int) -> Precision | None:
    """The :class:`hwsim.nn.Precision` of layer ``index`` (its ``layers`` entry
    over the task's fields), or None for a float layer."""
    kwargs = {n: getattr(params, n) for n in LAYER_FIELDS}
    kwargs.update(params.layers.get(str(index), {}))
    if all(kwargs[n] is None for n in LAYER_FORMATS):
        return None
    try:
        return Precision(**kwargs, seed=params.seed)
    except ValueError as err:
        hint = ""
        if "accumulator" in str(err) and kwargs["accumulator"] is not None:
            hint = (" ('accumulator' is the layers' forward MAC accumulator; the optimizer's "
                    "weight accumulator is 'opt_accumulator')")  # fmt: skip
        where = f"layers.{index}" if str(index) in params.layers else "layer precision"
        _fail(params, where, f"{err}{hint}")


def quantized_layers(params) -> bool:
    """True when the layers need quantizing: a layer format other than the
    weight is set, a layer has its own entry, or the optimizer's weight format
    is not the layers' (else the optimizer's weight grid is all the layers see)."""
    if params.layers:
        return True
    if any(getattr(params, n) is not None for n in LAYER_FORMATS if n != "weight"):
        return True
    return params.opt_weight != FOLLOW_WEIGHT and params.opt_weight != params.weight


def optimizer_kwargs(params) -> dict[str, Any]:
    """Keyword arguments of ``hwsim.optim.OPTIMIZERS[params.optimizer]`` from the
    task's fields (hyperparameters left at None are not passed: the optimizer's own
    default)."""
    follow = getattr(params, "opt_weight", FOLLOW_WEIGHT) == FOLLOW_WEIGHT
    kwargs: dict[str, Any] = {"rounding": params.rounding, "seed": params.seed}
    kwargs["overflow"] = getattr(params, "overflow", "saturate")
    for arg in PRECISION_ARGS:
        if arg.name in _SHARED:
            continue
        kwargs[arg.name] = getattr(params, f"opt_{arg.name}", None)
    if follow:
        kwargs["weight"] = params.weight
    if kwargs["weight_rounding"] is None:
        kwargs["weight_rounding"] = getattr(params, "weight_rounding", None)
    for name in HYPERPARAMETERS:
        if getattr(params, name, None) is not None:
            kwargs[name] = getattr(params, name)
    return kwargs


def with_datapath(
    base: type, *, layers: bool = True, n_layers=None, renamed: dict[str, str] | None = None
) -> type:
    """``base`` (a frozen dataclass) with the datapath fields added after its own,
    checked after ``base.__post_init__``; ``n_layers(params)`` gives the model's
    number of quantizable layers (``layers=True``). The new class carries
    :data:`RENAMED` so a spec naming an old parameter is told the new name."""
    base_post_init = getattr(base, "__post_init__", None)

    def __post_init__(self) -> None:
        if base_post_init is not None:
            base_post_init(self)
        check_datapath(self, n_layers(self) if n_layers is not None else None)

    fields = datapath_fields(layers=layers)
    namespace = {"__post_init__": __post_init__, "__doc__": base.__doc__,
                 "RENAMED": {**RENAMED, **(renamed or {})},
                 "DATAPATH_FIELDS": tuple(f[0] for f in fields)}  # fmt: skip
    cls = dataclasses.make_dataclass(
        base.__name__.removeprefix("_"), fields, bases=(base,), frozen=True, namespace=namespace
    )
    cls.__module__ = base.__module__  # pickled by reference, as the task module names it
    return cls
