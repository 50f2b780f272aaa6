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

The sample-by-sample loop is one Numba kernel on int64 codes. Every quantity
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
import functools
import math

import numpy as np
import torch

import hwsim
from hwsim.formats import FixedPoint
from hwsim.kernels.jit import kernel
from hwsim.kernels.scalar import apply_overflow, counter_uniform, shift_round_code
from hwsim.modes import Overflow, Rounding
from hwsim.torch_path import core as torch_core

RULES = ("lms", "sign_error", "sign_data", "sign_sign")
STEP_BITS = 16
"""Significant bits of the step size code: mu_code in [2^15, 2^16]."""

MAX_CODE_BITS = 62
# noise roles (per tap; the error uses slot K with role ROLE_ERROR)
ROLE_PRODUCT, ROLE_ACCUMULATE, ROLE_UPDATE, ROLE_WEIGHT = 0, 1, 2, 3
ROLE_ERROR = 0
N_ROLES = 4

# the cfg array the kernel receives (int64), by index
(
    C_P_SHIFT,
    C_P_MIN,
    C_P_MAX,  # product: exact w*x -> product grid
    C_A_SHIFT,
    C_A_MIN,
    C_A_MAX,  # product grid -> accumulator grid, accumulator range
    C_D_SHIFT,
    C_Y_SHIFT,  # d and y aligned onto F = max(fl_data, fl_acc)
    C_E_SHIFT,
    C_E_MIN,
    C_E_MAX,  # exact error (at F) -> error grid
    C_MU,  # step code
    C_U_SHIFT,
    C_WA_MIN,
    C_WA_MAX,  # exact update -> weight-accumulator grid, its range
    C_W_SHIFT,
    C_W_MIN,
    C_W_MAX,  # weight accumulator -> weight grid, weight range
    C_P_EXACT,
    C_A_EXACT,  # 1 when the product / cast to the accumulator is exact
    C_LEN,
) = range(21)

# counts the kernel accumulates, by index
N_NONZERO, N_STALLS, N_SATURATED = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class LMSFormats:
    """The format of every quantity of a fixed-point LMS filter (all resolved)."""

    data: FixedPoint
    weight: FixedPoint
    product: FixedPoint
    accumulator: FixedPoint
    error: FixedPoint
    weight_accumulator: FixedPoint


def resolve_formats(
    data: FixedPoint | None = None,
    weight: FixedPoint | None = None,
    *,
    product: FixedPoint | None = None,
    accumulator: FixedPoint | None = None,
    error: FixedPoint | None = None,
    weight_accumulator: FixedPoint | None = None,
) -> LMSFormats:
    """Fill in the roles left at ``None`` and check that no intermediate can
    overflow int64.

    Defaults: ``data`` fx20.16, ``weight`` fx32.28; ``product`` exact
    (fl = fl_w + fl_data, wl = wl_w + wl_data); ``accumulator`` the product
    grid with 8 guard bits (exact for up to 256 taps); ``error`` 12 bits more than the data (at most ``48 - data.wl``, which
    keeps ``mu_code * e * x`` inside int64) with two more integer bits;
    ``weight_accumulator`` the weight itself.

    >>> f = resolve_formats(FixedPoint(16, 12), FixedPoint(16, 14))
    >>> str(f.product), str(f.error), str(f.weight_accumulator)
    ('fx32.26', 'fx28.22', 'fx16.14')
    """
    data = data if data is not None else FixedPoint(20, 16)
    weight = weight if weight is not None else FixedPoint(32, 28)
    for name, fmt in (
        ("data", data),
        ("weight", weight),
        ("product", product),
        ("accumulator", accumulator),
        ("error", error),
        ("weight_accumulator", weight_accumulator),
    ):
        if fmt is not None and (not isinstance(fmt, FixedPoint) or not fmt.signed):
            raise ValueError(f"LMS {name} format must be a signed FixedPoint or None, got {fmt!r}")
    if weight.wl + data.wl > MAX_CODE_BITS:
        raise ValueError(
            f"LMS weight {weight} times data {data} needs {weight.wl + data.wl} bits, beyond the "
            f"{MAX_CODE_BITS} an int64 code allows here; narrow the formats"
        )
    # exact defaults: a product of two signed codes needs wl_w + wl_data bits;
    # the accumulator gets 8 guard bits (256 taps cannot overflow it)
    product = (
        product if product is not None else FixedPoint(weight.wl + data.wl, weight.fl + data.fl)
    )
    if accumulator is None:
        accumulator = FixedPoint(min(MAX_CODE_BITS, product.wl + 8), product.fl)
    if error is None:
        wl = min(48 - data.wl, data.wl + 12)
        if wl < 2:
            raise ValueError(
                f"data format {data} is too wide for the default error format; "
                "give an explicit error format"
            )
        error = FixedPoint(wl, wl - (data.int_bits + 2))
    weight_accumulator = weight_accumulator if weight_accumulator is not None else weight
    f = LMSFormats(data, weight, product, accumulator, error, weight_accumulator)
    _check_bits(f)
    return f


