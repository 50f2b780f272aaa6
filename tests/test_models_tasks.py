"""The registered study tasks: validation, metrics, divergence, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hwsim import FixedPoint
from hwsim.study.task import TASKS
from models import tasks
from models.kmeans import KMeansSGD, purity
from models.linear import LinearSVM, SoftmaxRegression
from models.nets import MLP, LeNet, build_classifier


def test_tasks_are_registered():
    assert {"lms", "classify", "kmeans", "two_layer"} <= set(TASKS)
    assert TASKS["lms"].params is tasks.LMSParams
    assert TASKS["classify"].fn is tasks.classify


@pytest.mark.parametrize(
    "cls,kwargs,match",
    [
        (
            tasks.LMSParams,
            {"rule": "nlms"},
            r"LMSParams.rule: 'nlms' is not allowed; choose one of \['lms'",
        ),
        (tasks.LMSParams, {"weight": "fx16"}, r"LMSParams.weight: bad format 'fx16'"),
        (
            tasks.LMSParams,
            {"step": -0.1},
            r"LMSParams.step: -0.1 is not allowed; it must be a number in \[1e-15, 1000\]",
        ),
        (
            tasks.LMSParams,
            {"seed": 2**32},
            r"LMSParams.seed: 4294967296 is not allowed; it must be an integer in \[0, 4294967295\]",
        ),
        (
            tasks.ClassifyParams,
            {"epochs": 10**6},
            r"ClassifyParams.epochs: 1000000 is not allowed; it must be an integer in \[1, 10000\]",
        ),
        (
            tasks.TwoLayerParams,
            {"n_samples": 10**12},
            r"TwoLayerParams.n_samples: 1000000000000 is not allowed",
        ),
        (tasks.KMeansParams, {"seed": -1}, r"KMeansParams.seed: -1 is not allowed"),
        (tasks.LMSParams, {"taps": 2.5}, r"LMSParams.taps: must be an integer"),
        (
            tasks.LMSParams,
            {"color": 1.0},
            r"LMSParams.color: 1.0 is not allowed; it must be in \[0, 1\)",
        ),
        (tasks.LMSParams, {"weight": "fx40.30", "data": "fx40.30"}, r"LMSParams formats .*int64"),
        (
            tasks.LMSParams,
            {"weight": "fx8.-2", "weight_accumulator": "fx62.61"},
            r"LMSParams formats .* and step: .*update mu\*e\*x shifted onto the weight accumulator fx62.61 can reach 2\^63",
        ),
        (
            tasks.ClassifyParams,
            {"optimizer": "lbfgs"},
            r"ClassifyParams.optimizer: 'lbfgs' is not allowed",
        ),
        (
            tasks.ClassifyParams,
            {"dataset": "mnist"},
            r"ClassifyParams.data_path: None is not allowed",
        ),
        (
            tasks.ClassifyParams,
            {"accumulator": "fx20.10"},
            r"accumulator is set but weight, activation is float.*'opt_accumulator'",
        ),
        (
            tasks.ClassifyParams,
            {"momentum": 0.9, "optimizer": "adam"},
            r"momentum: 0.9 is set but optimizer 'adam' does not take 'momentum'; the "
            r"optimizers that take it: \['sgd', 'rmsprop'\]",
        ),
        (tasks.ClassifyParams, {"batch_norm": 1}, r"batch_norm: must be true or false"),
        (tasks.KMeansParams, {"k": 0}, r"KMeansParams.k: 0 is not allowed"),
        (tasks.TwoLayerParams, {"rounding": "up"}, r"TwoLayerParams.rounding: 'up' is not allowed"),
    ],
)
def test_bad_params_name_field_value_and_allowed(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_tiny_step_is_accepted_and_stalls():
    # too small for a 16-bit step code: the step keeps fewer bits and nearest rounding stalls
    p = tasks.LMSParams(weight="fx8.6", data="fx8.6", error="fx40.38", step=1e-12, n_samples=2000)
    r = tasks.lms(p)
    assert not r.diverged and r.metrics["stall_fraction"] == 1.0


def test_format_strings_and_float_are_parsed():
    p = tasks.LMSParams(weight="fx12.10", data="float")
    assert p.weight == FixedPoint(12, 10) and p.data is None and not p.is_float
    assert tasks.LMSParams().is_float


def test_lms_float_baseline_reaches_the_noise_floor():
    r = tasks.lms(tasks.LMSParams(taps=8, n_samples=8000, step=0.01))
    assert not r.diverged
    assert abs(r.metrics["mse_db"] - r.metrics["mmse_db"]) < 1.0
    # LMS misadjustment mu * M * sigma_x^2 / 2 (Widrow; REFERENCES.md): 0.04 here
    assert r.metrics["misadjustment"] == pytest.approx(0.01 * 8 / 2, rel=0.35)
    assert r.metrics["stall_fraction"] == 0.0
    assert [h["step"] for h in r.history] == list(range(160, 8001, 160))
    # |w_opt|^2 (the system has unit norm); for white unit-power input the excess MSE
    # is |w - w_opt|^2, which hwsim.theory.plots uses to predict weight_error_db
    assert abs(r.metrics["wiener_power_db"]) < 0.5
    predicted = r.metrics["excess_mse_db"] - r.metrics["wiener_power_db"]
    assert abs(r.metrics["weight_error_db"] - predicted) < 3.0  # one snapshot vs a 10% mean


def test_lms_fixed_point_stalls_and_is_deterministic():
    p = tasks.LMSParams(taps=8, n_samples=8000, step=0.003, weight="fx8.6")
    a, b = tasks.lms(p), tasks.lms(p)
    assert a.metrics == b.metrics and a.history == b.history
    assert a.metrics["final_stall_fraction"] > 0.9
    fine = tasks.lms(tasks.LMSParams(taps=8, n_samples=8000, step=0.003, weight="fx16.14"))
    assert fine.metrics["excess_mse_db"] < a.metrics["excess_mse_db"] - 10


def test_lms_equalization_with_sign_error_lms():
    r = tasks.lms(
        tasks.LMSParams(
            taps=11,
            n_samples=4000,
            step=0.002,
            rule="sign_error",
            problem="equalization",
            weight="fx14.12",
        )
    )
    assert not r.diverged and r.metrics["mse_db"] < -5, r.metrics


def test_lms_too_large_a_step_diverges_in_float():
    r = tasks.lms(tasks.LMSParams(taps=8, n_samples=4000, step=2.0))
    assert r.diverged and not math.isfinite(r.metrics["mse_db"])


def test_lms_gear_shifting_halves_the_step():
    pytest.importorskip("hwsim.schedules")
    p = tasks.LMSParams(
        taps=8,
        n_samples=8000,
        step=0.04,
        weight="fx16.14",
        schedule="gearshift:every=2000,factor=0.5",
    )
    r = tasks.lms(p)
    assert r.metrics["final_step"] == pytest.approx(0.04 / 16)
    steps = [h["step_size"] for h in r.history]
    assert steps[0] == 0.04 and steps[-1] == 0.04 / 8  # the shift after the last block is not used
    const = tasks.lms(tasks.LMSParams(taps=8, n_samples=8000, step=0.04, weight="fx16.14"))
    assert r.metrics["mse_db"] < const.metrics["mse_db"]
    with pytest.raises(ValueError, match="schedule"):
        tasks.LMSParams(schedule="halve-often")


def test_classify_float_and_fixed_point():
    r = tasks.classify(tasks.ClassifyParams(epochs=2))
    assert not r.diverged and r.metrics["test_accuracy"] > 0.85
    assert [h["step"] for h in r.history] == [1, 2]
    again = tasks.classify(tasks.ClassifyParams(epochs=2))
    assert again.metrics == r.metrics
    q = tasks.classify(tasks.ClassifyParams(epochs=2, weight="fx16.6", rounding="nearest"))
    assert q.metrics["stall_fraction"] > 0.5


@pytest.mark.parametrize("model,lr", [("cnn", 0.1), ("softmax", 0.05), ("svm", 0.05)])
def test_classify_other_models(model, lr):
    r = tasks.classify(tasks.ClassifyParams(model=model, epochs=2, hidden=32, lr=lr))
    assert not r.diverged and r.metrics["test_accuracy"] > 0.5


@pytest.mark.parametrize("backend", ["torch", pytest.param("numba", marks=pytest.mark.slow)])
def test_classify_with_quantized_layers(backend):
    r = tasks.classify(
        tasks.ClassifyParams(
            epochs=1,
            hidden=32,
            weight="fx12.8",
            backend=backend,
            activation="fx12.8",
            accumulator="fx24.16",
        )
    )
    assert not r.diverged and r.metrics["test_accuracy"] > 0.5


def test_classify_blow_up_is_recorded_as_diverged():
    r = tasks.classify(tasks.ClassifyParams(epochs=2, lr=1e6))
    assert r.diverged and "training loss became" in r.info["error"]


def test_kmeans_and_two_layer_tasks():
    r = tasks.kmeans(tasks.KMeansParams(dataset="blobs", k=4, epochs=3))
    assert r.metrics["purity"] > 0.9
    coarse = tasks.kmeans(tasks.KMeansParams(dataset="blobs", k=4, epochs=3, weight="fx6.2"))
    assert coarse.metrics["stall_fraction"] > 0.5
    r = tasks.two_layer(tasks.TwoLayerParams(steps=500))
    assert r.metrics["loss"] < 1e-2 and len(r.history) == 51


def test_kmeans_gradient_is_the_online_kmeans_step():
    c = torch.tensor([[0.0, 0.0], [4.0, 4.0]])
    km = KMeansSGD(c)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 4.0]])
    km(x).backward()
    expected = torch.tensor([[(0 - 1 + 0 - 0) / 3, (0 - 0 + 0 - 1) / 3], [(4 - 5) / 3, 0.0]])
    torch.testing.assert_close(km.centroids.grad, expected)
    assert purity(np.array([0, 0, 1, 1]), np.array([3, 3, 3, 2])) == 0.75


def test_networks_shapes_init_and_quantization():
    mlp = MLP(64, 10, hidden=200, batch_norm=True, dropout=0.5)
    kinds = [type(m).__name__ for m in mlp.body]
    assert kinds == ["Flatten", "Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]
    std = mlp.body[1].weight.std().item()
    assert std == pytest.approx(math.sqrt(2 / 64), rel=0.1)  # He: sqrt(2 / fan_in)
    assert LeNet((1, 8, 8), 10)(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    for model in (SoftmaxRegression(4, 3), LinearSVM(4, 3)):
        scores = model(torch.zeros(2, 4))
        assert model.loss(scores, torch.tensor([0, 2])).item() > 0
    a = build_classifier("mlp", (1, 8, 8), 10, hidden=16, seed=3)
    b = build_classifier("mlp", (1, 8, 8), 10, hidden=16, seed=3)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    import hwsim.nn

    q = build_classifier(
        "cnn",
        (1, 8, 8),
        10,
        hidden=16,
        precision=hwsim.nn.Precision(weight="fx8.6", activation="fx8.4"),
    )
    assert {type(m).__name__ for m in q.modules()} >= {"QLinear", "QConv2d"}
    with pytest.raises(ValueError, match="model must be one of"):
        build_classifier("resnet", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="dropout must be in"):
        MLP(4, 2, dropout=1.0)


@pytest.mark.parametrize("name", ["sgd", "signsgd", "adam", "adagrad", "rmsprop"])
def test_every_model_trains_with_every_hwsim_optimizer(name):
    from hwsim.optim import OPTIMIZERS
    from models.two_layer import TwoLayerNet

    torch.manual_seed(0)
    x = torch.rand(8, 1, 8, 8)
    y = torch.randint(0, 10, (8,))
    models = {
        "mlp": (MLP(64, 10, hidden=8), lambda m: m.loss(m(x), y)),
        "cnn": (LeNet((1, 8, 8), 10, hidden=8), lambda m: m.loss(m(x), y)),
        "softmax": (SoftmaxRegression(64, 10), lambda m: m.loss(m(x), y)),
        "svm": (LinearSVM(64, 10), lambda m: m.loss(m(x), y)),
        "kmeans": (KMeansSGD(torch.rand(3, 64)), lambda m: m(x)),
        "two_layer": (
            TwoLayerNet(),
            lambda m: m.loss(x[:, 0, 0, 0].double(), x[:, 0, 0, 1].double()),
        ),
    }
    lsb = 2.0**-12
    for label, (model, loss_fn) in models.items():
        # lr large enough that some update of every model exceeds half an LSB
        opt = OPTIMIZERS[name](model.parameters(), lr=0.1, weight="fx16.12", rounding="nearest")
        before = [p.detach().clone() for p in model.parameters()]
        opt.zero_grad()
        loss_fn(model).backward()
        opt.step()
        moved = False
        for p, b in zip(model.parameters(), before, strict=True):
            codes = p.detach().double() / lsb
            assert torch.equal(codes, codes.round()), (label, "weights off the fx16.12 grid")
            moved |= not torch.equal(p.detach(), b)
        assert moved, (label, name)


def test_classify_gear_shifting_every_steps_and_on_plateau():
    r = tasks.classify(tasks.ClassifyParams(epochs=2, schedule="gearshift:every=45,factor=0.5"))
    # digits: 1438 training images, 45 mini-batches of 32 per epoch
    assert [h["lr"] for h in r.history] == [0.05, 0.025]
    r = tasks.classify(
        tasks.ClassifyParams(epochs=3, lr=1e-9, schedule="gearshift:plateau=1,factor=0.5")
    )
    assert r.history[-1]["lr"] < 1e-9  # no progress at a tiny lr: the plateau rule shifts


def test_lms_precision_floor_holds_the_step():
    p = dict(taps=8, n_samples=8000, step=0.04, weight="fx10.8")
    free = tasks.lms(tasks.LMSParams(schedule="gearshift:every=1000,factor=0.5", **p))
    floored = tasks.lms(
        tasks.LMSParams(schedule="gearshift:every=1000,factor=0.5,floor=precision", **p)
    )
    assert free.metrics["final_step"] == pytest.approx(0.04 / 2**8)
    assert floored.metrics["final_step"] > free.metrics["final_step"]
    assert floored.metrics["final_stall_fraction"] < free.metrics["final_stall_fraction"]


def test_classify_reads_user_mnist_files(tmp_path):
    rng = np.random.default_rng(0)

    # a learnable toy: the label is which quarter of the image is bright
    def make(n):
        y = rng.integers(0, 4, n)
        x = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(y):
            r, c = divmod(int(label), 2)
            x[i, r * 14 : (r + 1) * 14, c * 14 : (c + 1) * 14] += 200
        return x, y.astype(np.uint8)

    xtr, ytr = make(256)
    xte, yte = make(64)
    np.savez(tmp_path / "fashion.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    r = tasks.classify(
        tasks.ClassifyParams(
            dataset="fashion_mnist",
            data_path=str(tmp_path / "fashion.npz"),
            epochs=2,
            hidden=16,
            lr=0.05,
        )
    )
    assert r.info["n_train"] == 256 and r.metrics["test_accuracy"] > 0.9


def test_classify_opt_grad_rounding_overrides_rounding_for_the_gradient_only():
    from hwsim.optim.precision import GroupPrecision

    def group_precision(**kw):
        p = tasks.ClassifyParams(weight="fx8.6", opt_accumulator="fx12.10", opt_grad="fx6.5", **kw)
        opt = tasks.make_optimizer(p, [torch.nn.Parameter(torch.zeros(3))])
        return GroupPrecision.of(opt.param_groups[0], opt.rule.state_names)

    mixed = group_precision(rounding="nearest", opt_grad_rounding="stochastic")
    assert str(mixed.grad_rounding).lower().endswith("stochastic")
    assert str(mixed.accumulator_rounding).lower().endswith("nearest")
    follow = group_precision(rounding="nearest")  # None: the gradient follows `rounding`
    assert str(follow.grad_rounding).lower().endswith("nearest")
    with pytest.raises(ValueError, match="opt_grad_rounding"):
        tasks.ClassifyParams(opt_grad_rounding="sthochastic")


def test_lms_tracking_a_drifting_system_precision_floor_wins():
    """With a drifting system (studies/gear_shifting.toml) unbounded halving stalls
    and falls behind, a constant large step keeps its gradient noise, and the
    precision floor settles at the smallest step that still adapts."""

    def werr(schedule, weight="fx16.14"):
        return np.mean(
            [
                tasks.lms(
                    tasks.LMSParams(
                        taps=16,
                        n_samples=24000,
                        step=0.04,
                        weight=weight,
                        drift=3e-5,
                        schedule=schedule,
                        seed=s,
                    )
                ).metrics["weight_error_db"]
                for s in range(2)
            ]
        )

    constant = werr("constant")
    halving = werr("gearshift:every=3000,factor=0.5")
    floored = werr("gearshift:every=3000,factor=0.5,floor=precision")
    assert floored < constant - 5 and floored < halving - 5, (constant, halving, floored)
    with pytest.raises(ValueError, match="drift"):
        tasks.LMSParams(drift=1e-4, problem="equalization")


def test_system_identification_drift_is_a_random_walk_and_zero_changes_nothing():
    from models.datasets import system_identification

    still = system_identification(3000, taps=16, seed=5)
    again = system_identification(3000, taps=16, seed=5, drift=0.0)
    assert np.array_equal(still.d, again.d) and again.clean is None
    moving = system_identification(3000, taps=16, seed=5, drift=1e-3)
    assert np.array_equal(moving.x, still.x)
    moved = float(np.sum((moving.system - still.system) ** 2))
    assert 0.4 * 16 * 3000 * 1e-6 < moved < 2 * 16 * 3000 * 1e-6  # random-walk variance
    # the first output sample comes from the (barely moved) initial system
    assert moving.clean[0] == pytest.approx(still.system[0] * still.x[0], abs=1e-2)
    assert float(np.mean((moving.d - moving.clean) ** 2)) == pytest.approx(moving.mmse, rel=0.2)
