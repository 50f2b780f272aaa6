"""The fused layer step (hwsim.nn.fused on the numba backend,
hwsim.nn.fused_torch on the torch backend) gives the unfused chain's bits:
outputs, input and parameter gradients, over a few SGD steps; and the torch
backend's noise drawn at once equals the noise drawn one tensor at a time."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import hwsim.nn as hnn
from hwsim.nn import fused_mac
from hwsim.torch_path.core import counter_uniform
from hwsim.torch_path.quantize import counter_uniforms

BACKENDS = ("numba", "torch")
BASE = hnn.Precision(
    weight="fx16.12",
    activation="fx16.12",
    output="fx16.10",
    grad_activation="fx16.14",
    grad_weight="fx16.14",
    accumulator="fx32.20",
    grad_activation_accumulator="fx32.24",
    grad_weight_accumulator="fx32.24",
    grad_weight_rounding="stochastic",
    grad_activation_rounding="stochastic",
    seed=3,
)
VARIANTS = {
    "base": BASE,
    "stochastic": dataclasses.replace(BASE, rounding="stochastic"),
    "wrap": dataclasses.replace(BASE, overflow="wrap", accumulator="fx20.10"),
    "product": dataclasses.replace(BASE, product="fx24.16", accumulator_rounding="floor"),
    "narrow": dataclasses.replace(
        BASE, weight="fx8.6", activation="fx8.5", output="fx8.4", accumulator="fx16.8"
    ),
    # wl > 52: the torch backend's finish and bias steps leave its lean float64 path
    # for int64, with noise drawn at once
    "wide": dataclasses.replace(BASE, grad_weight_accumulator="fx60.40", accumulator="fx56.30"),
    # the output gradient on the input-gradient grid: the next backward draws no noise
    "on-grid": dataclasses.replace(BASE, grad_activation="fx16.12", grad_weight="fx16.12"),
    "away": dataclasses.replace(BASE, rounding="nearest_away", accumulator_rounding="zero"),
}


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))


def cnn():
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 2, stride=2),
        nn.Flatten(), nn.Linear(8, 3),
    )  # fmt: skip


def steps(make, precision, backend, fused: bool, monkeypatch):
    with monkeypatch.context() as m:
        if not fused:
            m.setattr(fused_mac, "fused_plan", lambda *args: None)
        torch.manual_seed(0)
        model = hnn.quantize_model(make(), precision, backend=backend)
        gen = torch.Generator().manual_seed(1)
        inputs = [torch.rand((6, 1, 4, 4), generator=gen).requires_grad_(True) for _ in range(3)]
        return train(
            model, inputs, lambda out: nn.functional.cross_entropy(out, torch.arange(6) % 3), 0.1
        )


def train(model, inputs, loss, lr: float) -> list:
    """SGD steps on ``inputs``: each step's output, input gradient (where the
    input asks for one) and parameter gradients, for comparing two runs."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    seen = []
    for x in inputs:
        opt.zero_grad()
        out = model(x)
        loss(out).backward()
        seen += [out.detach()] + ([x.grad] if x.requires_grad else [])
        seen += [p.grad.clone() for p in model.parameters()]
        opt.step()
    return seen


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("make", [mlp, cnn])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fused_step_equals_unfused_chain(variant, make, backend, monkeypatch):
    plans = []
    real = fused_mac.fused_plan
    monkeypatch.setattr(fused_mac, "fused_plan", lambda *a: plans.append(real(*a)) or plans[-1])
    got = steps(make, VARIANTS[variant], backend, True, monkeypatch)
    want = steps(make, VARIANTS[variant], backend, False, monkeypatch)
    assert plans and all(p is not None for p in plans)  # every layer call took the fused path
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("where", ["x", "weight", "bias"])
def test_fused_step_non_finite_raises_as_unfused(where, backend):
    from hwsim.errors import NonFiniteError

    torch.manual_seed(0)
    layer = hnn.quantize_model(nn.Linear(4, 3), VARIANTS["stochastic"], backend=backend)
    x = torch.rand(2, 4)
    target = {"x": x, "weight": layer.weight.data, "bias": layer.bias.data}[where]
    target.view(-1)[1] = float("nan")
    with pytest.raises(NonFiniteError):
        layer(x)


seeds = st.one_of(st.sampled_from([0, 1, (1 << 64) - 1]), st.integers(0, (1 << 64) - 1))


@given(
    st.lists(st.tuples(seeds, st.integers(0, 40), st.integers(0, 1 << 40)), min_size=1, max_size=5)
)
def test_counter_uniforms_equal_counter_uniform_each(requests):
    """The torch backend's stochastic noise of several quantizers drawn at once
    (``hwsim.nn.fused_torch.noises``) is each one's own counter noise."""
    got = counter_uniforms(requests)
    for (seed, n, offset), u in zip(requests, got, strict=True):
        assert torch.equal(u, counter_uniform(seed, n, offset=offset))
