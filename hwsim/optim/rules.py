"""Update rules: what each optimizer computes from a gradient, nothing else.

A rule is a function ``rule(grad, weight, state, group, step, store, fixed) -> Step``
(optax's ``update`` without the precision): ``grad`` is the (already
quantized) gradient, ``weight()`` returns the master weight (only called when
weight decay needs it), ``state`` the param's state dict, ``group`` the param
group (hyperparameters), ``step`` the 1-based step count and ``store(name,
tensor)`` writes a state tensor back, quantized to its state format, and
returns the stored value — the rule continues from the stored (quantized)
state, as hardware would; ``fixed`` tells whether the group has any
fixed-point format (with none, a rule must compute exactly what torch does). The returned :class:`Step` describes the delta to
add to the weight (``scale * numerator / denominator - decay * weight``); the
shared pipeline in :mod:`hwsim.optim.base` evaluates it, quantizes it and
adds it into the accumulator.

The arithmetic follows ``torch.optim`` operation by operation, and a
:class:`Step` applied to a float weight uses torch's own in-place ops
(``add_``, ``addcdiv_``, ``mul_``), so with every format ``None`` the results
are torch's, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

Store = Callable[[str, torch.Tensor], torch.Tensor]


class Step(NamedTuple):
    """The weight change a rule asks for:
    ``scale * numerator / denominator - decay * weight`` (no denominator when
    ``None``; ``decay`` is AdamW's decoupled ``lr * weight_decay``)."""

    numerator: torch.Tensor
    scale: float
    denominator: torch.Tensor | None = None
    decay: float = 0.0

    def value(self, weight: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The update as one tensor (what the fixed-point pipeline adds)."""
        if self.denominator is None:
            update = self.numerator.mul(self.scale)
        else:
            update = (self.numerator / self.denominator).mul_(self.scale)
        if not self.decay:
            return update
        w = weight()
        return update.add_(w if update.is_complex() else real_view(w), alpha=-self.decay)

    def apply_(self, param: torch.Tensor) -> None:
        """Apply to a float weight in place with torch.optim's exact ops (a
        complex weight through its real view where the rule took real views)."""
        if self.decay:
            param.mul_(1 - self.decay)
        if not self.numerator.is_complex():
            param = real_view(param)
        if self.denominator is None:
            param.add_(self.numerator, alpha=self.scale)
        else:
            param.addcdiv_(self.numerator, self.denominator, value=self.scale)


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


def _coupled_decay(grad, weight, group):
    if group["maximize"]:
        grad = -grad
    if group["weight_decay"] != 0:
        grad = grad.add(weight(), alpha=group["weight_decay"])
    return grad


def sgd(grad, weight, state, group, step, store: Store, fixed: bool = False) -> Step:
    """SGD with momentum, dampening, Nesterov and coupled L2 weight decay,
    as ``torch.optim.SGD`` (Sutskever et al. 2013 for the momentum form)."""
    d_p = _coupled_decay(grad, weight, group)
    momentum = group["momentum"]
    if momentum != 0:
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = store("momentum_buffer", d_p.clone())
        else:
            buf = store(
                "momentum_buffer", buf.mul(momentum).add_(d_p, alpha=1 - group["dampening"])
            )
        d_p = d_p.add(buf, alpha=momentum) if group["nesterov"] else buf
    return Step(d_p, -group["lr"])


def sign_sgd(grad, weight, state, group, step, store: Store, fixed: bool = False) -> Step:
    """``-lr * sign(grad + weight_decay * w)`` (Bernstein et al. 2018, signSGD;
    on an LMS filter this is the sign-sign rule, Gersho 1984)."""
    return Step(torch.sign(real_view(_coupled_decay(grad, weight, group))), -group["lr"])


def adam(grad, weight, state, group, step, store: Store, fixed: bool = False) -> Step:
    """Bias-corrected Adam (Kingma & Ba 2015), optional AMSGrad (Reddi et al.
    2018) and decoupled AdamW decay (Loshchilov & Hutter 2019), as
    ``torch.optim.Adam``."""
    lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    if group["maximize"]:
        grad = -grad
    decay = 0.0
    if wd != 0:
        if group["decoupled_weight_decay"]:
            decay = lr * wd
        else:
            grad = grad.add(weight(), alpha=wd)
    grad = real_view(grad)
    if "exp_avg" not in state:
        state["exp_avg"] = torch.zeros_like(grad)
        state["exp_avg_sq"] = torch.zeros_like(grad)
    exp_avg = store("exp_avg", real_view(state["exp_avg"]).lerp(grad, 1 - beta1))
    exp_avg_sq = store(
        "exp_avg_sq",
        real_view(state["exp_avg_sq"]).mul(beta2).addcmul_(grad, grad, value=1 - beta2),
    )
    step_size = lr / (1 - beta1**step)
    bias_correction2_sqrt = math.sqrt(1 - beta2**step)
    if group["amsgrad"]:
        old = state.get("max_exp_avg_sq")
        second = store(
            "max_exp_avg_sq",
            exp_avg_sq.clone() if old is None else torch.maximum(real_view(old), exp_avg_sq),
        )
    else:
        second = exp_avg_sq
    denom = (second.sqrt() / bias_correction2_sqrt).add_(eps)
    return Step(exp_avg, -step_size, denom, decay)


def adagrad(grad, weight, state, group, step, store: Store, fixed: bool = False) -> Step:
    """AdaGrad (Duchi et al. 2011) with lr decay, as ``torch.optim.Adagrad``."""
    if grad.is_sparse:
        return _adagrad_sparse(grad, state, group, step, store)
    grad = real_view(_coupled_decay(grad, weight, group))
    clr = group["lr"] / (1 + (step - 1) * group["lr_decay"])
    if "sum" not in state:
        state["sum"] = torch.full_like(grad, group["initial_accumulator_value"])
    total = store("sum", real_view(state["sum"]).addcmul(grad, grad, value=1))
    std = total.sqrt().add_(group["eps"])
    return Step(grad, -clr, std)


def _adagrad_sparse(grad, state, group, step, store: Store) -> Step:
    """torch.optim.Adagrad's sparse step: the sum and the weight change only
    where the (coalesced) gradient has entries."""
    if group["weight_decay"] != 0:
        raise RuntimeError("weight_decay option is not compatible with sparse gradients")
    if group["maximize"]:
        grad = -grad
    clr = group["lr"] / (1 + (step - 1) * group["lr_decay"])
    if "sum" not in state:
        state["sum"] = torch.full(
            grad.shape, group["initial_accumulator_value"], dtype=grad.dtype, device=grad.device
        )
    grad = grad.coalesce()
    indices, values = grad._indices(), grad._values()

    def sparse(v):
        if indices.dim() == 0 or v.dim() == 0:
            return torch.empty_like(grad)
        # the indices of a coalesced tensor: valid, no check needed (as torch's _make_sparse)
        return torch.sparse_coo_tensor(indices, v, grad.size(), check_invariants=False)

    total = store("sum", state["sum"].add(sparse(values.pow(2))))
    std_values = total.sparse_mask(grad)._values().sqrt_().add_(group["eps"])
    return Step(sparse(values / std_values), -clr)


def rmsprop(grad, weight, state, group, step, store: Store, fixed: bool = False) -> Step:
    """RMSProp (Tieleman & Hinton 2012), centered (Graves 2013) and with
    momentum, as ``torch.optim.RMSprop``."""
    grad = real_view(_coupled_decay(grad, weight, group))
    alpha = group["alpha"]
    if "square_avg" not in state:
        state["square_avg"] = torch.zeros_like(grad)
    square_avg = store(
        "square_avg",
        real_view(state["square_avg"]).mul(alpha).addcmul_(grad, grad, value=1 - alpha),
    )
    if group["centered"]:
        grad_avg = state.get("grad_avg")
        grad_avg = store(
            "grad_avg",
            (torch.zeros_like(grad) if grad_avg is None else real_view(grad_avg)).lerp(
                grad, 1 - alpha
            ),
        )
        avg = square_avg.addcmul(grad_avg, grad_avg, value=-1)
        if fixed:
            # quantized states can make the variance estimate slightly negative: clamp
            # (torch returns NaN there; float groups do as torch, elsewhere the clamp
            # changes nothing)
            avg.clamp_(min=0)
        avg = avg.sqrt_()
    else:
        avg = square_avg.sqrt()
    avg = avg.add_(group["eps"])
    if group["momentum"] > 0:
        buf = state.get("momentum_buffer")
        buf = torch.zeros_like(grad) if buf is None else real_view(buf)
        buf = store("momentum_buffer", buf.mul(group["momentum"]).addcdiv_(grad, avg))
        return Step(buf, -group["lr"])
    return Step(grad, -group["lr"], avg)


SGD_RULE = Rule(sgd, ("momentum_buffer",), sparse=True, math="sgd")
SIGN_SGD_RULE = Rule(sign_sgd, (), math="sign_sgd")
ADAM_RULE = Rule(adam, ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"), math="adam")
ADAGRAD_RULE = Rule(adagrad, ("sum",), sparse=True, math="adagrad")
RMSPROP_RULE = Rule(rmsprop, ("square_avg", "grad_avg", "momentum_buffer"), math="rmsprop")
