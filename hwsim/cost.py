"""Hardware cost: energy and area per operation vs bit-width, and the energy
of one training step of a model at a given precision.

The numbers come from a replaceable table (``hwsim/data/horowitz45.toml``:
Horowitz, "Computing's energy problem", ISSCC 2014, 45 nm at 0.9 V). The
table's own points are reproduced exactly; between two points of the same
operation the cost follows the power law through them (linear in log-log), and
outside the table it scales as ``bits**exponent`` from the nearest point, with
exponent 1 for adders and 2 for multipliers (Horowitz: integer adders about
linear in bits, multipliers about quadratic). Costs are monotone in bits.
Float formats are priced by exponent and mantissa width
(:meth:`CostTable.float_unit`): a significand datapath on man + 1 bits,
scaled from the table's fp16/fp32 points, plus an exponent-wide int adder.

>>> from hwsim import cost
>>> cost.energy("mult", 8), cost.energy("add", 32)   # table points, pJ
(0.2, 0.1)
>>> round(cost.energy("mult", 16), 3)               # between 8 and 32 bits
0.787
>>> cost.dot_product_full_adders(64, 8, 8)          # Sakr et al. 2017
5419
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hwsim.formats import FixedPoint, FloatingPoint, parse_format

DEFAULT_TABLE_PATH = Path(__file__).parent / "data" / "horowitz45.toml"
FLOAT_BITS = 32  # a float (None) tensor or accumulator is costed as fp32
_OPERATIONS = ("add", "mult")
_NUMBERS = ("int", "fp")
_METRICS = ("energy_pj", "area_um2")


@dataclasses.dataclass(frozen=True)
class CostTable:
    """Energy/area points per (operation, number kind) and memory access energies.

    ``points[(operation, number)]`` is a tuple of ``(bits, energy_pj, area_um2)``
    sorted by bits; ``memory[name]`` is the energy in pJ of one access of
    ``memory_bits[name]`` bits; ``exponent[operation]`` is the scaling used
    outside the table.
    """

    points: Mapping[tuple[str, str], tuple[tuple[int, float, float], ...]]
    memory: Mapping[str, float]
    memory_bits: Mapping[str, int]
    exponent: Mapping[str, float]
    source: str = ""

    @classmethod
    def load(cls, path: str | Path | None = None) -> CostTable:
        """Read a cost table TOML (default: the Horowitz 45 nm table shipped with
        hwsim). Raises ``ValueError`` naming the bad entry when the file is
        malformed or a cost is not increasing in bits."""
        path = Path(path) if path is not None else DEFAULT_TABLE_PATH
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ValueError(f"cannot read cost table {path}: {err}") from err
        return cls.from_dict(data, where=str(path))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "cost table") -> CostTable:
        """Build a table from the parsed TOML structure (see the shipped file)."""
        exponent = {"add": 1.0, "mult": 2.0}
        exponent.update({k: float(v) for k, v in dict(data.get("exponent", {})).items()})
        rows: dict[tuple[str, str], list[tuple[int, float, float]]] = {}
        for i, row in enumerate(data.get("op", [])):
            try:
                op, num, bits = row["operation"], row["number"], row["bits"]
                energy, area = float(row["energy_pj"]), float(row["area_um2"])
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(
                    f"{where}: [[op]] entry {i} needs operation, number, bits, energy_pj, "
                    f"area_um2; got {row!r}"
                ) from err
            if op not in _OPERATIONS or num not in _NUMBERS:
                raise ValueError(
                    f"{where}: [[op]] entry {i}: operation must be one of {_OPERATIONS} and "
                    f"number one of {_NUMBERS}; got {op!r}, {num!r}"
                )
            if not isinstance(bits, int) or bits < 1 or energy <= 0 or area <= 0:
                raise ValueError(
                    f"{where}: [[op]] entry {i}: bits must be a positive integer and costs "
                    f"positive; got bits={bits!r}, energy_pj={energy}, area_um2={area}"
                )
            rows.setdefault((op, num), []).append((bits, energy, area))
        points = {}
        for key, pts in rows.items():
            pts.sort()
            for (b0, e0, a0), (b1, e1, a1) in zip(pts, pts[1:], strict=False):
                if b0 == b1 or e1 <= e0 or a1 <= a0:
                    raise ValueError(
                        f"{where}: {key[1]} {key[0]} costs must strictly increase with bits; "
                        f"got {b0}b ({e0} pJ, {a0} um2) and {b1}b ({e1} pJ, {a1} um2)"
                    )
            points[key] = tuple(pts)
        memory, memory_bits = {}, {}
        for i, row in enumerate(data.get("memory", [])):
            try:
                name, bits, energy = row["name"], int(row["access_bits"]), float(row["energy_pj"])
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(
                    f"{where}: [[memory]] entry {i} needs name, access_bits, energy_pj; got {row!r}"
                ) from err
            if bits < 1 or energy <= 0:
                raise ValueError(
                    f"{where}: [[memory]] {name!r}: access_bits and energy_pj must be > 0"
                )
            memory[name], memory_bits[name] = energy, bits
        return cls(points, memory, memory_bits, exponent, str(data.get("source", "")))

    # -- per-operation costs ------------------------------------------------------
    def _lookup(self, operation: str, bits: float, number: str, column: int) -> float:
        if operation not in _OPERATIONS:
            raise ValueError(f"operation must be one of {_OPERATIONS}, got {operation!r}")
        if number not in _NUMBERS:
            raise ValueError(f"number must be one of {_NUMBERS}, got {number!r}")
        key = (operation, number)
        if key not in self.points:
            raise ValueError(f"the cost table has no {number} {operation} entries ({self.source})")
        if not (isinstance(bits, int | float) and math.isfinite(bits) and bits > 0):
            raise ValueError(f"bits must be a positive number, got {bits!r}")
        pts = self.points[key]
        for b, *vals in pts:
            if bits == b:
                return vals[column - 1]
        if bits < pts[0][0] or bits > pts[-1][0]:
            b, *vals = pts[0] if bits < pts[0][0] else pts[-1]
            return vals[column - 1] * (bits / b) ** self.exponent[operation]
        for (b0, *v0), (b1, *v1) in zip(pts, pts[1:], strict=False):
            if b0 < bits < b1:
                y0, y1 = v0[column - 1], v1[column - 1]
                t = math.log(bits / b0) / math.log(b1 / b0)
                return y0 * (y1 / y0) ** t
        raise AssertionError("unreachable")  # pragma: no cover

    def energy(self, operation: str, bits: float, number: str = "int") -> float:
        """Energy in pJ of one ``operation`` ("add" or "mult") on ``bits``-bit operands."""
        return self._lookup(operation, bits, number, 1)

    def area(self, operation: str, bits: float, number: str = "int") -> float:
        """Area in um^2 of one ``operation`` unit on ``bits``-bit operands."""
        return self._lookup(operation, bits, number, 2)

    def float_unit(self, operation: str, exp: int, man: int, column: int = 1) -> float:
        """Energy (column 1) or area (2) of a float ``operation`` unit for ``exp``
        exponent and ``man`` mantissa bits: a significand datapath on ``man + 1``
        bits plus an ``exp``-bit integer adder (the exponent sum of a multiplier,
        the exponent difference of an adder). The significand part is the table's
        fp points (fp16: e5m10, fp32: e8m23) less their exponent adders,
        interpolated and extrapolated by significand width like every other
        row, so fp16 and fp32 reproduce the table exactly."""
        if not (isinstance(exp, int) and isinstance(man, int) and exp >= 1 and man >= 0):
            raise ValueError(f"exp must be an int >= 1 and man an int >= 0, got {exp!r}, {man!r}")
        fp = {bits: vals for bits, *vals in self.points.get((operation, "fp"), ())}
        if operation not in _OPERATIONS or not {16, 32} <= set(fp):
            raise ValueError(
                f"pricing a float {operation!r} by exponent and mantissa needs the table's "
                f"fp {operation} points at 16 and 32 bits ({self.source})"
            )
        sig = {  # significand-datapath cost at 11 (fp16) and 24 (fp32) significand bits
            11: fp[16][column - 1] - self._lookup("add", 5, "int", column),
            24: fp[32][column - 1] - self._lookup("add", 8, "int", column),
        }
        if sig[11] <= 0 or sig[24] <= sig[11]:
            raise ValueError(f"the fp {operation} points leave no significand cost to scale")
        rows = (11, sig[11], sig[11]), (24, sig[24], sig[24])
        part = dataclasses.replace(self, points={(operation, "fp"): rows})
        return part._lookup(operation, man + 1, "fp", 1) + self._lookup("add", exp, "int", column)

    def memory_energy_per_bit(self, level: str = "sram_8kb") -> float:
        """Energy in pJ to read or write one bit at memory ``level``."""
        if level not in self.memory:
            raise ValueError(f"unknown memory level {level!r}; the table has {sorted(self.memory)}")
        return self.memory[level] / self.memory_bits[level]


_DEFAULT: CostTable | None = None


def default_table() -> CostTable:
    """The shipped Horowitz 45 nm table (loaded once)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = CostTable.load()
    return _DEFAULT


