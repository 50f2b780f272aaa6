"""hwsim.cost: the Horowitz table reproduced exactly, monotone scaling, the
full-adder count of a dot product and the energy of a training step."""

import math
import tomllib

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import hwsim
from hwsim import cost
from hwsim.nn.precision import TENSOR_FIELDS

TABLE = tomllib.loads(cost.DEFAULT_TABLE_PATH.read_text())


@pytest.mark.parametrize(
    "row", TABLE["op"], ids=lambda r: f"{r['number']}{r['bits']}{r['operation']}"
)
def test_table_points_reproduced_exactly(row):
    assert cost.energy(row["operation"], row["bits"], row["number"]) == row["energy_pj"]
    assert cost.area(row["operation"], row["bits"], row["number"]) == row["area_um2"]


def test_horowitz_values_from_the_paper():
    # REFERENCES.md: the ISSCC 2014 table
    assert cost.energy("add", 8) == 0.03 and cost.energy("mult", 32) == 3.1
    assert cost.energy("mult", 16, "fp") == 1.1 and cost.area("add", 32, "fp") == 4184
    assert cost.memory_energy_per_bit("sram_8kb") == 10 / 64
    assert cost.memory_energy_per_bit("sram_1mb") == 100 / 64
    assert cost.memory_energy_per_bit("dram") == 1300 / 64


@pytest.mark.parametrize(
    "operation,number", [("add", "int"), ("mult", "int"), ("add", "fp"), ("mult", "fp")]
)
def test_monotone_in_bits(operation, number):
    bits = [b / 4 for b in range(4, 4 * 64 + 1)]  # 1 to 64 bits, fractional too
    for metric in (cost.energy, cost.area):
        values = [metric(operation, b, number) for b in bits]
        assert all(v1 > v0 for v0, v1 in zip(values, values[1:], strict=False))


def test_adders_about_linear_multipliers_about_quadratic():
    # outside the table: exactly the nominal exponent from the nearest point
    assert cost.energy("add", 64) == pytest.approx(2 * cost.energy("add", 32), rel=1e-12)
    assert cost.energy("add", 4) == pytest.approx(cost.energy("add", 8) / 2, rel=1e-12)
    assert cost.energy("mult", 64) == pytest.approx(4 * cost.energy("mult", 32), rel=1e-12)
    assert cost.energy("mult", 4) == pytest.approx(cost.energy("mult", 8) / 4, rel=1e-12)
    # inside: the local exponents stay near 1 (adders) and 2 (multipliers)
    for b in (8, 12, 16, 24):
        add_exp = math.log(cost.energy("add", 2 * b) / cost.energy("add", b)) / math.log(2)
        mult_exp = math.log(cost.energy("mult", 2 * b) / cost.energy("mult", b)) / math.log(2)
        assert 0.6 < add_exp < 1.2 and 1.8 < mult_exp < 2.2


@given(st.floats(8, 32), st.floats(8, 32))
def test_interpolation_is_a_power_law_between_points(b0, b1):
    # log-log linear between 8 and 32 bits for the int multiplier (two points)
    e0, e1 = cost.energy("mult", b0), cost.energy("mult", b1)
    expo = math.log(3.1 / 0.2) / math.log(4)
    assert e1 / e0 == pytest.approx((b1 / b0) ** expo, rel=1e-9)


def test_full_adders_formula_and_small_cases():
    # Sakr et al. 2017: D*B_A*B_W + (D-1)(B_A + B_W + ceil(log2 D) - 1)
    assert cost.dot_product_full_adders(1, 5, 7) == 35  # one multiplier, no adder tree
    assert cost.dot_product_full_adders(2, 4, 4) == 2 * 16 + 1 * (4 + 4 + 1 - 1)
    assert cost.dot_product_full_adders(100, 8, 6) == 100 * 48 + 99 * (8 + 6 + 7 - 1)
    # more bits or a longer vector never costs less
    for d in (1, 3, 17):
        assert cost.dot_product_full_adders(d, 8, 8) < cost.dot_product_full_adders(d, 9, 8)
        assert cost.dot_product_full_adders(d, 8, 8) < cost.dot_product_full_adders(d + 1, 8, 8)


