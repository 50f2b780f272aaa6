"""hwsim.optim with floating-point and block-scaled formats.

Every optimizer against a slow reference step written here with plain torch
float64 math and :func:`hwsim.ops.quantize` at each point of the documented
pipeline (DESIGN.md, hwsim/optim/float_step.py), bit for bit, under nearest
and stochastic rounding (the reference draws the optimizer's counter noise:
``uniforms(mix_seed(seed, step, index, stream))``); the bf16-weight /
fp32-master recipe against torch's own casts; pure bf16 weights and their
stalls; block-wise 8-bit states and their telemetry; resume; errors.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

import hwsim.optim as hopt
from hwsim.errors import NonFiniteError
from hwsim.formats import FixedPoint, FloatingPoint, parse_format
from hwsim.modes import Rounding
from hwsim.ops import quantize
from hwsim.optim.precision import STATE_STREAM_BASE, STREAM, mix_seed, uniforms

SEED = 11


# ------------------------------------------------------------------ the reference
def _sqrt(x):
    """The correctly rounded square root (torch's CPU float64 sqrt is not)."""
    return torch.from_numpy(np.sqrt(x.numpy())) if x.is_cpu else torch.sqrt(x)


# the formulas of hwsim.optim.rule_math's docstring, one IEEE operation at a time
def _sgd(g, w, st, h, t, store):
    d = g + h["weight_decay"] * w() if h.get("weight_decay") else g
    if h.get("momentum"):
        mom = h["momentum"]
        if "momentum_buffer" not in st:
            buf = store("momentum_buffer", d)
        else:
            buf = store(
                "momentum_buffer",
                mom * st["momentum_buffer"] + (1 - h.get("dampening", 0)) * d,
            )
        d = d + mom * buf if h.get("nesterov") else buf
    return d * -h["lr"]


def _signsgd(g, w, st, h, t, store):
    d = g + h["weight_decay"] * w() if h.get("weight_decay") else g
    return torch.sign(d) * -h["lr"]


def _adam(g, w, st, h, t, store):
    lr, wd, (b1, b2), eps = h["lr"], h.get("weight_decay", 0), (0.9, 0.999), 1e-8
    decoupled = h.get("decoupled_weight_decay", False)
    if wd and not decoupled:
        g = g + wd * w()
    m0 = st.get("exp_avg", torch.zeros_like(g))
    v0 = st.get("exp_avg_sq", torch.zeros_like(g))
    m = store("exp_avg", b1 * m0 + (1 - b1) * g)
    v = store("exp_avg_sq", b2 * v0 + (1 - b2) * g * g)
    if h.get("amsgrad"):
        v = store("max_exp_avg_sq", torch.maximum(st.get("max_exp_avg_sq", torch.zeros_like(g)), v))
    update = (m / (_sqrt(v) * (1 / math.sqrt(1 - b2**t)) + eps)) * -(lr / (1 - b1**t))
    if wd and decoupled:
        update = update - (lr * wd) * w()
    return update


def _adagrad(g, w, st, h, t, store):
    if h.get("weight_decay"):
        g = g + h["weight_decay"] * w()
    clr = h["lr"] / (1 + (t - 1) * h.get("lr_decay", 0))
    total = st.get("sum", torch.full_like(g, h.get("initial_accumulator_value", 0)))
    total = store("sum", total + g * g)
    return (g / (_sqrt(total) + 1e-10)) * -clr


def _rmsprop(g, w, st, h, t, store):
    if h.get("weight_decay"):
        g = g + h["weight_decay"] * w()
    alpha, eps = 0.99, 1e-8
    sq = store(
        "square_avg", alpha * st.get("square_avg", torch.zeros_like(g)) + (1 - alpha) * g * g
    )
    if h.get("centered"):
        ga = store("grad_avg", alpha * st.get("grad_avg", torch.zeros_like(g)) + (1 - alpha) * g)
        avg = _sqrt((sq - ga * ga).clamp(min=0))
    else:
        avg = _sqrt(sq)
    avg = avg + eps
    if h.get("momentum"):
        buf = st.get("momentum_buffer", torch.zeros_like(g))
        buf = store("momentum_buffer", h["momentum"] * buf + g / avg)
        return buf * -h["lr"]
    return (g / avg) * -h["lr"]


RULES = {  # name: (optimizer, hyperparameters, reference rule)
    "sgd": (hopt.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2), _sgd),
    "sgd_plain": (hopt.SGD, dict(lr=0.05), _sgd),
    "signsgd": (hopt.SignSGD, dict(lr=1e-2, weight_decay=1e-2), _signsgd),
    "adam": (hopt.Adam, dict(lr=1e-2, amsgrad=True, weight_decay=1e-2), _adam),
    "adamw": (hopt.Adam, dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True), _adam),
    "adagrad": (
        hopt.AdaGrad,
        dict(lr=0.05, lr_decay=1e-3, weight_decay=1e-2, initial_accumulator_value=0.1),
        _adagrad,
    ),
    "rmsprop": (
        hopt.RMSProp,
        dict(lr=1e-2, centered=True, momentum=0.5, weight_decay=1e-2),
        _rmsprop,
    ),
}
STATE_NAMES = {
    hopt.SGD: ("momentum_buffer",),
    hopt.SignSGD: (),
    hopt.Adam: ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    hopt.AdaGrad: ("sum",),
    hopt.RMSProp: ("square_avg", "grad_avg", "momentum_buffer"),
}


