"""hwsim.optim checkpoints and copies as torch.optim's: state dicts through
``torch.save``/``torch.load`` with default arguments (``weights_only=True``),
state dicts made by torch.optim and by older hwsim versions, deepcopy and
pickle; fixed-point runs resume and copies continue bit-identically,
stochastic rounding included. Also torch's keyword arguments, tensor lr and
param-group key typos."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

import hwsim.optim as hopt
from tests.test_optim_torch_compat import (
    PAIRS,
    assert_same_as_torch,
    leaves,
    make_params,
    set_grads,
)

FIXED = dict(
    weight="fx10.6",
    accumulator="fx20.16",
    state="fx24.16",
    grad="fx16.10",
    rounding="stochastic",
    seed=11,
)
# (hwsim optimizer, kwargs) with fixed-point states and stochastic rounding
FIXED_CASES = [
    (hopt.SGD, {"lr": 0.05, "momentum": 0.9, **FIXED}),
    (hopt.SignSGD, {"lr": 0.01, **FIXED}),
    (hopt.Adam, {"lr": 0.01, "amsgrad": True, "update": "fx16.14", **FIXED}),
    (hopt.AdaGrad, {"lr": 0.05, **FIXED}),
    (hopt.RMSProp, {"lr": 0.01, "centered": True, "momentum": 0.5, **FIXED}),
]
IDS = [cls.__name__ for cls, _ in FIXED_CASES]


def through_file(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer)  # weights_only=True, torch's default since 2.6


def run(opt, params, start, stop):
    for step in range(start, stop):
        set_grads(params, step)
        opt.step()


def snapshot(opt, params):
    return [p.detach().clone() for p in params], [
        {k: (v.clone() if torch.is_tensor(v) else v) for k, v in opt.state[p].items()}
        for p in params
    ]


def assert_same_run(a, b):
    (pa, sa), (pb, sb) = a, b
    assert all(torch.equal(x, y) for x, y in zip(pa, pb, strict=True))
    for x, y in zip(sa, sb, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            if torch.is_tensor(x[key]):
                assert x[key].dtype == y[key].dtype and torch.equal(x[key], y[key]), key
            else:
                assert x[key] == y[key], key


@pytest.mark.parametrize(("cls", "kwargs"), FIXED_CASES, ids=IDS)
def test_fixed_point_resume_through_weights_only_load(cls, kwargs):
    params = leaves(make_params())
    opt = cls(params, **kwargs)
    run(opt, params, 0, 6)
    straight = snapshot(opt, params)

    params = leaves(make_params())
    opt = cls(params, **kwargs)
    run(opt, params, 0, 3)
    saved = through_file({"model": [p.detach() for p in params], "opt": opt.state_dict()})
    group = saved["opt"]["param_groups"][0]
    assert group["weight"] == "fx10.6" and group["rounding"] == "stochastic"
    params = leaves(saved["model"])
    opt = cls(params, lr=0.5)  # other hyperparameters: the checkpoint's replace them
    opt.load_state_dict(saved["opt"])
    run(opt, params, 3, 6)
    assert_same_run(snapshot(opt, params), straight)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize(("cls", "kwargs"), FIXED_CASES, ids=IDS)
def test_copies_continue_bit_identically(cls, kwargs, how):
    params = leaves(make_params())
    opt = cls(params, **kwargs, fused=False, telemetry=False)
    run(opt, params, 0, 2)
    if how == "deepcopy":
        copy_opt = copy.deepcopy(opt)
        copy_params = copy_opt.param_groups[0]["params"]
    else:
        copy_params, copy_opt = pickle.loads(pickle.dumps((params, opt)))
    assert copy_opt.fused is False and copy_opt.telemetry_enabled is False
    run(opt, params, 2, 5)
    run(copy_opt, copy_params, 2, 5)
    assert_same_run(snapshot(copy_opt, copy_params), snapshot(opt, params))


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_float_state_dict_and_copies_continue_as_torch(name):
    torch_cls, hw_cls, extra = PAIRS[name]
    kwargs = {"weight_decay": 0.1, **({"momentum": 0.9} if name in ("sgd", "rmsprop") else {})}
    tp, hp = leaves(make_params()), leaves(make_params())
    topt, hopt_ = torch_cls(tp, **kwargs), hw_cls(hp, **{**extra, **kwargs})
    run(topt, tp, 0, 3)
    run(hopt_, hp, 0, 3)
    loaded = hw_cls(leaves([p.detach() for p in hp]), **extra)
    loaded.load_state_dict(through_file(hopt_.state_dict()))
    deep = copy.deepcopy(hopt_)
    for opt in (topt, hopt_, loaded, deep):
        run(opt, opt.param_groups[0]["params"], 3, 6)
    for opt in (hopt_, loaded, deep):
        assert_same_as_torch(tp, opt.param_groups[0]["params"], topt, opt)


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_torch_made_state_dict_loads_and_continues_as_torch(name):
    torch_cls, hw_cls, extra = PAIRS[name]
    kwargs = {"weight_decay": 0.1, **({"momentum": 0.9} if name in ("sgd", "rmsprop") else {})}
    if name == "rmsprop":
        kwargs["centered"] = True
    tp = leaves(make_params())
    topt = torch_cls(tp, **kwargs)
    run(topt, tp, 0, 3)
    hp = leaves([p.detach() for p in tp])
    hopt_ = hw_cls(hp, **extra)  # defaults: the torch state dict's hyperparameters win
    hopt_.load_state_dict(through_file(topt.state_dict()))
    assert hopt_.param_groups[0]["weight"] is None  # filled from the defaults
    run(topt, tp, 3, 6)
    run(hopt_, hp, 3, 6)
    assert_same_as_torch(tp, hp, topt, hopt_)
    # and back: torch.optim loads a hwsim state dict
    back = torch_cls(leaves([p.detach() for p in hp]), **kwargs)
    back.load_state_dict(through_file(hopt_.state_dict()))
    run(back, back.param_groups[0]["params"], 6, 8)
    run(topt, tp, 6, 8)
    assert_same_as_torch(tp, back.param_groups[0]["params"], topt, back)


def test_old_state_dict_gets_defaults():
    """A state dict of an older hwsim (no maximize, foreach, differentiable,
    fused, decoupled_weight_decay, no precision entries) loads as torch fills
    defaults; the optimizer's own defaults fill the precision entries."""
    params = leaves(make_params())
    opt = hopt.Adam(params, lr=0.01)
    run(opt, params, 0, 2)
    state = opt.state_dict()
    for group in state["param_groups"]:
        for key in ("maximize", "foreach", "differentiable", "fused", "capturable"):
            del group[key]
        del group["decoupled_weight_decay"], group["weight"], group["rounding"]
    fresh = hopt.Adam(leaves([p.detach() for p in params]), weight="fx12.8")
    fresh.load_state_dict(through_file(state))
    group = fresh.param_groups[0]
    assert group["maximize"] is False and group["decoupled_weight_decay"] is False
    assert str(group["weight"]) == "fx12.8" and str(group["rounding"]) == "nearest"
    run(fresh, fresh.param_groups[0]["params"], 2, 3)
    assert all(p.isfinite().all() for p in fresh.param_groups[0]["params"])


