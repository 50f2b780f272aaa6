"""Each rule's math written once (hwsim.optim.rule_math): the fused Numba
pass, the torch ops and a slow reference on Python floats and integer codes
agree bit for bit, for every rule with state, flag and rounding.

The reference below is written from the formulas in rule_math's docstring,
element by element with Python floats (``math.sqrt`` is correctly rounded),
and quantizes with ``tests.naive.ref_code`` (Fractions). Which modes a
kernel is compiled for (the rule's flags, the rounding, the overflow mode)
comes from a fixed list, so CI compiles a bounded set; the formats, the
hyperparameters and the data are drawn freely.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hwsim.optim as hopt
from hwsim.errors import NonFiniteError
from hwsim.formats import FixedPoint
from hwsim.optim.precision import STATE_STREAM_BASE, STREAM, mix_seed, uniforms
from tests.examples import examples
from tests.naive import overflow_code, ref_code

# (optimizer, compile-time flags, rounding, overflow): every rounding appears, and both
# overflow modes; each entry compiles one kernel per dtype
CONFIGS = [
    (hopt.SGD, dict(momentum=0.9, dampening=0.1, weight_decay=0.01), "nearest", "saturate"),
    (hopt.SGD, dict(momentum=0.5, nesterov=True, maximize=True), "stochastic", "wrap"),
    (hopt.SignSGD, dict(weight_decay=0.01, maximize=True), "nearest_away", "wrap"),
    (hopt.Adam, dict(), "nearest", "saturate"),
    (hopt.Adam, dict(amsgrad=True, weight_decay=0.01, maximize=True), "floor", "saturate"),
    (hopt.Adam, dict(weight_decay=0.1, decoupled_weight_decay=True), "stochastic", "saturate"),
    (hopt.AdaGrad, dict(lr_decay=0.01, weight_decay=0.01), "zero", "saturate"),
    (hopt.AdaGrad, dict(initial_accumulator_value=0.1), "stochastic", "wrap"),
    (hopt.RMSProp, dict(), "nearest_away", "saturate"),
    (hopt.RMSProp, dict(centered=True, momentum=0.5, weight_decay=0.01), "stochastic", "saturate"),
]
STATES = {
    hopt.SGD: ("momentum_buffer",),
    hopt.SignSGD: (),
    hopt.Adam: ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    hopt.AdaGrad: ("sum",),
    hopt.RMSProp: ("square_avg", "grad_avg", "momentum_buffer"),
}


def _fmt(wl, fl, signed=True):
    return FixedPoint(wl, fl, signed)


@st.composite
def cases(draw):
    cls, flags, rounding, overflow = CONFIGS[draw(st.integers(0, len(CONFIGS) - 1))]
    hyper = dict(flags, lr=draw(st.sampled_from([0.5, 0.1, 0.013, 1e-3])))
    if cls is hopt.Adam:
        hyper["betas"] = (draw(st.sampled_from([0.9, 0.5])), draw(st.sampled_from([0.999, 0.9])))
        hyper["eps"] = draw(st.sampled_from([1e-8, 1e-3]))
    if cls is hopt.RMSProp:
        hyper["alpha"] = draw(st.sampled_from([0.99, 0.75]))
    wl = draw(st.integers(8, 20))
    fl = draw(st.integers(wl - 6, wl - 2))
    weight = _fmt(wl, fl)
    acc = _fmt(wl + 10, fl + 10)
    grad = _fmt(draw(st.integers(8, 16)), draw(st.integers(6, 14)))
    # states: signed or unsigned (the squares), from flushing everything to wide
    state = {}
    for name in STATES[cls]:
        swl = draw(st.integers(10, 32))
        state[name] = _fmt(swl, swl - draw(st.integers(1, 4)), draw(st.booleans()))
    n = draw(st.integers(1, 40))
    vals = st.floats(-1, 1, allow_nan=False)
    p0 = torch.tensor(draw(st.lists(vals, min_size=n, max_size=n)), dtype=torch.float64)
    steps = draw(st.integers(1, 3))
    grads = [
        torch.tensor(draw(st.lists(vals, min_size=n, max_size=n)), dtype=torch.float64) * 0.5
        for _ in range(steps)
    ]
    formats = dict(weight=weight, accumulator=acc, grad=grad, state=state)
    return cls, hyper, formats, rounding, overflow, p0, grads


def _run(case, fused, seed, dtype):
    cls, hyper, formats, rounding, overflow, p0, grads = case
    p = torch.nn.Parameter(p0.to(dtype).clone())  # .to may return p0 itself
    opt = cls([p], **hyper, **formats, rounding=rounding, overflow=overflow, seed=seed, fused=fused)
    telemetry = []
    for g in grads:
        p.grad = g.to(dtype)
        opt.step()
        telemetry.append(opt.telemetry)
    state = {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)}
    return p.detach().clone(), state, telemetry


@given(cases(), st.integers(0, 2**40), st.sampled_from([torch.float32, torch.float64]))
@settings(max_examples=examples(40, ci=14))
def test_fused_rule_equals_torch_ops_and_the_reference(case, seed, dtype):
    fused = _run(case, True, seed, dtype)
    torch_ops = _run(case, False, seed, dtype)
    assert torch.equal(fused[0], torch_ops[0])
    assert fused[1].keys() == torch_ops[1].keys()
    for key, value in fused[1].items():
        assert torch.equal(value, torch_ops[1][key]), key
    assert fused[2] == torch_ops[2]  # the telemetry, states' flush and saturation included
    weights, acc, states = Reference(case, seed).run(dtype)
    assert fused[0].tolist() == weights
    assert fused[1]["accumulator"].to(torch.int64).tolist() == acc
    for name, values in states.items():
        assert fused[1][name].tolist() == values, name


class Reference:
    """The step on Python floats and integer codes, element by element."""

    def __init__(self, case, seed):
        self.cls, self.h, self.f, self.rounding, self.overflow, self.p0, self.grads = case
        self.seed = seed

    def q(self, x, fmt, u):
        return ref_code(x, fmt.wl, fmt.fl, fmt.signed, self.rounding, self.overflow, u) * fmt.lsb

    def noise(self, t, stream):
        n = self.p0.numel()
        return uniforms(mix_seed(self.seed, t, 0, stream), torch.empty(n)).tolist()

    def run(self, dtype):
        f = self.f
        acc_fmt, w_fmt = f["accumulator"], f["weight"]
        names = STATES[self.cls]
        start = self.p0.to(dtype).double().tolist()
        u = self.noise(1, STREAM["init"])
        acc = [
            ref_code(x, acc_fmt.wl, acc_fmt.fl, True, self.rounding, self.overflow, ui)
            for x, ui in zip(start, u, strict=True)
        ]
        states = {}
        weights = None
        for t, grad in enumerate(self.grads, start=1):
            gu = self.noise(t, STREAM["grad"])
            su = [self.noise(t, STATE_STREAM_BASE + k) for k in range(len(names))]
            au, wu = self.noise(t, STREAM["accumulator"]), self.noise(t, STREAM["weight"])
            g_in = grad.to(dtype).double().tolist()
            for i in range(len(acc)):
                g = self.q(g_in[i], f["grad"], gu[i])
                w = acc[i] * acc_fmt.lsb

                def store(name, x, i=i, su=su):
                    k = names.index(name)
                    states.setdefault(name, [None] * len(acc))[i] = self.q(
                        x, f["state"][name], su[k][i]
                    )
                    return states[name][i]

                s = {k: v[i] for k, v in states.items() if v[i] is not None}
                update = self.rule(g, w, t, s, store)
                delta = ref_code(
                    update, acc_fmt.wl, acc_fmt.fl, True, self.rounding, self.overflow, au[i]
                )
                acc[i] = overflow_code(acc[i] + delta, acc_fmt.wl, True, self.overflow)
            weights = [
                ref_code(
                    math.ldexp(a, -acc_fmt.fl),
                    w_fmt.wl,
                    w_fmt.fl,
                    True,
                    self.rounding,
                    self.overflow,
                    u,
                )
                * w_fmt.lsb
                for a, u in zip(acc, wu, strict=True)
            ]
        return [float(torch.tensor(w, dtype=dtype)) for w in weights], acc, states

    def rule(self, g, w, t, s, store):
        h = self.h
        lr, wd = h["lr"], h.get("weight_decay", 0.0)
        if h.get("maximize"):
            g = -g
        if self.cls is hopt.Adam:
            b1, b2 = h["betas"]
            decoupled = h.get("decoupled_weight_decay", False)
            if wd and not decoupled:
                g = g + wd * w
            m = store("exp_avg", b1 * s.get("exp_avg", 0.0) + (1 - b1) * g)
            v = store("exp_avg_sq", b2 * s.get("exp_avg_sq", 0.0) + (1 - b2) * g * g)
            if h.get("amsgrad"):
                v = store("max_exp_avg_sq", max(s.get("max_exp_avg_sq", 0.0), v))
            denom = math.sqrt(v) * (1 / math.sqrt(1 - b2**t)) + h["eps"]
            update = (m / denom) * -(lr / (1 - b1**t))
            return update - (lr * wd) * w if decoupled else update
        if wd:
            g = g + wd * w
        if self.cls is hopt.SignSGD:
            return float((g > 0) - (g < 0)) * -lr
        if self.cls is hopt.SGD:
            mom = h["momentum"]
            if t == 1:
                buf = store("momentum_buffer", g)
            else:
                buf = store(
                    "momentum_buffer", mom * s["momentum_buffer"] + (1 - h.get("dampening", 0)) * g
                )
            d = g + mom * buf if h.get("nesterov") else buf
            return d * -lr
        if self.cls is hopt.AdaGrad:
            clr = lr / (1 + (t - 1) * h.get("lr_decay", 0.0))
            total = store("sum", s.get("sum", h.get("initial_accumulator_value", 0.0)) + g * g)
            return (g / (math.sqrt(total) + 1e-10)) * -clr
        a = h.get("alpha", 0.99)
        sq = store("square_avg", a * s.get("square_avg", 0.0) + (1 - a) * g * g)
        if h.get("centered"):
            ga = store("grad_avg", a * s.get("grad_avg", 0.0) + (1 - a) * g)
            avg = math.sqrt(max(sq - ga * ga, 0.0)) + 1e-8
        else:
            avg = math.sqrt(sq) + 1e-8
        if h.get("momentum", 0) > 0:
            buf = store("momentum_buffer", h["momentum"] * s.get("momentum_buffer", 0.0) + g / avg)
            return buf * -lr
        return (g / avg) * -lr


@pytest.mark.parametrize("fused", [True, False])
def test_a_non_finite_update_raises(fused):
    """Adam with eps=0 and a zero gradient: 0/0 in the update, on either path."""
    p = torch.nn.Parameter(torch.ones(8))
    opt = hopt.Adam([p], lr=0.1, eps=0.0, weight="fx8.4", accumulator="fx16.12", fused=fused)
    p.grad = torch.zeros(8)
    with pytest.raises(NonFiniteError, match="update of parameter 0"):
        opt.step()


@pytest.mark.parametrize("fused", [True, False])
def test_a_non_finite_update_names_its_parameter_in_a_group(fused):
    """The torch path steps a group's parameters together: the error still
    names the parameter whose update is not finite (here the third)."""
    params = [torch.nn.Parameter(torch.ones(8)) for _ in range(4)]
    opt = hopt.Adam(params, lr=0.1, eps=0.0, weight="fx8.4", accumulator="fx16.12", fused=fused)
    for k, p in enumerate(params):
        p.grad = torch.zeros(8) if k == 2 else torch.ones(8)
    with pytest.raises(NonFiniteError, match="update of parameter 2"):
        opt.step()


@pytest.mark.parametrize("weight", ["bf16", "fp8_e4m3", "fx10.6"])
def test_a_groups_torch_steps_with_a_float_weight_format(weight):
    """A fixed-point accumulator under a floating-point weight format: the
    torch path's batched tail hands the weight to each parameter's float
    quantizer; the same bits as each parameter stepped by an optimizer of
    its own (a batch of one: the per-parameter tail)."""

    def run(groups):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s)) for s in [(6, 4), (5,), (33,)]]
        kwargs = dict(lr=0.1, momentum=0.9, weight=weight, accumulator="fx24.16")
        opts = [
            hopt.SGD([params[k] for k in g], **kwargs, state="fx20.16", fused=False) for g in groups
        ]
        for _ in range(3):
            for p in params:
                p.grad = torch.randn_like(p)
            for opt in opts:
                opt.step()
        return [p.detach().clone() for p in params]

    for a, b in zip(run([[0, 1, 2]]), run([[0], [1], [2]]), strict=True):
        assert torch.equal(a, b)


def test_the_torch_path_square_root_is_correctly_rounded():
    """torch's CPU float64 sqrt is off by an ulp in about 1% of elements; the
    rule math's is IEEE's (math.sqrt)."""
    from hwsim.optim.rule_math import sqrt

    x = torch.rand(20000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert sqrt(x).tolist() == [math.sqrt(v) for v in x.tolist()]


@pytest.mark.parametrize(
    "cls,hyper,state,provable",
    [
        (hopt.SGD, dict(momentum=0.9), "fx16.12", True),
        (hopt.SGD, dict(momentum=0.9), None, False),  # an unquantized buffer is unbounded
        (hopt.Adam, dict(), {"exp_avg": "fx16.12", "exp_avg_sq": "ufx24.22"}, True),
        (hopt.Adam, dict(), {"exp_avg": "fx16.12", "exp_avg_sq": "fx24.22"}, False),  # sqrt(<0)
        (hopt.Adam, dict(eps=0.0), {"exp_avg": "fx16.12", "exp_avg_sq": "ufx24.22"}, False),
        (hopt.Adam, dict(amsgrad=True), {"exp_avg": "fx16.12", "exp_avg_sq": "ufx24.22"}, False),
        (hopt.AdaGrad, dict(), "ufx24.12", True),
        (hopt.RMSProp, dict(), "fx24.12", False),
        (hopt.RMSProp, dict(centered=True), "fx24.12", True),
        (hopt.RMSProp, dict(momentum=0.5), {"square_avg": "ufx24.12"}, False),
    ],
)
def test_one_pass_only_where_the_rule_bounds_its_update(monkeypatch, cls, hyper, state, provable):
    """The whole step runs as one pass where the rule's math proves a bound
    on |update| (stored states, denominators at least eps > 0, square roots of
    unsigned states); elsewhere the rule's pass and the fused step after it.
    Either way the torch ops' bits, and no update beyond the bound."""
    from hwsim.optim import rule_path

    monkeypatch.setattr(rule_path, "ONE_PASS_ALWAYS", True)  # not only where it is faster
    real, taken = rule_path.fused_rule_step, []

    def spy(*args):
        taken.append(real(*args))
        return taken[-1]

    runs = []
    for fused in (True, False):
        p = torch.nn.Parameter(torch.linspace(-1, 1, 50, dtype=torch.float64))
        opt = cls(
            [p], lr=0.01, **hyper, weight="fx8.6", accumulator="fx16.12", state=state, fused=fused
        )
        rule_path.fused_rule_step = spy
        try:
            for k in range(3):
                signs = (-1.0) ** torch.arange(50)  # |g| >= 0.2: no zero second moment
                p.grad = torch.linspace(0.2, 0.7, 50, dtype=torch.float64) * signs * (k + 1)
                opt.step()
        finally:
            rule_path.fused_rule_step = real
        runs.append((p.detach().clone(), opt.accumulator_codes(p)))
    assert taken == [provable] * 3
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def _group_run(config: int, device: str, fused):
    """A group of parameters of several sizes stepped by ``CONFIGS[config]``,
    some skipping steps, on ``device``: (weights, states, telemetry per step)."""
    cls, flags, rounding, overflow = CONFIGS[config]
    state = {
        name: _fmt(24, 20, name not in ("exp_avg_sq", "sum", "square_avg", "max_exp_avg_sq"))
        for name in STATES[cls]
    }
    shapes = [(7, 5), (3,), (40,), (2, 3, 4), (45, 50)]  # the last steps alone on a CPU
    torch.manual_seed(config)
    params = [
        torch.nn.Parameter((torch.randn(s, dtype=torch.float64) * 0.5).to(device)) for s in shapes
    ]
    opt = cls(
        params,
        lr=0.05,
        **flags,
        weight="fx16.12",
        accumulator="fx26.22",
        grad="fx12.9",
        state=state,
        rounding=rounding,
        overflow=overflow,
        seed=3,
        fused=fused,
    )
    seen = []
    g = torch.Generator().manual_seed(config)
    for step in range(4):
        for k, p in enumerate(params):  # parameter k takes its first gradient at step k // 2
            grad = torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3
            p.grad = grad.to(device) if k // 2 <= step and (k + step) % 3 else None
        opt.step()
        seen.append(opt.telemetry)
    states = [
        {k: v.cpu().to(torch.float64) for k, v in opt.state[p].items() if torch.is_tensor(v)}
        for p in params
    ]
    return [p.detach().cpu() for p in params], states, seen


def _same_runs(a, b) -> None:
    (w1, s1, t1), (w2, s2, t2) = a, b
    for x, y in zip(w1, w2, strict=True):
        assert torch.equal(x, y)
    for x, y in zip(s1, s2, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k
    assert t1 == t2


@pytest.mark.parametrize("config", range(len(CONFIGS)))
def test_a_groups_torch_steps_run_together_with_the_same_bits(config):
    """The torch path runs a group's rule math once per operation on all its
    parameters (rule_batch.rule_updates, torch._foreach_ ops): every
    parameter's weight, states and telemetry equal the fused path's, which
    steps each parameter alone. Parameters skip steps (no gradient) and join
    later, so their step counts and first momentum steps differ: separate
    batches within one step."""
    _same_runs(_group_run(config, "cpu", True), _group_run(config, "cpu", False))


@pytest.mark.gpu
@pytest.mark.parametrize("config", range(len(CONFIGS)))
def test_a_groups_cuda_steps_equal_the_cpu_fused_steps(config):
    """On CUDA the whole group runs together (foreach launches): the same
    bits as the fused Numba path on the CPU."""
    _same_runs(_group_run(config, "cpu", True), _group_run(config, "cuda", None))
