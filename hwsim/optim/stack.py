"""Several parameters' tensors as one operand of a rule's math
(:mod:`hwsim.optim.rule_math`), so that the torch path runs each operation
of the math once for a group, as ``torch._foreach_`` ops (on a GPU one
multi-tensor launch per operation where each tensor took one of its own;
on the CPU torch loops over the tensors in C++), instead of once per
parameter.

Each operation is the one the per-tensor math performs, tensor by tensor,
so the results are the same bits: ``x + y``, ``x - y``, ``x * y``, ``x / y``
(``y`` a Stack or, except for ``/``, a number), ``-x``, ``a + x`` and
``a * x`` (IEEE addition and multiplication commute), ``a - x`` as
``(-x) + a`` (the same sum). A division by a number is refused, as the
rules never divide by one (CUDA multiplies by its reciprocal).
"""

from __future__ import annotations

import torch


class Stack:
    """The tensors of a group's parameters (one per parameter, any shapes)."""

    __slots__ = ("tensors",)

    def __init__(self, tensors):
        self.tensors = list(tensors)

    def _apply(self, op, other) -> Stack:
        if isinstance(other, Stack):
            return Stack(op(self.tensors, other.tensors))
        return Stack(op(self.tensors, _number(other)))

    def __add__(self, other) -> Stack:
        return self._apply(torch._foreach_add, other)

    __radd__ = __add__

    def __mul__(self, other) -> Stack:
        return self._apply(torch._foreach_mul, other)

    __rmul__ = __mul__

    def __sub__(self, other) -> Stack:
        return self._apply(torch._foreach_sub, other)

    def __rsub__(self, other) -> Stack:
        return Stack(torch._foreach_add(torch._foreach_neg(self.tensors), _number(other)))

    def __truediv__(self, other) -> Stack:
        if not isinstance(other, Stack):
            raise TypeError(
                "hwsim.optim.stack: a rule's math divides tensor by tensor only (a division "
                f"by the number {other!r} is a multiplication by its reciprocal on CUDA)"
            )
        return Stack(torch._foreach_div(self.tensors, other.tensors))

    def __neg__(self) -> Stack:
        return Stack(torch._foreach_neg(self.tensors))

    def map(self, fn) -> Stack:
        """``fn`` applied to each tensor."""
        return Stack(fn(t) for t in self.tensors)

    @property
    def is_cpu(self) -> bool:
        return all(t.is_cpu for t in self.tensors)


def _number(x) -> float:
    """A hyperparameter as a Python float (a 0-dim tensor's value: the
    per-tensor math promotes it to float64 alike)."""
    return float(x)


def sqrt(x: Stack) -> Stack:
    """torch's IEEE square root on other devices (the CPU's is not: see
    :func:`hwsim.optim.rule_math.sqrt`, which the caller maps instead)."""
    return Stack(torch._foreach_sqrt(x.tensors))


def sign(x: Stack) -> Stack:
    return Stack(torch._foreach_sign(x.tensors))


def maximum(a: Stack, b) -> Stack:
    if isinstance(b, Stack):
        return Stack(torch._foreach_maximum(a.tensors, b.tensors))
    return Stack(torch._foreach_clamp_min(a.tensors, _number(b)))