def energy(
    operation: str, bits: float, number: str = "int", table: CostTable | None = None
) -> float:
    """Energy in pJ of one ``add`` or ``mult`` on ``bits``-bit ``int`` or ``fp`` operands
    (Horowitz 2014, 45 nm, unless ``table`` is given).

    >>> energy("add", 16), energy("mult", 32, "fp")
    (0.05, 3.7)
    """
    return (table or default_table()).energy(operation, bits, number)


def area(operation: str, bits: float, number: str = "int", table: CostTable | None = None) -> float:
    """Area in um^2 of one ``add`` or ``mult`` unit (Horowitz 2014, 45 nm).

    >>> area("mult", 8)
    282.0
    """
    return (table or default_table()).area(operation, bits, number)


def memory_energy_per_bit(level: str = "sram_8kb", table: CostTable | None = None) -> float:
    """Energy in pJ per bit of one memory access (Horowitz 2014: 8 KB SRAM 10 pJ,
    32 KB 20 pJ, 1 MB 100 pJ, DRAM 1.3-2.6 nJ per 64 bits).

    >>> memory_energy_per_bit("sram_8kb")
    0.15625
    """
    return (table or default_table()).memory_energy_per_bit(level)


def dot_product_full_adders(length: int, activation_bits: int, weight_bits: int) -> int:
    """Full adders of a length-D fixed-point dot product (Sakr et al., ICML 2017):
    ``D*B_A*B_W`` for the array multipliers plus ``(D-1)*(B_A + B_W + ceil(log2 D) - 1)``
    for the adder tree.

    >>> dot_product_full_adders(1, 8, 8), dot_product_full_adders(2, 4, 4)
    (64, 40)
    """
    for name, v in (
        ("length", length),
        ("activation_bits", activation_bits),
        ("weight_bits", weight_bits),
    ):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    d = length
    return d * activation_bits * weight_bits + (d - 1) * (
        activation_bits + weight_bits + math.ceil(math.log2(d)) - 1
    )