def test_state_dict_holds_only_plain_types():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = hopt.SGD([p], lr=0.1, weight="fx8.4", state={"momentum_buffer": "fx12.8"}, momentum=0.9)
    p.grad = torch.ones(3)
    opt.step()

    def plain(x):
        if isinstance(x, dict):
            return all(plain(k) and plain(v) for k, v in x.items())
        if isinstance(x, (list, tuple)):
            return all(plain(v) for v in x)
        return x is None or type(x) in (bool, int, float, str) or torch.is_tensor(x)

    state = opt.state_dict()
    assert plain(state)
    assert state["param_groups"][0]["state"] == {"momentum_buffer": "fx12.8"}
    assert str(opt.param_groups[0]["weight"]) == "fx8.4"  # the live group is unchanged


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (hopt.SGD, {"foreach": True}),
        (hopt.SGD, {"foreach": False, "differentiable": False, "fused": False}),
        (hopt.Adam, {"foreach": None, "capturable": False, "fused": None}),
        (hopt.AdaGrad, {"foreach": True, "differentiable": False}),
        (hopt.RMSProp, {"foreach": False, "capturable": False, "differentiable": False}),
    ],
)
def test_torch_kwargs_are_accepted_and_kept_in_groups(cls, kwargs):
    values = make_params()
    plain, flagged = leaves(values), leaves(values)
    opts = cls(plain, lr=0.01), cls(flagged, lr=0.01, **kwargs)
    for opt, ps in zip(opts, (plain, flagged), strict=True):
        run(opt, ps, 0, 3)
    assert all(torch.equal(a, b) for a, b in zip(plain, flagged, strict=True))
    assert all(opts[1].param_groups[0][k] == v for k, v in kwargs.items() if v is not None)


