"""An MLP and a small LeNet-like CNN with He initialization and optional batch
norm and dropout, made fixed point with hwsim's quantized layers.

Build the float network, then ``hwsim.nn.quantize_model(model,
hwsim.nn.Precision(...), backend=...)`` swaps each ``nn.Linear`` /
``nn.Conv2d`` for its quantized twin (:func:`build_classifier` does both).
He (Kaiming) initialization (He et al. 2015) suits the ReLU layers;
LeNet follows LeCun et al. 1998 (5x5 convolutions, 2x2 pooling, three fully
connected layers).

>>> import torch
>>> net = MLP(64, 10, hidden=32, batch_norm=True, dropout=0.1)
>>> net(torch.zeros(5, 1, 8, 8)).shape
torch.Size([5, 10])
>>> LeNet((1, 28, 28), 10)(torch.zeros(2, 1, 28, 28)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from torch import nn

from models.linear import LinearSVM, SoftmaxRegression

MODELS = ("mlp", "cnn", "softmax", "svm")


def he_init(module: nn.Module) -> None:
    """Kaiming-normal weights (fan-in, ReLU gain) and zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _check_dropout(dropout: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


class Classifier(nn.Module):
    """Cross-entropy loss shared by the networks."""

    def loss(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(scores, labels)


class MLP(Classifier):
    """``in -> [Linear -> (BatchNorm) -> ReLU -> (Dropout)] x depth -> Linear``."""

    def __init__(
        self,
        in_features: int,
        n_classes: int,
        hidden: int = 100,
        depth: int = 1,
        batch_norm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if hidden < 1 or depth < 1:
            raise ValueError(
                f"hidden and depth must be >= 1, got hidden={hidden!r}, depth={depth!r}"
            )
        _check_dropout(dropout)
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for _ in range(depth):
            layers.append(nn.Linear(width, hidden))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden))
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = hidden
        layers.append(nn.Linear(width, n_classes))
        self.body = nn.Sequential(*layers)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class LeNet(Classifier):
    """LeNet-5-like: conv5x5(6) -> pool -> conv5x5(16) -> pool -> fc(hidden)
    -> fc(hidden * 0.7) -> fc(classes), ReLU, 'same' padding so 8x8 digits
    and 28x28 MNIST both fit."""

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        n_classes: int,
        hidden: int = 120,
        batch_norm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_dropout(dropout)
        channels, height, width = in_shape
        if height < 4 or width < 4:
            raise ValueError(f"LeNet needs images of at least 4x4, got {in_shape}")

        def block(cin: int, cout: int) -> list[nn.Module]:
            mods: list[nn.Module] = [nn.Conv2d(cin, cout, 5, padding=2)]
            if batch_norm:
                mods.append(nn.BatchNorm2d(cout))
            return mods + [nn.ReLU(), nn.MaxPool2d(2)]

        flat = 16 * (height // 4) * (width // 4)
        second = max(1, int(hidden * 0.7))
        fc: list[nn.Module] = [nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU()]
        if dropout:
            fc.append(nn.Dropout(dropout))
        fc += [nn.Linear(hidden, second), nn.ReLU()]
        if dropout:
            fc.append(nn.Dropout(dropout))
        fc.append(nn.Linear(second, n_classes))
        self.body = nn.Sequential(*block(channels, 6), *block(6, 16), *fc)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def build_classifier(
    model: str,
    in_shape: tuple[int, int, int],
    n_classes: int,
    *,
    hidden: int = 100,
    batch_norm: bool = False,
    dropout: float = 0.0,
    precision=None,
    backend: str = "torch",
    seed: int = 0,
) -> nn.Module:
    """One of :data:`MODELS`, initialized from ``seed``; with a
    ``hwsim.nn.Precision`` its Linear/Conv2d layers become quantized layers.
    ``precision`` may also be a dict from layer index (the order of the
    Linear/Conv2d layers in the model, from 0) to a Precision, or None for a
    float layer; an index it leaves out stays float."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    in_features = in_shape[0] * in_shape[1] * in_shape[2]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if model == "mlp":
            net: nn.Module = MLP(
                in_features, n_classes, hidden, batch_norm=batch_norm, dropout=dropout
            )
        elif model == "cnn":
            net = LeNet(in_shape, n_classes, hidden, batch_norm=batch_norm, dropout=dropout)
        elif model == "softmax":
            net = SoftmaxRegression(in_features, n_classes)
        else:
            net = LinearSVM(in_features, n_classes)
    if isinstance(precision, dict):
        import hwsim.nn

        names = [n for n, m in net.named_modules() if type(m) in (nn.Linear, nn.Conv2d)]
        unknown = sorted(set(precision) - set(range(len(names))), key=str)
        if unknown:
            raise ValueError(
                f"precision names layer(s) {unknown}; model {model!r} has Linear/Conv2d "
                f"layers 0..{len(names) - 1} ({names})"
            )
        per_layer = {names[i]: p for i, p in precision.items()}
        net = hwsim.nn.quantize_model(net, None, backend=backend, per_layer=per_layer)
    elif precision is not None:
        import hwsim.nn

        net = hwsim.nn.quantize_model(net, precision, backend=backend)
    return net
