"""The fused Numba step (hwsim.optim.fused) against the slow integer reference
and against the torch ops, bit for bit, on random formats, modes and values;
the bounds that compile overflow steps out; max_abs; the telemetry sample;
the cached NumPy views."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hwsim
import hwsim.optim as hopt
from hwsim.errors import NonFiniteError
from hwsim.formats import FixedPoint
from hwsim.kernels.jit import SERIAL_BELOW_ELEMENTWISE
from hwsim.optim import fused, rule_path
from hwsim.optim.precision import STREAM, mix_seed, uniforms
from tests.examples import examples
from tests.naive import overflow_code, ref_code

ROUNDINGS = ["nearest", "nearest_away", "floor", "zero", "stochastic"]
# CI compiles one kernel per mode combination (and per provable overflow step):
# a fixed set of combinations keeps that bounded; formats and values are random
MODES = [
    # (grad, update, accumulator, weight) roundings
    ("nearest", "nearest", "nearest", "nearest"),
    ("stochastic", "stochastic", "stochastic", "stochastic"),
    ("floor", "zero", "nearest_away", "floor"),
    ("nearest", "nearest", "stochastic", "nearest"),
]


# ------------------------------------------------------------------ reference
def reference_pointwise(
    p0: list[float],
    grads: list[list[float]],
    lr: float,
    sign: bool,
    formats: dict,
    roundings: dict,
    overflow: str,
    seed: int,
) -> tuple[list[float], list[int]]:
    """SGD (or sign SGD) on Python integers and Fractions, following
    DESIGN.md literally: gradient code, update ``-lr * g`` in float64 (``g`` or
    its sign), update code, accumulator code added with overflow, weight code.
    Returns the final weights and accumulator codes."""
    grad_fmt, update_fmt, acc_fmt, weight_fmt = (
        formats[k] for k in ("grad", "update", "accumulator", "weight")
    )
    target = acc_fmt if acc_fmt is not None else weight_fmt
    target_rounding = roundings["accumulator"] if acc_fmt is not None else roundings["weight"]
    n = len(p0)

    def noise(step: int, stream: str) -> list[float]:
        return uniforms(
            mix_seed(seed, step, 0, STREAM[stream]), torch.empty(n, dtype=torch.float64)
        ).tolist()

    def code(x: float, fmt: FixedPoint, rounding: str, u: float) -> int:
        return ref_code(x, fmt.wl, fmt.fl, fmt.signed, rounding, overflow, u)

    acc = [code(v, target, target_rounding, u) for v, u in zip(p0, noise(1, "init"), strict=True)]
    weights = p0
    for step, g in enumerate(grads, start=1):
        ug, uu, ua, uw = (noise(step, s) for s in ("grad", "update", "accumulator", "weight"))
        for j in range(n):
            x = g[j]
            if grad_fmt is not None:
                x = code(x, grad_fmt, roundings["grad"], ug[j]) * grad_fmt.lsb
            if sign:
                x = float(np.sign(x))
            v = x * -lr  # float64, as the rule computes it
            if update_fmt is not None:
                v = code(v, update_fmt, roundings["update"], uu[j]) * update_fmt.lsb
            d = code(v, target, target_rounding, ua[j])
            acc[j] = overflow_code(acc[j] + d, target.wl, target.signed, overflow)
        if acc_fmt is not None and weight_fmt is not None:
            weights = [
                code(math.ldexp(a, -acc_fmt.fl), weight_fmt, roundings["weight"], u)
                * weight_fmt.lsb
                for a, u in zip(acc, uw, strict=True)
            ]
        else:
            weights = [a * target.lsb for a in acc]
    return weights, acc


@st.composite
def formats_and_data(draw, max_n=40):
    """Random formats (grad/update optional; accumulator and/or weight),
    values spanning the formats' ranges (so overflow steps are sometimes
    provably no-ops and sometimes not), a learning rate over 12 decades."""
    signed = draw(st.booleans())
    wl = draw(st.integers(3, 20))
    fl = draw(st.integers(-2, 18))
    weight = FixedPoint(wl, fl, signed)
    extra = draw(st.integers(0, 10))
    acc = FixedPoint(min(52, wl + extra + draw(st.integers(0, 3))), fl + extra, signed)
    shape = draw(st.sampled_from(["both", "weight", "accumulator"]))
    if shape == "weight":
        acc = None
    elif shape == "accumulator":
        weight = None
    grad = draw(
        st.sampled_from([None, FixedPoint(draw(st.integers(2, 16)), draw(st.integers(-2, 14)))])
    )
    update = draw(
        st.sampled_from(
            [None, None, FixedPoint(draw(st.integers(4, 24)), fl + draw(st.integers(0, 8)))]
        )
    )
    n = draw(st.integers(1, max_n))
    target = acc if acc is not None else weight
    span = 2.0 ** (target.wl - target.fl)
    unit = st.floats(-1, 1, allow_nan=False)
    p0 = [v * span / 2 for v in draw(st.lists(unit, min_size=n, max_size=n))]
    g_scale = 2.0 ** draw(st.integers(-12, 8))
    grads = [
        [v * g_scale for v in draw(st.lists(unit, min_size=n, max_size=n))]
        for _ in range(draw(st.integers(1, 3)))
    ]
    lr = 10.0 ** draw(st.floats(-6, 1))
    formats = {"grad": grad, "update": update, "accumulator": acc, "weight": weight}
    return formats, p0, grads, lr


def _optimizer(cls, p, lr, formats, roundings, overflow, seed, fused_flag, telemetry=True, **hyper):
    return cls(
        [p],
        lr=lr,
        **formats,
        grad_rounding=roundings["grad"],
        update_rounding=roundings["update"],
        accumulator_rounding=roundings["accumulator"],
        weight_rounding=roundings["weight"],
        overflow=overflow,
        seed=seed,
        fused=fused_flag,
        telemetry=telemetry,
        **hyper,
    )


# -------------------------------------------- fused == integer reference == torch
@given(
    formats_and_data(),
    st.sampled_from(MODES),
    st.sampled_from(["saturate", "wrap"]),
    st.booleans(),
    st.sampled_from([torch.float32, torch.float64]),
    st.integers(0, 2**40),
)
@settings(max_examples=examples(80, ci=30))
def test_fused_pointwise_step_matches_integer_reference_and_torch_ops(
    case, modes, overflow, sign, dtype, seed
):
    formats, p0, grads, lr = case
    roundings = dict(zip(("grad", "update", "accumulator", "weight"), modes, strict=True))
    cls = hopt.SignSGD if sign else hopt.SGD
    runs = []
    for fused_flag in (True, False):
        p = torch.nn.Parameter(torch.tensor(p0, dtype=torch.float64).to(dtype))
        opt = _optimizer(cls, p, lr, formats, roundings, overflow, seed, fused_flag)
        tel = []
        for g in grads:
            p.grad = torch.tensor(g, dtype=dtype)
            opt.step()
            tel.append(opt.telemetry)
        runs.append((p.detach().clone(), opt.accumulator_codes(p), tel))
    (w_fused, acc_fused, tel_fused), (w_torch, acc_torch, tel_torch) = runs
    assert torch.equal(w_fused, w_torch) and torch.equal(
        torch.signbit(w_fused), torch.signbit(w_torch)
    )
    assert torch.equal(acc_fused, acc_torch)
    assert tel_fused == tel_torch
    if dtype == torch.float64:  # the reference computes on the float64 initial weights
        want_w, want_acc = reference_pointwise(
            p0, grads, lr, sign, formats, roundings, overflow, seed
        )
        assert acc_fused.tolist() == want_acc
        assert w_fused.tolist() == want_w


FUSED_TAIL_CASES = [
    # rules with state: the rule in torch ops, the rest (update format, accumulator,
    # weight) in the kernel; every rounding, both overflows, update formats
    (
        "sgd",
        dict(lr=0.05, momentum=0.9),
        dict(weight="fx10.6", accumulator="fx20.14", update="fx16.14", rounding="nearest"),
    ),
    (
        "sgd",
        dict(lr=0.3, maximize=True, weight_decay=0.01),
        dict(weight="ufx6.3", accumulator="ufx12.8", rounding="floor", overflow="wrap"),
    ),
    (
        "adam",
        dict(lr=0.02),
        dict(weight="fx8.5", rounding="stochastic", seed=5, state="fx24.20", grad="fx10.8"),
    ),
    (
        "adagrad",
        dict(lr=0.1),
        dict(
            weight="fx8.4",
            accumulator="fx16.12",
            rounding="stochastic",
            weight_rounding="nearest",
            update="fx12.11",
            seed=9,
        ),
    ),
    (
        "rmsprop",
        dict(lr=0.01),
        dict(weight="fx6.3", accumulator="fx12.9", rounding="zero", overflow="wrap"),
    ),
    (
        "signsgd",
        dict(lr=0.01, weight_decay=0.1),
        dict(accumulator="fx12.8", rounding="nearest_away"),
    ),
    (
        "sgd",
        dict(lr=0.01),
        dict(weight="fx40.30", accumulator="fx52.44", grad="fx12.10"),
    ),  # codes beyond int32
]


def _train_small(name, hyper, prec, fused_flag, dtype, steps=12):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).to(
        dtype
    )
    g = torch.Generator().manual_seed(1)
    x, y = (
        torch.randn(64, 8, generator=g, dtype=dtype),
        torch.randn(64, 3, generator=g, dtype=dtype),
    )
    opt = hopt.OPTIMIZERS[name](model.parameters(), **hyper, **prec, fused=fused_flag)
    tel = []
    for i in range(steps):
        opt.zero_grad()
        sl = slice((i * 16) % 64, (i * 16) % 64 + 16)
        torch.nn.functional.mse_loss(model(x[sl]), y[sl]).backward()
        opt.step()
        tel.append(opt.telemetry)
    params = list(model.parameters())
    return (
        torch.cat([p.detach().reshape(-1) for p in params]),
        [opt.accumulator_codes(p) for p in params],
        tel,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,hyper,prec", FUSED_TAIL_CASES)
def test_fused_tail_of_every_rule_equals_torch_ops(name, hyper, prec, dtype):
    w0, a0, t0 = _train_small(name, hyper, prec, True, dtype)
    w1, a1, t1 = _train_small(name, hyper, prec, False, dtype)
    assert torch.equal(w0, w1) and torch.equal(torch.signbit(w0), torch.signbit(w1))  # -0.0 too
    assert all(torch.equal(a, b) for a, b in zip(a0, a1, strict=True))
    assert t0 == t1


def test_fused_path_runs_where_it_should(monkeypatch):
    """CPU float32/float64 params with a fixed-point grid go through the
    kernel; lr == 0 (where merging would be inexact) and bfloat16 do not."""
    calls = []
    original = fused.FusedStep.__call__

    def spy(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls.append(result is not None)
        return result

    monkeypatch.setattr(fused.FusedStep, "__call__", spy)
    p = torch.nn.Parameter(torch.linspace(-1, 1, 100))
    opt = hopt.SGD([p], lr=0.1, weight="fx8.4", accumulator="fx16.12", grad="fx8.6")
    p.grad = torch.full_like(p, 0.3)
    opt.step()
    assert calls == [True]
    opt.param_groups[0]["lr"] = 0.0
    before = p.detach().clone()
    opt.step()
    # declined for the raw gradient; the zero update then went through the rule's one
    # pass (rule_path.fused_rule_step: the fused step's stages, not its __call__)
    assert calls == [True, False] and torch.equal(p, before)
    q = torch.nn.Parameter(torch.zeros(100, dtype=torch.bfloat16))
    q.grad = torch.ones(100, dtype=torch.bfloat16)
    hopt.SGD([q], lr=0.5, weight="fx8.4").step()
    assert len(calls) == 2 and bool((q == -0.5).all())


@pytest.mark.parametrize("lr", [1e-300, 5e-320, 1e300, 1.7e308])
def test_extreme_learning_rates_give_the_reference_bits(lr):
    """Where merged multiplications could round differently (subnormal or
    overflowing products) the plan declines and the torch ops run: same bits."""
    formats = {
        "grad": FixedPoint(12, 10),
        "update": None,
        "accumulator": FixedPoint(20, 12),
        "weight": FixedPoint(10, 6),
    }
    roundings = dict.fromkeys(("grad", "update", "accumulator", "weight"), "floor")
    p0, grads = [0.5, -0.25, 0.0], [[0.3, -0.7, 1e-3]]
    p = torch.nn.Parameter(torch.tensor(p0, dtype=torch.float64))
    opt = _optimizer(hopt.SGD, p, lr, formats, roundings, "saturate", 1, True)
    p.grad = torch.tensor(grads[0], dtype=torch.float64)
    opt.step()
    want_w, want_acc = reference_pointwise(p0, grads, lr, False, formats, roundings, "saturate", 1)
    assert p.tolist() == want_w and opt.accumulator_codes(p).tolist() == want_acc


# ------------------------------------------------------- the provable overflow steps
@given(
    st.integers(3, 24),
    st.integers(-4, 20),
    st.booleans(),
    st.integers(0, 12),
    st.integers(-8, 8),
    st.floats(1e-8, 10.0),
    st.floats(0.0, 1e3),
    st.sampled_from([0, 1]),
    st.one_of(st.none(), st.floats(0.0, 1.2)),
)
def test_plan_skips_an_overflow_step_only_where_it_is_a_no_op(
    wl, fl, signed, extra, shift, lr, source_max, overflow, acc_fraction
):
    """For every overflow step the plan compiles out, no input within the
    bounds (|gradient| <= source_max, |accumulator code| <= acc_top) can reach
    the format's limits: checked at the bounds themselves, with every
    rounding; and the bound it returns for the next step holds."""
    weight = FixedPoint(wl, fl, signed)
    acc = FixedPoint(min(52, wl + extra), fl + extra + max(0, shift) - max(0, -shift), signed)
    grad = FixedPoint(max(2, wl - 2), fl + 2)
    step = fused.FusedStep(False, grad, None, acc, weight, (0, 0, 0, 0), overflow)
    acc_range = max(-acc.min_code, acc.max_code)
    acc_top = None if acc_fraction is None else float(math.floor(acc_fraction * acc_range))
    planned = step.plan(-lr, source_max, acc_top)
    if planned is None:
        return
    (
        (k_update, k_delta, k_weight),
        (grad_overflow, delta_overflow, acc_overflow, weight_overflow),
        top_after,
    ) = planned
    lo_g, hi_g = grad.min_code, grad.max_code
    # the largest |update code| (at least 1: an underflowed update keeps its sign)
    top = min(max(-lo_g, hi_g), math.ceil(max(source_max * 2.0**grad.fl, 1.0)))
    largest = max(1, math.ceil(top * abs(k_delta)))
    if delta_overflow:
        largest = min(largest, acc_range)
    for r in (np.floor, np.ceil):
        if not grad_overflow:  # the largest gradient, rounded either way, is a code
            assert lo_g <= r(-source_max * 2.0**grad.fl) and r(source_max * 2.0**grad.fl) <= hi_g
        if not delta_overflow and overflow == 0:  # the largest update too
            assert acc.min_code <= r(-top * abs(k_delta)) and r(top * abs(k_delta)) <= acc.max_code
    # the sum of the extreme accumulator codes and updates
    a_top = acc_range if acc_top is None else acc_top
    low = max(acc.min_code, -a_top) - largest
    high = min(acc.max_code, a_top) + largest
    if acc_overflow in (fused.CLAMP_NONE, fused.CLAMP_HIGH):
        assert low >= acc.min_code
    if acc_overflow in (fused.CLAMP_NONE, fused.CLAMP_LOW):
        assert high <= acc.max_code
    if acc_overflow != fused.CLAMP_NONE and overflow == 1:
        low, high = acc.min_code, acc.max_code  # a wrapped sum can be any code
    low, high = max(low, acc.min_code), min(high, acc.max_code)
    assert top_after >= max(-low, high)
    for a in (low, high):  # the weight code of every reachable accumulator code
        w = a * k_weight
        assert k_weight == 2.0 ** (weight.fl - acc.fl)
        if weight_overflow in (fused.CLAMP_NONE, fused.CLAMP_HIGH):
            assert weight.min_code <= math.floor(w)
        if weight_overflow in (fused.CLAMP_NONE, fused.CLAMP_LOW):
            assert math.ceil(w) <= weight.max_code
    assert k_update == grad.lsb * -lr and k_delta == k_update * 2.0**acc.fl


# -------------------------------------------------------------------- max_abs
@given(
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=70),
    st.sampled_from([np.float32, np.float64]),
)
def test_max_abs_is_the_max_magnitude_and_flags_nan_and_inf(values, dtype):
    x = np.array(values, dtype=dtype)
    got = fused.max_abs(x)
    if not np.all(np.isfinite(x)):
        assert not math.isfinite(got)
    else:
        assert got == (float(np.abs(x).max()) if x.size else 0.0)


def test_max_abs_parallel_matches_numpy():
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        x = (rng.standard_normal(SERIAL_BELOW_ELEMENTWISE * 3 + 11) * 1e-3).astype(dtype)
        x[12345] = -7.5
        assert fused.max_abs(x) == 7.5
        x[777] = np.nan
        assert math.isnan(fused.max_abs(x))
        x[777] = -np.inf
        assert fused.max_abs(x) == math.inf


# ------------------------------------------------- large tensors: parallel kernel
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_parallel_kernel_and_telemetry_sample_equal_torch_ops(rounding, dtype):
    """Above SERIAL_BELOW_ELEMENTWISE the parallel kernel runs: same bits and
    telemetry as the torch ops, and the sampled fractions estimate the exact ones."""
    n = SERIAL_BELOW_ELEMENTWISE * 2 + 13
    g = torch.Generator().manual_seed(3)
    p0 = torch.randn(n, generator=g, dtype=torch.float64).to(dtype) * 4
    grads = [
        torch.randn(n, generator=g, dtype=torch.float64).to(dtype) * 10.0**-k for k in (1, 3, 2)
    ]  # the last: updates near LSB/2
    prec = dict(weight="fx8.4", accumulator="fx14.10", grad="fx12.10", rounding=rounding, seed=11)
    runs = []
    for fused_flag in (True, False):
        p = torch.nn.Parameter(p0.clone())
        opt = hopt.SGD([p], lr=0.05, **prec, fused=fused_flag)
        tel = []
        for grad in grads:
            p.grad = grad.clone()
            opt.step()
            tel.append(opt.telemetry[0])
        runs.append((p.detach().clone(), opt.accumulator_codes(p), tel))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert runs[0][2] == runs[1][2]
    # the last step's exact stall fraction, from every element
    grad_codes = _codes(grads[-1], "fx12.10", rounding, mix_seed(11, 3, 0, STREAM["grad"]))
    update = grad_codes * 2.0**-10 * -0.05
    delta = _codes(update, "fx14.10", rounding, mix_seed(11, 3, 0, STREAM["accumulator"]))
    nonzero = update != 0
    exact = float((nonzero & (delta == 0)).sum()) / float(nonzero.sum())
    assert 0.2 < exact < 0.9  # a mix of stalled and moving weights
    assert abs(runs[0][2][-1]["stall_fraction"] - exact) < 0.03  # a 4096-element sample


def _codes(x: torch.Tensor, fmt: str, rounding: str, seed: int) -> torch.Tensor:
    noise = uniforms(seed, x.to(torch.float64)) if rounding == "stochastic" else None
    return hwsim.to_codes(x.to(torch.float64), fmt, rounding, noise=noise).to(torch.float64)


# -------------------------------------------------------------- state and views
def test_nan_in_a_later_parameter_changes_no_parameter():
    a = torch.nn.Parameter(torch.linspace(-1, 1, 50))
    b = torch.nn.Parameter(torch.linspace(-1, 1, 50))
    opt = hopt.SGD([a, b], lr=0.1, weight="fx8.4", accumulator="fx16.12")
    a.grad, b.grad = torch.full_like(a, 0.5), torch.full_like(b, 0.5)
    opt.step()
    before = [
        t.detach().clone() for t in (a, b, opt.accumulator_codes(a), opt.accumulator_codes(b))
    ]
    b.grad[7] = float("inf")
    with pytest.raises(NonFiniteError, match="parameter 1"):
        opt.step()
    after = [a.detach(), b.detach(), opt.accumulator_codes(a), opt.accumulator_codes(b)]
    assert all(torch.equal(x, y) for x, y in zip(before, after, strict=True))


def test_new_parameter_storage_and_loaded_state_are_picked_up():
    """The kernel writes through cached NumPy views: replacing ``p.data`` or
    loading a state dict between steps must not leave it writing stale memory."""
    p = torch.nn.Parameter(torch.linspace(-1, 1, 64))
    ref = torch.nn.Parameter(p.detach().clone())
    kwargs = dict(lr=0.1, weight="fx8.4", accumulator="fx16.12")
    opt, ref_opt = hopt.SGD([p], **kwargs), hopt.SGD([ref], **kwargs, fused=False)
    for q in (p, ref):
        q.grad = torch.full_like(q, 0.25)
    opt.step()
    ref_opt.step()
    p.data = p.data.clone()  # new storage
    opt.load_state_dict(ref_opt.state_dict())  # new accumulator tensor
    for _ in range(2):
        opt.step()
        ref_opt.step()
    assert torch.equal(p, ref) and torch.equal(
        opt.accumulator_codes(p), ref_opt.accumulator_codes(ref)
    )


def test_non_contiguous_parameters_take_the_torch_ops():
    base = torch.linspace(-1, 1, 64).reshape(8, 8)
    p = torch.nn.Parameter(base.t())  # a transposed view: not contiguous
    ref = torch.nn.Parameter(base.t().contiguous())
    for q in (p, ref):
        opt = hopt.SGD([q], lr=0.1, weight="fx8.4", accumulator="fx16.12")
        q.grad = torch.full_like(q, 0.3)
        opt.step()
    assert not p.is_contiguous() and torch.equal(p, ref)


PARALLEL_RULES = [  # (optimizer, hyperparameters, states): every rule with state
    ("Adam", dict(lr=1e-3), {"exp_avg": "fx24.20", "exp_avg_sq": "ufx32.30"}),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True), "fx24.20"),
    ("AdaGrad", dict(lr=1e-2, weight_decay=0.01), "ufx32.30"),
    ("RMSProp", dict(lr=1e-3, centered=True, momentum=0.5), "fx24.20"),
    ("SignSGD", dict(lr=1e-3, weight_decay=0.01), None),
]


@pytest.mark.parametrize(
    "rule,rounding,one_pass",
    [(0, "nearest", False), (0, "stochastic", False), (0, "stochastic", True)]
    + [(k, "nearest", True) for k in range(len(PARALLEL_RULES))],
)
def test_parallel_fused_tail_equals_torch_ops(monkeypatch, rule, rounding, one_pass):
    """Rules with state above SERIAL_BELOW_ELEMENTWISE: the parallel kernels
    give the torch ops' parameters, accumulator, states and telemetry, both
    as one pass from the gradient to the weight (where the rule bounds its
    update) and as the rule's pass followed by the fused step's."""
    monkeypatch.setattr(rule_path, "ONE_PASS_ALWAYS", True)  # not only where it is faster
    real, taken = rule_path.fused_rule_step, []

    def single(*args):
        taken.append(one_pass and real(*args))
        return taken[-1]

    monkeypatch.setattr(rule_path, "fused_rule_step", single)
    name, hyper, state = PARALLEL_RULES[rule]
    n = SERIAL_BELOW_ELEMENTWISE + 5
    g = torch.Generator().manual_seed(5)
    grads = [torch.randn(n, generator=g) * 1e-2 for _ in range(3)]
    runs = []
    for fused_flag in (True, False):
        p = torch.nn.Parameter(torch.linspace(-1, 1, n))
        opt = getattr(hopt, name)(
            [p],
            **hyper,
            weight="fx16.12",
            accumulator="fx24.20",
            grad="fx16.12",
            state=state,
            update="fx24.22",
            rounding=rounding,
            seed=0,
            fused=fused_flag,
        )
        tel = []
        for grad in grads:
            p.grad = grad.clone()
            opt.step()
            tel.append(opt.telemetry)
        states = {k: v for k, v in opt.state[p].items() if torch.is_tensor(v)}
        runs.append((p.detach().clone(), opt.accumulator_codes(p), tel, states))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert runs[0][2] == runs[1][2]
    assert runs[0][3].keys() == runs[1][3].keys()
    assert all(torch.equal(v, runs[1][3][k]) for k, v in runs[0][3].items())
    assert len(taken) == 3 and all(taken) == one_pass  # 3 steps, each on the path asked for


# ------------------------------------------- the accumulator bound between steps
BOUND_CASES = [  # accumulator, weight, overflow, parameter dtype, rounding
    ("fx12.8", "fx6.3", "saturate", torch.float32, "nearest"),  # int32 codes, float32 weight stage
    ("fx12.8", "fx6.3", "wrap", torch.float64, "nearest"),
    (
        "fx14.10",
        "fx8.5",
        "saturate",
        torch.float32,
        "stochastic",
    ),  # float32 weight stage, stochastic
    ("ufx12.8", "ufx8.5", "saturate", torch.float32, "stochastic"),
    ("ufx12.8", "ufx8.5", "wrap", torch.float32, "floor"),
    ("fx10.8", None, "saturate", torch.float32, "nearest_away"),
    ("fx10.8", None, "wrap", torch.float64, "zero"),
    (
        "fx28.20",
        "fx12.8",
        "saturate",
        torch.float32,
        "nearest",
    ),  # int32 codes beyond float32's 2^24
    ("fx40.30", "fx16.12", "saturate", torch.float32, "stochastic"),  # float64 codes
]


@pytest.mark.parametrize("acc_fmt,weight_fmt,overflow,dtype,rounding", BOUND_CASES)
def test_accumulator_bound_drops_clamps_only_where_they_cannot_act(
    monkeypatch, acc_fmt, weight_fmt, overflow, dtype, rounding
):
    """Weights driven into saturation and back over many steps: the fused step
    (which leaves out the accumulator's and the weight's overflow steps while
    its bound on |accumulator| allows, adding int32 codes in int32 then,
    measures the accumulator when the bound gets loose and backs off while
    codes sit at a limit) gives the torch ops' bits at every step, and does
    leave the clamps out early on."""
    keys = []
    original = fused.FusedStep._kernel

    def spy(self, key, n):
        before = set(self._kernels)
        result = original(self, key, n)
        keys.append(next(iter(set(self._kernels) - before), None))
        return result

    monkeypatch.setattr(fused.FusedStep, "_kernel", spy)
    n = 300
    g = torch.Generator().manual_seed(2)
    span = 2.0 ** (FixedPoint.parse(acc_fmt).wl - FixedPoint.parse(acc_fmt).fl - 2)
    p0 = (
        (
            torch.rand(n, generator=g, dtype=torch.float64) * 2
            - (0.5 if acc_fmt.startswith("u") else 1)
        )
        * span
    ).to(dtype)
    direction = torch.randn(n, generator=g, dtype=torch.float64).sign()
    # out to the limits, then back
    grads = [
        (
            direction
            * (1.0 if step < 40 else -1.0)
            * (0.5 + torch.rand(n, generator=g, dtype=torch.float64))
            * span
        ).to(dtype)
        for step in range(80)
    ]
    runs = []
    for fused_flag in (True, False):
        p = torch.nn.Parameter(p0.clone())
        opt = hopt.SGD(
            [p],
            lr=0.05,
            weight=weight_fmt,
            accumulator=acc_fmt,
            grad="fx16.8",
            overflow=overflow,
            rounding=rounding,
            seed=4,
            fused=fused_flag,
        )
        history = []
        for grad in grads:
            p.grad = grad
            opt.step()
            history.append((p.detach().clone(), opt.accumulator_codes(p)))
        runs.append(history)
    for (w0, a0), (w1, a1) in zip(*runs, strict=True):
        assert torch.equal(w0, w1) and torch.equal(a0, a1)
    compiled = [k for k in keys if k is not None]
    # unsigned: an update can always take a code at 0 below it
    best = fused.CLAMP_LOW if acc_fmt.startswith("u") else fused.CLAMP_NONE
    assert any(acc_sides == best for (_, _, acc_sides, _), *_ in compiled)
    int32_codes = FixedPoint.parse(acc_fmt).wl <= 32
    assert all((int_acc != 0) == int32_codes for *_, int_acc in compiled)


def test_accumulator_changed_by_torch_between_steps_is_measured_again():
    """The bound is dropped when torch's version counter shows another writer:
    an accumulator set to its limits between steps still saturates."""
    runs = []
    for fused_flag in (True, False):
        p = torch.nn.Parameter(torch.zeros(64, dtype=torch.float64))
        opt = hopt.SGD([p], lr=0.01, weight="fx8.4", accumulator="fx12.8", fused=fused_flag)
        p.grad = torch.full_like(p, 0.5)
        opt.step()
        opt.state[p]["accumulator"].fill_(-2048.0)  # the min code, in place
        p.grad = torch.full_like(p, 5.0)
        opt.step()
        runs.append((p.detach().clone(), opt.accumulator_codes(p)))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert bool((runs[0][1] == -2048).all())


def test_update_that_underflows_on_the_grid_keeps_its_sign():
    """An update below the smallest subnormal in LSB units (fl < 0) keeps its
    sign and floors to -1, which the unsigned format saturates to 0 before it
    is added: the bounds that drop overflow steps allow for it (a bound that
    underflowed to 0 dropped that step, and the sum 2 - 1 gave 1)."""
    formats = {
        "grad": None,
        "update": None,
        "accumulator": FixedPoint(8, -2, False),
        "weight": None,
    }
    roundings = dict.fromkeys(("grad", "update", "accumulator", "weight"), "floor")
    p0, grads = [0.0, 8.0], [[5e-324, 5e-324]]
    runs = []
    for fused_flag in (True, False):
        p = torch.nn.Parameter(torch.tensor(p0, dtype=torch.float64))
        opt = _optimizer(hopt.SGD, p, 1.0, formats, roundings, "saturate", 1, fused_flag)
        p.grad = torch.tensor(grads[0], dtype=torch.float64)
        opt.step()
        runs.append((p.tolist(), opt.accumulator_codes(p).tolist()))
    want_w, want_acc = reference_pointwise(p0, grads, 1.0, False, formats, roundings, "saturate", 1)
    assert runs[0] == runs[1] == (want_w, want_acc)
    assert want_acc == [0, 2]


@pytest.mark.parametrize("numel", [1, 15, 16, 17, 8191, 8192, 65536 * 3 + 5, 1_000_003])
def test_telemetry_sample_is_runs_that_never_straddle_a_chunk(numel):
    """Every element below 8192; above, about 4096 in runs of 16 spread over
    the tensor. The kernel counts each chunk's runs whole, starting at a run
    boundary, so the chunks together count the sample exactly once."""
    idx = fused.sample_index(numel, torch.device("cpu"))
    stride = fused.sample_stride(numel)
    assert idx.numel() == fused.sample_size(numel) and int(idx.max()) < numel
    assert torch.equal(idx, torch.unique(idx))  # increasing, no repeats
    if numel < 2 * fused.TELEMETRY_SAMPLE:
        assert torch.equal(idx, torch.arange(numel))
    else:
        assert fused.TELEMETRY_SAMPLE <= idx.numel() <= fused.TELEMETRY_SAMPLE * 1.1
        assert int(idx.max()) > numel - stride - 1  # reaches the end of the tensor
        runs = idx[: idx.numel() // fused.SAMPLE_RUN * fused.SAMPLE_RUN].reshape(
            -1, fused.SAMPLE_RUN
        )
        assert bool((runs[:, 1:] - runs[:, :-1] == 1).all())
    chunk_starts = [
        fused.sample_position(c * fused.CHUNK, stride) for c in range(-(-numel // fused.CHUNK))
    ]
    assert all(m % fused.SAMPLE_RUN == 0 for m in chunk_starts)
    assert [fused.sampled_index(m, stride) for m in range(idx.numel())] == idx.tolist()


def test_steps_under_inference_mode_keep_no_bound_and_match_torch_ops():
    """Under torch.inference_mode the accumulator is an inference tensor, which
    has no version counter: the fused step measures it each time instead of
    trusting a bound, and still gives the torch ops' bits into saturation."""
    runs = []
    for fused_flag in (True, False):
        p = torch.nn.Parameter(torch.linspace(-1, 1, 100))
        opt = hopt.SGD([p], lr=2.0, weight="fx8.4", accumulator="fx12.8", fused=fused_flag)
        with torch.inference_mode():
            for k in range(30):
                p.grad = torch.full_like(p, 0.3 if k < 20 else -0.3)
                opt.step()
        assert opt.state[p]["accumulator"].is_inference()
        assert bool(
            (p == -2.0).all()
        )  # every weight saturated at -8 on the way out, then 10 steps of 0.6 back
        runs.append((p.detach().clone(), opt.accumulator_codes(p)))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


