"""Each update rule's elementwise math, written once (as optax writes
``scale_by_adam`` once) and run two ways: on float64 torch tensors (the
torch path, any device) and, compiled by Numba, per element inside the fused
CPU kernel (:mod:`hwsim.optim.rule_kernel`), which therefore computes the
same bits by construction.

A rule is ``math(g, w, s, h, opts, at) -> (update, s)``:

- ``g``: the (already quantized) gradient; ``w``: the master weight (only
  read where ``opts`` has ``DECAY`` or ``DECOUPLED``);
- ``s``: the rule's states as a 3-tuple (slots in the order of the rule's
  ``state_names``; unused slots are passed through unchanged);
- ``h``: the float hyperparameters of this step (:func:`hyper`), ``opts``
  an int of flag bits (:data:`MAXIMIZE` ...), a compile-time constant of
  the kernel, so its branches fold away;
- every state value is written through ``store(x, slot, at, opts)``, which
  quantizes it to the slot's state format and returns the stored value: the
  rule continues from the stored state, as hardware would. ``at`` is the
  caller's: the torch path's store callable, the kernel's element context.

Only IEEE-exact operations appear (``+ - * /``, ``sqrt``, ``sign``,
``maximum``), each rounded once in float64: no ``lerp``, ``addcmul`` or
``add(alpha=)``, whose fused multiply-adds differ between CPU vector lanes,
CPU tails and CUDA, and no division by a scalar (CUDA multiplies by its
reciprocal): divisions are tensor by tensor. So the torch path on a GPU, the torch path on a CPU and
the Numba kernel agree bit for bit. Groups whose formats are all ``None``
do not come here: they are stepped by torch.optim's own implementation.

The formulas, per rule (``t`` the step count, ``d`` the rule's input):

- SGD: ``d = g + wd*w``; ``buf = momentum*buf + (1-dampening)*d`` (the
  first step: ``buf = d``); ``d = d + momentum*buf`` (Nesterov) or ``buf``;
  update ``d * -lr``.
- SignSGD: update ``sign(g + wd*w) * -lr``.
- Adam: ``m = b1*m + (1-b1)*g``, ``v = b2*v + (1-b2)*g*g``, AMSGrad ``vmax =
  maximum(vmax, v)``; update ``(m / (sqrt(v) * (1/sqrt(1-b2^t)) + eps)) *
  -(lr/(1-b1^t))``, AdamW ``- lr*wd*w``.
- AdaGrad: ``sum = sum + g*g``; update ``(g / (sqrt(sum) + eps)) *
  -(lr/(1+(t-1)*lr_decay))``.
- RMSProp: ``sq = a*sq + (1-a)*g*g``; centered ``ga = a*ga + (1-a)*g``,
  ``avg = sqrt(maximum(sq - ga*ga, 0)) + eps`` (else ``sqrt(sq) + eps``);
  momentum ``buf = momentum*buf + g/avg``, update ``buf * -lr``, else
  ``(g/avg) * -lr``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from hwsim.optim import stack
from hwsim.optim.stack import Stack

# flag bits of ``opts`` (the fused kernel puts its own bits above FLAG_BITS)
MAXIMIZE, DECAY, DECOUPLED, MOMENTUM, NESTEROV, FIRST, AMSGRAD, CENTERED = (
    1 << k for k in range(8)
)
FLAG_BITS = 8


# -- the operations a rule may use: torch here, Numba overloads in rule_kernel -------
# (each also takes a :class:`~hwsim.optim.stack.Stack`: a group's tensors at once)
def sqrt(x):
    """The correctly rounded square root (IEEE 754). torch's CPU kernel is
    not (its vectorized float64 sqrt is off by an ulp in about 1% of
    elements, measured on torch 2.13 AVX-512): NumPy's on the CPU, torch's
    (IEEE) on other devices."""
    if isinstance(x, Stack):
        return x.map(sqrt) if x.is_cpu else stack.sqrt(x)
    if x.is_cpu:
        return torch.from_numpy(np.sqrt(x.numpy()))
    return torch.sqrt(x)


def sign(x):
    """-1, 0 or 1."""
    return stack.sign(x) if isinstance(x, Stack) else torch.sign(x)


def maximum(a, b):
    """Elementwise maximum (NaN propagates)."""
    if isinstance(a, Stack):
        return stack.maximum(a, b)
    return torch.maximum(a, b) if torch.is_tensor(b) else torch.clamp(a, min=b)


def store(x, slot, at, opts):
    """``x`` quantized to state ``slot``'s format: the stored value."""
    return at(x, slot)


