"""Float groups (every format None) step through torch's own implementation
(hwsim/optim/float_path.py): every rule and variant equals torch.optim bit
for bit, foreach or not, real or complex, sparse where torch takes it, tensor
lr; sign SGD equals a plain reference; torch's tensor step and older int
steps; telemetry's stall fraction equals a direct count."""

from __future__ import annotations

import pytest
import torch

import hwsim.optim as hopt
from hwsim.optim import rules
from hwsim.optim.base import QuantizedOptimizer
from tests.test_optim_torch_compat import (
    PAIRS,
    assert_bits,
    assert_same_as_torch,
    leaves,
    make_params,
    set_grads,
)

VARIANTS = {
    "sgd": [
        {"momentum": 0.9},
        {"momentum": 0.9, "dampening": 0.3, "weight_decay": 0.1, "maximize": True},
        {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
        {"weight_decay": 0.1, "maximize": True},
    ],
    "adam": [
        {"weight_decay": 0.1, "maximize": True},
        {"amsgrad": True, "weight_decay": 0.1},
        {"amsgrad": True, "maximize": True, "betas": (0.8, 0.9)},
    ],
    "adamw": [{"amsgrad": True}, {"maximize": True}],
    "adagrad": [
        {"weight_decay": 0.1, "maximize": True},
        {"lr": 0.1, "lr_decay": 0.5, "initial_accumulator_value": 0.2},
    ],
    "rmsprop": [
        {"weight_decay": 0.1, "maximize": True},
        {"centered": True, "alpha": 0.9},
        {"momentum": 0.5, "centered": True, "weight_decay": 0.1, "maximize": True},
    ],
}
CASES = [(name, kw) for name, grid in VARIANTS.items() for kw in grid]


def complex_params():
    return [torch.complex(*make_params(seed=s, shapes=((4, 3), (4, 3)))) for s in (1, 2)]


def run_both(name, kwargs, values, steps=4, hw_kwargs=None):
    torch_cls, hw_cls, extra = PAIRS[name]
    tp, hp = leaves(values), leaves(values)
    topt = torch_cls(tp, **kwargs)
    hopt_ = hw_cls(hp, **{**extra, **kwargs, **(hw_kwargs or {})})
    for step in range(steps):
        for ps, opt in ((tp, topt), (hp, hopt_)):
            set_grads(ps, step)
            opt.step()
    return tp, hp, topt, hopt_


@pytest.mark.parametrize("values", ["real", "complex"])
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_every_variant_is_torch_bit_for_bit(name, kwargs, foreach, values):
    values = complex_params() if values == "complex" else make_params()
    tp, hp, topt, hopt_ = run_both(name, {**kwargs, "foreach": foreach}, values)
    assert_same_as_torch(tp, hp, topt, hopt_)
    for a, b in zip(tp, hp, strict=True):  # the state is torch's: keys, a tensor step
        assert hopt_.state[b].keys() == topt.state[a].keys()
        if "step" in topt.state[a]:
            assert hopt_.state[b]["step"].dtype == topt.state[a]["step"].dtype


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_tensor_lr_is_torch_bit_for_bit(name):
    kwargs = {"lr": torch.tensor(0.01), "weight_decay": 0.1, "foreach": False}
    assert_same_as_torch(*run_both(name, kwargs, make_params()))


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("sgd", {"lr": 0.1}),
        ("sgd", {"lr": 0.1, "momentum": 0.9, "maximize": True}),
        ("adagrad", {"lr": 0.1, "lr_decay": 0.1}),
        ("adagrad", {"maximize": True}),
    ],
)
def test_sparse_gradients_are_torch_bit_for_bit(name, kwargs, foreach):
    torch_cls, hw_cls, _ = PAIRS[name]
    values = make_params(shapes=((6, 4), (3,)))
    tp, hp = leaves(values), leaves(values)
    topt, hopt_ = torch_cls(tp, **kwargs, foreach=foreach), hw_cls(hp, **kwargs, foreach=foreach)
    g = torch.Generator().manual_seed(2)
    for _ in range(3):
        indices = torch.stack([torch.randint(0, 6, (5,), generator=g), torch.arange(5) % 4])
        grad = torch.sparse_coo_tensor(indices, torch.randn(5, generator=g), (6, 4))
        dense = torch.randn(3, generator=g)
        for ps, opt in ((tp, topt), (hp, hopt_)):
            ps[0].grad, ps[1].grad = grad.clone(), dense.clone()
            opt.step()
    assert_same_as_torch(tp, hp, topt, hopt_)
    assert 0.0 <= hopt_.telemetry[0]["stall_fraction"] <= 1.0


def sign_sgd_reference(params, lr, weight_decay=0.0, maximize=False):
    for p in params:
        real = torch.view_as_real(p.detach()) if p.is_complex() else p.detach()
        grad = torch.view_as_real(p.grad) if p.is_complex() else p.grad
        d = -grad if maximize else grad
        if weight_decay:
            d = d.add(real, alpha=weight_decay)
        real.add_(torch.sign(d), alpha=-lr)


