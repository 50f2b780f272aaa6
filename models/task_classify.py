"""The ``classify`` study task: a classifier trained with a hwsim optimizer."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
import typing
from typing import Literal

import numpy as np

from hwsim.formats import FixedPoint
from hwsim.study.task import TrialResult, register_adapter, register_task
from models import datasets
from models.task_common import (
    OptimizerName,
    RoundingName,
    _parse_schedule,
    _require,
    _require_seed,
    _validate,
)

# ---------------------------------------------------------------------- classify


@dataclasses.dataclass(frozen=True)
class ClassifyParams:
    """Image classification with a hwsim optimizer (and, optionally, hwsim's
    quantized layers).

    ``weight``, ``accumulator``, ``grad``, ``state``: the optimizer's formats;
    ``activation``, ``layer_accumulator``: the layers' activation and MAC
    accumulator formats (both ``None``: float layers). ``rounding``: every
    quantized tensor's rounding; ``grad_rounding`` overrides it for the gradient
    (``None``: follow ``rounding``), e.g. stochastic gradients into a nearest
    accumulator as in Sakr & Shanbhag's accumulator study. ``schedule``: a
    ``hwsim.schedules.GearShiftPolicy`` text; ``every=`` counts optimizer steps,
    a plateau policy watches the epoch's training loss.
    """

    dataset: Literal["digits", "mnist", "fashion_mnist"] = "digits"
    data_path: str | None = None
    model: Literal["mlp", "cnn", "softmax", "svm"] = "mlp"
    hidden: int = 100
    optimizer: OptimizerName = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    weight: FixedPoint | None = None
    accumulator: FixedPoint | None = None
    grad: FixedPoint | None = None
    state: FixedPoint | None = None
    activation: FixedPoint | None = None
    layer_accumulator: FixedPoint | None = None
    backend: Literal["torch", "numba"] = "torch"
    rounding: RoundingName = "nearest"
    grad_rounding: RoundingName | None = None
    epochs: int = 10
    batch_size: int = 32
    schedule: str = "constant"
    batch_norm: bool = False
    dropout: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        _validate(self)
        _require(self, "hidden", self.hidden >= 1, "an integer >= 1")
        _require(self, "lr", 0 < self.lr <= 1e6, "a number in (0, 1e6]")
        _require(self, "hidden", self.hidden <= 100_000, "an integer in [1, 100000]")
        _require(self, "epochs", self.epochs <= 10_000, "an integer in [1, 10000]")
        _require(self, "batch_size", self.batch_size <= 100_000, "an integer in [1, 100000]")
        _require_seed(self)
        _require(self, "momentum", 0.0 <= self.momentum < 1.0, "in [0, 1)")
        _require(
            self,
            "momentum",
            self.momentum == 0.0 or self.optimizer in ("sgd", "rmsprop"),
            "0 unless optimizer is 'sgd' or 'rmsprop'",
        )
        _require(self, "weight_decay", self.weight_decay >= 0, "a number >= 0")
        _require(self, "epochs", self.epochs >= 1, "an integer >= 1")
        _require(self, "batch_size", self.batch_size >= 1, "an integer >= 1")
        _require(self, "dropout", 0.0 <= self.dropout < 1.0, "in [0, 1)")
        _require(
            self,
            "grad_rounding",
            self.grad_rounding in (None, *typing.get_args(RoundingName)),
            f"None (follow rounding) or one of {list(typing.get_args(RoundingName))}",
        )
        _require(
            self,
            "data_path",
            self.dataset == "digits" or self.data_path is not None,
            "a folder of IDX files or an .npz for mnist / fashion_mnist",
        )
        _require(
            self,
            "layer_accumulator",
            self.layer_accumulator is None
            or (self.weight is not None and self.activation is not None),
            "None unless weight and activation are fixed point too (a MAC array multiplies codes)",
        )
        _parse_schedule(self)


def load_split(dataset: str, data_path: str | None, seed: int) -> datasets.Split:
    if dataset == "digits":
        return datasets.load_digits(seed)
    return datasets.load_mnist(data_path)


def make_optimizer(p, parameters):
    """The hwsim optimizer ``p.optimizer`` with ``p``'s formats and rounding."""
    from hwsim.optim import OPTIMIZERS

    kwargs = dict(
        lr=p.lr,
        weight=p.weight,
        accumulator=p.accumulator,
        grad=p.grad,
        state=getattr(p, "state", None),
        rounding=p.rounding,
        seed=p.seed,
    )
    if (
        getattr(p, "grad_rounding", None) is not None
    ):  # e.g. stochastic gradients, nearest accumulator
        kwargs["grad_rounding"] = p.grad_rounding
    if getattr(p, "weight_decay", 0.0):
        kwargs["weight_decay"] = p.weight_decay
    if getattr(p, "momentum", 0.0):
        kwargs["momentum"] = p.momentum
    return OPTIMIZERS[p.optimizer](parameters, **kwargs)


