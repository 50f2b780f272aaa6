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
``"exp_avg"``, ...) to format. ``overflow=`` applies to all of them.
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from hwsim.formats import FixedPoint, FloatingPoint, parse_format
from hwsim.modes import Overflow, Rounding
from hwsim.torch_path.core import counter_uniform

TENSORS = ("weight", "accumulator", "grad", "state", "update")
ROUNDING_KEYS = tuple(f"{t}_rounding" for t in TENSORS)
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


def _format(value, what: str) -> FixedPoint | None:
    try:
        fmt = parse_format(value)
    except ValueError as err:
        raise ValueError(f"{what}: {err}") from None
    if isinstance(fmt, FloatingPoint):  # float optimizer formats: a later step of issue 16
        raise ValueError(
            f"{what}: the optimizers take fixed-point formats (or None for float), "
            f"not the floating-point format {fmt}"
        )
    if fmt is not None and fmt.wl > MAX_CODE_BITS:
        raise ValueError(
            f"{what} format {fmt} has wl={fmt.wl}; the optimizers keep codes in float64, "
            f"so wl must be at most {MAX_CODE_BITS}"
        )
    return fmt


def normalize_group(group: dict, state_names: tuple[str, ...]) -> None:
    """Parse the precision entries of a param group in place (strings ->
    FixedPoint / Rounding / Overflow), raising ValueError on bad values."""
    for name in ("weight", "accumulator", "grad", "update"):
        group[name] = _format(group[name], name)
    state = group["state"]
    if isinstance(state, dict):
        unknown = set(state) - set(state_names)
        if unknown:
            raise ValueError(
                f"state formats given for unknown state(s) {sorted(unknown)}; this optimizer's "
                f"states are {list(state_names)}"
            )
        group["state"] = {k: _format(v, f"state[{k!r}]") for k, v in state.items()}
    else:
        group["state"] = _format(state, "state")
    group["rounding"] = Rounding.parse(group["rounding"])
    for key in ROUNDING_KEYS:
        if group[key] is not None:
            group[key] = Rounding.parse(group[key])
    group["overflow"] = Overflow.parse(group["overflow"])
    seed = group["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int (or None for a fresh one), got {seed!r}")
    if not 0 <= seed < 1 << 64:  # mix_seed takes 64 bits: a larger seed would alias another
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed}")


@dataclasses.dataclass(frozen=True)
class GroupPrecision:
    """The resolved precision of one param group (see the module docstring)."""

    weight: FixedPoint | None
    accumulator: FixedPoint | None
    grad: FixedPoint | None
    update: FixedPoint | None
    state: dict[str, FixedPoint | None]
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
    def target(self) -> FixedPoint | None:
        """The grid updates are added on: the accumulator, else the weight."""
        return self.accumulator if self.accumulator is not None else self.weight

    @functools.cached_property
    def target_rounding(self) -> Rounding:
        return self.accumulator_rounding if self.accumulator is not None else self.weight_rounding

    @functools.cached_property
    def any_fixed(self) -> bool:
        return any(
            f is not None for f in (self.weight, self.accumulator, self.grad, self.update)
        ) or any(f is not None for f in self.state.values())
