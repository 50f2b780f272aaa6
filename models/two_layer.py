"""The two-layer scalar network of the course notes ("Training DNNs - SGD,
Backprop and its Variants"), trained by its hand-derived backprop updates, in
float or in fixed point. Exactly the notes' network:

    u = w1 x + b1,   v = w2 u^2 + b2,   y = sigmoid(v),   e = d - y,
    loss = e^2

and the notes' four updates for one sample with step size mu:

    w1 += 4 mu e y (1 - y) u w2 x        b1 += 4 mu e y (1 - y) u w2
    w2 += 2 mu e y (1 - y) u^2           b2 += 2 mu e y (1 - y)

(:func:`lecture_updates` writes them as the notes do). They are gradient
descent on ``e^2``; by the chain rule, one line per quantity:

    dv = -2 e y (1 - y)             dL/dv
    dw2 = dv u^2,  db2 = dv
    du = dv 2 w2 u                  dL/du
    dw1 = du x,  db1 = du

:func:`hand_gradients` computes exactly these (averaged over a mini-batch);
``tests/test_models_two_layer.py`` checks them against ``torch.autograd`` on
:class:`TwoLayerNet` and against the notes' updates. :func:`train_fixed` runs
the same updates with every forward quantity rounded to an activation format,
every backward quantity to a gradient format (``hwsim.quantize``), and the
update applied by ``hwsim.optim.SGD``: rounded onto the weight (or weight
accumulator) grid and added there, where small updates stall under
round-to-nearest (Gupta et al. 2015; DESIGN.md, "Weight accumulator").
:class:`TwoLayerNet` is a ``torch.nn.Module``, so any hwsim optimizer can
train it as well.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch

import hwsim
import hwsim.optim
from hwsim.errors import NonFiniteError
from hwsim.formats import FixedPoint
from hwsim.modes import Rounding

PARAMS = ("w1", "b1", "w2", "b2")
Quantizer = Callable[[np.ndarray, str], np.ndarray]


def sigmoid(a: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-a)) without overflow for large |a| (exp(-logaddexp(0, -a)))."""
    return np.exp(-np.logaddexp(0.0, -a))


def _identity(a: np.ndarray, kind: str) -> np.ndarray:
    return a


def forward(
    params: dict[str, float], x: np.ndarray, q: Quantizer = _identity
) -> dict[str, np.ndarray]:
    """The forward pass; ``q(array, "activation")`` rounds each intermediate."""
    u = q(params["w1"] * x + params["b1"], "activation")
    s = q(u * u, "activation")
    v = q(params["w2"] * s + params["b2"], "activation")
    y = q(sigmoid(v), "activation")
    return {"x": x, "u": u, "s": s, "v": v, "y": y}


def loss_of(y: np.ndarray, d: np.ndarray) -> float:
    """The notes' loss, ``e^2`` with ``e = d - y``, averaged over the batch."""
    return float(np.mean((d - y) ** 2))


def lecture_updates(params: dict[str, float], x: float, d: float, mu: float) -> dict[str, float]:
    """The notes' four updates for one sample, written as the notes write them.

    >>> up = lecture_updates({"w1": 1.0, "b1": 0.0, "w2": 1.0, "b2": 0.0}, 0.0, 1.0, 0.5)
    >>> float(up["w1"]), float(up["w2"]), float(up["b2"])  # u = 0: only b2 moves
    (0.0, 0.0, 0.125)
    """
    w1, b1, w2, b2 = (params[k] for k in PARAMS)
    u = w1 * x + b1
    y = sigmoid(w2 * u**2 + b2)
    e = d - y
    return {
        "w1": 4 * mu * e * y * (1 - y) * u * w2 * x,
        "b1": 4 * mu * e * y * (1 - y) * u * w2,
        "w2": 2 * mu * e * y * (1 - y) * u**2,
        "b2": 2 * mu * e * y * (1 - y),
    }