@pytest.mark.parametrize(
    ("name", "kwargs", "error", "match"),
    [
        ("sgd", {"fused": True, "foreach": True}, RuntimeError, "cannot be `True` together"),
        ("adam", {"fused": True, "differentiable": True}, RuntimeError, "does not support"),
        ("sgd", {"lr": torch.tensor([0.1, 0.2])}, ValueError, "Tensor lr must be 1-element"),
        ("adam", {"lr": torch.tensor(0.1), "foreach": True}, ValueError, "lr as a Tensor"),
        ("sgd", {"lr": -1.0}, ValueError, "Invalid learning rate: -1.0"),
    ],
)
def test_torch_errors_are_torch_s(name, kwargs, error, match):
    torch_cls, hw_cls, extra = PAIRS[name]
    for make in (
        lambda: torch_cls(leaves(make_params()), **kwargs),
        lambda: hw_cls(leaves(make_params()), **{**extra, **kwargs}),
    ):
        with pytest.raises(error, match=match):
            make()


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (hopt.SGD, {"differentiable": True}, "differentiable=True is not supported"),
        (hopt.Adam, {"capturable": True}, "capturable=True is not supported"),
        (hopt.RMSProp, {"capturable": True}, "capturable=True is not supported"),
        (hopt.SGD, {"foreach": "yes"}, "foreach must be None, False or True, got 'yes'"),
        (hopt.SGD, {"lr": float("inf")}, "Invalid learning rate: inf \\(lr must be finite\\)"),
        (hopt.Adam, {"lr": torch.tensor(float("nan"))}, "Invalid learning rate"),
        (hopt.Adam, {"lr": "0.1"}, "Invalid learning rate: '0.1'"),
    ],
)
def test_values_hwsim_cannot_honour_raise(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(leaves(make_params()), **kwargs)


def test_misspelled_group_keys_raise_naming_the_close_match():
    a, b = leaves(make_params())
    with pytest.raises(ValueError, match="'wieght' \\(did you mean 'weight'\\?\\)"):
        hopt.SGD([{"params": [a], "wieght": "fx8.4"}], lr=0.1)
    opt = hopt.SGD([a], lr=0.1)
    with pytest.raises(ValueError, match="'acumulator' \\(did you mean 'accumulator'\\?\\)"):
        opt.add_param_group({"params": [b], "acumulator": "fx16.12"})
    with pytest.raises(ValueError, match="'zzz'; known keys"):
        opt.add_param_group({"params": [b], "zzz": 1})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [b], "name": "bias", "initial_lr": 0.1, "weight": "fx8.4"})
    assert opt.param_groups[1]["name"] == "bias"


def test_copies_of_a_fused_run_continue_bit_identically():
    """Large tensors take the fused kernel that checks the gradient as it
    steps (views cached between steps): a copy rebuilds its caches and
    continues as the original."""
    from hwsim.optim.fused import CHECK_IN_KERNEL_FROM

    n = 2 * CHECK_IN_KERNEL_FROM
    p = torch.nn.Parameter(torch.randn(n, generator=torch.Generator().manual_seed(0)))
    kw = dict(lr=0.01, weight="fx12.8", accumulator="fx24.20", rounding="stochastic", seed=1)
    opt = hopt.SGD([p], **kw)
    runs = [(p, opt)]

    def step(i):
        g = torch.randn(n, generator=torch.Generator().manual_seed(i))
        for q, o in runs:
            q.grad = g.clone()
            o.step()

    for i in range(3):
        step(i)
    deep = copy.deepcopy(opt)
    runs += [(deep.param_groups[0]["params"][0], deep), pickle.loads(pickle.dumps((p, opt)))]
    for i in range(3, 6):
        step(i)
    for q, o in runs[1:]:
        assert torch.equal(q.detach(), p.detach())
        assert torch.equal(o.accumulator_codes(q), opt.accumulator_codes(p))
        assert o.telemetry == opt.telemetry