@pytest.mark.parametrize("values", ["real", "complex", "float16", "large"])
@pytest.mark.parametrize("foreach", [None, False, True])
@pytest.mark.parametrize(
    "kwargs", [{}, {"maximize": True}, {"weight_decay": 0.1, "maximize": True}]
)
def test_sign_sgd_is_its_reference(kwargs, foreach, values):
    """The "large" values: a tensor above SERIAL_BELOW_ELEMENTWISE takes the parallel
    Numba pass (without weight decay), the others the serial one or torch ops."""
    values = {
        "real": make_params,
        "large": lambda: make_params(shapes=((300, 250), (7,))),
        "complex": complex_params,
        "float16": lambda: make_params(torch.float16),
    }[values]()
    ref, hp = leaves(values), leaves(values)
    lr = 0.01 if foreach else torch.tensor(0.01)
    opt = hopt.SignSGD(hp, lr=lr, foreach=foreach, **kwargs)
    for step in range(3):
        set_grads(ref, step)
        set_grads(hp, step)
        with torch.no_grad():
            sign_sgd_reference(ref, 0.01, **kwargs)
        opt.step()
    for a, b in zip(ref, hp, strict=True):
        assert_bits(a.detach(), b.detach())
    assert all(not opt.state[p] for p in hp)  # no state, as torch's SGD without momentum


@pytest.mark.parametrize("name", ["adam", "adagrad", "rmsprop"])
def test_int_steps_of_older_state_dicts_continue_as_torch(name):
    """hwsim kept an int step; torch (and now float groups) a float tensor."""
    kwargs = {"weight_decay": 0.1}
    tp, hp, topt, hopt_ = run_both(name, kwargs, make_params(), steps=2)
    assert all(hopt_.state[p]["step"].dtype == torch.float32 for p in hp)
    state = hopt_.state_dict()
    for entry in state["state"].values():
        entry["step"] = int(entry["step"])
    _, hw_cls, extra = PAIRS[name]
    loaded = hw_cls(leaves([p.detach() for p in hp]), **extra, **kwargs)
    loaded.load_state_dict(state)
    lp = loaded.param_groups[0]["params"]
    for step in range(2, 4):
        for ps, opt in ((tp, topt), (lp, loaded)):
            set_grads(ps, step)
            opt.step()
    assert_same_as_torch(tp, lp, topt, loaded)
    assert all(torch.is_tensor(loaded.state[p]["step"]) for p in lp)


def test_group_switching_between_float_and_fixed_keeps_counting():
    p = torch.nn.Parameter(torch.randn(50, generator=torch.Generator().manual_seed(0)))
    opt = hopt.Adam([p], lr=0.01)
    opt.add_param_group({"params": [], "weight": "fx16.12", "accumulator": "fx24.20"})
    fixed = opt.param_groups[1]
    for step in range(4):
        if step == 2:  # move p into the fixed-point group
            opt.param_groups[0]["params"], fixed["params"] = [], [p]
        p.grad = torch.full_like(p, 0.5)
        opt.step()
        assert int(opt.state[p]["step"]) == step + 1
    assert isinstance(opt.state[p]["step"], int)
    assert opt.accumulator_codes(p) is not None


def test_custom_rule_without_torch_counterpart_steps_by_the_pipeline():
    def halve(grad, weight, state, group, step, store, fixed=False):
        return grad * (-0.5 * group["lr"])

    class Halving(QuantizedOptimizer):
        rule = rules.Rule(halve, ())

        def __init__(self, params, lr=0.1, **precision):
            super().__init__(params, {"lr": lr}, precision)

    p = torch.nn.Parameter(torch.ones(4))
    opt = Halving([p], lr=0.5)
    p.grad = torch.ones(4)
    opt.step()
    assert torch.equal(p.detach(), torch.full((4,), 0.75))


# ------------------------------------------------------------------ telemetry
def stall_fraction(numerator, before, after):
    nz = numerator != 0
    return (nz & (after == before)).sum().item() / nz.sum().item()


def stalling_values(dtype, n=96):
    """Weights of 1 and of 2^12 (an update of ~1e-3 is lost on the large ones
    in float16, of ~1e-6 in float32), and a gradient with zeros."""
    g = torch.Generator().manual_seed(3)
    w = torch.where(torch.arange(n) % 3 == 0, 4096.0, 1.0) * torch.randn(n, generator=g).sign()
    grad = torch.randn(n, generator=g) * (torch.arange(n) % 5 != 0)
    return w.to(dtype), grad.to(dtype)


