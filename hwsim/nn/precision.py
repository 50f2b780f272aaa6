"""``Precision``: the formats and roundings of one quantized layer."""

from __future__ import annotations

import dataclasses

from hwsim.formats import FixedPoint, parse_format
from hwsim.modes import Overflow, Rounding
from hwsim.plan.block_gemm import is_block, is_scaled
from hwsim.plan.float_gemm import check_float_gemm_formats

TENSOR_FIELDS = (
    "weight",
    "activation",
    "output",
    "grad_activation",
    "grad_weight",
    "accumulator",
    "grad_activation_accumulator",
    "grad_weight_accumulator",
    "product",
)


@dataclasses.dataclass(frozen=True)
class Precision:
    """Per-tensor formats of a quantized layer (Sakr & Shanbhag, ICLR 2019:
    weights, activations, activation and weight gradients, accumulators).

    Every format is a :class:`FixedPoint` or :class:`FloatingPoint` (or its
    string), or ``None`` for float. A floating-point accumulator makes a float
    MAC array (``hwsim.matmul`` semantics) with a float ``product`` or none;
    a fixed-point one takes float operands but not a float product. ``weight``/``activation`` quantize the layer's weight (and bias) and
    its input; ``output`` its output; ``grad_activation`` the gradient flowing
    into and out of the layer; ``grad_weight`` the weight (and bias) gradient.
    ``accumulator`` is the forward MAC array's accumulator,
    ``grad_activation_accumulator`` and ``grad_weight_accumulator`` those of
    the two backward GEMMs; ``product`` (optional) the format every product is
    rounded to first, in all three GEMMs (with that GEMM's accumulator
    rounding). A ``None`` accumulator means a float GEMM. The bias is quantized
    like the weight (``weight``/``grad_weight``) and, with an accumulator,
    added into it as one more MAC step after the K products; its gradient is
    the batch sum through the ``grad_weight_accumulator`` MAC array.

    ``rounding`` is the default of every tensor; ``<field>_rounding`` overrides
    it (``stochastic`` allowed anywhere). ``overflow`` applies to all. ``seed``
    makes stochastic rounding reproducible (None: fresh noise each call).
    ``straight_through=False`` zeroes the gradient where the forward value was
    clipped by saturation (clipped straight-through estimator).

    A :class:`hwsim.Scaled` format (``"scaled_fp8_e4m3_h16"``) scales its tensor
    per call by a delayed amax the layer keeps (:mod:`hwsim.nn.scaling`).
    Block-scaled formats (``"mxint8"``, ``"mxfp8_e4m3"``, ``"bfp8_b32"``) work
    in every tensor; with an accumulator, a GEMM with a block-scaled operand
    runs a block-scaled MAC array (:mod:`hwsim.nn.block_mac`, ``block_conv``):
    each GEMM quantizes its operands along its own reduction axis, the
    backward GEMMs re-quantizing weight, input and gradient along theirs (as MX
    training recipes do). A MAC array multiplies integer codes, so an
    accumulator needs its operands on a grid: ``accumulator`` needs ``weight`` and ``activation``,
    ``grad_activation_accumulator`` needs ``grad_activation`` and ``weight``,
    ``grad_weight_accumulator`` needs ``grad_activation`` and ``activation``.

    >>> p = Precision(weight="fx8.6", activation="fx8.4", accumulator="fx24.10")
    >>> str(p.weight), p.rounding_of("weight")
    ('fx8.6', <Rounding.NEAREST: 0>)
    """

    weight: FixedPoint | None = None
    activation: FixedPoint | None = None
    output: FixedPoint | None = None
    grad_activation: FixedPoint | None = None
    grad_weight: FixedPoint | None = None
    accumulator: FixedPoint | None = None
    grad_activation_accumulator: FixedPoint | None = None
    grad_weight_accumulator: FixedPoint | None = None
    product: FixedPoint | None = None
    rounding: str = "nearest"
    weight_rounding: str | None = None
    activation_rounding: str | None = None
    output_rounding: str | None = None
    grad_activation_rounding: str | None = None
    grad_weight_rounding: str | None = None
    accumulator_rounding: str | None = None
    grad_activation_accumulator_rounding: str | None = None
    grad_weight_accumulator_rounding: str | None = None
    overflow: str = "saturate"
    seed: int | None = None
    straight_through: bool = True

    def __post_init__(self) -> None:
        for name in TENSOR_FIELDS:
            try:
                fmt = parse_format(getattr(self, name))
            except ValueError as err:
                raise ValueError(f"Precision.{name}: {err}") from None
            object.__setattr__(self, name, fmt)
        object.__setattr__(self, "rounding", str(Rounding.parse(self.rounding)))
        for name in TENSOR_FIELDS[:-1]:
            value = getattr(self, f"{name}_rounding")
            if value is not None:
                object.__setattr__(self, f"{name}_rounding", str(Rounding.parse(value)))
        object.__setattr__(self, "overflow", str(Overflow.parse(self.overflow)))
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise ValueError(f"Precision.seed must be an int or None, got {self.seed!r}")
        if not isinstance(self.straight_through, bool):
            raise ValueError(
                f"Precision.straight_through must be a bool, got {self.straight_through!r}"
            )
        blocks = [
            f
            for f in TENSOR_FIELDS[:5]
            if is_block(getattr(self, f)) or is_scaled(getattr(self, f))
        ]
        if blocks and not self.straight_through:
            raise ValueError(
                f"Precision.straight_through=False needs a range to clip to, and "
                f"{', '.join(blocks)} is block-scaled (its range moves with the data); "
                f"leave straight_through=True"
            )
        needs = {
            "accumulator": ("weight", "activation"),
            "grad_activation_accumulator": ("grad_activation", "weight"),
            "grad_weight_accumulator": ("grad_activation", "activation"),
        }
        for acc, operands in needs.items():
            missing = [  # a float MAC array takes float32 operands as they are
                f
                for f in operands
                if isinstance(getattr(self, acc), FixedPoint) and getattr(self, f) is None
            ]
            if missing:
                raise ValueError(
                    f"Precision.{acc} is set but {', '.join(missing)} is float: the MAC array "
                    f"multiplies integer codes, so set {' and '.join(operands)} too"
                )
            if getattr(self, acc) is not None and any(is_block(getattr(self, f)) for f in operands):
                _check_block_mac(self, acc, operands)
            if getattr(self, acc) is not None:
                try:
                    check_float_gemm_formats(getattr(self, acc), self.product)
                except ValueError as err:
                    raise ValueError(f"Precision.{acc}: {err}") from None

    def rounding_of(self, field: str) -> Rounding:
        """The rounding of ``field`` (its override, else ``rounding``)."""
        if field not in TENSOR_FIELDS[:-1]:
            raise ValueError(f"unknown tensor field {field!r}; known: {TENSOR_FIELDS[:-1]}")
        override = getattr(self, f"{field}_rounding")
        return Rounding.parse(override if override is not None else self.rounding)

    @property
    def overflow_mode(self) -> Overflow:
        return Overflow.parse(self.overflow)


def _check_block_mac(p: Precision, acc: str, operands: tuple[str, str]) -> None:
    """A block-scaled MAC array forms each block's dot product exactly: no
    product format, and both operands' formats known."""
    if p.product is not None:
        raise ValueError(
            f"Precision.product={p.product} does not apply to {acc}'s block-scaled MAC array "
            f"(its block dot products are exact); leave product=None"
        )
    missing = [f for f in operands if getattr(p, f) is None]
    if missing:
        raise ValueError(
            f"Precision.{acc} is set and {' or '.join(operands)} is block-scaled, but "
            f"{', '.join(missing)} is float: a block-scaled MAC array needs both operands' "
            f"formats"
        )
