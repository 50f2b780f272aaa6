"""hwsim.nn layers with floating-point MAC arrays (float accumulators and
product formats) and float operands into fixed-point ones: both backends
bit for bit, and the forward GEMM equal to hwsim.matmul plus the bias step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import hwsim
import hwsim.nn as hnn
from hwsim.ops import add_float

FLOAT = hnn.Precision(
    weight="bf16",
    activation="bf16",
    output="fp16",
    grad_activation="bf16",
    grad_weight="fp16",
    accumulator="e5m6",
    grad_activation_accumulator="fp32",
    grad_weight_accumulator="e8m10",
    product="bf16",
    rounding="stochastic",
    output_rounding="nearest",
    seed=99,
)
MIXED = hnn.Precision(
    weight="fp8_e4m3",
    activation="e4m3fn_sat",
    grad_activation="fx16.12",
    accumulator="fx24.12",
    grad_activation_accumulator="bf16",
    grad_weight_accumulator="fx32.16",
    rounding="nearest",
)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 4))


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 3),
    )


def run(make, precision, backend):
    model = hnn.quantize_model(make(), precision, backend=backend)
    torch.manual_seed(1)
    x = torch.randn(5, 12) if make is mlp else torch.randn(3, 2, 8, 7)
    y = model(x)
    (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
    return y.detach(), [p.grad.clone() for p in model.parameters()]


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


@pytest.mark.parametrize("precision", [FLOAT, MIXED], ids=["float", "mixed"])
@pytest.mark.parametrize("make", [mlp, cnn])
def test_backends_agree_bit_for_bit(make, precision):
    y_n, g_n = run(make, precision, "numba")
    y_t, g_t = run(make, precision, "torch")
    assert torch.isfinite(y_n).all()
    assert same(y_n, y_t)
    for a, b in zip(g_n, g_t, strict=True):
        assert same(a, b)


def test_linear_forward_is_matmul_then_the_bias_step():
    p = hnn.Precision(weight="bf16", activation="bf16", accumulator="e5m4", product="e4m5")
    layer = hnn.quantize_model(nn.Sequential(nn.Linear(7, 3)), p, backend="numba")[0]
    torch.manual_seed(2)
    x = torch.randn(4, 7)
    y = layer(x).detach().numpy().astype(np.float64)
    qx = hwsim.quantize(x.numpy().astype(np.float64), "bf16")
    qw = hwsim.quantize(layer.weight.detach().numpy().astype(np.float64), "bf16")
    qb = hwsim.quantize(layer.bias.detach().numpy().astype(np.float64), "bf16")
    codes = hwsim.matmul(qx, qw.T, accumulator="e5m4", product="e4m5")
    expect = add_float(codes, qb[None, :], "e5m4")
    assert np.array_equal(y, expect)


def test_add_float_is_one_rounding_of_the_exact_sum_on_both_backends():
    acc = np.array([1.0, 1.0, -1.0, 60000.0, 0.0])
    bias = np.array([2.0**-3 + 2.0**-5, 2.0**-3 + 2.0**-12, 2.0**-3, 60000.0, -0.0])
    out = add_float(acc, bias, "e5m2")
    # 1.15625 rounds up; 2^-3 + 2^-12 is cast to 2^-3 first, so 1.125 is a tie (to even);
    # -0.875 is on the grid; overflow to Inf; +0 + -0 = +0
    assert out[:4].tolist() == [1.25, 1.0, -0.875, np.inf]
    assert out[4] == 0.0 and not np.signbit(out[4])
    theirs = add_float(torch.from_numpy(acc), torch.from_numpy(bias), "e5m2")
    assert np.array_equal(theirs.numpy().view(np.int64), out.view(np.int64))
    floor = add_float(np.array([1.0]), np.array([-1.0]), "e5m2", "floor")
    assert np.signbit(floor[0])  # IEEE 754 6.3: x - x = -0 rounding toward -Inf
    with pytest.raises(ValueError, match="floating-point format"):
        add_float(acc, bias, "fx8.4")


def test_quantizer_without_straight_through_clips_the_gradient_outside_a_float_range():
    from hwsim.nn import quantizer

    x = torch.tensor([-500.0, -1.0, 2.0, 449.0], requires_grad=True)
    y = quantizer(x, "fp8_e4m3", None, straight_through=False)  # range +-448
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]
