"""Per-layer, per-tensor telemetry (hwsim.nn.telemetry) and the flush/saturation
definitions it counts with (hwsim.ops.telemetry), against slow references."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import hwsim
import hwsim.nn as hnn
from hwsim.formats import FixedPoint, FloatingPoint, parse_format
from hwsim.formats.block import MX, BlockFloatingPoint
from hwsim.nn.functional import MACLinearFunction
from hwsim.ops.telemetry import quantization_counts


def _ref_counts(x, q, fmt):
    """Element by element, from the definitions in hwsim.ops.telemetry."""
    fmt = parse_format(fmt)
    x, q = np.asarray(x, np.float64).ravel(), np.asarray(q, np.float64).ravel()
    if isinstance(fmt, BlockFloatingPoint | MX):
        tops = _block_ranges(x, fmt)
    flushed = saturated = 0
    for i, (a, b) in enumerate(zip(x, q, strict=True)):
        if math.isnan(a):
            continue
        flushed += a != 0 and b == 0
        if isinstance(fmt, FixedPoint):
            saturated += a > fmt.max or a < fmt.min
        elif isinstance(fmt, FloatingPoint):
            saturated += math.isfinite(a) and (abs(a) > fmt.max or not math.isfinite(b))
        else:
            lo, hi = tops[i]
            saturated += a > hi or a < lo
    return [x.size, int(flushed), int(saturated)]


def _block_ranges(x, fmt):
    """Per element of a flat last-axis-blocked vector: its block's element range."""
    out = []
    for start in range(0, x.size, fmt.block):
        block = x[start : start + fmt.block]
        amax = float(np.max(np.abs(block)))
        e = -127 if amax == 0 else max(math.frexp(amax)[1] - 1, -127)
        if isinstance(fmt, MX):
            e = max(e - fmt.emax_element, -127)
            el = fmt.element
            if isinstance(el, FloatingPoint):
                rng = (-el.max * 2.0**e, el.max * 2.0**e)
            else:
                rng = (el.min * 2.0**e, el.max * 2.0**e)
        else:
            el = fmt.element(e)
            rng = (el.min, el.max)
        out += [rng] * block.size
    return out


@pytest.mark.parametrize(
    "fmt", ["fx8.4", "ufx8.8", "fp8_e4m3", "fp8_e5m2", "fp8_e4m3_sat", "bf16", "fp4_e2m1",
            "bfp4_b8", "bfp6_b16", "mxfp8_e4m3_b8", "mxfp4_e2m1_b8", "mxint8_b8"],
)  # fmt: skip
def test_counts_match_the_elementwise_reference(fmt):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 64, generator=g, dtype=torch.float64) * torch.exp2(
        torch.randint(-30, 30, (4, 64), generator=g).double() / 2
    )
    big = 1e30 if fmt.startswith(("bfp", "mx")) else 1e300
    x[0, :5] = torch.tensor([0.0, 1 / big, -1 / big, big, -big], dtype=torch.float64)
    q = hwsim.quantize(x, fmt)
    got = quantization_counts(x, q, fmt).tolist()
    assert got == _ref_counts(x.numpy(), q.numpy(), fmt)
    assert got[1] > 0  # the tensor exercises both
    if not fmt.startswith(("bfp", "mxint")):
        assert got[2] > 0


def test_counts_take_numpy_and_reject_a_non_format():
    x = np.array([0.001, 0.5, 9.0])
    assert quantization_counts(x, hwsim.quantize(x, "fx8.4"), "fx8.4").tolist() == [3, 1, 1]
    with pytest.raises(ValueError, match="shapes differ"):
        quantization_counts(x, x[:2], "fx8.4")
    with pytest.raises(ValueError):
        quantization_counts(x, x, "not-a-format")


def _mlp(precision, seed=0, backend="torch"):
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    return hnn.quantize_model(m, precision, backend=backend)


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)


def _run(model):
    x, y = _data()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return loss


def _rows(t):
    return {(r["layer"], r["tensor"]): r for r in t.rows()}