# -- the rules ----------------------------------------------------------------------
def sgd(g, w, s, h, opts, at):
    lr, wd, momentum, damp = h[0], h[1], h[2], h[3]
    d = -g if opts & MAXIMIZE else g
    if opts & DECAY:
        d = d + wd * w
    buf = s[0]
    if opts & MOMENTUM:
        if opts & FIRST:
            buf = store(d, 0, at, opts)
        else:
            buf = store(momentum * buf + damp * d, 0, at, opts)
        d = d + momentum * buf if opts & NESTEROV else buf
    return d * lr, (buf, s[1], s[2])


def sign_sgd(g, w, s, h, opts, at):
    lr, wd = h[0], h[1]
    d = -g if opts & MAXIMIZE else g
    if opts & DECAY:
        d = d + wd * w
    return sign(d) * lr, s


def adam(g, w, s, h, opts, at):
    b1, c1, b2, c2, wd, step_size, inv_bc2, eps = h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]
    if opts & MAXIMIZE:
        g = -g
    if opts & DECAY:
        g = g + wd * w
    m = store(b1 * s[0] + c1 * g, 0, at, opts)
    v = store(b2 * s[1] + c2 * g * g, 1, at, opts)
    vmax = s[2]
    second = v
    if opts & AMSGRAD:
        vmax = store(maximum(vmax, v), 2, at, opts)
        second = vmax
    update = (m / (sqrt(second) * inv_bc2 + eps)) * step_size
    if opts & DECOUPLED:
        update = update - wd * w
    return update, (m, v, vmax)


def adagrad(g, w, s, h, opts, at):
    clr, wd, eps = h[0], h[1], h[2]
    if opts & MAXIMIZE:
        g = -g
    if opts & DECAY:
        g = g + wd * w
    total = store(s[0] + g * g, 0, at, opts)
    return (g / (sqrt(total) + eps)) * clr, (total, s[1], s[2])


def rmsprop(g, w, s, h, opts, at):
    lr, wd, a, c, momentum, eps = h[0], h[1], h[2], h[3], h[4], h[5]
    if opts & MAXIMIZE:
        g = -g
    if opts & DECAY:
        g = g + wd * w
    sq = store(a * s[0] + c * g * g, 0, at, opts)
    ga = s[1]
    if opts & CENTERED:
        ga = store(a * ga + c * g, 1, at, opts)
        # quantized states can make the variance estimate slightly negative: clamped
        avg = sqrt(maximum(sq - ga * ga, 0.0)) + eps
    else:
        avg = sqrt(sq) + eps
    buf = s[2]
    if opts & MOMENTUM:
        buf = store(momentum * buf + g / avg, 2, at, opts)
        return buf * lr, (sq, ga, buf)
    return (g / avg) * lr, (sq, ga, buf)


# -- per step: hyperparameters and flags from the group ------------------------------
def _flags(group, decay: bool = True) -> int:
    opts = MAXIMIZE if group.get("maximize") else 0
    if decay and group.get("weight_decay", 0) != 0:
        opts |= DECAY
    return opts


def _sgd_hyper(group, step, state):
    opts = _flags(group)
    momentum = group["momentum"]
    if momentum != 0:
        opts |= MOMENTUM | (NESTEROV if group["nesterov"] else 0)
        opts |= FIRST if state.get("momentum_buffer") is None else 0
    return (-group["lr"], group["weight_decay"], momentum, 1 - group["dampening"]), opts


def _sign_hyper(group, step, state):
    return (-group["lr"], group["weight_decay"]), _flags(group)


def _adam_hyper(group, step, state):
    lr, (b1, b2), wd = group["lr"], group["betas"], group["weight_decay"]
    decoupled = wd != 0 and group["decoupled_weight_decay"]
    opts = _flags(group, not decoupled) | (DECOUPLED if decoupled else 0)
    opts |= AMSGRAD if group["amsgrad"] else 0
    step_size = -(lr / (1 - b1**step))
    # a multiplication by 1/sqrt(1 - b2^t), not a division: torch divides a CUDA
    # tensor by a scalar as a multiplication by its reciprocal, the CPU exactly
    inv_bc2 = 1 / math.sqrt(1 - b2**step)
    # AdamW: the decay term's factor is lr * wd
    h = (b1, 1 - b1, b2, 1 - b2, lr * wd if decoupled else wd, step_size, inv_bc2, group["eps"])
    return h, opts


def _adagrad_hyper(group, step, state):
    clr = group["lr"] / (1 + (step - 1) * group["lr_decay"])
    return (-clr, group["weight_decay"], group["eps"]), _flags(group)


def _rmsprop_hyper(group, step, state):
    a, momentum = group["alpha"], group["momentum"]
    opts = _flags(group) | (CENTERED if group["centered"] else 0)
    opts |= MOMENTUM if momentum > 0 else 0
    return (-group["lr"], group["weight_decay"], a, 1 - a, momentum, group["eps"]), opts


