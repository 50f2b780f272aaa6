"""The optimizers: thin ``torch.optim.Optimizer`` subclasses that validate
torch's hyperparameters (same names, same defaults) and pick a rule; the
precision pipeline is :class:`hwsim.optim.base.QuantizedOptimizer`'s.

Every optimizer also takes the keyword-only precision arguments ``weight,
accumulator, grad, state, update`` (formats: a ``FixedPoint`` or
``FloatingPoint``, a string like ``"fx16.12"``, ``"bf16"`` or ``"fp8_e4m3"``,
or ``None`` for float; ``state`` also a block-scaled ``"mxint8"``,
``"mxfp8_e5m2"``, ``"bfp8_b256"``...), ``rounding`` and the per-tensor
``<tensor>_rounding`` overrides, ``overflow``, ``seed``, ``telemetry`` and
``fused`` (torch's name: one Numba pass for CPU tensors, same results); see
:class:`~hwsim.optim.base.QuantizedOptimizer`. They take torch's
``foreach``, ``differentiable`` and (Adam, RMSProp) ``capturable`` as torch's
counterparts do (:func:`hwsim.optim.compat.torch_flags`), and a 1-element
tensor ``lr``.
"""

from __future__ import annotations

from hwsim.optim import rules
from hwsim.optim.base import QuantizedOptimizer
from hwsim.optim.compat import check_lr, torch_flags


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _check_nonneg(name: str, value) -> None:
    _check(
        isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0.0,
        f"Invalid {name} value: {value!r} (a float >= 0 is needed)",
    )


class SGD(QuantizedOptimizer):
    """Stochastic gradient descent with a weight accumulator, as ``torch.optim.SGD``:
    momentum, dampening, Nesterov (Sutskever et al. 2013) and weight decay as the
    coupled L2 term ``w <- (1 - lr*weight_decay) w - lr*grad``.

    On an LMS filter (one linear layer, loss ``e^2/2``) this is the LMS rule
    (Widrow & Hoff 1960); sign-error LMS is this optimizer on the L1 loss
    ``|e|`` (its gradient is ``-sign(e) x``).

    >>> import torch, hwsim.optim
    >>> w = torch.nn.Parameter(torch.zeros(3))
    >>> opt = hwsim.optim.SGD([w], lr=0.1, weight="fx8.4", accumulator="fx16.12", seed=0)
    >>> w.grad = torch.tensor([1.0, -0.3, 0.01])
    >>> opt.step()
    >>> w.tolist(), opt.telemetry[0]["stall_fraction"]  # 0.001 lands in the accumulator
    ([-0.125, 0.0, 0.0], 0.0)
    """

    rule = rules.SGD_RULE

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        telemetry: bool = True,
        fused: bool | None = None,
        foreach: bool | None = None,
        differentiable: bool = False,
        **precision,
    ):
        check_lr(lr, foreach, False)
        flags = torch_flags(foreach, differentiable, fused)
        _check_nonneg("momentum", momentum)
        _check_nonneg("weight_decay", weight_decay)
        _check(
            not nesterov or (momentum > 0 and dampening == 0),
            "Nesterov momentum requires a momentum and zero dampening",
        )
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
        )
        super().__init__(params, {**defaults, **flags}, precision, telemetry, fused)


