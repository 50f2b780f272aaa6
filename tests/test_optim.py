"""hwsim.optim: torch equivalence in float, the bit-exact pipeline against a
slow reference on Python integers, telemetry, checkpoints, drop-in behaviour."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hwsim.optim as hopt
from hwsim.errors import NonFiniteError
from hwsim.formats import FixedPoint
from hwsim.modes import Overflow, Rounding
from hwsim.optim.precision import STREAM, mix_seed, uniforms
from hwsim.torch_path.core import value_to_code_float
from tests.examples import examples
from tests.naive import overflow_code, ref_code

ROUNDINGS = ["nearest", "nearest_away", "floor", "zero", "stochastic"]


def small_model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).to(
        dtype
    )
    return model


def data(seed=1, n=64, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g, dtype=dtype)
    y = torch.randn(n, 3, generator=g, dtype=dtype)
    return x, y


def train(model, opt, steps, x, y, scheduler=None, start=0):
    for i in range(start, start + steps):
        opt.zero_grad()
        sl = slice((i * 16) % len(x), (i * 16) % len(x) + 16)
        loss = torch.nn.functional.mse_loss(model(x[sl]), y[sl])
        loss.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
    return loss.item()


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


# ---------------------------------------------------------------------------- float
FLOAT_CASES = [
    ("sgd", torch.optim.SGD, dict(lr=0.05)),
    ("sgd", torch.optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-2)),
    ("sgd", torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, maximize=False)),
    ("adam", torch.optim.Adam, dict(lr=1e-2)),
    ("adam", torch.optim.Adam, dict(lr=1e-2, weight_decay=1e-2, amsgrad=True)),
    ("adam", torch.optim.Adam, dict(lr=1e-2, weight_decay=1e-1, decoupled_weight_decay=True)),
    ("adagrad", torch.optim.Adagrad, dict(lr=0.05)),
    (
        "adagrad",
        torch.optim.Adagrad,
        dict(lr=0.05, lr_decay=1e-3, weight_decay=1e-2, initial_accumulator_value=0.1),
    ),
    ("rmsprop", torch.optim.RMSprop, dict(lr=1e-3)),
    ("rmsprop", torch.optim.RMSprop, dict(lr=1e-3, momentum=0.5, centered=True, weight_decay=1e-2)),
]


@pytest.mark.parametrize("name,torch_cls,kwargs", FLOAT_CASES)
def test_float_is_torch_bit_for_bit_after_200_steps(name, torch_cls, kwargs):
    x, y = data()
    ours, ref = small_model(), small_model()
    train(ours, hopt.OPTIMIZERS[name](ours.parameters(), **kwargs), 200, x, y)
    train(ref, torch_cls(ref.parameters(), **kwargs), 200, x, y)
    a, b = flat(ours), flat(ref)
    assert not torch.equal(b, flat(small_model())), "the reference did not train"
    assert torch.equal(a, b)  # the issue asks for 1e-6 relative; torch's own ops give 0


@pytest.mark.parametrize("name", sorted(hopt.OPTIMIZERS))
def test_same_defaults_as_torch(name):
    import inspect

    torch_cls = {
        "sgd": torch.optim.SGD,
        "adam": torch.optim.Adam,
        "adagrad": torch.optim.Adagrad,
        "rmsprop": torch.optim.RMSprop,
        "signsgd": torch.optim.SGD,
    }[name]
    ours = inspect.signature(hopt.OPTIMIZERS[name].__init__).parameters
    theirs = inspect.signature(torch_cls.__init__).parameters
    shared = [k for k in ours if k in theirs and k not in ("self", "params")]
    assert "lr" in shared
    for k in shared:
        assert ours[k].default == theirs[k].default, k


def test_signsgd_is_the_sign_rule_exactly():
    x, y = data()
    model, ref = small_model(), small_model()
    opt = hopt.SignSGD(model.parameters(), lr=1e-3, weight_decay=1e-2)
    for _ in range(50):
        for m in (model, ref):
            m.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
        opt.step()
        with torch.no_grad():
            for p in ref.parameters():
                p.sub_(torch.sign(p.grad + 1e-2 * p) * 1e-3)
        assert torch.equal(flat(model), flat(ref))


# ------------------------------------------------------------- bit-exact pipeline
def _reference_sgd_step(p0, grads, lr, wfmt, afmt, rounding, overflow, seed):
    """Plain SGD on Python integers: acc = ref_code(p0); each step
    acc = overflow(acc + code(-lr*g)); w = code(acc * acc_lsb in wfmt)."""
    target = afmt if afmt is not None else wfmt
    shape = p0.shape

    def noise(step, stream):
        return (
            uniforms(mix_seed(seed, step, 0, stream), torch.empty(shape, dtype=torch.float64))
            .reshape(-1)
            .tolist()
        )

    r = rounding
    u0 = noise(1, STREAM["init"])
    acc = [
        ref_code(v, target.wl, target.fl, target.signed, r, overflow, u)
        for v, u in zip(p0.reshape(-1).tolist(), u0, strict=True)
    ]
    out = None
    for step, g in enumerate(grads, start=1):
        upd = [(-lr) * v for v in g.reshape(-1).tolist()]
        ua = noise(step, STREAM["accumulator"])
        delta = [
            ref_code(v, target.wl, target.fl, target.signed, r, overflow, u)
            for v, u in zip(upd, ua, strict=True)
        ]
        acc = [
            overflow_code(a + d, target.wl, target.signed, overflow)
            for a, d in zip(acc, delta, strict=True)
        ]
        if afmt is not None and wfmt is not None:
            uw = noise(step, STREAM["weight"])
            out = [
                ref_code(math.ldexp(a, -afmt.fl), wfmt.wl, wfmt.fl, wfmt.signed, r, overflow, u)
                * wfmt.lsb
                for a, u in zip(acc, uw, strict=True)
            ]
        else:
            out = [a * target.lsb for a in acc]
    return out, acc


@st.composite
def pipeline_case(draw):
    wl = draw(st.integers(2, 20))
    fl = draw(st.integers(-3, 18))
    signed = draw(st.booleans())
    wfmt = FixedPoint(wl, fl, signed)
    extra = draw(st.integers(0, 12))
    afmt = draw(
        st.sampled_from(
            [None, FixedPoint(min(53, wl + extra + draw(st.integers(0, 4))), fl + extra, signed)]
        )
    )
    if afmt is None and draw(st.booleans()):
        wfmt, afmt = None, FixedPoint(wl, fl, signed)  # accumulator only: the model sees its value
    n = draw(st.integers(1, 12))
    scale = 2.0 ** (draw(st.integers(-4, 4)) - fl)
    vals = st.floats(-1, 1, allow_nan=False)
    p0 = (
        torch.tensor(draw(st.lists(vals, min_size=n, max_size=n)), dtype=torch.float64)
        * scale
        * 2**wl
        / 4
    )
    grads = [
        torch.tensor(draw(st.lists(vals, min_size=n, max_size=n)), dtype=torch.float64) * scale * 50
        for _ in range(draw(st.integers(1, 3)))
    ]
    lr = draw(st.sampled_from([0.5, 0.1, 0.013, 1e-3]))
    return (
        wfmt,
        afmt,
        p0,
        grads,
        lr,
        draw(st.sampled_from(ROUNDINGS)),
        draw(st.sampled_from(["saturate", "wrap"])),
    )


@given(pipeline_case(), st.integers(0, 2**40), st.booleans())
@settings(max_examples=examples(80, ci=40))
def test_sgd_pipeline_matches_integer_reference(case, seed, fused):
    wfmt, afmt, p0, grads, lr, rounding, overflow = case
    # the fused Numba tail compiles one kernel per mode combination: keep CI's set small
    fused = fused and rounding in ("nearest", "stochastic")
    p = torch.nn.Parameter(p0.clone())
    opt = hopt.SGD(
        [p],
        lr=lr,
        weight=wfmt,
        accumulator=afmt,
        rounding=rounding,
        overflow=overflow,
        seed=seed,
        fused=fused,
    )
    for g in grads:
        p.grad = g.clone()
        opt.step()
    want, acc = _reference_sgd_step(p0, grads, lr, wfmt, afmt, rounding, overflow, seed)
    assert p.detach().tolist() == want
    assert opt.accumulator_codes(p).tolist() == acc


@given(
    st.integers(1, 52),
    st.integers(-8, 60),
    st.booleans(),
    st.sampled_from(ROUNDINGS),
    st.sampled_from(["saturate", "wrap"]),
    st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=20),
    st.integers(0, 2**32),
)
@settings(max_examples=100)
def test_value_to_code_float_matches_fraction_reference(
    wl, fl, signed, rounding, overflow, values, seed
):
    """The float64 code path the optimizers use, against tests/naive.py."""
    fmt = FixedPoint(wl, fl, signed)
    x = torch.tensor(values, dtype=torch.float64) * 2.0 ** (wl - fl - 10)
    u = uniforms(seed, x)
    got = value_to_code_float(x, fmt, Rounding.parse(rounding), Overflow.parse(overflow), u)
    want = [
        ref_code(v, wl, fl, signed, rounding, overflow, uu)
        for v, uu in zip(x.tolist(), u.tolist(), strict=True)
    ]
    assert got.tolist() == want


def test_grad_state_update_formats_are_applied():
    p = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    opt = hopt.SGD(
        [p], lr=1.0, momentum=0.5, grad="fx8.2", state="fx8.3", update="fx8.1", weight="fx12.6"
    )
    p.grad = torch.tensor([0.3, 0.2, -0.6, 1.1], dtype=torch.float64)
    opt.step()
    # grad on the 0.25 grid: [0.25, 0.25, -0.5, 1.0]; momentum buffer = grad (fits fx8.3);
    # update -grad on the 0.5 grid (ties to even): [-0, -0, -0.5, -1.0]
    assert p.tolist() == [0.0, 0.0, 0.5, -1.0]
    assert opt.state[p]["momentum_buffer"].tolist() == [0.25, 0.25, -0.5, 1.0]
    p.grad = torch.tensor([0.3, 0.2, -0.6, 1.1], dtype=torch.float64)
    opt.step()
    # buffer = 0.5*buf + grad = [0.375, 0.375, -0.75, 1.5] (on fx8.3), update on 0.5 grid
    assert opt.state[p]["momentum_buffer"].tolist() == [0.375, 0.375, -0.75, 1.5]
    assert p.tolist() == [-0.5, -0.5, 1.5, -2.5]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("telemetry", [True, False])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize(
    "cls,kwargs",
    [
        (hopt.SGD, dict(momentum=0.9, state="fx16.12")),
        (hopt.SGD, dict(update="fx12.10", rounding="stochastic", seed=1)),
        (hopt.Adam, dict(state={"exp_avg": "fx16.12", "exp_avg_sq": "ufx24.22"})),
    ],
)
def test_a_step_leaves_the_gradient_as_it_was(cls, kwargs, fused, telemetry, dtype):
    """The torch path overwrites its own temporaries in place (the gradient's
    float64 copy, the update, the accumulator's float64 copy): never the
    caller's gradient, which a float64 parameter hands over without a copy;
    and the same bits with telemetry on or off."""
    results = []
    for tel in (telemetry, not telemetry):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(50, 30, dtype=dtype))
        opt = cls(
            [p], lr=0.01, weight="fx16.10", grad="fx12.8", fused=fused, telemetry=tel, **kwargs
        )
        for _ in range(3):
            p.grad = torch.randn_like(p)
            grad = p.grad.clone()
            opt.step()
            assert torch.equal(p.grad, grad)
        results.append(p.detach().clone())
    assert torch.equal(results[0], results[1])


def test_state_formats_per_state_name():
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = hopt.Adam([p], lr=0.1, state={"exp_avg": "fx8.4", "exp_avg_sq": "ufx16.8"})
    p.grad = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    opt.step()
    assert opt.state[p]["exp_avg"].tolist() == [0.0, -0.125, 0.1875]  # 0.1*g on the 1/16 grid
    assert opt.state[p]["exp_avg_sq"].tolist() == [0.0, 0.0, 0.00390625]  # 0.001*g^2 on 1/256
    with pytest.raises(ValueError, match="unknown state"):
        hopt.Adam([p], state={"momentum_buffer": "fx8.4"})


def test_per_group_precision_leaves_biases_float():
    model = small_model()
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = hopt.SGD(
        [{"params": weights}, {"params": biases, "weight": None}], lr=0.01, weight="fx16.8"
    )
    x, y = data()
    train(model, opt, 3, x, y)
    for p in weights:
        assert torch.equal(p * 256, torch.round(p * 256))
    assert any(not torch.equal(p * 256, torch.round(p * 256)) for p in biases)
    assert len(opt.telemetry) == 2
    assert math.isnan(opt.telemetry[1]["median_update_lsb"])


# ------------------------------------------------------------------ telemetry
def test_telemetry_stall_fraction_is_the_predicted_fraction():
    torch.manual_seed(3)
    p = torch.nn.Parameter(torch.zeros(1000, dtype=torch.float64))
    g = torch.randn(1000, dtype=torch.float64)
    lsb = 2.0**-8
    lr = 0.004
    opt = hopt.SGD([p], lr=lr, weight="fx16.8")
    p.grad = g.clone()
    opt.step()
    # nearest (ties to even) loses exactly the updates with |lr g| <= LSB/2
    predicted = float(((lr * g).abs() <= lsb / 2).double().mean())
    tel = opt.telemetry[0]
    assert tel["stall_fraction"] == predicted
    assert 0.2 < predicted < 0.8
    assert tel["saturation_fraction"] == 0.0
    want_median = float((lr * g).abs().median()) / lsb
    assert abs(tel["median_update_lsb"] - want_median) / want_median < 0.02  # sampled median


def test_telemetry_saturation_fraction():
    p = torch.nn.Parameter(torch.tensor([0.9, -0.9, 0.0, 0.5], dtype=torch.float64))
    opt = hopt.SGD([p], lr=1.0, weight="fx4.2", accumulator="fx8.6")  # weight range [-2, 1.75]
    p.grad = torch.tensor([-3.0, 3.0, 0.0, 0.0], dtype=torch.float64)
    opt.step()
    assert p.tolist() == [1.75, -2.0, 0.0, 0.5]
    tel = opt.telemetry[0]
    assert tel["saturation_fraction"] == 0.5
    assert tel["stall_fraction"] == 0.0


def test_telemetry_float_stall_in_low_precision_dtype():
    p = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    opt = hopt.SGD([p], lr=1.0)
    p.grad = torch.tensor([1e-4, 1e-4, 0.5, 0.0], dtype=torch.bfloat16)
    opt.step()
    assert opt.telemetry[0]["stall_fraction"] == pytest.approx(2 / 3)


def test_low_precision_dtypes_take_the_torch_path():
    """bfloat16 / float16 parameters (no NumPy view) run the torch ops even with fused=True."""
    for dtype in (torch.bfloat16, torch.float16):
        p = torch.nn.Parameter(torch.zeros(1 << 15, dtype=dtype))
        opt = hopt.SGD([p], lr=0.5, weight="fx8.4", accumulator="fx16.12", fused=True)
        p.grad = torch.ones(1 << 15, dtype=dtype)
        opt.step()
        assert bool((p == -0.5).all()) and opt.telemetry[0]["stall_fraction"] == 0.0


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("contiguous", [True, False])
def test_float_weight_stalls_are_counted_on_the_sample(momentum, contiguous):
    """Float weights: the stall fraction counted in Numba (contiguous CPU
    tensors) or with torch ops (else) is the one over the telemetry sample
    (runs of 16 elements; the tensor is larger than the sample), and the step
    stays torch.optim's."""
    from hwsim.optim.base import _sample

    g = torch.Generator().manual_seed(4)
    p0 = torch.randn(300, 200, generator=g)
    grads = [
        torch.randn(300, 200, generator=g) * 10.0**-k for k in (7, 8, 3)
    ]  # some updates below the ulp
    p = torch.nn.Parameter(p0.clone() if contiguous else p0.t().contiguous().t())
    ref = torch.nn.Parameter(p0.clone())
    opt, ref_opt = (
        hopt.SGD([p], lr=1.0, momentum=momentum),
        torch.optim.SGD([ref], lr=1.0, momentum=momentum),
    )
    assert p.is_contiguous() == contiguous
    fractions = []
    for grad in grads:
        p.grad, ref.grad = grad.clone(), grad.clone()
        before = _sample(ref.detach()).clone()
        opt.step()
        ref_opt.step()
        numerator = ref.grad if momentum == 0 else ref_opt.state[ref]["momentum_buffer"]
        nonzero = _sample(numerator) != 0
        want = float((nonzero & (_sample(ref.detach()) == before)).sum()) / float(nonzero.sum())
        assert opt.telemetry[0]["stall_fraction"] == want
        assert torch.equal(p, ref)
        fractions.append(want)
    assert 0.0 < fractions[0] < 1.0 and 0.0 < fractions[1] < 1.0 and fractions[2] < 0.01


def test_telemetry_off():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = hopt.SGD([p], lr=0.1, weight="fx8.4", telemetry=False)
    p.grad = torch.ones(3)
    opt.step()
    assert opt.telemetry == []


# ---------------------------------------------------------------- checkpoints
CHECKPOINT_CASES = [
    ("sgd", dict(lr=0.05, momentum=0.9, weight_decay=1e-3), dict(state="fx24.18")),
    ("signsgd", dict(lr=2e-3), {}),
    (
        "adam",
        dict(lr=1e-2, amsgrad=True),
        dict(state={"exp_avg": "fx24.20", "exp_avg_sq": "ufx32.30", "max_exp_avg_sq": "ufx32.30"}),
    ),
    ("adagrad", dict(lr=0.05), dict(state="ufx32.24")),
    ("rmsprop", dict(lr=1e-3, momentum=0.5, centered=True), dict(state="fx32.26")),
]


@pytest.mark.parametrize("name,kwargs,extra", CHECKPOINT_CASES)
def test_checkpoint_resume_is_bit_identical(name, kwargs, extra):
    x, y = data()
    prec = dict(
        weight="fx12.8",
        accumulator="fx40.32",
        grad="fx16.10",
        rounding="stochastic",
        seed=7,
        **extra,
    )
    cls = hopt.OPTIMIZERS[name]

    straight = small_model()
    opt = cls(straight.parameters(), **kwargs, **prec)
    train(straight, opt, 100, x, y)

    first = small_model()
    opt1 = cls(first.parameters(), **kwargs, **prec)
    train(first, opt1, 50, x, y)
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt1.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)

    resumed = small_model(seed=99)
    resumed.load_state_dict(ckpt["model"])
    opt2 = cls(
        resumed.parameters(), **kwargs, **{**prec, "seed": 12345}
    )  # the checkpoint's seed wins
    opt2.load_state_dict(ckpt["opt"])
    acc = opt2.state[next(resumed.parameters())]["accumulator"]
    assert acc.dtype == torch.float64  # not cast to the parameter's float32
    train(resumed, opt2, 50, x, y, start=50)
    assert torch.equal(flat(resumed), flat(straight))
    for p, q in zip(resumed.parameters(), straight.parameters(), strict=True):
        for key, value in opt.state[q].items():
            other = opt2.state[p][key]
            assert torch.equal(other, value) if torch.is_tensor(value) else other == value


