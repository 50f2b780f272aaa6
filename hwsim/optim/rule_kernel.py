"""The rules with state, fused on the CPU: one Numba pass from the raw
gradient to the update, each rule's math compiled from its one definition
in :mod:`hwsim.optim.rule_math` (the torch path runs the same functions on
tensors, so both give the same bits).

Per element: ``g = Q_grad(float64(grad))``, ``w = acc * LSB`` (where the
rule decays), the rule's math with each state written through
:func:`~hwsim.optim.rule_math.store` (quantized to its fixed-point format in
place, with the same counter noise streams as the torch path), and the
update written to a float64 buffer. The pipeline's tail (update format,
accumulator, weight) is the existing fused pass (:mod:`hwsim.optim.fused`),
planned from the update's max |value|, which this pass returns along with
a count of non-finite updates.

Numba sees the rule's helpers (``sqrt``, ``sign``, ``maximum``, ``store``)
through the overloads below, and every mode (the rule's flags, the state
formats present, the roundings) as bits of one int, a compile-time constant
of the kernel's closure: once inlined, the branches fold away.
"""

from __future__ import annotations

import functools
import sys
import types

import numpy as np
from numba.extending import overload

from hwsim.kernels import scalar
from hwsim.kernels.jit import (
    COMPILED_INTO_CALLERS,
    SERIAL_BELOW_ELEMENTWISE,
    kernel,
    prange,
    serial_and_parallel,
    source_salt,
)
from hwsim.kernels.scalar import STOCHASTIC, counter_uniform, value_to_code_float
from hwsim.optim import rule_math as rm
from hwsim.optim import telemetry
from hwsim.optim.fused_kernel import CHUNK, format_constants, sample_chunk, totals
from hwsim.optim.fused_stages import add_update
from hwsim.optim.fused_stages import unpack as unpack_tail
from hwsim.optim.telemetry import sample_stride, sampled_index

# the kernel's bits of ``opts``, above the rule's flags
STATE_FORMAT = rm.FLAG_BITS  # 3 bits: slot k has a fixed-point state format
STATE_ROUNDING = rm.FLAG_BITS + 3  # 3 bits: the states' rounding
WRAPPING = rm.FLAG_BITS + 6  # overflow mode: wrap
USED = rm.FLAG_BITS + 7  # 3 bits: slot k is written back
MAGNITUDE = np.int64(0x7FFFFFFFFFFFFFFF)  # a float64's bits without the sign
INF_BITS = int(np.array(np.inf).view(np.int64))


@overload(rm.sqrt)
def _sqrt(x):
    return lambda x: np.sqrt(x)


@overload(rm.sign)
def _sign(x):
    return lambda x: np.sign(x)


@overload(rm.maximum)
def _maximum(a, b):
    return lambda a, b: np.maximum(a, np.float64(b))


@kernel(**COMPILED_INTO_CALLERS)
def stored_value(x, slot, i, seeds, fmts, opts):
    """``x`` quantized to state ``slot``'s format, if it has one."""
    if not (opts >> (STATE_FORMAT + slot)) & 1:
        return x
    rounding = (opts >> STATE_ROUNDING) & 7
    overflow = (opts >> WRAPPING) & 1
    u = counter_uniform(seeds[1 + slot], i) if rounding == STOCHASTIC else 0.0
    f = fmts[slot]
    return value_to_code_float(x, f[0], f[2], f[3], f[4], rounding, overflow, u) * f[1]


@overload(rm.store)
def _store(x, slot, at, opts):
    """``at``: ``(flat index, seeds, state formats)`` in the step (no array:
    a tuple holding one is reference-counted per element, which stops the
    loop's vectorization); ``(i, seeds, formats, raw, m)`` in the telemetry
    pass (:func:`sample_kernel`), which keeps ``x`` in ``raw[slot, m]``."""
    if len(at.types) == 5:

        def record(x, slot, at, opts):
            i, seeds, fmts, raw, m = at
            raw[slot, m] = x
            return stored_value(x, slot, i, seeds, fmts, opts)

        return record
    return lambda x, slot, at, opts: stored_value(x, slot, at[0], at[1], at[2], opts)


SALT = source_salt(rm, scalar, telemetry, sys.modules[__name__])
COMPILED = {name: kernel(entry.math, **COMPILED_INTO_CALLERS) for name, entry in rm.MATH.items()}


@kernel(**COMPILED_INTO_CALLERS)
def gradient_value(x, i, c, seeds, opts, grad_rounding):
    """The gradient element ``x`` on its format's grid (``grad_rounding`` < 0: none)."""
    if grad_rounding < 0:
        return x
    u = counter_uniform(seeds[0], i) if grad_rounding == STOCHASTIC else 0.0
    code = value_to_code_float(x, c[0], c[2], c[3], c[4], grad_rounding, (opts >> WRAPPING) & 1, u)
    return code * c[1]