def _check_bits(f: LMSFormats) -> None:
    """Every intermediate is an int64; refuse formats that could overflow one.

    Each check bounds a magnitude by 2^bits (a signed code of ``wl`` bits is
    below 2^(wl-1)); 2^62 leaves room for the one addition that follows.
    """
    fine = max(f.data.fl, f.accumulator.fl)

    def need(what: str, bits: int) -> None:
        if bits > MAX_CODE_BITS:
            raise ValueError(
                f"LMS formats {_describe(f)}: {what} can reach 2^{bits}, beyond the "
                f"2^{MAX_CODE_BITS} an int64 code allows here; narrow the formats involved"
            )

    need("the product w*x", f.weight.wl - 1 + f.data.wl - 1)
    need(
        "the product aligned to the accumulator",
        f.product.wl - 1 + max(0, f.accumulator.fl - f.product.fl),
    )
    need("d aligned for the error", f.data.wl - 1 + fine - f.data.fl + 1)
    need("y aligned for the error", f.accumulator.wl - 1 + fine - f.accumulator.fl + 1)
    need("the update mu*e*x", STEP_BITS + f.error.wl - 1 + f.data.wl - 1)
    if f.weight_accumulator.fl < f.weight.fl:
        raise ValueError(
            f"weight_accumulator {f.weight_accumulator} must have at least the weight's "
            f"fractional bits ({f.weight}): it holds the bits below the weight LSB"
        )


def _describe(f: LMSFormats) -> str:
    return ", ".join(f"{fld.name}={getattr(f, fld.name)}" for fld in dataclasses.fields(f))


def step_code(mu: float) -> tuple[int, int]:
    """``(mu_code, step_fl)`` with ``mu ~= mu_code * 2^-step_fl`` and
    ``mu_code`` in [2^15, 2^16] (round to nearest).

    >>> step_code(0.5)
    (32768, 16)
    """
    if not (isinstance(mu, (int, float)) and math.isfinite(mu) and mu > 0):
        raise ValueError(f"step size mu must be a positive finite number, got {mu!r}")
    fl = STEP_BITS - 1 - math.floor(math.log2(mu))
    return int(round(mu * 2.0**fl)), fl


