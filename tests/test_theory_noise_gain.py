"""Noise gains E_A, E_W (Sakr et al. 2017): autograd estimate vs a per-sample,
per-class brute force, and the mismatch bound vs measured mismatches of a
quantized network."""

import numpy as np
import pytest
import torch

import hwsim
from hwsim.theory import NoiseGains, min_precision, mismatch_bound, noise_gains


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # tiny models: thread start-up and oversubscription cost more than they give
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 12),
        torch.nn.ReLU(),
        torch.nn.Linear(12, 8),
        torch.nn.Tanh(),
        torch.nn.Linear(8, 4),
    ).double()


def _brute_force(model, x, include_input=True):
    """One backward per sample and class, directly from the definition."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
    e_a = e_w = 0.0
    for n in range(x.shape[0]):
        xn = x[n : n + 1].clone().requires_grad_(True)
        acts = []
        hooks = [
            m.register_forward_pre_hook(lambda m, a, acts=acts: acts.append(a[0])) for m in layers
        ]
        z = model(xn)[0]
        for h in hooks:
            h.remove()
        if not include_input:
            acts = acts[1:]
        y = int(z.argmax())
        for i in range(z.shape[0]):
            if i == y:
                continue
            targets = acts + list(model.parameters())
            grads = torch.autograd.grad(z[i] - z[y], targets, retain_graph=True, allow_unused=True)
            gap2 = float((z[i] - z[y]).detach() ** 2)
            ga = sum(float((g**2).sum()) for g in grads[: len(acts)] if g is not None)
            gw = sum(float((g**2).sum()) for g in grads[len(acts) :] if g is not None)
            e_a += ga / (24 * gap2)
            e_w += gw / (24 * gap2)
    return e_a / x.shape[0], e_w / x.shape[0]


@pytest.mark.parametrize("include_input", [True, False])
def test_noise_gains_match_brute_force(include_input):
    model = _mlp()
    x = torch.randn(40, 6, dtype=torch.float64)
    g = noise_gains(model, x, chunk=16, include_input=include_input)
    e_a, e_w = _brute_force(model, x, include_input)
    assert g.activation == pytest.approx(e_a, rel=1e-9)
    assert g.weight == pytest.approx(e_w, rel=1e-9)
    assert g.samples == 40 and g.activation_signed  # the raw input and tanh outputs are signed
    assert model.training  # left as it was


def test_noise_gains_conv_model_matches_brute_force():
    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5)
    ).double()
    x = torch.rand(12, 1, 6, 6, dtype=torch.float64)
    g = noise_gains(model, x, chunk=5)
    e_a, e_w = _brute_force(model, x)
    assert g.activation == pytest.approx(e_a, rel=1e-9) and g.weight == pytest.approx(e_w, rel=1e-9)
    assert not g.activation_signed  # pixels and ReLU outputs are non-negative


def _quantized_forward(model, x, a_fmt, w_fmt):
    """The MLP with activations (layer inputs) and parameters rounded to nearest."""
    h = x
    for m in model:
        if isinstance(m, torch.nn.Linear):
            h = torch.nn.functional.linear(
                hwsim.quantize(h, a_fmt),
                hwsim.quantize(m.weight, w_fmt),
                hwsim.quantize(m.bias, w_fmt),
            )
        else:
            h = m(h)
    return h


def test_mismatch_bound_holds_on_a_trained_classifier():
    from sklearn.datasets import load_digits

    xs, ys = load_digits(return_X_y=True)
    x = torch.tensor(xs / 16.0)
    y = torch.tensor(ys)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
    ).double()
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[:1000]), y[:1000]).backward()
        opt.step()
    gains = noise_gains(model, x[1000:1200])
    test = x[1000:]
    with torch.no_grad():
        ref = model(test).argmax(1)
        for b in (4, 6, 8, 10):
            a_fmt = hwsim.FixedPoint(b, b - int(np.log2(gains.activation_range)), signed=False)
            w_fmt = hwsim.FixedPoint(b, b - 1 - int(np.log2(gains.weight_range)))
            # the precisions and the formats give the same LSBs
            assert gains.lsb(b, "activation") == a_fmt.lsb and gains.lsb(b, "weight") == w_fmt.lsb
            bound = mismatch_bound(gains, b, b)
            assert bound == mismatch_bound(gains, a_fmt, w_fmt)
            measured = float(
                (_quantized_forward(model, test, a_fmt, w_fmt).argmax(1) != ref).double().mean()
            )
            # the bound holds (sampling slack: 797 test digits) and is not vacuous at 8 bits
            assert measured <= bound + 2 * np.sqrt(max(bound, 1e-3) / len(test)), (
                b,
                measured,
                bound,
            )
        assert mismatch_bound(gains, 8, 8) < 0.5
    b_a, b_w = min_precision(gains, 0.05)
    assert mismatch_bound(gains, b_a, b_w) <= 0.05
    assert mismatch_bound(gains, b_a - 1, b_w) > 0.05 and mismatch_bound(gains, b_a, b_w - 1) > 0.05


def test_min_precision_is_minimal_and_errors():
    g = NoiseGains(
        activation=3.0,
        weight=50.0,
        activation_range=4.0,
        weight_range=0.5,
        activation_signed=True,
        samples=1,
    )
    for target in (0.3, 1e-2, 1e-4, 1e-6):
        b_a, b_w = min_precision(g, target)
        assert mismatch_bound(g, b_a, b_w) <= target
        for ba in range(1, 33):
            for bw in range(1, 33):
                if ba + bw < b_a + b_w:
                    assert mismatch_bound(g, ba, bw) > target
    with pytest.raises(ValueError, match="target"):
        min_precision(g, 0.0)
    with pytest.raises(ValueError, match="no precision"):
        min_precision(g, 1e-30, max_bits=8)
    with pytest.raises(ValueError, match="bit count"):
        mismatch_bound(g, 0, 8)
    with pytest.raises(ValueError, match="inputs"):
        noise_gains(_mlp(), torch.randn(6))
    with pytest.raises(ValueError, match="no nn.Linear"):
        noise_gains(torch.nn.ReLU(), torch.randn(3, 6))
