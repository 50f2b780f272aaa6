"""hwsim.theory.per_tensor: each tensor's format meets the rule it is derived from."""

import math

import numpy as np
import pytest
import torch

import hwsim
from hwsim.theory import (
    accumulator_precision,
    measure_gradient_statistics,
    min_precision,
    mismatch_bound,
    noise_gains,
)
from hwsim.theory.per_tensor import per_tensor_precision

LOSS = torch.nn.functional.cross_entropy


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(3)
    net = torch.nn.Sequential(
        torch.nn.Linear(12, 24), torch.nn.ReLU(), torch.nn.Linear(24, 5)
    ).double()
    x = torch.rand(96, 12, dtype=torch.float64) * 3.0  # unsigned inputs beyond 1
    t = torch.randint(0, 5, (96,))
    batches = [(x[i : i + 32], t[i : i + 32]) for i in range(0, 96, 32)]
    p = per_tensor_precision(net, x, LOSS, batches, target=0.02, lr_min=1e-3)
    return net, x, t, batches, p


def test_forward_formats_are_the_smallest_that_meet_the_bound(setup):
    net, x, _, _, p = setup
    gains = noise_gains(net, x)
    b_a, b_w = min_precision(gains, 0.02)
    assert (p.activation.wl, p.weight.wl) == (b_a, b_w)
    assert p.activation.lsb == gains.lsb(b_a, "activation")
    assert p.weight.lsb == gains.lsb(b_w, "weight")
    assert p.mismatch_bound == mismatch_bound(gains, b_a, b_w) <= 0.02
    assert not p.activation.signed  # ReLU outputs and nonnegative inputs
    # the formats cover what they hold: no weight and no activation saturates
    w_max = max(float(m.weight.detach().abs().max()) for m in net if isinstance(m, torch.nn.Linear))
    assert w_max < p.weight.max + p.weight.lsb
    assert float(x.max()) < p.activation.max + p.activation.lsb


def test_grad_format_covers_the_largest_gradient_and_resolves_the_quantile(setup):
    net, _, _, batches, p = setup
    stats = measure_gradient_statistics(net, LOSS, batches, quantile=0.1)
    largest = max(s.max_grad for s in stats.values())
    smallest = min(s.small_grad for s in stats.values())
    g_range = p.grad.max + p.grad.lsb  # a B-bit signed format covers [-range, range)
    assert largest < g_range <= 2 * largest
    assert p.grad.lsb <= smallest < 2 * p.grad.lsb


def test_weight_accumulator_is_the_sakr_shanbhag_rule(setup):
    net, x, _, _, p = setup
    want = accumulator_precision(p.grad, 1e-3, noise_gains(net, x).weight_range).format
    assert p.weight_accumulator == want
    assert p.weight_accumulator.lsb <= 1e-3 * p.grad.lsb


def test_mac_accumulator_holds_every_layer_exactly(setup):
    net, x, _, _, p = setup
    with torch.no_grad():
        inputs = (x, torch.relu(net[0](x)))  # what each Linear sees
    for layer, acts in zip((net[0], net[2]), inputs, strict=True):
        a = np.asarray(hwsim.quantize(acts.numpy(), p.activation))
        w = np.asarray(hwsim.quantize(layer.weight.detach().numpy(), p.weight))
        # and the worst case: every operand at its largest magnitude
        worst_a = np.full_like(a, p.activation.max)
        worst_w = np.full_like(w, p.weight.min)
        for aa, ww in ((a, w), (worst_a, worst_w)):
            got = hwsim.matmul(aa, ww.T, accumulator=p.accumulator)
            assert np.array_equal(got, aa @ ww.T)  # exact: no rounding, no saturation
        narrower = hwsim.FixedPoint(p.accumulator.wl - 3, p.accumulator.fl)
        assert not np.array_equal(
            hwsim.matmul(worst_a, worst_w.T, accumulator=narrower), worst_a @ worst_w.T
        )


def test_all_zero_gradients_are_refused():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    x = torch.randn(16, 4)

    def zero_loss(out, _):
        return (out * 0).sum()

    with pytest.raises(ValueError, match="every measured gradient is zero"):
        per_tensor_precision(net, x, zero_loss, [(x, None)], target=0.05, lr_min=0.01)


def test_formats_are_fixed_point_of_the_stated_widths(setup):
    *_, p = setup
    assert set(p.formats()) == {"weight", "activation", "grad", "accumulator",
                                "weight_accumulator"}  # fmt: skip
    terms = 24 + 1  # the largest fan-in (the second layer's 24 inputs) plus its bias
    assert p.accumulator.wl == p.weight.wl + p.activation.wl + math.ceil(math.log2(terms))


def test_the_classify_task_gives_its_rule_by_parameter_name():
    from models.task_theory import classify_analytical_precision
    from models.tasks import ClassifyParams, classify

    config = {"dataset": "digits", "model": "mlp", "hidden": 16, "epochs": 3, "lr": 0.1}
    rule = classify_analytical_precision(config, 0.05)
    assert set(rule) == {"weight", "activation", "opt_grad", "accumulator", "opt_accumulator"}
    assert all(isinstance(f, hwsim.FixedPoint) for f in rule.values())
    assert rule["opt_accumulator"].lsb <= 0.1 * rule["opt_grad"].lsb  # lr_min = lr
    quantized = classify(ClassifyParams(**config, **rule)).metrics["test_accuracy"]
    reference = classify(ClassifyParams(**config)).metrics["test_accuracy"]
    assert quantized >= reference - 0.05, (quantized, reference)  # the rule's formats train
