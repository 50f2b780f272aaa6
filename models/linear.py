"""Linear classifiers as torch modules, trainable by any (hwsim) optimizer.

- :class:`SoftmaxRegression`: multinomial logistic regression, cross-entropy loss.
- :class:`LinearSVM`: a linear SVM trained by SGD on the multi-class hinge loss
  of Weston & Watkins 1999 (``torch.nn.MultiMarginLoss``); the L2 term is the
  optimizer's ``weight_decay`` (lambda), as in Pegasos (Shalev-Shwartz et al. 2007).
- :class:`BinarySVM`: the course notes' SVM as SGD: labels in {-1, +1}, loss
  ``lambda/2 ||w||^2 + max(0, 1 - y (w^T x + b))``, the bias not decayed.

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


class BinarySVM(nn.Module):
    """The course notes' linear SVM trained by SGD: ``score = w^T flatten(x) + b``,
    labels ``y`` in {-1, +1}, loss (averaged over the batch)

        lambda/2 ||w||^2 + max(0, 1 - y score)

    with the L2 term in the loss, on ``w`` only (the bias is not decayed). Its
    SGD step is the notes' ``w <- w - mu (lambda w - y x [y score < 1])``,
    ``b <- b + mu y [y score < 1]``.

    >>> import torch
    >>> m = BinarySVM(2, lam=0.1)
    >>> m.loss(m(torch.tensor([[1.0, 0.0]])), torch.tensor([1.0]))  # w = 0: hinge 1
    tensor(1., grad_fn=<AddBackward0>)
    """

    def __init__(self, in_features: int, lam: float = 1e-3) -> None:
        super().__init__()
        if not lam >= 0:
            raise ValueError(f"lam (the L2 weight lambda) must be >= 0, got {lam!r}")
        self.linear = nn.Linear(in_features, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.lam = float(lam)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1)).squeeze(1)

    def loss(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not bool(((labels == 1) | (labels == -1)).all()):
            raise ValueError("BinarySVM labels must be -1 or +1 (the notes' convention)")
        hinge = torch.clamp(1.0 - labels.to(scores.dtype) * scores, min=0.0).mean()
        return hinge + 0.5 * self.lam * (self.linear.weight**2).sum()
