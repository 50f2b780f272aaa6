"""Finite-precision LMS: steady-state excess MSE, optimal step size and stall
thresholds when the weights live on a fixed-point grid.

Setting (system identification): ``w <- Q(w + mu * g(e) * x)`` with ``g(e) = e``
(LMS) or ``sign(e)`` (sign-error LMS), M taps, white input of power
``input_power`` = sigma_x^2, minimum MSE ``min_mse`` = xi_min (the noise the
best filter leaves), weight LSB q and rounding noise sigma_q^2 = q^2/12
(nearest) or about q^2/6 (stochastic, uniform residues).

Two noise models:

- ``"white"`` (Caraiscos & Liu 1984; Gitlin, Mazo & Taylor 1973): rounding
  adds white noise of variance sigma_q^2 per tap per step, so
  ``excess ~ mu M sigma_x^2 xi_min / 2 + M sigma_q^2 / (2 mu)`` (LMS). Valid
  between the stall threshold (below it most updates round to zero) and a
  small step (mu M sigma_x^2 << 1).
- ``"exact"``: the rounding error's statistics are integrated over the
  distribution of the update u = mu g(e) x (e and x Gaussian) and split, as in
  Bussgang's theorem, into a gain g = E[Q(u) u] / E[u^2] that slows the drift and
  an uncorrelated noise. The steady state of the weight error then gives
  ``excess = M E[Q(u)^2] / (2 g mu_drift)`` (mu_drift = mu for LMS,
  mu sqrt(2 / (pi J)) for sign-error LMS), solved self-consistently with the
  total MSE J = xi_min + excess. It covers the stall region: under nearest
  rounding only the rare large updates pass and the filter behaves like a
  dead-zone LMS whose excess MSE falls with mu; under stochastic rounding the
  quantization term levels off at about M q sigma_x sqrt(J) / pi.

>>> from hwsim.theory import lms_excess_mse, lms_optimal_step
>>> mu = lms_optimal_step(2**-12, input_power=1.0, min_mse=1e-3)
>>> round(mu, 6)
0.002229
>>> round(lms_excess_mse(mu, 2**-12, taps=8, input_power=1.0, min_mse=1e-3) * 1e5, 3)
1.783
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from hwsim.formats import FixedPoint, parse_format

Rule = Literal["lms", "sign_error"]
RoundingName = Literal["nearest", "stochastic"]
_RULES = ("lms", "sign_error")
_ROUNDINGS = ("nearest", "stochastic")
_MODELS = ("white", "exact")


def _lsb(weight) -> float:
    if isinstance(weight, str):
        weight = parse_format(weight)
    if isinstance(weight, FixedPoint):
        return weight.lsb
    if (
        isinstance(weight, bool)
        or not isinstance(weight, int | float)
        or not (math.isfinite(weight) and weight > 0)
    ):
        raise ValueError(
            f"weight must be a FixedPoint format, its string or a positive LSB, got {weight!r}"
        )
    return float(weight)


def _positive(name: str, value) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and value > 0)
    ):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _choice(name: str, value, allowed) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def _steps(step) -> np.ndarray:
    arr = np.asarray(step, dtype=np.float64)
    if not np.all(np.isfinite(arr) & (arr > 0)):
        raise ValueError(f"step must be positive and finite, got {step!r}")
    return arr


def rounding_noise_variance(weight, rounding: RoundingName = "nearest") -> float:
    """Variance of one rounding error on the weight grid in the white-noise
    model: q^2/12 for nearest rounding, q^2/6 for stochastic rounding (the mean
    of r(1-r) q^2 over uniform residues r).

    >>> rounding_noise_variance(1.0), rounding_noise_variance(1.0, "stochastic")
    (0.08333333333333333, 0.16666666666666666)
    """
    q = _lsb(weight)
    return q * q / (12.0 if _choice("rounding", rounding, _ROUNDINGS) == "nearest" else 6.0)


def lms_optimal_step(
    weight,
    *,
    input_power: float,
    min_mse: float,
    rule: Rule = "lms",
    rounding: RoundingName = "nearest",
) -> float:
    """Step size that balances misadjustment and quantization noise (white model).

    LMS: ``mu_opt = sigma_q / sqrt(sigma_x^2 xi_min)``, i.e. q / sqrt(12 sigma_x^2
    xi_min) under nearest rounding (Caraiscos & Liu 1984). Sign-error LMS:
    ``mu_opt = sigma_q / sigma_x`` (both terms scale with sqrt(xi_min)).

    >>> lms_optimal_step(2**-10, input_power=1.0, min_mse=1e-2) * 1e3
    2.819...
    """
    _choice("rule", rule, _RULES)
    sx2, jmin = _positive("input_power", input_power), _positive("min_mse", min_mse)
    sq2 = rounding_noise_variance(weight, rounding)
    if rule == "lms":
        return math.sqrt(sq2 / (sx2 * jmin))
    return math.sqrt(sq2 / sx2)


def lms_stall_step(
    weight, *, input_power: float, min_mse: float | None = None, rule: Rule = "lms"
) -> float:
    """Stall threshold under nearest rounding: the step below which a typical
    (r.m.s.) update is smaller than half an LSB and rounds to zero.

    LMS updates ``mu e x_i``: stall when ``mu sigma_e sigma_x < q/2``, so
    ``mu_stall = q / (2 sigma_x sqrt(xi_min))``. Sign-error LMS updates
    ``mu sign(e) x_i`` whatever the error: ``mu_stall = q / (2 sigma_x)``.
    :func:`lms_stall_fraction` gives the fraction of updates lost at any step.

    >>> lms_stall_step(2**-8, input_power=1.0, min_mse=1e-4)
    0.1953125
    >>> lms_stall_step(2**-8, input_power=1.0, rule="sign_error")
    0.001953125
    """
    _choice("rule", rule, _RULES)
    q, sx = _lsb(weight), math.sqrt(_positive("input_power", input_power))
    if rule == "sign_error":
        return q / (2.0 * sx)
    return q / (2.0 * sx * math.sqrt(_positive("min_mse", min_mse)))


def lms_stall_fraction(
    step,
    weight,
    *,
    input_power: float,
    mse: float | None = None,
    rule: Rule = "lms",
):
    """Probability that one tap's update rounds to zero under nearest rounding,
    P(|u| < q/2), for Gaussian error (variance ``mse``, the total MSE J) and
    input. LMS: u = mu e x, and |e x| / (sigma_e sigma_x) has density
    (2/pi) K0(z), so P = (2/pi) int_0^t K0 with t = q / (2 mu sigma_e sigma_x).
    Sign-error: P = erf(q / (2 sqrt(2) mu sigma_x)).

    >>> round(float(lms_stall_fraction(0.5, 1.0, input_power=1.0, rule="sign_error")), 4)
    0.6827
    """
    from scipy import special

    _choice("rule", rule, _RULES)
    mu, q = _steps(step), _lsb(weight)
    sx = math.sqrt(_positive("input_power", input_power))
    if rule == "sign_error":
        return special.erf(q / (2.0 * math.sqrt(2.0) * mu * sx))
    se = math.sqrt(_positive("mse", mse))
    t = q / (2.0 * mu * se * sx)
    return (2.0 / math.pi) * special.iti0k0(t)[1]


# -- the exact (integrated) rounding model ------------------------------------------


def _update_density(rule: str, c: float) -> tuple[np.ndarray, np.ndarray]:
    """Quadrature nodes t = |u|/q and weights for |u|/q = c * z, with z = |e x| /
    (sigma_e sigma_x) (LMS: density (2/pi) K0) or |x| / sigma_x (sign-error:
    half-normal). Log-spaced nodes handle K0's log singularity at 0."""
    from scipy import special

    z_max = min(max(40.0, 4.0 / c), 700.0)
    s = np.linspace(math.log(1e-12), math.log(z_max), 8001)
    z = np.exp(s)
    if rule == "lms":
        dens = (2.0 / math.pi) * special.k0(z)
    else:
        dens = math.sqrt(2.0 / math.pi) * np.exp(-0.5 * z * z)
    w = dens * z * (s[1] - s[0])  # dz = z ds
    w[0] *= 0.5
    w[-1] *= 0.5
    return c * z, w


