"""Datasets that need no network access, and deterministic mini-batches.

- :func:`system_identification`: an unknown FIR system driven by white or
  colored (AR(1)) input, observed in white noise at a given SNR;
- :func:`channel_equalization`: +-1 symbols through a dispersive channel,
  to be equalized back to the delayed symbols (Haykin, *Adaptive Filter
  Theory*, the raised-cosine channel experiment);
- :func:`load_digits`: scikit-learn's bundled 8x8 digits (1,797 images);
- :func:`load_mnist`: MNIST or Fashion-MNIST from IDX files (optionally
  gzipped) or a Keras-style ``.npz`` the user points to;
- :func:`batches`: shuffled mini-batch indices, a pure function of
  (seed, epoch).

Everything is a pure function of its seed.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclasses.dataclass
class AdaptiveFilterData:
    """Input ``x``, desired ``d`` and what the ideal filter achieves.

    ``wiener``: the least-squares (Wiener) filter with as many taps as asked,
    fitted on the whole signal; ``mmse``: its mean squared error, the minimum
    MSE ``xi_min`` the excess MSE is measured against; ``system``: the true
    unknown system (system identification) or the channel (equalization).
    ``clean``: for a drifting system, its noise-free output sample by sample
    (the excess MSE is measured against it); ``system`` and ``wiener`` are then
    the system at the last sample and ``mmse`` the noise power.
    """

    x: np.ndarray
    d: np.ndarray
    system: np.ndarray
    wiener: np.ndarray
    mmse: float
    noise_variance: float
    clean: np.ndarray | None = None


def _check(name: str, value, ok: bool, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def colored_input(n_samples: int, color: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance AR(1) input ``x(n) = color x(n-1) + sqrt(1 - color^2) w(n)``;
    ``color`` = 0 gives white noise, near 1 a large eigenvalue spread."""
    _check("color", color, 0.0 <= color < 1.0, "in [0, 1)")
    w = rng.standard_normal(n_samples)
    if color == 0.0:
        return w
    from scipy.signal import lfilter

    g = np.sqrt(1.0 - color * color)
    start = rng.standard_normal()  # x(-1), drawn from the stationary distribution
    return lfilter([g], [1.0, -color], w, zi=[color * start])[0]


def wiener_filter(x: np.ndarray, d: np.ndarray, taps: int) -> tuple[np.ndarray, float]:
    """Least-squares FIR filter of ``taps`` taps from ``x`` to ``d`` and its MSE."""
    n = x.size
    regressors = np.zeros((n, taps))
    for i in range(taps):
        regressors[i:, i] = x[: n - i]
    # normal equations (R w = p): the regressors are well conditioned here and
    # this is ~50x cheaper than an SVD-based lstsq
    w = np.linalg.solve(regressors.T @ regressors, regressors.T @ d)
    residual = d - regressors @ w
    return w, float(np.mean(residual**2))


