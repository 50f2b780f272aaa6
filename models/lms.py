"""Adaptive FIR filters trained by LMS and its sign variants, bit-true in fixed point.

The filter ``y(n) = sum_i w_i x(n - i)`` adapts with ``w_i <- w_i + mu g_i(n)``:

=============  =============================  =========================================
rule           update g_i(n)                  reference
=============  =============================  =========================================
``lms``        e(n) x(n-i)                    Widrow & Hoff 1960
``sign_error`` sign(e(n)) x(n-i)              Gersho 1984 (a.k.a. sign-LMS)
``sign_data``  e(n) sign(x(n-i))              Claasen & Mecklenbrauker 1981
``sign_sign``  sign(e(n)) sign(x(n-i))        Lucky 1966 (used in ITU G.721 ADPCM)
=============  =============================  =========================================

with ``e(n) = d(n) - y(n)``. Finite-precision LMS (Caraiscos & Liu 1984;
Gitlin, Mazo & Taylor 1973) stalls under round-to-nearest once
``|mu e x_i| < LSB_w / 2``; see ../shared/REFERENCES.md.

The sample-by-sample loop is one Numba kernel on int64 codes
(``hwsim.kernels.lms``; its torch twin is ``hwsim.torch_path.lms``, and the
formats, step code and kernel configuration are planned in ``hwsim.plan.lms``). Every quantity
has its own :class:`~hwsim.FixedPoint` format and rounding:

- ``data``: the input ``x`` and the desired signal ``d``;
- ``product``: each filter product ``w_i x(n-i)`` (formed exactly, then rounded);
- ``accumulator``: the MAC accumulator of the filter output; each product is
  cast to it (rounded, overflow) and added, with overflow after every
  addition, taps in the order i = 0 .. K-1 (DESIGN.md, "MAC-array GEMM");
- ``error``: ``e(n)``, rounded from the exact ``d - y``;
- ``update``: the exact update ``mu * e * x_i`` rounded onto the grid of the
  weight accumulator (this is where updates stall);
- ``weight_accumulator``: the master copy of the weights (DESIGN.md, "Weight
  accumulator"); the filter sees it rounded to ``weight``.

The step ``mu`` is a fixed-point constant with :data:`STEP_BITS` significant
bits (``mu = mu_code * 2^-step_fl``), so the update ``mu_code * e * x`` is an
exact integer product before its single rounding.

A role left at ``None`` gets a wide format (see :func:`resolve_formats`), so
mixing fixed and "practically exact" stages is possible; the all-float baseline
is :func:`lms_float`.

Stochastic rounding takes counter-based noise (``hwsim.kernels.scalar.counter_uniform``):
the uniform for sample n, slot i (tap, or K for the error) and role r is
``counter_uniform(seed, (n * (K + 1) + i) * 4 + r)``, so results do not depend
on how the samples are split into blocks, and :class:`TorchLMS` reproduces them.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

import hwsim
from hwsim.formats import FixedPoint
from hwsim.kernels.lms import lms_float_kernel, lms_kernel
from hwsim.kernels.scalar import apply_overflow, shift_round_code
from hwsim.modes import Overflow, Rounding
from hwsim.plan.lms import (
    MAX_CODE_BITS,
    RULES,
    STEP_BITS,
    LMSFormats,
    config_array,
    resolve_formats,
    rule_index,
    step_code,
)
from hwsim.torch_path import core as torch_core
from hwsim.torch_path.lms import lms_run_torch

__all__ = [
    "MAX_CODE_BITS",
    "RULES",
    "STEP_BITS",
    "BlockResult",
    "FixedLMS",
    "FloatLMS",
    "LMSFormats",
    "TorchLMS",
    "config_array",
    "lms_float",
    "resolve_formats",
    "step_code",
]


@dataclasses.dataclass
class BlockResult:
    """What one call to :meth:`FixedLMS.run` returns (values, not codes)."""

    y: np.ndarray
    """Filter outputs (float64 values of the accumulator codes)."""
    error: np.ndarray
    """Errors d - y as the filter used them (values of the error codes)."""
    nonzero_updates: int
    """Tap updates whose exact value mu*e*x was not zero."""
    stalls: int
    """Of those, the ones rounded to zero on the weight-accumulator grid."""
    saturated: int
    """Weight-accumulator additions that overflowed (clamped or wrapped)."""

    @property
    def stall_fraction(self) -> float:
        return self.stalls / self.nonzero_updates if self.nonzero_updates else 0.0


class FixedLMS:
    """A K-tap adaptive FIR filter on integer codes, run block by block.

    Args:
        taps: number of taps K >= 1.
        rule: ``"lms"``, ``"sign_error"``, ``"sign_data"`` or ``"sign_sign"``.
        data, weight, product, accumulator, error, weight_accumulator: formats
            (see the module docstring; ``None`` = :func:`resolve_formats` default).
        rounding: default rounding of every stage; ``data_rounding``,
            ``product_rounding``, ``accumulator_rounding``, ``error_rounding``,
            ``update_rounding``, ``weight_rounding`` override it per stage.
        overflow: ``"saturate"`` or ``"wrap"``, for every stage.
        seed: stochastic-rounding seed (counter-based noise).

    The state (weights, the last K-1 inputs, the sample counter) carries over
    between :meth:`run` calls, so running blocks equals one long run.

    >>> import numpy as np
    >>> from hwsim import FixedPoint
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal(4000); d = np.convolve(x, [0.5, -0.25])[:4000]
    >>> f = FixedLMS(2, "lms", data=FixedPoint(16, 12), weight=FixedPoint(16, 14))
    >>> r = f.run(x, d, mu=0.05)
    >>> np.round(f.weights, 3).tolist()
    [0.5, -0.25]
    """

    def __init__(
        self,
        taps: int,
        rule: str = "lms",
        *,
        data: FixedPoint | None = None,
        weight: FixedPoint | None = None,
        product: FixedPoint | None = None,
        accumulator: FixedPoint | None = None,
        error: FixedPoint | None = None,
        weight_accumulator: FixedPoint | None = None,
        rounding: str | Rounding = "nearest",
        data_rounding: str | Rounding | None = None,
        product_rounding: str | Rounding | None = None,
        accumulator_rounding: str | Rounding | None = None,
        error_rounding: str | Rounding | None = None,
        update_rounding: str | Rounding | None = None,
        weight_rounding: str | Rounding | None = None,
        overflow: str | Overflow = "saturate",
        seed: int = 0,
    ) -> None:
        if isinstance(taps, bool) or not isinstance(taps, (int, np.integer)) or taps < 1:
            raise ValueError(f"taps must be an integer >= 1, got {taps!r}")
        self.taps = int(taps)
        self.rule = rule
        self._rule = rule_index(rule)
        self.formats = resolve_formats(
            data,
            weight,
            product=product,
            accumulator=accumulator,
            error=error,
            weight_accumulator=weight_accumulator,
        )
        base = Rounding.parse(rounding)

        def pick(r):
            return base if r is None else Rounding.parse(r)

        self.roundings = {
            "data": pick(data_rounding),
            "product": pick(product_rounding),
            "accumulator": pick(accumulator_rounding),
            "error": pick(error_rounding),
            "update": pick(update_rounding),
            "weight": pick(weight_rounding),
        }
        self.overflow = Overflow.parse(overflow)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.seed = int(seed) & ((1 << 64) - 1)
        self.weight_codes = np.zeros(self.taps, dtype=np.int64)
        self.accumulator_codes = np.zeros(self.taps, dtype=np.int64)
        self.history = np.zeros(self.taps - 1, dtype=np.int64)
        self.samples_seen = 0
        r = self.roundings
        self._kernel = lms_kernel(
            self._rule,
            int(r["product"]),
            int(r["accumulator"]),
            int(r["error"]),
            int(r["update"]),
            int(r["weight"]),
            int(self.overflow),
        )

    @property
    def weights(self) -> np.ndarray:
        """The weights the filter uses (float64 values)."""
        return self.weight_codes * self.formats.weight.lsb

    def set_weights(self, values) -> None:
        """Load initial weights: rounded to nearest onto the weight-accumulator
        grid (saturating), and the weights the filter uses rounded to nearest
        from there."""
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (self.taps,):
            raise ValueError(f"weights must have shape ({self.taps},), got {values.shape}")
        f = self.formats
        self.accumulator_codes = np.asarray(hwsim.to_codes(values, f.weight_accumulator), np.int64)
        shift = f.weight_accumulator.fl - f.weight.fl
        self.weight_codes = np.array(
            [
                apply_overflow(
                    shift_round_code(c, shift, int(Rounding.NEAREST), 0.0),
                    f.weight.min_code,
                    f.weight.max_code,
                    int(self.overflow),
                )
                for c in self.accumulator_codes
            ],
            dtype=np.int64,
        )

    def data_codes(self, values, stream: int, offset: int) -> np.ndarray:
        """Codes of samples ``offset, offset+1, ...`` of input (``stream`` 1) or
        desired (``stream`` 2) signal in the data format. Stochastic data
        rounding draws counter noise at the global sample index, so the codes do
        not depend on how the signal is split into blocks."""
        values = np.ascontiguousarray(values, dtype=np.float64)
        r = self.roundings["data"]
        noise = None
        if r == Rounding.STOCHASTIC:
            noise = torch_core.counter_uniform(
                (self.seed + stream) & ((1 << 64) - 1), values.size, offset=offset
            ).numpy()
        return np.asarray(hwsim.to_codes(values, self.formats.data, r, self.overflow, noise=noise))

    def run(self, x, d, mu: float) -> BlockResult:
        """Filter and adapt over one block of input ``x`` and desired ``d``."""
        x = np.asarray(x, dtype=np.float64)
        d = np.asarray(d, dtype=np.float64)
        if x.ndim != 1 or x.shape != d.shape:
            raise ValueError(f"x and d must be 1-D of equal length, got {x.shape} and {d.shape}")
        # distinct noise streams for x and d, at the global sample index
        xc = self.data_codes(x, 1, self.samples_seen)
        dc = self.data_codes(d, 2, self.samples_seen)
        return self.run_codes(xc, dc, mu)

    def run_codes(self, x_codes: np.ndarray, d_codes: np.ndarray, mu: float) -> BlockResult:
        """:meth:`run` on data codes already in the data format."""
        xc = np.ascontiguousarray(x_codes, dtype=np.int64)
        dc = np.ascontiguousarray(d_codes, dtype=np.int64)
        if xc.ndim != 1 or xc.shape != dc.shape:
            raise ValueError(f"x and d must be 1-D of equal length, got {xc.shape} and {dc.shape}")
        f = self.formats
        for name, c in (("x", xc), ("d", dc)):
            if c.size and (c.min() < f.data.min_code or c.max() > f.data.max_code):
                raise ValueError(f"{name} codes outside the data format {f.data}")
        cfg = config_array(f, self.rule, mu)
        xp = np.concatenate([self.history, xc])
        y, e, counts = self._loop(xp, dc, cfg)
        if self.taps > 1:
            self.history = xp[xp.size - (self.taps - 1) :].copy()
        self.samples_seen += xc.size
        return BlockResult(
            y=y * f.accumulator.lsb,
            error=e * f.error.lsb,
            nonzero_updates=int(counts[0]),
            stalls=int(counts[1]),
            saturated=int(counts[2]),
        )

    def _loop(self, xp: np.ndarray, dc: np.ndarray, cfg: np.ndarray):
        """The sample loop (``hwsim.kernels.lms``): updates the weight and
        accumulator codes in place; returns (y codes, e codes, counts)."""
        y = np.empty(dc.size, dtype=np.int64)
        e = np.empty(dc.size, dtype=np.int64)
        counts = np.zeros(3, dtype=np.int64)
        self._kernel(
            xp,
            dc,
            np.int64(self.samples_seen),
            self.weight_codes,
            self.accumulator_codes,
            cfg,
            np.uint64(self.seed),
            y,
            e,
            counts,
        )
        return y, e, counts


def lms_float(
    x, d, taps: int, mu: float, rule: str = "lms", w0=None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float64 LMS over the whole signal: returns ``(y, e, w)``.

    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal(3000)
    >>> y, e, w = lms_float(x, np.convolve(x, [1.0, 0.5])[:3000], 2, 0.05)
    >>> np.round(w, 6).tolist()
    [1.0, 0.5]
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    d = np.ascontiguousarray(d, dtype=np.float64)
    if x.ndim != 1 or x.shape != d.shape:
        raise ValueError(f"x and d must be 1-D of equal length, got {x.shape} and {d.shape}")
    w = np.zeros(taps) if w0 is None else np.array(w0, dtype=np.float64)
    xp = np.concatenate([np.zeros(taps - 1), x])
    y, e = np.empty_like(x), np.empty_like(x)
    lms_float_kernel(xp, d, w, float(mu), rule_index(rule), y, e)
    return y, e, w


class TorchLMS(FixedLMS):
    """:class:`FixedLMS` with the sample loop in torch ops (any device).

    The same arithmetic on int64 tensors (``hwsim.torch_path.core``), vectorized
    over the taps; equal to the Numba kernel bit for bit, weights, outputs,
    errors and counts. It is slow on a CPU (tens of torch ops per sample) and
    serves as the cross-check and the device path.

    >>> import numpy as np
    >>> from hwsim import FixedPoint
    >>> x = np.random.default_rng(1).standard_normal(300); d = 0.5 * x
    >>> kw = dict(data=FixedPoint(12, 8), weight=FixedPoint(12, 10))
    >>> a, b = FixedLMS(2, **kw), TorchLMS(2, **kw)
    >>> bool((a.run(x, d, 0.05).error == b.run(x, d, 0.05).error).all())
    True
    """

    def __init__(self, *args, device: str | torch.device = "cpu", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.device = torch.device(device)

    def _loop(self, xp: np.ndarray, dc: np.ndarray, cfg: np.ndarray):
        """The torch twin of the sample loop (``hwsim.torch_path.lms``)."""
        y, e, counts, self.weight_codes, self.accumulator_codes, _ = lms_run_torch(
            xp,
            dc,
            self.samples_seen,
            self.weight_codes,
            self.accumulator_codes,
            cfg,
            self.formats,
            self.roundings,
            self.overflow,
            self.seed,
            self.rule,
            self.device,
        )
        return y, e, counts


class FloatLMS:
    """The float64 filter with :class:`FixedLMS`'s block interface (the
    baseline of a precision sweep; nothing stalls)."""

    def __init__(self, taps: int, rule: str = "lms") -> None:
        if isinstance(taps, bool) or not isinstance(taps, (int, np.integer)) or taps < 1:
            raise ValueError(f"taps must be an integer >= 1, got {taps!r}")
        self.taps, self.rule, self._rule = int(taps), rule, rule_index(rule)
        self.weights = np.zeros(self.taps)
        self.history = np.zeros(self.taps - 1)
        self.samples_seen = 0

    def run(self, x, d, mu: float) -> BlockResult:
        x = np.ascontiguousarray(x, dtype=np.float64)
        d = np.ascontiguousarray(d, dtype=np.float64)
        if x.ndim != 1 or x.shape != d.shape:
            raise ValueError(f"x and d must be 1-D of equal length, got {x.shape} and {d.shape}")
        xp = np.concatenate([self.history, x])
        y, e = np.empty_like(x), np.empty_like(x)
        lms_float_kernel(xp, d, self.weights, float(mu), self._rule, y, e)
        if self.taps > 1:
            self.history = xp[xp.size - (self.taps - 1) :].copy()
        self.samples_seen += x.size
        nonzero = int(np.count_nonzero(e)) * self.taps
        return BlockResult(y=y, error=e, nonzero_updates=nonzero, stalls=0, saturated=0)