def test_state_dict_round_trip_keeps_precision_groups():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = hopt.Adam(
        [p], weight="fx8.4", rounding="stochastic", accumulator_rounding="nearest", seed=3
    )
    sd = copy.deepcopy(opt.state_dict())
    opt2 = hopt.Adam([p])
    opt2.load_state_dict(sd)
    g = opt2.param_groups[0]
    assert g["weight"] == FixedPoint(8, 4) and g["seed"] == 3
    assert g["rounding"] == Rounding.STOCHASTIC and g["accumulator_rounding"] == Rounding.NEAREST


# ------------------------------------------------------------- drop-in behaviour
def test_closure_zero_grad_none_grads_and_lr_schedulers():
    x, y = data()
    model = small_model()
    frozen = torch.nn.Parameter(torch.ones(3))
    opt = hopt.SGD(
        list(model.parameters()) + [frozen],
        lr=0.1,
        momentum=0.9,
        weight="fx16.10",
        accumulator="fx24.18",
    )
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    losses = []
    for _ in range(6):
        losses.append(float(opt.step(closure).detach()))
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 / 8)
    assert losses[-1] < losses[0]
    assert frozen.grad is None and torch.equal(frozen, torch.ones(3)) and frozen not in opt.state
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    for _ in range(2):
        opt.step(closure)
        cos.step()
    assert opt.param_groups[0]["lr"] < 0.1 / 8