def test_grad_weight_rows_count_the_raw_gradient_as_float_weights_give_it():
    narrow = hnn.Precision(weight="fx12.8", activation="fx12.8", grad_weight="fx4.8")
    raw_model = _mlp(hnn.Precision(weight="fx12.8", activation="fx12.8"))
    _run(raw_model)
    model = _mlp(narrow)
    with hnn.telemetry(model) as t:
        _run(model)
    rows = _rows(t)
    for name in ("0", "2"):
        layer = raw_model.get_submodule(name)
        want = np.zeros(3, np.int64)
        for p in (layer.weight, layer.bias):
            want += np.array(_ref_counts(p.grad, hwsim.quantize(p.grad, "fx4.8"), "fx4.8"))
        r = rows[(name, "grad_weight")]
        assert r["numel"] == want[0]
        assert r["flush_fraction"] == want[1] / want[0]
        assert r["saturation_fraction"] == want[2] / want[0]
        assert r["format"] == "fx4.8"
        # the quantized run's gradient is what the quantizer made of that raw gradient
        q = model.get_submodule(name)
        assert torch.equal(q.weight.grad, hwsim.quantize(layer.weight.grad, "fx4.8"))
    assert rows[("0", "grad_weight")]["flush_fraction"] > 0
    assert {tensor for _, tensor in rows} == {"weight", "activation", "grad_weight"}


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_forward_rows_and_telemetry_changes_nothing(backend):
    p = hnn.Precision(weight="fx6.4", activation="fx6.2", output="fx8.3", grad_activation="fx8.9",
                      accumulator="fx5.4", grad_activation_accumulator="fx12.9",
                      grad_weight_accumulator="fx12.9", grad_weight="fx8.9")  # fmt: skip
    plain, watched = _mlp(p, backend=backend), _mlp(p, backend=backend)
    loss = _run(plain)
    with hnn.telemetry(watched) as t:
        loss_t = _run(watched)
    assert loss == loss_t
    for a, b in zip(plain.parameters(), watched.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad)
    rows = _rows(t)
    layer = watched.get_submodule("0")
    w = layer.weight.detach()
    want = np.array(_ref_counts(w, hwsim.quantize(w, "fx6.4"), "fx6.4"))
    b = layer.bias.detach()
    want += np.array(_ref_counts(b, hwsim.quantize(b, "fx6.4"), "fx6.4"))
    assert rows[("0", "weight")]["numel"] == want[0]
    assert rows[("0", "weight")]["saturation_fraction"] == want[2] / want[0]
    x, _ = _data()
    assert (
        rows[("0", "activation")]["saturation_fraction"]
        == _ref_counts(x, hwsim.quantize(x, "fx6.2"), "fx6.2")[2] / x.numel()
    )
    # accumulator: the GEMM against the float GEMM of the same quantized operands
    with torch.no_grad():
        xq, wq, bq = (hwsim.quantize(v, f) for v, f in ((x, "fx6.2"), (w, "fx6.4"), (b, "fx6.4")))
        ref = torch.nn.functional.linear(xq, wq, bq)
        out = hnn.QLinear.from_float(torch.nn.Linear(6, 5), p)
        out.weight.data, out.bias.data = w.clone(), b.clone()
        acc = out._mac(MACLinearFunction, xq, wq, bq, *out._gemm_configs())
    r = rows[("0", "accumulator")]
    assert [
        r["numel"],
        r["flush_fraction"] * r["numel"],
        r["saturation_fraction"] * r["numel"],
    ] == (_ref_counts(ref, acc, "fx5.4"))
    assert r["saturation_fraction"] > 0
    names = {tensor for layer, tensor in rows if layer == "2"}
    # the first layer's input needs no gradient: no gradient leaves it
    assert {tensor for layer, tensor in rows if layer == "0"} == names - {
        "grad_activation_out", "grad_activation_accumulator"}  # fmt: skip
    assert names == {"weight", "activation", "output", "grad_activation_in", "grad_activation_out",
                     "grad_weight", "accumulator", "grad_activation_accumulator",
                     "grad_weight_accumulator"}  # fmt: skip
    for r in rows.values():
        assert 0 <= r["flush_fraction"] <= 1 and 0 <= r["saturation_fraction"] <= 1
    assert all(m.get_submodule(n)._telemetry is None for m in (watched,) for n in ("0", "2"))
    assert "grad_weight_accumulator" in t.table()