# -- training step energy -----------------------------------------------------------


def format_bits(fmt: FixedPoint | FloatingPoint | str | None) -> tuple[int, str]:
    """(bits, number kind) of a tensor format: ``FixedPoint`` -> (wl, "int"),
    ``FloatingPoint`` -> (bits, "fp"), ``None``/"float" -> (32, "fp")."""
    fmt = parse_format(fmt) if isinstance(fmt, str) else fmt
    if fmt is None:
        return FLOAT_BITS, "fp"
    if isinstance(fmt, FloatingPoint):
        return fmt.bits, "fp"
    if not isinstance(fmt, FixedPoint):
        raise ValueError(
            f"a FixedPoint, a FloatingPoint, its string or None (float) is needed, got {fmt!r}"
        )
    return fmt.wl, "int"


def unit_energy(operation: str, fmt, table: CostTable | None = None) -> float:
    """Energy in pJ of one ``add`` or ``mult`` unit for a tensor format: fixed point
    by word length (int rows), a ``FloatingPoint`` by exponent and mantissa
    (:meth:`CostTable.float_unit`), None as fp32.

    >>> unit_energy("mult", "fp16"), round(unit_energy("mult", "bf16"), 3)
    (1.1, 0.602)
    """
    table = table or default_table()
    fmt = parse_format(fmt) if isinstance(fmt, str) else fmt
    if isinstance(fmt, FloatingPoint):
        return table.float_unit(operation, fmt.exp, fmt.man)
    bits, kind = format_bits(fmt)
    return table.energy(operation, bits, kind)


