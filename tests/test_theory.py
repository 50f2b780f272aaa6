"""hwsim.theory against simulation.

LMS: a fixed-point LMS loop (Numba, using the library's own rounding helpers)
identifies an M-tap system; the steady-state excess MSE is measured directly
from the a-priori error x^T (w_o - w), which has far less variance than
e^2 - xi_min. Accumulator: softmax regression on sklearn's digits trained with
quantized gradients and a weight accumulator, sweeping its word length.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import hwsim
from hwsim.kernels.jit import kernel
from hwsim.kernels.scalar import NEAREST, STOCHASTIC, counter_uniform, round_scaled
from hwsim.theory import (
    GradientStatistics,
    accumulator_precision,
    accumulator_precision_from_statistics,
    lms_excess_mse,
    lms_optimal_step,
    lms_stall_fraction,
    lms_stall_step,
    lms_theory_curve,
    lms_time_constant,
    measure_gradient_statistics,
    rounding_noise_variance,
)

# -- a small fixed-point LMS reference loop -------------------------------------------


@kernel
def _lms_run(x, d, v, mu, q, taps, sign_error, rounding, seed, skip):
    """w <- Q(w + mu g(e) x) on the grid of LSB q, from w = 0. Returns the mean
    a-priori error power over samples >= skip and the fraction of tap updates
    that rounded to nothing there."""
    w = np.zeros(taps)  # codes
    acc, count, stalled = 0.0, 0, 0
    k = 0
    for t in range(taps - 1, x.shape[0]):
        y = 0.0
        for i in range(taps):
            y += w[i] * q * x[t - i]
        e = d[t] - y
        g = e
        if sign_error:
            g = 1.0 if e > 0 else (-1.0 if e < 0 else 0.0)
        if t >= skip:
            ea = e - v[t]
            acc += ea * ea
            count += 1
        for i in range(taps):
            u = 0.0
            if rounding == STOCHASTIC:
                u = counter_uniform(seed, k)
                k += 1
            new = round_scaled(w[i] + mu * g * x[t - i] / q, rounding, u)
            if t >= skip and new == w[i]:
                stalled += 1
            w[i] = new
    return acc / count, stalled / (count * taps)


def simulate_lms(
    step,
    q,
    *,
    taps=8,
    input_power=1.0,
    min_mse=1e-3,
    rule="lms",
    rounding="nearest",
    samples=200_000,
    seed=0,
    skip=None,
):
    rng = np.random.default_rng(seed)
    w_o = rng.standard_normal(taps)
    w_o *= 0.7 / np.linalg.norm(w_o)
    x = rng.standard_normal(samples) * math.sqrt(input_power)
    v = rng.standard_normal(samples) * math.sqrt(min_mse)
    d = np.convolve(x, w_o)[:samples] + v
    mode = NEAREST if rounding == "nearest" else STOCHASTIC
    skip = samples // 2 if skip is None else skip
    return _lms_run(x, d, v, step, q, taps, rule == "sign_error", mode, seed + 1, skip)


LMS = dict(taps=8, input_power=1.0, min_mse=1e-3)


# -- LMS: white model in its range of validity --------------------------------------


@pytest.mark.parametrize("fl", [12, 14])
def test_lms_white_model_matches_simulation_where_valid(fl):
    q = 2.0**-fl
    steps = lms_optimal_step(q, input_power=1.0, min_mse=1e-3) * 2.0 ** np.arange(-3, 5, 0.5)
    curve = lms_theory_curve(steps, q, **LMS)
    valid = curve["valid"]
    assert valid.sum() >= 3  # the range [stall step, 0.2 / (M sigma_x^2)] is wide enough to test
    for mu, predicted in zip(steps[valid], curve["white"][valid], strict=True):
        measured, _ = simulate_lms(mu, q, samples=max(200_000, int(100 / mu)))
        assert measured == pytest.approx(predicted, rel=0.25), f"mu={mu:.3g}"
    # below the stall threshold (not valid) the white model overestimates: updates
    # that round to nothing inject no noise
    low = steps[4]  # half the optimal step
    assert not valid[4] and simulate_lms(low, q)[0] < 0.5 * curve["white"][4]


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_lms_exact_model_matches_simulation_through_the_stall_region(rounding):
    q = 2.0**-12
    mu_opt = lms_optimal_step(q, input_power=1.0, min_mse=1e-3, rounding=rounding)
    for f in (0.5, 1.0, 2.0, 8.0):
        mu = f * mu_opt
        measured, _ = simulate_lms(mu, q, rounding=rounding, samples=max(200_000, int(100 / mu)))
        predicted = lms_excess_mse(mu, q, rounding=rounding, model="exact", **LMS)
        assert measured == pytest.approx(predicted, rel=0.25), f"{rounding} mu={mu:.3g}"


def _models_lms_excess(mu, q, *, rounding, samples, min_mse=1e-3, taps=8):
    """Excess MSE of models.lms.FixedLMS (a-priori error, second half)."""
    lms_mod = pytest.importorskip("models.lms")
    datasets = pytest.importorskip("models.datasets")
    data = datasets.system_identification(
        samples, taps=taps, snr_db=-10 * math.log10(min_mse), seed=3
    )
    clean = np.convolve(data.x, data.system)[:samples]
    fmt = hwsim.FixedPoint(24, int(round(-math.log2(q))))
    y = (
        lms_mod.FixedLMS(taps, "lms", weight=fmt, rounding=rounding, seed=1)
        .run(data.x, data.d, mu)
        .y
    )
    return float(np.mean((clean[samples // 2 :] - y[samples // 2 :]) ** 2)), data.mmse


@pytest.mark.parametrize("simulator", ["reference", pytest.param("models", marks=pytest.mark.slow)])
def test_lms_measured_optimal_step_within_2x_of_prediction(simulator):
    """The white model's optimum is where the quantization excess equals the
    misadjustment. Measure that balance point on the simulated curve (stochastic
    rounding, whose noise the white model describes above the optimum) and
    compare it with the predicted step."""
    q, jmin, taps = 2.0**-12, 1e-3, 8
    if simulator == "models":
        jmin = _models_lms_excess(0.01, q, rounding="stochastic", samples=1000)[1]
    mu_opt = lms_optimal_step(q, input_power=1.0, min_mse=jmin, rounding="stochastic")
    factors = 2.0 ** np.arange(-3, 3.5, 0.5)
    ratios = []
    for f in factors:
        mu = f * mu_opt
        samples = max(200_000, int(100 / mu))
        if simulator == "models":
            measured, jmin_run = _models_lms_excess(mu, q, rounding="stochastic", samples=samples)
        else:
            measured, _ = simulate_lms(mu, q, rounding="stochastic", samples=samples)
            jmin_run = jmin
        misadjustment = mu * taps * jmin_run / 2
        ratios.append(measured / misadjustment)  # 2 at the balance point
    ratios = np.array(ratios)
    # first step where quantization no longer dominates, interpolated in log step
    k = int(np.argmax(ratios < 2.0))
    assert k > 0
    t = (np.log(ratios[k - 1]) - np.log(2.0)) / (np.log(ratios[k - 1]) - np.log(ratios[k]))
    measured_opt = mu_opt * 2.0 ** (np.log2(factors[k - 1]) + t * 0.5)
    assert mu_opt / 2 <= measured_opt <= 2 * mu_opt


def test_time_constant_tells_when_a_cold_start_freezes():
    """Far below the optimal step, under nearest rounding, the weights freeze
    before the steady state: the exact model holds only once the run is several
    time constants long (5 tau <= samples before the measurement window)."""
    q, jmin = 2.0**-12, 1e-3
    mu_opt = lms_optimal_step(q, input_power=1.0, min_mse=jmin)
    for f in (0.125, 0.25, 0.5, 1.0):
        mu = f * mu_opt
        samples = 200_000
        measured, _ = simulate_lms(mu, q, samples=samples)
        predicted = lms_excess_mse(mu, q, model="exact", **LMS)
        tau = lms_time_constant(mu, q, input_power=1.0, mse=jmin + predicted)
        if 5 * tau <= samples // 2:
            assert measured == pytest.approx(predicted, rel=0.25), f
        else:
            assert measured > 2 * predicted, f  # frozen on the way
    # stochastic rounding keeps the full drift
    assert lms_time_constant(
        0.01, q, input_power=1.0, mse=jmin, rounding="stochastic"
    ) == pytest.approx(100)
    assert lms_time_constant(1e-6, q, input_power=1.0, mse=jmin) == math.inf


def test_lms_nearest_rounding_has_no_interior_optimum_in_steady_state():
    """Under nearest rounding the excess MSE keeps falling below the white
    optimum (a dead zone: only large updates pass), as the exact model says."""
    q = 2.0**-12
    mu_opt = lms_optimal_step(q, **{k: LMS[k] for k in ("input_power", "min_mse")})
    measured = [simulate_lms(f * mu_opt, q)[0] for f in (0.5, 1.0, 2.0)]
    exact = lms_excess_mse(np.array([0.5, 1.0, 2.0]) * mu_opt, q, model="exact", **LMS)
    assert measured[0] < measured[1] < measured[2]
    assert np.all(np.diff(exact) > 0)


@pytest.mark.parametrize("rule", ["lms", "sign_error"])
def test_stall_fraction_matches_simulation(rule):
    q = 2.0**-10
    for mu in (
        lms_stall_step(q, input_power=1.0, min_mse=1e-3, rule=rule) * f for f in (0.5, 1.0, 4.0)
    ):
        measured_mse, stalls = simulate_lms(mu, q, rule=rule, samples=100_000)
        predicted = lms_stall_fraction(mu, q, input_power=1.0, mse=1e-3 + measured_mse, rule=rule)
        assert stalls == pytest.approx(predicted, abs=0.03), f"{rule} mu={mu:.3g}"


def test_sign_error_exact_model_matches_simulation():
    q = 2.0**-12
    for mu in (4 * q, 16 * q, 64 * q):
        measured, _ = simulate_lms(mu, q, rule="sign_error", samples=300_000)
        predicted = lms_excess_mse(mu, q, rule="sign_error", model="exact", **LMS)
        assert measured == pytest.approx(predicted, rel=0.25)
        white = lms_excess_mse(mu, q, rule="sign_error", model="white", **LMS)
        assert measured == pytest.approx(white, rel=0.25)


@given(
    fl=st.integers(4, 20),
    taps=st.integers(1, 64),
    power=st.floats(0.01, 100),
    jmin=st.floats(1e-6, 1.0),
    rule=st.sampled_from(["lms", "sign_error"]),
    rounding=st.sampled_from(["nearest", "stochastic"]),
)
def test_optimal_step_minimizes_the_white_model(fl, taps, power, jmin, rule, rounding):
    kw = dict(taps=taps, input_power=power, min_mse=jmin, rule=rule, rounding=rounding)
    mu = lms_optimal_step(2.0**-fl, input_power=power, min_mse=jmin, rule=rule, rounding=rounding)
    best = lms_excess_mse(mu, 2.0**-fl, **kw)
    for f in (0.9, 1.1, 0.5, 2.0):
        assert lms_excess_mse(mu * f, 2.0**-fl, **kw) > best


def test_lms_formulas_from_the_references():
    q, m, sx2, jmin = 2.0**-8, 16, 2.0, 1e-2
    mu = 0.003
    white = lms_excess_mse(mu, q, taps=m, input_power=sx2, min_mse=jmin)
    assert white == pytest.approx(mu * m * sx2 * jmin / 2 + m * q * q / 12 / (2 * mu), rel=1e-12)
    # sign-error: excess = k sqrt(xi_min + excess)
    sign = lms_excess_mse(mu, q, taps=m, input_power=sx2, min_mse=jmin, rule="sign_error")
    k = math.sqrt(math.pi / 2) * m * (mu * sx2 + q * q / 12 / mu) / 2
    assert sign == pytest.approx(k * math.sqrt(jmin + sign), rel=1e-12)
    assert lms_optimal_step(q, input_power=sx2, min_mse=jmin) == pytest.approx(
        q / math.sqrt(12 * sx2 * jmin)
    )
    assert lms_stall_step(q, input_power=sx2, min_mse=jmin) == pytest.approx(
        q / (2 * math.sqrt(sx2 * jmin))
    )
    assert lms_stall_step(q, input_power=sx2, rule="sign_error") == pytest.approx(
        q / (2 * math.sqrt(sx2))
    )
    assert rounding_noise_variance(hwsim.FixedPoint(16, 8)) == q * q / 12
    # weight given as a format or its string is the same as its LSB
    assert lms_excess_mse(mu, "fx16.8", taps=m, input_power=sx2, min_mse=jmin) == white
    # more weight bits never hurt (white and exact)
    for model in ("white", "exact"):
        e = [
            lms_excess_mse(0.01, 2.0**-fl, taps=8, input_power=1.0, min_mse=1e-3, model=model)
            for fl in (8, 10, 12)
        ]
        assert e[0] > e[1] > e[2]


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: lms_excess_mse(-0.1, 2**-8, taps=4, input_power=1.0, min_mse=1e-3), "step"),
        (lambda: lms_excess_mse(0.1, 0.0, taps=4, input_power=1.0, min_mse=1e-3), "weight"),
        (lambda: lms_excess_mse(0.1, 2**-8, taps=0, input_power=1.0, min_mse=1e-3), "taps"),
        (lambda: lms_excess_mse(0.1, 2**-8, taps=4, input_power=-1.0, min_mse=1e-3), "input_power"),
        (
            lambda: lms_excess_mse(0.1, 2**-8, taps=4, input_power=1.0, min_mse=1e-3, rule="nlms"),
            "rule",
        ),
        (
            lambda: lms_excess_mse(0.1, 2**-8, taps=4, input_power=1.0, min_mse=1e-3, model="x"),
            "model",
        ),
        (
            lambda: lms_optimal_step(2**-8, input_power=1.0, min_mse=1e-3, rounding="floor"),
            "rounding",
        ),
        (lambda: lms_stall_step(2**-8, input_power=1.0, rule="lms"), "min_mse"),
    ],
)
def test_lms_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# -- accumulator rule ------------------------------------------------------------------


@given(
    grad_fl=st.integers(-4, 24),
    lr=st.floats(1e-6, 1.0),
    weight_int=st.integers(-3, 6),
)
def test_accumulator_rule_properties(grad_fl, lr, weight_int):
    grad = hwsim.FixedPoint(8, grad_fl)
    weight = hwsim.FixedPoint(weight_int + 8, 8)  # int_bits = weight_int
    if lr * grad.lsb >= 2.0 ** (weight_int - 2):
        return  # the accumulator would be narrower than 2 bits: rejected (tested below)
    p = accumulator_precision(grad, lr, weight)
    # LSB_acc is the power of two at or below lr * LSB_G
    assert p.lsb <= lr * grad.lsb < 2 * p.lsb and p.lsb == 2.0**-p.fl
    # the word covers the weight range: [-range, range) at that LSB, sign included
    assert p.range == 2.0 ** (weight_int - 1)
    assert p.format.max == pytest.approx(p.range - p.lsb) and p.format.min == -p.range
    # halving the smallest learning rate costs exactly one more bit
    half = accumulator_precision(grad, lr / 2, weight)
    assert (half.wl, half.fl) == (p.wl + 1, p.fl + 1)
    # no stall: every nonzero gradient code, at lr, survives rounding onto the grid
    codes = np.arange(1, 128)
    updates = hwsim.quantize(lr * codes * grad.lsb, hwsim.FixedPoint(62, p.fl))
    assert np.all(updates > 0)
    # with two fewer fractional bits, a one-code gradient is lost under nearest rounding
    assert hwsim.quantize(lr * grad.lsb, hwsim.FixedPoint(62, p.fl - 2)) == 0.0


def test_accumulator_rule_example_and_errors():
    p = accumulator_precision(hwsim.FixedPoint(8, 8), 1e-3, 1.0)
    # 1e-3 * 2^-8 = 3.9e-6 -> LSB 2^-18; range 1 -> 18 + 1 bits
    assert (p.lsb, p.wl, p.fl, str(p.format)) == (2.0**-18, 19, 18, "fx19.18")
    assert accumulator_precision("fx8.8", 1e-3, "fx8.7") == p
    with pytest.raises(ValueError, match="lr_min"):
        accumulator_precision(2**-8, 0.0, 1.0)
    with pytest.raises(ValueError, match="grad"):
        accumulator_precision(-1.0, 1e-3, 1.0)
    with pytest.raises(ValueError, match="weight"):
        accumulator_precision(2**-8, 1e-3, float("inf"))
    with pytest.raises(ValueError, match="too large"):
        accumulator_precision(1.0, 1.0, 1.0)


def test_accumulator_from_measured_statistics():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    batches = [(torch.randn(32, 8), torch.randint(0, 3, (32,))) for _ in range(3)]
    before = [p.detach().clone() for p in model.parameters()]
    stats = measure_gradient_statistics(
        model, torch.nn.functional.cross_entropy, batches, quantile=0.1
    )
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())
    # the statistics are the ones autograd gives, batch by batch
    grads = []
    for x, t in batches:
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), t).backward()
        grads.append(model[0].weight.grad.abs().flatten().numpy())
    model.zero_grad(set_to_none=True)
    g = np.concatenate(grads)
    s = stats["0.weight"]
    assert s.max_grad == pytest.approx(g.max()) and s.small_grad == pytest.approx(
        np.quantile(g[g > 0], 0.1)
    )
    assert s.max_weight == pytest.approx(float(model[0].weight.detach().abs().max()))
    # per-tensor rule with an 8-bit gradient format scaled to the measured range
    rec = accumulator_precision_from_statistics(stats, 1e-3, grad_bits=8)
    for name, st_ in stats.items():
        lsb_g = 2.0 ** math.ceil(math.log2(st_.max_grad)) * 2.0**-7
        assert rec[name] == accumulator_precision(
            lsb_g, 1e-3, 2.0 ** math.ceil(math.log2(2 * st_.max_weight))
        )
    # the small-gradient estimate needs at least as many bits as ... a coarse 4-bit format
    assert all(
        accumulator_precision_from_statistics(stats, 1e-3)[n].fl
        >= accumulator_precision_from_statistics(stats, 1e-3, grad_bits=4)[n].fl
        for n in stats
    )
    with pytest.raises(ValueError, match="grad_bits"):
        accumulator_precision_from_statistics(stats, 1e-3, grad_bits=1)
    with pytest.raises(ValueError, match="empty"):
        measure_gradient_statistics(model, torch.nn.functional.cross_entropy, [])
    assert (
        accumulator_precision_from_statistics({"w": GradientStatistics(0.0, 0.0, 1.0)}, 1e-3) == {}
    )


# -- the accumulator cliff in training ------------------------------------------------


def _digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


GRAD_FX6_5, WEIGHT_FX8_5 = hwsim.FixedPoint(6, 5), hwsim.FixedPoint(8, 5)


def train_softmax(
    acc_wl, lr, *, grad=GRAD_FX6_5, weight=WEIGHT_FX8_5, epochs=10, batch=64, data=None
):
    """Softmax regression on digits: gradients rounded stochastically onto
    ``grad``, updates rounded to nearest onto a weight accumulator of ``acc_wl``
    bits covering the weight range (or the accumulator format itself), weights
    read through ``weight``. A None format is float. Returns the test accuracy."""
    xtr, ytr, xte, yte = data or _digits()
    if isinstance(acc_wl, int):
        acc = hwsim.FixedPoint(acc_wl, acc_wl - weight.int_bits)
    else:
        acc = acc_wl

    def q(x, fmt, rounding="nearest", seed=None):
        return x if fmt is None else hwsim.quantize(x, fmt, rounding, seed=seed)

    params = np.zeros(64 * 10 + 10)
    rng = np.random.default_rng(1)
    step = 0
    for _ in range(epochs):
        order = rng.permutation(len(xtr))
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            wq = q(params, weight)
            z = xtr[idx] @ wq[:640].reshape(64, 10) + wq[640:]
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(idx)), ytr[idx]] -= 1
            p /= len(idx)
            g = np.concatenate([(xtr[idx].T @ p).ravel(), p.sum(0)])
            step += 1
            g = q(g, grad, "stochastic", seed=step)
            params = q(params + q(-lr * g, acc), acc)
    wq = q(params, weight)
    return float(np.mean((xte @ wq[:640].reshape(64, 10) + wq[640:]).argmax(1) == yte))


def _cliff(accuracies: dict[int, float]) -> int:
    """Smallest word length from which accuracy stays within 2 points of the widest."""
    top = accuracies[max(accuracies)]
    bits = sorted(accuracies)
    for b in bits:
        if all(accuracies[c] >= top - 0.02 for c in bits if c >= b):
            return b
    raise AssertionError("unreachable")


def test_accumulator_cliff_near_prediction_fast():
    data = _digits()
    lr, grad, weight = 2.0**-6, hwsim.FixedPoint(6, 5), hwsim.FixedPoint(8, 5)
    predicted = accumulator_precision(grad, lr, weight).wl
    acc = {
        b: train_softmax(b, lr, data=data)
        for b in (predicted - 3, predicted - 1, predicted, predicted + 1)
    }
    assert acc[predicted - 3] < acc[predicted + 1] - 0.1  # there is a cliff below
    assert abs(_cliff(acc) - predicted) <= 2


@pytest.mark.slow
@pytest.mark.parametrize("lr", [2.0**-5, 2.0**-6])
def test_accumulator_cliff_moves_one_bit_when_lr_halves(lr):
    """Power-of-two rates: with another rate the rounded update overshoots or
    undershoots lr * g (an effective rate change) and blurs the comparison.
    Smaller rates train longer so both runs reach their plateau."""
    data = _digits()
    grad, weight = hwsim.FixedPoint(6, 5), hwsim.FixedPoint(8, 5)
    cliffs = []
    for lr_min in (lr, lr / 2):
        epochs = max(10, round(10 * 2.0**-6 / lr_min))
        predicted = accumulator_precision(grad, lr_min, weight).wl
        acc = {
            b: train_softmax(b, lr_min, data=data, epochs=epochs)
            for b in range(predicted - 5, predicted + 3)
        }
        cliff = _cliff(acc)
        assert abs(cliff - predicted) <= 2, (lr_min, predicted, acc)
        cliffs.append(cliff)
    assert cliffs[1] - cliffs[0] == 1


@pytest.mark.slow
def test_accumulator_cliff_near_prediction_for_a_non_power_of_two_rate():
    data = _digits()
    grad, weight = hwsim.FixedPoint(6, 5), hwsim.FixedPoint(8, 5)
    predicted = accumulator_precision(grad, 0.01, weight).wl
    acc = {b: train_softmax(b, 0.01, data=data) for b in range(predicted - 5, predicted + 3)}
    assert abs(_cliff(acc) - predicted) <= 2, acc


# -- against the models' bit-true LMS kernel ---------------------------------------------


@pytest.mark.parametrize(
    "rule,rounding", [("lms", "nearest"), ("lms", "stochastic"), ("sign_error", "nearest")]
)
def test_prediction_matches_models_fixed_lms(rule, rounding):
    """models.lms.FixedLMS (bit-true: data fx20.16, exact products, 16-bit step
    code) on models.datasets.system_identification. The excess MSE is measured
    from the a-priori error clean - y, clean = system * x (no noise)."""
    lms_mod = pytest.importorskip("models.lms")
    datasets = pytest.importorskip("models.datasets")
    taps, n = 8, 100_000
    data = datasets.system_identification(n, taps=taps, snr_db=40.0, seed=3)
    clean = np.convolve(data.x, data.system)[:n]
    weight = hwsim.FixedPoint(16, 12)
    setting = dict(
        taps=taps,
        input_power=float(np.mean(data.x**2)),
        min_mse=data.mmse,
        rule=rule,
        rounding=rounding,
    )
    mu_opt = lms_optimal_step(
        weight, input_power=1.0, min_mse=data.mmse, rule=rule, rounding=rounding
    )
    checked = 0
    for f in (0.5, 1.0, 2.0, 4.0, 8.0):
        mu = f * mu_opt if rule == "lms" else f * 2**-10
        predicted = lms_excess_mse(mu, weight, model="exact", **setting)
        tau = lms_time_constant(
            mu, weight, input_power=1.0, mse=data.mmse + predicted, rule=rule, rounding=rounding
        )
        if 5 * tau > n // 2 or mu * taps > 0.2:
            continue
        filt = lms_mod.FixedLMS(taps, rule, weight=weight, rounding=rounding, seed=1)
        y = filt.run(data.x, data.d, mu).y
        measured = float(np.mean((clean[n // 2 :] - y[n // 2 :]) ** 2))
        assert measured == pytest.approx(predicted, rel=0.25), (f, measured, predicted)
        checked += 1
    assert checked >= 3


def train_softmax_optim(
    accumulator, lr, *, grad=GRAD_FX6_5, weight=WEIGHT_FX8_5, epochs=10, batch=64, data=None
):
    """The same softmax regression in torch, trained by hwsim.optim.SGD with a
    weight accumulator (gradients rounded stochastically, updates to nearest)."""
    from hwsim.optim import SGD

    xtr, ytr, xte, yte = data or _digits()
    xtr_t, ytr_t = torch.tensor(xtr), torch.tensor(ytr)
    model = torch.nn.Linear(64, 10).double()
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    opt = SGD(
        model.parameters(),
        lr=lr,
        weight=weight,
        accumulator=accumulator,
        grad=grad,
        grad_rounding="stochastic",
        seed=0,
    )
    rng = np.random.default_rng(1)
    for _ in range(epochs):
        order = torch.tensor(rng.permutation(len(xtr)))
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xtr_t[idx]), ytr_t[idx]).backward()
            opt.step()
    with torch.no_grad():
        pred = model(torch.tensor(xte)).argmax(1).numpy()
    return float(np.mean(pred == yte))


@pytest.mark.slow  # about a minute per rate on 2 busy cores; the NumPy loop above is the fast check
@pytest.mark.parametrize("lr", [2.0**-6, 2.0**-7])
def test_accumulator_cliff_with_hwsim_optim(lr):
    """hwsim.optim.SGD with an accumulator format: the cliff sits at the rule's
    B_acc (within 2 bits); halving the rate moves the prediction one bit."""
    pytest.importorskip("hwsim.optim")
    data = _digits()
    grad, weight = hwsim.FixedPoint(6, 5), hwsim.FixedPoint(8, 5)
    predicted = accumulator_precision(grad, lr, weight).wl
    epochs = max(10, round(10 * 2.0**-6 / lr))
    acc = {
        b: train_softmax_optim(
            hwsim.FixedPoint(b, b - weight.int_bits), lr, data=data, epochs=epochs
        )
        for b in (predicted - 3, predicted - 1, predicted, predicted + 1)
    }
    assert acc[predicted - 3] < acc[predicted + 1] - 0.1
    assert abs(_cliff(acc) - predicted) <= 2, acc