def hand_gradients(
    params: dict[str, float], x: np.ndarray, t: np.ndarray, q: Quantizer = _identity
) -> tuple[dict[str, float], float]:
    """Mean-over-batch gradients of ``(t - y)^2`` by the hand-derived rules,
    and the mean loss. ``q(array, "grad")`` rounds each backward quantity.

    >>> g, loss = hand_gradients({"w1": 1.0, "b1": 0.0, "w2": 1.0, "b2": 0.0},
    ...                          np.array([0.0]), np.array([1.0]))
    >>> g["w1"], g["w2"], g["b2"]  # u = 0, y = 1/2: dv = -2 (1/2)(1/4)
    (0.0, 0.0, -0.25)
    """
    f = forward(params, np.asarray(x, dtype=np.float64), q)
    y, u = f["y"], f["u"]
    e = t - y
    dv = q(-2.0 * e * y * (1.0 - y), "grad")
    du = q(dv * 2.0 * params["w2"] * u, "grad")
    grads = {
        "w2": float(np.mean(q(dv * f["s"], "grad"))),
        "b2": float(np.mean(dv)),
        "w1": float(np.mean(q(du * f["x"], "grad"))),
        "b1": float(np.mean(du)),
    }
    return grads, loss_of(y, t)


class TwoLayerNet(torch.nn.Module):
    """The same network as a torch module (for autograd and hwsim optimizers)."""

    def __init__(self, w1: float = 0.5, b1: float = 0.0, w2: float = 0.5, b2: float = 0.0) -> None:
        super().__init__()
        for name, value in zip(PARAMS, (w1, b1, w2, b2), strict=True):
            setattr(self, name, torch.nn.Parameter(torch.tensor(float(value), dtype=torch.float64)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.w1 * x + self.b1
        return torch.sigmoid(self.w2 * u**2 + self.b2)

    def loss(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return ((t - self(x)) ** 2).mean()


TEACHER = {"w1": 0.8, "b1": -0.2, "w2": 1.5, "b2": -2.0}


def teacher_data(
    n: int, seed: int, teacher: dict[str, float] = TEACHER
) -> tuple[np.ndarray, np.ndarray]:
    """Inputs uniform in [-2, 2] and the teacher network's outputs as targets."""
    x = np.random.default_rng([seed, 5]).uniform(-2.0, 2.0, n)
    return x, forward(teacher, x)["y"]


@dataclasses.dataclass
class FixedTrainResult:
    params: dict[str, float]
    history: list[dict[str, float]]
    stall_fraction: float
    diverged: bool


def train_fixed(
    x: np.ndarray,
    t: np.ndarray,
    *,
    lr: float = 0.5,
    steps: int = 2000,
    batch_size: int = 16,
    weight: FixedPoint | None = None,
    accumulator: FixedPoint | None = None,
    activation: FixedPoint | None = None,
    grad: FixedPoint | None = None,
    rounding: str = "nearest",
    seed: int = 0,
    init: dict[str, float] | None = None,
    log_every: int = 100,
) -> FixedTrainResult:
    """SGD on the two-layer network with the hand-derived updates, every
    quantity on its fixed-point grid (``None`` = float64).

    The master weights live on ``accumulator`` (or on ``weight`` when it is
    None); ``hwsim.optim.SGD`` rounds the update ``-lr * g`` onto that grid
    and adds it there, and the network uses the master weights rounded to
    ``weight``. A parameter whose nonzero update rounds to zero counts as a
    stall. A non-finite loss or gradient ends the run as diverged.

    >>> x, t = teacher_data(256, seed=0)
    >>> r = train_fixed(x, t, steps=300, weight=FixedPoint(16, 12))
    >>> r.history[-1]["loss"] < r.history[0]["loss"]
    True
    """
    from models.datasets import batches

    stream = [0]

    def noise_seed() -> int:
        stream[0] += 1
        return (seed * 1_000_003 + stream[0]) & ((1 << 63) - 1)

    mode = Rounding.parse(rounding)

    def q(a, kind: str):
        fmt = activation if kind == "activation" else grad
        return a if fmt is None else hwsim.quantize(a, fmt, mode, seed=noise_seed())

    rng = np.random.default_rng([seed, 6])
    init = init or dict(zip(PARAMS, rng.normal(0.0, 0.5, 4).tolist(), strict=True))
    param, opt = weight_optimizer(
        [init[k] for k in PARAMS],
        lr,
        weight=weight,
        accumulator=accumulator,
        rounding=mode,
        seed=seed,
    )
    history: list[dict[str, float]] = []
    nonzero = stalls = 0
    step, epoch = 0, 0

    def weights() -> dict[str, float]:
        return dict(zip(PARAMS, model_weights(param, weight).tolist(), strict=True))

    def result(diverged: bool) -> FixedTrainResult:
        return FixedTrainResult(weights(), history, stalls / max(nonzero, 1), diverged)

    while step < steps:
        for idx in batches(len(x), batch_size, seed, epoch):
            try:
                grads, loss = hand_gradients(weights(), x[idx], t[idx], q)
                if not np.isfinite(loss):
                    return result(True)
                moved, stalled = sgd_step(param, opt, [grads[k] for k in PARAMS])
            except NonFiniteError:
                return result(True)
            nonzero += moved
            stalls += stalled
            step += 1
            if step % log_every == 0 or step == 1 or step == steps:
                full_loss = loss_of(forward(weights(), x)["y"], t)
                history.append(
                    {"step": step, "loss": full_loss, "stall_fraction": stalls / max(nonzero, 1)}
                )
            if step >= steps:
                break
        epoch += 1
    return result(False)


def weight_optimizer(
    init,
    lr: float,
    *,
    weight: FixedPoint | None,
    accumulator: FixedPoint | None,
    rounding: Rounding | str = "nearest",
    seed: int = 0,
) -> tuple[torch.nn.Parameter, hwsim.optim.SGD]:
    """The four parameters as one float64 tensor and the library's SGD that
    updates them (weight accumulator semantics: DESIGN.md). The tensor starts
    at ``init`` rounded onto the accumulator grid (the weight's without one),
    where the optimizer's master copy starts."""
    master = accumulator if accumulator is not None else weight
    values = np.asarray(init, dtype=np.float64)
    if master is not None:
        values = hwsim.quantize(values, master, rounding, seed=seed)
    param = torch.nn.Parameter(torch.from_numpy(np.array(values, dtype=np.float64)))
    opt = hwsim.optim.SGD(
        [param],
        lr=lr,
        weight=weight,
        accumulator=accumulator,
        rounding=str(Rounding.parse(rounding)),
        seed=seed,
    )
    return param, opt


def model_weights(param: torch.Tensor, weight: FixedPoint | None) -> np.ndarray:
    """The weights the network sees: the parameter rounded to nearest onto
    ``weight`` (the identity after the first step, when the optimizer has
    written the accumulator's weight into it)."""
    values = param.detach().numpy().copy()
    return values if weight is None else hwsim.quantize(values, weight)


def sgd_step(param: torch.Tensor, opt: hwsim.optim.SGD, grads) -> tuple[int, int]:
    """One library SGD step with the given gradients; returns (nonzero
    updates, stalled ones) from the optimizer's telemetry (exact here: the
    tensor has four elements)."""
    param.grad = torch.tensor(grads, dtype=torch.float64)
    opt.step()
    lr = opt.param_groups[0]["lr"]
    nonzero = int(np.count_nonzero(lr * np.asarray(grads, dtype=np.float64)))
    stall_fraction = opt.telemetry[0]["stall_fraction"]
    return nonzero, round(stall_fraction * nonzero) if nonzero else 0