# --------------------------------------- the gradient check inside the kernel
def test_int32_wrapped_is_the_int32_of_a_code_and_defined_beyond():
    from hwsim.kernels.scalar import int32_wrapped

    rng = np.random.default_rng(0)
    codes = np.concatenate(
        [rng.integers(-(2**51) + 1, 2**51, 2000), [0, -1, 1, 2**31 - 1, -(2**31), 2**31, 2**32]]
    )
    for c in codes.tolist():
        want = (c + 2**31) % 2**32 - 2**31  # c modulo 2^32, as an int32
        assert int32_wrapped(float(c)) == want
    odd = [math.nan, -math.nan, math.inf, -math.inf, 1e300, -3e51, 2.0**60 + 2.0**9]
    acc = np.int32(123456)
    for d in odd:
        w = int32_wrapped(d)
        assert w == int32_wrapped(d)  # deterministic
        assert (
            np.int32(np.int64(np.int32(np.int64(acc) + w)) - w) == acc
        )  # an int32 sum taken back exactly


def _speculation_spy(monkeypatch):
    """Records what each FusedStep.speculate call returned: 'ran', 'refused' or 'declined'."""
    outcomes = []
    original = fused.FusedStep.speculate

    def spy(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        outcomes.append("declined" if result is None else "refused" if result is False else "ran")
        return result

    monkeypatch.setattr(fused.FusedStep, "speculate", spy)
    return outcomes


SPECULATION_CASES = [  # accumulator, weight, grad, rounding, dtype
    ("fx24.20", "fx16.12", "fx16.12", "nearest", torch.float32),
    (
        "fx20.16",
        "fx10.6",
        None,
        "stochastic",
        torch.float64,
    ),  # stochastic update codes; weight: nearest
    ("fx16.12", "fx8.4", "fx12.10", "floor", torch.float32),
    ("fx14.12", None, "fx10.8", "nearest_away", torch.float32),
]


@pytest.mark.parametrize("acc_fmt,weight_fmt,grad_fmt,rounding,dtype", SPECULATION_CASES)
@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "larger"])
def test_gradient_checked_in_the_kernel_is_undone_exactly(
    monkeypatch, acc_fmt, weight_fmt, grad_fmt, rounding, dtype, bad
):
    """From the second step the fused step checks the gradient inside the
    kernel. A NaN or Inf in any parameter's gradient (the first, the last, in
    a large tensor's last chunk) raises with every parameter, accumulator,
    step count and bound as before, and training continues; a finite gradient
    beyond the plan's limit is undone and stepped the usual way. Every step
    equals the torch ops' bits."""
    outcomes = _speculation_spy(monkeypatch)
    # checked in the kernel: the two large ones; apart: the small ones
    sizes = [SERIAL_BELOW_ELEMENTWISE + 3 * fused.CHUNK + 5, fused.CHECK_IN_KERNEL_FROM, 300, 1]
    g = torch.Generator().manual_seed(3)
    p0 = [(torch.rand(n, generator=g, dtype=torch.float64) - 0.5).to(dtype) for n in sizes]
    grads = [
        [(torch.randn(n, generator=g, dtype=torch.float64) * 0.5).to(dtype) for n in sizes]
        for _ in range(8)
    ]
    # nan: in the first (both ends); inf: in the second, after the first ran; -inf: in
    # one checked apart (before any kernel); larger: finite, beyond the plan's limit
    bad_step, bad_param = 4, [0, 1, 3, 0][["nan", "inf", "-inf", "larger"].index(bad)]
    where = sizes[bad_param] - 1
    value = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "larger": 40.0}[bad]
    grads[bad_step][bad_param][where] = value  # (param 0 of grads: the optimizer's second)
    if bad == "nan":  # and in the first chunk of the large tensor too
        grads[bad_step][0][5] = math.nan
    runs = []
    for fused_flag in (True, False):
        params = [torch.nn.Parameter(p.clone()) for p in p0]
        # a non-contiguous parameter first, stepped by the torch ops: its telemetry
        # stays ahead of the kernel's in the group's (float) sums, as without the kernel
        params.insert(0, torch.nn.Parameter(p0[0][:3500].clone().reshape(50, 70).t()))
        opt = hopt.SGD(
            params,
            lr=0.01,
            weight=weight_fmt,
            accumulator=acc_fmt,
            grad=grad_fmt,
            rounding=rounding,
            weight_rounding="nearest",
            seed=7,
            fused=fused_flag,
        )
        history = []
        for step, grad in enumerate(grads):
            for p, gr in zip(params, [grad[0][1000:4500].reshape(70, 50)] + grad, strict=True):
                p.grad = gr.clone()
            before = [
                (p.detach().clone(), opt.accumulator_codes(p), opt.state[p].get("step"))
                for p in params
            ]
            bounds = [v.bound.top for v in opt._views.values()]
            if step == bad_step and bad != "larger":
                with pytest.raises(NonFiniteError):
                    opt.step()
                for p, (w, acc, count) in zip(params, before, strict=True):
                    assert torch.equal(p.detach(), w) and torch.equal(opt.accumulator_codes(p), acc)
                    assert opt.state[p].get("step") == count
                assert [v.bound.top for v in opt._views.values()] == bounds
                continue
            opt.step()
            history.append(
                [(p.detach().clone(), opt.accumulator_codes(p), opt.telemetry) for p in params]
            )
        runs.append(history)
    for fused_steps, torch_steps in zip(*runs, strict=True):
        for (w0, a0, t0), (w1, a1, t1) in zip(fused_steps, torch_steps, strict=True):
            assert torch.equal(w0, w1) and torch.equal(a0, a1) and t0 == t1
    # the path under test did run: checked in the kernel from the second step, and
    # refused (then undone) at the bad step, but for -inf (caught before the kernels)
    assert outcomes.count("ran") >= 2 * 6
    assert ("refused" in outcomes) == (bad != "-inf")