def config_array(formats: LMSFormats, rule: str, mu: float) -> np.ndarray:
    """The int64 configuration vector the kernel reads (shifts, ranges, step)."""
    f = formats
    mu_code, step_fl = step_code(mu)
    fine = max(f.data.fl, f.accumulator.fl)
    update_fl = step_fl
    if rule in ("lms", "sign_data"):
        update_fl += f.error.fl
    if rule in ("lms", "sign_error"):
        update_fl += f.data.fl
    excess = update_fl - f.weight_accumulator.fl - MAX_CODE_BITS
    if excess > 0:
        # a step so small that rounding the update onto the weight accumulator
        # would drop more bits than int64 holds: keep fewer significant bits of
        # the step (at least one), as a narrower step register would; the
        # update then still rounds (stalls, or moves stochastically) correctly
        mu_code = max(1, int(round(mu_code / 2.0**excess)))
        step_fl -= excess
        update_fl -= excess
    cfg = np.zeros(C_LEN, dtype=np.int64)
    cfg[C_P_SHIFT] = f.weight.fl + f.data.fl - f.product.fl
    cfg[C_P_MIN], cfg[C_P_MAX] = f.product.min_code, f.product.max_code
    cfg[C_A_SHIFT] = f.product.fl - f.accumulator.fl
    cfg[C_A_MIN], cfg[C_A_MAX] = f.accumulator.min_code, f.accumulator.max_code
    cfg[C_D_SHIFT] = fine - f.data.fl
    cfg[C_Y_SHIFT] = fine - f.accumulator.fl
    cfg[C_E_SHIFT] = fine - f.error.fl
    cfg[C_E_MIN], cfg[C_E_MAX] = f.error.min_code, f.error.max_code
    cfg[C_MU] = mu_code
    cfg[C_U_SHIFT] = update_fl - f.weight_accumulator.fl
    cfg[C_WA_MIN], cfg[C_WA_MAX] = f.weight_accumulator.min_code, f.weight_accumulator.max_code
    cfg[C_W_SHIFT] = f.weight_accumulator.fl - f.weight.fl
    cfg[C_W_MIN], cfg[C_W_MAX] = f.weight.min_code, f.weight.max_code
    # stages that can neither round nor overflow are skipped in the kernel (the
    # default exact product and accumulator): |w x| <= 2^(wl_w + wl_data - 2)
    cfg[C_P_EXACT] = int(cfg[C_P_SHIFT] == 0 and f.product.wl >= f.weight.wl + f.data.wl)
    cfg[C_A_EXACT] = int(cfg[C_A_SHIFT] == 0 and f.accumulator.wl >= f.product.wl)
    # a left shift of the update onto a finer accumulator must stay in int64
    upd_bits = (
        STEP_BITS
        + (f.error.wl - 1 if rule in ("lms", "sign_data") else 0)
        + (f.data.wl - 1 if rule in ("lms", "sign_error") else 0)
    )
    if upd_bits + max(0, -int(cfg[C_U_SHIFT])) > MAX_CODE_BITS:
        raise ValueError(
            f"step {mu!r}: the update mu*e*x shifted onto the weight accumulator "
            f"{f.weight_accumulator} can reach 2^{upd_bits - int(cfg[C_U_SHIFT])}, beyond "
            f"2^{MAX_CODE_BITS}; use a larger step or fewer fractional bits"
        )
    for index, what in (
        (C_P_SHIFT, "product"),
        (C_A_SHIFT, "accumulator"),
        (C_E_SHIFT, "error"),
        (C_U_SHIFT, "update"),
        (C_W_SHIFT, "weight"),
    ):
        if cfg[index] > MAX_CODE_BITS:
            raise ValueError(
                f"LMS formats {_describe(f)} with step {mu!r}: rounding the {what} drops "
                f"{int(cfg[index])} bits, more than the {MAX_CODE_BITS} an int64 code holds; "
                "the formats are too far apart"
            )
    return cfg