def test_an_in_place_op_after_a_layer_still_works():
    p = hnn.Precision(weight="fx8.6", activation="fx8.4", output="fx8.4", grad_activation="fx8.8",
                      accumulator="fx16.8", grad_activation_accumulator="fx16.8")  # fmt: skip
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(6, 5), torch.nn.ReLU(inplace=True), torch.nn.Linear(5, 3)
    )
    model = hnn.quantize_model(net, p)
    with hnn.telemetry(model) as t:
        model(torch.randn(4, 6)).sum().backward()
    assert ("2", "grad_activation_accumulator") in _rows(t)


def test_inactive_counts_nothing_and_reset_clears():
    model = _mlp(hnn.Precision(weight="fx8.6"))
    with hnn.telemetry(model) as t:
        t.active = False
        _run(model)
        assert t.rows() == []
        t.active = True
        _run(model)
        assert len(t.rows()) == 2
        t.reset()
        assert t.rows() == []


def test_stall_fraction_of_an_sgd_step():
    model = _mlp(hnn.Precision(weight="fx8.6"))
    for lr, stalled in ((1e-12, 1.0), (10.0, 0.0)):
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        with hnn.telemetry(model, opt) as t:
            opt.zero_grad()
            _run(model)
            opt.step()
        rows = _rows(t)
        for name in ("0", "2"):
            r = rows[(name, "update")]
            layer = model.get_submodule(name)
            assert r["numel"] == sum(int((p.grad != 0).sum()) for p in layer.parameters())
            assert r["stall_fraction"] == stalled
    assert not opt._optimizer_step_pre_hooks


def test_conv_layers_are_counted():
    torch.manual_seed(0)
    p = hnn.Precision(weight="fx8.6", activation="fx8.4", accumulator="fx12.4",
                      grad_activation="fx8.8", grad_weight="fx8.8",
                      grad_weight_accumulator="fx16.8")  # fmt: skip
    model = hnn.quantize_model(torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1)), p)
    x = torch.randn(2, 2, 5, 5, requires_grad=True)
    with hnn.telemetry(model) as t:
        model(x).square().sum().backward()
    rows = _rows(t)
    assert rows[("0", "accumulator")]["numel"] == 2 * 3 * 5 * 5
    assert rows[("0", "grad_weight_accumulator")]["numel"] == 3 * 2 * 9 + 3
    assert rows[("0", "grad_activation_out")]["numel"] == x.numel()


def test_bad_arguments_are_refused():
    model = _mlp(hnn.Precision(weight="fx8.6"))
    with pytest.raises(ValueError, match="torch.nn.Module"):
        hnn.Telemetry("model")
    with pytest.raises(ValueError, match="Optimizer"):
        hnn.Telemetry(model, optimizer="sgd")
    with hnn.telemetry(model):
        with pytest.raises(ValueError, match="already has telemetry"):
            hnn.Telemetry(model)


def test_stall_fraction_equals_the_hwsim_optimizers_per_group():
    """Without a weight accumulator both count nonzero updates that left the weight unchanged;
    one param group per layer makes the optimizer's telemetry per layer."""
    from hwsim.optim import SGD

    model = _mlp(hnn.Precision(weight="fx8.6", activation="fx8.4"))
    groups = [{"params": list(model.get_submodule(n).parameters())} for n in ("0", "2")]
    opt = SGD(groups, lr=0.5, weight="fx8.6")
    opt.zero_grad()
    _run(model)
    opt.step()  # the first step puts the float initial weights on the grid: all change
    with hnn.telemetry(model, opt) as t:
        for _ in range(3):
            opt.zero_grad()
            _run(model)
            opt.step()
            rows = _rows(t)
            for name, group in zip(("0", "2"), opt.telemetry, strict=True):
                assert rows[(name, "update")]["stall_fraction"] == group["stall_fraction"]
            t.reset()
    assert 0 < opt.telemetry[0]["stall_fraction"] < 1


