"""Per-param-group precision: which tensors are quantized, to what, how.

An optimizer step touches five tensors; each has a format (``None`` = float)
and a rounding mode:

======================  ==================================================
``grad``                the gradient, quantized before the rule sees it
``state``               the rule's state (momentum, Adam's m and v, ...)
``update``              the rule's output (``-lr * direction``)
``accumulator``         the master copy of the weight the update is added to
``weight``              what the model sees: the accumulator, re-quantized
======================  ==================================================

``rounding=`` sets every mode; ``<tensor>_rounding=`` refines one. ``state``
may be one format or a dict from state name (``"momentum_buffer"``,
``"exp_avg"``, ...) to format.

Format kinds: every tensor takes a :class:`~hwsim.formats.FixedPoint`
(``"fx16.12"``) or a :class:`~hwsim.formats.FloatingPoint` (``"bf16"``,
``"fp16"``, ``"fp8_e4m3"``, ``"fp32"``, ...), mixed freely across tensors;
``state`` also takes the block-scaled formats (:class:`~hwsim.formats.block.
BlockFloatingPoint`, :class:`~hwsim.formats.block.MX`: block-wise 8-bit
states, Dettmers et al. 2022), blocked along the flattened state tensor (C
order) as bitsandbytes blocks its states, so a block format's axis must be
-1 or None there. ``overflow=`` applies to the fixed-point tensors; a float
format overflows as its ``saturate`` flag says (``"bf16_sat"`` clamps), and
block elements always saturate.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
from typing import Any, NamedTuple

import torch

from hwsim.formats import FixedPoint, FloatingPoint, parse_format
from hwsim.formats.block import MX, BlockFloatingPoint
from hwsim.modes import Overflow, Rounding
from hwsim.torch_path.core import counter_uniform


class PrecisionArg(NamedTuple):
    """One precision argument: every optimizer's signature, the param group
    defaults, the docs and the parsing of a group come from these records
    (:data:`PRECISION_ARGS`), so an argument is declared in one place."""

    name: str
    annotation: str  # as signatures show it
    default: Any
    doc: str
    kind: str  # "format", "rounding", "overflow" or "seed": how a group parses it


_FORMAT = "FixedPoint | FloatingPoint | str | None"
_ROUNDINGS = '``"nearest"``, ``"nearest_away"``, ``"floor"``, ``"zero"``, ``"stochastic"``'
_TENSOR_DOCS = {
    "weight": 'format of the weight the model sees (fixed or floating point, e.g. ``"bf16"``)',
    "accumulator": 'format of the weight accumulator (master copy; ``"fp32"`` for the usual '
    "bf16 recipe)",
    "grad": "format the gradient is quantized to before the rule",
    "state": "format of the rule's state tensors, or a dict from state name to format; fixed, "
    'floating point or block scaled (``"mxint8"``, blocked along the flattened state)',
    "update": "format of the update before it is added",
}
_BLOCK = "BlockFloatingPoint | MX"
_STATE_FORMAT = f"{_FORMAT} | {_BLOCK} | dict[str, {_FORMAT} | {_BLOCK}]"
TENSORS = tuple(_TENSOR_DOCS)
ROUNDING_KEYS = tuple(f"{t}_rounding" for t in TENSORS)
PRECISION_ARGS: tuple[PrecisionArg, ...] = (
    *(
        PrecisionArg(t, _STATE_FORMAT if t == "state" else _FORMAT, None, doc, "format")
        for t, doc in _TENSOR_DOCS.items()
    ),
    PrecisionArg(
        "rounding",
        "str",
        "nearest",
        f"rounding of every quantized tensor ({_ROUNDINGS})",
        "rounding",
    ),
    *(
        PrecisionArg(
            k,
            "str | None",
            None,
            f"overrides ``rounding`` for the {t} (``None``: follow it)",
            "rounding",
        )
        for t, k in zip(TENSORS, ROUNDING_KEYS, strict=True)
    ),
    PrecisionArg(
        "overflow",
        "str",
        "saturate",
        '``"saturate"`` or ``"wrap"``, for every quantized tensor',
        "overflow",
    ),
    PrecisionArg(
        "seed",
        "int | None",
        None,
        "seed of the stochastic rounding noise, counter-based per (seed, step, param index, "
        "tensor), so a resumed run continues bit-identically; ``None`` draws a fresh one "
        "(stored in the param groups, hence in ``state_dict()``)",
        "seed",
    ),
)
PRECISION_DEFAULTS: dict[str, Any] = {a.name: a.default for a in PRECISION_ARGS}
MAX_CODE_BITS = 52  # codes live in float64 tensors (torch_path.core.scaled_to_code_float)

# stream ids that keep the stochastic-rounding noise of different tensors apart
STREAM = {"grad": 1, "update": 2, "accumulator": 3, "weight": 4, "init": 5}
STATE_STREAM_BASE = 16

_MASK64 = (1 << 64) - 1


def mix_seed(*words: int) -> int:
    """A 64-bit seed from integers (SplitMix64 finalizer chained over them):
    the counter noise of (seed, step, param index, tensor) is independent of
    any other combination and needs no stored generator state."""
    z = 0x243F6A8885A308D3
    for w in words:
        z = (z + (int(w) & _MASK64) + 0x9E3779B97F4A7C15) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        z ^= z >> 31
    return z


def uniforms(seed: int, like: torch.Tensor) -> torch.Tensor:
    """Float64 uniforms in [0, 1) shaped like ``like``, from counter noise."""
    return counter_uniform(seed, like.numel(), device=like.device).reshape(like.shape)


def _format(value, what: str, state: bool = False):
    """A tensor's format from its argument: fixed point (codes up to
    :data:`MAX_CODE_BITS` bits), floating point, or (``state`` only) block
    scaled along the flattened tensor; a clear ValueError otherwise."""
    try:
        fmt = parse_format(value)
    except ValueError as err:
        raise ValueError(f"{what}: {err}") from None
    if isinstance(fmt, BlockFloatingPoint | MX):
        if not state:
            raise ValueError(
                f"{what}: the block-scaled format {fmt} is taken by ``state`` only (block-wise "
                f"optimizer states, Dettmers et al. 2022); the weight, accumulator, grad and "
                f"update take fixed-point or floating-point formats (or None for float)"
            )
        if fmt.axis not in (-1, None):
            raise ValueError(
                f"{what}: {fmt} blocks along axis {fmt.axis}; optimizer states are blocked "
                f"along the flattened tensor (C order, as bitsandbytes), so the format's axis "
                f"must be -1 (the default) or None"
            )
    if isinstance(fmt, FixedPoint) and fmt.wl > MAX_CODE_BITS:
        raise ValueError(
            f"{what} format {fmt} has wl={fmt.wl}; the optimizers keep codes in float64, "
            f"so wl must be at most {MAX_CODE_BITS}"
        )
    return fmt


def normalize_group(group: dict, state_names: tuple[str, ...]) -> None:
    """Parse the precision entries of a param group in place (strings ->
    FixedPoint / Rounding / Overflow), raising ValueError on bad values; each
    entry as its :data:`PRECISION_ARGS` kind says."""
    for arg in PRECISION_ARGS:
        group[arg.name] = _PARSE[arg.kind](group[arg.name], arg.name, state_names)


def _parse_format(value, name: str, state_names: tuple[str, ...]):
    if name != "state" or not isinstance(value, dict):
        return _format(value, name, name == "state")
    unknown = set(value) - set(state_names)
    if unknown:
        raise ValueError(
            f"state formats given for unknown state(s) {sorted(unknown)}; this optimizer's "
            f"states are {list(state_names)}"
        )
    return {k: _format(v, f"state[{k!r}]", True) for k, v in value.items()}


def _parse_rounding(value, name: str, state_names) -> Rounding | None:
    if value is None and name != "rounding":  # an override left unset follows ``rounding``
        return None
    return Rounding.parse(value)


def _parse_seed(seed, name: str, state_names) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int (or None for a fresh one), got {seed!r}")
    if not 0 <= seed < 1 << 64:  # mix_seed takes 64 bits: a larger seed would alias another
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed}")
    return seed


_PARSE = {
    "format": _parse_format,
    "rounding": _parse_rounding,
    "overflow": lambda value, name, state_names: Overflow.parse(value),
    "seed": _parse_seed,
}


def check_precision_names(owner: str, given) -> None:
    """TypeError, as Python's for an unknown keyword, where ``given`` holds a
    name that is not a precision argument (naming the closest one)."""
    unknown = sorted(set(given) - set(PRECISION_DEFAULTS))
    if unknown:
        close = difflib.get_close_matches(unknown[0], PRECISION_DEFAULTS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TypeError(
            f"{owner}() got unexpected keyword argument(s) {unknown}{hint}; the precision "
            f"arguments are {list(PRECISION_DEFAULTS)}"
        )


def precision_signature(init) -> inspect.Signature:
    """The signature of an optimizer's ``__init__`` written with ``**precision``:
    the precision arguments of :data:`PRECISION_ARGS` as keyword-only
    parameters in its place (what ``help()`` and ``inspect`` show)."""
    sig = inspect.signature(init)
    params = []
    for param in sig.parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD and param.name == "precision":
            params += [
                inspect.Parameter(
                    a.name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=a.default,
                    annotation=a.annotation,
                )
                for a in PRECISION_ARGS
            ]
        else:
            params.append(param)
    return sig.replace(parameters=params)


def precision_docs(indent: str = "    ") -> str:
    """The precision arguments as a docstring's ``Args`` entries."""
    return "\n".join(f"{indent}{a.name}: {a.doc}." for a in PRECISION_ARGS)


