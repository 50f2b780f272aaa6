"""Per-group telemetry of the optimizer step: counts over each tensor's
telemetry sample (:func:`sample_stride`), gathered
in the step and summarized when read (see
:class:`~hwsim.optim.base.QuantizedOptimizer`'s ``telemetry``)."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from hwsim.kernels.jit import kernel
from hwsim.ops.telemetry import flushed_mask

TELEMETRY_SAMPLE = 4096  # about this many elements per tensor are sampled for telemetry
SAMPLE_RUN = 16  # in runs of this many consecutive elements (sample_stride)


def sample_stride(numel: int) -> int:
    """The run stride ``s`` of a tensor's telemetry sample: the runs of
    ``SAMPLE_RUN`` consecutive elements starting at ``0, s, 2s, ...``, about
    ``TELEMETRY_SAMPLE`` elements in all (every element, ``s = SAMPLE_RUN``,
    below twice that). Runs rather than single elements: a gather of 4096
    scattered elements touches 4096 cache lines, which cost more than a whole
    float SGD step; ``s`` is a multiple of the run, so float32 runs fill lines."""
    if numel < 2 * TELEMETRY_SAMPLE:
        return SAMPLE_RUN
    return numel // (TELEMETRY_SAMPLE // SAMPLE_RUN) // SAMPLE_RUN * SAMPLE_RUN


@kernel
def sample_position(i, stride):
    """The position in the telemetry sample of the first sampled element at
    flat index ``i`` or after it (``sample_stride`` ``stride``); at ``numel``:
    the sample's size."""
    run = i // stride
    offset = i - run * stride
    return run * SAMPLE_RUN + min(offset, SAMPLE_RUN)


