"""The torch backend's fused layer step off its lean float64 path (a wide
accumulator, gradients already on their grid) gives the unfused chain's bits,
and its noise drawn at once equals the noise drawn one tensor at a time."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_nn_fused import BASE, cnn, mlp, steps

from hwsim.nn import fused_mac
from hwsim.torch_path.core import counter_uniform
from hwsim.torch_path.quantize import counter_uniforms

VARIANTS = {
    # wl > 52: the finish and bias steps take the int64 path, with noise drawn at once
    "wide": dataclasses.replace(BASE, grad_weight_accumulator="fx60.40", accumulator="fx56.30"),
    # the output gradient on the input-gradient grid: the next backward draws no noise
    "on-grid": dataclasses.replace(BASE, grad_activation="fx16.12", grad_weight="fx16.12"),
    "away": dataclasses.replace(BASE, rounding="nearest_away", accumulator_rounding="zero"),
}


@pytest.mark.parametrize("make", [mlp, cnn])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fused_torch_step_equals_unfused_chain(variant, make, monkeypatch):
    plans = []
    real = fused_mac.fused_plan
    monkeypatch.setattr(fused_mac, "fused_plan", lambda *a: plans.append(real(*a)) or plans[-1])
    got = steps(make, VARIANTS[variant], "torch", True, monkeypatch)
    want = steps(make, VARIANTS[variant], "torch", False, monkeypatch)
    assert plans and all(p is not None for p in plans)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


seeds = st.one_of(st.sampled_from([0, 1, (1 << 64) - 1]), st.integers(0, (1 << 64) - 1))


@given(
    st.lists(st.tuples(seeds, st.integers(0, 40), st.integers(0, 1 << 40)), min_size=1, max_size=5)
)
def test_counter_uniforms_equal_counter_uniform_each(requests):
    got = counter_uniforms(requests)
    for (seed, n, offset), u in zip(requests, got, strict=True):
        assert torch.equal(u, counter_uniform(seed, n, offset=offset))
