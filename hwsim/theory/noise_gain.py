"""Per-tensor precision for a classifier from quantization noise gains
(Sakr, Kim & Shanbhag, "Analytical Guarantees on Numerical Precision of Deep
Neural Networks", ICML 2017).

Quantizing activations and weights to LSBs Delta_A, Delta_W flips the decision
of a trained classifier with probability at most

    p_m <= Delta_A^2 E_A + Delta_W^2 E_W,
    E_A = E[ sum_{i != y} sum_a |dz_i/da - dz_y/da|^2 / (24 |z_i - z_y|^2) ],

(E_W likewise over the weights), y the float network's decision and z the
logits. :func:`noise_gains` estimates E_A and E_W with autograd on a data
sample, :func:`mismatch_bound` evaluates the bound for given precisions and
:func:`min_precision` finds the smallest ones that keep it under a target.

>>> import torch
>>> from hwsim.theory import noise_gains, mismatch_bound, min_precision
>>> torch.manual_seed(0) and None
>>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
>>> gains = noise_gains(model, torch.randn(64, 8))
>>> b_a, b_w = min_precision(gains, target=0.01)
>>> mismatch_bound(gains, b_a, b_w) <= 0.01
True
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from hwsim.formats import FixedPoint, parse_format


@dataclasses.dataclass(frozen=True)
class NoiseGains:
    """E_A and E_W of a model on a data sample, with the ranges the precisions
    refer to: a B-bit signed tensor covers [-range, range) with LSB
    range * 2^-(B-1), an unsigned one [0, range) with LSB range * 2^-B. Ranges are
    powers of two at or above the largest magnitude seen."""

    activation: float
    weight: float
    activation_range: float
    weight_range: float
    activation_signed: bool
    samples: int

    def lsb(self, bits_or_format, which: str) -> float:
        """The LSB of ``which`` ("activation" or "weight") at a bit count or format."""
        if isinstance(bits_or_format, str):
            bits_or_format = parse_format(bits_or_format)
        if isinstance(bits_or_format, FixedPoint):
            return bits_or_format.lsb
        b = bits_or_format
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ValueError(
                f"{which} precision must be a positive bit count or a FixedPoint, got {b!r}"
            )
        if which == "activation":
            return self.activation_range * 2.0 ** -(b - (1 if self.activation_signed else 0))
        return self.weight_range * 2.0 ** -(b - 1)


def _pow2_ceil(x: float) -> float:
    return 2.0 ** math.ceil(math.log2(x)) if x > 0 else 1.0


def _tensor_layers(model):
    from torch import nn

    return [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]


def noise_gains(
    model,
    inputs,
    *,
    chunk: int = 64,
    include_input: bool = True,
    parameters: Callable[[str], bool] | None = None,
) -> NoiseGains:
    """Estimate the noise gains E_A, E_W (Sakr et al. 2017) on ``inputs``.

    Activations are the inputs of every nn.Linear / nn.Conv2d (what a layer's
    activation quantizer sees; ``include_input=False`` leaves out the network
    input). Weights are every parameter, or those whose name passes
    ``parameters``. The model is evaluated in eval mode (samples must not
    interact) and left unchanged. Per-sample weight Jacobians use
    ``torch.func`` (vmap of jacrev) over chunks of ``chunk`` samples.

    Returns a :class:`NoiseGains`.
    """
    import torch
    from torch.func import functional_call, jacrev, vmap

    if not isinstance(inputs, torch.Tensor) or inputs.ndim < 2 or inputs.shape[0] < 1:
        raise ValueError("inputs must be a torch tensor of shape (samples, ...) with samples >= 1")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    layers = _tensor_layers(model)
    if not layers:
        raise ValueError("the model has no nn.Linear or nn.Conv2d layer")
    first = layers[0]
    names = [n for n, _ in model.named_parameters() if parameters is None or parameters(n)]
    if not names:
        raise ValueError("no parameter selected: check the `parameters` filter")
    ref = next(model.parameters())
    was_training = model.training
    model.eval()
    e_a = e_w = 0.0
    max_act = max_w = 0.0
    signed = False
    try:
        with torch.no_grad():
            for n in names:
                max_w = max(max_w, float(dict(model.named_parameters())[n].abs().max()))
        params = {n: p.detach() for n, p in model.named_parameters()}
        buffers = {n: b for n, b in model.named_buffers()}

        def logits_of(p, x):
            return functional_call(model, (p, buffers), (x.unsqueeze(0),)).squeeze(0)

        jac_fn = vmap(
            jacrev(lambda sel, rest, x: logits_of({**rest, **sel}, x)), in_dims=(None, None, 0)
        )
        selected = {n: params[n] for n in names}
        rest = {n: p for n, p in params.items() if n not in selected}

        for start in range(0, inputs.shape[0], chunk):
            x = inputs[start : start + chunk].to(dtype=ref.dtype, device=ref.device)
            x = x.detach().clone().requires_grad_(True)
            acts: list = []

            def hook(module, args, _acts=acts):
                a = args[0]
                if module is first and not include_input:
                    return
                if all(a is not b for b in _acts):
                    _acts.append(a)

            handles = [m.register_forward_pre_hook(hook) for m in layers]
            try:
                z = model(x)
            finally:
                for h in handles:
                    h.remove()
            if z.ndim != 2:
                raise ValueError(
                    f"the model must return logits of shape (samples, classes), got {tuple(z.shape)}"
                )
            n_cls = z.shape[1]
            y = z.detach().argmax(1)
            zy = z.gather(1, y[:, None])
            gap2 = (z.detach() - zy.detach()) ** 2  # (n, C)
            other = torch.ones_like(gap2, dtype=torch.bool)
            other[torch.arange(len(y)), y] = False
            for a in acts:
                with torch.no_grad():
                    max_act = max(max_act, float(a.abs().max()))
                    signed = signed or bool((a < 0).any())
            # E_A: the gradient of sum_n (z_ni - z_ny) w.r.t. each activation is
            # per-sample, since samples do not interact in eval mode
            for i in range(n_cls):
                mask = other[:, i]
                if not mask.any():
                    continue
                s = ((z[:, i] - zy[:, 0]) * mask).sum()
                grads = torch.autograd.grad(s, acts, retain_graph=True, allow_unused=True)
                sq = torch.zeros(len(y), dtype=z.dtype, device=z.device)
                for g in grads:
                    if g is not None:
                        sq = sq + g.reshape(len(y), -1).pow(2).sum(1)
                e_a += float((sq[mask] / (24.0 * gap2[mask, i])).sum())
            # E_W: per-sample Jacobians of the logits w.r.t. the selected parameters
            jac = jac_fn(selected, rest, x.detach())
            sqw = torch.zeros_like(gap2)
            for jv in jac.values():
                jv = jv.reshape(len(y), n_cls, -1)
                d = jv - jv[torch.arange(len(y)), y][:, None, :]
                sqw = sqw + d.pow(2).sum(-1)
            e_w += float((sqw[other] / (24.0 * gap2[other])).sum())
    finally:
        model.train(was_training)
    n = inputs.shape[0]
    return NoiseGains(
        activation=e_a / n,
        weight=e_w / n,
        activation_range=_pow2_ceil(max_act),
        weight_range=_pow2_ceil(max_w),
        activation_signed=signed,
        samples=n,
    )


def mismatch_bound(gains: NoiseGains, activation, weight) -> float:
    """Upper bound on the probability that the fixed-point network's decision
    differs from the float one: ``Delta_A^2 E_A + Delta_W^2 E_W`` (Sakr et al.
    2017). ``activation``/``weight`` are bit counts (LSB from the gains' ranges)
    or FixedPoint formats (their LSB). Not capped at 1.

    >>> g = NoiseGains(activation=100.0, weight=400.0, activation_range=1.0,
    ...                weight_range=1.0, activation_signed=False, samples=1)
    >>> mismatch_bound(g, 8, 8) == 2**-16 * 100 + 2**-14 * 400
    True
    """
    da, dw = gains.lsb(activation, "activation"), gains.lsb(weight, "weight")
    return da * da * gains.activation + dw * dw * gains.weight


def min_precision(gains: NoiseGains, target: float, *, max_bits: int = 32) -> tuple[int, int]:
    """Smallest ``(B_A, B_W)`` whose :func:`mismatch_bound` is at most ``target``:
    the pair with the fewest total bits, ties broken toward the smaller maximum
    (balanced precisions, as Sakr et al. recommend equalizing the two noise terms).

    >>> g = NoiseGains(activation=100.0, weight=400.0, activation_range=1.0,
    ...                weight_range=1.0, activation_signed=False, samples=1)
    >>> min_precision(g, 0.01)
    (8, 9)
    """
    if not (isinstance(target, int | float) and 0 < target < 1):
        raise ValueError(f"target must be a probability in (0, 1), got {target!r}")
    best = None
    for ba in range(1, max_bits + 1):
        for bw in range(1, max_bits + 1):
            if mismatch_bound(gains, ba, bw) <= target:
                key = (ba + bw, max(ba, bw), bw)
                if best is None or key < best[0]:
                    best = (key, (ba, bw))
                break  # larger bw only adds bits
    if best is None:
        raise ValueError(f"no precision up to {max_bits} bits meets the target {target}")
    return best[1]
