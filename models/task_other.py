"""The ``kmeans`` and ``two_layer`` study tasks."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np

from hwsim.formats import FixedPoint
from hwsim.study.task import TrialResult, register_task
from models import datasets
from models.datapath_params import with_datapath
from models.task_classify import _one_thread_seeded, _telemetry, make_optimizer
from models.task_common import (
    OptimizerName,
    RoundingName,
    _db,
    _require,
    _require_seed,
    _validate,
)

# ------------------------------------------------------------------------ kmeans


@dataclasses.dataclass(frozen=True)
class _KMeansParams:
    """K-means by SGD (:mod:`models.kmeans`) on the digits (flattened 64-d) or
    on Gaussian blobs, with a hwsim optimizer on the centroids. ``distance``
    and ``distance_accumulator`` (both or neither) put the assignment step on
    the datapath: differences rounded to ``distance``, squared distances
    accumulated in ``distance_accumulator``, argmin on those values (rounding:
    ``rounding``, or nearest when that is stochastic).

    The centroids are the weights: ``weight`` is their format, and the
    optimizer takes the ``opt_*`` formats, roundings and hyperparameters of
    the ``classify`` task (:mod:`models.datapath_params`; its weight
    accumulator is ``opt_accumulator``, its gradient format ``opt_grad``)."""

    dataset: Literal["digits", "blobs"] = "digits"
    k: int = 10
    optimizer: OptimizerName = "sgd"
    lr: float = 0.05
    distance: FixedPoint | None = None
    distance_accumulator: FixedPoint | None = None
    epochs: int = 5
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        _validate(self)
        _require(self, "k", 1 <= self.k <= 100, "an integer in [1, 100]")
        _require(
            self,
            "distance_accumulator",
            (self.distance is None) == (self.distance_accumulator is None),
            "set together with distance (both or neither)",
        )
        _require(self, "lr", 0 < self.lr <= 1e6, "a number in (0, 1e6]")
        _require(self, "epochs", 1 <= self.epochs <= 10_000, "an integer in [1, 10000]")
        _require(self, "batch_size", 1 <= self.batch_size <= 100_000, "an integer in [1, 100000]")
        _require_seed(self)


KMeansParams = with_datapath(
    _KMeansParams,
    layers=False,
    renamed={"accumulator": "'opt_accumulator' (the optimizer's copy of the centroids)"},
)


@register_task("kmeans", KMeansParams, metrics=("inertia", "purity", "stall_fraction"))
def kmeans(p: KMeansParams) -> TrialResult:
    """Metrics: ``inertia`` (mean squared distance to the nearest centroid, all
    data), ``purity`` (majority-label agreement), ``stall_fraction``."""
    with _one_thread_seeded(p.seed):
        return _kmeans(p)


def _kmeans(p: KMeansParams) -> TrialResult:
    import torch

    from models.kmeans import DistanceDatapath, KMeansSGD, purity

    if p.dataset == "digits":
        split = datasets.load_digits(p.seed)
        x = np.concatenate([split.x_train, split.x_test]).reshape(-1, 64)
        labels = np.concatenate([split.y_train, split.y_test])
    else:
        from sklearn.datasets import make_blobs

        x, labels = make_blobs(
            2000, n_features=8, centers=p.k, cluster_std=1.0, random_state=p.seed % (2**32)
        )
        x = (x / np.abs(x).max()).astype(np.float32)
    datapath = None
    if p.distance is not None:
        mode = "nearest" if p.rounding == "stochastic" else p.rounding
        datapath = DistanceDatapath(p.distance, p.distance_accumulator, rounding=mode)
    model = KMeansSGD.kmeans_plus_plus(x, p.k, p.seed, datapath)
    optimizer = make_optimizer(p, model.parameters())
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    history = []
    stalls: list[float] = []

    def inertia() -> float:
        with torch.no_grad():
            return 2.0 * model(xt).item()

    for epoch in range(p.epochs):
        stalls = []
        for idx in datasets.batches(len(xt), p.batch_size, p.seed, epoch):
            loss = model(xt[torch.from_numpy(idx)])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            v = _telemetry(optimizer, "stall_fraction")
            if v is not None:
                stalls.append(v)
        value = inertia()
        history.append(
            {
                "step": epoch + 1,
                "inertia": value,
                "stall_fraction": float(np.mean(stalls)) if stalls else 0.0,
            }
        )
        if not math.isfinite(value):
            return TrialResult(metrics={"inertia": value}, history=history, diverged=True)
    metrics = {
        "inertia": inertia(),
        "purity": float(purity(model.assign(xt).numpy(), labels)),
        "stall_fraction": history[-1]["stall_fraction"],
    }
    return TrialResult(metrics=metrics, history=history)


# --------------------------------------------------------------------- two_layer


@dataclasses.dataclass(frozen=True)
class TwoLayerParams:
    """The course-notes scalar network (:mod:`models.two_layer`) fitting a
    teacher network, by its hand-derived updates in fixed point."""

    lr: float = 0.5
    steps: int = 2000
    batch_size: int = 16
    n_samples: int = 512
    weight: FixedPoint | None = None
    accumulator: FixedPoint | None = None
    activation: FixedPoint | None = None
    grad: FixedPoint | None = None
    rounding: RoundingName = "nearest"
    seed: int = 0

    def __post_init__(self) -> None:
        _validate(self)
        _require(self, "lr", 0 < self.lr <= 1e6, "a number in (0, 1e6]")
        _require(self, "steps", 1 <= self.steps <= 10**8, "an integer in [1, 10**8]")
        _require(self, "batch_size", 1 <= self.batch_size <= 100_000, "an integer in [1, 100000]")
        _require(self, "n_samples", 1 <= self.n_samples <= 10**7, "an integer in [1, 10**7]")
        _require_seed(self)


@register_task("two_layer", TwoLayerParams, metrics=("loss", "loss_db", "stall_fraction"))
def two_layer(p: TwoLayerParams) -> TrialResult:
    """Metrics: ``loss`` (final, full data), ``loss_db``, ``stall_fraction``."""
    from models.two_layer import teacher_data, train_fixed

    x, t = teacher_data(p.n_samples, p.seed)
    r = train_fixed(
        x,
        t,
        lr=p.lr,
        steps=p.steps,
        batch_size=p.batch_size,
        weight=p.weight,
        accumulator=p.accumulator,
        activation=p.activation,
        grad=p.grad,
        rounding=p.rounding,
        seed=p.seed,
        log_every=max(1, p.steps // 50),
    )
    loss = r.history[-1]["loss"] if r.history else math.nan
    metrics = {
        "loss": loss,
        "loss_db": _db(loss) if math.isfinite(loss) else math.nan,
        "stall_fraction": r.stall_fraction,
    }
    return TrialResult(
        metrics=metrics, history=r.history, diverged=r.diverged, info={"params": r.params}
    )