class SignSGD(QuantizedOptimizer):
    """Sign SGD: ``w <- w - lr * sign(grad + weight_decay * w)`` (Bernstein et al.
    2018). On an LMS filter this is the sign-sign LMS rule (Gersho 1984):
    ``sign(e x) = sign(e) sign(x)``. Sign-error LMS is not this rule: it is
    :class:`SGD` on the L1 loss ``|e|``.

    >>> import torch, hwsim.optim
    >>> w = torch.nn.Parameter(torch.zeros(2))
    >>> opt = hwsim.optim.SignSGD([w], lr=0.25, weight="fx8.4")
    >>> w.grad = torch.tensor([3.0, -1e-6])
    >>> opt.step()
    >>> w.tolist()
    [-0.25, 0.25]
    """

    rule = rules.SIGN_SGD_RULE

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        weight_decay: float = 0,
        *,
        maximize: bool = False,
        telemetry: bool = True,
        fused: bool | None = None,
        foreach: bool | None = None,
        differentiable: bool = False,
        **precision,
    ):
        check_lr(lr, foreach, False)
        flags = torch_flags(foreach, differentiable, fused)
        _check_nonneg("weight_decay", weight_decay)
        defaults = dict(lr=lr, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, {**defaults, **flags}, precision, telemetry, fused)


class Adam(QuantizedOptimizer):
    """Adam (Kingma & Ba 2015), bias-corrected, as ``torch.optim.Adam``, with
    AMSGrad (Reddi et al. 2018) and ``decoupled_weight_decay=True`` for AdamW
    (Loshchilov & Hutter 2019). States: ``exp_avg``, ``exp_avg_sq``,
    ``max_exp_avg_sq``. Its step is bounded by about ``lr`` whatever the
    gradient scale, so under nearest rounding with no accumulator it stalls
    once ``lr < LSB/2``.

    >>> import torch, hwsim.optim
    >>> w = torch.nn.Parameter(torch.zeros(2))
    >>> opt = hwsim.optim.Adam([w], lr=0.01, weight="fx8.4")
    >>> w.grad = torch.tensor([5.0, -5.0])
    >>> opt.step()
    >>> w.tolist(), opt.telemetry[0]["stall_fraction"]
    ([0.0, 0.0], 1.0)
    """

    rule = rules.ADAM_RULE

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        decoupled_weight_decay: bool = False,
        telemetry: bool = True,
        fused: bool | None = None,
        foreach: bool | None = None,
        differentiable: bool = False,
        capturable: bool = False,
        **precision,
    ):
        check_lr(lr, foreach, capturable)
        flags = torch_flags(foreach, differentiable, fused, capturable)
        _check_nonneg("epsilon", eps)
        _check_nonneg("weight_decay", weight_decay)
        _check(
            len(betas) == 2 and 0.0 <= betas[0] < 1.0,
            f"Invalid beta parameter at index 0: {betas[0]!r}",
        )
        _check(0.0 <= betas[1] < 1.0, f"Invalid beta parameter at index 1: {betas[1]!r}")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            decoupled_weight_decay=decoupled_weight_decay,
        )
        super().__init__(params, {**defaults, **flags}, precision, telemetry, fused)


class AdaGrad(QuantizedOptimizer):
    """AdaGrad (Duchi et al. 2011), as ``torch.optim.Adagrad``. State: ``sum``.

    >>> import torch, hwsim.optim
    >>> w = torch.nn.Parameter(torch.zeros(2))
    >>> opt = hwsim.optim.AdaGrad([w], lr=0.5, weight="fx8.4", state="ufx16.8")
    >>> w.grad = torch.tensor([2.0, -0.5])
    >>> opt.step()
    >>> w.tolist()
    [-0.5, 0.5]
    """

    rule = rules.ADAGRAD_RULE

    def __init__(
        self,
        params,
        lr: float = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        *,
        maximize: bool = False,
        telemetry: bool = True,
        fused: bool | None = None,
        foreach: bool | None = None,
        differentiable: bool = False,
        **precision,
    ):
        check_lr(lr, foreach, False)
        flags = torch_flags(foreach, differentiable, fused)
        _check_nonneg("lr_decay", lr_decay)
        _check_nonneg("weight_decay", weight_decay)
        _check_nonneg("initial_accumulator_value", initial_accumulator_value)
        _check_nonneg("epsilon", eps)
        defaults = dict(
            lr=lr,
            lr_decay=lr_decay,
            weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value,
            eps=eps,
            maximize=maximize,
        )
        super().__init__(params, {**defaults, **flags}, precision, telemetry, fused)


