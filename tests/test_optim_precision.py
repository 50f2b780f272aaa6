"""The stall, measured (REFERENCES.md, "Stalling under round-to-nearest"):
with nearest rounding and no accumulator, an update with |lr * g| < LSB/2 is
lost; stochastic rounding, or an accumulator with more fractional bits, keeps
converging; Adam's step is about lr whatever the gradient scale, so it stalls
once lr < LSB/2. Thresholds are measured from the data (the gradients the
optimizer actually sees), not hand-picked."""

from __future__ import annotations

import math

import pytest
import torch

import hwsim.optim as hopt

LMS_TAPS = 8
WEIGHT = "fx12.6"  # LSB = 1/64
LSB = 2.0**-6


def lms_problem(n: int, taps: int = LMS_TAPS, noise: float = 1e-3, seed: int = 0):
    """System identification: d = x @ w_true + noise, x white Gaussian."""
    g = torch.Generator().manual_seed(seed)
    w_true = torch.rand(taps, generator=g, dtype=torch.float64) - 0.5
    x = torch.randn(n, taps, generator=g, dtype=torch.float64)
    d = x @ w_true + noise * torch.randn(n, generator=g, dtype=torch.float64)
    return x, d, w_true


def lms_train(x, d, w_true, lr, optimizer="sgd", loss_scale=1.0, scheduler=None, **precision):
    """LMS with a torch linear model (one ``nn.Linear(taps, 1, bias=False)``,
    loss ``loss_scale * e^2 / 2``, one sample per step) driven by a hwsim
    optimizer. Returns the misalignment ||w - w_true||^2 / ||w_true||^2 (dB),
    the stall fraction of each step and the final weights."""
    model = torch.nn.Linear(x.shape[1], 1, bias=False).to(torch.float64)
    with torch.no_grad():
        model.weight.zero_()
    opt = hopt.OPTIMIZERS[optimizer](model.parameters(), lr=lr, **precision)
    sched = scheduler(opt) if scheduler is not None else None
    stalls = []
    for n in range(len(x)):
        opt.zero_grad()
        e = d[n] - model(x[n : n + 1])[0, 0]
        (0.5 * loss_scale * e * e).backward()
        opt.step()
        stalls.append(opt.telemetry[0]["stall_fraction"])
        if sched is not None:
            sched.step()
    w = model.weight.detach()[0]
    mis = float(((w - w_true) ** 2).sum() / (w_true**2).sum())
    return 10 * math.log10(max(mis, 1e-30)), stalls, w


def stall_threshold_lr(x, d, lsb=LSB):
    """The largest lr at which no update of the first pass moves a zero
    weight: max |lr * g| = LSB/2 with g = -e x and e = d (weights at zero)."""
    return lsb / 2 / float((d[:, None] * x).abs().max())


# ------------------------------------------------------------------------ LMS
def test_lms_nearest_stall_threshold_is_lsb_over_two():
    x, d, w_true = lms_problem(300)
    lr_stall = stall_threshold_lr(x, d)
    moved = {}
    for j in (-4, -1, 1, 4):  # lr = lr_stall * 2^(j/4)
        _, stalls, w = lms_train(x, d, w_true, lr_stall * 2 ** (j / 4), weight=WEIGHT)
        moved[j] = bool(w.abs().sum() > 0)
        if not moved[j]:
            assert all(s == 1.0 for s in stalls)  # every nonzero update lost
    # measured threshold: frozen at and below lr_stall, moving just above it
    assert moved == {-4: False, -1: False, 1: True, 4: True}


def test_lms_stochastic_rounding_and_accumulator_keep_converging():
    x, d, w_true = lms_problem(2000)
    lr = stall_threshold_lr(x, d)  # every update of the weights at zero is below LSB/2
    near, near_stalls, _ = lms_train(x, d, w_true, lr, weight=WEIGHT)
    sr, _, _ = lms_train(x, d, w_true, lr, weight=WEIGHT, rounding="stochastic", seed=1)
    acc, acc_stalls, _ = lms_train(x, d, w_true, lr, weight=WEIGHT, accumulator="fx24.18")
    flt, _, _ = lms_train(x, d, w_true, lr)
    assert near == 0.0 and sum(near_stalls) == len(near_stalls)  # stuck at w = 0: stall fraction 1
    print(f"misalignment dB: nearest {near}, stochastic {sr}, accumulator {acc}, float {flt}")
    assert sr < -8.0  # converging in expectation
    assert acc < -15.0 and acc < sr  # the accumulator keeps the sub-LSB updates
    assert abs(acc - flt) < 3.0  # ... and tracks float
    assert sum(acc_stalls[:1000]) / 1000 < 0.5