@functools.cache
def lms_kernel(
    rule: int,
    product_rounding: int,
    accumulator_rounding: int,
    error_rounding: int,
    update_rounding: int,
    weight_rounding: int,
    overflow: int,
):
    """The sample loop, specialized on the rule and modes (compile-time constants).

    ``run(xp, d, start, w, wacc, cfg, seed, y_out, e_out, counts)``: ``xp`` holds
    the K-1 previous input codes followed by this block's; ``d`` the desired
    codes; ``start`` the global index of the first sample (for the noise
    counter); ``w`` / ``wacc`` are updated in place; ``y_out`` / ``e_out``
    receive the output (accumulator codes) and error (error codes);
    ``counts`` accumulates [nonzero exact updates, stalled ones, saturated
    weight-accumulator adds].
    """
    stochastic = (
        product_rounding == 4,
        accumulator_rounding == 4,
        error_rounding == 4,
        update_rounding == 4,
        weight_rounding == 4,
    )
    sp, sa, se, su, sw = stochastic
    uses_e = rule == 0 or rule == 2  # lms, sign_data
    uses_x = rule == 0 or rule == 1  # lms, sign_error

    @kernel
    def run(xp, d, start, w, wacc, cfg, seed, y_out, e_out, counts):
        taps = w.size
        p_shift, p_min, p_max = cfg[0], cfg[1], cfg[2]
        a_shift, a_min, a_max = cfg[3], cfg[4], cfg[5]
        d_shift, y_shift = cfg[6], cfg[7]
        e_shift, e_min, e_max = cfg[8], cfg[9], cfg[10]
        mu = cfg[11]
        u_shift, wa_min, wa_max = cfg[12], cfg[13], cfg[14]
        w_shift, w_min, w_max = cfg[15], cfg[16], cfg[17]
        p_exact, a_exact = cfg[18] != 0, cfg[19] != 0
        nonzero = 0
        stalls = 0
        saturated = 0
        for j in range(d.size):
            base = (start + j) * (taps + 1) * 4
            acc = np.int64(0)
            for i in range(taps):
                xi = xp[j + taps - 1 - i]
                p = w[i] * xi
                if not p_exact:
                    u = counter_uniform(seed, base + i * 4) if sp else 0.0
                    p = apply_overflow(
                        shift_round_code(p, p_shift, product_rounding, u), p_min, p_max, overflow
                    )
                if not a_exact:
                    u = counter_uniform(seed, base + i * 4 + 1) if sa else 0.0
                    p = apply_overflow(
                        shift_round_code(p, a_shift, accumulator_rounding, u),
                        a_min,
                        a_max,
                        overflow,
                    )
                acc = apply_overflow(acc + p, a_min, a_max, overflow)
            y_out[j] = acc
            exact_e = (d[j] << d_shift) - (acc << y_shift)
            u = counter_uniform(seed, base + taps * 4) if se else 0.0
            e = apply_overflow(
                shift_round_code(exact_e, e_shift, error_rounding, u), e_min, e_max, overflow
            )
            e_out[j] = e
            if uses_e:
                a = mu * e
            else:
                a = mu * ((e > 0) - (e < 0))
            if a == 0:
                continue
            for i in range(taps):
                xi = xp[j + taps - 1 - i]
                if uses_x:
                    g = a * xi
                else:
                    g = a * ((xi > 0) - (xi < 0))
                if g == 0:
                    continue
                nonzero += 1
                u = counter_uniform(seed, base + i * 4 + 2) if su else 0.0
                du = shift_round_code(g, u_shift, update_rounding, u)
                if du == 0:
                    stalls += 1
                    continue
                du = apply_overflow(du, wa_min, wa_max, overflow)
                s = wacc[i] + du
                t = apply_overflow(s, wa_min, wa_max, overflow)
                if t != s:
                    saturated += 1
                wacc[i] = t
                u = counter_uniform(seed, base + i * 4 + 3) if sw else 0.0
                w[i] = apply_overflow(
                    shift_round_code(t, w_shift, weight_rounding, u), w_min, w_max, overflow
                )
        counts[0] += nonzero
        counts[1] += stalls
        counts[2] += saturated

    return run


@kernel
def lms_float_kernel(xp, d, w, mu, rule, y_out, e_out):
    """The float64 reference loop (no quantization): the float baseline."""
    taps = w.size
    for j in range(d.size):
        y = 0.0
        for i in range(taps):
            y += w[i] * xp[j + taps - 1 - i]
        y_out[j] = y
        e = d[j] - y
        e_out[j] = e
        if rule == 0 or rule == 2:
            a = mu * e
        else:
            a = mu * ((e > 0) - (e < 0))
        for i in range(taps):
            xi = xp[j + taps - 1 - i]
            if rule == 0 or rule == 1:
                w[i] += a * xi
            else:
                w[i] += a * ((xi > 0) - (xi < 0))