def _shift_groups(optimizer, policy) -> None:
    """One gear shift of every param group (the policy decided once, via ``due``,
    that a shift is due: calling it per group would advance its plateau counter
    once per group)."""
    typical = _telemetry(optimizer, "median_update_lsb") if policy.floor == "precision" else None
    for group in optimizer.param_groups:
        group["lr"] = policy.shift(group["lr"], typical)


def _telemetry(optimizer, key: str) -> float | None:
    values = [t.get(key) for t in getattr(optimizer, "telemetry", None) or [] if t]
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(values)) if values else None


@contextlib.contextmanager
def _one_thread_seeded(seed: int):
    """One torch thread and the global torch RNG seeded, both restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(threads)


class Diverged(RuntimeError):
    """Training blew up (recorded as a diverged trial, not an error)."""


BLOW_UP = 100.0
"""A mini-batch loss this many times the first one (or 1) counts as diverged."""


CLASSIFY_METRICS = (
    "test_accuracy", "train_loss", "stall_fraction", "saturation_fraction", "best_test_accuracy",
)  # fmt: skip


@register_task("classify", ClassifyParams, metrics=CLASSIFY_METRICS)
def classify(p: ClassifyParams) -> TrialResult:
    """Train a classifier; metrics ``test_accuracy``, ``train_loss`` (last
    epoch's mean), ``stall_fraction`` and ``saturation_fraction`` (the
    optimizer's telemetry, mean over the last epoch's steps), ``best_test_accuracy``.

    Runs on one torch thread (a sweep runs trials in parallel; these models are
    too small for intra-op threads to pay) with the global torch RNG seeded
    from ``seed`` for dropout, both restored afterwards. Diverged: a non-finite
    loss or a mini-batch loss above ``BLOW_UP`` times the first one.
    """
    with _one_thread_seeded(p.seed):
        return _classify(p)


def _classify(p: ClassifyParams) -> TrialResult:
    import torch

    from hwsim.errors import NonFiniteError
    from models.nets import build_classifier
    from models.task_telemetry import EpochTelemetry

    started = time.perf_counter()
    split = load_split(p.dataset, p.data_path, p.seed)
    x_train, y_train = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
    x_test, y_test = torch.from_numpy(split.x_test), torch.from_numpy(split.y_test)
    precision = None
    if p.activation is not None or p.layer_accumulator is not None:
        import hwsim.nn

        # the layer sees the optimizer's weight grid; its MAC array needs both
        # operands on a grid (checked in ClassifyParams)
        precision = hwsim.nn.Precision(
            weight=p.weight,
            activation=p.activation,
            accumulator=p.layer_accumulator,
            rounding=p.rounding,
            seed=p.seed,
        )
    model = build_classifier(
        p.model,
        tuple(split.x_train.shape[1:]),
        split.n_classes,
        hidden=p.hidden,
        batch_norm=p.batch_norm,
        dropout=p.dropout,
        precision=precision,
        backend=p.backend,
        seed=p.seed,
    )
    optimizer = make_optimizer(p, model.parameters())
    policy = _parse_schedule(p)
    first_loss = None
    history: list[dict[str, float]] = []
    metrics: dict[str, float] = {}
    step = 0
    diverged, error = False, None

    def evaluate() -> float:
        model.eval()
        with torch.no_grad():
            correct = (model(x_test).argmax(1) == y_test).sum().item()
        return correct / len(y_test)

    best = 0.0
    telem = EpochTelemetry(model, optimizer)  # per layer and tensor, last batch of each epoch
    for epoch in range(p.epochs):
        model.train()
        losses, stalls, saturations = [], [], []
        try:
            for idx in telem.last_of(datasets.batches(len(y_train), p.batch_size, p.seed, epoch)):
                idx_t = torch.from_numpy(idx)
                loss = model.loss(model(x_train[idx_t]), y_train[idx_t])
                if first_loss is None:
                    first_loss = loss.item()
                if not torch.isfinite(loss) or loss.item() > BLOW_UP * max(first_loss, 1.0):
                    raise Diverged(
                        f"training loss became {loss.item():.4g} at step {step} "
                        f"(first mini-batch: {first_loss:.4g})"
                    )
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
                losses.append(loss.item())
                for key, bucket in (
                    ("stall_fraction", stalls),
                    ("saturation_fraction", saturations),
                ):
                    v = _telemetry(optimizer, key)
                    if v is not None:
                        bucket.append(v)
                if policy is not None and policy.every is not None and policy.due(step):
                    _shift_groups(optimizer, policy)
        except (Diverged, NonFiniteError) as err:  # blew up, or quantization met a NaN/Inf
            diverged, error = True, str(err)
            break
        train_loss = float(np.mean(losses))
        accuracy = evaluate()
        best = max(best, accuracy)
        row = {
            "step": epoch + 1,
            "train_loss": train_loss,
            "test_accuracy": accuracy,
            "stall_fraction": float(np.mean(stalls)) if stalls else 0.0,
            "lr": optimizer.param_groups[0]["lr"],
        }
        history.append(row)
        telem.log(epoch + 1)
        metrics = {
            "test_accuracy": accuracy,
            "train_loss": train_loss,
            "stall_fraction": row["stall_fraction"],
            "saturation_fraction": float(np.mean(saturations)) if saturations else 0.0,
            "best_test_accuracy": best,
        }
        if policy is not None and policy.plateau is not None and policy.due(epoch + 1, train_loss):
            _shift_groups(optimizer, policy)
    if diverged:
        metrics = dict(metrics, train_loss=math.nan)
        metrics.setdefault("test_accuracy", evaluate() if history else math.nan)
    info = {
        "seconds": time.perf_counter() - started,
        "steps": step,
        "error": error,
        "n_train": len(y_train),
        "n_test": len(y_test),
    }
    telemetry = telem.close()
    return TrialResult(
        metrics=metrics, history=history, diverged=diverged, info=info, telemetry=telemetry
    )


_IN_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28)}


@register_adapter("classify", "energy")
def classify_energy(config: dict) -> float | None:
    """pJ per training step of the trial's own network (hwsim.cost); None for a
    dataset whose input shape is not known without loading it."""
    from hwsim.theory.energy import classifier_energy
    from models.nets import build_classifier

    shape = _IN_SHAPES.get(config.get("dataset", "digits"))
    if shape is None:
        return None
    net = build_classifier(
        config.get("model", "mlp"), shape, 10, hidden=int(config.get("hidden", 100))
    )
    return classifier_energy(config, net, shape)


@register_adapter("classify", "gradient_statistics")
def classify_gradient_statistics(config: dict) -> dict:
    """Gradient statistics of the trial's network at initialization on a few
    training batches (:func:`hwsim.theory.accumulator.measure_gradient_statistics`)."""
    return _gradient_statistics(
        config.get("dataset", "digits"),
        config.get("model", "mlp"),
        int(config.get("hidden", 100)),
        int(config.get("seed", 0)),
        config.get("data_path"),
    )


@functools.lru_cache(maxsize=32)
def _gradient_statistics(dataset: str, model: str, hidden: int, seed: int, data_path) -> dict:
    import torch

    from hwsim.theory.accumulator import measure_gradient_statistics
    from models.nets import build_classifier

    split = load_split(dataset, data_path, seed)
    net = build_classifier(
        model, tuple(split.x_train.shape[1:]), split.n_classes, hidden=hidden, seed=seed
    )
    x = torch.from_numpy(split.x_train[:512]).float()
    y = torch.from_numpy(split.y_train[:512]).long()
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, len(x), 64)]
    return measure_gradient_statistics(net, torch.nn.functional.cross_entropy, batches)