def mac_energy(a_format, b_format, accumulator, table: CostTable | None = None) -> float:
    """Energy in pJ of one multiply-accumulate: a multiplier on the wider operand's
    bits plus an adder at the accumulator's bits (fp32 for float operands); with
    a ``FloatingPoint`` among them, the costlier operand's multiplier and the
    accumulator's adder (:func:`unit_energy`)."""
    table = table or default_table()
    formats = [parse_format(f) if isinstance(f, str) else f for f in (a_format, b_format)]
    if any(isinstance(f, FloatingPoint) for f in formats):
        mult = max(unit_energy("mult", f, table) for f in formats)
        return mult + unit_energy("add", accumulator, table)
    (ba, ka), (bb, kb) = format_bits(a_format), format_bits(b_format)
    mult_kind = "fp" if "fp" in (ka, kb) else "int"
    return table.energy("mult", max(ba, bb), mult_kind) + unit_energy("add", accumulator, table)


_STATE_COUNT = {"sgd": 0, "signsgd": 0, "adam": 2, "adagrad": 1, "rmsprop": 1}


@dataclasses.dataclass(frozen=True)
class StepEnergy:
    """Energy in pJ of one training step, by part (``total`` is their sum)."""

    forward_mac: float
    grad_activation_mac: float
    grad_weight_mac: float
    accumulator_update: float
    optimizer_traffic: float
    macs: int
    parameters: int

    @property
    def total(self) -> float:
        return (
            self.forward_mac
            + self.grad_activation_mac
            + self.grad_weight_mac
            + self.accumulator_update
            + self.optimizer_traffic
        )

    def as_dict(self) -> dict[str, float]:
        d = dataclasses.asdict(self)
        d["total"] = self.total
        return d


