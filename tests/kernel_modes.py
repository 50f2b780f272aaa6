"""The kernels' rounding and overflow codes (``hwsim.kernels.scalar``) by
name, in one order, for the kernel tests."""

from __future__ import annotations

from hwsim.kernels import scalar

ROUNDINGS = {
    "nearest": scalar.NEAREST,
    "nearest_away": scalar.NEAREST_AWAY,
    "floor": scalar.FLOOR,
    "zero": scalar.ZERO,
    "stochastic": scalar.STOCHASTIC,
}
OVERFLOWS = {"saturate": scalar.SATURATE, "wrap": scalar.WRAP}
