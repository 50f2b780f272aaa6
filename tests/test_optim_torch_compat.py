"""hwsim.optim against torch.optim on the behaviours torch's own optimizer
tests check (test/test_optim.py, testing/_internal/common_optimizers.py;
written anew here): with every format None, each optimizer's kwarg grid,
dtypes, param groups, add_param_group, hooks, LR schedulers, complex,
sparse, zero-size and non-contiguous parameters give torch's bits; the
fixed-point counterparts where they apply. Checkpoints and copies:
tests/test_optim_checkpoints.py."""

from __future__ import annotations

import pytest
import torch

import hwsim.optim as hopt

# (torch optimizer, hwsim optimizer, extra hwsim kwargs): AdamW is hwsim's Adam
# with decoupled weight decay
PAIRS = {
    "sgd": (torch.optim.SGD, hopt.SGD, {}),
    "adam": (torch.optim.Adam, hopt.Adam, {}),
    "adamw": (torch.optim.AdamW, hopt.Adam, {"decoupled_weight_decay": True, "weight_decay": 1e-2}),
    "adagrad": (torch.optim.Adagrad, hopt.AdaGrad, {}),
    "rmsprop": (torch.optim.RMSprop, hopt.RMSProp, {}),
}

# the kwarg grid, after torch's optim_inputs (tensor lr included)
GRID = {
    "sgd": [
        {},
        {"lr": 0.01},
        {"lr": torch.tensor(0.001)},
        {"momentum": 0.9},
        {"momentum": 0.9, "dampening": 0.5},
        {"momentum": 0.9, "weight_decay": 0.1},
        {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
        {"weight_decay": 0.1, "maximize": True},
    ],
    "adam": [
        {},
        {"lr": 0.01},
        {"lr": torch.tensor(0.001)},
        {"weight_decay": 0.1},
        {"weight_decay": 0.1, "maximize": True},
        {"weight_decay": 0.1, "amsgrad": True},
        {"betas": (0.8, 0.9), "eps": 1e-6},
    ],
    "adamw": [
        {},
        {"lr": 0.01},
        {"lr": torch.tensor(0.001)},
        {"weight_decay": 0.1},
        {"weight_decay": 0.1, "maximize": True},
        {"weight_decay": 0.1, "amsgrad": True},
    ],
    "adagrad": [
        {},
        {"weight_decay": 0.1},
        {"weight_decay": 0.1, "maximize": True},
        {"lr": 0.1},
        {"initial_accumulator_value": 0.1, "weight_decay": 0.1},
        {"lr": 0.1, "lr_decay": 0.5, "weight_decay": 0.1},
        {"lr": torch.tensor(0.001)},
    ],
    "rmsprop": [
        {},
        {"lr": 0.01},
        {"lr": torch.tensor(0.001)},
        {"weight_decay": 0.1},
        {"weight_decay": 0.1, "maximize": True},
        {"weight_decay": 0.1, "centered": True},
        {"centered": True, "momentum": 0.1},
        {"momentum": 0.1, "weight_decay": 0.1, "maximize": True},
        {"alpha": 0.9, "eps": 1e-4},
    ],
}
GRID_CASES = [(name, kw) for name, grid in GRID.items() for kw in grid]


def make_params(dtype=torch.float32, seed=0, shapes=((5, 3), (3,))):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]


def leaves(values):
    return [torch.nn.Parameter(v.clone()) for v in values]


def set_grads(params, step):
    """A gradient that depends on the weight and the step, in the params' dtype."""
    for i, p in enumerate(params):
        real = torch.view_as_real(p.detach()) if p.is_complex() else p.detach()
        g = torch.sin(real.double() * (step + 1) + i).to(real.dtype)
        p.grad = torch.view_as_complex(g) if p.is_complex() else g


def run_pair(name, kwargs, values, steps=4, **hw_extra):
    torch_cls, hw_cls, extra = PAIRS[name]
    tp, hp = leaves(values), leaves(values)
    topt = torch_cls(tp, **kwargs)
    hopt_ = hw_cls(hp, **{**extra, **kwargs}, **hw_extra)
    for step in range(steps):
        set_grads(tp, step)
        set_grads(hp, step)
        topt.step()
        hopt_.step()
    return tp, hp, topt, hopt_


