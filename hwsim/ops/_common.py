"""Old home of the shared checks, now in :mod:`hwsim.plan.checks`; kept only
for ``hwsim.optim.base`` until its imports move to ``hwsim.plan`` (then delete)."""

from hwsim.plan.checks import fresh_seed, raise_non_finite_torch

__all__ = ["fresh_seed", "raise_non_finite_torch"]