def _sgd_pointwise(h, opts):
    if opts & (MOMENTUM | DECAY):
        return None
    return False, -h[0] if opts & MAXIMIZE else h[0]  # (-g) * lr == g * -lr, exactly


def _sign_pointwise(h, opts):
    if opts & DECAY:
        return None
    return True, -h[0] if opts & MAXIMIZE else h[0]  # sign(-g) * lr == sign(g) * -lr


# -- bounds on |update|: where finite, the whole step runs in one fused pass ------------
# ``g`` bounds |quantized gradient|, ``w`` |master weight|; per state slot ``top``
# bounds |stored value| and ``low`` is the least stored value (+-inf: no format).
# Every bound follows the math's operations, each monotone in its operands'
# magnitudes; the denominators of the rules that divide are at least ``eps``
# (> 0), as the square roots' arguments are stored values of unsigned formats.
def _decayed(h_wd, opts, g, w):
    return g + abs(h_wd) * w if opts & DECAY else g


def _sgd_bound(h, opts, g, w, top, low):
    d = _decayed(h[1], opts, g, w)
    if opts & MOMENTUM:  # the stored buffer
        d = d + abs(h[2]) * top[0] if opts & NESTEROV else top[0]
    return d * abs(h[0])


def _sign_bound(h, opts, g, w, top, low):
    return abs(h[0])


def _adam_bound(h, opts, g, w, top, low):
    eps = h[7]
    roots = (low[1], low[2]) if opts & AMSGRAD else (low[1],)
    if not eps > 0 or min(roots) < 0:
        return math.inf
    return top[0] / eps * abs(h[5]) + (abs(h[4]) * w if opts & DECOUPLED else 0.0)


def _adagrad_bound(h, opts, g, w, top, low):
    eps = h[2]
    if not eps > 0 or low[0] < 0:
        return math.inf
    return _decayed(h[1], opts, g, w) / eps * abs(h[0])


def _rmsprop_bound(h, opts, g, w, top, low):
    eps = h[5]
    if not eps > 0 or (low[0] < 0 and not opts & CENTERED):
        return math.inf
    if opts & MOMENTUM:
        return top[2] * abs(h[0])
    return _decayed(h[1], opts, g, w) / eps * abs(h[0])


class Pointwise(NamedTuple):
    """A step whose update is ``scale * g`` (``sign``: ``scale * sign(g)``)
    of the quantized gradient ``g``: what :func:`sgd` and :func:`sign_sgd`
    compute when this step's flags leave no state and no decay. The fused
    kernel (:mod:`hwsim.optim.fused`) runs such a step from the raw gradient
    to the weight in one pass."""

    sign: bool
    scale: float


class RuleMath(NamedTuple):
    """A rule's math (:func:`sgd` ...), its per-step ``hyper(group, step,
    state) -> (h, opts)``, per state slot ``(initial value, flag)`` (the
    value a group key or a float; the slot is used where ``opts`` has the
    flag, always where it is 0), ``pointwise(h, opts)``: ``(sign, scale)`` where the
    math reduces to a :class:`Pointwise` step, else None, and ``bound(h,
    opts, g, w, top, low)``: a bound on |update| (inf: none can be proved)
    from bounds on |gradient|, |master weight| and the stored states."""

    math: object
    hyper: object
    slots: tuple = ()
    pointwise: object = None
    bound: object = None

    def pointwise_step(self, group) -> Pointwise | None:
        """This group's step as a :class:`Pointwise` one, or None."""
        if self.pointwise is None:
            return None
        found = self.pointwise(*self.hyper(group, 1, {}))
        return None if found is None else Pointwise(*found)

    def used(self, opts: int) -> tuple[bool, ...]:
        """Which state slots this step reads and writes."""
        return tuple(not flag or bool(opts & flag) for _, flag in self.slots)


MATH = {
    "sgd": RuleMath(sgd, _sgd_hyper, ((0.0, MOMENTUM),), _sgd_pointwise, _sgd_bound),
    "sign_sgd": RuleMath(sign_sgd, _sign_hyper, (), _sign_pointwise, _sign_bound),
    "adam": RuleMath(adam, _adam_hyper, ((0.0, 0), (0.0, 0), (0.0, AMSGRAD)), None, _adam_bound),
    "adagrad": RuleMath(
        adagrad, _adagrad_hyper, (("initial_accumulator_value", 0),), None, _adagrad_bound
    ),
    "rmsprop": RuleMath(
        rmsprop,
        _rmsprop_hyper,
        ((0.0, 0), (0.0, CENTERED), (0.0, MOMENTUM)),
        None,
        _rmsprop_bound,
    ),
}
