"""Float param groups (every precision format ``None``) stepped by torch's own
implementation: :func:`step_group` calls the functional entry point of the
rule's ``torch.optim`` counterpart (``torch.optim.sgd.sgd``, ``adam.adam``,
``adagrad.adagrad``, ``rmsprop.rmsprop``) once per param group, with the
lists ``torch.optim``'s own ``step`` builds, so the weights and states are
torch's bit for bit by construction (its single-tensor or ``foreach``
implementation, as the group's ``foreach`` and the device pick them; never
torch's fused kernels: a group's ``fused`` is hwsim's Numba switch), at
torch's speed. Sign SGD has no torch counterpart: ``p -= lr * sign(g + wd*p)``
(``maximize`` negates ``g``) with ``torch._foreach_`` ops where ``foreach``
applies, else a loop over the tensors: torch ops, or, for a contiguous
float32/float64 CPU tensor without weight decay (and ``fused`` not False), one
Numba pass giving the same bits (it writes through NumPy, as the fused fixed-point step does: torch's
version counter of the parameter does not move).

State: as torch's (``state["step"]`` a float32 scalar tensor for Adam,
AdaGrad and RMSProp; none for SGD and sign SGD); an int step (a state dict
loaded through :meth:`~hwsim.optim.compat.CheckpointMixin.load_state_dict`,
or a group that was quantized before) becomes the tensor on the next step,
and a state tensor of another dtype is cast to the parameter's.

Telemetry: torch's step does not hand back the update, so the rule's nonzero
updates are recovered on the telemetry sample from what the step leaves (the
gradient, Adam's ``exp_avg``, a momentum buffer) or, where weight decay or
Nesterov enter the numerator, recomputed on the sample with torch's ops; an
update stalled where it is nonzero and the sampled weight did not change.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.optim import adagrad as torch_adagrad
from torch.optim import adam as torch_adam
from torch.optim import rmsprop as torch_rmsprop
from torch.optim import sgd as torch_sgd
from torch.optim.optimizer import _default_to_fused_or_foreach, _get_scalar_dtype

from hwsim.kernels.jit import SERIAL_BELOW_ELEMENTWISE, prange, serial_and_parallel
from hwsim.optim.paths import numpy_view
from hwsim.optim.rules import real_view
from hwsim.optim.telemetry import (
    count_float_stalls,
    gather_sample,
    sample_of,
    sample_size,
    sample_stride,
)


def step_group(opt, group: dict, items, counts) -> bool:
    """Step the params of ``items`` (``(param, index, check)`` of the group's
    params with gradients, in order) with torch's implementation of the rule;
    telemetry into ``counts`` (None: off). False, having done nothing, when
    the rule has no float implementation here (a custom rule)."""
    rule = _RULES.get(opt.rule.math)
    if rule is None:
        return False
    if not items:
        return True
    params = [item[0] for item in items]
    grads = [p.grad for p in params]
    before = None if counts is None else [_sample(real_view(p.detach())) for p in params]
    rule[0](opt, group, params, grads)
    if counts is not None:
        for p, grad, old in zip(params, grads, before, strict=True):
            _count(counts, p, old, rule[1](group, opt.state[p], grad, old))
    return True


# -- the steps ----------------------------------------------------------------------
def _sgd(opt, group, params, grads) -> None:
    momentum = group["momentum"]
    buffers = []
    if momentum != 0:
        for p in params:
            buf = opt.state[p].get("momentum_buffer")
            buffers.append(None if buf is None else _cast(opt.state[p], "momentum_buffer", p))
    torch_sgd.sgd(
        list(params),
        list(grads),
        buffers,
        has_sparse_grad=any(g.is_sparse for g in grads),
        fused=None,
        **_amp(opt),
        **_kw(group, "foreach", "momentum", "lr", "dampening", "nesterov"),
    )
    for p, buf in zip(params if momentum != 0 else (), buffers, strict=True):
        opt.state[p]["momentum_buffer"] = buf


def _sign_sgd(opt, group, params, grads) -> None:
    lr, wd = group["lr"], group["weight_decay"]
    lr = lr.item() if torch.is_tensor(lr) else lr
    foreach = group["foreach"]
    if foreach is None:
        foreach = _default_to_fused_or_foreach(params, False, use_fused=False)[1]
    ps, gs = [real_view(p) for p in params], [real_view(g) for g in grads]
    if foreach:
        d = torch._foreach_neg(gs) if group["maximize"] else gs
        if wd != 0:
            d = torch._foreach_add(d, ps, alpha=wd)
        torch._foreach_add_(ps, torch._foreach_sign(d), alpha=-lr)
        return
    for p, g in zip(ps, gs, strict=True):
        flat, grad_flat = (numpy_view(p), numpy_view(g)) if wd == 0 and opt.fused else (None, None)
        if grad_flat is not None and flat is not None and flat.dtype == grad_flat.dtype:
            step = _SIGN_STEP[flat.size >= SERIAL_BELOW_ELEMENTWISE]
            step(flat, grad_flat, flat.dtype.type(-lr), group["maximize"])
            continue
        if group["maximize"]:
            g = torch.neg(g)
        if wd != 0:
            g = g.add(p, alpha=wd)
        p.add_(torch.sign(g), alpha=-lr)


def _sign_step(p, g, alpha, negate):
    """``p.add_(torch.sign(g), alpha=alpha)`` in one pass (``-g`` with
    ``negate``), the same bits: torch's sign is +-1, and +0 for +-0 and NaN;
    ``alpha`` times it is exact, so the sum is rounded once either way."""
    zero = alpha * (alpha - alpha)  # alpha * (+0): -0 where alpha < 0, as torch's product
    for i in prange(p.size):
        x = -g[i] if negate else g[i]
        p[i] = p[i] + (alpha if x > 0 else (-alpha if x < 0 else zero))


_SIGN_STEP = serial_and_parallel(_sign_step)  # (serial, parallel): threads for large tensors


def _adam(opt, group, params, grads) -> None:
    exp_avgs, exp_avg_sqs, max_sqs, steps = [], [], [], []
    for p in params:
        state = opt.state[p]
        steps.append(_step_count(state))
        exp_avgs.append(_cast(state, "exp_avg", p))
        exp_avg_sqs.append(_cast(state, "exp_avg_sq", p))
        if group["amsgrad"]:
            max_sqs.append(_cast(state, "max_exp_avg_sq", p))
    beta1, beta2 = group["betas"]
    torch_adam.adam(
        list(params),
        list(grads),
        exp_avgs,
        exp_avg_sqs,
        max_sqs,
        steps,
        fused=None,
        **_amp(opt),
        has_complex=any(p.is_complex() for p in params),
        beta1=beta1,
        beta2=beta2,
        **_kw(group, "foreach", "capturable", "differentiable", "amsgrad", "lr", "eps"),
        decoupled_weight_decay=group["decoupled_weight_decay"],
    )


def _adagrad(opt, group, params, grads) -> None:
    sums, steps = [], []
    fill = group["initial_accumulator_value"]
    for p in params:
        state = opt.state[p]
        steps.append(_step_count(state))
        sums.append(_cast(state, "sum", p, complex(fill, fill) if p.is_complex() else fill))
    torch_adagrad.adagrad(
        list(params),
        list(grads),
        sums,
        steps,
        fused=None,
        **_amp(opt),
        has_sparse_grad=any(g.is_sparse for g in grads),
        has_complex=any(p.is_complex() for p in params),
        **_kw(group, "foreach", "differentiable", "lr", "lr_decay", "eps"),
    )


def _rmsprop(opt, group, params, grads) -> None:
    square_avgs, grad_avgs, buffers, steps = [], [], [], []
    for p in params:
        state = opt.state[p]
        steps.append(_step_count(state))
        square_avgs.append(_cast(state, "square_avg", p))
        if group["momentum"] > 0:
            buffers.append(_cast(state, "momentum_buffer", p))
        if group["centered"]:
            grad_avgs.append(_cast(state, "grad_avg", p))
    torch_rmsprop.rmsprop(
        list(params),
        list(grads),
        square_avgs,
        grad_avgs,
        buffers,
        steps,
        has_complex=any(p.is_complex() for p in params),
        **_kw(group, "foreach", "capturable", "differentiable", "lr", "alpha", "eps", "momentum"),
        centered=group["centered"],
    )


def _kw(group: dict, *names: str) -> dict:
    """The group's entries ``names``, ``maximize`` and ``weight_decay``, by name."""
    return {n: group[n] for n in (*names, "maximize", "weight_decay")}