@kernel(**COMPILED_INTO_CALLERS)
def unpack(h, c, s):
    """The kernel's tuples: 8 hyperparameters, the gradient format, the
    three state formats, the 4 seeds (see :func:`rule_kernel`)."""
    hyper = (h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7])
    seeds = (s[0], s[1], s[2], s[3])
    fmts = (
        (c[6], c[7], c[8], c[9], c[10]),
        (c[11], c[12], c[13], c[14], c[15]),
        (c[16], c[17], c[18], c[19], c[20]),
    )
    return hyper, (c[0], c[1], c[2], c[3], c[4]), fmts, seeds


def _bind(body, rule: str, kind: str):
    """``body`` with its global ``RULE`` bound to ``rule``'s compiled math,
    named per rule (Numba's disk cache names a function by its qualified
    name: one name per rule and kind)."""
    scope = dict(body.__globals__, RULE=COMPILED[rule])
    fn = types.FunctionType(body.__code__, scope, f"{kind}_{rule}", None, body.__closure__)
    fn.__qualname__ = f"{kind}_{rule}"
    return fn


def _sample_run(opts: int, grad_rounding: int):
    salt = SALT

    def run(grad, states, acc, upd, h_array, c, seed_array, stride, raw):
        h, grad_c, fmts, seeds = unpack(h_array, c, seed_array)
        s0, s1, s2 = states
        for m in range(raw.shape[1] + 0 * salt):
            i = sampled_index(m, stride)
            g = gradient_value(np.float64(grad[i]), i, grad_c, seeds, opts, grad_rounding)
            at = (i, seeds, fmts, raw, m)
            upd[i] = RULE(g, acc[i] * c[5], (s0[i], s1[i], s2[i]), h, opts, at)[0]  # noqa: F821
        return 0

    return run


@functools.cache
def sample_kernel(rule: str, opts: int, grad_rounding: int):
    """The telemetry pass of :func:`rule_kernel`, run before it (on the
    states before the step), on the telemetry sample only:

    ``kernel(grad, (s0, s1, s2), acc, upd, h, constants, seeds, stride, raw)``

    writes into ``raw[k, m]`` the value state ``k`` had before its
    quantization at the ``m``-th sampled element (stride ``stride``), and
    the update into ``upd`` at its flat index, the same arithmetic as the
    step's."""
    return kernel(_bind(_sample_run(opts, grad_rounding), rule, "rule_sample"))


# the single pass's ``constants``: the rule's 8 hyperparameters and 21 constants
# (as rule_kernel's), the tail's 23 (FusedStep's), the bound on |update|
RULE_CONSTANTS, TAIL_CONSTANTS = 8, 29
BOUND_AT = 52


RULE_ONLY = -1  # ``modes`` of the rule's pass alone: the update into a buffer
_NO_SAMPLE = np.empty(0)


def _run(opts: int, grad_rounding: int, modes: int):
    """The body of :func:`rule_kernel` for one configuration (ints only in the
    closure: Numba's disk cache keys a closure by its cells)."""
    write0, write1, write2 = (opts >> USED) & 1, (opts >> (USED + 1)) & 1, (opts >> (USED + 2)) & 1
    alone = modes == RULE_ONLY
    tail_modes = 0 if alone else modes
    salt = SALT  # a cell: the disk cache's key changes with the rule math's source

    def run(grad, states, acc, out, constants, seed_array, sampled, sample, stride):
        n = grad.size + 0 * salt
        chunks = (n + CHUNK - 1) // CHUNK
        # per chunk: nonzero, stalled, saturated, beyond the bound, max |update| bits
        counts = np.zeros((chunks, 5), np.int64)
        limit, acc_lsb = constants[BOUND_AT], constants[RULE_CONSTANTS + 5]
        s0, s1, s2 = states
        for chunk in prange(chunks):
            # (the tuples are built per chunk: a parallel loop takes no tuple of tuples)
            h, grad_c, fmts, seeds = unpack(
                constants[:RULE_CONSTANTS], constants[RULE_CONSTANTS:], seed_array
            )
            k, tail_fmts, tail_seeds = unpack_tail(constants[TAIL_CONSTANTS:], seed_array[4:])
            lo = chunk * CHUNK
            hi = min(n, lo + CHUNK)
            # slices indexed from 0: no negative-index wraparound, so the loop vectorizes
            src, a, b, d = grad[lo:hi], s0[lo:hi], s1[lo:hi], s2[lo:hi]
            codes, dst = acc[lo:hi], out[lo:hi]
            beyond = 0
            for j in range(src.size):
                i = lo + j
                g = gradient_value(np.float64(src[j]), i, grad_c, seeds, opts, grad_rounding)
                w = codes[j] * acc_lsb  # the master weight, before this element's step
                update, s = RULE(g, w, (a[j], b[j], d[j]), h, opts, (i, seeds, fmts))  # noqa: F821
                if write0:
                    a[j] = s[0]
                if write1:
                    b[j] = s[1]
                if write2:
                    d[j] = s[2]
                if alone:
                    dst[j] = update
                else:
                    beyond += not abs(update) <= limit  # a NaN too
                    add_update(
                        update, i, codes, j, dst, k, tail_fmts, tail_seeds, tail_modes, False
                    )
            if alone:
                # max |update| as the bits of its magnitude (an integer max vectorizes; above
                # Inf's bits: a NaN), read while the chunk is in cache
                bits = dst.view(np.int64)
                top = 0
                for j in range(bits.size):
                    top = max(top, bits[j] & MAGNITUDE)
                counts[chunk, 4] = top
            else:
                counts[chunk, 3] = beyond
                nonzero, stalled, saturated = sample_chunk(
                    sampled, acc, lo, src.size, stride, sample, k, tail_fmts, tail_seeds, modes
                )
                counts[chunk, 0], counts[chunk, 1], counts[chunk, 2] = nonzero, stalled, saturated
        return totals(counts)

    return run


