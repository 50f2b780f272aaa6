"""The elementwise part of the optimizer step as one Numba pass (CPU tensors).

Per element, in the order of the pipeline in :mod:`hwsim.optim.base`:

    x = float64(source)
    x = Q_grad(x)                       (optional: the gradient format)
    x = sign(x)                         (optional: sign rules)
    v = x * scale                       the update (``scale`` = -lr for SGD)
    v = Q_update(v)                     (optional: the update format)
    d = code of v on the accumulator grid, overflow applied
    a = overflow(acc + d)               acc holds float64 codes, updated in place
    w = Q_weight(a * LSB_acc)           (optional: the weight format)
    param = w * LSB_w (or a * LSB_acc)  written into the parameter's storage

Stateless rules (SGD without momentum or weight decay, sign SGD) run all of it
from the raw gradient: one read of the gradient, one read and write of the
accumulator, one write of the weight. Rules with state compute their update
with torch ops first and pass it as ``source`` with ``scale`` = 1 and no
gradient stage.

The arithmetic is compute-bound (``python benchmarks/optim.py --breakdown``:
about 0.2 ns per element on two cores, no faster when the data sit in L2), so
the kernel does as few operations as the semantics allow: the multiplications
by powers of two merge with the learning rate where that is exact, and an
overflow step (two min/max per stage) is compiled out wherever a bound proves
it a no-op (:meth:`FusedStep.plan`). Every rounding goes through
``hwsim.kernels.scalar`` (``round_scaled``, ``value_to_code_float``, ...), which
``hwsim.torch_path.core`` mirrors op for op: the torch ops and this kernel give
the same bits, and the tests run every case both ways. Like ``torch.optim``'s
``fused=``, it is an implementation choice, never a different result.

The caller guarantees a finite source, checked with :func:`max_abs` first, so
the kernel never has to undo a write.
"""

from __future__ import annotations

import functools
import math
import sys

import numpy as np

from hwsim.kernels.jit import SERIAL_BELOW_ELEMENTWISE, kernel, prange, serial_and_parallel
from hwsim.kernels.scalar import (
    SATURATE,
    STOCHASTIC,
    counter_uniform,
    overflow_code_float,
    round_scaled,
    scale_value,
    scaled_to_code_float,
    value_to_code_float,
)
from hwsim.optim.precision import STREAM, mix_seed
from hwsim.torch_path.core import signed64

TELEMETRY_SAMPLE = 4096  # about this many elements per tensor are sampled for telemetry
NO_FORMAT = -1  # the rounding argument of a stage that has no format
WEIGHT_NONE, WEIGHT_LOW, WEIGHT_HIGH, WEIGHT_BOTH = 0, 1, 2, 3  # the weight code's reachable limits
CHUNK = 1 << 14  # elements per task of the parallel loop (fits L1/L2 per core)


def _max_abs_of(float_type, int_type, abs_mask: int):
    def run(x):
        # a max over the integer bits: an IEEE max reduction cannot be vectorized
        # without fast-math, an integer one can; for non-negative floats the bit
        # pattern orders like the value, with Inf and then NaN above every finite one
        bits = x.view(int_type)
        top = 0
        for i in prange(bits.size):
            top = max(top, bits[i] & abs_mask)
        as_float = np.empty(1, int_type)
        as_float[0] = top
        return np.float64(as_float.view(float_type)[0])

    return serial_and_parallel(run)


_MAX_ABS = {4: _max_abs_of(np.float32, np.int32, 0x7FFFFFFF), 8: _max_abs_of(np.float64, np.int64, 0x7FFFFFFFFFFFFFFF)}


def max_abs(x: np.ndarray) -> float:
    """max |x| of a flat float32/float64 array (0 when empty), in one read
    (parallel when large): Inf or NaN exactly when ``x`` holds one."""
    serial, parallel = _MAX_ABS[x.itemsize]
    return (parallel if x.size >= SERIAL_BELOW_ELEMENTWISE else serial)(x)


