"""Datasets: the IDX/.npz loader on files the test writes, deterministic
shuffling, and the synthetic adaptive-filter problems."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from models.datasets import (
    batches,
    channel_equalization,
    colored_input,
    load_digits,
    load_idx,
    load_mnist,
    system_identification,
)


def write_idx(path, array: np.ndarray, dtype_byte: int = 0x08, compress: bool = False) -> None:
    header = bytes([0, 0, dtype_byte, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    big = array.astype(array.dtype.newbyteorder(">"))
    raw = header + big.tobytes()
    if compress:
        with gzip.open(path, "wb") as fh:
            fh.write(raw)
    else:
        path.write_bytes(raw)


def fake_mnist(rng, n):
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    return images, labels


@pytest.mark.parametrize("compress", [False, True])
def test_idx_folder_roundtrip(tmp_path, compress):
    rng = np.random.default_rng(0)
    xtr, ytr = fake_mnist(rng, 7)
    xte, yte = fake_mnist(rng, 3)
    ext = ".gz" if compress else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{ext}", xtr, compress=compress)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{ext}", ytr, compress=compress)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{ext}", xte, compress=compress)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{ext}", yte, compress=compress)
    s = load_mnist(tmp_path)
    assert s.x_train.shape == (7, 1, 28, 28) and s.x_train.dtype == np.float32
    np.testing.assert_array_equal(s.x_train[:, 0], xtr / np.float32(255.0))
    np.testing.assert_array_equal(s.y_train, ytr.astype(np.int64))
    np.testing.assert_array_equal(s.x_test[:, 0], xte / np.float32(255.0))
    np.testing.assert_array_equal(s.y_test, yte.astype(np.int64))


@pytest.mark.parametrize(
    "dtype_byte,dtype",
    [(0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32), (0x0D, np.float32), (0x0E, np.float64)],
)
def test_idx_dtypes_are_read_big_endian(tmp_path, dtype_byte, dtype):
    a = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype)
    write_idx(tmp_path / "a.idx", a, dtype_byte)
    b = load_idx(tmp_path / "a.idx")
    assert b.shape == a.shape and b.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(a, b)


def test_npz(tmp_path):
    rng = np.random.default_rng(1)
    xtr, ytr = fake_mnist(rng, 5)
    xte, yte = fake_mnist(rng, 4)
    np.savez(tmp_path / "mnist.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    s = load_mnist(tmp_path / "mnist.npz")
    np.testing.assert_array_equal(s.x_test[:, 0], xte / np.float32(255.0))
    np.testing.assert_array_equal(s.y_test, yte)


def test_loader_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_mnist(tmp_path / "nope")
    with pytest.raises(ValueError, match="no IDX file named train-images"):
        load_mnist(tmp_path)
    np.savez(tmp_path / "bad.npz", x_train=np.zeros((2, 28, 28)))
    with pytest.raises(ValueError, match="missing arrays"):
        load_mnist(tmp_path / "bad.npz")
    (tmp_path / "junk.idx").write_bytes(b"\x01\x02\x08\x01")
    with pytest.raises(ValueError, match="not an IDX file"):
        load_idx(tmp_path / "junk.idx")
    write_idx(tmp_path / "short.idx", np.zeros((3, 4), np.uint8))
    raw = (tmp_path / "short.idx").read_bytes()
    (tmp_path / "short.idx").write_bytes(raw[:-2])
    with pytest.raises(ValueError, match="holds 10 bytes"):
        load_idx(tmp_path / "short.idx")
    (tmp_path / "dtype.idx").write_bytes(b"\x00\x00\x07\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="unknown IDX dtype byte 0x07"):
        load_idx(tmp_path / "dtype.idx")


def test_batches_are_deterministic_and_cover_every_sample():
    a = [b.tolist() for b in batches(103, 10, seed=3, epoch=2)]
    b = [b.tolist() for b in batches(103, 10, seed=3, epoch=2)]
    assert a == b
    assert sorted(sum(a, [])) == list(range(103))
    assert [len(x) for x in a] == [10] * 10 + [3]
    assert a != [b.tolist() for b in batches(103, 10, seed=3, epoch=3)]
    assert a != [b.tolist() for b in batches(103, 10, seed=4, epoch=2)]
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        next(batches(10, 0, 0, 0))


def test_digits_split_is_deterministic_by_seed():
    a, b, c = load_digits(0), load_digits(0), load_digits(1)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.y_test, c.y_test)
    assert a.x_train.min() >= 0 and a.x_train.max() <= 1
    assert len(a.y_train) + len(a.y_test) == 1797


def test_system_identification_hits_the_requested_snr_and_color():
    data = system_identification(40000, taps=8, color=0.9, snr_db=30.0, seed=2)
    assert data.x.shape == data.d.shape == (40000,)
    assert abs(np.var(data.x) - 1.0) < 0.1
    lag1 = np.mean(data.x[1:] * data.x[:-1])
    assert abs(lag1 - 0.9) < 0.03
    # the Wiener filter recovers the system and its MSE is the noise floor
    np.testing.assert_allclose(data.wiener, data.system, atol=0.02)
    assert abs(10 * np.log10(data.mmse / data.noise_variance)) < 0.3
    again = system_identification(40000, taps=8, color=0.9, snr_db=30.0, seed=2)
    np.testing.assert_array_equal(again.d, data.d)
    with pytest.raises(ValueError, match=r"color must be in \[0, 1\)"):
        colored_input(10, 1.0, np.random.default_rng(0))


def test_channel_equalization_is_solvable():
    data = channel_equalization(20000, taps=11, snr_db=30.0, seed=0)
    decisions = np.sign(np.convolve(data.x, data.wiener)[:20000])
    assert np.mean(decisions[20:] == data.d[20:]) > 0.99
