"""Layers with block-scaled operands in their MAC arrays (hwsim.nn.block_mac):
every GEMM equals hwsim.matmul with the block formats along its own K."""

from __future__ import annotations

import pytest
import torch

import hwsim
import hwsim.nn as hn

CASES = [  # (weight, activation, gradient, forward acc, grad-input acc, grad-weight acc)
    ("mxint8", "mxint8", "mxint8", "fx32.16", "fx24.16", "fx24.12"),
    ("mxfp4_e2m1", "mxfp8_e4m3", "mxfp8_e4m3", "fp32", "bf16", "fx24.12"),
    ("bfp8_b16", "bfp8_b16", "bfp8", "fx12.6", "fx16.10", "fx20.10"),
    ("fx8.6", "mxint8", "mxint8", "fx32.16", "fx32.16", "fx32.16"),
]


def _layer(case, backend="torch", bias=False, rounding="nearest"):
    w, a, g, acc, gi, gw = case
    p = hn.Precision(weight=w, activation=a, grad_activation=g, grad_weight=g, accumulator=acc,
                     grad_activation_accumulator=gi, grad_weight_accumulator=gw,
                     rounding=rounding, seed=3)  # fmt: skip
    torch.manual_seed(0)
    return hn.QLinear(70, 9, bias=bias, precision=p, backend=backend, dtype=torch.float64)


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 70, generator=g, dtype=torch.float64) * 3
    up = torch.randn(40, 9, generator=g, dtype=torch.float64)
    return x, up


@pytest.mark.parametrize("case", CASES)
def test_each_gemm_is_hwsim_matmul_along_its_own_k(case):
    w_fmt, a_fmt, g_fmt, acc, gi, gw = case
    layer = _layer(case)
    x, up = _data()
    x.requires_grad_(True)
    y = layer(x)
    y.backward(up)
    w = layer.weight.detach()
    xd = x.detach()
    # forward: K = input features (x along its rows, w.T along its columns)
    want = hwsim.matmul(xd, w.t(), accumulator=acc, a_format=a_fmt, b_format=w_fmt)
    torch.testing.assert_close(y.detach(), want, rtol=0, atol=0)
    # input gradient: K = output features, the weight re-quantized along them
    gx = hwsim.matmul(up, w, accumulator=gi, a_format=g_fmt, b_format=w_fmt)
    gx = hwsim.quantize(gx, g_fmt)  # the input's quantizer: grad_activation
    torch.testing.assert_close(x.grad, gx, rtol=0, atol=0)
    # weight gradient: K = batch, the gradient and the input re-quantized along it
    gwt = hwsim.matmul(up.t().contiguous(), xd, accumulator=gw, a_format=g_fmt, b_format=a_fmt)
    gwt = hwsim.quantize(gwt, g_fmt)  # the weight's quantizer: grad_weight
    torch.testing.assert_close(layer.weight.grad, gwt, rtol=0, atol=0)


def test_bias_is_one_more_mac_step_and_its_gradient_the_batch_sum():
    case = CASES[0]
    layer = _layer(case, bias=True)
    x, up = _data()
    y = layer(x)
    y.backward(up)
    codes, acc = hwsim.ops.matmul_codes(x, layer.weight.detach().t(), accumulator="fx32.16",
                                        a_format="mxint8", b_format="mxint8")  # fmt: skip
    b = hwsim.quantize(layer.bias.detach(), "mxint8")
    codes = hwsim.ops.add_codes(codes, hwsim.ops.to_codes(b, acc), acc)
    torch.testing.assert_close(y.detach(), hwsim.ops.from_codes(codes, acc), rtol=0, atol=0)
    ones = torch.ones((1, 40), dtype=torch.float64)
    gb = hwsim.matmul(ones, up, accumulator="fx24.12", a_format="fx2.0", b_format="mxint8")[0]
    torch.testing.assert_close(layer.bias.grad, hwsim.quantize(gb, "mxint8"), rtol=0, atol=0)


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("case", CASES[:2])
def test_numba_equals_torch(case, rounding):
    grads = []
    for backend in ("torch", "numba"):
        layer = _layer(case, backend, bias=True, rounding=rounding)
        x, up = _data()
        x.requires_grad_(True)
        y = layer(x)
        y.backward(up)
        grads.append((y.detach(), x.grad, layer.weight.grad, layer.bias.grad))
    for t, n in zip(*grads, strict=True):
        torch.testing.assert_close(t, n, rtol=0, atol=0)


def test_float_forward_gemm_with_block_backward_and_float32_tensors():
    p = hn.Precision(weight="mxint8", activation="mxint8", grad_activation="mxint8",
                     grad_weight_accumulator="fx24.12")  # fmt: skip
    torch.manual_seed(0)
    layer = hn.QLinear(70, 9, precision=p)
    x, up = _data()
    y = layer(x.float())
    assert y.dtype == torch.float32
    xq = hwsim.quantize(x.float().double(), "mxint8")
    wq = hwsim.quantize(layer.weight.detach().double(), "mxint8")
    bq = hwsim.quantize(layer.bias.detach().double(), "mxint8")  # the bias: as the weight
    want = torch.nn.functional.linear(xq, wq, bq)
    torch.testing.assert_close(y.detach().double(), want.float().double(), rtol=0, atol=0)
    y.backward(up.float())
    assert layer.weight.grad.dtype == torch.float32


