"""What makes the hwsim optimizers drop-in ``torch.optim`` optimizers beyond
the step: torch's keyword arguments and learning rates, param-group keys,
and state dicts that ``torch.load(weights_only=True)`` accepts.

State dicts hold only plain Python types and tensors: the precision entries
of a param group (live as formats, :class:`~hwsim.modes.Rounding`,
:class:`~hwsim.modes.Overflow`) are written as their strings (``"fx16.12"``,
``"bf16"``, ``"mxint8"``, ``"stochastic"``, ``"saturate"``) and parsed
again on load (:func:`~hwsim.optim.precision.normalize_group`). A loaded
param group that lacks a hyperparameter (a state dict of ``torch.optim``, or
of an older hwsim) gets the optimizer's default, as torch's optimizers fill
``maximize``, ``foreach``, ... in their ``__setstate__``.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

import torch

from hwsim.formats import FixedPoint, FloatingPoint
from hwsim.formats.block import MX, BlockFloatingPoint
from hwsim.modes import Overflow, Rounding
from hwsim.optim.precision import normalize_group

# keys torch and its tools put into param groups besides the hyperparameters:
# named parameters (Optimizer(named_parameters())), LR schedulers' initial_lr,
# SWA's swa_lr, and a group's name as many training scripts set it
METADATA_KEYS = ("params", "param_names", "initial_lr", "swa_lr", "name")


def check_lr(lr: Any, foreach: bool | None = None, capturable: bool = False) -> None:
    """torch's checks of ``lr`` (a float, or a 1-element tensor, >= 0) and
    torch's messages, plus one of hwsim: ``lr`` must be finite (an infinite
    learning rate makes every weight NaN or Inf; a fixed-point step would
    then fail on a non-finite update, far from its cause)."""
    if isinstance(lr, torch.Tensor):
        if foreach and not capturable:
            raise ValueError(
                "lr as a Tensor is not supported for capturable=False and foreach=True"
            )
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if lr.is_complex() or lr.dtype == torch.bool:
            raise ValueError(f"Invalid learning rate: {lr} (a real tensor is needed)")
        value = float(lr.detach())
    elif isinstance(lr, (int, float)) and not isinstance(lr, bool):
        value = float(lr)
    else:
        raise ValueError(
            f"Invalid learning rate: {lr!r} (a float >= 0 or a 1-element tensor is needed)"
        )
    if not 0.0 <= value:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not math.isfinite(value):
        raise ValueError(f"Invalid learning rate: {lr} (lr must be finite)")


def torch_flags(
    foreach: bool | None = None,
    differentiable: bool = False,
    fused: bool | None = None,
    capturable: bool | None = None,
) -> dict[str, Any]:
    """Validate torch's implementation switches and return them as group
    defaults (they are kept in the param groups, as torch keeps them).

    - ``foreach``: any value torch takes (``None``, ``False``, ``True``); it
      picks torch's loop or multi-tensor implementation, which float groups
      run (:mod:`hwsim.optim.float_path`) as torch would; groups with a
      format ignore it.
    - ``fused``: hwsim's choice of a fused implementation, as in torch; here
      the Numba pass of the fixed-point steps (``None`` or ``True``) or torch
      ops only (``False``). Same bits either way; float groups never use
      torch's fused kernels. torch's errors for ``fused`` with ``foreach`` or
      ``differentiable`` are kept.
    - ``differentiable``, ``capturable``: only ``False`` (their default); a
      quantized step is not differentiable, and hwsim's step syncs with the
      host (no CUDA graph capture).
    """
    for name, value in (("foreach", foreach), ("fused", fused)):
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"{name} must be None, False or True, got {value!r}")
    if fused:
        if differentiable:
            raise RuntimeError("`fused` does not support `differentiable`")
        if foreach:
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
    if differentiable is not False:
        raise ValueError(
            f"differentiable={differentiable!r} is not supported: hwsim optimizers quantize the "
            "step, which has no gradient; only differentiable=False is allowed"
        )
    flags: dict[str, Any] = {"foreach": foreach, "differentiable": False, "fused": fused}
    if capturable is not None:
        if capturable is not False:
            raise ValueError(
                f"capturable={capturable!r} is not supported: hwsim's step reads values on the "
                "host and cannot be captured in a CUDA graph; only capturable=False is allowed"
            )
        flags["capturable"] = False
    return flags


def check_group_keys(group: dict, defaults: dict) -> None:
    """Raise ValueError on a param-group key that is neither a hyperparameter
    of this optimizer nor one of :data:`METADATA_KEYS`, naming the closest
    known key: a typo (``"wieght"``) would otherwise leave that group in float."""
    known = sorted(set(defaults) | set(METADATA_KEYS))
    for key in group:
        if key in defaults or key in METADATA_KEYS:
            continue
        close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown param group key {key!r}{hint}; known keys: {known}")


def plain(value: Any) -> Any:
    """A precision entry as a plain type: formats and modes as their strings."""
    if isinstance(value, (FixedPoint, FloatingPoint, BlockFloatingPoint, MX, Rounding, Overflow)):
        return str(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def plain_groups(groups: list[dict], keys) -> list[dict]:
    """``groups`` (packed by torch's ``state_dict``) with the precision entries
    ``keys`` as plain types, in new dicts."""
    return [{k: (plain(v) if k in keys else v) for k, v in g.items()} for g in groups]


def plain_step(step: Any) -> Any:
    """A loaded step count as an int (fixed-point groups count in ints; a float
    group makes it torch's float tensor again on its next step)."""
    if isinstance(step, torch.Tensor):
        return int(step.item())
    return step


class CheckpointMixin:
    """State dicts, ``load_state_dict``, pickling and ``copy.deepcopy`` of
    :class:`~hwsim.optim.base.QuantizedOptimizer` (it sets ``precision_keys``,
    the names of a group's precision entries)."""

    precision_keys: tuple[str, ...] = ()

    def state_dict(self) -> dict[str, Any]:
        """As torch's, with only plain types and tensors, so that
        ``torch.load`` with ``weights_only=True`` reads it: formats and modes
        are written as their strings (:mod:`hwsim.optim.compat`)."""
        result = super().state_dict()
        result["param_groups"] = plain_groups(result["param_groups"], self.precision_keys)
        return result

    def __getstate__(self) -> dict[str, Any]:
        # torch's keeps defaults, state and param_groups; copies also need these
        state = super().__getstate__()
        state["fused"] = self.fused
        state["telemetry_enabled"] = self.telemetry_enabled
        state["_telemetry"] = self.telemetry  # summarized: plain dicts
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickling, ``copy.deepcopy`` and ``load_state_dict`` come here:
        the caches start empty, a group missing a hyperparameter gets the
        default (as torch's optimizers fill theirs), and the precision
        entries are parsed."""
        super().__setstate__(state)
        self.__dict__.setdefault("fused", True)
        self.__dict__.setdefault("telemetry_enabled", True)
        self.__dict__.setdefault("_telemetry", [])
        self._views = {}
        self._precisions = {}
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
            normalize_group(group, self.rule.state_names)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch's, but every tensor of the state keeps its saved dtype:
        torch would cast the float64 accumulator codes and states to the
        parameter's dtype (float32 loses codes above 2^24). Takes the state
        dicts of ``torch.optim``'s counterpart and of older hwsim versions
        (missing hyperparameters get their defaults)."""
        super().load_state_dict(state_dict)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, p in zip(saved_ids, params, strict=True):
            saved = state_dict["state"].get(saved_id)
            if saved is None:
                continue
            for key, value in saved.items():
                if key == "step":
                    self.state[p][key] = plain_step(value)
                elif torch.is_tensor(value):
                    self.state[p][key] = value.detach().to(device=p.device, copy=True)
        for group in self.param_groups:
            normalize_group(group, self.rule.state_names)