class Reference:
    """The documented pipeline, slowly: float64 torch math, hwsim.ops.quantize
    at each point, the optimizer's counter noise for stochastic rounding.

        acc0 = Q_target(p)                               (first step, stream init)
        g = Q_grad(grad);  rule, each state s = Q_state(s) when written
        v = Q_update(update)
        float target: acc = Q_target(acc + v)            (float64 sum, stream accumulator)
        fixed target: acc = clamp(acc + Q_target(v))     (saturate)
        w = Q_weight(acc) with an accumulator and a weight format, else acc
    """

    def __init__(self, params, rule, hyper, seed, rounding="nearest", **formats):
        self.params = [p.detach().clone() for p in params]
        self.rule, self.hyper, self.seed, self.t = rule, hyper, seed, 0
        self.rounding = Rounding.parse(rounding)
        self.fmt = {
            k: parse_format(formats.get(k)) for k in ("weight", "accumulator", "grad", "update")
        }
        state = formats.get("state")
        self.state_fmt = state if isinstance(state, dict) else None
        self.state_all = None if isinstance(state, dict) else parse_format(state)
        self.target = self.fmt["accumulator"] or self.fmt["weight"]
        self.acc = [None] * len(params)
        self.states = [{} for _ in params]

    def q(self, x, fmt, index, stream):
        if fmt is None:
            return x
        u = None
        if self.rounding == Rounding.STOCHASTIC:
            u = uniforms(mix_seed(self.seed, self.t, index, stream), x)
        if isinstance(fmt, FixedPoint | FloatingPoint):
            return quantize(x, fmt, self.rounding, noise=u)
        flat_u = None if u is None else u.reshape(-1)  # block formats: along the flat state
        return quantize(x.reshape(-1), fmt, self.rounding, noise=flat_u).reshape(x.shape)

    def step(self, grads, names):
        self.t += 1
        f, target = self.fmt, self.target
        for i, (p, grad) in enumerate(zip(self.params, grads, strict=True)):
            if target is not None and self.acc[i] is None:
                self.acc[i] = self.q(p.double(), target, i, STREAM["init"])
            g = self.q(grad.double(), f["grad"], i, STREAM["grad"])
            st = self.states[i]

            def store(name, value, st=st, i=i):
                fmt = self.state_all if self.state_fmt is None else self.state_fmt.get(name)
                st[name] = self.q(
                    value, parse_format(fmt), i, STATE_STREAM_BASE + names.index(name)
                )
                return st[name]

            def weight(i=i, p=p):
                return self.acc[i] if target is not None else p.double()

            update = self.q(
                self.rule(g, weight, st, self.hyper, self.t, store),
                f["update"],
                i,
                STREAM["update"],
            )
            if target is None:
                self.params[i] = p + update.float()
                continue
            if isinstance(target, FloatingPoint):
                self.acc[i] = self.q(self.acc[i] + update, target, i, STREAM["accumulator"])
            else:
                delta = self.q(update, target, i, STREAM["accumulator"])
                self.acc[i] = (self.acc[i] + delta).clamp(target.min, target.max)
            w = self.acc[i]
            if f["accumulator"] is not None and f["weight"] is not None:
                w = self.q(w, f["weight"], i, STREAM["weight"])
            self.params[i] = w.float()


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter((torch.rand(6, 9, generator=g) - 0.5) * 0.8),
        torch.nn.Parameter((torch.rand(9, generator=g) - 0.5) * 0.8),
    ]