def test_lr_change_is_read_every_step():
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = hopt.SGD([p], lr=1.0, weight="fx16.8")
    p.grad = torch.ones(1, dtype=torch.float64)
    opt.step()
    opt.param_groups[0]["lr"] = 0.5
    opt.step()
    assert p.item() == -1.5


def test_wrap_overflow_of_the_accumulator():
    p = torch.nn.Parameter(torch.tensor([1.5], dtype=torch.float64))
    opt = hopt.SGD([p], lr=1.0, weight="fx3.1", overflow="wrap")  # range [-2, 1.5]
    p.grad = torch.tensor([-0.5], dtype=torch.float64)
    opt.step()
    assert p.item() == -2.0  # 1.5 + 0.5 wraps to -2


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(lr=-1.0), "learning rate"),
        (dict(momentum=-0.1), "momentum"),
        (dict(nesterov=True), "Nesterov"),
        (dict(weight="fx16"), "fx<wl>.<fl>"),
        (dict(accumulator="fx60.50"), "at most 52"),
        (dict(rounding="up"), "valid modes"),
        (dict(grad_rounding="round"), "valid modes"),
        (dict(overflow="clip"), "valid modes"),
        (dict(seed=1.5), "seed must be an int"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=match):
        hopt.SGD([p], **kwargs)


