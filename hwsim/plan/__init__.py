"""Backend-neutral decisions, below both backends: argument checks, seeds,
error wording, a format's kernel constants and the GEMM plan.

The Numba kernels (``hwsim.kernels``), the torch path (``hwsim.torch_path``)
and the public ops (``hwsim.ops``) all import from here; nothing here imports
them (DESIGN.md, "The layers").
"""

from hwsim.plan.checks import (
    KernelConstants,
    check_format,
    check_noise_numpy,
    fresh_seed,
    is_torch,
    kernel_constants,
    raise_non_finite_numpy,
    raise_non_finite_torch,
    seed64,
)
from hwsim.plan.gemm import GemmPlan, plan_gemm, use_fast_path

__all__ = [
    "GemmPlan",
    "KernelConstants",
    "check_format",
    "check_noise_numpy",
    "fresh_seed",
    "is_torch",
    "kernel_constants",
    "plan_gemm",
    "raise_non_finite_numpy",
    "raise_non_finite_torch",
    "seed64",
    "use_fast_path",
]