def _exact_terms(rule: str, rounding: str, c: float) -> tuple[float, float, float]:
    """E[Q^2], E[Q t], E[t^2] in LSB^2 units for t = |u|/q (Q the rounded t)."""
    t, w = _update_density(rule, c)
    et2 = float(np.sum(w * t * t))
    if rounding == "nearest":
        qt = np.rint(t)
        return float(np.sum(w * qt * qt)), float(np.sum(w * qt * t)), et2
    r = t - np.floor(t)
    return et2 + float(np.sum(w * r * (1.0 - r))), et2, et2


def lms_excess_mse(
    step,
    weight,
    *,
    taps: int,
    input_power: float,
    min_mse: float,
    rule: Rule = "lms",
    rounding: RoundingName = "nearest",
    model: Literal["white", "exact"] = "white",
):
    """Predicted steady-state excess MSE of fixed-point LMS at step size ``step``
    (a number or an array) with weight LSB q (``weight``: a FixedPoint, its string
    or the LSB).

    ``model="white"`` (Caraiscos & Liu 1984), LMS:
    ``mu M sigma_x^2 xi_min / 2 + M sigma_q^2 / (2 mu)``; sign-error LMS:
    ``k sqrt(J)`` with ``k = sqrt(pi / 2) M (mu sigma_x^2 + sigma_q^2 / mu) / 2`` and
    J = xi_min + excess, solved in closed form (about ``k sqrt(xi_min)`` while the
    excess is small). Valid for
    ``lms_stall_step(...) <= mu`` and ``mu M sigma_x^2 <~ 0.2``.
    ``model="exact"`` integrates the rounding over the update distribution (see
    the module docstring); it also holds in the stall region. A step at which
    no update survives rounding at all gives NaN (the weights freeze wherever
    they are).

    >>> (lms_excess_mse([0.01, 0.02], 2**-12, taps=8, input_power=1.0, min_mse=1e-3) * 1e5).round(3)
    array([4.199, 8.099])
    """
    _choice("rule", rule, _RULES)
    _choice("rounding", rounding, _ROUNDINGS)
    _choice("model", model, _MODELS)
    if isinstance(taps, bool) or not isinstance(taps, int) or taps < 1:
        raise ValueError(f"taps must be a positive integer, got {taps!r}")
    mu, q = _steps(step), _lsb(weight)
    sx2, jmin = _positive("input_power", input_power), _positive("min_mse", min_mse)
    m = taps
    if model == "white":
        sq2 = rounding_noise_variance(q, rounding)
        if rule == "lms":
            out = mu * m * sx2 * jmin / 2.0 + m * sq2 / (2.0 * mu)
        else:
            # excess = k sqrt(J) with J = xi_min + excess (the sign throws away |e|)
            k = math.sqrt(math.pi / 2.0) * m * (mu * sx2 + sq2 / mu) / 2.0
            out = (k * k + np.sqrt(k**4 + 4.0 * k * k * jmin)) / 2.0
        return out if out.ndim else float(out)

    def one(mu_k: float) -> float:
        j = jmin
        excess = float("nan")
        for _ in range(60):  # fixed point of J = xi_min + excess(J)
            if rule == "lms":
                c = mu_k * math.sqrt(j * sx2) / q
                drift = mu_k
            else:
                c = mu_k * math.sqrt(sx2) / q
                drift = mu_k * math.sqrt(2.0 / (math.pi * j))
            eq2, eqt, et2 = _exact_terms(rule, rounding, c)
            if eqt <= 0.0 or not math.isfinite(eqt):
                return float("nan")
            gain = eqt / et2
            new = m * q * q * eq2 / (2.0 * gain * drift)
            if not math.isfinite(new):
                return float("nan")
            if abs(new - excess) <= 1e-6 * new:
                return new
            excess, j = new, jmin + new
        return excess

    out = np.vectorize(one, otypes=[np.float64])(mu)
    return out if out.ndim else float(out)


