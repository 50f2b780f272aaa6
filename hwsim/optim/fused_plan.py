"""The plan of the fused optimizer step (:mod:`hwsim.optim.fused`): which
multiplications merge exactly, and which overflow steps a bound proves
no-ops, so the kernel (:mod:`hwsim.optim.fused_kernel`) compiles them out."""

from __future__ import annotations

import math
import sys

import numpy as np

from hwsim.kernels.scalar import SATURATE, STOCHASTIC
from hwsim.optim.fused_kernel import (
    CLAMP_HIGH,
    CLAMP_LOW,
    CLAMP_NONE,
    NO_FORMAT,
    format_constants,
)

_MIN_NORMAL = sys.float_info.min
_F32_MIN_NORMAL, _F32_MAX = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)


def _normal(x: float) -> bool:
    return math.isfinite(x) and abs(x) >= _MIN_NORMAL


class FusedPlan:
    """The plan of the fused step of one precision configuration: what depends
    only on the formats and modes, worked out once, and per call the
    constants and the overflow steps that can act (:meth:`plan`);
    :class:`hwsim.optim.fused.FusedStep` runs it.

    ``grad`` is the gradient format of a pointwise rule (``sign`` says which
    rule); a rule's own update comes in with ``grad=None, sign=False``.
    ``accumulator`` is the grid updates are added on (the accumulator, else the
    weight) and ``weight`` the weight format re-quantized from it, if any."""

    def __init__(
        self,
        sign: bool,
        grad,
        update,
        accumulator,
        weight,
        roundings: tuple[int, int, int, int],
        overflow: int,
    ):
        grad_rounding, update_rounding, acc_rounding, weight_rounding = roundings
        self.sign, self.overflow = sign, overflow
        self.has_grad, self.has_update = grad is not None, update is not None
        self.roundings = (
            NO_FORMAT if grad is None else grad_rounding,
            NO_FORMAT if update is None else update_rounding,
            acc_rounding,
            NO_FORMAT if weight is None else weight_rounding,
        )
        self.stochastic = tuple(r == STOCHASTIC for r in self.roundings)
        self.any_stochastic = any(self.stochastic)
        self.formats = tuple(format_constants(f) for f in (grad, update, accumulator, weight))
        self.merged_input = sign or grad is not None
        grad_c, update_c, acc_c, weight_c = self.formats
        self.acc_codes = acc_c[3:]
        self.input_top = (
            1.0 if sign else (max(-grad_c[3], grad_c[4]) if grad is not None else math.nan)
        )
        self.input_lsb = grad.lsb if grad is not None and not sign else 1.0
        self.acc_scale = acc_c[0]
        self.update_delta = self.update_bound = 0.0
        if update is not None:  # the update's code in accumulator LSBs: exact
            self.update_delta = 2.0 ** (accumulator.fl - update.fl)
            self.update_bound = max(-update_c[3], update_c[4]) * self.update_delta
        self.acc_top = max(-acc_c[3], acc_c[4])  # the largest |code| of the accumulator
        # |x| <= safe: every rounding of x (LSB units) is a code (no overflow step)
        self.grad_safe = min(-grad_c[3], grad_c[4])
        self.acc_safe = min(-acc_c[3], acc_c[4])
        self._last_scale: tuple = (None, None, None)
        self.k_weight = 2.0 ** (weight.fl - accumulator.fl) if weight is not None else 0.0
        self.weight_overflow = self._weight_sides(acc_c[3], acc_c[4])  # for any accumulator
        # codes written to a float32 parameter through int32 (see step_kernel): the
        # codes, and the weight codes before saturation, fit in int32; every value
        # is normal in float32; a weight code's overflow step is a clamp
        out_c = weight_c if weight is not None else acc_c
        before = (
            (acc_c[3] * self.k_weight - 1, acc_c[4] * self.k_weight + 1)
            if weight is not None
            else out_c[3:]
        )
        self.int32_out = (
            -(2.0**31) <= min(out_c[3], before[0])
            and max(out_c[4], before[1]) < 2.0**31
            and _F32_MIN_NORMAL <= out_c[1]
            and max(-out_c[3], out_c[4]) * out_c[1] < _F32_MAX
            and (overflow == SATURATE or self.weight_overflow == CLAMP_NONE)
        )
        self._kernels: dict = {}
        self._modes: dict = {}  # FusedStep.modes, per key

    def _weight_sides(self, low: float, high: float) -> int:
        """The limits of the weight format (``CLAMP_*``) that re-quantizing an
        accumulator code in [low, high] can reach (every rounding of ``a *
        k_weight``, an exact scaling, lands in [floor, ceil] of it)."""
        if not self.k_weight:
            return CLAMP_NONE
        w_low, w_high = self.formats[3][3:]
        return CLAMP_LOW * (math.floor(low * self.k_weight) < w_low) + CLAMP_HIGH * (
            math.ceil(high * self.k_weight) > w_high
        )

    def _scale_constants(self, scale: float) -> tuple[float, float] | None:
        """``(k_update, k_delta)`` of :meth:`plan` for one ``scale``, or ``None``
        where merging is not exact or the update could overflow."""
        if self.merged_input:
            k_update = self.input_lsb * scale
            if not (_normal(k_update) and math.isfinite(self.input_top * abs(k_update))):
                return None
            k_delta = self.update_delta if self.has_update else k_update * self.acc_scale
            return (k_update, k_delta) if _normal(k_delta) else None
        return (scale, self.update_delta if self.has_update else self.acc_scale)

    def _constants(self, scale: float, source_max: float):
        """``(kernel constants, grad_overflow, delta_overflow, delta_top)``:
        the constants of :meth:`plan` packed with the formats as the kernel
        takes them, ``delta_top`` bounding |update code| on the accumulator
        grid; ``None`` where the plan declines. The scale's part is cached:
        the learning rate seldom changes between steps."""
        last = (
            self._last_scale
        )  # (scale, its constants): one read, so threads sharing this step see a pair
        if last[0] != scale:
            scaled = self._scale_constants(scale)
            packed = (
                None
                if scaled is None
                else np.array([*scaled, self.k_weight, *sum(self.formats, ())])
            )
            last = self._last_scale = (scale, scaled, packed)
        if last[1] is None:
            return None
        k_update, k_delta = last[1]
        grad_overflow = False
        if self.merged_input:
            top = self.input_top  # |rule input|: a sign, or a gradient code
            if self.has_grad:
                # every rounding of |g| 2^fg <= g_top is at most ceil(g_top) (at least 1:
                # scale_value keeps the sign of a product that underflows, and floor or
                # stochastic rounding can take it to -1 or 1); beyond the format's range
                # the overflow step keeps the code within input_top
                g_top = max(source_max * self.formats[0][0], 1.0)
                grad_overflow = not g_top <= self.grad_safe
                if not self.sign and g_top < top:
                    top = float(math.ceil(g_top))
        if self.has_update:  # the update format's range
            bound = self.update_bound
        elif self.merged_input:
            bound = top * abs(k_delta)
        else:
            if not math.isfinite(source_max * abs(k_update)):
                return None  # the update itself could overflow: the torch ops raise
            bound = source_max * abs(k_update) * k_delta
        if not math.isfinite(bound):
            return None
        bound = max(
            bound, 1.0
        )  # an update that underflows in LSB units can round to -1 or 1 (as above)
        if self.overflow == SATURATE:
            delta_overflow = not bound <= self.acc_safe
        else:  # modular: wrapping the sum alone is the same while the sum is exact
            delta_overflow = bound >= 2.0**51
        delta_top = float(math.ceil(bound))  # every rounding of |s| <= bound (monotone float ops)
        if delta_overflow:  # the update code is brought into the accumulator's range first
            delta_top = min(delta_top, self.acc_top)
        return last[2], grad_overflow, delta_overflow, delta_top

    def _sides(self, acc_top: float, delta_top: float) -> tuple[int, int, float]:
        """``(accumulator sides, weight sides, acc_top after)``: the limits
        (``CLAMP_*``) the sum ``acc + delta`` and the weight code can reach when
        |acc| <= ``acc_top`` and |delta| <= ``delta_top`` (integral floats),
        and a bound on |acc| after the step."""
        low_code, high_code = self.acc_codes
        low = max(low_code, -acc_top) - delta_top
        high = min(high_code, acc_top) + delta_top
        acc_sides = CLAMP_LOW * (low < low_code) + CLAMP_HIGH * (high > high_code)
        if acc_sides and self.overflow != SATURATE:
            low, high = low_code, high_code  # a wrapped sum can land anywhere
        else:
            low, high = max(low, low_code), min(high, high_code)
        return acc_sides, self._weight_sides(low, high), max(-low, high)

    def plan(self, scale: float, source_max: float, acc_top: float | None = None):
        """``(constants, overflows, acc_top after)`` for one call, or ``None``
        where merged multiplications could round differently from the
        reference pipeline (a zero, subnormal or overflowing product; e.g.
        ``lr == 0``) or the update could overflow: the torch ops then run
        instead, with the same semantics.

        The constants ``(update, delta, weight)``: the update is ``rule_input
        * update`` (``-lr``, times the gradient LSB when the input is a
        gradient code); in accumulator LSBs it is ``rule_input * delta``
        (merged), ``update code * delta`` (with an update format: 2^(fa -
        fu)) or ``update * delta`` (a float input: 2^fa); a weight code is an
        accumulator code times ``weight`` = 2^(fw - fa).

        Why merging is exact: a power-of-two multiple of a float is exact while
        it stays normal, and multiplying an integer ``x`` (a code or a sign,
        ``|x| >= 1`` when nonzero) by a normal constant rounds the same real
        number once either way: ``x * (lsb * scale * 2^fa) == ((x * lsb) *
        scale) * 2^fa``.

        The overflow steps (``step_kernel``'s ``overflows``): ``source_max``
        bounds |source| (:func:`max_abs`), ``acc_top`` |accumulator code|
        before the step (``None``: unknown); with the formats' ranges they
        decide which overflow steps cannot change anything."""
        base = self._constants(scale, source_max)
        if base is None:
            return None
        packed, grad_overflow, delta_overflow, delta_top = base
        acc_sides, weight_sides, top_after = self._sides(
            self.acc_top if acc_top is None else acc_top, delta_top
        )
        return (
            tuple(packed[:3].tolist()),
            (grad_overflow, delta_overflow, acc_sides, weight_sides),
            top_after,
        )