@kernel
def update_code(x, i, k, grad_fmt, update_fmt, acc_fmt, seeds, sign, grad_rounding, update_rounding, acc_rounding,
                overflow, grad_overflow, delta_overflow):
    """(the update, its code on the accumulator grid) of source element ``x``
    at flat index ``i``. The mode arguments are compile-time constants of the
    caller: once inlined, their branches fold away."""
    has_grad = grad_rounding != NO_FORMAT
    has_update = update_rounding != NO_FORMAT
    if has_grad:
        u = counter_uniform(seeds[0], i) if grad_rounding == STOCHASTIC else 0.0
        if grad_overflow:
            x = value_to_code_float(x, grad_fmt[0], grad_fmt[2], grad_fmt[3], grad_fmt[4], grad_rounding, overflow, u)
        else:
            x = round_scaled(scale_value(x, grad_fmt[0], grad_rounding), grad_rounding, u)
    if sign:
        x = np.sign(x)
    v = x * k[0]  # the update (unused, and compiled out, where merged and not sampled)
    if has_update:
        u = counter_uniform(seeds[1], i) if update_rounding == STOCHASTIC else 0.0
        s = value_to_code_float(v, update_fmt[0], update_fmt[2], update_fmt[3], update_fmt[4], update_rounding,
                                overflow, u) * k[1]
    elif has_grad or sign:
        # the input is an integer (a code, or a sign): the update's scalings merge
        # into one multiplication (exact: see FusedStep.plan)
        s = x * k[1]
    else:
        s = scale_value(v, k[1], acc_rounding)
    u = counter_uniform(seeds[2], i) if acc_rounding == STOCHASTIC else 0.0
    if delta_overflow:
        return v, scaled_to_code_float(s, acc_fmt[3], acc_fmt[4], acc_rounding, overflow, u)
    return v, round_scaled(s, acc_rounding, u)


@kernel
def weight_code_unclamped(a, i, k, seeds, weight_rounding):
    """The weight code of accumulator code ``a`` at flat index ``i``, before
    its overflow step (an integral float64)."""
    u = counter_uniform(seeds[3], i) if weight_rounding == STOCHASTIC else 0.0
    return round_scaled(a * k[2], weight_rounding, u)


@kernel
def clamp_sides(code, min_code, max_code, sides):
    """Saturate ``code`` on the reachable sides (``WEIGHT_*``); any numeric type."""
    if sides == WEIGHT_LOW or sides == WEIGHT_BOTH:
        code = max(code, min_code)
    if sides == WEIGHT_HIGH or sides == WEIGHT_BOTH:
        code = min(code, max_code)
    return code


@kernel
def weight_code(a, i, k, weight_fmt, seeds, weight_rounding, overflow, weight_overflow):
    """The weight code of accumulator code ``a`` at flat index ``i`` (modes as
    in :func:`update_code`)."""
    if weight_overflow == WEIGHT_BOTH and overflow != SATURATE:
        u = counter_uniform(seeds[3], i) if weight_rounding == STOCHASTIC else 0.0
        return scaled_to_code_float(a * k[2], weight_fmt[3], weight_fmt[4], weight_rounding, overflow, u)
    return clamp_sides(weight_code_unclamped(a, i, k, seeds, weight_rounding), weight_fmt[3], weight_fmt[4],
                       weight_overflow)