def assert_bits(a, b):
    """Equal bits (NaN where the other has NaN, same payload positions)."""
    assert a.dtype == b.dtype and a.shape == b.shape and a.layout == b.layout
    if a.is_sparse:
        a, b = a.coalesce().to_dense(), b.coalesce().to_dense()
    if a.is_complex():
        a, b = torch.view_as_real(a), torch.view_as_real(b)
    if a.dtype in (torch.float16, torch.bfloat16):
        a, b = a.view(torch.int16), b.view(torch.int16)
    elif a.dtype == torch.float32:
        a, b = a.view(torch.int32), b.view(torch.int32)
    elif a.dtype == torch.float64:
        a, b = a.view(torch.int64), b.view(torch.int64)
    assert torch.equal(a, b)


def assert_same_as_torch(tp, hp, topt, hopt_):
    for a, b in zip(tp, hp, strict=True):
        assert_bits(a.detach(), b.detach())
        for key, value in topt.state[a].items():
            if key != "step":
                assert_bits(value, hopt_.state[b][key])
        if "step" in topt.state[a]:
            assert int(topt.state[a]["step"]) == hopt_.state[b]["step"]


@pytest.mark.parametrize(("name", "kwargs"), GRID_CASES)
def test_kwarg_grid_is_torch_bit_for_bit(name, kwargs):
    assert_same_as_torch(*run_pair(name, kwargs, make_params()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(PAIRS))
def test_dtypes_are_torch_bit_for_bit(name, dtype):
    kwargs = {"weight_decay": 0.1, **({"momentum": 0.9} if name in ("sgd", "rmsprop") else {})}
    assert_same_as_torch(*run_pair(name, kwargs, make_params(dtype)))


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_complex_params_are_torch_bit_for_bit(name):
    values = [torch.complex(*make_params(seed=s, shapes=((4, 3), (4, 3)))) for s in (1, 2)]
    kwargs = {"weight_decay": 0.1}
    if name == "rmsprop":
        kwargs.update(centered=True, momentum=0.5)
    if name in ("adam", "adamw"):
        kwargs["amsgrad"] = True
    tp, hp, topt, hopt_ = run_pair(name, kwargs, values)
    assert_same_as_torch(tp, hp, topt, hopt_)
    assert all(v.is_complex() for k, v in hopt_.state[hp[0]].items() if k != "step")


@pytest.mark.parametrize("cls", [hopt.SGD, hopt.SignSGD, hopt.Adam, hopt.AdaGrad, hopt.RMSProp])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_complex_fixed_point_steps_the_real_view(cls, rounding):
    """Fixed point: real and imaginary parts are quantized as torch's
    view_as_real sees them, exactly as a real parameter holding that view."""
    value = torch.complex(*make_params(seed=3, shapes=((6,), (6,))))
    zp = torch.nn.Parameter(value.clone())
    rp = torch.nn.Parameter(torch.view_as_real(value).clone())
    kw = dict(lr=0.05, weight="fx10.6", accumulator="fx20.16", rounding=rounding, seed=7)
    zopt, ropt = cls([zp], **kw), cls([rp], **kw)
    for step in range(3):
        set_grads([zp], step)
        rp.grad = torch.view_as_real(zp.grad).clone()
        zopt.step()
        ropt.step()
        assert torch.equal(torch.view_as_real(zp.detach()), rp.detach())
    assert torch.equal(zopt.accumulator_codes(zp), ropt.accumulator_codes(rp))
    assert torch.view_as_real(zp.detach())[:, 1].abs().sum() > 0  # the imaginary part moved


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("sgd", {}),
        ("sgd", {"lr": 0.1, "maximize": True}),
        ("sgd", {"momentum": 0.9, "dampening": 0.1}),
        ("adagrad", {}),
        ("adagrad", {"lr": 0.1, "lr_decay": 0.5, "maximize": True}),
        ("adagrad", {"initial_accumulator_value": 0.1}),
    ],
)
def test_sparse_gradients_are_torch_bit_for_bit(name, kwargs):
    values = make_params(shapes=((6, 4),))
    torch_cls, hw_cls, _ = PAIRS[name]
    tp, hp = leaves(values), leaves(values)
    topt, hopt_ = torch_cls(tp, **kwargs), hw_cls(hp, **kwargs)
    g = torch.Generator().manual_seed(5)
    for _ in range(4):
        rows = torch.randint(0, 6, (5,), generator=g)  # repeated rows: coalesced by the step
        indices = torch.stack([rows, torch.randint(0, 4, (5,), generator=g)])
        grad = torch.sparse_coo_tensor(
            indices, torch.randn(5, generator=g), (6, 4), check_invariants=True
        )
        tp[0].grad, hp[0].grad = grad.clone(), grad.clone()
        topt.step()
        hopt_.step()
    assert_same_as_torch(tp, hp, topt, hopt_)
    assert 0.0 <= hopt_.telemetry[0]["stall_fraction"] <= 1.0
    if name == "adagrad":
        tp[0].grad = hp[0].grad = grad
        for opt in (torch_cls(tp, weight_decay=0.1), hw_cls(hp, weight_decay=0.1)):
            with pytest.raises(RuntimeError, match="weight_decay option is not compatible"):
                opt.step()