@dataclasses.dataclass(frozen=True)
class GroupPrecision:
    """The resolved precision of one param group (see the module docstring)."""

    weight: FixedPoint | FloatingPoint | None
    accumulator: FixedPoint | FloatingPoint | None
    grad: FixedPoint | FloatingPoint | None
    update: FixedPoint | FloatingPoint | None
    state: dict[str, FixedPoint | FloatingPoint | BlockFloatingPoint | MX | None]
    weight_rounding: Rounding
    accumulator_rounding: Rounding
    grad_rounding: Rounding
    update_rounding: Rounding
    state_rounding: Rounding
    overflow: Overflow
    seed: int

    @classmethod
    def of(cls, group: dict, state_names: tuple[str, ...]) -> GroupPrecision:
        base = group["rounding"]
        state = group["state"]
        if isinstance(state, dict):
            states = {n: state.get(n) for n in state_names}
        else:
            states = {n: state for n in state_names}
        return cls(
            weight=group["weight"],
            accumulator=group["accumulator"],
            grad=group["grad"],
            update=group["update"],
            state=states,
            overflow=group["overflow"],
            seed=group["seed"],
            **{k: (group[k] if group[k] is not None else base) for k in ROUNDING_KEYS},
        )

    # cached: the step reads these per parameter (the instance is immutable)
    @functools.cached_property
    def target(self) -> FixedPoint | FloatingPoint | None:
        """The grid updates are added on: the accumulator, else the weight."""
        return self.accumulator if self.accumulator is not None else self.weight

    @functools.cached_property
    def target_rounding(self) -> Rounding:
        return self.accumulator_rounding if self.accumulator is not None else self.weight_rounding

    @functools.cached_property
    def quantized(self) -> bool:
        """Any tensor has a format: the step computes in float64 and raises on
        NaN or Inf (with none, it is torch's step in the parameter's dtype)."""
        return any(
            f is not None for f in (self.weight, self.accumulator, self.grad, self.update)
        ) or any(f is not None for f in self.state.values())

    @functools.cached_property
    def codes_pipeline(self) -> bool:
        """The one routing decision by format kind: the gradient, update,
        accumulator and weight formats are all fixed point (or None), so the
        fused Numba pass (:mod:`hwsim.optim.fused`, integer codes) may take
        the step; else it runs on torch ops (:mod:`hwsim.optim.paths`), which
        take every kind. States may be any kind either way: the rule stores
        them with torch ops."""
        return all(
            f is None or isinstance(f, FixedPoint)
            for f in (self.weight, self.accumulator, self.grad, self.update)
        )
