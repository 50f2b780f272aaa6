"""Float adders and multipliers in the cost model: priced by exponent and
mantissa width from the Horowitz table (hwsim.cost.CostTable.float_unit)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from hwsim import cost
from hwsim.formats import FixedPoint, FloatingPoint


def test_fp16_and_fp32_reproduce_the_table_points():
    t = cost.default_table()
    for op in ("add", "mult"):
        for exp, man, bits in ((5, 10, 16), (8, 23, 32)):
            assert t.float_unit(op, exp, man) == pytest.approx(t.energy(op, bits, "fp"), rel=1e-12)
            assert t.float_unit(op, exp, man, column=2) == pytest.approx(
                t.area(op, bits, "fp"), rel=1e-12
            )
    assert cost.unit_energy("mult", "fp32") == pytest.approx(3.7)
    assert cost.unit_energy("add", FloatingPoint(5, 10)) == pytest.approx(0.4)


def test_documented_scaling_significand_plus_exponent_adder():
    """bf16 (e8m7): significand 8 bits, below the table's 11, so the fp16 significand
    cost scaled by (8/11)^exponent, plus an 8-bit int adder."""
    t = cost.default_table()
    for op in ("add", "mult"):
        sig16 = t.energy(op, 16, "fp") - t.energy("add", 5)
        expect = sig16 * (8 / 11) ** t.exponent[op] + t.energy("add", 8)
        assert cost.unit_energy(op, "bf16") == pytest.approx(expect, rel=1e-12)


def test_monotone_in_mantissa_and_exponent():
    for op in ("add", "mult"):
        by_man = [cost.unit_energy(op, FloatingPoint(5, m)) for m in range(1, 30, 3)]
        assert by_man == sorted(by_man) and len(set(by_man)) == len(by_man)
        by_exp = [cost.unit_energy(op, FloatingPoint(e, 3)) for e in range(2, 11)]
        assert by_exp == sorted(by_exp) and len(set(by_exp)) == len(by_exp)
    # narrower formats cost less: fp32 > fp16 > bf16 > fp8 > fp4
    chain = ["fp32", "fp16", "bf16", "fp8_e4m3", "fp4_e2m1"]
    energies = [cost.unit_energy("mult", f) for f in chain]
    assert energies == sorted(energies, reverse=True)


def test_mac_and_training_step_take_float_formats():
    fx8 = FixedPoint(8, 6)
    e_float = cost.mac_energy("bf16", "bf16", "fp32")
    assert e_float == pytest.approx(cost.unit_energy("mult", "bf16") + 0.9)
    assert cost.mac_energy("fp8_e4m3", fx8, "fp16") == pytest.approx(
        max(cost.unit_energy("mult", "fp8_e4m3"), cost.energy("mult", 8)) + 0.4
    )
    # fixed point alone is priced as before
    assert cost.mac_energy(fx8, fx8, FixedPoint(24, 12)) == pytest.approx(
        cost.energy("mult", 8) + cost.energy("add", 24)
    )
    m = torch.nn.Linear(64, 10)
    steps = {}
    for name in ("fp32", "bf16", "fp8_e4m3"):
        fmt = FloatingPoint.parse(name)
        p = SimpleNamespace(weight=fmt, activation=fmt, accumulator=fmt)
        steps[name] = cost.training_step_energy(
            m, p, input_shape=(64,), batch_size=32, weight_accumulator=fmt, grad=fmt, state=fmt
        ).total
    assert steps["fp32"] > steps["bf16"] > steps["fp8_e4m3"] > 0
    lms = [cost.lms_step_energy(16, weight=f, data=f, accumulator=f, error=f) for f in
           ("fp32", "bf16", "fp8_e5m2")]  # fmt: skip
    assert lms == sorted(lms, reverse=True)


def test_bad_input_and_tables_without_fp_points():
    t = cost.default_table()
    with pytest.raises(ValueError, match="exp must be an int >= 1"):
        t.float_unit("add", 0, 3)
    int_only = cost.CostTable.from_dict(
        {
            "op": [
                {"operation": "add", "number": "int", "bits": 8, "energy_pj": 0.03, "area_um2": 36}
            ]
        }  # fmt: skip
    )
    with pytest.raises(ValueError, match="needs the table's fp add points at 16 and 32"):
        int_only.float_unit("add", 8, 7)
    with pytest.raises(ValueError, match="a FixedPoint, a FloatingPoint"):
        cost.format_bits(3.5)
