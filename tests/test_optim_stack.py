"""hwsim.optim.stack: a Stack of tensors computes, for every operation the
rule math and the torch path's quantizers use, the bits each tensor gets
alone (foreach ops where torch has them, tensor by tensor elsewhere)."""

from __future__ import annotations

import pytest
import torch

from hwsim.formats import FixedPoint
from hwsim.modes import Overflow, Rounding
from hwsim.optim import rule_math
from hwsim.optim.stack import Stack
from hwsim.torch_path.core import value_to_code_float


def tensors():
    torch.manual_seed(0)
    special = [-0.0, 0.0, 1e-300, -1e-300, 2.5, -2.5, 0.5, -0.5, 1e6, -1e6]
    return [
        torch.randn(5, dtype=torch.float64) * 100,
        torch.randn(3, 2, dtype=torch.float64) * 100,
        torch.tensor(special, dtype=torch.float64),
        torch.empty(0, dtype=torch.float64),
    ]


def same(got: Stack, want: list[torch.Tensor]) -> None:
    assert len(got.tensors) == len(want)
    for a, b in zip(got.tensors, want, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        nan = a.isnan()
        assert torch.equal(nan, b.isnan()) and torch.equal(a[~nan], b[~nan])
        assert torch.equal(a.signbit(), b.signbit())  # -0 and +0 too


@pytest.mark.parametrize("rounding", list(Rounding))
@pytest.mark.parametrize("overflow", list(Overflow))
@pytest.mark.parametrize("fmt", [FixedPoint(8, 4), FixedPoint(8, -2), FixedPoint(12, 3, False)])
@pytest.mark.parametrize("inplace", [True, False])
def test_the_quantizer_on_a_stack_is_the_quantizer_per_tensor(rounding, overflow, fmt, inplace):
    ts = tensors()
    u = None
    if rounding == Rounding.STOCHASTIC:
        u = Stack(torch.rand_like(t) for t in ts)
    got = value_to_code_float(
        Stack(t.clone() for t in ts), fmt, rounding, overflow, u, inplace=inplace
    )
    want = [
        value_to_code_float(t, fmt, rounding, overflow, None if u is None else u.tensors[i])
        for i, t in enumerate(ts)
    ]
    same(got, want)


def test_arithmetic_and_the_rule_helpers_per_tensor():
    xs, ys = tensors(), [t.flip(0) * 0.3 + 0.1 for t in tensors()]
    x, y = Stack(xs), Stack(ys)
    cases = [
        (x + y, [a + b for a, b in zip(xs, ys, strict=True)]),
        (x - y, [a - b for a, b in zip(xs, ys, strict=True)]),
        (x * y, [a * b for a, b in zip(xs, ys, strict=True)]),
        (x / y, [a / b for a, b in zip(xs, ys, strict=True)]),
        (x / 3.0, [a / 3.0 for a in xs]),
        (0.25 + x, [0.25 + a for a in xs]),
        (0.9 * x, [0.9 * a for a in xs]),
        (1.5 - x, [1.5 - a for a in xs]),
        (x - 1.5, [a - 1.5 for a in xs]),
        (-x, [-a for a in xs]),
        (rule_math.sqrt(x * x), [rule_math.sqrt(a * a) for a in xs]),
        (rule_math.sign(x), [torch.sign(a) for a in xs]),
        (rule_math.maximum(x, y), [torch.maximum(a, b) for a, b in zip(xs, ys, strict=True)]),
        (rule_math.maximum(x, 0.0), [torch.clamp(a, min=0.0) for a in xs]),
        (torch.where(x > y, x, y), [torch.where(a > b, a, b) for a, b in zip(xs, ys, strict=True)]),
    ]
    for got, want in cases:
        same(got, want)


def test_in_place_steps_and_conversions():
    xs = tensors()
    x = Stack(t.clone() for t in xs)
    assert x.to(torch.float64) is x  # nothing to convert: the same Stack
    y = Stack(t.float() for t in xs).to(torch.float64)
    assert all(a is not b for a, b in zip(y.tensors, x.tensors, strict=True))
    x.mul_(4.0).round_().clamp_(-50.0, 50.0).add_(0.0).sub_(1.0)
    same(x, [(t * 4.0).round().clamp(-50.0, 50.0).add(0.0).sub(1.0) for t in xs])
    z = Stack(t.clone() for t in xs)
    z.add_(Stack(t > 0 for t in xs))  # a bool mask added: tensor by tensor
    same(z, [t + (t > 0) for t in xs])
    assert x.shape == [t.shape for t in xs]