@pytest.mark.parametrize("shape", [(0,), (0, 3)])
@pytest.mark.parametrize("name", sorted(PAIRS))
def test_zero_size_params(name, shape):
    values = make_params(shapes=(shape, (2,)))
    assert_same_as_torch(*run_pair(name, {"weight_decay": 0.1}, values))
    _, hp, _, fixed = run_pair(name, {}, values, weight="fx8.4", accumulator="fx16.12")
    for opt in (fixed, run_pair(name, {}, values[:1])[3]):
        telemetry = opt.telemetry[0]  # was a ZeroDivisionError with zero-element params only
        assert 0.0 <= telemetry["stall_fraction"] <= 1.0
        assert 0.0 <= telemetry["saturation_fraction"] <= 1.0


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_non_contiguous_params(name):
    base = make_params(shapes=((3, 5),))[0]
    tp, hp = [torch.nn.Parameter(base.clone().t())], [torch.nn.Parameter(base.clone().t())]
    assert not hp[0].is_contiguous()
    torch_cls, hw_cls, extra = PAIRS[name]
    topt, hopt_ = torch_cls(tp, weight_decay=0.1), hw_cls(hp, **{**extra, "weight_decay": 0.1})
    for step in range(3):
        set_grads(tp, step)
        set_grads(hp, step)
        topt.step()
        hopt_.step()
    assert_same_as_torch(tp, hp, topt, hopt_)
    # fixed point: a non-contiguous parameter (torch ops) steps as a contiguous one (fused)
    kw = dict(lr=0.05, weight="fx10.6", accumulator="fx20.16", rounding="stochastic", seed=3)
    nc, c = [torch.nn.Parameter(base.clone().t())], [torch.nn.Parameter(base.t().contiguous())]
    nopt, copt = hw_cls(nc, **{**extra, **kw}), hw_cls(c, **{**extra, **kw})
    for step in range(3):
        set_grads(nc, step)
        set_grads(c, step)
        nopt.step()
        copt.step()
    assert torch.equal(nc[0].detach(), c[0].detach())


def test_rmsprop_centered_float_gives_torch_nan():
    """With every format None, a negative variance estimate gives torch's NaN
    (the clamp is for fixed-point groups only)."""
    tp, hp, topt, hopt_ = run_pair("rmsprop", {"centered": True}, make_params(), steps=1)
    for a, b in zip(tp, hp, strict=True):  # a hand-made state whose variance is negative
        topt.state[a]["grad_avg"].mul_(50.0)
        hopt_.state[b]["grad_avg"].mul_(50.0)
    for opt, ps in ((topt, tp), (hopt_, hp)):
        set_grads(ps, 1)
        opt.step()
    assert tp[0].detach().isnan().any()
    assert_same_as_torch(tp, hp, topt, hopt_)
    fixed = hopt.RMSProp(leaves(make_params()), centered=True, state="fx24.16")
    set_grads(fixed.param_groups[0]["params"], 0)
    fixed.step()
    for p in fixed.param_groups[0]["params"]:
        fixed.state[p]["grad_avg"].mul_(50.0)
        p.grad = torch.ones_like(p)
    fixed.step()
    assert all(p.isfinite().all() for p in fixed.param_groups[0]["params"])


def test_param_groups_and_add_param_group():
    values = make_params(shapes=((4, 2), (2,), (3,)))
    tp, hp = leaves(values), leaves(values)
    topt = torch.optim.Adam([{"params": tp[:1]}, {"params": tp[1:2], "lr": 0.1}], lr=0.01)
    hopt_ = hopt.Adam([{"params": hp[:1]}, {"params": hp[1:2], "lr": 0.1}], lr=0.01)
    for step in range(4):
        if step == 2:
            topt.add_param_group({"params": tp[2:], "weight_decay": 0.5, "amsgrad": True})
            hopt_.add_param_group({"params": hp[2:], "weight_decay": 0.5, "amsgrad": True})
        for ps, opt in ((tp, topt), (hp, hopt_)):
            set_grads(ps, step)
            opt.step()
    assert_same_as_torch(tp, hp, topt, hopt_)
    assert [g["lr"] for g in hopt_.param_groups] == [g["lr"] for g in topt.param_groups]