def _grads(params, step, scale=0.5):
    g = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(p.shape, generator=g) * scale for p in params]


def _accumulator_values(opt, p):
    group = opt.param_groups[0]
    target = group["accumulator"] or group["weight"]
    acc = opt.state[p]["accumulator"]
    return acc.double() * target.lsb if isinstance(target, FixedPoint) else acc.double()


def run_both(name, formats, rounding, steps=5, fused=None, check_every_step=True):
    cls, hyper, rule = RULES[name]
    params = _params()
    opt = cls(params, **hyper, **formats, rounding=rounding, seed=SEED, fused=fused)
    ref = Reference(params, rule, hyper, SEED, rounding, **formats)
    names = STATE_NAMES[cls]
    for step in range(steps):
        grads = _grads(params, step)
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        ref.step(grads, names)
        if check_every_step or step == steps - 1:
            for i, p in enumerate(params):
                assert torch.equal(p.detach(), ref.params[i]), (name, step, i)
                if ref.target is not None:
                    assert torch.equal(_accumulator_values(opt, p), ref.acc[i]), (name, step, i)
                for key, value in ref.states[i].items():
                    assert torch.equal(opt.state[p][key], value), (name, step, i, key)
    return opt, params, ref


CONFIGS = {
    # the standard recipe: bf16 weights, fp32 master copy
    "bf16_fp32_master": dict(weight="bf16", accumulator="fp32", grad="bf16", state="fp32"),
    # pure fp16 weights, no master copy; fp8 gradient, bf16 states, fp16 update
    "pure_fp16": dict(weight="fp16", grad="fp8_e5m2", state="bf16", update="fp16"),
    # mixed: fixed-point master copy, fp8 weight; fixed gradient, fp16 states
    "fixed_acc_fp8_weight": dict(weight="fp8_e4m3", accumulator="fx24.20", grad="fx16.12", state="fp16"),
    # mixed: fp32 master copy, fixed-point weight, bf16 update
    "fp32_acc_fixed_weight": dict(weight="fx16.12", accumulator="fp32", update="bf16", state="fx24.20"),
    # float formats on the gradient and states only: the weight stays float
    "float_states_only": dict(grad="bf16", state="fp16"),
    # block-wise 8-bit states around a fixed-point pipeline (the fused tail runs)
    "block_states_fixed": dict(weight="fx16.12", accumulator="fx24.20", grad="fx16.12", state="mxfp8_e4m3"),
    # block-wise 8-bit states with bf16 weights and an fp32 master copy
    "block_states_float": dict(weight="bf16", accumulator="fp32", state="bfp8_b16"),
}  # fmt: skip


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("name", sorted(RULES))
def test_every_optimizer_matches_the_reference_bit_for_bit(name, config, rounding):
    opt, params, _ = run_both(name, CONFIGS[config], rounding)
    assert not torch.equal(params[0].detach(), _params()[0].detach()), "nothing trained"


@pytest.mark.parametrize("rounding", ["zero", "floor", "nearest_away"])
def test_other_roundings_match_the_reference(rounding):
    run_both("adam", CONFIGS["bf16_fp32_master"], rounding)
    run_both("sgd", CONFIGS["pure_fp16"], rounding)


@pytest.mark.parametrize("name", ["sgd_plain", "adam", "rmsprop"])
def test_block_states_on_the_fused_tail_equal_the_torch_ops(name):
    """Block states around a fixed-point pipeline: the fused Numba tail runs
    (it caches the parameter's flat views) and gives the torch ops' bits."""
    fused, _, _ = run_both(name, CONFIGS["block_states_fixed"], "stochastic", fused=None)
    assert fused._views, "the fused path did not run"
    plain, _, _ = run_both(name, CONFIGS["block_states_fixed"], "stochastic", fused=False)
    assert not plain._views
    float_opt, _, _ = run_both(name, CONFIGS["bf16_fp32_master"], "nearest", fused=None)
    assert not float_opt._views, "a float pipeline took the fused (fixed-point) path"


def test_adam_per_state_block_formats_match_the_reference():
    """Dettmers et al. 2022's block-wise 8-bit Adam states as a per-state dict."""
    formats = dict(
        weight="bf16",
        accumulator="fp32",
        state={"exp_avg": "mxint8", "exp_avg_sq": "mxfp8_e4m3_b256", "max_exp_avg_sq": "bfp8_b256"},
    )
    for rounding in ("nearest", "stochastic"):
        run_both("adam", formats, rounding, steps=6)


