"""Analytic precision predictions: what to expect before sweeping."""

from hwsim.theory.lms import (
    lms_excess_mse,
    lms_optimal_step,
    lms_stall_fraction,
    lms_stall_step,
    lms_theory_curve,
    rounding_noise_variance,
)

__all__ = [
    "lms_excess_mse",
    "lms_optimal_step",
    "lms_stall_fraction",
    "lms_stall_step",
    "lms_theory_curve",
    "rounding_noise_variance",
]
