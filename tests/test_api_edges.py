"""Edge cases of the public ops (issue 15, items 9-11): the sign of zero is
the same bit on every backend, bad or inexact arguments get clear errors
naming the argument, and a large stochastic quantize on the torch path
stays within a small multiple of its input's memory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hwsim
import hwsim.optim as hopt
from hwsim.torch_path import quantize as tq

ROUNDINGS = ["nearest", "nearest_away", "floor", "zero", "stochastic"]


def bits(a) -> np.ndarray:
    a = np.asarray(a.numpy() if torch.is_tensor(a) else a)
    return a.view(np.int64 if a.dtype == np.float64 else np.int32)


@given(
    wl=st.integers(2, 24),
    fl=st.integers(-4, 20),
    rounding=st.sampled_from(ROUNDINGS),
    overflow=st.sampled_from(["saturate", "wrap"]),
    dtype=st.sampled_from([np.float32, np.float64]),
    lsbs=st.lists(st.floats(-2.0, 2.0), min_size=1, max_size=12),
    seed=st.integers(0, 2**64 - 1),
)
@settings(max_examples=200, deadline=None)
def test_sign_of_zero_is_the_same_bit_on_every_backend(
    wl, fl, rounding, overflow, dtype, lsbs, seed
):
    """A value that rounds to code 0 is +0.0 (codes carry no sign): NumPy
    kernels, the torch path and Python scalars agree bit for bit, -0.0 in."""
    fmt = hwsim.FixedPoint(wl, fl)
    x = (np.array(lsbs + [-0.0], dtype=np.float64) * fmt.lsb).astype(dtype)
    a = hwsim.quantize(x, fmt, rounding, overflow, seed=seed)
    t = hwsim.quantize(torch.from_numpy(x), fmt, rounding, overflow, seed=seed)
    assert np.array_equal(bits(a), bits(t))
    assert not np.signbit(a[a == 0]).any() and not torch.signbit(t[t == 0]).any()
    scalars = [hwsim.quantize(float(v), fmt, rounding, overflow, seed=seed) for v in x[-1:]]
    assert not np.signbit(scalars).any()  # -0.0 in, +0.0 out


@pytest.mark.parametrize("rounding", ["nearest", "zero", "nearest_away", "stochastic"])
def test_issue_example_minus_point_four(rounding):
    for x in (np.array([-0.4]), torch.tensor([-0.4], dtype=torch.float64)):
        noise = [0.1] if rounding == "stochastic" else None  # 0.1 < frac(-0.4) = 0.6: up, to 0
        y = hwsim.quantize(x, "fx8.0", rounding, noise=noise)
        assert y[0] == 0 and not np.signbit(np.asarray(y)[0])


@pytest.mark.parametrize("make", [np.array, torch.tensor])
def test_integer_input_is_exact_or_rejected(make):
    ok = make([2**53, -(2**53), 3])
    assert np.array_equal(np.asarray(hwsim.to_codes(ok, "fx62.0")), [2**53, -(2**53), 3])
    with pytest.raises(
        ValueError, match=r"x holds 1 integer\(s\) beyond 2\*\*53.*9007199254740993"
    ):
        hwsim.to_codes(make([2**53 + 1, 0]), "fx62.0")
    with pytest.raises(ValueError, match="beyond 2\\*\\*53"):
        hwsim.quantize(make([-(2**62)]), "fx62.0")
    with pytest.raises(ValueError, match="beyond 2\\*\\*53"):
        hwsim.quantize(np.array([2**63], dtype=np.uint64), "fx62.0")


@pytest.mark.parametrize("seed", [2**64, -1, 2**70])
def test_seeds_outside_64_bits_raise(seed):
    for x in (np.ones(3) * 0.3, torch.ones(3) * 0.3):
        with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\*\*64\)"):
            hwsim.quantize(x, "fx8.4", "stochastic", seed=seed)
        with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\*\*64\)"):
            hwsim.matmul(
                x[None], x[:, None], accumulator="fx16.8", rounding="stochastic", seed=seed
            )
    with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\*\*64\)"):
        hopt.SGD([torch.nn.Parameter(torch.zeros(2))], weight="fx8.4", seed=seed)
    top = hwsim.quantize(np.ones(3) * 0.3, "fx8.4", "stochastic", seed=2**64 - 1)
    assert np.array_equal(
        top,
        hwsim.quantize(torch.ones(3).double() * 0.3, "fx8.4", "stochastic", seed=2**64 - 1).numpy(),
    )


def test_out_with_a_torch_tensor_raises():
    x = torch.ones(3)
    with pytest.raises(ValueError, match="out is taken with NumPy input only"):
        hwsim.quantize(x, "fx8.4", out=torch.empty(3))


@pytest.mark.parametrize("make", [np.asarray, torch.tensor])
def test_matmul_on_0d_operands_raises_as_numpy(make):
    with pytest.raises(ValueError):  # NumPy's own answer
        np.matmul(np.float64(2.0), np.float64(3.0))
    with pytest.raises(ValueError, match="matmul: a is 0-d"):
        hwsim.matmul(make(2.0), make([3.0]), accumulator="fx16.8")
    with pytest.raises(ValueError, match="matmul: b is 0-d"):
        hwsim.matmul(make([2.0]), make(3.0), accumulator="fx16.8")


def test_meta_tensors_raise_naming_the_argument():
    meta = torch.empty(2, 3, device="meta")
    for call, name in (
        (lambda: hwsim.quantize(meta, "fx8.4"), "x"),
        (lambda: hwsim.to_codes(meta, "fx8.4"), "x"),
        (lambda: hwsim.from_codes(meta.long(), "fx8.4"), "codes"),
        (lambda: hwsim.matmul(meta, torch.ones(3, 2), accumulator="fx16.8"), "a"),
        (lambda: hwsim.conv2d(torch.ones(1, 1, 3, 3), meta[None, None], accumulator="fx8.4"), "w"),
    ):
        with pytest.raises(ValueError, match=f"^{name} is a meta tensor"):
            call()


@pytest.mark.parametrize("stride", [1.5, None, True, (1, 2, 3), "2"])
def test_conv2d_bad_stride_names_the_argument(stride):
    with pytest.raises(ValueError, match=r"stride must be an int >= 1 or a pair of them, got"):
        hwsim.conv2d(
            np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2)), stride=stride, accumulator="fx8.4"
        )


@pytest.mark.parametrize("x", [np.ones(3), torch.ones(3)])
def test_noise_that_is_not_numbers_names_the_argument(x):
    with pytest.raises(ValueError, match="noise must be an array of uniforms in \\[0, 1\\)"):
        hwsim.quantize(x, "fx8.4", "stochastic", noise="abc")


def test_lr_inf_raises_at_construction():
    with pytest.raises(ValueError, match="Invalid learning rate: inf"):
        hopt.SGD([torch.nn.Parameter(torch.zeros(2))], lr=float("inf"), weight="fx8.4")


@pytest.mark.parametrize("seed", [5, "generator", "noise"])
@pytest.mark.parametrize("codes", [False, True])
def test_chunked_torch_quantize_is_the_unchunked_one(monkeypatch, seed, codes):
    """Above CHUNK elements the torch path works chunk by chunk: same bits
    (counter noise by flat index, a CPU generator drawn in order, noise[i])."""
    x = torch.randn(37, 29, dtype=torch.float32).t()  # non-contiguous: a copy is chunked
    noise = torch.rand(x.shape, dtype=torch.float64) if seed == "noise" else None

    def run():
        s = (
            torch.Generator().manual_seed(3)
            if seed == "generator"
            else None
            if noise is not None
            else seed
        )
        op = hwsim.to_codes if codes else hwsim.quantize
        return op(x, "fx12.8", "stochastic", seed=s, noise=noise)

    whole = run()
    monkeypatch.setattr(tq, "CHUNK", 100)
    chunked = run()
    assert chunked.dtype == whole.dtype and torch.equal(chunked, whole)
    x[3, 4] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        run()


def test_stochastic_quantize_peak_memory_is_under_3x_the_input():
    """Peak RSS above the input's (VmHWM, reset after start-up, in a fresh process) of a
    stochastic quantize of a 2^24-element float32 tensor (CHUNK 2^18 to keep
    the test small: the same ratio as 2^26 elements with the default CHUNK)."""
    script = textwrap.dedent(
        """
        import sys, torch, hwsim
        assert hwsim.__file__.startswith(sys.argv[1]), hwsim.__file__
        from hwsim.torch_path import quantize as tq
        tq.CHUNK = 1 << 18
        hwsim.quantize(torch.randn(1000), "fx16.12", "stochastic", seed=1)
        x = torch.randn(1 << 24)
        def high_water():  # VmHWM: the peak resident set since the last reset
            with open("/proc/self/status") as f:
                line = next(l for l in f if l.startswith("VmHWM:"))
            return int(line.split()[1]) * 1024
        with open("/proc/self/statm") as f:
            base = int(f.read().split()[1]) * 4096
        # forget the peak of start-up (imports, a JIT compile on a cold cache)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        y = hwsim.quantize(x, "fx16.12", "stochastic", seed=5)
        print((high_water() - base) / (x.numel() * 4))
        """
    )
    root = str(Path(__file__).resolve().parent.parent)  # this checkout's hwsim
    env = {**os.environ, "PYTHONPATH": root}
    result = subprocess.run(
        [sys.executable, "-c", script, root], capture_output=True, text=True, check=True, env=env
    )
    ratio = float(result.stdout.strip().splitlines()[-1])
    assert 0.9 < ratio < 3.0, ratio  # the float32 output alone is 1x: the peak was seen
