"""The course notes' two-layer network (u = w1 x + b1, v = w2 u^2 + b2,
y = sigmoid(v), loss e^2): the notes' updates and the hand-derived gradients
against autograd, in float and at fixed-point weights, and its fixed-point
training through the library's SGD."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hwsim import FixedPoint
from models.two_layer import (
    PARAMS,
    TwoLayerNet,
    hand_gradients,
    lecture_updates,
    teacher_data,
    train_fixed,
)

finite = st.floats(-3.0, 3.0, allow_nan=False)


@settings(max_examples=100)
@given(
    st.tuples(finite, finite, finite, finite),
    st.lists(st.tuples(finite, st.floats(0.0, 1.0)), min_size=1, max_size=8),
)
def test_hand_gradients_equal_autograd(params, samples):
    p = dict(zip(PARAMS, params, strict=True))
    x = np.array([s[0] for s in samples])
    t = np.array([s[1] for s in samples])
    grads, loss = hand_gradients(p, x, t)
    net = TwoLayerNet(**p)
    torch_loss = net.loss(torch.tensor(x), torch.tensor(t))
    torch_loss.backward()
    assert loss == pytest.approx(torch_loss.item(), rel=1e-12, abs=1e-15)
    for k in PARAMS:
        assert grads[k] == pytest.approx(getattr(net, k).grad.item(), rel=1e-9, abs=1e-13), k


def _autograd(p: dict, x: np.ndarray, t: np.ndarray) -> dict[str, float]:
    net = TwoLayerNet(**p)
    net.loss(torch.tensor(x), torch.tensor(t)).backward()
    return {k: getattr(net, k).grad.item() for k in PARAMS}


@settings(max_examples=100)
@given(st.tuples(finite, finite, finite, finite), finite, st.floats(0.0, 1.0), st.floats(0.01, 2.0))
def test_the_notes_updates_are_gradient_descent_on_e_squared(params, x, d, mu):
    """w1 += 4 mu e y(1-y) u w2 x, b1 += 4 mu e y(1-y) u w2, w2 += 2 mu e y(1-y) u^2,
    b2 += 2 mu e y(1-y): minus mu times autograd's gradient of (d - y)^2, and
    the same as the hand-derived gradients for one sample."""
    p = dict(zip(PARAMS, params, strict=True))
    up = lecture_updates(p, x, d, mu)
    auto = _autograd(p, np.array([x]), np.array([d]))
    hand, _ = hand_gradients(p, np.array([x]), np.array([d]))
    for k in PARAMS:
        assert up[k] == pytest.approx(-mu * auto[k], rel=1e-9, abs=1e-13), k
        assert up[k] == pytest.approx(-mu * hand[k], rel=1e-12, abs=1e-15), k


@settings(max_examples=50)
@given(
    st.tuples(*[st.integers(-(2**11), 2**11 - 1)] * 4),
    st.lists(
        st.tuples(st.integers(-(2**7), 2**7 - 1), st.floats(0.0, 1.0)), min_size=1, max_size=8
    ),
)
def test_hand_gradients_equal_autograd_at_fixed_point_weights(codes, samples):
    """Weights on the fx12.8 grid and inputs on fx8.6 (what train_fixed feeds):
    the hand-derived gradients are autograd's."""
    p = dict(zip(PARAMS, (c / 2**8 for c in codes), strict=True))
    x = np.array([c / 2**6 for c, _ in samples])
    t = np.array([d for _, d in samples])
    grads, _ = hand_gradients(p, x, t)
    auto = _autograd(p, x, t)
    for k in PARAMS:
        assert grads[k] == pytest.approx(auto[k], rel=1e-9, abs=1e-13), k


def test_float_training_fits_the_teacher():
    x, t = teacher_data(512, seed=0)
    r = train_fixed(x, t, lr=1.0, steps=600, batch_size=32)
    assert r.history[-1]["loss"] < 1e-3 < r.history[0]["loss"]
    assert r.stall_fraction == 0.0


def test_hand_sgd_equals_torch_sgd_on_the_module():
    """The fixed-point trainer with no formats is plain SGD: torch.optim.SGD on
    TwoLayerNet, fed the same batches, must give the same parameters."""
    from models.datasets import batches

    x, t = teacher_data(64, seed=1)
    init = {"w1": 0.3, "b1": -0.2, "w2": 0.7, "b2": 0.1}
    r = train_fixed(x, t, lr=0.5, steps=8, batch_size=16, init=init, seed=3)
    net = TwoLayerNet(**init)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for idx in batches(64, 16, 3, 0):
        opt.zero_grad()
        net.loss(torch.tensor(x[idx]), torch.tensor(t[idx])).backward()
        opt.step()
    idx_epoch1 = list(batches(64, 16, 3, 1))
    for idx in idx_epoch1:
        opt.zero_grad()
        net.loss(torch.tensor(x[idx]), torch.tensor(t[idx])).backward()
        opt.step()
    for k in PARAMS:
        assert r.params[k] == pytest.approx(getattr(net, k).item(), rel=1e-12), k