def test_lms_nearest_stalls_once_updates_fall_below_half_lsb():
    """Above the threshold nearest rounding converges until lr*|e x| < LSB/2
    for most taps, then freezes far above the float (and accumulator) result."""
    x, d, w_true = lms_problem(2000)
    lr = 4 * stall_threshold_lr(x, d)
    near, stalls, _ = lms_train(x, d, w_true, lr, weight=WEIGHT)
    acc, _, _ = lms_train(x, d, w_true, lr, weight=WEIGHT, accumulator="fx24.18")
    assert near < -3.0  # it did adapt at first
    assert sum(stalls[-500:]) / 500 > 0.95  # then stalled
    assert near > acc + 10.0


# ------------------------------------------------------------------ digits MLP
def _digits():
    datasets = pytest.importorskip("sklearn.datasets")
    x, y = datasets.load_digits(return_X_y=True)
    return torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)


def digits_train(x, y, lr, epochs=3, batch=64, **precision):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    opt = hopt.SGD(model.parameters(), lr=lr, **precision)
    with torch.no_grad():
        initial = float(torch.nn.functional.cross_entropy(model(x), y))
    g = torch.Generator().manual_seed(0)
    stalls, first, after_first = [], None, None
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            if first is None and precision:
                # measured prediction: nearest loses exactly |lr g| <= LSB/2
                grads = torch.cat([p.grad.reshape(-1).double() for p in model.parameters()])
                nz = grads != 0
                first = float(((lr * grads).abs()[nz] <= 2.0**-9).double().mean())
            opt.step()
            stalls.append(opt.telemetry[0]["stall_fraction"])
            if after_first is None:  # the loss once the weights sit on their grid
                with torch.no_grad():
                    after_first = float(torch.nn.functional.cross_entropy(model(x), y))
    with torch.no_grad():
        final = float(torch.nn.functional.cross_entropy(model(x), y))
    return initial, after_first, final, stalls, first


def test_digits_mlp_nearest_stalls_stochastic_and_accumulator_converge():
    x, y = _digits()
    lr = 0.05
    initial, start, near, near_stalls, predicted = digits_train(x, y, lr, weight="fx16.8")
    assert near_stalls[0] == predicted  # telemetry = the measured fraction with |lr g| <= LSB/2
    assert predicted > 0.95
    *_, sr, _, _ = digits_train(x, y, lr, weight="fx16.8", rounding="stochastic", seed=0)
    *_, acc, _, _ = digits_train(x, y, lr, weight="fx16.8", accumulator="fx24.16")
    *_, flt, _, _ = digits_train(x, y, lr)
    assert flt < initial - 0.1  # the float run trains
    assert start - near < 0.15 * (initial - flt)  # loss stuck near where the first step left it
    assert sum(near_stalls[-10:]) / 10 > 0.95
    assert abs(sr - flt) < 0.02 and abs(acc - flt) < 0.02


# ------------------------------------------------------------------------ Adam
def _adam_transition(x, d, w_true, loss_scale):
    """Smallest lr of a sweep (powers of 2^(1/2) times the weight LSB) at which
    any weight moves in the run, and the mean stall fraction there."""
    for k in range(-4, 3):
        lr = LSB * 2 ** (k / 2)
        _, stalls, w = lms_train(
            x, d, w_true, lr, optimizer="adam", loss_scale=loss_scale, weight=WEIGHT
        )
        if w.abs().sum() > 0:
            return lr, sum(stalls) / len(stalls)
        assert all(s == 1.0 for s in stalls)
    return math.inf, 1.0


def test_adam_stalls_below_half_lsb_whatever_the_gradient_scale():
    x, d, w_true = lms_problem(60)
    transitions = {s: _adam_transition(x, d, w_true, s) for s in (1e-3, 1.0, 1e3)}
    # the same measured threshold at gradient scales six decades apart ...
    assert len({lr for lr, _ in transitions.values()}) == 1
    lr, mean_stall = transitions[1.0]
    # ... just above LSB/2: every lr <= LSB/2 of the sweep froze the weights for
    # the whole run (Adam's first step is lr * sign(g); later |m/sqrt(v)| <= 1
    # here), the next one (LSB/sqrt(2)) moves them
    assert LSB / 2 < lr <= LSB
    assert mean_stall > 0.5  # just above the threshold most updates still stall


def test_sgd_stall_threshold_moves_with_the_gradient_scale():
    """The contrast to Adam: SGD's threshold lr scales as 1 / |g|."""
    x, d, w_true = lms_problem(300)
    base = stall_threshold_lr(x, d)
    for s in (1e-2, 1e2):
        _, _, w_below = lms_train(x, d, w_true, base / s * 0.9, loss_scale=s, weight=WEIGHT)
        _, _, w_above = lms_train(x, d, w_true, base / s * 1.2, loss_scale=s, weight=WEIGHT)
        assert w_below.abs().sum() == 0 and w_above.abs().sum() > 0
