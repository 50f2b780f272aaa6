"""Analytic precision predictions: what to expect before sweeping.

- finite-precision LMS (:mod:`hwsim.theory.lms`): excess MSE vs step and weight
  LSB, optimal step, stall thresholds;
- weight-accumulator precision (:mod:`hwsim.theory.accumulator`, Sakr &
  Shanbhag 2019), from formats or from measured gradient statistics;
- per-tensor activation/weight precision of a classifier from noise gains
  (:mod:`hwsim.theory.noise_gain`, Sakr et al. 2017);
- every tensor's format at once, to compare with a precision search
  (:mod:`hwsim.theory.per_tensor`).
"""

from hwsim.theory.accumulator import (
    AccumulatorPrecision,
    GradientStatistics,
    accumulator_precision,
    accumulator_precision_from_statistics,
    measure_gradient_statistics,
)
from hwsim.theory.lms import (
    lms_excess_mse,
    lms_optimal_step,
    lms_stall_fraction,
    lms_stall_step,
    lms_theory_curve,
    lms_time_constant,
    rounding_noise_variance,
)
from hwsim.theory.noise_gain import NoiseGains, min_precision, mismatch_bound, noise_gains
from hwsim.theory.per_tensor import PerTensorPrecision, per_tensor_precision

__all__ = [
    "lms_excess_mse",
    "lms_optimal_step",
    "lms_stall_fraction",
    "lms_stall_step",
    "lms_theory_curve",
    "lms_time_constant",
    "rounding_noise_variance",
    "AccumulatorPrecision",
    "GradientStatistics",
    "accumulator_precision",
    "accumulator_precision_from_statistics",
    "measure_gradient_statistics",
    "NoiseGains",
    "noise_gains",
    "mismatch_bound",
    "min_precision",
    "PerTensorPrecision",
    "per_tensor_precision",
]
