"""hwsim.nn: quantized layers, forward and backward through the MAC array."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import hwsim
import hwsim.nn as hnn
from hwsim import FixedPoint

WIDE = hnn.Precision(
    weight="fx31.26",
    activation="fx31.26",
    output="fx48.30",
    grad_activation="fx31.26",
    grad_weight="fx48.30",
    accumulator="fx62.40",
    grad_activation_accumulator="fx62.40",
    grad_weight_accumulator="fx62.40",
)
NARROW = hnn.Precision(
    weight="fx8.6",
    activation="fx8.4",
    output="fx10.4",
    grad_activation="fx10.8",
    grad_weight="fx12.10",
    accumulator="fx14.6",
    grad_activation_accumulator="fx14.9",
    grad_weight_accumulator="fx16.10",
    product="fx12.8",
    rounding="stochastic",
    output_rounding="nearest",
    overflow="saturate",
    seed=1234,
)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 4)).double()


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(3, 4, (2, 3), stride=(1, 2), padding=(1, 0)),
        nn.Flatten(),
        nn.Linear(4 * 5 * 1, 3),
    ).double()


def run(model, x):
    model.zero_grad()
    y = model(x)
    (
        y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=y.device).reshape(y.shape)
    ).sum().backward()
    return y.detach(), [p.grad.clone() for p in model.parameters()]


def inputs(make):
    torch.manual_seed(1)
    return (
        torch.randn(5, 12, dtype=torch.float64)
        if make is mlp
        else torch.randn(3, 2, 8, 7, dtype=torch.float64)
    )


@pytest.mark.parametrize("backend", ["torch", "numba"])
@pytest.mark.parametrize("make", [mlp, cnn])
def test_wide_formats_match_float_model(make, backend):
    x = inputs(make)
    y_ref, g_ref = run(make(), x)
    y, grads = run(hnn.quantize_model(make(), WIDE, backend=backend), x)
    assert torch.allclose(y, y_ref, rtol=1e-6, atol=1e-6 * float(y_ref.abs().max()))
    for g, r in zip(grads, g_ref, strict=True):
        assert float((g - r).abs().max()) <= 1e-6 * float(r.abs().max())


@pytest.mark.parametrize("make", [mlp, cnn])
def test_numba_and_torch_backends_agree_bit_for_bit(make):
    x = inputs(make)
    y_t, g_t = run(hnn.quantize_model(make(), NARROW, backend="torch"), x)
    y_n, g_n = run(hnn.quantize_model(make(), NARROW, backend="numba"), x)
    assert torch.equal(y_t, y_n)
    for a, b in zip(g_t, g_n, strict=True):
        assert torch.equal(a, b)
    # quantized for real: the result differs from the float model
    y_f, _ = run(make(), x)
    assert not torch.allclose(y_t, y_f, atol=1e-3)


def test_gradcheck_straight_through():
    torch.manual_seed(2)
    for precision, eps, atol in ((hnn.Precision(), 1e-6, 1e-5), (WIDE, 1e-3, 1e-5)):
        layer = hnn.QLinear(5, 3, precision=precision).double()
        x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(layer, (x,), eps=eps, atol=atol)
        conv = hnn.QConv2d(2, 3, 3, stride=2, padding=1, precision=precision).double()
        xc = torch.randn(2, 2, 6, 5, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(conv, (xc,), eps=eps, atol=atol)


def test_backward_gemms_run_through_their_accumulators():
    torch.manual_seed(3)
    p = hnn.Precision(
        weight="fx8.4",
        activation="fx8.4",
        grad_activation="fx8.4",
        accumulator="fx30.8",
        grad_activation_accumulator="fx6.2",
        grad_weight_accumulator="fx7.3",
    )
    layer = hnn.QLinear(40, 3, bias=False, precision=p)
    x = hwsim.quantize(torch.rand(6, 40) * 4, "fx8.4")
    g = hwsim.quantize(torch.rand(6, 3) * 4, "fx8.4")
    x.requires_grad_(True)
    layer(x).backward(g)
    w = hwsim.quantize(layer.weight.detach(), "fx8.4")
    want_gx = hwsim.matmul(g.double(), w.double(), accumulator="fx6.2")
    want_gw = hwsim.matmul(g.double().t().contiguous(), x.detach().double(), accumulator="fx7.3")
    assert torch.equal(x.grad.double(), want_gx)
    assert torch.equal(layer.weight.grad.double(), want_gw)
    assert float(layer.weight.grad.abs().max()) <= FixedPoint(7, 3).max  # saturated for real
    assert float(layer.weight.grad.max()) == FixedPoint(7, 3).max


def test_bias_is_one_more_mac_step():
    p = hnn.Precision(weight="fx8.4", activation="fx8.4", accumulator="fx5.0")
    layer = hnn.QLinear(2, 1, precision=p)
    with torch.no_grad():
        layer.weight.fill_(4.0)
        layer.bias.fill_(-5.0)
    # fx5.0 holds [-16, 15]: 4*2 + 4*2 = 16 saturates at 15, then the bias -5 gives 10
    y = layer(torch.full((1, 2), 2.0))
    assert float(y.detach()) == 10.0


def test_quantizer_forward_and_backward_formats():
    x = torch.tensor([0.3, 1.7, 100.0], requires_grad=True)
    y = hnn.quantizer(x, "fx8.4", "fx8.2")
    assert torch.equal(y.detach(), torch.tensor([0.3125, 1.6875, 7.9375]))
    y.backward(torch.tensor([0.3, 0.6, 1.0]))
    assert torch.equal(x.grad, torch.tensor([0.25, 0.5, 1.0]))
    # clipped straight-through: no gradient where the forward value saturated
    x.grad = None
    hnn.quantizer(x, "fx8.4", None, straight_through=False).sum().backward()
    assert torch.equal(x.grad, torch.tensor([1.0, 1.0, 0.0]))
    # module form: stochastic with a seed is reproducible call by call
    q1 = hnn.Quantizer("fx8.2", forward_rounding="stochastic", seed=9)
    q2 = hnn.Quantizer("fx8.2", forward_rounding="stochastic", seed=9, backend="numba")
    v = torch.rand(1000)
    a1, a2 = q1(v), q2(v)
    assert torch.equal(a1, a2)
    assert not torch.equal(q1(v), a1)  # the next call draws new noise


def test_precision_validation():
    p = hnn.Precision(
        weight="fx8.4", activation="float", rounding="floor", weight_rounding="stochastic"
    )
    assert p.weight == FixedPoint(8, 4) and p.activation is None
    assert p.rounding_of("weight") == hwsim.Rounding.STOCHASTIC
    assert p.rounding_of("output") == hwsim.Rounding.FLOOR
    with pytest.raises(ValueError, match="accumulator is set but activation is float"):
        hnn.Precision(weight="fx8.4", accumulator="fx16.8")
    with pytest.raises(ValueError, match="grad_activation_accumulator"):
        hnn.Precision(weight="fx8.4", grad_activation_accumulator="fx16.8")
    with pytest.raises(ValueError, match="Precision.weight"):
        hnn.Precision(weight="int8")
    with pytest.raises(ValueError, match="rounding"):
        hnn.Precision(rounding="up")
    with pytest.raises(ValueError, match="overflow"):
        hnn.Precision(overflow="clip")
    with pytest.raises(ValueError, match="unknown tensor field"):
        p.rounding_of("bias")


def test_quantize_model_swaps_shares_parameters_and_validates():
    model = cnn()
    params = [id(p) for p in model.parameters()]
    state = copy.deepcopy(model.state_dict())
    q = hnn.quantize_model(model, NARROW, per_layer={"4": None, "0": WIDE})
    assert [type(m).__name__ for m in q] == ["QConv2d", "ReLU", "QConv2d", "Flatten", "Linear"]
    assert q[0].precision is WIDE and q[2].precision is NARROW
    assert [id(p) for p in q.parameters()] == params
    assert all(torch.equal(state[k], v) for k, v in q.state_dict().items())
    only = hnn.quantize_model(mlp(), None, per_layer={"2": NARROW})
    assert type(only[0]) is nn.Linear and type(only[2]) is hnn.QLinear
    single = hnn.quantize_model(nn.Linear(3, 2), NARROW)
    assert type(single) is hnn.QLinear
    with pytest.raises(ValueError, match="matches no Linear/Conv2d"):
        hnn.quantize_model(mlp(), NARROW, per_layer={"fc9": None})
    with pytest.raises(ValueError, match="backend"):
        hnn.quantize_model(mlp(), NARROW, backend="cuda")
    with pytest.raises(ValueError, match="groups=1"):
        hnn.quantize_model(nn.Sequential(nn.Conv2d(2, 2, 3, groups=2)), NARROW)
    with pytest.raises(ValueError, match="Precision"):
        hnn.quantize_model(mlp(), {"weight": "fx8.4"})


def test_training_step_changes_weights_on_their_grid():
    model = hnn.quantize_model(mlp(), NARROW, backend="numba")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, target = inputs(mlp), torch.randint(0, 4, (5,))
    before = [p.detach().clone() for p in model.parameters()]
    loss = nn.functional.cross_entropy(model(x), target)
    loss.backward()
    for p in model.parameters():
        assert torch.equal(p.grad, hwsim.quantize(p.grad, "fx12.10"))  # grad_weight grid
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.gpu
@pytest.mark.parametrize("make", [mlp, cnn])
def test_torch_backend_on_cuda_equals_numba(make):
    x = inputs(make)
    y_n, g_n = run(hnn.quantize_model(make(), NARROW, backend="numba"), x)
    y_c, g_c = run(hnn.quantize_model(make().cuda(), NARROW, backend="torch"), x.cuda())
    assert torch.equal(y_c.cpu(), y_n)
    for a, b in zip(g_c, g_n, strict=True):
        assert torch.equal(a.cpu(), b)