def lms_time_constant(
    step,
    weight,
    *,
    input_power: float,
    mse: float,
    rule: Rule = "lms",
    rounding: RoundingName = "nearest",
):
    """Samples per e-fold of the weight error near an MSE level ``mse`` (J), with
    the drift slowed by rounding: ``1 / (g mu_drift sigma_x^2)`` where g =
    E[Q(u) u] / E[u^2] is the Bussgang gain of the update rounding (1 for
    stochastic rounding; small under nearest rounding once most updates round
    to zero) and mu_drift = mu (LMS) or mu sqrt(2 / (pi J)) (sign-error).

    A run shorter than a few time constants at the steady-state J has not
    reached the steady state the excess-MSE models describe: under nearest
    rounding a small step freezes the weights early (Gitlin, Mazo & Taylor 1973).
    Infinite when no update survives rounding.

    >>> round(float(lms_time_constant(0.01, 2**-16, input_power=1.0, mse=1e-3)))
    100
    """
    _choice("rule", rule, _RULES)
    _choice("rounding", rounding, _ROUNDINGS)
    mu, q = _steps(step), _lsb(weight)
    sx2, j = _positive("input_power", input_power), _positive("mse", mse)

    def one(mu_k: float) -> float:
        if rule == "lms":
            c, drift = mu_k * math.sqrt(j * sx2) / q, mu_k
        else:
            c, drift = mu_k * math.sqrt(sx2) / q, mu_k * math.sqrt(2.0 / (math.pi * j))
        if rounding == "stochastic":
            gain = 1.0
        else:
            _, eqt, et2 = _exact_terms(rule, rounding, c)
            gain = eqt / et2
        return math.inf if gain <= 0.0 else 1.0 / (gain * drift * sx2)

    out = np.vectorize(one, otypes=[np.float64])(mu)
    return out if out.ndim else float(out)