@pytest.mark.parametrize("layout", ["float32", "float16", "noncontiguous", "complex"])
@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("sgd", {}),
        ("sgd", {"weight_decay": 1e-3, "maximize": True}),
        ("sgd", {"momentum": 0.9}),
        ("sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
        ("signsgd", {"weight_decay": 1e-3}),
        ("adam", {"foreach": True}),
        ("adagrad", {"weight_decay": 1e-3}),
        ("rmsprop", {}),
        ("rmsprop", {"momentum": 0.5}),
    ],
)
def test_stall_fraction_is_a_direct_count(name, kwargs, layout):
    dtype = torch.float16 if layout == "float16" else torch.float32
    w, grad = stalling_values(dtype)
    if layout == "noncontiguous":
        w, grad = w.reshape(8, 12).t(), grad.reshape(8, 12).t()
    if layout == "complex":
        w, grad = (
            torch.view_as_complex(w.reshape(-1, 2)),
            torch.view_as_complex(grad.reshape(-1, 2)),
        )
    lr = 1e-3 if dtype == torch.float16 else 1e-6
    if name == "signsgd":
        cls, extra, twin = hopt.SignSGD, {}, None
    else:
        twin_cls, cls, extra = PAIRS[name]
        twin = twin_cls([torch.nn.Parameter(w.clone())], lr=lr, **kwargs)
    p = torch.nn.Parameter(w.clone())
    opt = cls([p], lr=lr, **extra, **kwargs)
    for step in range(3):
        before = p.detach().clone()
        p.grad = grad * (step + 1)
        opt.step()
        real = torch.view_as_real if p.is_complex() else (lambda t: t)
        g, wd = real(p.grad), kwargs.get("weight_decay", 0.0)
        d = -g if kwargs.get("maximize") else g
        if wd:
            d = d + wd * real(before)
        if twin is not None:
            twin.param_groups[0]["params"][0].grad = p.grad.clone()
            twin.step()
            state = twin.state[twin.param_groups[0]["params"][0]]
            if name == "adam":
                d = real(state["exp_avg"])
            elif kwargs.get("momentum"):
                buf = real(state["momentum_buffer"])
                d = d + kwargs["momentum"] * buf if kwargs.get("nesterov") else buf
        expected = stall_fraction(d, real(before), real(p.detach()))
        assert 0.0 < expected < 1.0  # some updates stall, some do not
        assert opt.telemetry[0]["stall_fraction"] == pytest.approx(expected, abs=1e-12)


def test_telemetry_off_gathers_nothing():
    w, grad = stalling_values(torch.float32)
    p = torch.nn.Parameter(w.clone())
    opt = hopt.Adam([p], lr=1e-6, telemetry=False)
    p.grad = grad
    opt.step()
    assert opt.telemetry == []


def test_large_tensor_stall_fraction_is_the_sample_s():
    """Above 8192 elements the count is on the sample (runs of 16)."""
    from hwsim.optim.telemetry import sample_index

    n = 50_000
    g = torch.Generator().manual_seed(5)
    w = torch.where(torch.rand(n, generator=g) < 0.3, 4096.0, 1.0)
    grad = torch.randn(n, generator=g) * (torch.rand(n, generator=g) < 0.8)
    for param in (w.clone(), w.clone().reshape(250, 200).t()):  # Numba and torch counts
        p = torch.nn.Parameter(param)
        opt = hopt.SGD([p], lr=1e-6, weight_decay=1e-4)
        before = p.detach().clone()
        p.grad = grad.reshape(p.shape) if p.is_contiguous() else grad.reshape(250, 200).t()
        opt.step()
        index = sample_index(n, p.device)
        d = (p.grad + 1e-4 * before).reshape(-1)[index]
        expected = stall_fraction(d, before.reshape(-1)[index], p.detach().reshape(-1)[index])
        assert 0.0 < expected < 1.0
        assert opt.telemetry[0]["stall_fraction"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("fused", [None, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("maximize", [False, True])
def test_sign_sgd_kernel_keeps_torch_sign_s_zeros_and_nan(dtype, maximize, fused):
    """The Numba pass (contiguous CPU, no weight decay; torch ops with
    fused=False) gives torch.sign's bits:
    +0 for +-0 and NaN gradients, -0 weights kept as torch's sum keeps them."""
    special = [0.0, -0.0, float("nan"), 1e-45, -1e-45, float("inf"), 3.0, -2.0]
    grad = torch.tensor(special * 40, dtype=dtype)
    weight = torch.tensor([-0.0, 0.0, 1.0, -1.0, 1e-3] * 64, dtype=dtype)
    ref, p = torch.nn.Parameter(weight.clone()), torch.nn.Parameter(weight.clone())
    opt = hopt.SignSGD([p], lr=1e-3, maximize=maximize, foreach=False, fused=fused)
    p.grad, ref.grad = grad.clone(), grad.clone()
    opt.step()
    with torch.no_grad():
        sign_sgd_reference([ref], 1e-3, maximize=maximize)
    assert_bits(ref.detach(), p.detach())
    nonzero = (grad > 0) | (grad < 0)  # sign(NaN) is 0: no update, none counted
    stalled = nonzero & (p.detach() == weight)
    expected = stalled.sum().item() / nonzero.sum().item()
    assert opt.telemetry[0]["stall_fraction"] == pytest.approx(expected, abs=1e-12)