def test_fixed_point_nearest_stalls_where_stochastic_keeps_learning():
    # lr * |g| stays below half the LSB 2^-6: nearest freezes every parameter,
    # stochastic rounding follows float SGD in expectation (Gupta et al. 2015)
    x, t = teacher_data(512, seed=0)
    kw = dict(lr=0.05, steps=1500, batch_size=32)
    nearest = train_fixed(x, t, rounding="nearest", weight=FixedPoint(12, 6), **kw)
    stochastic = train_fixed(x, t, rounding="stochastic", weight=FixedPoint(12, 6), **kw)
    floating = train_fixed(x, t, **kw)
    assert nearest.stall_fraction == 1.0
    assert nearest.history[-1]["loss"] == nearest.history[0]["loss"]
    assert stochastic.history[-1]["loss"] < 0.7 * nearest.history[-1]["loss"]
    # float SGD ends at ~1% of the starting loss; stochastic rounding follows it
    # to within its own noise floor (an LSB of 2^-6 on every weight)
    assert floating.history[-1]["loss"] < 0.02 * floating.history[0]["loss"]
    assert stochastic.history[-1]["loss"] < 1.5 * floating.history[-1]["loss"]
    for k in PARAMS:  # every parameter stays on its grid
        assert stochastic.params[k] * 64 == round(stochastic.params[k] * 64)


def test_half_lsb_update_stalls_as_in_hwsim_optim_sgd():
    """DESIGN.md, "Weight accumulator": the rounded update is added, not the
    sum rounded. fx8.4 weights at codes [1, 2] and an update of half an LSB:
    rounding each update to nearest-even gives 0, so both stay ([1, 2], stall
    fraction 1.0); rounding master + update would give [2, 2]."""
    import hwsim.optim
    from models.two_layer import sgd_step, weight_optimizer

    fmt = FixedPoint(8, 4)
    grads = [-1 / 32, -1 / 32, 0.0, 0.0]  # lr 1: an update of +LSB/2 on w1 and b1
    param, opt = weight_optimizer([1 / 16, 2 / 16, 0.0, 0.0], 1.0, weight=fmt, accumulator=None)
    nonzero, stalls = sgd_step(param, opt, grads)
    assert (param.detach().numpy()[:2] * 16).tolist() == [1.0, 2.0]
    assert (nonzero, stalls) == (2, 2)

    library = torch.nn.Parameter(torch.tensor([1 / 16, 2 / 16], dtype=torch.float64))
    sgd = hwsim.optim.SGD([library], lr=1.0, weight=fmt, seed=0)
    library.grad = torch.tensor(grads[:2], dtype=torch.float64)
    sgd.step()
    assert library.detach().tolist() == param.detach().numpy()[:2].tolist()
    assert sgd.telemetry[0]["stall_fraction"] == 1.0 == stalls / nonzero


@pytest.mark.parametrize(
    ("weight", "accumulator"),
    [(FixedPoint(12, 6), None), (FixedPoint(10, 5), FixedPoint(16, 11)), (None, FixedPoint(12, 7))],
)
def test_fixed_training_equals_hwsim_optim_sgd_fed_the_hand_gradients(weight, accumulator):
    """train_fixed is the hand-derived gradients plus the library's optimizer:
    hwsim.optim.SGD on a four-element parameter, fed the same gradients of the
    same batches, gives the same weights and stall fraction."""
    import hwsim
    import hwsim.optim
    from models.datasets import batches

    x, t = teacher_data(64, seed=2)
    init = {"w1": 0.3, "b1": -0.2, "w2": 0.7, "b2": 0.1}
    steps, lr = 12, 0.3
    r = train_fixed(
        x, t, lr=lr, steps=steps, batch_size=16, init=init, seed=4,
        weight=weight, accumulator=accumulator,
    )  # fmt: skip
    master = accumulator if accumulator is not None else weight
    start = hwsim.quantize(np.array([init[k] for k in PARAMS]), master)
    param = torch.nn.Parameter(torch.tensor(start))
    opt = hwsim.optim.SGD([param], lr=lr, weight=weight, accumulator=accumulator, seed=4)
    nonzero = stalls = 0
    order = [idx for epoch in range(3) for idx in batches(64, 16, 4, epoch)][:steps]
    for idx in order:
        seen = param.detach().numpy()
        seen = seen if weight is None else hwsim.quantize(seen, weight)
        grads, _ = hand_gradients(dict(zip(PARAMS, seen.tolist(), strict=True)), x[idx], t[idx])
        param.grad = torch.tensor([grads[k] for k in PARAMS], dtype=torch.float64)
        opt.step()
        n = int(np.count_nonzero([grads[k] for k in PARAMS]))
        nonzero += n
        stalls += round(opt.telemetry[0]["stall_fraction"] * n)
    assert [r.params[k] for k in PARAMS] == param.detach().tolist()
    assert r.stall_fraction == stalls / max(nonzero, 1)
    grid = (weight or accumulator).lsb  # the network sees weights on the weight grid
    assert all(v / grid == round(v / grid) for v in r.params.values())
