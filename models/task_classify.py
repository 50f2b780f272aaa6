"""The ``classify`` study task: a classifier trained with a hwsim optimizer."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from typing import Literal

import numpy as np

from hwsim.study.task import TrialResult, register_adapter, register_task
from models import datasets
from models.datapath_params import (
    layer_precision,
    optimizer_kwargs,
    quantized_layers,
    with_datapath,
)
from models.task_common import (
    OptimizerName,
    _parse_schedule,
    _require,
    _require_seed,
    _validate,
)

# ---------------------------------------------------------------------- classify


N_LAYERS = {"mlp": 2, "cnn": 5, "softmax": 1, "svm": 1}
"""Quantizable (Linear/Conv2d) layers of each model: the keys ``layers`` takes."""


@dataclasses.dataclass(frozen=True)
class _ClassifyParams:
    """Image classification with a hwsim optimizer and, optionally, hwsim's
    quantized layers.

    Besides these fields the task takes the whole training datapath by the
    library's names (:mod:`models.datapath_params`; README "Classify
    parameters"): every ``hwsim.nn.Precision`` field (``weight``,
    ``activation``, ``accumulator`` = the layers' forward MAC accumulator, the
    backward formats, ``<field>_rounding``, ...), ``layers`` (per-layer
    overrides keyed by the layer's index among the model's Linear/Conv2d
    layers, ``{"0" = {weight = "fx8.6"}}``), the optimizer's formats
    ``opt_weight`` (default: follows ``weight``), ``opt_accumulator``,
    ``opt_grad``, ``opt_update``, ``opt_state`` (a format, or a table per state
    name) and ``opt_<t>_rounding``, and the optimizers' hyperparameters by their
    own names (``momentum``, ``betas``, ``eps``, ...; None: the optimizer's
    default). ``schedule``: a ``hwsim.schedules.GearShiftPolicy`` text;
    ``every=`` counts optimizer steps, a plateau policy watches the epoch's
    training loss.
    """

    dataset: Literal["digits", "mnist", "fashion_mnist"] = "digits"
    data_path: str | None = None
    model: Literal["mlp", "cnn", "softmax", "svm"] = "mlp"
    hidden: int = 100
    optimizer: OptimizerName = "sgd"
    lr: float = 0.1
    backend: Literal["torch", "numba"] = "torch"
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
        _require(self, "epochs", self.epochs >= 1, "an integer >= 1")
        _require(self, "batch_size", self.batch_size >= 1, "an integer >= 1")
        _require(self, "dropout", 0.0 <= self.dropout < 1.0, "in [0, 1)")
        _require(
            self,
            "data_path",
            self.dataset == "digits" or self.data_path is not None,
            "a folder of IDX files or an .npz for mnist / fashion_mnist",
        )
        _parse_schedule(self)


ClassifyParams = with_datapath(_ClassifyParams, n_layers=lambda p: N_LAYERS[p.model])


def load_split(dataset: str, data_path: str | None, seed: int) -> datasets.Split:
    if dataset == "digits":
        return datasets.load_digits(seed)
    return datasets.load_mnist(data_path)


def make_optimizer(p, parameters):
    """The hwsim optimizer ``p.optimizer`` with ``p``'s ``opt_*`` formats and
    roundings and its hyperparameters (:func:`models.datapath_params.optimizer_kwargs`)."""
    from hwsim.optim import OPTIMIZERS

    return OPTIMIZERS[p.optimizer](parameters, lr=p.lr, **optimizer_kwargs(p))


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
    if quantized_layers(p):  # else the optimizer's weight grid is all the layers see
        precision = {i: layer_precision(p, i) for i in range(N_LAYERS[p.model])}
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
