"""What an optimizer declares about its rule: :class:`Rule`.

The five built-in rules carry the name of their math
(:data:`hwsim.optim.rule_math.MATH`: each rule's elementwise arithmetic,
written once, for quantized groups); groups whose formats are all ``None``
step through ``torch.optim``'s own implementation
(:mod:`hwsim.optim.float_path`).

A rule may instead be given as torch ops, ``update(grad, weight, state,
group, step, store, fixed) -> update`` (optax's ``update`` without the
precision): ``grad`` the (already quantized) gradient, ``weight()`` the
master weight, ``state`` the param's states (real views), ``group`` its
hyperparameters, ``step`` the 1-based step count, ``store(name, tensor)``
writes a state back quantized to its format and returns the stored value,
``fixed`` whether the group has any format. The update it returns goes
through the same pipeline, on torch ops
(:func:`hwsim.optim.rule_path.rule_update`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch


class Rule(NamedTuple):
    """An update rule (float groups: torch.optim's arithmetic), the names of
    the state tensors it keeps, and the name of its math for quantized groups
    (:data:`hwsim.optim.rule_math.MATH`, which also says when a step is
    pointwise). ``sparse``: the rule takes sparse gradients, as its torch
    counterpart does."""

    update: Callable
    state_names: tuple[str, ...]
    sparse: bool = False  # takes sparse gradients (in float groups), as torch's counterpart
    math: str = ""  # its elementwise math in quantized groups (hwsim.optim.rule_math.MATH)


def real_view(t: torch.Tensor) -> torch.Tensor:
    """A complex tensor's real view (torch's optimizers step complex params on
    ``torch.view_as_real``), else ``t``."""
    return torch.view_as_real(t) if t.is_complex() else t


SGD_RULE = Rule(None, ("momentum_buffer",), sparse=True, math="sgd")
SIGN_SGD_RULE = Rule(None, (), math="sign_sgd")
ADAM_RULE = Rule(None, ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"), math="adam")
ADAGRAD_RULE = Rule(None, ("sum",), sparse=True, math="adagrad")
RMSPROP_RULE = Rule(None, ("square_avg", "grad_avg", "momentum_buffer"), math="rmsprop")