def lms_theory_curve(
    steps,
    weight,
    *,
    taps: int,
    input_power: float,
    min_mse: float,
    rule: Rule = "lms",
    rounding: RoundingName = "nearest",
) -> dict[str, np.ndarray | float]:
    """Everything a plot of excess MSE vs step needs, for one weight format:
    ``step``, ``white`` and ``exact`` excess MSE, ``optimal_step``,
    ``stall_step`` and ``valid`` (steps where the white model's assumptions
    hold: above the stall threshold, mu M sigma_x^2 <= 0.2)."""
    mu = np.atleast_1d(_steps(steps))
    kw = dict(taps=taps, input_power=input_power, min_mse=min_mse, rule=rule, rounding=rounding)
    white = np.atleast_1d(lms_excess_mse(mu, weight, model="white", **kw))
    exact = np.atleast_1d(lms_excess_mse(mu, weight, model="exact", **kw))
    stall = lms_stall_step(weight, input_power=input_power, min_mse=min_mse, rule=rule)
    return {
        "step": mu,
        "white": white,
        "exact": exact,
        "optimal_step": lms_optimal_step(
            weight, input_power=input_power, min_mse=min_mse, rule=rule, rounding=rounding
        ),
        "stall_step": stall,
        "valid": (mu >= (stall if rounding == "nearest" else 0.0))
        & (mu * taps * input_power <= 0.2),
    }
