"""The elementwise part of the optimizer step as one Numba pass (CPU tensors).

Per element, in the order of the pipeline in :mod:`hwsim.optim.base`:

    x = float64(source)
    x = Q_grad(x)                       (optional: the gradient format)
    x = sign(x)                         (optional: sign rules)
    v = x * scale                       the update (``scale`` = -lr for SGD)
    v = Q_update(v)                     (optional: the update format)
    d = code of v on the accumulator grid, overflow applied
    a = overflow(acc + d)               acc holds int32 or float64 codes, updated in place
    w = Q_weight(a * LSB_acc)           (optional: the weight format)
    param = w * LSB_w (or a * LSB_acc)  written into the parameter's storage

Stateless rules (SGD without momentum or weight decay, sign SGD) run all of it
from the raw gradient: one read of the gradient, one read and write of the
accumulator, one write of the weight. Rules with state compute their update
with torch ops first and pass it as ``source`` with ``scale`` = 1 and no
gradient stage.

On two cores the kernel is bound by conversions and roundings and by memory
traffic about equally (``python benchmarks/optim.py --breakdown``: about 0.16
ns per element), so it does as few operations and moves as few bytes as the
semantics allow: the multiplications by powers of two merge with the learning
rate where that is exact; an overflow step (two min/max per stage) is compiled
out wherever a bound proves it a no-op (:meth:`FusedStep.plan`), the
accumulator's by a bound on its codes kept between steps
(:class:`AccumulatorBound`); int32 accumulator codes are added in int32 there,
and re-quantized to the weight in float32 where that is exact. Every rounding goes through
``hwsim.kernels.scalar`` (``round_scaled``, ``value_to_code_float``, ...), which
``hwsim.torch_path.core`` mirrors op for op: the torch ops and this kernel give
the same bits, and the tests run every case both ways. Like ``torch.optim``'s
``fused=``, it is an implementation choice, never a different result.

The source must be finite: the caller checks it with :func:`max_abs` first,
or, where the step can be taken back exactly (:meth:`FusedStep.speculate`:
int32 codes added without an overflow step, a parameter that holds the weight
of its accumulator), the kernel checks it in the same pass and undoes its
step when it finds a NaN, an Inf or a value its plan did not allow. That
saves the separate read of the gradient, about an eighth of the step.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from hwsim.kernels.jit import SERIAL_BELOW_ELEMENTWISE
from hwsim.optim.fused_check import (
    ANY_FINITE,
    AccumulatorBound,
    check_limits,
    max_abs,
    top_exponent,
    undo_step,
)
from hwsim.optim.fused_kernel import (
    CHUNK,
    CLAMP_BOTH,
    CLAMP_HIGH,
    CLAMP_LOW,
    CLAMP_NONE,
    step_kernel,
    step_modes,
)
from hwsim.optim.fused_plan import FusedPlan
from hwsim.optim.precision import STREAM, mix_seed
from hwsim.optim.telemetry import (
    SAMPLE_RUN,
    TELEMETRY_SAMPLE,
    count_float_stalls,
    gather_sample,
    sample_index,
    sample_position,
    sample_size,
    sample_stride,
    sampled_index,
)
from hwsim.torch_path.core import signed64

__all__ = [  # the fused step's surface (its kernel and checks live in fused_kernel, fused_check)
    "CHECK_IN_KERNEL_FROM",
    "CHUNK",
    "CLAMP_BOTH",
    "CLAMP_HIGH",
    "CLAMP_LOW",
    "CLAMP_NONE",
    "Draw",
    "SAMPLE_RUN",
    "TELEMETRY_SAMPLE",
    "AccumulatorBound",
    "FusedStep",
    "check_limits",
    "count_float_stalls",
    "fused_step",
    "gather_sample",
    "max_abs",
    "sample_index",
    "sample_position",
    "sample_size",
    "sample_stride",
    "sampled_index",
    "top_exponent",
    "undo_step",
]

CHECK_IN_KERNEL_FROM = (
    SERIAL_BELOW_ELEMENTWISE  # elements: smaller tensors are checked apart (QuantizedOptimizer)
)


_NO_SEEDS = np.zeros(4, np.int64)
_NO_SAMPLE = np.empty(0)  # telemetry off (the kernel writes nothing into it)
_SEED_STREAMS = (STREAM["grad"], STREAM["update"], STREAM["accumulator"], STREAM["weight"])


class Draw(NamedTuple):
    """Where a step's counter noise comes from (:func:`~hwsim.optim.
    precision.mix_seed`): the group's seed, the step count, the parameter's
    index."""

    seed: int
    step: int
    index: int


class FusedStep(FusedPlan):
    """The fused step of one precision configuration: its plan
    (:class:`~hwsim.optim.fused_plan.FusedPlan`, worked out once:
    :func:`fused_step` caches it) and the per-call part in :meth:`__call__`
    and :meth:`speculate`."""

    def __call__(
        self,
        source: np.ndarray,
        acc: np.ndarray,
        out: np.ndarray,
        scale: float,
        source_max: float,
        draw: Draw,
        telemetry: bool,
        bound: AccumulatorBound | None = None,
    ):
        """Run the step on flat arrays (``acc``: int32 or float64 codes, updated in place;
        ``out``: the parameter's storage). ``bound``: what is known of |acc|
        (read, and updated for the next step). Returns ``None`` having changed
        nothing where :meth:`plan` declines; else ``(nonzero, stalled,
        saturated, sample)`` as the kernel returns them (see
        :func:`step_kernel`; zeros and empty without ``telemetry``)."""
        prepared = self._prepare(source, acc, out, scale, source_max, draw, telemetry, bound)
        if prepared is None:
            return None
        key, args, _, top_after = prepared
        run = self._kernel(key, source.size)
        limits = ANY_FINITE[source.itemsize]  # the caller checked the source
        result = run(*args, source.view(limits.dtype), limits, False)
        if bound is not None:
            bound.top = top_after
        return (*result[:3], args[5])

    def speculate(
        self,
        source: np.ndarray,
        acc: np.ndarray,
        out: np.ndarray,
        scale: float,
        exponent: int,
        draw: Draw,
        telemetry: bool,
        bound: AccumulatorBound,
    ):
        """The step on a source nobody has checked yet, planned for |source| <=
        2^(``exponent`` + 1) (``exponent``: as :func:`top_exponent`'s, from the
        previous step, so the plan allows for twice its max) and checked in
        the same pass: the separate read of :func:`max_abs` saved.

        Returns ``None``, having changed nothing, where it cannot run so: the
        plan declines, the codes are float64 or the sum may need its overflow
        step (the undo needs an int32 addition), or the weight rounding is
        stochastic (the weights of the codes before the step could not be
        recomputed); the caller then checks the source and calls the step.
        Returns ``False``, having changed nothing (the kernel's step is
        undone), where the source holds a NaN, an Inf or a magnitude above the
        limit. Else ``(nonzero, stalled, saturated, sample, exponent, undo)``:
        the step's telemetry as :meth:`__call__`'s, the exponent of its max
        |source|, and the token :func:`undo_step` takes to take the step back."""
        if self.stochastic[3] or acc.dtype.kind == "f":
            return None
        itemsize = source.itemsize
        checked = check_limits(itemsize, exponent)
        if checked is None:
            return None
        limit, limits = checked
        prepared = self._prepare(source, acc, out, scale, limit, draw, telemetry, bound)
        if prepared is None or prepared[2][2] != CLAMP_NONE:
            return None
        key, args, _, top_after = prepared
        run = self._kernel(key, source.size)
        bits = source.view(limits.dtype)
        result = run(*args, bits, limits, False)
        if result[3]:
            run(*args, bits, limits, True)
            return False
        before, bound.top = bound.top, top_after
        return (
            *result[:3],
            args[5],
            top_exponent(result[4], itemsize),
            (run, args, bits, limits, bound, before),
        )

    def _prepare(
        self,
        source: np.ndarray,
        acc: np.ndarray,
        out: np.ndarray,
        scale: float,
        source_max: float,
        draw: Draw,
        telemetry: bool,
        bound: AccumulatorBound | None,
    ):
        """``(kernel key, the kernel's first arguments, overflows, bound after)``
        of one call, or ``None`` where :meth:`plan` declines."""
        base = self._constants(scale, source_max)
        if base is None:
            return None
        constants, grad_overflow, delta_overflow, delta_top = base
        known = bound is not None and bound.top is not None
        acc_sides, weight_sides, top_after = self._sides(
            bound.top if known else self.acc_top, delta_top
        )
        if bound is not None and (acc_sides or weight_sides):
            acc_sides, weight_sides, top_after = bound.tighten(
                self, acc, delta_top, acc_sides, weight_sides, top_after
            )
        n = source.size
        int_acc = 0 if acc.dtype.kind == "f" else (2 if self.acc_top < 2.0**24 else 1)
        overflows = (grad_overflow, delta_overflow, acc_sides, weight_sides)
        key = (overflows, self.int32_out and out.itemsize == 4, int_acc)
        seeds = _NO_SEEDS
        if self.any_stochastic:
            seeds = np.array(
                [
                    signed64(mix_seed(*draw, stream)) if st else 0
                    for st, stream in zip(self.stochastic, _SEED_STREAMS, strict=True)
                ],
                np.int64,
            )
        if telemetry:
            stride = sample_stride(n)
            # the caller allocates the sample: once (not reproduced since), a cached
            # parallel variant failed to box an array it returned ('descr is NULL')
            sample = np.empty(sample_size(n))
        else:
            stride, sample = 1, _NO_SAMPLE
        return key, (source, acc, out, constants, seeds, sample, stride), overflows, top_after

    def modes(self, key) -> int:
        """The kernel's ``modes`` (:func:`step_modes`) of a call's ``key``
        (:meth:`_prepare`'s first result), worked out once per key."""
        modes = self._modes.get(key)
        if modes is None:
            modes = self._modes[key] = step_modes(self.sign, self.roundings, self.overflow, *key)
        return modes

    def _kernel(self, key, n: int):
        """The kernel of a call's ``key`` for ``n`` elements (one thread for
        small tensors), compiled on first use."""
        kernels = self._kernels.get(key)
        if kernels is None:
            kernels = self._kernels[key] = step_kernel(
                self.sign, *self.roundings, self.overflow, *key
            )
        return kernels[n >= SERIAL_BELOW_ELEMENTWISE]


# the (cached) FusedStep of a configuration: one plan per distinct set of formats
fused_step = functools.cache(FusedStep)
