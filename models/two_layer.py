"""The two-layer scalar network of the course notes, trained by its hand-derived
backprop updates, in float or in fixed point.

    u = w1 x + b1,   z = sigmoid(u),   v = w2 z + b2,   y = sigmoid(v),
    loss = (y - t)^2 / 2

Backpropagation by hand (the chain rule, one line per quantity):

    dv = (y - t) y (1 - y)          dL/dv
    dw2 = dv z,  db2 = dv
    du = dv w2 z (1 - z)            dL/du
    dw1 = du x,  db1 = du

:func:`hand_gradients` computes exactly these (averaged over a mini-batch);
``tests/test_models_two_layer.py`` checks them against ``torch.autograd`` on
:class:`TwoLayerNet`. :func:`train_fixed` runs the same updates with every
forward quantity rounded to an activation format, every backward quantity to a
gradient format, and the SGD update rounded onto the weight (or weight
accumulator) grid, where small updates stall under round-to-nearest
(Gupta et al. 2015). :class:`TwoLayerNet` is a ``torch.nn.Module``, so any
hwsim optimizer can train it as well.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch

from hwsim.formats import FixedPoint
from hwsim.kernels.jit import kernel
from hwsim.kernels.scalar import STOCHASTIC, counter_uniform, value_to_code
from hwsim.modes import Overflow, Rounding

PARAMS = ("w1", "b1", "w2", "b2")
Quantizer = Callable[[np.ndarray, str], np.ndarray]


@kernel
def _quantize_small(x, out, scale, wrap_modulus, min_code, max_code, rounding, overflow, seed):
    """Serial quantization of a few values (the parallel ``hwsim.quantize``
    kernel costs more in thread start-up than these tiny arrays take); the same
    scalar helpers, so the same arithmetic. Returns the count of non-finite inputs."""
    bad = 0
    for i in range(x.size):
        v = x[i]
        if not np.isfinite(v):
            bad += 1
            out[i] = v
            continue
        u = counter_uniform(seed, i) if rounding == STOCHASTIC else 0.0
        out[i] = (
            value_to_code(v, scale, wrap_modulus, min_code, max_code, rounding, overflow, u) / scale
        )
    return bad


def quantize_small(a: np.ndarray, fmt: FixedPoint, rounding: Rounding, seed: int) -> np.ndarray:
    """Round a small float64 array onto ``fmt`` (saturating); non-finite values
    pass through, so the caller sees the loss go non-finite and stops."""
    a = np.ascontiguousarray(a, dtype=np.float64)
    out = np.empty_like(a)
    _quantize_small(
        a.reshape(-1),
        out.reshape(-1),
        2.0**fmt.fl,
        2.0 ** (fmt.wl - fmt.fl),
        fmt.min_code,
        fmt.max_code,
        int(rounding),
        int(Overflow.SATURATE),
        np.uint64(seed & ((1 << 64) - 1)),
    )
    return out


def sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


def _identity(a: np.ndarray, kind: str) -> np.ndarray:
    return a


def forward(
    params: dict[str, float], x: np.ndarray, q: Quantizer = _identity
) -> dict[str, np.ndarray]:
    """The forward pass; ``q(array, "activation")`` rounds each intermediate."""
    u = q(params["w1"] * x + params["b1"], "activation")
    z = q(sigmoid(u), "activation")
    v = q(params["w2"] * z + params["b2"], "activation")
    y = q(sigmoid(v), "activation")
    return {"x": x, "u": u, "z": z, "v": v, "y": y}


def hand_gradients(
    params: dict[str, float], x: np.ndarray, t: np.ndarray, q: Quantizer = _identity
) -> tuple[dict[str, float], float]:
    """Mean-over-batch gradients of ``(y - t)^2 / 2`` by the hand-derived rules,
    and the mean loss. ``q(array, "grad")`` rounds each backward quantity.

    >>> g, loss = hand_gradients({"w1": 1.0, "b1": 0.0, "w2": 1.0, "b2": 0.0},
    ...                          np.array([0.0]), np.array([0.0]))
    >>> y = 1 / (1 + np.exp(-0.5))  # z = sigmoid(0) = 0.5, v = 0.5
    >>> bool(np.isclose(g["b2"], y * y * (1 - y))), bool(np.isclose(g["w2"], 0.5 * g["b2"]))
    (True, True)
    """
    f = forward(params, np.asarray(x, dtype=np.float64), q)
    y, z = f["y"], f["z"]
    dv = q((y - t) * y * (1.0 - y), "grad")
    du = q(dv * params["w2"] * z * (1.0 - z), "grad")
    grads = {
        "w2": float(np.mean(q(dv * z, "grad"))),
        "b2": float(np.mean(dv)),
        "w1": float(np.mean(q(du * f["x"], "grad"))),
        "b1": float(np.mean(du)),
    }
    loss = float(np.mean(0.5 * (y - t) ** 2))
    return grads, loss


class TwoLayerNet(torch.nn.Module):
    """The same network as a torch module (for autograd and hwsim optimizers)."""

    def __init__(self, w1: float = 0.5, b1: float = 0.0, w2: float = 0.5, b2: float = 0.0) -> None:
        super().__init__()
        for name, value in zip(PARAMS, (w1, b1, w2, b2), strict=True):
            setattr(self, name, torch.nn.Parameter(torch.tensor(float(value), dtype=torch.float64)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.sigmoid(self.w1 * x + self.b1)
        return torch.sigmoid(self.w2 * z + self.b2)

    def loss(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (0.5 * (self(x) - t) ** 2).mean()


TEACHER = {"w1": 2.0, "b1": -0.5, "w2": 4.0, "b2": -2.0}


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
    None); the update ``-lr * g`` is rounded onto that grid, and the network
    uses the master weights rounded to ``weight``. A tap whose nonzero update
    rounds to zero counts as a stall.

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

    def rnd(a, fmt: FixedPoint | None):
        if fmt is None:
            return a
        return quantize_small(a, fmt, mode, noise_seed())

    def q(a, kind: str):
        return rnd(a, activation if kind == "activation" else grad)

    master_fmt = accumulator if accumulator is not None else weight
    rng = np.random.default_rng([seed, 6])
    init = init or dict(zip(PARAMS, rng.normal(0.0, 0.5, 4).tolist(), strict=True))
    master = rnd(np.array([init[k] for k in PARAMS], dtype=np.float64), master_fmt)
    w = rnd(master, weight)
    history: list[dict[str, float]] = []
    nonzero = stalls = 0
    step, epoch = 0, 0

    def as_dict(values: np.ndarray) -> dict[str, float]:
        return dict(zip(PARAMS, values.tolist(), strict=True))

    while step < steps:
        for idx in batches(len(x), batch_size, seed, epoch):
            grads, loss = hand_gradients(as_dict(w), x[idx], t[idx], q)
            if not np.isfinite(loss):
                return FixedTrainResult(as_dict(w), history, stalls / max(nonzero, 1), True)
            update = -lr * np.array([grads[k] for k in PARAMS])
            moved = rnd(master + update, master_fmt)
            nonzero += int(np.count_nonzero(update))
            stalls += int(np.count_nonzero((update != 0) & (moved == master)))
            master = moved
            w = rnd(master, weight)
            step += 1
            if step % log_every == 0 or step == 1 or step == steps:
                full_loss = float(np.mean(0.5 * (forward(as_dict(w), x)["y"] - t) ** 2))
                history.append(
                    {"step": step, "loss": full_loss, "stall_fraction": stalls / max(nonzero, 1)}
                )
            if step >= steps:
                break
        epoch += 1
    return FixedTrainResult(as_dict(w), history, stalls / max(nonzero, 1), False)
