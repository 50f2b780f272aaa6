"""The fixed-point LMS kernel against a plain-Python reference on Fractions,
bit for bit, and the torch version against the kernel."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from naive import overflow_code, round_fraction

from hwsim import FixedPoint
from models.datasets import system_identification
from models.lms import RULES, FixedLMS, TorchLMS, lms_float, resolve_formats, step_code

ROUNDINGS = ["nearest", "nearest_away", "floor", "zero", "stochastic"]
STAGES = ["product", "accumulator", "error", "update", "weight"]
M64 = (1 << 64) - 1


def splitmix_uniform(seed: int, index: int) -> float:
    """SplitMix64 counter noise in plain Python integers (DESIGN.md)."""
    z = (seed + (index + 1) * 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    z ^= z >> 31
    return (z >> 11) * 2.0**-53


def sign(v) -> int:
    return (v > 0) - (v < 0)


def reference_lms(x_codes, d_codes, taps, rule, fmts, roundings, overflow, mu, seed):
    """LMS on exact rationals, each quantity rounded once onto its format with
    ``naive.round_fraction`` (no shifts, no int64 tricks)."""
    mu_code, step_fl = step_code(mu)
    mu_v = Fraction(mu_code, 2**step_fl)

    def cast(value: Fraction, fmt: FixedPoint, rounding: str, u: float) -> int:
        return overflow_code(round_fraction(value * 2**fmt.fl, rounding, u), fmt.wl, True, overflow)

    def val(code: int, fmt: FixedPoint) -> Fraction:
        return Fraction(code) / 2**fmt.fl

    def noise(n, slot, role):
        return splitmix_uniform(seed, (n * (taps + 1) + slot) * 4 + role)

    f = fmts
    w = [0] * taps
    wacc = [0] * taps
    ys, es = [], []
    nonzero = stalls = saturated = 0
    for n in range(len(x_codes)):
        xs = [x_codes[n - i] if n - i >= 0 else 0 for i in range(taps)]
        acc = 0
        for i in range(taps):
            p = cast(
                val(w[i], f.weight) * val(xs[i], f.data),
                f.product,
                roundings["product"],
                noise(n, i, 0),
            )
            p = cast(val(p, f.product), f.accumulator, roundings["accumulator"], noise(n, i, 1))
            acc = overflow_code(acc + p, f.accumulator.wl, True, overflow)
        ys.append(acc)
        e = cast(
            val(d_codes[n], f.data) - val(acc, f.accumulator),
            f.error,
            roundings["error"],
            noise(n, taps, 0),
        )
        es.append(e)
        for i in range(taps):
            ev = val(e, f.error) if rule in ("lms", "sign_data") else sign(e)
            xv = val(xs[i], f.data) if rule in ("lms", "sign_error") else sign(xs[i])
            g = mu_v * ev * xv
            if g == 0:
                continue
            nonzero += 1
            du = round_fraction(g * 2**f.weight_accumulator.fl, roundings["update"], noise(n, i, 2))
            if du == 0:
                stalls += 1
                continue
            du = overflow_code(du, f.weight_accumulator.wl, True, overflow)
            t = overflow_code(wacc[i] + du, f.weight_accumulator.wl, True, overflow)
            saturated += t != wacc[i] + du
            wacc[i] = t
            w[i] = cast(val(t, f.weight_accumulator), f.weight, roundings["weight"], noise(n, i, 3))
    return ys, es, w, wacc, (nonzero, stalls, saturated)


def fmt_strategy(wl_lo=3, wl_hi=16):
    return st.builds(
        lambda wl, k: FixedPoint(wl, wl - k),
        st.integers(wl_lo, wl_hi),
        st.integers(-2, 6),
    )


@st.composite
def lms_case(draw, mixed_rounding: bool):
    data = draw(fmt_strategy(3, 14))
    weight = draw(fmt_strategy(3, 14))
    product = draw(st.none() | fmt_strategy(4, 24))
    accumulator = draw(st.none() | fmt_strategy(4, 24))
    error = draw(st.none() | fmt_strategy(3, 16))
    extra = draw(st.none() | st.integers(0, 8))
    weight_accumulator = None if extra is None else FixedPoint(weight.wl + extra, weight.fl + extra)
    rule = draw(st.sampled_from(RULES))
    if mixed_rounding:
        roundings = {s: draw(st.sampled_from(ROUNDINGS)) for s in STAGES}
    else:
        one = draw(st.sampled_from(ROUNDINGS))
        roundings = {s: one for s in STAGES}
    overflow = draw(st.sampled_from(["saturate", "wrap"]))
    mu = draw(st.sampled_from([0.5, 0.3, 0.05, 0.01, 1e-3, 3e-5]))
    taps = draw(st.integers(1, 4))
    n = draw(st.integers(1, 25))
    codes = st.integers(data.min_code, data.max_code)
    x = draw(st.lists(codes, min_size=n, max_size=n))
    d = draw(st.lists(codes, min_size=n, max_size=n))
    seed = draw(st.integers(0, M64))
    split = draw(st.integers(0, n))
    return dict(
        data=data,
        weight=weight,
        product=product,
        accumulator=accumulator,
        error=error,
        weight_accumulator=weight_accumulator,
        rule=rule,
        roundings=roundings,
        overflow=overflow,
        mu=mu,
        taps=taps,
        x=x,
        d=d,
        seed=seed,
        split=split,
    )


def _check_against_reference(c, cls=FixedLMS):
    kw = {
        k: c[k] for k in ("data", "weight", "product", "accumulator", "error", "weight_accumulator")
    }
    rounding_kw = {f"{s}_rounding": r for s, r in c["roundings"].items()}
    try:
        filt = cls(
            c["taps"], c["rule"], **kw, **rounding_kw, overflow=c["overflow"], seed=c["seed"]
        )
        filt.run_codes(np.zeros(0, np.int64), np.zeros(0, np.int64), c["mu"])
    except ValueError as err:  # formats whose intermediates would not fit an int64
        assert "int64" in str(err) or "2^62" in str(err) or "weight's" in str(err), err
        assume(False)
    x, d, s = np.array(c["x"]), np.array(c["d"]), c["split"]
    # two blocks: the result must not depend on the split
    r1 = filt.run_codes(x[:s], d[:s], c["mu"])
    r2 = filt.run_codes(x[s:], d[s:], c["mu"])
    f = filt.formats
    ys, es, w, wacc, counts = reference_lms(
        c["x"], c["d"], c["taps"], c["rule"], f, c["roundings"], c["overflow"], c["mu"], c["seed"]
    )
    y_codes = np.concatenate([r1.y, r2.y]) / f.accumulator.lsb
    e_codes = np.concatenate([r1.error, r2.error]) / f.error.lsb
    assert y_codes.tolist() == ys
    assert e_codes.tolist() == es
    assert filt.weight_codes.tolist() == w
    assert filt.accumulator_codes.tolist() == wacc
    got = tuple(
        a + b
        for a, b in zip(
            (r1.nonzero_updates, r1.stalls, r1.saturated),
            (r2.nonzero_updates, r2.stalls, r2.saturated),
            strict=True,
        )
    )
    assert got == counts


@settings(max_examples=100)
@given(lms_case(mixed_rounding=False))
def test_kernel_equals_python_reference(case):
    _check_against_reference(case)


@pytest.mark.slow
@settings(max_examples=100)
@given(lms_case(mixed_rounding=True))
def test_kernel_equals_python_reference_mixed_roundings(case):
    _check_against_reference(case)


def test_kernel_mixed_roundings_fixed_examples():
    # a fast check that each stage takes its own rounding (the slow test covers more)
    rng = np.random.default_rng(3)
    fmts = dict(
        data=FixedPoint(10, 7),
        weight=FixedPoint(10, 8),
        product=FixedPoint(14, 12),
        accumulator=FixedPoint(12, 8),
        error=FixedPoint(8, 5),
        weight_accumulator=FixedPoint(14, 12),
    )
    for k in range(3):
        roundings = {s: ROUNDINGS[(i + k) % 5] for i, s in enumerate(STAGES)}
        case = dict(
            fmts,
            rule=RULES[k],
            roundings=roundings,
            overflow="saturate",
            mu=0.05,
            taps=3,
            x=rng.integers(-512, 512, 30).tolist(),
            d=rng.integers(-512, 512, 30).tolist(),
            seed=k,
            split=11,
        )
        _check_against_reference(case)


@settings(max_examples=12)
@given(lms_case(mixed_rounding=True))
def test_torch_equals_kernel(case):
    """TorchLMS must reproduce the Numba kernel (itself checked above) exactly."""
    _check_against_reference(case, cls=TorchLMS)


def test_torch_equals_kernel_on_a_real_signal():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(400)
    d = np.convolve(x, [0.4, -0.2, 0.1, 0.05])[:400] + 0.01 * rng.standard_normal(400)
    kw = dict(
        data=FixedPoint(12, 9),
        weight=FixedPoint(12, 10),
        accumulator=FixedPoint(16, 11),
        error=FixedPoint(10, 8),
        rounding="stochastic",
        seed=5,
    )
    a, b = FixedLMS(4, "lms", **kw), TorchLMS(4, "lms", **kw)
    for mu in (0.05, 0.02):  # a gear shift between blocks
        ra, rb = a.run(x[:200], d[:200], mu), b.run(x[:200], d[:200], mu)
        assert (ra.y == rb.y).all() and (ra.error == rb.error).all()
        x, d = x[200:], d[200:]
    assert (a.weight_codes == b.weight_codes).all()
    assert (a.accumulator_codes == b.accumulator_codes).all()


def test_fixed_lms_converges_and_stalls_like_the_theory():
    rng = np.random.default_rng(1)
    h = np.array([0.5, -0.3, 0.2, 0.1])
    x = rng.standard_normal(20000)
    d = np.convolve(x, h)[:20000] + 0.01 * rng.standard_normal(20000)
    # ample precision: converges to h
    f = FixedLMS(4, "lms", data=FixedPoint(16, 12), weight=FixedPoint(20, 18))
    f.run(x, d, 0.01)
    assert np.abs(f.weights - h).max() < 0.01
    # coarse weights, tiny step: mu*e*x << LSB/2, so round-to-nearest freezes at 0 ...
    f = FixedLMS(4, "lms", data=FixedPoint(16, 12), weight=FixedPoint(8, 6))
    r = f.run(x, d, 2e-4)
    assert r.stall_fraction == 1.0 and (f.weights == 0).all()
    # ... and stochastic rounding still moves toward h (unbiased updates)
    f = FixedLMS(4, "lms", data=FixedPoint(16, 12), weight=FixedPoint(8, 6), rounding="stochastic")
    f.run(x, d, 2e-4)
    assert np.abs(f.weights - h).max() < 0.1


def test_float_lms_matches_numpy_loop():
    rng = np.random.default_rng(2)
    x, d = rng.standard_normal(300), rng.standard_normal(300)
    for rule in RULES:
        y, e, w = lms_float(x, d, 3, 0.01, rule)
        wr = np.zeros(3)
        xp = np.concatenate([np.zeros(2), x])
        for n in range(300):
            xs = xp[n : n + 3][::-1]
            yn = 0.0
            for i in range(3):
                yn += wr[i] * xs[i]
            en = d[n] - yn
            assert en == e[n]
            ev = en if rule in ("lms", "sign_data") else np.sign(en)
            xv = xs if rule in ("lms", "sign_error") else np.sign(xs)
            wr = wr + 0.01 * ev * xv
        np.testing.assert_allclose(w, wr, rtol=0, atol=1e-12)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="rule must be one of"):
        FixedLMS(4, "nlms")
    with pytest.raises(ValueError, match="taps must be an integer >= 1"):
        FixedLMS(0)
    with pytest.raises(ValueError, match="int64"):
        resolve_formats(FixedPoint(40, 30), FixedPoint(40, 30))
    with pytest.raises(ValueError, match="at least the weight's"):
        resolve_formats(
            FixedPoint(16, 12), FixedPoint(16, 14), weight_accumulator=FixedPoint(16, 10)
        )
    with pytest.raises(ValueError, match="signed FixedPoint"):
        resolve_formats(FixedPoint(16, 12, signed=False), None)
    with pytest.raises(ValueError, match="positive finite"):
        step_code(0.0)
    f = FixedLMS(2, data=FixedPoint(8, 4), weight=FixedPoint(8, 6))
    with pytest.raises(ValueError, match="equal length"):
        f.run(np.zeros(3), np.zeros(4), 0.1)
    with pytest.raises(ValueError, match="outside the data format"):
        f.run_codes(np.array([1000]), np.array([0]), 0.1)


def test_stochastic_data_codes_do_not_depend_on_blocking():
    x = np.random.default_rng(4).standard_normal(500)
    f = FixedLMS(3, data=FixedPoint(8, 5), weight=FixedPoint(8, 6), rounding="stochastic", seed=9)
    whole = f.data_codes(x, 1, 0)
    parts = np.concatenate([f.data_codes(x[:123], 1, 0), f.data_codes(x[123:], 1, 123)])
    assert (whole == parts).all()
    assert not (whole == f.data_codes(x, 2, 0)).all()  # x and d draw different noise
    nearest = FixedLMS(3, data=FixedPoint(8, 5), weight=FixedPoint(8, 6)).data_codes(x, 1, 0)
    assert np.abs(whole - nearest).max() == 1 and (whole != nearest).any()


@pytest.mark.gpu
def test_torch_lms_on_cuda_equals_kernel():
    rng = np.random.default_rng(6)
    x = rng.standard_normal(150)
    d = np.convolve(x, [0.3, -0.6, 0.2])[:150]
    kw = dict(
        data=FixedPoint(12, 9),
        weight=FixedPoint(12, 10),
        accumulator=FixedPoint(16, 11),
        error=FixedPoint(10, 8),
        rounding="stochastic",
        seed=2,
    )
    a, b = FixedLMS(3, "sign_data", **kw), TorchLMS(3, "sign_data", device="cuda", **kw)
    ra, rb = a.run(x, d, 0.02), b.run(x, d, 0.02)
    assert (ra.y == rb.y).all() and (ra.error == rb.error).all()
    assert (a.weight_codes == b.weight_codes).all()


def test_set_weights_then_run_matches_the_reference_start():
    f = FixedLMS(
        3,
        data=FixedPoint(10, 7),
        weight=FixedPoint(8, 5),
        weight_accumulator=FixedPoint(12, 9),
        rounding="stochastic",
    )
    f.set_weights([0.3, -0.7, 9.0])
    assert f.accumulator_codes.tolist() == [154, -358, 2047]  # 0.3*512=153.6, saturated at 2047
    assert f.weight_codes.tolist() == [10, -22, 127]  # 154/16=9.625 -> 10, -358/16=-22.375 -> -22
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        f.set_weights([0.0, 1.0])


@pytest.mark.parametrize("mu", [1e-9, 1e-30])
def test_tiny_step_stalls_instead_of_raising(mu):
    # the update's shift onto the weight accumulator would exceed int64: the step
    # keeps fewer significant bits, and nearest rounding loses every update
    sysid = system_identification(500, 8, snr_db=40.0, seed=0)
    f = FixedLMS(8, "lms", weight=FixedPoint(8, 6), rounding="nearest")
    f.run(sysid.x, sysid.d, mu)
    assert np.all(f.weights == 0.0)
    g = FixedLMS(8, "lms", weight=FixedPoint(8, 6), rounding="floor")
    g.run(sysid.x, sysid.d, mu)
    assert np.all(g.weights <= 0.0)  # floor keeps its downward drift on negative updates