def _amp(opt) -> dict:
    """The AMP GradScaler's attributes, as torch's steps pass them."""
    return {
        "grad_scale": getattr(opt, "grad_scale", None),
        "found_inf": getattr(opt, "found_inf", None),
    }


def _step_count(state: dict) -> torch.Tensor:
    """``state["step"]`` as torch keeps it: a float scalar tensor on the CPU."""
    step = state.get("step")
    if not torch.is_tensor(step):
        step = state["step"] = torch.tensor(float(step or 0), dtype=_get_scalar_dtype())
    return step


def _cast(state: dict, name: str, p: torch.Tensor, fill=0.0) -> torch.Tensor:
    """``state[name]``, created filled with ``fill`` as torch creates it, or
    cast to ``p``'s dtype and device (a quantized group stores float32 or float64)."""
    value = state.get(name)
    if value is None:
        value = state[name] = torch.full_like(p, fill, memory_format=torch.preserve_format)
    elif value.dtype != p.dtype or value.device != p.device:
        value = state[name] = value.to(device=p.device, dtype=p.dtype)
    return value


# -- telemetry: the rule's numerator, full or on the sample ---------------------------
# each returns (the full numerator, None) or (None, its sample)
def _direction(group, grad, old):
    """The sample of ``(-)grad + weight_decay * w`` with torch's ops (``old``:
    the weight's sample before the step)."""
    g = _sample(real_view(_dense(grad)))
    if group["maximize"]:
        g = torch.neg(g)
    if group["weight_decay"] != 0:
        g = g.add(old, alpha=group["weight_decay"])
    return g