def system_identification(
    n_samples: int = 20000,
    taps: int = 16,
    *,
    color: float = 0.0,
    snr_db: float = 40.0,
    seed: int = 0,
    drift: float = 0.0,
) -> AdaptiveFilterData:
    """Identify an unknown ``taps``-tap FIR system from its noisy output.

    The system has exponentially decaying random taps scaled to unit energy,
    so ``d`` has about unit power; noise is white Gaussian at ``snr_db``.
    ``drift`` > 0 makes the system a random walk (a tracking problem): every
    sample each tap moves by ``drift`` times a standard normal, so an adaptive
    filter that stops adapting falls behind.

    >>> data = system_identification(5000, taps=4, snr_db=30.0, seed=1)
    >>> round(float(10 * np.log10(data.mmse)), 1)  # about -30 dB
    -30.0
    """
    _check("n_samples", n_samples, isinstance(n_samples, int) and n_samples >= 1, "an integer >= 1")
    _check("taps", taps, isinstance(taps, int) and taps >= 1, "an integer >= 1")
    rng = np.random.default_rng([seed, 1])
    system = rng.standard_normal(taps) * 0.7 ** np.arange(taps)
    system /= np.linalg.norm(system)
    x = colored_input(n_samples, color, rng)
    _check("drift", drift, isinstance(drift, int | float) and drift >= 0, "a number >= 0")
    if drift == 0:
        clean = np.convolve(x, system)[:n_samples]
    else:  # its own stream: the data of drift=0 does not change
        walk = system + np.cumsum(
            drift * np.random.default_rng([seed, 3]).standard_normal((n_samples, taps)), axis=0
        )
        lagged = np.lib.stride_tricks.sliding_window_view(
            np.concatenate([np.zeros(taps - 1), x]), taps
        )[:, ::-1]  # lagged[n, k] = x[n - k]
        clean = np.einsum("nk,nk->n", walk, lagged)
    noise_variance = float(np.mean(clean**2)) * 10.0 ** (-snr_db / 10.0)
    d = clean + np.sqrt(noise_variance) * rng.standard_normal(n_samples)
    if drift == 0:
        wiener, mmse = wiener_filter(x, d, taps)
        return AdaptiveFilterData(x, d, system, wiener, mmse, noise_variance)
    final = walk[-1].copy()
    return AdaptiveFilterData(x, d, final, final, noise_variance, noise_variance, clean)


def channel_equalization(
    n_samples: int = 20000,
    taps: int = 11,
    *,
    color: float = 0.0,
    snr_db: float = 30.0,
    seed: int = 0,
) -> AdaptiveFilterData:
    """Equalize +-1 symbols sent through Haykin's raised-cosine channel
    ``h_k = (1 + cos(2 pi (k - 2) / W)) / 2``, k = 1, 2, 3, with
    ``W = 2.9 + 0.8 * color`` (larger W, larger eigenvalue spread). The desired
    signal is the symbol delayed by ``taps // 2 + 1`` samples.

    >>> data = channel_equalization(4000, taps=11, seed=0)
    >>> data.mmse < 0.05
    True
    """
    _check("n_samples", n_samples, isinstance(n_samples, int) and n_samples >= 1, "an integer >= 1")
    _check("taps", taps, isinstance(taps, int) and taps >= 1, "an integer >= 1")
    _check("color", color, 0.0 <= color < 1.0, "in [0, 1)")
    rng = np.random.default_rng([seed, 2])
    width = 2.9 + 0.8 * color
    k = np.arange(1, 4)
    channel = 0.5 * (1.0 + np.cos(2.0 * np.pi * (k - 2) / width))
    symbols = rng.choice([-1.0, 1.0], size=n_samples)
    clean = np.convolve(symbols, channel)[:n_samples]
    noise_variance = float(np.mean(clean**2)) * 10.0 ** (-snr_db / 10.0)
    x = clean + np.sqrt(noise_variance) * rng.standard_normal(n_samples)
    delay = taps // 2 + 1
    d = np.concatenate([np.zeros(delay), symbols[: n_samples - delay]])
    wiener, mmse = wiener_filter(x, d, taps)
    return AdaptiveFilterData(x, d, channel, wiener, mmse, noise_variance)