@kernel
def sampled_index(m, stride):
    """The flat index of the ``m``-th sampled element."""
    return (m // SAMPLE_RUN) * stride + m % SAMPLE_RUN


@kernel
def state_counts(raw, state, stride, low, high):
    """A fixed-point state's telemetry on its sample, as ``Counts.add_state``
    counts it with torch ops (``flushed_mask``, ``kinds.at_limits``), for the
    fused step, whose per-tensor torch ops cost more than its kernel:
    ``raw[m]`` the value before quantization at the ``m``-th sampled element,
    ``state`` the stored values (flat). Returns (flushed: nonzero, not NaN,
    stored as 0; saturated: stored at ``low`` or ``high``)."""
    flushed = saturated = 0
    for m in range(raw.size):
        r, v = raw[m], state[sampled_index(m, stride)]
        flushed += r != 0 and v == 0 and r == r
        saturated += v == low or v == high
    return flushed, saturated


@kernel
def gather_sample(x, stride, out):
    """``out[m] = x[sampled_index(m, stride)]``: a flat array's telemetry sample."""
    for m in range(out.size):
        out[m] = x[sampled_index(m, stride)]


@kernel
def count_float_stalls(update, before, after, stride):
    """(nonzero, stalled) over the telemetry sample of a float weight:
    ``update`` and ``after`` are the flat update and weight, ``before`` the
    weight's sample gathered before the step; an update stalled when it is
    nonzero and left the weight unchanged."""
    nonzero = 0
    stalled = 0
    for m in range(before.size):
        i = sampled_index(m, stride)
        if update[i] != 0:
            nonzero += 1
            if after[i] == before[m]:
                stalled += 1
    return nonzero, stalled


@functools.lru_cache(maxsize=1024)
def sample_size(numel: int) -> int:
    """How many elements a tensor's telemetry sample holds."""
    return int(sample_position(numel, sample_stride(numel)))


@functools.lru_cache(maxsize=256)
def sample_index(numel: int, device) -> torch.Tensor:
    """The flat indices of a tensor's telemetry sample (what the kernel
    counts), for gathering it with torch."""
    stride = sample_stride(numel)
    m = torch.arange(sample_size(numel), device=device)
    return torch.div(m, SAMPLE_RUN, rounding_mode="floor") * stride + m % SAMPLE_RUN


def sample_of(t: torch.Tensor) -> torch.Tensor:
    """The telemetry sample of ``t`` (:func:`hwsim.optim.fused.sample_stride`), gathered."""
    return t.reshape(-1)[sample_index(t.numel(), t.device)]


class Counts:
    """Per-group telemetry, gathered in the step and summarized when read: per
    param the counts over its telemetry sample (nonzero updates, stalled ones,
    saturated weights: tensors on the torch path, ints from the kernel), the
    sample's size and the param's, and the sampled updates."""

    def __init__(self, target) -> None:
        # median_update_lsb's unit: the fixed-point target's LSB (samples hold
        # updates), 1 for a float target (samples hold updates in ulps), None: float weights
        self.unit = None if target is None else getattr(target, "lsb", 1.0)
        self.counts: list = []
        self.sizes: list[tuple[int, int]] = []  # (sampled, numel)
        self.samples: list = []
        self.states: dict[str, list] = {}  # per quantized state: [count tensors], (sampled, numel)

    def add_state(self, name: str, raw, stored, saturated, numel: int) -> None:
        """A state's telemetry sample before (``raw``) and after (``stored``)
        quantization, and where the stored value sits at its format's limits
        (:func:`hwsim.optim.kinds.saturated_sample`): how many nonzero values
        were flushed to 0, how many saturated."""
        flushed = flushed_mask(raw, stored)  # the one definition (hwsim.ops.telemetry)
        counts = torch.stack([torch.count_nonzero(flushed), torch.count_nonzero(saturated)])
        self.add_state_counts(name, counts, raw.numel(), numel)

    def add_state_counts(self, name: str, counts, sampled: int, numel: int) -> None:
        """:meth:`add_state`'s (flushed, saturated) ``counts`` over a sample of
        ``sampled`` elements, counted elsewhere (:func:`state_counts`)."""
        entry = self.states.setdefault(name, [[], []])
        entry[0].append(counts if torch.is_tensor(counts) else torch.tensor(counts))
        entry[1].append((sampled, numel))

    def add_float(self, update: torch.Tensor, unchanged: torch.Tensor, numel: int) -> None:
        """``update`` and ``unchanged``: the param's telemetry sample."""
        nz = update != 0
        self.counts.append(
            torch.stack(
                [
                    torch.count_nonzero(nz),
                    torch.count_nonzero(unchanged.logical_and_(nz)),
                    torch.zeros((), dtype=torch.int64, device=nz.device),
                ]
            )
        )
        self.sizes.append((update.numel(), numel))

    def add_values(self, update, unchanged, saturated, update_ulps, numel: int) -> None:
        """A float accumulator's (or weight's) step, on the telemetry sample:
        the update, where the accumulator did not change, where it (or the
        weight) sits at its format's limits, and the update in units in the
        last place of the accumulator before the step."""
        nz = update != 0
        stalled = unchanged.logical_and_(nz)
        self.counts.append(
            torch.stack(
                [
                    torch.count_nonzero(nz),
                    torch.count_nonzero(stalled),
                    torch.count_nonzero(saturated),
                ]
            )
        )
        self.sizes.append((update.numel(), numel))
        self.samples.append(update_ulps)

    def add_fixed(self, update, delta, acc, target, weight_saturated) -> None:
        """Full tensors but ``weight_saturated`` (the sample: where the weight
        sits at its format's limits, or None); counted on the telemetry
        sample, like the kernel."""
        numel = update.numel()
        update, delta, acc = sample_of(update), sample_of(delta), sample_of(acc)
        nz = update != 0
        sat = (acc == target.min_code).logical_or_(acc == target.max_code)
        if weight_saturated is not None:
            sat.logical_or_(weight_saturated)
        stalled = (delta == 0).logical_and_(nz)
        self.counts.append(
            torch.stack(
                [torch.count_nonzero(nz), torch.count_nonzero(stalled), torch.count_nonzero(sat)]
            )
        )
        self.sizes.append((update.numel(), numel))
        self.samples.append(update)

    def add_kernel(
        self, result: tuple[int, int, int, np.ndarray | None], numel: int, sampled: int
    ) -> None:
        """Counts from the fused kernel, or from NumPy on a float weight (no
        update sample: ``None``)."""
        nonzero, stalled, saturated, sample = result
        self.counts.append((nonzero, stalled, saturated))
        self.sizes.append((sampled, numel))
        if sample is not None:
            self.samples.append(sample)

    def summary(self) -> dict[str, float]:
        result = {"stall_fraction": 0.0, "saturation_fraction": 0.0, "median_update_lsb": math.nan}
        if not self.counts:
            return result
        tensors = [c for c in self.counts if torch.is_tensor(c)]
        host = iter(
            torch.stack(tensors).tolist() if tensors else []
        )  # one sync for the torch path's counts
        nonzero = stalled = saturated = 0.0
        for c, (sampled, numel) in zip(self.counts, self.sizes, strict=True):
            nz, st, sat = next(host) if torch.is_tensor(c) else c
            weight = numel / sampled if sampled else 0.0  # the elements each sampled one stands for
            nonzero += nz * weight
            stalled += st * weight
            saturated += sat * weight
        result["stall_fraction"] = stalled / nonzero if nonzero else 0.0
        total = sum(n for _, n in self.sizes)
        result["saturation_fraction"] = saturated / total if total else 0.0
        if self.states:
            result["state_flush_fraction"], result["state_saturation_fraction"] = self._states()
        if self.samples and self.unit is not None:
            sample = np.abs(
                np.concatenate(
                    [s.detach().cpu().numpy() if torch.is_tensor(s) else s for s in self.samples]
                )
            )
            sample = sample[sample != 0]
            if sample.size:
                result["median_update_lsb"] = float(np.median(sample)) / self.unit
        return result

    def _states(self) -> tuple[dict[str, float], dict[str, float]]:
        """Per quantized state: the fraction of its elements whose nonzero value
        was flushed to 0, and of those at the format's min or max."""
        flushed_of, saturated_of = {}, {}
        for name, (counts, sizes) in self.states.items():
            flushed = saturated = total = 0.0
            for (fl, sat), (sampled, numel) in zip(
                torch.stack(counts).tolist(), sizes, strict=True
            ):
                weight = numel / sampled if sampled else 0.0
                flushed, saturated, total = (
                    flushed + fl * weight,
                    saturated + sat * weight,
                    total + numel,
                )
            flushed_of[name] = flushed / total if total else 0.0
            saturated_of[name] = saturated / total if total else 0.0
        return flushed_of, saturated_of