# ------------------------------------------------------ the recipe, torch's casts
@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_bf16_weights_with_fp32_master_equal_the_torch_recipe(name):
    """``weight="bf16", accumulator="fp32"``: the master copy is torch's
    float32 (``.float()`` of the float64 sum, one rounding), the model's
    weight its ``.to(torch.bfloat16)`` cast, bit for bit."""
    cls, hyper, rule = RULES[name]
    params = _params()
    opt = cls(params, **hyper, weight="bf16", accumulator="fp32", seed=SEED)
    master = [p.detach().clone() for p in params]  # float32 already: the fp32 master copy
    states = [{} for _ in params]

    def store(st):
        def put(key, value):
            st[key] = value
            return value

        return put

    for step in range(8):
        grads = _grads(params, step)
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            p.grad = g.clone()
            weight = master[i].double
            update = rule(g.double(), weight, states[i], hyper, step + 1, store(states[i]))
            master[i] = (master[i].double() + update).float()
        opt.step()
        for i, p in enumerate(params):
            assert opt.state[p]["accumulator"].dtype == torch.float32
            assert torch.equal(opt.state[p]["accumulator"], master[i])
            assert torch.equal(p.detach(), master[i].to(torch.bfloat16).float())
    assert opt.telemetry[0]["stall_fraction"] == 0.0


def test_fp32_master_with_an_fp32_update_is_torchs_float32_addition():
    """``update="fp32"``: the update rounded to fp32 (torch's ``.float()``)
    and added by torch's float32 ``add`` (IEEE, correctly rounded) gives the
    bits of hwsim's float64 sum rounded once to fp32."""
    cls, hyper, rule = RULES["adam"]
    params = _params()
    opt = cls(params, **hyper, weight="bf16", accumulator="fp32", update="fp32", seed=SEED)
    master = [p.detach().clone() for p in params]
    states = [{} for _ in params]
    for step in range(8):
        grads = _grads(params, step, scale=0.5 * 10.0 ** (step % 4 - 2))  # varied magnitudes
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            p.grad = g.clone()

            def put(key, value, st=states[i]):
                st[key] = value
                return value

            update = rule(g.double(), master[i].double, states[i], hyper, step + 1, put)
            master[i] = master[i] + update.float()  # float32 tensors: torch's fp32 adder
        opt.step()
        for i, p in enumerate(params):
            assert torch.equal(opt.state[p]["accumulator"], master[i])
            assert torch.equal(p.detach(), master[i].to(torch.bfloat16).float())