def test_bad_group_and_optimizer_arguments():
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="valid modes"):
        hopt.SGD([{"params": [p], "rounding": "sideways"}])
    with pytest.raises(ValueError, match="beta"):
        hopt.Adam([p], betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="alpha"):
        hopt.RMSProp([p], alpha=2.0)
    with pytest.raises(ValueError, match="lr_decay"):
        hopt.AdaGrad([p], lr_decay=-1)


def test_non_finite_gradient_raises():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = hopt.SGD([p], lr=0.1, weight="fx8.4", grad="fx8.4")
    p.grad = torch.tensor([0.0, float("nan"), 1.0])
    with pytest.raises(NonFiniteError, match="1 non-finite"):
        opt.step()


@pytest.mark.parametrize("fused", [True, False])
def test_non_finite_gradient_changes_nothing(fused):
    # large enough for the fused Numba tail; a NaN must leave weights and accumulator as they were
    p = torch.nn.Parameter(torch.linspace(-1, 1, 1 << 15))
    opt = hopt.SGD([p], lr=0.1, weight="fx8.4", accumulator="fx16.12", fused=fused)
    p.grad = torch.full_like(p, 0.5)
    opt.step()
    before_w, before_acc = p.detach().clone(), opt.accumulator_codes(p).clone()
    p.grad = torch.full_like(p, 0.25)
    p.grad[123] = float("nan")
    with pytest.raises(NonFiniteError, match="1 non-finite"):
        opt.step()
    assert torch.equal(p.detach(), before_w) and torch.equal(opt.accumulator_codes(p), before_acc)


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (hopt.SGD, {"weight": "fx8.4"}, "only in groups whose formats are all None"),
        (hopt.AdaGrad, {"state": "ufx16.8"}, "only in groups whose formats are all None"),
        (hopt.Adam, {}, "Adam does not support sparse gradients"),
        (hopt.RMSProp, {}, "RMSProp does not support sparse gradients"),
        (hopt.SignSGD, {}, "SignSGD does not support sparse gradients"),
    ],
)
def test_sparse_gradient_rejected(cls, kwargs, match):
    """Sparse gradients step only where torch takes them (float SGD, AdaGrad:
    tests/test_optim_torch_compat.py); elsewhere a clear error, nothing changed."""
    p = torch.nn.Parameter(torch.ones(3))
    opt = cls([p], lr=0.1, **kwargs)
    p.grad = torch.ones(3).to_sparse()
    with pytest.raises(RuntimeError, match=match):
        opt.step()
    assert torch.equal(p.detach(), torch.ones(3))