@dataclasses.dataclass
class Split:
    """A classification dataset: float32 images in [0, 1], int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def n_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> Split:
    """scikit-learn's bundled 8x8 digits as (n, 1, 8, 8) images scaled to [0, 1],
    split into train/test by a seeded permutation.

    >>> s = load_digits(seed=0)
    >>> s.x_train.shape, s.x_test.shape, s.n_classes
    ((1438, 1, 8, 8), (359, 1, 8, 8), 10)
    """
    from sklearn.datasets import load_digits as sk_digits

    _check("test_fraction", test_fraction, 0.0 < test_fraction < 1.0, "in (0, 1)")
    bunch = sk_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng([seed, 3]).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    return Split(x[train], y[train], x[test], y[test])


def load_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (the MNIST container format), gzipped or not.

    Layout: two zero bytes, a dtype byte (0x08 uint8, 0x09 int8, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions, each
    dimension as a big-endian uint32, then the data in C order, big-endian.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (must start with two zero bytes)")
    if raw[2] not in IDX_DTYPES:
        raise ValueError(
            f"{path}: unknown IDX dtype byte 0x{raw[2]:02x}; "
            f"known: {', '.join(f'0x{k:02x}' for k in IDX_DTYPES)}"
        )
    dtype, ndim = IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: IDX header truncated")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(shape)) if ndim else 1
    if len(raw) - header != count * dtype.itemsize:
        raise ValueError(
            f"{path}: IDX header says shape {shape} ({count * dtype.itemsize} bytes) "
            f"but the file holds {len(raw) - header} bytes of data"
        )
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


_IDX_PARTS = {
    "x_train": "train-images",
    "y_train": "train-labels",
    "x_test": "t10k-images",
    "y_test": "t10k-labels",
}


def _find_idx(folder: Path, stem: str) -> Path:
    hits = sorted(p for p in folder.iterdir() if p.name.startswith(stem) and "idx" in p.name)
    if not hits:
        raise ValueError(
            f"{folder}: no IDX file named {stem}-idx*-ubyte[.gz]; an MNIST folder holds "
            f"{', '.join(s + '-idx?-ubyte' for s in _IDX_PARTS.values())}"
        )
    return hits[0]


def load_mnist(path: str | os.PathLike) -> Split:
    """MNIST or Fashion-MNIST (same layout) from the user's files, as
    (n, 1, 28, 28) float32 images in [0, 1] and int64 labels.

    ``path`` is a folder holding the four IDX files
    (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally
    ``.gz``), or a ``.npz`` with arrays ``x_train, y_train, x_test, y_test``
    (the Keras ``mnist.npz`` layout).
    """
    if path is None:
        raise ValueError("MNIST and Fashion-MNIST need data_path: a folder of IDX files or an .npz")
    path = Path(path)
    if not path.exists():
        raise ValueError(
            f"data_path {str(path)!r} does not exist; give a folder of IDX files or an .npz"
        )
    if path.is_dir():
        arrays = {key: load_idx(_find_idx(path, stem)) for key, stem in _IDX_PARTS.items()}
    elif path.suffix == ".npz":
        with np.load(path) as npz:
            missing = [k for k in _IDX_PARTS if k not in npz.files]
            if missing:
                raise ValueError(
                    f"{path}: missing arrays {missing}; an MNIST .npz holds "
                    f"{list(_IDX_PARTS)}, found {npz.files}"
                )
            arrays = {k: npz[k] for k in _IDX_PARTS}
    else:
        raise ValueError(f"data_path {str(path)!r}: expected a folder of IDX files or an .npz file")
    images = {}
    for key in ("x_train", "x_test"):
        a = np.asarray(arrays[key])
        if a.ndim != 3:
            raise ValueError(f"{path}: {key} must have shape (n, rows, cols), got {a.shape}")
        scale = 255.0 if a.dtype == np.uint8 or a.max() > 1.0 else 1.0
        images[key] = (a.astype(np.float32) / scale)[:, None, :, :]
    labels = {k: np.asarray(arrays[k]).astype(np.int64).reshape(-1) for k in ("y_train", "y_test")}
    for xk, yk in (("x_train", "y_train"), ("x_test", "y_test")):
        if len(images[xk]) != len(labels[yk]):
            raise ValueError(f"{path}: {len(images[xk])} {xk} images but {len(labels[yk])} labels")
    return Split(images["x_train"], labels["y_train"], images["x_test"], labels["y_test"])


def batches(n: int, batch_size: int, seed: int, epoch: int) -> Iterator[np.ndarray]:
    """Index arrays of the shuffled mini-batches of one epoch (the last one may
    be smaller). The order is a pure function of ``(seed, epoch)``.

    >>> [b.tolist() for b in batches(5, 2, seed=0, epoch=0)] == \\
    ...     [b.tolist() for b in batches(5, 2, seed=0, epoch=0)]
    True
    """
    _check(
        "batch_size", batch_size, isinstance(batch_size, int) and batch_size >= 1, "an integer >= 1"
    )
    order = np.random.default_rng([seed, 4, epoch]).permutation(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]