@functools.cache
def rule_kernel(rule: str, opts: int, grad_rounding: int, modes: int = RULE_ONLY):
    """(serial, parallel) kernels of ``rule`` for one configuration:

    ``kernel(grad, (s0, s1, s2), acc, out, constants, seeds, sampled, sample, stride)
    -> (nonzero, stalled, saturated, beyond, top)``

    Per element the gradient format, the rule's math (each state quantized
    and written in place: ``s0..s2``, an unused slot any array of the size,
    left unwritten; the master weight is ``acc * LSB``), then:

    - ``modes`` ``RULE_ONLY``: the update into ``out`` (float64), ``top``
      the largest bits of |update| (above Inf's where one is not finite),
      the rest 0;
    - else the whole step in one pass: the update added by the fused step's
      stages (``modes``: :meth:`~hwsim.optim.fused.FusedStep.modes`,
      planned for a bound on |update| that the rule's math proves,
      ``RuleMath.bound``) into ``acc``, the weight into ``out`` (the
      parameter's flat storage); ``beyond`` counts updates above the bound
      or NaN (none, if the bound is right: the caller raises); the
      telemetry of the sampled elements (``sampled``: an array of the
      gradient's size holding the updates at the sample's indices,
      :func:`sample_kernel` writes them before the step; ``sample`` and
      ``stride`` as the fused step's).

    ``constants``: the rule's hyperparameters (8), the gradient format
    (:func:`format_constants`), the accumulator's LSB, the three state
    formats, the fused step's constants (23, or zeros), the bound;
    ``seeds``: the gradient's and the three states' counter-noise seeds, the
    fused step's 4."""
    return serial_and_parallel(_bind(_run(opts, grad_rounding, modes), rule, "rule_kernel"))


def kernel_options(opts: int, used, state_formats, state_rounding: int, wrap: bool) -> int:
    """The kernel's ``opts``: the rule's flags plus the slots written back,
    the slots with a format, their rounding and the overflow mode."""
    for k, (u, f) in enumerate(zip(used, state_formats, strict=False)):
        opts |= (u << (USED + k)) | ((f is not None) << (STATE_FORMAT + k))
    return opts | (state_rounding << STATE_ROUNDING) | (int(wrap) << WRAPPING)


def run_rule(rule, opts, grad_rounding, arrays, h, constants, seeds, raw=None):
    """Run :func:`rule_kernel`'s rule pass alone on ``arrays = (grad, s0, s1,
    s2, acc, upd)`` (one thread for small tensors): ``(max |update|, whether
    one is not finite)``; first, where ``raw`` (3, sample size) is given,
    :func:`sample_kernel` into it."""
    hyper = np.zeros(RULE_CONSTANTS)
    hyper[: len(h)] = h
    grad, states, acc, upd = arrays[0], tuple(arrays[1:4]), arrays[4], arrays[5]
    if raw is not None:
        stride = sample_stride(grad.size)
        sample = sample_kernel(rule, opts, grad_rounding)
        sample(grad, states, acc, upd, hyper, constants, seeds, stride, raw)
    kernels = rule_kernel(rule, opts, grad_rounding)
    run = kernels[grad.size >= SERIAL_BELOW_ELEMENTWISE]
    padded = np.concatenate([hyper, constants, np.zeros(BOUND_AT + 1 - TAIL_CONSTANTS)])
    all_seeds = np.concatenate([seeds, np.zeros(4, np.int64)])
    top = run(grad, states, acc, upd, padded, all_seeds, upd, _NO_SAMPLE, 1)[4]
    return float(np.array(top).view(np.float64)), top >= INF_BITS


def constants_of(grad_format, acc_lsb: float, state_formats) -> np.ndarray:
    """The kernel's ``constants`` array."""
    slots = [format_constants(f) for f in state_formats]
    slots += [format_constants(None)] * (3 - len(slots))
    return np.array([*format_constants(grad_format), acc_lsb, *sum(slots, ())])