def test_pure_bf16_weights_stall_and_telemetry_counts_every_stall():
    """bf16 weights without a master copy lose every update below half a
    bf16 ulp (nearest rounding); stall_fraction counts exactly those (the
    tensors are below the sample size: every element counted). The fp32
    master copy keeps them."""
    cls, hyper, rule = hopt.SGD, dict(lr=1e-3), _sgd
    params = _params()
    opt = cls(params, **hyper, weight="bf16", seed=SEED)
    ref = Reference(params, rule, hyper, SEED, weight="bf16")
    master = cls(_params(), **hyper, weight="bf16", accumulator="fp32", seed=SEED)
    for step in range(4):
        grads = _grads(params, step)
        for p, q, g in zip(params, master.param_groups[0]["params"], grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        # the accumulator (here the weight) on its grid before the step
        before = [quantize(w.double(), "bf16").float() for w in ref.params]
        opt.step()
        master.step()
        ref.step(grads, ())
        nonzero = stalled = 0
        for i, p in enumerate(params):
            assert torch.equal(p.detach(), ref.params[i])
            moved = grads[i] != 0
            nonzero += int(moved.sum())
            stalled += int((moved & (ref.params[i] == before[i])).sum())
        tel = opt.telemetry[0]
        assert tel["stall_fraction"] == stalled / nonzero
        assert tel["stall_fraction"] > 0.5, "lr * |g| is mostly below half a bf16 ulp"
        assert 0.0 < tel["median_update_lsb"] < 0.5  # the median update, in bf16 ulps
        assert master.telemetry[0]["stall_fraction"] == 0.0
        assert master.telemetry[0]["median_update_lsb"] > 1000  # in fp32 ulps


def test_float_saturation_is_counted_and_overflow_raises_naming_the_format():
    p = torch.nn.Parameter(torch.tensor([400.0, 1.0, -440.0, 0.5]))
    opt = hopt.SGD([p], lr=1.0, weight="fp8_e4m3_sat", seed=0)
    p.grad = torch.tensor([-100.0, 0.0, 100.0, 0.0])
    opt.step()
    assert p.tolist() == [448.0, 1.0, -448.0, 0.5]
    assert opt.telemetry[0]["saturation_fraction"] == 0.5
    q = torch.nn.Parameter(torch.tensor([400.0, 1.0]))
    opt = hopt.SGD([q], lr=1.0, weight="fp8_e4m3", seed=0)  # OCP E4M3: overflow is NaN
    q.grad = torch.tensor([-100.0, 0.0])
    with pytest.raises(NonFiniteError) as err:
        opt.step()
    note = "\n".join(err.value.__notes__)
    assert "accumulator of parameter 0" in note and "fp8_e4m3_sat" in note
    assert q.tolist() == [400.0, 1.0], "the weight changed before the error"


# ------------------------------------------------------------- block states
@pytest.mark.parametrize(
    ("fmt", "big", "small"),
    [
        ("mxfp8_e4m3", 500.0, 1e-6),  # X = 2^(8-8): 500 clamps at 448; 1e-6 < 2^-9 flushes
        ("bfp8_b32", 127.7, 0.1),  # LSB 1: 127.7 rounds past code 127; 0.1 flushes
        ("mxint8", 3.99, 1e-3),  # X = 2: 1.995 rounds past 127/64; 1e-3 flushes
    ],
)
def test_block_state_flush_and_saturation_telemetry(fmt, big, small):
    """Per block of 32 (along the flattened state): one element at its
    block's limit and 31 flushed in the first block; nothing in the second."""
    p = torch.nn.Parameter(torch.zeros(2, 32))
    opt = hopt.SGD([p], lr=1e-3, momentum=0.9, state=fmt, seed=0)
    grad = torch.ones(2, 32)
    grad[0] = small
    grad[0, 5] = big
    p.grad = grad
    opt.step()
    tel = opt.telemetry[0]
    assert tel["state_flush_fraction"]["momentum_buffer"] == 31 / 64
    assert tel["state_saturation_fraction"]["momentum_buffer"] == 1 / 64
    buf = opt.state[p]["momentum_buffer"]
    assert torch.equal(buf, quantize(grad.double().reshape(-1), fmt).reshape(2, 32))
    assert torch.equal(buf[1], torch.ones(32, dtype=torch.float64))


def test_states_are_blocked_along_the_flattened_tensor():
    """A (3, 8) state in blocks of 16: the blocks run across rows (C order), as
    bitsandbytes blocks its states, whatever the parameter's shape."""
    p = torch.nn.Parameter(torch.zeros(3, 8))
    opt = hopt.SGD([p], lr=1e-3, momentum=0.9, state="bfp4_b16", seed=0)
    grad = torch.full((3, 8), 0.3)
    grad[1, 7] = 6.0  # the first block: row 0 and row 1; the second: row 2
    p.grad = grad
    opt.step()
    buf = opt.state[p]["momentum_buffer"]
    assert buf[0].eq(0).all() and buf[1, :7].eq(0).all()  # LSB 2 under the shared exponent of 6
    assert buf[2].eq(0.3125).all()  # bfp4 under 0.3's exponent: LSB 2^-4
    assert torch.equal(buf, quantize(grad.double().reshape(-1), "bfp4_b16").reshape(3, 8))


# ------------------------------------------------------------------- resume
@pytest.mark.parametrize(
    "formats",
    [
        dict(weight="bf16", accumulator="fp32", grad="bf16",
             state={"exp_avg": "mxint8", "exp_avg_sq": "mxfp8_e4m3", "max_exp_avg_sq": "bfp8_b256"}),
        dict(weight="fp16", state="bf16", update="fp16"),
    ],
)  # fmt: skip
def test_resume_from_a_state_dict_is_bit_identical(formats):
    hyper = dict(lr=1e-2, amsgrad=True)

    def steps(opt, params, start, stop):
        for step in range(start, stop):
            for p, g in zip(params, _grads(params, step), strict=True):
                p.grad = g
            opt.step()

    params = _params()
    whole = hopt.Adam(params, **hyper, **formats, rounding="stochastic", seed=SEED)
    steps(whole, params, 0, 6)
    first = _params()
    opt = hopt.Adam(first, **hyper, **formats, rounding="stochastic", seed=SEED)
    steps(opt, first, 0, 3)
    buffer = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "params": [p.detach() for p in first]}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)  # weights_only=True: formats are saved as their strings
    assert saved["opt"]["param_groups"][0]["weight"] == formats["weight"]
    resumed = _params()
    with torch.no_grad():
        for p, w in zip(resumed, saved["params"], strict=True):
            p.copy_(w)
    opt2 = hopt.Adam(resumed, lr=1.0)
    opt2.load_state_dict(saved["opt"])
    steps(opt2, resumed, 3, 6)
    for p, q in zip(params, resumed, strict=True):
        assert torch.equal(p.detach(), q.detach())
        for key, value in whole.state[p].items():
            other = opt2.state[q][key]
            if key == "step":
                assert value == other == 6
            else:
                assert torch.equal(value, other) and value.dtype == other.dtype, key