def test_hooks_are_called_as_torch_calls_them():
    calls = {"torch": [], "hwsim": []}
    for key, cls in (("torch", torch.optim.SGD), ("hwsim", hopt.SGD)):
        opt = cls(leaves(make_params()), lr=0.1)
        log = calls[key]
        opt.register_step_pre_hook(lambda o, a, k, log=log: log.append("pre"))
        opt.register_step_post_hook(lambda o, a, k, log=log: log.append("post"))
        opt.register_state_dict_pre_hook(lambda o, log=log: log.append("sd_pre"))

        def sd_post(o, sd, log=log):
            log.append("sd_post")
            sd["extra"] = 1
            return sd

        opt.register_state_dict_post_hook(sd_post)
        opt.register_load_state_dict_pre_hook(lambda o, sd, log=log: log.append("load_pre"))
        opt.register_load_state_dict_post_hook(lambda o, log=log: log.append("load_post"))
        set_grads(opt.param_groups[0]["params"], 0)
        opt.step()
        state = opt.state_dict()
        assert state["extra"] == 1
        opt.load_state_dict(state)
    assert (
        calls["hwsim"]
        == calls["torch"]
        == [
            "pre",
            "post",
            "sd_pre",
            "sd_post",
            "load_pre",
            "load_post",
        ]
    )


@pytest.mark.parametrize(
    ("name", "scheduler", "kwargs"),
    [
        ("sgd", torch.optim.lr_scheduler.StepLR, {"step_size": 2, "gamma": 0.5}),
        ("adam", torch.optim.lr_scheduler.ExponentialLR, {"gamma": 0.9}),
        ("sgd", torch.optim.lr_scheduler.OneCycleLR, {"max_lr": 0.1, "total_steps": 8}),
        ("adam", torch.optim.lr_scheduler.OneCycleLR, {"max_lr": 0.1, "total_steps": 8}),
        ("rmsprop", torch.optim.lr_scheduler.CosineAnnealingLR, {"T_max": 4}),
        ("adagrad", torch.optim.lr_scheduler.LinearLR, {"total_iters": 4}),
    ],
)
def test_lr_schedulers_are_torch_bit_for_bit(name, scheduler, kwargs):
    torch_cls, hw_cls, extra = PAIRS[name]
    values = make_params()
    tp, hp = leaves(values), leaves(values)
    opt_kwargs = {"momentum": 0.9} if name == "sgd" else {}
    topt, hopt_ = torch_cls(tp, **opt_kwargs), hw_cls(hp, **{**extra, **opt_kwargs})
    tsched, hsched = scheduler(topt, **kwargs), scheduler(hopt_, **kwargs)
    for step in range(8):
        for ps, opt, sched in ((tp, topt, tsched), (hp, hopt_, hsched)):
            set_grads(ps, step)
            opt.step()
            sched.step()
    assert_same_as_torch(tp, hp, topt, hopt_)
    assert hsched.state_dict() == tsched.state_dict()


@pytest.mark.parametrize("cls", [hopt.SGD, hopt.SignSGD, hopt.Adam, hopt.AdaGrad, hopt.RMSProp])
def test_fixed_point_steps_are_the_same_in_every_param_dtype(cls):
    """Fixed-point groups compute in float64 from the (exact) gradient and
    write weights on the fx8.4 grid, which fp16, bf16, fp32 and fp64 all hold:
    every dtype gives the same weights and accumulator codes."""
    g = torch.Generator().manual_seed(4)
    start = torch.randint(-64, 64, (5, 3), generator=g).double() / 16
    grads = [torch.randint(-32, 32, (5, 3), generator=g).double() / 16 for _ in range(4)]
    kw = dict(lr=0.05, weight="fx8.4", accumulator="fx16.12", rounding="stochastic", seed=9)
    results = []
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        p = torch.nn.Parameter(start.to(dtype, copy=True))
        opt = cls([p], **kw)
        for grad in grads:
            p.grad = grad.to(dtype)
            opt.step()
        assert p.dtype == dtype
        results.append((p.detach().double(), opt.accumulator_codes(p)))
    assert not torch.equal(results[0][0], start)  # the steps moved the weights
    for weights, codes in results[1:]:
        assert torch.equal(weights, results[0][0]) and torch.equal(codes, results[0][1])