def test_backward_mac_rows_against_the_float_gemm_of_the_quantized_operands():
    p = hnn.Precision(weight="fx8.6", activation="fx8.4", output="fx10.6", grad_activation="fx8.9",
                      grad_activation_accumulator="fx6.7", grad_weight_accumulator="fx3.6",
                      grad_weight="fx8.7")  # fmt: skip
    model = _mlp(p)
    seen = {}
    model[2].register_forward_hook(lambda m, inputs, out: seen.update(x=inputs[0].detach()))
    x, y = _data()
    with hnn.telemetry(model) as t:
        out = model(x)
        out.retain_grad()
        torch.nn.functional.cross_entropy(out, y).backward()
    rows = _rows(t)
    g = hwsim.quantize(out.grad, "fx8.9")  # the gradient entering layer 2, quantized
    xq = hwsim.quantize(seen["x"], "fx8.4")
    wq = hwsim.quantize(model[2].weight.detach(), "fx8.6")
    ref_w = torch.cat([(g.T @ xq).reshape(-1), g.sum(0)])  # weight, then bias
    got_w = torch.cat([model[2].weight.grad.reshape(-1), model[2].bias.grad])
    # the layer's gradients are the accumulator's results quantized to grad_weight: the
    # same model without grad_weight hands over the accumulator's results themselves
    raw = _mlp(dataclasses.replace(p, grad_weight=None))
    out_r = raw(x)
    torch.nn.functional.cross_entropy(out_r, y).backward()
    acc_w = torch.cat([raw[2].weight.grad.reshape(-1), raw[2].bias.grad])
    assert torch.equal(got_w, hwsim.quantize(acc_w, "fx8.7"))
    want = _ref_counts(ref_w, acc_w, "fx3.6")
    r = rows[("2", "grad_weight_accumulator")]
    assert [r["numel"], round(r["flush_fraction"] * r["numel"]),
            round(r["saturation_fraction"] * r["numel"])] == want  # fmt: skip
    assert want[2] > 0
    ref_x = g @ wq
    acc_x = hwsim.quantize(ref_x, "fx6.7")  # saturation depends on the reference alone
    r = rows[("2", "grad_activation_accumulator")]
    assert r["numel"] == ref_x.numel()
    assert r["saturation_fraction"] * r["numel"] == pytest.approx(_ref_counts(ref_x, acc_x, "fx6.7")[2])  # fmt: skip


def test_float_and_block_formats_in_a_layer():
    p = hnn.Precision(weight="bfp4_b8", activation="fp8_e4m3_sat", grad_weight="mxfp4_e2m1_b8",
                      grad_activation="fp8_e5m2", accumulator="bf16")  # fmt: skip
    torch.manual_seed(0)
    model = hnn.quantize_model(torch.nn.Sequential(torch.nn.Linear(16, 8)), p)
    x = torch.randn(32, 16) * 300  # beyond fp8_e4m3_sat's 448 in places: clipped
    with hnn.telemetry(model) as t:
        model(x).square().sum().backward()
    rows = _rows(t)
    layer = model[0]
    w, b = layer.weight.detach(), layer.bias.detach()
    want = np.array(_ref_counts(w, hwsim.quantize(w, "bfp4_b8"), "bfp4_b8"))
    want += np.array(_ref_counts(b, hwsim.quantize(b, "bfp4_b8"), "bfp4_b8"))
    r = rows[("0", "weight")]
    assert [r["numel"], round(r["flush_fraction"] * r["numel"])] == list(want[:2])
    assert want[1] > 0
    r = rows[("0", "activation")]
    assert r["saturation_fraction"] * r["numel"] == _ref_counts(x, hwsim.quantize(x, "fp8_e4m3_sat"), "fp8_e4m3_sat")[2] > 0  # fmt: skip
    assert rows[("0", "grad_weight")]["format"] == "mxfp4_e2m1_b8"
    assert rows[("0", "accumulator")]["format"] == "bf16"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_rows_on_cuda_equal_the_cpu_rows():
    p = hnn.Precision(weight="fx6.4", activation="fx6.2", grad_activation="fx8.9",
                      grad_weight="fx8.9", accumulator="fx5.4", grad_weight_accumulator="fx12.9")  # fmt: skip
    got = []
    for device in ("cpu", "cuda"):
        model = _mlp(p).to(device)
        x, y = (t.to(device) for t in _data())
        with hnn.telemetry(model) as t:
            torch.nn.functional.cross_entropy(model(x), y).backward()
        got.append(t.rows())
    assert got[0] == got[1]