@pytest.mark.parametrize(
    "call",
    [
        lambda: cost.dot_product_full_adders(0, 8, 8),
        lambda: cost.dot_product_full_adders(4, 8.0, 8),
        lambda: cost.energy("div", 8),
        lambda: cost.energy("add", 8, "bf"),
        lambda: cost.energy("add", 0),
        lambda: cost.energy("add", float("nan")),
        lambda: cost.memory_energy_per_bit("l3"),
    ],
)
def test_bad_arguments_raise_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_user_table_replaces_the_default(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text(
        '[[op]]\noperation="add"\nnumber="int"\nbits=4\nenergy_pj=1.0\narea_um2=10\n'
        '[[op]]\noperation="add"\nnumber="int"\nbits=8\nenergy_pj=3.0\narea_um2=20\n'
        '[[memory]]\nname="reg"\naccess_bits=8\nenergy_pj=0.8\n'
    )
    table = cost.CostTable.load(path)
    assert cost.energy("add", 8, table=table) == 3.0
    assert cost.energy("add", 16, table=table) == 6.0  # default adder exponent 1
    assert cost.memory_energy_per_bit("reg", table=table) == 0.1
    with pytest.raises(ValueError, match="no int mult"):
        cost.energy("mult", 8, table=table)


@pytest.mark.parametrize(
    "text,match",
    [
        ('[[op]]\noperation="add"\nnumber="int"\nbits=8\nenergy_pj=1.0\n', "needs operation"),
        (
            '[[op]]\noperation="sub"\nnumber="int"\nbits=8\nenergy_pj=1.0\narea_um2=1\n',
            "operation must be",
        ),
        (
            '[[op]]\noperation="add"\nnumber="int"\nbits=8\nenergy_pj=2.0\narea_um2=1\n'
            '[[op]]\noperation="add"\nnumber="int"\nbits=16\nenergy_pj=1.0\narea_um2=2\n',
            "strictly increase",
        ),
        ("not toml [", "cannot read"),
    ],
)
def test_bad_tables_are_rejected(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        cost.CostTable.load(path)


class _Precision:
    """Duck-typed stand-in for hwsim.nn.Precision (its field names; no
    consistency checks, so any combination can be costed)."""

    def __init__(self, **kw):
        for name in TENSOR_FIELDS:
            setattr(self, name, kw.get(name))


def _mlp():
    return torch.nn.Sequential(torch.nn.Linear(64, 100), torch.nn.ReLU(), torch.nn.Linear(100, 10))


def test_training_step_energy_counts_every_gemm_and_update():
    fx8, acc = hwsim.FixedPoint(8, 6), hwsim.FixedPoint(24, 12)
    p = _Precision(
        weight=fx8,
        activation=fx8,
        grad_activation=fx8,
        accumulator=acc,
        grad_activation_accumulator=acc,
        grad_weight_accumulator=acc,
    )
    e = cost.training_step_energy(
        _mlp(),
        p,
        input_shape=(64,),
        batch_size=32,
        optimizer="sgd",
        momentum=0.9,
        weight_accumulator=hwsim.FixedPoint(16, 14),
        grad=fx8,
        state=fx8,
        memory="sram_8kb",
    )
    macs1, macs2 = 64 * 100 * 32, 100 * 10 * 32
    mac = cost.energy("mult", 8) + cost.energy("add", 24)
    assert e.macs == macs1 + macs2 and e.parameters == 64 * 100 + 100 + 100 * 10 + 10
    assert e.forward_mac == pytest.approx((macs1 + macs2) * mac)
    assert e.grad_activation_mac == pytest.approx(macs2 * mac)  # the input needs no gradient
    assert e.grad_weight_mac == pytest.approx((macs1 + macs2) * mac)
    per_param = 2 * (cost.energy("mult", 8) + cost.energy("add", 16))  # update + momentum
    assert e.accumulator_update == pytest.approx(e.parameters * per_param)
    traffic_bits = 8 + 2 * 16 + 8 + 2 * 8  # grad, accumulator r/w, weight, momentum r/w
    assert e.optimizer_traffic == pytest.approx(e.parameters * traffic_bits * 10 / 64)
    parts = e.as_dict()
    assert parts["total"] == pytest.approx(
        sum(v for k, v in parts.items() if k not in ("total", "macs", "parameters"))
    )


def test_training_step_energy_conv_and_float_defaults():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 8 * 8, 10),
    )
    e_float = cost.training_step_energy(model, None, input_shape=(1, 8, 8), batch_size=2)
    assert e_float.macs == 2 * (4 * 8 * 8 * 9 + 256 * 10)
    fx = hwsim.FixedPoint(8, 4)
    e_fixed = cost.training_step_energy(
        model,
        _Precision(
            weight=fx,
            activation=fx,
            grad_activation=fx,
            accumulator=hwsim.FixedPoint(20, 8),
            grad_activation_accumulator=hwsim.FixedPoint(20, 8),
            grad_weight_accumulator=hwsim.FixedPoint(20, 8),
        ),
        input_shape=(1, 8, 8),
        batch_size=2,
        grad=fx,
        weight_accumulator=hwsim.FixedPoint(16, 12),
    )
    compute = ("forward_mac", "grad_activation_mac", "grad_weight_mac", "accumulator_update")
    for part in compute:  # an 8-bit int MAC is far cheaper than an fp32 one
        assert getattr(e_fixed, part) < getattr(e_float, part) / 4
    assert e_fixed.optimizer_traffic < e_float.optimizer_traffic and e_fixed.total < e_float.total
    # more bits never cost less
    wider = cost.training_step_energy(
        model,
        _Precision(weight=hwsim.FixedPoint(12, 8), activation=fx),
        input_shape=(1, 8, 8),
        batch_size=2,
    )
    narrower = cost.training_step_energy(
        model, _Precision(weight=fx, activation=fx), input_shape=(1, 8, 8), batch_size=2
    )
    assert wider.forward_mac > narrower.forward_mac


def test_training_step_energy_adam_counts_two_states():
    kw = dict(input_shape=(64,), batch_size=8, state=hwsim.FixedPoint(16, 8))
    sgd = cost.training_step_energy(_mlp(), None, optimizer="sgd", **kw)
    adam = cost.training_step_energy(_mlp(), None, optimizer="adam", **kw)
    assert adam.accumulator_update == pytest.approx(3 * sgd.accumulator_update)
    assert adam.optimizer_traffic > sgd.optimizer_traffic
    with pytest.raises(ValueError, match="optimizer must be"):
        cost.training_step_energy(_mlp(), None, optimizer="lion", **kw)
    with pytest.raises(ValueError, match="batch_size"):
        cost.training_step_energy(_mlp(), None, input_shape=(64,), batch_size=0)
    with pytest.raises(ValueError, match="no nn.Linear"):
        cost.training_step_energy(torch.nn.ReLU(), None, input_shape=(64,), batch_size=1)