def _plain(group, state, grad, old):
    """The gradient itself where no weight decay enters, else on the sample."""
    if group["weight_decay"] == 0:
        return real_view(grad), None
    return None, _direction(group, grad, old)


def _sgd_numerator(group, state, grad, old):
    if group["momentum"] == 0:
        return _plain(group, state, grad, old)
    buf = real_view(_dense(state["momentum_buffer"]))
    if not group["nesterov"]:
        return buf, None
    return None, _direction(group, grad, old).add(_sample(buf), alpha=group["momentum"])


def _sign_numerator(group, state, grad, old):
    return None, torch.sign(_direction(group, grad, old))  # sign(NaN) is 0: no update


def _adam_numerator(group, state, grad, old):
    return real_view(state["exp_avg"]), None


def _rmsprop_numerator(group, state, grad, old):
    if group["momentum"] > 0:
        return real_view(state["momentum_buffer"]), None
    return _plain(group, state, grad, old)


def _count(counts, p, old, numerator) -> None:
    """Nonzero updates and stalls of ``p`` on its sample (``old``: the weight's
    before the step; ``numerator``: the full numerator, or its sample)."""
    full, n = numerator
    weight = real_view(p.detach())
    flat = numpy_view(weight)
    if flat is not None and full is not None:
        full_flat = numpy_view(full)
        if full_flat is not None:  # one Numba pass over the sample
            stride = sample_stride(flat.size)
            nonzero, stalled = count_float_stalls(full_flat, old.numpy(), flat, stride)
            counts.add_kernel((nonzero, stalled, 0, None), weight.numel(), old.numel())
            return
    if n is None:
        n = _sample(real_view(_dense(full)))
    if flat is not None:  # NumPy counts: no torch ops on the sample
        nz = n.numpy() != 0
        stalled = np.count_nonzero(nz & (_sample(weight).numpy() == old.numpy()))
        counts.add_kernel((int(np.count_nonzero(nz)), int(stalled), 0, None), flat.size, nz.size)
        return
    counts.add_float(n, _sample(weight) == old, weight.numel())


def _sample(t: torch.Tensor) -> torch.Tensor:
    """``t``'s telemetry sample (a copy): gathered by Numba for a contiguous
    float32/float64 CPU tensor, else with torch."""
    flat = numpy_view(t)
    if flat is None:
        return sample_of(t)
    out = np.empty(sample_size(flat.size), flat.dtype)
    gather_sample(flat, sample_stride(flat.size), out)
    return torch.from_numpy(out)


def _dense(t: torch.Tensor) -> torch.Tensor:
    return t.to_dense() if t.is_sparse else t


_RULES: dict[str, tuple[Callable, Callable]] = {  # rule's math -> (step, telemetry numerator)
    "sgd": (_sgd, _sgd_numerator),
    "sign_sgd": (_sign_sgd, _sign_numerator),
    "adam": (_adam, _adam_numerator),
    "adagrad": (_adagrad, _plain),
    "rmsprop": (_rmsprop, _rmsprop_numerator),
}