def test_gradient_is_checked_apart_where_the_step_could_not_be_undone(monkeypatch):
    """The kernel checks the gradient only where its step can be taken back,
    and only in large tensors: not on the first step, nor after torch wrote
    the parameter in place, nor with float64 codes, stochastic weight
    rounding or an unsigned accumulator (|code| bounds the sum from one side
    only)."""
    outcomes = _speculation_spy(monkeypatch)
    n = fused.CHECK_IN_KERNEL_FROM
    p = torch.nn.Parameter(torch.linspace(-1, 1, n))
    small = torch.nn.Parameter(torch.linspace(-1, 1, n - 1))
    opt = hopt.SGD([p, small], lr=0.01, weight="fx8.4", accumulator="fx16.12")
    for _ in range(3):
        p.grad, small.grad = torch.full_like(p, 0.25), torch.full_like(small, 0.25)
        opt.step()
    assert outcomes == ["ran", "ran"]
    with torch.no_grad():
        p.mul_(
            0.5
        )  # torch's version counter: the parameter no longer holds the accumulator's weight
    opt.step()
    assert outcomes == ["ran", "ran"]
    opt.step()
    assert outcomes == ["ran", "ran", "ran"]
    for prec in (
        dict(weight="fx16.8", accumulator="fx40.30"),
        dict(weight="ufx8.4", accumulator="ufx16.12"),
        dict(weight="fx8.4", weight_rounding="stochastic", accumulator="fx16.12", seed=1),
    ):
        q = torch.nn.Parameter(torch.linspace(0, 1, n))
        opt = hopt.SGD([q], lr=0.01, **prec)
        for _ in range(3):
            q.grad = torch.full_like(q, 0.25)
            opt.step()
    assert outcomes == ["ran", "ran", "ran"] + ["declined"] * 6


