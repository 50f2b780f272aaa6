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
``(-x) + a`` (the same sum); ``x / a`` divides tensor by tensor (torch's
foreach division by a number may multiply by its reciprocal).

The pipeline's quantizers (:mod:`hwsim.torch_path.core`) take Stacks too,
unchanged: the in-place steps of the fixed-point rounding (``mul_``,
``add_``, ``sub_``, ``round_``, ``floor_``, ``trunc_``, ``clamp_``,
``copy_``) are ``_foreach_`` ops, and every other tensor method, operator or
torch function (``torch.where``, comparisons, ``to``, an ``out=``) is
applied tensor by tensor, its Stack arguments taken element by element.
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
        if not isinstance(other, Stack):  # tensor by tensor, as the per-tensor code divides
            return _each(self, "__truediv__", (other,), {})
        return Stack(torch._foreach_div(self.tensors, other.tensors))

    def __neg__(self) -> Stack:
        return Stack(torch._foreach_neg(self.tensors))

    def map(self, fn) -> Stack:
        """``fn`` applied to each tensor."""
        return Stack(fn(t) for t in self.tensors)

    @property
    def is_cpu(self) -> bool:
        return all(t.is_cpu for t in self.tensors)

    @property
    def dtype(self) -> torch.dtype | None:
        """The tensors' dtype, None where they differ."""
        dtypes = {t.dtype for t in self.tensors}
        return dtypes.pop() if len(dtypes) == 1 else None

    def to(self, *args, **kwargs) -> Stack:
        """Each tensor's ``to``: this Stack where none changes, else new tensors."""
        out = [t.to(*args, **kwargs) for t in self.tensors]
        same = [a is b for a, b in zip(out, self.tensors, strict=True)]
        if all(same):
            return self
        # a new Stack holds no tensor of this one: the caller may write it in place
        return Stack(t.clone() if s else t for t, s in zip(out, same, strict=True))

    # -- in place: the quantizers' steps -------------------------------------------
    def _inplace(self, op, other) -> Stack:
        if isinstance(other, Stack):
            if other.dtype != self.dtype:  # (a bool mask added: tensor by tensor)
                return _each(self, op.__name__.replace("_foreach_", ""), (other,), {})
            op(self.tensors, other.tensors)
        else:
            op(self.tensors, _number(other))
        return self

    def mul_(self, other) -> Stack:
        return self._inplace(torch._foreach_mul_, other)

    def add_(self, other) -> Stack:
        return self._inplace(torch._foreach_add_, other)

    def sub_(self, other) -> Stack:
        return self._inplace(torch._foreach_sub_, other)

    def copy_(self, other: Stack) -> Stack:
        torch._foreach_copy_(self.tensors, other.tensors)
        return self

    def clamp_(self, min=None, max=None) -> Stack:  # noqa: A002 (torch's names)
        if min is not None:
            torch._foreach_clamp_min_(self.tensors, _number(min))
        if max is not None:
            torch._foreach_clamp_max_(self.tensors, _number(max))
        return self

    def round_(self) -> Stack:
        torch._foreach_round_(self.tensors)
        return self

    def floor_(self) -> Stack:
        torch._foreach_floor_(self.tensors)
        return self

    def trunc_(self) -> Stack:
        torch._foreach_trunc_(self.tensors)
        return self

    # -- the rest, tensor by tensor ------------------------------------------------
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        values = [getattr(t, name) for t in self.tensors]
        if not callable(values[0]):
            return _wrap(values)
        return lambda *args, **kwargs: _each(self, name, args, kwargs)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        n = next(len(a.tensors) for a in (*args, *(kwargs or {}).values()) if isinstance(a, Stack))
        return _wrap([func(*_at(args, i), **_at(kwargs or {}, i)) for i in range(n)])

    __hash__ = None


def _elementwise(name: str):
    """The operator ``name``, tensor by tensor (comparisons and masks: torch
    has no foreach op for them)."""

    def op(self, other):
        return _each(self, name, (other,), {})

    op.__name__ = name
    return op


for _name in ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__and__"):
    setattr(Stack, _name, _elementwise(_name))


def _at(args, i):
    """Element ``i`` of every Stack among ``args`` (a tuple or a dict)."""
    if isinstance(args, dict):
        return {k: v.tensors[i] if isinstance(v, Stack) else v for k, v in args.items()}
    return tuple(a.tensors[i] if isinstance(a, Stack) else a for a in args)


def _each(stack: Stack, name: str, args, kwargs):
    """Method ``name`` of each tensor, its Stack arguments element by element."""
    return _wrap(
        [getattr(t, name)(*_at(args, i), **_at(kwargs, i)) for i, t in enumerate(stack.tensors)]
    )


def _wrap(values):
    """A Stack of tensors; other values (shapes, numbers) as a list."""
    return Stack(values) if all(isinstance(v, torch.Tensor) for v in values) else values


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
