"""The precision arguments are declared once (hwsim.optim.precision.PRECISION_ARGS):
every optimizer's signature, the param-group defaults and the parsing of a
group come from that one description."""

from __future__ import annotations

import inspect

import pytest
import torch

import hwsim.optim as hopt
from hwsim.modes import Overflow, Rounding
from hwsim.optim.precision import PRECISION_ARGS, PRECISION_DEFAULTS


@pytest.mark.parametrize("name", sorted(hopt.OPTIMIZERS))
def test_signature_lists_every_precision_argument_keyword_only(name):
    params = inspect.signature(hopt.OPTIMIZERS[name].__init__).parameters
    for arg in PRECISION_ARGS:
        assert params[arg.name].kind is inspect.Parameter.KEYWORD_ONLY, arg.name
        assert params[arg.name].default == arg.default, arg.name
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


@pytest.mark.parametrize("name", sorted(hopt.OPTIMIZERS))
def test_param_group_defaults_come_from_the_spec(name):
    w = torch.nn.Parameter(torch.zeros(3))
    opt = hopt.OPTIMIZERS[name]([w], lr=0.1, seed=7)
    group = opt.param_groups[0]
    for arg in PRECISION_ARGS:
        if arg.name == "seed":
            assert group["seed"] == 7
        elif arg.name == "rounding":
            assert group["rounding"] is Rounding.NEAREST
        elif arg.name == "overflow":
            assert group["overflow"] is Overflow.SATURATE
        else:
            assert group[arg.name] is None, arg.name
    assert list(PRECISION_DEFAULTS) == [a.name for a in PRECISION_ARGS]


def test_unknown_precision_argument_is_a_type_error_naming_the_closest():
    w = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(TypeError, match=r"'acumulator'.*did you mean 'accumulator'"):
        hopt.SGD([w], lr=0.1, acumulator="fx16.12")
    with pytest.raises(TypeError, match="precision arguments are"):
        hopt.Adam([w], lr=0.1, nonsense=1)


def test_param_group_entries_parse_as_their_kind():
    w, v = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    opt = hopt.SGD([w], lr=0.1, weight="fx8.4")
    opt.add_param_group({"params": [v], "grad_rounding": "stochastic", "overflow": "wrap"})
    group = opt.param_groups[1]
    assert group["grad_rounding"] is Rounding.STOCHASTIC
    assert group["weight_rounding"] is None  # follows rounding
    assert group["overflow"] is Overflow.WRAP
    assert str(group["weight"]) == "fx8.4"
    with pytest.raises(ValueError, match="seed must be an int"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "seed": 1.5})
    with pytest.raises(ValueError, match="unknown state"):
        hopt.Adam([torch.nn.Parameter(torch.zeros(1))], state={"exp_avgs": "fx16.8"})


def _fit(cls, state, steps, **hyper):
    """A small least-squares fit; returns the last loss and the telemetry."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=g)
    y = x @ torch.randn(16, 1, generator=g) * 0.5
    torch.manual_seed(1)
    model = torch.nn.Linear(16, 1)
    formats = dict(weight="fx16.12", accumulator="fx32.28", state=state, seed=0)
    opt = cls(model.parameters(), **formats, **hyper)
    tel = []
    for _ in range(steps):
        model.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        tel.append(opt.telemetry[0])
    return loss.item(), tel


def test_state_telemetry_reports_flushed_and_saturated_states():
    """Adam's exp_avg_sq in fx16.12: g^2 (1 - beta2) is far below the LSB, every
    element flushes to 0 at step 1 and the telemetry says so; the sum of
    AdaGrad in a narrow format saturates."""
    w = torch.nn.Parameter(torch.zeros(1000))
    opt = hopt.Adam([w], lr=1e-2, weight="fx16.12", state="fx16.12", seed=0)
    w.grad = torch.linspace(0.05, 0.3, 1000)  # g^2 (1 - beta2) < 2^-13: flushed
    opt.step()
    assert opt.telemetry[0]["state_flush_fraction"] == {"exp_avg": 0.0, "exp_avg_sq": 1.0}
    assert opt.telemetry[0]["state_saturation_fraction"] == {"exp_avg": 0.0, "exp_avg_sq": 0.0}
    assert opt.telemetry[0]["saturation_fraction"] == 1.0  # lr * m / eps: the weights saturate
    _, tel = _fit(hopt.AdaGrad, "ufx4.2", 3, lr=1e-1)
    assert tel[-1]["state_saturation_fraction"]["sum"] > 0.5
    _, tel = _fit(hopt.Adam, None, 1, lr=1e-2)  # no state format: nothing to report
    assert "state_flush_fraction" not in tel[0]


@pytest.mark.parametrize("name", sorted(hopt.STATE_FORMATS))
def test_documented_state_formats_work(name):
    """The documented working state formats of each rule: nothing flushed or
    saturated at the first step, and the fit ends as close as float states."""
    cls, hyper = {
        "sgd": (hopt.SGD, dict(lr=1e-2, momentum=0.9)),
        "adam": (hopt.Adam, dict(lr=1e-2, amsgrad=True)),
        "adagrad": (hopt.AdaGrad, dict(lr=1e-1)),
        "rmsprop": (hopt.RMSProp, dict(lr=1e-2, centered=True, momentum=0.5)),
    }[name]
    reference, _ = _fit(cls, None, 200, **hyper)
    loss, tel = _fit(cls, hopt.STATE_FORMATS[name], 200, **hyper)
    assert all(v == 0.0 for v in tel[0]["state_flush_fraction"].values())
    assert all(v == 0.0 for t in tel for v in t["state_saturation_fraction"].values())
    assert loss < 2 * reference + 1e-3


@pytest.mark.parametrize("name", ["mxfp8_e4m3", "bfp8_b32", "mxint8"])
@pytest.mark.parametrize("tensor", ["weight", "accumulator", "grad", "update"])
def test_block_formats_are_refused_outside_the_state_with_a_clear_error(name, tensor):
    """Block-scaled formats are the states' (block-wise 8-bit states); float
    formats are taken everywhere (tests/test_optim_formats.py)."""
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match=f"{tensor}: the block-scaled format .* by ``state`` only"):
        hopt.SGD([p], lr=0.1, **{tensor: name})