def test_sign_error_lms_is_sgd_on_the_l1_loss():
    """Documented in SignSGD: sign-error LMS, w += mu sign(e) x, is SGD on |e|."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 4, generator=g, dtype=torch.float64)
    d = x @ torch.tensor([0.5, -0.25, 0.125, 1.0], dtype=torch.float64)
    model = torch.nn.Linear(4, 1, bias=False).to(torch.float64)
    torch.nn.init.zeros_(model.weight)
    opt = hopt.SGD(model.parameters(), lr=2**-6, weight="fx16.10")
    w = torch.zeros(4, dtype=torch.float64)
    for n in range(50):
        opt.zero_grad()
        (d[n] - model(x[n : n + 1])[0, 0]).abs().backward()
        opt.step()
        e = d[n] - w @ x[n]
        w = torch.round((w + 2**-6 * torch.sign(e) * x[n]) * 2**10) / 2**10
        assert torch.equal(model.weight.detach()[0], w)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "cls,kwargs",
    [
        (hopt.Adam, dict(lr=1e-2, weight="fx12.8", accumulator="fx24.18", state="fx24.20")),
        (
            hopt.SGD,
            dict(lr=0.05, weight="fx12.8", accumulator="fx24.18", grad="fx12.10"),
        ),  # all of it fused on the CPU
    ],
)
def test_cuda_torch_path_equals_cpu_fused_path(cls, kwargs):
    """Same gradients in, same bits out: the torch ops on CUDA (counter noise
    included) against the fused Numba kernel on the CPU."""
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(300, generator=g) for _ in range(10)]
    results = []
    for device in ("cpu", "cuda"):
        p = torch.nn.Parameter(torch.linspace(-1, 1, 300, device=device))
        opt = cls([p], **kwargs, rounding="stochastic", seed=3)
        for grad in grads:
            p.grad = grad.to(device)
            opt.step()
        results.append((p.detach().cpu(), opt.state[p]["accumulator"].cpu(), opt.telemetry))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])
    assert results[0][2] == results[1][2]
