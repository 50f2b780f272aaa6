"""Per-tensor power-of-two scaling (hwsim.Scaled): the stateless quantize (current
amax) and the layers' delayed scaling (amax history) against a hand-written
reference on Fractions."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from naive_block import ref_element

import hwsim
import hwsim.nn as hn
from hwsim.errors import NonFiniteError
from hwsim.formats.scaled import Scaled, scale_exponent
from hwsim.nn.scaling import AmaxHistory

NAMES = ["scaled_fp8_e4m3", "scaled_fp8_e5m2", "scaled_int8", "scaled_fx6.3", "scaled_fp4_e2m1"]


def ref_exponent(amax: float, fmt: Scaled) -> int:
    """The smallest s in [-127, 127] with amax <= max * 2^s, by search on Fractions."""
    if amax == 0:
        return -127
    top = Fraction(fmt.element.max)
    for s in range(-127, 128):
        if Fraction(amax) <= top * Fraction(2) ** s:
            return s
    return 127


def ref_scaled(x: np.ndarray, fmt: Scaled, amax: float, rounding="nearest", noise=None):
    s = ref_exponent(amax, fmt)
    u = np.zeros(x.size) if noise is None else noise.reshape(-1)
    out = []
    for v, ui in zip(x.reshape(-1), u, strict=True):
        r = ref_element(float(Fraction(float(v)) / Fraction(2) ** s), fmt.element, rounding, ui)
        out.append(math.copysign(float(abs(Fraction(r)) * Fraction(2) ** s), float(r)))
    return np.array(out).reshape(x.shape)


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(NAMES),
    rounding=st.sampled_from(["nearest", "zero", "floor", "stochastic"]),
    scale=st.integers(-60, 60),
    seed=st.integers(0, 2**32),
)
def test_current_amax_matches_the_reference_on_both_backends(name, rounding, scale, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(37) * 2.0**scale
    x[rng.random(37) < 0.1] = 0.0
    noise = rng.random(37) if rounding == "stochastic" else None
    fmt = Scaled.parse(name)
    want = ref_scaled(x, fmt, float(np.abs(x).max()), rounding, noise)
    got = hwsim.quantize(x, name, rounding, noise=noise)
    np.testing.assert_array_equal(got, want)
    t = hwsim.quantize(torch.from_numpy(x), fmt, rounding,
                       noise=None if noise is None else torch.from_numpy(noise))  # fmt: skip
    np.testing.assert_array_equal(t.numpy(), want)


def test_the_scale_rule_by_hand():
    f = Scaled("fp8_e4m3")
    assert [scale_exponent(a, f) for a in (448.0, 448.5, 896.0, 897.0, 1.0, 0.0)] == [
        0, 1, 1, 2, -8, -127,
    ]  # fmt: skip
    assert scale_exponent(1e300, f) == 127 and scale_exponent(1e-300, f) == -127
    # 500 / 2 = 250 -> 256 (E4M3 step 32 there) -> 512; -0.01 / 2 = 2.56 subnormal steps 2^-9 -> 3
    x = np.array([500.0, 3.0, -0.01])
    assert hwsim.quantize(x, f).tolist() == [512.0, 3.0, -3 * 2.0**-8]
    # MX's rule would clip the amax instead: floor(log2 500) - 8 = 0, 500 -> 448
    assert hwsim.quantize(x, "mxfp8_e4m3_whole")[0] == 448.0


def test_delayed_scaling_uses_the_max_of_the_last_n_amaxes():
    fmt = Scaled("fp8_e4m3", history=3)
    h = AmaxHistory(fmt)
    rng = np.random.default_rng(0)
    amaxes = []
    for step, scale in enumerate([8.0, 1.0, 1.0, 1.0, 1.0, 100.0, 1.0]):
        x = torch.from_numpy(rng.standard_normal(50) * scale)
        amax = float(x.abs().max())
        ref_amax = max(amaxes[-3:]) if amaxes else amax
        want = ref_scaled(x.numpy(), fmt, ref_amax)
        np.testing.assert_array_equal(h(x, "nearest").numpy(), want, err_msg=f"step {step}")
        amaxes.append(amax)
    # step 3 still sees step 0's amax (history 3); step 4 no longer does
    assert h.exponents[3] == h.exponents[0] > h.exponents[4] and len(h.amaxes) == 3
    # a spike above the delayed scale saturates at max * 2^s
    h2 = AmaxHistory(Scaled("fp8_e4m3", history=2))
    h2(torch.tensor([1.0]), "nearest")
    assert h2(torch.tensor([1000.0]), "nearest").item() == 448.0 * 2.0 ** scale_exponent(1.0, fmt)


def test_layers_keep_one_history_per_tensor():
    p = hn.Precision(weight="scaled_fp8_e4m3_h4", activation="scaled_fp8_e4m3_h4",
                     grad_activation="scaled_fp8_e5m2_h4", grad_weight="scaled_fp8_e5m2_h4")  # fmt: skip
    torch.manual_seed(0)
    layer = hn.QLinear(6, 3, precision=p)
    x = torch.randn(5, 6)
    for scale in (1.0, 0.01):
        y = layer(x * scale)
        y.sum().backward()
    keys = sorted(layer.amax_histories)
    assert keys == ["activation/0", "grad_activation/1", "grad_activation/7", "grad_weight/3",
                    "grad_weight/5", "weight/2", "weight/4"]  # fmt: skip
    act = layer.amax_histories["activation/0"]
    # the second call's input (amax 100x smaller) took the first call's scale
    assert act.exponents[1] == act.exponents[0]
    want = torch.nn.functional.linear(
        torch.from_numpy(
            ref_scaled((x * 0.01).numpy(), p.activation, float(x.abs().max()))
        ).float(),  # fmt: skip
        torch.from_numpy(
            ref_scaled(
                layer.weight.detach().numpy(), p.weight, float(layer.weight.detach().abs().max())
            )
        ).float(),  # fmt: skip
        torch.from_numpy(
            ref_scaled(
                layer.bias.detach().numpy(), p.weight, float(layer.bias.detach().abs().max())
            )
        ).float(),  # fmt: skip
    )
    torch.testing.assert_close(y.detach(), want, rtol=0, atol=0)
    q = hn.Quantizer("scaled_int8_h2")
    q(torch.ones(3))
    assert isinstance(q.forward_format, AmaxHistory) and list(q.forward_format.amaxes) == [1.0]


def test_names_and_errors():
    for name in ["scaled_fp8_e4m3", "scaled_fp8_e5m2_h1024", "scaled_int8_h1", "scaled_fx8.4"]:
        f = hwsim.parse_format(name)
        assert str(f) == name and Scaled.parse(str(f)) == f and hash(f) == hash(Scaled.parse(name))
    with pytest.raises(ValueError, match="history must be an integer >= 1"):
        Scaled("fp8_e4m3", history=0)
    with pytest.raises(ValueError, match="cannot parse scaled format"):
        Scaled.parse("scaled_")
    with pytest.raises(ValueError, match="element must be"):
        Scaled("ufx8.4")
    with pytest.raises(NonFiniteError):
        hwsim.quantize(np.array([1.0, np.nan]), "scaled_fp8_e4m3")
    with pytest.raises(ValueError, match="always saturate"):
        hwsim.quantize(np.ones(2), "scaled_int8", overflow="wrap")
    with pytest.raises(ValueError, match="to_codes"):
        hwsim.to_codes(np.ones(2), "scaled_int8")
    with pytest.raises(ValueError, match="straight_through=False"):
        hn.Precision(weight="scaled_fp8_e4m3", straight_through=False)


def test_telemetry_counts_saturation_under_a_delayed_scale():
    from hwsim.ops.telemetry import quantization_counts

    h = AmaxHistory(Scaled("fp8_e4m3", history=2))
    h(torch.tensor([1.0]), "nearest")  # the scale for the next call: 2^-8, top 1.75
    x = torch.tensor([1000.0, 1.0, 1e-4, -3.0, 0.0])
    q = h(x, "nearest")
    assert q.tolist()[:2] == [1.75, 1.0] and q[3] == -1.75
    assert quantization_counts(x, q, h.format).tolist() == [5, 0, 2]  # 1000 and -3 clipped
    y = torch.tensor([0.5, 1.0])  # the current amax: nothing clips
    assert quantization_counts(y, hwsim.quantize(y, h.format), h.format).tolist() == [2, 0, 0]
