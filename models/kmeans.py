"""K-means as stochastic gradient descent (Bottou & Bengio 1995).

The loss of a mini-batch is ``mean_n min_k ||x_n - c_k||^2 / 2``; its gradient
for centroid k is ``sum over the batch samples assigned to k of (c_k - x_n) / B``,
so an SGD step moves each centroid toward the samples it won, which is online
K-means (MacQueen 1967) with a learning rate. As a torch module with the
centroids as its one parameter, it trains with any (hwsim) optimizer, so the
centroid updates can stall on a fixed-point grid like any weight.

>>> import torch
>>> km = KMeansSGD(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
>>> km.assign(torch.tensor([[0.1, 0.0], [0.9, 1.2]])).tolist()
[0, 1]
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class KMeansSGD(nn.Module):
    def __init__(self, centroids: torch.Tensor) -> None:
        super().__init__()
        if centroids.ndim != 2:
            raise ValueError(f"centroids must be (k, features), got shape {tuple(centroids.shape)}")
        self.centroids = nn.Parameter(centroids.clone().float())

    @classmethod
    def kmeans_plus_plus(cls, x: np.ndarray, k: int, seed: int) -> KMeansSGD:
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
        return cls(torch.tensor(x[chosen], dtype=torch.float32))

    def distances(self, x: torch.Tensor) -> torch.Tensor:
        """Squared distances (n, k)."""
        x = x.flatten(1)
        return (x[:, None, :] - self.centroids[None, :, :]).pow(2).sum(-1)

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.distances(x).argmin(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The mini-batch loss ``mean_n min_k ||x_n - c_k||^2 / 2``."""
        return 0.5 * self.distances(x).min(1).values.mean()


def purity(assignments: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples whose cluster's majority label is their label."""
    assignments, labels = np.asarray(assignments), np.asarray(labels)
    total = 0
    for c in np.unique(assignments):
        total += np.bincount(labels[assignments == c]).max()
    return total / len(labels)