def test_a_block_mlp_trains():
    p = hn.Precision(weight="mxint8", activation="mxint8", grad_activation="mxint8",
                     grad_weight="mxint8", accumulator="fx32.16",
                     grad_activation_accumulator="fx32.16", grad_weight_accumulator="fx32.16")  # fmt: skip
    torch.manual_seed(0)
    model = hn.quantize_model(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(),
                                                  torch.nn.Linear(16, 2)), p)  # fmt: skip
    x = torch.randn(64, 8)
    labels = (x[:, 0] + x[:, 1] > 0).long()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match="product"):
        hn.Precision(weight="mxint8", activation="mxint8", accumulator="fx32.16",
                     product="fx16.8")  # fmt: skip
    with pytest.raises(ValueError, match="activation is float"):
        hn.Precision(weight="mxint8", accumulator="fp32")
    with pytest.raises(ValueError, match="straight_through=False"):
        hn.Precision(weight="mxint8", straight_through=False)
    layer = hn.QLinear(4, 2, precision=hn.Precision(weight="mxfp8_e5m2",
                                                    activation="mxfp8_e5m2", accumulator="fp32"))  # fmt: skip
    with pytest.raises(ValueError, match="more than float64's 53"):
        layer(torch.ones(3, 4))


def _conv_layer(backend="torch", rounding="nearest"):
    p = hn.Precision(weight="mxint8_b8", activation="mxfp8_e4m3_b8", grad_activation="mxint8_b8",
                     grad_weight="mxint8_b8", accumulator="fx32.16",
                     grad_activation_accumulator="fx24.14", grad_weight_accumulator="fx24.12",
                     rounding=rounding, seed=5)  # fmt: skip
    torch.manual_seed(0)
    return hn.QConv2d(3, 4, 3, stride=2, padding=1, precision=p, backend=backend,
                      dtype=torch.float64)  # fmt: skip


def test_conv_gemms_are_hwsim_conv2d_and_matmul_along_their_own_k():
    conv = _conv_layer()
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(2, 3, 7, 7, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    y = conv(x)
    up = torch.randn(y.shape, generator=g, dtype=torch.float64)
    y.backward(up)
    w, xd = conv.weight.detach(), x.detach()
    want = hwsim.conv2d(xd, w, stride=2, padding=1, accumulator="fx32.16",
                        x_format="mxfp8_e4m3_b8", w_format="mxint8_b8")  # fmt: skip
    want = want + hwsim.quantize(conv.bias.detach(), "mxint8_b8").reshape(1, -1, 1, 1)
    torch.testing.assert_close(y.detach(), want, rtol=0, atol=0)  # fx32.16 adds the bias exactly
    # input gradient: the dilated gradient against the flipped kernel, K = (o, kh, kw)
    dilated = torch.zeros((2, 4, 7, 7), dtype=torch.float64)
    dilated[:, :, ::2, ::2] = up
    flipped = w.flip(2, 3).transpose(0, 1).contiguous()
    gx = hwsim.conv2d(dilated, flipped, padding=1, accumulator="fx24.14", x_format="mxint8_b8",
                      w_format="mxint8_b8")  # fmt: skip
    torch.testing.assert_close(x.grad, hwsim.quantize(gx, "mxint8_b8"), rtol=0, atol=0)
    # weight gradient: K = (n, y, x)
    cols = torch.nn.functional.unfold(xd, (3, 3), padding=1, stride=2).transpose(1, 2)
    gm = up.permute(1, 0, 2, 3).reshape(4, -1)
    gw = hwsim.matmul(gm, cols.reshape(-1, 27), accumulator="fx24.12", a_format="mxint8_b8",
                      b_format="mxfp8_e4m3_b8").reshape(w.shape)  # fmt: skip
    torch.testing.assert_close(conv.weight.grad, hwsim.quantize(gw, "mxint8_b8"), rtol=0, atol=0)
    ones = torch.ones((1, gm.shape[1]), dtype=torch.float64)
    gb = hwsim.matmul(ones, gm.t(), accumulator="fx24.12", a_format="fx2.0",
                      b_format="mxint8_b8")[0]  # fmt: skip
    torch.testing.assert_close(conv.bias.grad, hwsim.quantize(gb, "mxint8_b8"), rtol=0, atol=0)


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_conv_numba_equals_torch(rounding):
    out = []
    for backend in ("torch", "numba"):
        conv = _conv_layer(backend, rounding)
        x = torch.randn(2, 3, 7, 7, generator=torch.Generator().manual_seed(2),
                        dtype=torch.float64).requires_grad_(True)  # fmt: skip
        y = conv(x)
        y.backward(torch.ones_like(y))
        out.append((y.detach(), x.grad, conv.weight.grad, conv.bias.grad))
    for t, n in zip(*out, strict=True):
        torch.testing.assert_close(t, n, rtol=0, atol=0)


def test_telemetry_counts_the_forward_gemm_operands():
    conv = _conv_layer()
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64) * 100
    with hn.telemetry(torch.nn.Sequential(conv)) as t:
        conv(x).sum().backward()
    rows = {r["tensor"]: r for r in t.rows()}
    cols = torch.nn.functional.unfold(x, (3, 3), padding=1, stride=2)
    assert rows["activation"]["numel"] == cols.numel()  # the im2col operand
    assert rows["weight"]["numel"] == conv.weight.numel() + conv.bias.numel()
    assert rows["accumulator"]["format"] == "fx32.16"
