"""Study tasks: what one trial of a precision sweep runs.

Registered with :func:`hwsim.study.task.register_task`; a study spec names them
``"models.tasks:lms"``, ``"models.tasks:classify"``, ``"models.tasks:kmeans"``
and ``"models.tasks:two_layer"``. Each parameter dataclass validates itself
(a bad value raises ``ValueError`` naming the field, the value and what is
allowed) and accepts formats as ``FixedPoint``, ``"fx16.12"`` strings or
``"float"``/``None``.

>>> r = lms(LMSParams(taps=4, n_samples=2000, weight=FixedPoint(16, 14), data=FixedPoint(16, 12)))
>>> r.diverged, len(r.history), sorted(r.metrics)[:4]
(False, 50, ['excess_mse_db', 'final_stall_fraction', 'final_step', 'misadjustment'])
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import typing
from typing import Literal

import numpy as np

from hwsim.formats import FixedPoint, parse_format
from hwsim.study.task import TrialResult, register_task
from models import datasets
from models.lms import FixedLMS, FloatLMS, config_array

RoundingName = Literal["nearest", "nearest_away", "floor", "zero", "stochastic"]
OptimizerName = Literal["sgd", "signsgd", "adam", "adagrad", "rmsprop"]


def _validate(params) -> None:
    """Check every field against its type hint; convert format strings.

    ``Literal`` fields must be one of their choices, ``FixedPoint | None``
    fields accept a FixedPoint, a format string or ``"float"``/None, numbers
    must be numbers (bools are not)."""
    hints = typing.get_type_hints(type(params))
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        hint = hints[f.name]
        where = f"{type(params).__name__}.{f.name}"
        if typing.get_origin(hint) is Literal:
            if value not in typing.get_args(hint):
                raise ValueError(
                    f"{where}: {value!r} is not allowed; choose one of {list(typing.get_args(hint))}"
                )
        elif FixedPoint in typing.get_args(hint):
            try:
                object.__setattr__(params, f.name, parse_format(value))
            except (ValueError, TypeError) as err:
                raise ValueError(
                    f"{where}: bad format {value!r} ({err}); use e.g. 'fx16.12' or 'float'"
                ) from None
        elif hint is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{where}: must be true or false, got {value!r}")
        elif hint is int:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{where}: must be an integer, got {value!r}")
        elif hint is float:
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
            ):
                raise ValueError(f"{where}: must be a finite number, got {value!r}")
            object.__setattr__(params, f.name, float(value))


def _require(params, name: str, ok: bool, allowed: str) -> None:
    if not ok:
        raise ValueError(
            f"{type(params).__name__}.{name}: {getattr(params, name)!r} is not allowed; "
            f"it must be {allowed}"
        )


def _parse_schedule(params):
    """The gear-shift policy of ``params.schedule`` (``hwsim.schedules``), or
    None for a constant step."""
    if isinstance(params.schedule, str) and params.schedule.strip().lower() == "constant":
        return None
    from hwsim.schedules import GearShiftPolicy

    try:
        return GearShiftPolicy.parse(params.schedule)
    except ValueError as err:
        raise ValueError(f"{type(params).__name__}.schedule: {err}") from None


def _db(value: float) -> float:
    return 10.0 * math.log10(value) if value > 0 else -math.inf


# --------------------------------------------------------------------------- lms


@dataclasses.dataclass(frozen=True)
class LMSParams:
    """An adaptive FIR filter trial (see :mod:`models.lms`).

    ``weight``, ``accumulator`` (the filter's MAC accumulator), ``error``,
    ``data`` and ``weight_accumulator``: formats, ``None`` = wide (all ``None``:
    the float64 baseline). ``rounding`` applies to every stage (data, products,
    accumulator, error, update, weight). ``step`` is held with 16 significant
    bits. ``schedule``: a ``hwsim.schedules.GearShiftPolicy``
    text; ``every=`` counts samples, the plateau metric is the block MSE.
    ``drift`` > 0 (system identification only): the unknown system is a random
    walk (``models.datasets.system_identification``), a tracking problem; the
    excess MSE is then measured against its noise-free output and the weight
    error against the system at the last sample.
    ``blocks``: how many blocks (history rows) the run is cut into.
    """

    taps: int = 16
    rule: Literal["lms", "sign_error", "sign_data", "sign_sign"] = "lms"
    step: float = 0.01
    weight: FixedPoint | None = None
    accumulator: FixedPoint | None = None
    error: FixedPoint | None = None
    data: FixedPoint | None = None
    rounding: RoundingName = "nearest"
    n_samples: int = 20000
    snr_db: float = 40.0
    color: float = 0.0
    problem: Literal["system_id", "equalization"] = "system_id"
    drift: float = 0.0
    schedule: str = "constant"
    seed: int = 0
    weight_accumulator: FixedPoint | None = None
    blocks: int = 50

    def __post_init__(self) -> None:
        _validate(self)
        _require(self, "taps", 1 <= self.taps <= 1024, "an integer in [1, 1024]")
        _require(self, "step", self.step > 0, "a number > 0")
        _require(
            self, "n_samples", self.n_samples >= max(self.taps, 10), "an integer >= max(taps, 10)"
        )
        _require(self, "color", 0.0 <= self.color < 1.0, "in [0, 1)")
        _require(
            self,
            "drift",
            self.drift >= 0 and (self.drift == 0 or self.problem == "system_id"),
            "a number >= 0 (0 unless problem is 'system_id')",
        )
        _require(self, "blocks", 1 <= self.blocks <= self.n_samples, "an integer in [1, n_samples]")
        _parse_schedule(self)
        if not self.is_float:
            try:
                filt = FixedLMS(
                    self.taps,
                    self.rule,
                    data=self.data,
                    weight=self.weight,
                    accumulator=self.accumulator,
                    error=self.error,
                    weight_accumulator=self.weight_accumulator,
                )  # checks the formats
                config_array(filt.formats, self.rule, self.step)  # ... and the step with them
            except ValueError as err:
                raise ValueError(
                    f"LMSParams formats (weight, accumulator, error, data, "
                    f"weight_accumulator) and step: {err}"
                ) from None

    @property
    def is_float(self) -> bool:
        return all(
            f is None
            for f in (self.weight, self.accumulator, self.error, self.data, self.weight_accumulator)
        )


def _typical_update_lsb(p: LMSParams, filt, mu: float, e: np.ndarray, x: np.ndarray) -> float:
    """A typical |mu g| in weight-accumulator LSBs: rms error and input in place
    of the sign-less factors (the precision floor of a gear-shift policy)."""
    if p.is_float:
        return math.inf
    size = mu
    if p.rule in ("lms", "sign_data"):
        size *= float(np.sqrt(np.mean(e * e)))
    if p.rule in ("lms", "sign_error"):
        size *= float(np.sqrt(np.mean(x * x)))
    return size / filt.formats.weight_accumulator.lsb


@register_task("lms", LMSParams)
def lms(p: LMSParams) -> TrialResult:
    """System identification or channel equalization with one LMS variant.

    Metrics (steady state = the last 10% of the samples): ``mse_db``,
    ``excess_mse_db`` (the power of the filter output minus the Wiener
    filter's output, i.e. the MSE above the minimum), ``misadjustment``
    (excess / minimum MSE), ``stall_fraction`` (nonzero tap updates rounded
    to zero, whole run), ``final_stall_fraction`` (steady state),
    ``weight_error_db`` (||w - w_wiener||^2 / ||w_wiener||^2), ``wiener_power_db``
    (||w_wiener||^2), ``final_step``.
    """
    started = time.perf_counter()
    if p.problem == "system_id":
        data = datasets.system_identification(
            p.n_samples, p.taps, color=p.color, snr_db=p.snr_db, seed=p.seed, drift=p.drift
        )
    else:
        data = datasets.channel_equalization(
            p.n_samples, p.taps, color=p.color, snr_db=p.snr_db, seed=p.seed
        )
    if p.is_float:
        filt = FloatLMS(p.taps, p.rule)
    else:
        filt = FixedLMS(
            p.taps,
            p.rule,
            data=p.data,
            weight=p.weight,
            accumulator=p.accumulator,
            error=p.error,
            weight_accumulator=p.weight_accumulator,
            rounding=p.rounding,
            seed=p.seed,
        )
        # the data quantized once (one kernel call; the noise is per sample
        # index, so this equals quantizing block by block)
        x_codes = filt.data_codes(data.x, 1, 0)
        d_codes = filt.data_codes(data.d, 2, 0)
    policy = _parse_schedule(p)
    block = max(1, p.n_samples // p.blocks)
    if policy is not None and policy.every is not None:  # block edges must fall on the shift points
        block = math.gcd(block, policy.every)
    steady_from = p.n_samples - max(p.n_samples // 10, 1)
    y = np.empty(p.n_samples)
    mu = p.step
    history: list[dict[str, float]] = []
    nonzero = stalls = saturated = 0
    steady_nonzero = steady_stalls = 0
    diverged = False
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, p.n_samples, block):
            stop = min(start + block, p.n_samples)
            if p.is_float:
                r = filt.run(data.x[start:stop], data.d[start:stop], mu)
            else:
                r = filt.run_codes(x_codes[start:stop], d_codes[start:stop], mu)
            y[start:stop] = r.y
            nonzero += r.nonzero_updates
            stalls += r.stalls
            saturated += r.saturated
            if start >= steady_from:
                steady_nonzero += r.nonzero_updates
                steady_stalls += r.stalls
            err = data.d[start:stop] - r.y
            mse = float(np.mean(err * err))
            history.append(
                {
                    "step": stop,
                    "mse_db": _db(mse),
                    "stall_fraction": r.stall_fraction,
                    "step_size": mu,
                }
            )
            if not math.isfinite(mse):
                diverged = True
                break
            if policy is not None:
                mu = policy.next_lr(
                    mu,
                    stop,
                    metric=mse,
                    typical_update_lsb=_typical_update_lsb(
                        p, filt, mu, r.error, data.x[start:stop]
                    ),
                )
    err = data.d[steady_from:] - y[steady_from:]
    # excess MSE measured directly as the power of (filter output - Wiener
    # output): the a-priori excess error, orthogonal to the Wiener error, so
    # no noisy "MSE - MMSE" subtraction (that cannot resolve excess below ~5%
    # of the MMSE over a few thousand samples)
    # (a drifting system: its own noise-free output, the best any tracker can do)
    wiener_out = (
        data.clean if data.clean is not None else np.convolve(data.x, data.wiener)[: p.n_samples]
    )
    eps = y[steady_from:] - wiener_out[steady_from:]
    with np.errstate(over="ignore", invalid="ignore"):
        mse = float(np.mean(err * err)) if not diverged else math.inf
        excess = float(np.mean(eps * eps)) if not diverged else math.inf
    weights = filt.weights
    with np.errstate(over="ignore", invalid="ignore"):
        weight_error = float(np.sum((weights - data.wiener) ** 2) / np.sum(data.wiener**2))
    metrics = {
        "mse_db": _db(mse),
        "excess_mse_db": _db(max(excess, 1e-30)) if math.isfinite(excess) else math.inf,
        "misadjustment": excess / data.mmse,
        "stall_fraction": stalls / nonzero if nonzero else 0.0,
        "final_stall_fraction": steady_stalls / steady_nonzero if steady_nonzero else 0.0,
        "weight_error_db": _db(weight_error) if math.isfinite(weight_error) else math.inf,
        "mmse_db": _db(data.mmse),
        # |w_opt|^2: turns a predicted excess MSE into the weight error (hwsim.theory.plots)
        "wiener_power_db": _db(float(np.sum(data.wiener**2))),
        "final_step": mu,
        "saturated_updates": float(saturated),
    }
    info = {
        "seconds": time.perf_counter() - started,
        "tap_updates": p.taps * p.n_samples,
        "formats": None
        if p.is_float
        else {k: str(v) for k, v in dataclasses.asdict(filt.formats).items()},
    }
    if diverged:
        info["error"] = "the float filter's MSE went non-finite (step too large)"
    return TrialResult(metrics=metrics, history=history, diverged=diverged, info=info)


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
        _require(self, "lr", self.lr > 0, "a number > 0")
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


@register_task("classify", ClassifyParams)
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
    for epoch in range(p.epochs):
        model.train()
        losses, stalls, saturations = [], [], []
        try:
            for idx in datasets.batches(len(y_train), p.batch_size, p.seed, epoch):
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
    return TrialResult(metrics=metrics, history=history, diverged=diverged, info=info)


# ------------------------------------------------------------------------ kmeans


@dataclasses.dataclass(frozen=True)
class KMeansParams:
    """K-means by SGD (:mod:`models.kmeans`) on the digits (flattened 64-d) or
    on Gaussian blobs, with a hwsim optimizer on the centroids."""

    dataset: Literal["digits", "blobs"] = "digits"
    k: int = 10
    optimizer: OptimizerName = "sgd"
    lr: float = 0.05
    weight: FixedPoint | None = None
    accumulator: FixedPoint | None = None
    grad: FixedPoint | None = None
    rounding: RoundingName = "nearest"
    epochs: int = 5
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        _validate(self)
        _require(self, "k", 1 <= self.k <= 100, "an integer in [1, 100]")
        _require(self, "lr", self.lr > 0, "a number > 0")
        _require(self, "epochs", self.epochs >= 1, "an integer >= 1")
        _require(self, "batch_size", self.batch_size >= 1, "an integer >= 1")


@register_task("kmeans", KMeansParams)
def kmeans(p: KMeansParams) -> TrialResult:
    """Metrics: ``inertia`` (mean squared distance to the nearest centroid, all
    data), ``purity`` (majority-label agreement), ``stall_fraction``."""
    with _one_thread_seeded(p.seed):
        return _kmeans(p)


def _kmeans(p: KMeansParams) -> TrialResult:
    import torch

    from models.kmeans import KMeansSGD, purity

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
    model = KMeansSGD.kmeans_plus_plus(x, p.k, p.seed)
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
        _require(self, "lr", self.lr > 0, "a number > 0")
        _require(self, "steps", self.steps >= 1, "an integer >= 1")
        _require(self, "batch_size", self.batch_size >= 1, "an integer >= 1")
        _require(self, "n_samples", self.n_samples >= 1, "an integer >= 1")


@register_task("two_layer", TwoLayerParams)
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
