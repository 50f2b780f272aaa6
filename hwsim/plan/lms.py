"""The plan of a fixed-point LMS filter: every quantity's format, the step
size as an integer code, and the int64 configuration vector that both the
Numba loop (``hwsim.kernels.lms``) and its torch twin (``hwsim.torch_path.lms``)
read. Backend-neutral; the filters themselves live in ``models/lms.py``.

The update ``mu * e * x`` is an exact integer product (``mu = mu_code *
2^-step_fl`` with :data:`STEP_BITS` significant bits) before its single rounding
onto the weight accumulator's grid, where updates stall (DESIGN.md, "Weight
accumulator"). Stochastic rounding: the uniform for sample n, slot i (tap, or
K for the error) and role r is ``counter_uniform(seed, (n * (K + 1) + i) * 4 + r)``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from hwsim.formats import FixedPoint

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


def rule_index(rule: str) -> int:
    if rule not in RULES:
        raise ValueError(f"LMS rule must be one of {RULES}, got {rule!r}")
    return RULES.index(rule)