@functools.cache
def step_kernel(sign: bool, grad_rounding: int, update_rounding: int, acc_rounding: int, weight_rounding: int,
                overflow: int, overflows: tuple[bool, bool, int], int32_out: bool):
    """The (serial, parallel) kernels for one combination of stages and modes (compile-time
    constants, so the mode branches fold away and the loop vectorizes):

    ``kernel(source, acc, out, k, grad_fmt, update_fmt, acc_fmt, weight_fmt,
    seeds, sample, stride) -> (nonzero, stalled, saturated)``

    - ``source``: flat float32/float64 gradient (or update);
    - ``acc``: flat float64 accumulator codes (updated in place); ``out``: the
      parameter's flat storage (float32/float64);
    - ``k``: the constants ``(update, delta, weight)`` of :meth:`FusedStep.plan`
      (which checks that the merged multiplications give the reference's bits);
    - each ``*_fmt``: :func:`format_constants`, a 5-tuple of floats (ignored
      for a stage whose rounding is ``NO_FORMAT``);
    - ``seeds``: 4-tuple of int64 counter-noise seeds (grad, update,
      accumulator, weight);
    - ``overflows``: whether the overflow mode is applied to the gradient
      code and to the update in accumulator LSBs before it is added (bools),
      and to the weight code (``WEIGHT_*``: under saturation the side that
      can be reached); skipped only where a bound proves it a no-op (the
      clamps are a large part of the arithmetic);
    - ``int32_out``: the output (float32) is written as ``float32(int32(code))
      * float32(LSB)``, the weight code saturated in int32, which the caller
      has checked is exact (codes below 2^31 before saturation, the LSB and
      every weight normal in float32): the same value as ``float32(code *
      LSB + 0.0)``, with fewer full-width operations (the int32 and float32
      vectors are half the width of the float64 ones);
    - returns the telemetry of the elements at flat indices ``0, stride,
      2 stride, ...`` (as many as ``sample`` holds; empty turns it off): how
      many updates are nonzero, how many of those stalled (rounded to nothing
      on the accumulator grid), how many weights sit at saturation; ``sample``
      receives the updates themselves (before the update format). Counting every
      element would add vector reductions to the compute-bound loop.
    """
    has_weight = weight_rounding != NO_FORMAT
    grad_overflow, delta_overflow, weight_overflow = overflows
    if overflow != SATURATE and weight_overflow != WEIGHT_NONE:
        weight_overflow = WEIGHT_BOTH  # wrapping has no sides
    # The closure holds only ints and bools: Numba's disk cache keys a closure
    # by its pickled cell contents, and a dispatcher pickles with a random id.

    def run(source, acc, out, k, grad_fmt, update_fmt, acc_fmt, weight_fmt, seeds, sample, stride):
        n = source.size
        sample_size = sample.size
        flags = np.zeros(sample_size, np.int64)  # per sampled element: nonzero | stalled << 1 | saturated << 2
        for c in prange((n + CHUNK - 1) // CHUNK):
            lo = c * CHUNK
            src, chunk_acc, dst = source[lo:lo + CHUNK], acc[lo:lo + CHUNK], out[lo:lo + CHUNK]
            for j in range(src.size):
                i = lo + j
                d = update_code(np.float64(src[j]), i, k, grad_fmt, update_fmt, acc_fmt, seeds, sign, grad_rounding,
                                update_rounding, acc_rounding, overflow, grad_overflow, delta_overflow)[1]
                a = overflow_code_float(chunk_acc[j] + d, acc_fmt[3], acc_fmt[4], overflow)  # the sum is exact
                chunk_acc[j] = a
                if int32_out and has_weight:  # saturated in int32: half-width vector ops
                    w = np.int32(weight_code_unclamped(a, i, k, seeds, weight_rounding))
                    w = clamp_sides(w, np.int32(weight_fmt[3]), np.int32(weight_fmt[4]), weight_overflow)
                    dst[j] = np.float32(w) * np.float32(weight_fmt[1])
                elif int32_out:
                    dst[j] = np.float32(np.int32(a)) * np.float32(acc_fmt[1])
                elif has_weight:
                    w = weight_code(a, i, k, weight_fmt, seeds, weight_rounding, overflow, weight_overflow)
                    dst[j] = w * weight_fmt[1] + 0.0  # codes have no -0: nor do weights
                else:
                    dst[j] = a * acc_fmt[1] + 0.0
            # the telemetry of this chunk's sampled elements, while they are in cache
            for m in range((lo + stride - 1) // stride, min(sample_size, (lo + src.size + stride - 1) // stride)):
                i = m * stride
                # the update's code with its overflow step: under wrap the main loop may
                # leave it out (the sum wraps alike), but a wrapped-away update stalled
                v, d = update_code(np.float64(source[i]), i, k, grad_fmt, update_fmt, acc_fmt, seeds, sign,
                                   grad_rounding, update_rounding, acc_rounding, overflow, grad_overflow, True)
                a = acc[i]  # after the step
                saturated = a == acc_fmt[3] or a == acc_fmt[4]
                if has_weight:
                    w = weight_code(a, i, k, weight_fmt, seeds, weight_rounding, overflow, weight_overflow)
                    saturated = saturated or w == weight_fmt[3] or w == weight_fmt[4]
                sample[m] = v
                flags[m] = (v != 0.0) | ((v != 0.0 and d == 0.0) << 1) | (saturated << 2)
        nonzero = 0
        stalled = 0
        saturated = 0
        for m in range(sample_size):
            nonzero += flags[m] & 1
            stalled += (flags[m] >> 1) & 1
            saturated += flags[m] >> 2
        return nonzero, stalled, saturated

    return serial_and_parallel(run)


@functools.cache
def format_constants(fmt) -> tuple[float, float, float, float, float]:
    """(2^fl, LSB, 2^(wl - fl), min code, max code) of a FixedPoint, as floats
    (what the kernel's stages take); zeros for ``None``."""
    if fmt is None:
        return (0.0, 0.0, 0.0, 0.0, 0.0)
    return (2.0**fmt.fl, fmt.lsb, 2.0 ** (fmt.wl - fmt.fl), float(fmt.min_code), float(fmt.max_code))


_MIN_NORMAL = sys.float_info.min
_F32_MIN_NORMAL, _F32_MAX = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)
_NO_SEEDS = (0, 0, 0, 0)
_SEED_STREAMS = (STREAM["grad"], STREAM["update"], STREAM["accumulator"], STREAM["weight"])


def _normal(x: float) -> bool:
    return math.isfinite(x) and abs(x) >= _MIN_NORMAL


def _within(low: float, high: float, min_code: float, max_code: float) -> bool:
    """Whether every rounding of a value in [low, high] (LSB units; bounds
    computed with the kernel's own, monotone, float operations) is a code in
    [min_code, max_code]: then saturating or wrapping it is a no-op. Every
    rounding mode lands in [floor(low), ceil(high)]."""
    return math.floor(low) >= min_code and math.ceil(high) <= max_code


class FusedStep:
    """The fused step of one precision configuration: what depends only on the
    formats and modes, worked out once (:func:`fused_step` caches it), and the
    per-call part in :meth:`plan` and :meth:`__call__`.

    ``grad`` is the gradient format of a pointwise rule (``sign`` says which
    rule); a rule's own update comes in with ``grad=None, sign=False``.
    ``accumulator`` is the grid updates are added on (the accumulator, else the
    weight) and ``weight`` the weight format re-quantized from it, if any."""

    def __init__(self, sign: bool, grad, update, accumulator, weight, grad_rounding: int, update_rounding: int,
                 acc_rounding: int, weight_rounding: int, overflow: int):
        self.sign, self.overflow = sign, overflow
        self.has_grad, self.has_update = grad is not None, update is not None
        self.roundings = (NO_FORMAT if grad is None else grad_rounding,
                          NO_FORMAT if update is None else update_rounding,
                          acc_rounding,
                          NO_FORMAT if weight is None else weight_rounding)
        self.stochastic = tuple(r == STOCHASTIC for r in self.roundings)
        self.formats = tuple(format_constants(f) for f in (grad, update, accumulator, weight))
        self.merged_input = sign or grad is not None
        grad_c, update_c, acc_c, weight_c = self.formats
        self.grad_codes = grad_c[3:]
        self.acc_codes = acc_c[3:]
        self.input_top = 1.0 if sign else (max(-grad_c[3], grad_c[4]) if grad is not None else math.nan)
        self.input_lsb = grad.lsb if grad is not None and not sign else 1.0
        self.acc_scale = acc_c[0]
        if update is not None:  # the update's code in accumulator LSBs: exact
            self.update_delta = 2.0 ** (accumulator.fl - update.fl)
            self.update_bound = max(-update_c[3], update_c[4]) * self.update_delta
        if weight is not None:  # the accumulator's range on the weight grid decides the clamps
            self.k_weight = 2.0 ** (weight.fl - accumulator.fl)
            low = not _within(acc_c[3] * self.k_weight, 0.0, weight_c[3], math.inf)
            high = not _within(0.0, acc_c[4] * self.k_weight, -math.inf, weight_c[4])
            self.weight_overflow = WEIGHT_LOW * low + WEIGHT_HIGH * high
        else:
            self.k_weight, self.weight_overflow = 0.0, WEIGHT_NONE
        # codes written to a float32 parameter through int32 (see step_kernel): the
        # codes, and the weight codes before saturation, fit in int32; every value
        # is normal in float32; a weight code's overflow step is a clamp
        out_c = weight_c if weight is not None else acc_c
        before = (acc_c[3] * self.k_weight - 1, acc_c[4] * self.k_weight + 1) if weight is not None else out_c[3:]
        self.int32_out = (-(2.0**31) <= min(out_c[3], before[0]) and max(out_c[4], before[1]) < 2.0**31
                          and _F32_MIN_NORMAL <= out_c[1] and max(-out_c[3], out_c[4]) * out_c[1] < _F32_MAX
                          and (overflow == SATURATE or self.weight_overflow == WEIGHT_NONE))
        self._kernels: dict = {}

    def plan(self, scale: float, source_max: float) -> tuple[tuple[float, float, float], tuple[bool, bool, int]] | None:
        """The kernel's constants ``(update, delta, weight)`` and overflow
        steps for one call, or ``None`` where merged multiplications could
        round differently from the reference pipeline (a zero, subnormal or
        overflowing product; e.g. ``lr == 0``) or the update could overflow:
        the torch ops then run instead, with the same semantics.

        The constants: the update is ``rule_input * update`` (``-lr``, times
        the gradient LSB when the input is a gradient code); in accumulator
        LSBs it is ``rule_input * delta`` (merged), ``update code * delta``
        (with an update format: 2^(fa - fu)) or ``update * delta`` (a float
        input: 2^fa); a weight code is an accumulator code times ``weight`` =
        2^(fw - fa).

        Why merging is exact: a power-of-two multiple of a float is exact while
        it stays normal, and multiplying an integer ``x`` (a code or a sign,
        ``|x| >= 1`` when nonzero) by a normal constant rounds the same real
        number once either way: ``x * (lsb * scale * 2^fa) == ((x * lsb) *
        scale) * 2^fa``.

        ``source_max`` bounds |source| (:func:`max_abs`); with the
        formats' ranges it decides which overflow steps cannot change anything."""
        grad_overflow = False
        if self.has_grad:
            g_top = source_max * self.formats[0][0]
            grad_overflow = not (math.isfinite(g_top) and _within(-g_top, g_top, *self.grad_codes))
        if self.merged_input:
            top = self.input_top
            k_update = self.input_lsb * scale
            if not _normal(k_update):
                return None
        else:
            top, k_update = source_max, scale
        if not math.isfinite(top * abs(k_update)):
            return None  # the update itself could overflow: the torch ops raise
        if self.has_update:
            k_delta, bound = self.update_delta, self.update_bound
        elif self.merged_input:
            k_delta = k_update * self.acc_scale
            if not _normal(k_delta):
                return None
            bound = top * abs(k_delta)
        else:
            k_delta = self.acc_scale
            bound = top * abs(k_update) * k_delta
        if not math.isfinite(bound):
            return None
        if self.overflow == SATURATE:
            delta_overflow = not _within(-bound, bound, *self.acc_codes)
        else:  # modular: wrapping the sum alone is the same while the sum is exact
            delta_overflow = bound >= 2.0**51
        return (k_update, k_delta, self.k_weight), (grad_overflow, delta_overflow, self.weight_overflow)

    def __call__(self, source: np.ndarray, acc: np.ndarray, out: np.ndarray, scale: float, source_max: float,
                 seed: int, step: int, index: int, telemetry: bool):
        """Run the step on flat arrays (``acc``: float64 codes, updated in place;
        ``out``: the parameter's storage). Returns ``None`` having changed
        nothing where :meth:`plan` declines; else ``(nonzero, stalled,
        saturated, sample)`` as the kernel returns them (see
        :func:`step_kernel`; zeros and empty without ``telemetry``)."""
        planned = self.plan(scale, source_max)
        if planned is None:
            return None
        constants, overflows = planned
        n = source.size
        key = (overflows, out.dtype == np.float32 and self.int32_out)
        kernels = self._kernels.get(key)
        if kernels is None:
            kernels = self._kernels[key] = step_kernel(self.sign, *self.roundings, self.overflow, *key)
        run = kernels[n >= SERIAL_BELOW_ELEMENTWISE]  # small tensors: one thread
        seeds = _NO_SEEDS
        if any(self.stochastic):
            seeds = tuple(signed64(mix_seed(seed, step, index, stream)) if st else 0
                          for st, stream in zip(self.stochastic, _SEED_STREAMS, strict=True))
        stride = sample_stride(n)
        # the caller allocates the sample: once (not reproduced since), a cached
        # parallel variant failed to box an array it returned ('descr is NULL')
        sample = np.empty(-(-n // stride) if telemetry else 0)
        return (*run(source, acc, out, constants, *self.formats, seeds, sample, stride), sample)


@functools.cache
def fused_step(sign: bool, grad, update, accumulator, weight, grad_rounding: int, update_rounding: int,
               acc_rounding: int, weight_rounding: int, overflow: int) -> FusedStep:
    """The (cached) :class:`FusedStep` of a configuration."""
    return FusedStep(sign, grad, update, accumulator, weight, grad_rounding, update_rounding, acc_rounding,
                     weight_rounding, overflow)


def sample_stride(numel: int) -> int:
    """The stride of a tensor's telemetry sample: elements ``0, s, 2s, ...``,
    about ``TELEMETRY_SAMPLE`` of them (all, below twice that)."""
    return max(1, numel // TELEMETRY_SAMPLE)