@given(st.data(), st.sampled_from([np.float32, np.float64]))
def test_the_kernels_limit_allows_twice_the_previous_max(data, dtype):
    """top_exponent (from the max's bits in the kernel) and the frexp exponent
    (from max_abs) bound the max; the next step's limit, from
    check_limits, is a power of two at least twice it, or None beyond the dtype."""
    width = 32 if dtype == np.float32 else 64
    x = data.draw(st.floats(0, allow_nan=False, allow_infinity=False, width=width))
    bits_type = np.int32 if dtype == np.float32 else np.int64
    itemsize = np.dtype(dtype).itemsize
    for k in (
        fused.top_exponent(int(np.array(x, dtype).view(bits_type)), itemsize),
        math.frexp(x)[1],
    ):
        if k < 1024:  # 2^1024 is beyond float64
            assert x < math.ldexp(1.0, k)
        checked = fused.check_limits(itemsize, k)
        if checked is None:
            assert k + 1 >= np.finfo(dtype).maxexp
            continue
        limit, limits = checked
        assert limit >= 2 * x and math.frexp(limit)[0] == 0.5
        assert limits.dtype == bits_type and limits[1] == np.array(limit, dtype).view(bits_type)


def test_nan_in_a_gradient_checked_apart_undoes_the_kernels_steps(monkeypatch):
    """A parameter whose step declines the in-kernel check (here: stochastic
    weight rounding in its group) is checked after the kernels ran: its NaN
    takes their steps back before the error."""
    outcomes = _speculation_spy(monkeypatch)
    n = fused.CHECK_IN_KERNEL_FROM
    a, b = (
        torch.nn.Parameter(torch.linspace(-1, 1, n)),
        torch.nn.Parameter(torch.linspace(-1, 1, n)),
    )
    opt = hopt.SGD(
        [{"params": [a]}, {"params": [b], "weight_rounding": "stochastic"}],
        lr=0.01,
        weight="fx8.4",
        accumulator="fx16.12",
        seed=3,
    )
    for _ in range(2):
        a.grad, b.grad = torch.full_like(a, 0.25), torch.full_like(b, 0.25)
        opt.step()
    before = [
        t.detach().clone() for t in (a, b, opt.accumulator_codes(a), opt.accumulator_codes(b))
    ]
    b.grad[n // 2] = math.nan
    with pytest.raises(NonFiniteError, match="parameter 1"):
        opt.step()
    assert outcomes == ["ran", "declined", "ran", "declined"]  # a's step ran, then was undone
    after = [a.detach(), b.detach(), opt.accumulator_codes(a), opt.accumulator_codes(b)]
    assert all(torch.equal(x, y) for x, y in zip(before, after, strict=True))
    assert opt.state[a]["step"] == opt.state[b]["step"] == 2


@pytest.mark.parametrize("change", ["replace", "data"])
def test_a_state_changed_between_steps_is_read_anew(change):
    """The fused rule step keeps its states' flat views between steps
    (rule_path._fused_inputs); a state replaced in the state dict, or whose
    ``.data`` was swapped, is read and written where it now is: the same bits
    as the torch path, which reads the state dict each step."""
    results = []
    for numba_pass in (True, False):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(300))
        opt = hopt.SGD(
            [p],
            lr=0.1,
            momentum=0.9,
            weight="fx16.12",
            accumulator="fx24.20",
            state="fx20.16",
            fused=numba_pass,
        )
        for step in range(4):
            p.grad = torch.randn_like(p)
            opt.step()
            state = opt.state[p]
            if change == "replace":
                state["momentum_buffer"] = state["momentum_buffer"] * 0.5
            else:
                state["momentum_buffer"].data = torch.full_like(state["momentum_buffer"], step / 8)
        results.append((p.detach().clone(), opt.state[p]["momentum_buffer"].clone()))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])