def _layer_macs(model, input_shape: Iterable[int]) -> list[tuple[int, int]]:
    """(MACs per sample, parameters) of every Linear/Conv2d in call order."""
    import torch
    from torch import nn

    found: list[tuple[int, int]] = []

    def hook(module, inputs, output):
        params = sum(p.numel() for p in module.parameters(recurse=False))
        if isinstance(module, nn.Linear):
            macs = output[0].numel() * module.in_features
        else:  # Conv2d: every output element is a dot product of in/groups * kh * kw
            kh, kw = module.kernel_size
            macs = output[0].numel() * (module.in_channels // module.groups) * kh * kw
        found.append((int(macs), int(params)))

    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    if not layers:
        raise ValueError("the model has no nn.Linear or nn.Conv2d layer to cost")
    handles = [m.register_forward_hook(hook) for m in layers]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            ref = next(model.parameters())
            model(torch.zeros((1, *input_shape), dtype=ref.dtype, device=ref.device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return found


def training_step_energy(
    model,
    precision=None,
    *,
    input_shape: Iterable[int],
    batch_size: int,
    optimizer: str = "sgd",
    momentum: float = 0.0,
    weight_accumulator: FixedPoint | str | None = None,
    grad: FixedPoint | str | None = None,
    state: FixedPoint | str | None = None,
    memory: str = "sram_1mb",
    table: CostTable | None = None,
) -> StepEnergy:
    """Energy in pJ of one training step of ``model`` (its nn.Linear/nn.Conv2d
    layers) on a batch, at the formats of ``precision``.

    ``precision`` is an ``hwsim.nn.Precision`` or any object with its fields
    (``weight, activation, grad_activation, accumulator,
    grad_activation_accumulator, grad_weight_accumulator``; a missing field or
    None is float, costed as fp32). Counted per step:

    - forward GEMMs: activation x weight multiplies, adds at ``accumulator``;
    - activation-gradient GEMMs (not for the first layer, whose input needs no
      gradient): grad_activation x weight, adds at ``grad_activation_accumulator``;
    - weight-gradient GEMMs: grad_activation x activation, adds at
      ``grad_weight_accumulator``;
    - weight-accumulator update, per parameter: one lr x grad multiply and one add
      at the optimizer's ``weight_accumulator`` format (plus one multiply and add
      per optimizer state);
    - optimizer traffic at ``memory``, per parameter: read the gradient, read
      and write the accumulator, write the weight, read and write each optimizer
      state (momentum: 1; adam: 2; adagrad, rmsprop: 1).

    >>> import torch, hwsim
    >>> from types import SimpleNamespace as P
    >>> m = torch.nn.Linear(64, 10)
    >>> fx8 = hwsim.FixedPoint(8, 6)
    >>> e = training_step_energy(m, P(weight=fx8, activation=fx8), input_shape=(64,), batch_size=32)
    >>> e.macs, e.parameters
    (20480, 650)
    """
    if optimizer not in _STATE_COUNT:
        raise ValueError(f"optimizer must be one of {sorted(_STATE_COUNT)}, got {optimizer!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    table = table or default_table()

    def field(name):
        return getattr(precision, name, None) if precision is not None else None

    w, a = field("weight"), field("activation")
    ga = field("grad_activation")
    acc, ga_acc, gw_acc = (
        field("accumulator"),
        field("grad_activation_accumulator"),
        field("grad_weight_accumulator"),
    )
    layers = _layer_macs(model, tuple(input_shape))
    fwd_macs = sum(m for m, _ in layers) * batch_size
    bwd_act_macs = sum(m for m, _ in layers[1:]) * batch_size
    params = sum(p.numel() for p in model.parameters())

    n_states = _STATE_COUNT[optimizer] + (1 if optimizer in ("sgd", "signsgd") and momentum else 0)
    wacc_bits, _ = format_bits(weight_accumulator if weight_accumulator is not None else w)
    g_bits, _ = format_bits(grad)
    s_bits, _ = format_bits(state)
    w_bits, _ = format_bits(w)
    per_param_update = (1 + n_states) * (
        unit_energy("mult", grad, table)
        + unit_energy("add", weight_accumulator if weight_accumulator is not None else w, table)
    )
    per_bit = table.memory_energy_per_bit(memory)
    per_param_traffic = per_bit * (g_bits + 2 * wacc_bits + w_bits + 2 * n_states * s_bits)
    return StepEnergy(
        forward_mac=fwd_macs * mac_energy(a, w, acc, table),
        grad_activation_mac=bwd_act_macs * mac_energy(ga, w, ga_acc, table),
        grad_weight_mac=fwd_macs * mac_energy(ga, a, gw_acc, table),
        accumulator_update=params * per_param_update,
        optimizer_traffic=params * per_param_traffic,
        macs=fwd_macs,
        parameters=params,
    )


def lms_step_energy(
    taps: int,
    *,
    weight: FixedPoint | str | None = None,
    data: FixedPoint | str | None = None,
    accumulator: FixedPoint | str | None = None,
    error: FixedPoint | str | None = None,
    weight_accumulator: FixedPoint | str | None = None,
    rule: str = "lms",
    memory: str = "sram_8kb",
    table: CostTable | None = None,
) -> float:
    """Energy in pJ of one sample of an adaptive FIR filter: the filter's ``taps``
    MACs (data x weight, adds at ``accumulator``), the error subtraction, the
    update multiplies (LMS: e*x_i and mu*(e x_i) per tap; sign-error: mu*x_i
    per tap; sign-data: mu*e once; sign-sign: none), one add per tap into the
    ``weight_accumulator`` (default: the weight format) and reading and writing
    it at ``memory``. Float roles are costed as fp32.

    >>> round(lms_step_energy(16, weight="fx16.14", data="fx16.14", accumulator="fx32.28",
    ...                       error="fx16.14"), 2)
    120.25
    """
    rules = ("lms", "sign_error", "sign_data", "sign_sign")
    if rule not in rules:
        raise ValueError(f"rule must be one of {rules}, got {rule!r}")
    if isinstance(taps, bool) or not isinstance(taps, int) or taps < 1:
        raise ValueError(f"taps must be a positive integer, got {taps!r}")
    table = table or default_table()
    (bd, kd), (be, ke) = format_bits(data), format_bits(error)
    wacc = weight_accumulator if weight_accumulator is not None else weight
    bwa, _ = format_bits(wacc)
    filter_energy = taps * mac_energy(data, weight, accumulator, table)
    if any(isinstance(parse_format(f) if isinstance(f, str) else f, FloatingPoint)
           for f in (data, error)):  # fmt: skip
        mult = max(unit_energy("mult", data, table), unit_energy("mult", error, table))
    else:
        e_bits, e_kind = max(bd, be), ("fp" if "fp" in (kd, ke) else "int")
        mult = table.energy("mult", e_bits, e_kind)
    n_mult = {"lms": 2 * taps, "sign_error": taps, "sign_data": 1, "sign_sign": 0}[rule]
    update = (
        n_mult * mult + taps * unit_energy("add", wacc, table) + unit_energy("add", error, table)
    )
    traffic = taps * 2 * bwa * table.memory_energy_per_bit(memory)
    return filter_energy + update + traffic