class RMSProp(QuantizedOptimizer):
    """RMSProp (Tieleman & Hinton 2012), centered (Graves 2013), with momentum,
    as ``torch.optim.RMSprop``. States: ``square_avg``, ``grad_avg``,
    ``momentum_buffer``.

    >>> import torch, hwsim.optim
    >>> w = torch.nn.Parameter(torch.zeros(1))
    >>> opt = hwsim.optim.RMSProp([w], lr=0.01, weight="fx16.12", accumulator="fx24.20")
    >>> w.grad = torch.tensor([1.0])
    >>> opt.step()
    >>> w.item() * 2**12  # -lr * g / sqrt(v) = -0.1, on the fx16.12 grid
    -410.0
    """

    rule = rules.RMSPROP_RULE

    def __init__(
        self,
        params,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        *,
        maximize: bool = False,
        telemetry: bool = True,
        fused: bool | None = None,
        foreach: bool | None = None,
        differentiable: bool = False,
        capturable: bool = False,
        **precision,
    ):
        check_lr(lr, foreach, capturable)
        flags = torch_flags(foreach, differentiable, fused, capturable)
        _check_nonneg("epsilon", eps)
        _check_nonneg("momentum", momentum)
        _check_nonneg("weight_decay", weight_decay)
        _check(
            0.0 <= alpha <= 1.0 if isinstance(alpha, (int, float)) else False,
            f"Invalid alpha value: {alpha!r}",
        )
        defaults = dict(
            lr=lr,
            alpha=alpha,
            eps=eps,
            weight_decay=weight_decay,
            momentum=momentum,
            centered=centered,
            maximize=maximize,
        )
        super().__init__(params, {**defaults, **flags}, precision, telemetry, fused)


OPTIMIZERS: dict[str, type[QuantizedOptimizer]] = {
    "sgd": SGD,
    "signsgd": SignSGD,
    "adam": Adam,
    "adagrad": AdaGrad,
    "rmsprop": RMSProp,
}

# State formats that hold each rule's values for gradients of magnitude up to
# about 1 (the docs' working defaults; tests/test_optim_args.py checks that
# nothing flushes or saturates and the fit ends as with float states). A
# narrower format reports its loss in ``telemetry``: ``state_flush_fraction``
# (nonzero values stored as 0: Adam's exp_avg_sq in fx16.12 loses every
# element, and eps becomes the denominator) and ``state_saturation_fraction``.
# Block-wise 8-bit Adam states (Dettmers et al. 2022's idea with the block
# formats hwsim has): exp_avg as MXINT8 (blocks of 32, linear elements);
# exp_avg_sq, nonnegative and spanning g^2's range, as MXFP8 E5M2, whose
# exponent bits keep the small values of a block (none of the block formats
# has unsigned elements, so its sign bit stays 0). On a 64-128-10 digits MLP
# (Adam, lr 3e-3, 8 epochs) this ends as float states do (accuracy 0.984 vs
# 0.979); "mxint8" or "bfp8_b256" for exp_avg_sq flush its small values and
# diverge (tests/test_optim_formats.py checks a shorter run of both).
ADAM_8BIT_STATES: dict[str, str] = {
    "exp_avg": "mxint8",
    "exp_avg_sq": "mxfp8_e5m2",
    "max_exp_avg_sq": "mxfp8_e5m2",
}

STATE_FORMATS: dict[str, dict[str, str]] = {
    "sgd": {"momentum_buffer": "fx24.16"},
    "adam": {"exp_avg": "fx24.20", "exp_avg_sq": "ufx32.32", "max_exp_avg_sq": "ufx32.32"},
    "adagrad": {"sum": "ufx32.16"},
    "rmsprop": {"square_avg": "ufx32.32", "grad_avg": "fx24.20", "momentum_buffer": "fx24.16"},
}