# ------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(state="bfp8_b32_axis0"), "blocked along the flattened tensor"),
        (dict(state={"momentum_buffer": "mxint8_axis0"}), r"state\['momentum_buffer'\].*axis"),
        (
            dict(weight="mxint8"),
            "weight: the block-scaled format mxint8 is taken by ``state`` only",
        ),
        (dict(accumulator="fp9"), "accumulator: cannot parse floating-point format"),
        (dict(grad="bf17"), "grad: cannot parse"),
    ],
)
def test_bad_formats_raise_a_clear_error(kwargs, match):
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match=match):
        hopt.SGD([p], lr=0.1, momentum=0.9, **kwargs)


def test_accumulator_codes_of_a_float_accumulator_is_a_clear_error():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = hopt.SGD([p], lr=0.1, weight="bf16", accumulator="fp32")
    p.grad = torch.ones(3)
    opt.step()
    with pytest.raises(ValueError, match="floating-point format fp32, which has no integer codes"):
        opt.accumulator_codes(p)
    assert torch.equal(opt.state[p]["accumulator"], torch.full((3,), -0.1))


# ------------------------------------------------------- the documented recipes
def _digits_adam(epochs=4, **precision):
    datasets = pytest.importorskip("sklearn.datasets")
    x, y = datasets.load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = hopt.Adam(model.parameters(), lr=3e-3, seed=0, **precision)
    g = torch.Generator().manual_seed(0)
    flushed = {}
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - 63, 64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(
                model(x[perm[i : i + 64]]), y[perm[i : i + 64]]
            ).backward()
            opt.step()
            for k, v in opt.telemetry[0].get("state_flush_fraction", {}).items():
                flushed[k] = max(flushed.get(k, 0.0), v)
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean()), flushed


def test_documented_8bit_adam_states_and_bf16_master_train_as_float():
    """ADAM_8BIT_STATES with bf16 weights and an fp32 master copy trains the
    digits MLP as float does; exp_avg_sq in linear 8-bit blocks flushes, eps
    becomes the denominator and training fails (the reason for the E5M2
    elements; the telemetry shows it)."""
    reference, _ = _digits_adam()
    accuracy, flushed = _digits_adam(weight="bf16", accumulator="fp32", state=hopt.ADAM_8BIT_STATES)
    assert reference > 0.9 and accuracy > reference - 0.01
    assert flushed["exp_avg_sq"] < 0.01
    linear, flushed = _digits_adam(state={"exp_avg": "mxint8", "exp_avg_sq": "mxint8"})
    assert linear < 0.5 and flushed["exp_avg_sq"] > 0.1


@pytest.mark.gpu
@pytest.mark.parametrize("config", ["bf16_fp32_master", "pure_fp16", "block_states_float"])
def test_cuda_torch_ops_equal_the_cpu_numba_kernels(config):
    """Float and block values on CUDA (torch ops, counter noise included)
    against the CPU, where they are quantized by the Numba kernels."""
    results = []
    for device in ("cpu", "cuda"):
        p = torch.nn.Parameter(torch.linspace(-1, 1, 300, device=device))
        opt = hopt.Adam([p], lr=1e-2, **CONFIGS[config], rounding="stochastic", seed=3)
        for step in range(6):
            p.grad = _grads([p], step)[0].to(device)
            opt.step()
        state = {k: v.cpu() for k, v in opt.state[p].items() if torch.is_tensor(v)}
        results.append((p.detach().cpu(), state, opt.telemetry))
    assert torch.equal(results[0][0], results[1][0])
    for key, value in results[0][1].items():
        assert torch.equal(value, results[1][1][key]), key
    assert results[0][2] == results[1][2]