def _rule_index(rule: str) -> int:
    if rule not in RULES:
        raise ValueError(f"LMS rule must be one of {RULES}, got {rule!r}")
    return RULES.index(rule)


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
        self._rule = _rule_index(rule)
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
        y = np.empty(xc.size, dtype=np.int64)
        e = np.empty(xc.size, dtype=np.int64)
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
    lms_float_kernel(xp, d, w, float(mu), _rule_index(rule), y, e)
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

    def run_codes(self, x_codes, d_codes, mu: float) -> BlockResult:
        xc = np.ascontiguousarray(x_codes, dtype=np.int64)
        dc = np.ascontiguousarray(d_codes, dtype=np.int64)
        if xc.ndim != 1 or xc.shape != dc.shape:
            raise ValueError(f"x and d must be 1-D of equal length, got {xc.shape} and {dc.shape}")
        f, r, ov, dev = self.formats, self.roundings, self.overflow, self.device
        cfg = [int(v) for v in config_array(f, self.rule, mu)]
        K = self.taps
        uses_e = self.rule in ("lms", "sign_data")
        uses_x = self.rule in ("lms", "sign_error")
        stochastic = any(
            r[k] == Rounding.STOCHASTIC
            for k in ("product", "accumulator", "error", "update", "weight")
        )
        xp = torch.as_tensor(np.concatenate([self.history, xc]), device=dev)
        d = dc.tolist()
        w = torch.as_tensor(self.weight_codes, device=dev).clone()
        wacc = torch.as_tensor(self.accumulator_codes, device=dev).clone()
        y_out = np.empty(xc.size, dtype=np.int64)
        e_out = np.empty(xc.size, dtype=np.int64)
        nonzero = stalls = saturated = 0
        acc_limit = 1 << 62
        zeros = torch.zeros(K + 1, N_ROLES, dtype=torch.float64, device=dev)
        for j in range(xc.size):
            n = self.samples_seen + j
            u = (
                torch_core.counter_uniform(
                    self.seed, (K + 1) * N_ROLES, dev, offset=n * (K + 1) * N_ROLES
                ).view(K + 1, N_ROLES)
                if stochastic
                else zeros
            )
            xs = xp[j : j + K].flip(0)  # x(n - i), i = 0 .. K-1
            p = torch_core.shift_round_code(
                w * xs, cfg[C_P_SHIFT], r["product"], u[:K, ROLE_PRODUCT]
            )
            p = torch_core.apply_overflow(p, f.product, ov)
            p = torch_core.shift_round_code(
                p, cfg[C_A_SHIFT], r["accumulator"], u[:K, ROLE_ACCUMULATE]
            )
            p = torch_core.apply_overflow(p, f.accumulator, ov)
            acc = self._accumulate(p, acc_limit)
            y_out[j] = acc
            exact_e = torch.tensor([(d[j] << cfg[C_D_SHIFT]) - (acc << cfg[C_Y_SHIFT])], device=dev)
            e = torch_core.shift_round_code(exact_e, cfg[C_E_SHIFT], r["error"], u[K:, ROLE_ERROR])
            e = int(torch_core.apply_overflow(e, f.error, ov)[0])
            e_out[j] = e
            a = cfg[C_MU] * (e if uses_e else (e > 0) - (e < 0))
            if a == 0:
                continue
            g = a * (xs if uses_x else torch.sign(xs))
            du = torch_core.shift_round_code(g, cfg[C_U_SHIFT], r["update"], u[:K, ROLE_UPDATE])
            moved = du != 0
            nonzero += int((g != 0).sum())
            stalls += int(((g != 0) & ~moved).sum())
            du = torch_core.apply_overflow(du, f.weight_accumulator, ov)
            s = wacc + du
            t = torch_core.apply_overflow(s, f.weight_accumulator, ov)
            saturated += int((moved & (t != s)).sum())
            wacc = torch.where(moved, t, wacc)
            wq = torch_core.shift_round_code(t, cfg[C_W_SHIFT], r["weight"], u[:K, ROLE_WEIGHT])
            w = torch.where(moved, torch_core.apply_overflow(wq, f.weight, ov), w)
        self.weight_codes = w.cpu().numpy().copy()
        self.accumulator_codes = wacc.cpu().numpy().copy()
        if K > 1:
            self.history = xp[xp.numel() - (K - 1) :].cpu().numpy().copy()
        self.samples_seen += xc.size
        return BlockResult(
            y=y_out * f.accumulator.lsb,
            error=e_out * f.error.lsb,
            nonzero_updates=nonzero,
            stalls=stalls,
            saturated=saturated,
        )

    def _accumulate(self, p: torch.Tensor, limit: int) -> int:
        """The MAC accumulator over the taps in order, overflow after every add.

        When every partial sum stays inside the accumulator range, one cumulative
        sum is exact and equals the step-by-step one; otherwise step through."""
        fmt, ov = self.formats.accumulator, self.overflow
        if int(p.abs().max()) * p.numel() < limit:
            partial = torch.cumsum(p, 0)
            if int(partial.min()) >= fmt.min_code and int(partial.max()) <= fmt.max_code:
                return int(partial[-1])
        acc = torch.zeros((), dtype=torch.int64, device=p.device)
        for v in p:
            acc = torch_core.apply_overflow(acc + v, fmt, ov)
        return int(acc)


class FloatLMS:
    """The float64 filter with :class:`FixedLMS`'s block interface (the
    baseline of a precision sweep; nothing stalls)."""

    def __init__(self, taps: int, rule: str = "lms") -> None:
        if isinstance(taps, bool) or not isinstance(taps, (int, np.integer)) or taps < 1:
            raise ValueError(f"taps must be an integer >= 1, got {taps!r}")
        self.taps, self.rule, self._rule = int(taps), rule, _rule_index(rule)
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
