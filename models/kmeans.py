"""K-means as stochastic gradient descent (Bottou & Bengio 1995).

The loss of a mini-batch is ``mean_n min_k ||x_n - c_k||^2 / 2``; its gradient
for centroid k is ``sum over the batch samples assigned to k of (c_k - x_n) / B``,
so an SGD step moves each centroid toward the samples it won, which is online
K-means (MacQueen 1967) with a learning rate. As a torch module with the
centroids as its one parameter, it trains with any (hwsim) optimizer, so the
centroid updates can stall on a fixed-point grid like any weight.

With a :class:`DistanceDatapath` the assignment step runs on the datapath's
formats, not in float: each difference ``x - c`` is rounded to the
subtractor's format, the squared distance is the MAC array's dot product of
that difference with itself (``hwsim.matmul``: products optionally rounded,
the sum accumulated in the accumulator format with its overflow), and the
argmin compares those fixed-point distances (ties go to the lowest centroid
index, as a sequential comparator does). The loss and its gradient then use
that assignment.

>>> import torch
>>> km = KMeansSGD(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
>>> km.assign(torch.tensor([[0.1, 0.0], [0.9, 1.2]])).tolist()
[0, 1]
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

import hwsim
from hwsim.formats import FixedPoint, parse_format
from hwsim.modes import Rounding


@dataclasses.dataclass(frozen=True)
class DistanceDatapath:
    """Formats of the assignment step: ``difference`` (the subtractor's output,
    saturating), ``accumulator`` (the squared-distance MAC accumulator), an
    optional ``product`` format for each square, and a deterministic rounding."""

    difference: FixedPoint | str
    accumulator: FixedPoint | str
    product: FixedPoint | str | None = None
    rounding: Rounding | str = "nearest"

    def __post_init__(self) -> None:
        for name in ("difference", "accumulator", "product"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, parse_format(value))
        mode = Rounding.parse(self.rounding)
        if mode is Rounding.STOCHASTIC:
            raise ValueError(
                "DistanceDatapath rounding must be deterministic (nearest, nearest_away, "
                "floor or zero): an assignment has no seed stream, got 'stochastic'"
            )
        object.__setattr__(self, "rounding", mode)

    def distances(self, x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
        """Squared distances (n, k) as the datapath computes them (float64 values
        on the accumulator grid)."""
        diff = x.flatten(1).double()[:, None, :] - centroids.detach().double()[None, :, :]
        d = hwsim.quantize(diff, self.difference, self.rounding)
        sq = hwsim.matmul(
            d.unsqueeze(-2),
            d.unsqueeze(-1),
            accumulator=self.accumulator,
            product=self.product,
            rounding=self.rounding,
        )
        return sq[..., 0, 0]


class KMeansSGD(nn.Module):
    def __init__(self, centroids: torch.Tensor, datapath: DistanceDatapath | None = None) -> None:
        super().__init__()
        if centroids.ndim != 2:
            raise ValueError(f"centroids must be (k, features), got shape {tuple(centroids.shape)}")
        self.centroids = nn.Parameter(centroids.clone().float())
        self.datapath = datapath

    @classmethod
    def kmeans_plus_plus(
        cls, x: np.ndarray, k: int, seed: int, datapath: DistanceDatapath | None = None
    ) -> KMeansSGD:
        """Seed the centroids by k-means++ (Arthur & Vassilvitskii 2007)."""
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        if not 1 <= k <= len(x):
            raise ValueError(f"k must be in [1, {len(x)}] (the number of samples), got {k!r}")
        rng = np.random.default_rng([seed, 7])
        chosen = [int(rng.integers(len(x)))]
        d2 = ((x - x[chosen[0]]) ** 2).sum(1)
        for _ in range(k - 1):
            i = (
                int(rng.choice(len(x), p=d2 / d2.sum()))
                if d2.sum() > 0
                else int(rng.integers(len(x)))
            )
            chosen.append(i)
            d2 = np.minimum(d2, ((x - x[i]) ** 2).sum(1))
        return cls(torch.tensor(x[chosen], dtype=torch.float32), datapath)

    def distances(self, x: torch.Tensor) -> torch.Tensor:
        """Squared distances (n, k)."""
        x = x.flatten(1)
        return (x[:, None, :] - self.centroids[None, :, :]).pow(2).sum(-1)

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """The winning centroid per sample (on the datapath when there is one;
        ties to the lowest index)."""
        with torch.no_grad():
            if self.datapath is None:
                return self.distances(x).argmin(1)
            return self.datapath.distances(x, self.centroids).argmin(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The mini-batch loss ``mean_n min_k ||x_n - c_k||^2 / 2`` (with a
        datapath: ``mean_n ||x_n - c_a(n)||^2 / 2`` at its assignment ``a``)."""
        if self.datapath is None:
            return 0.5 * self.distances(x).min(1).values.mean()
        won = self.centroids[self.assign(x)]
        return 0.5 * (x.flatten(1) - won).pow(2).sum(1).mean()


def purity(assignments: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples whose cluster's majority label is their label."""
    assignments, labels = np.asarray(assignments), np.asarray(labels)
    total = 0
    for c in np.unique(assignments):
        total += np.bincount(labels[assignments == c]).max()
    return total / len(labels)
