"""Linear classifiers as torch modules, trainable by any (hwsim) optimizer.

- :class:`SoftmaxRegression`: multinomial logistic regression, cross-entropy loss.
- :class:`LinearSVM`: a linear SVM trained by SGD on the multi-class hinge loss
  of Weston & Watkins 1999 (``torch.nn.MultiMarginLoss``); the L2 term is the
  optimizer's ``weight_decay`` (lambda), as in Pegasos (Shalev-Shwartz et al. 2007).

Both start at zero weights (the problems are convex). Each model has a
``loss(scores, labels)`` method, so a training loop need not know which it is.

>>> import torch
>>> m = SoftmaxRegression(64, 10)
>>> m(torch.zeros(3, 1, 8, 8)).shape
torch.Size([3, 10])
"""

from __future__ import annotations

import torch
from torch import nn


class SoftmaxRegression(nn.Module):
    """``scores = W flatten(x) + b``; loss: cross entropy of softmax(scores)."""

    def __init__(self, in_features: int, n_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, n_classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))

    def loss(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(scores, labels)


class LinearSVM(nn.Module):
    """``scores = W flatten(x) + b``; loss: mean over samples of
    ``sum_{j != y} max(0, margin - s_y + s_j) / n_classes``."""

    def __init__(self, in_features: int, n_classes: int, margin: float = 1.0) -> None:
        super().__init__()
        if not margin > 0:
            raise ValueError(f"margin must be > 0, got {margin!r}")
        self.linear = nn.Linear(in_features, n_classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.margin = float(margin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))

    def loss(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.multi_margin_loss(scores, labels, margin=self.margin)
