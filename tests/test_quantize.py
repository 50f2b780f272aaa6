"""quantize / to_codes / from_codes against the exact reference, on both backends."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from naive import ref_code  # tests/naive.py

import hwsim
from hwsim import FixedPoint, NonFiniteError

ROUNDINGS = ["nearest", "nearest_away", "floor", "zero", "stochastic"]
OVERFLOWS = ["saturate", "wrap"]
formats = st.builds(FixedPoint, st.integers(1, 62), st.integers(-8, 70), st.booleans())


@st.composite
def format_and_values(draw, max_size=40):
    """A format and float64 values that probe it: random values at every scale,
    exact grid points, exact ties, the range's edges, far out of range, tiny."""
    fmt = draw(formats)
    lsb = fmt.lsb
    n = draw(st.integers(1, max_size))
    kinds = draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))
    code_span = st.integers(min(fmt.min_code, -(1 << 52)) // 2, max(fmt.max_code, 1 << 52) // 2)
    vals = []
    for kind in kinds:
        if kind == 0:  # any magnitude, both signs
            vals.append(draw(st.floats(allow_nan=False, allow_infinity=False, width=64)))
        elif kind == 1:  # near the format's range
            vals.append(
                draw(
                    st.floats(
                        -4 * max(abs(fmt.min), fmt.max, lsb), 4 * max(abs(fmt.min), fmt.max, lsb)
                    )
                )
            )
        elif kind == 2:  # exact ties between grid points (float64 holds them)
            k = draw(st.integers(max(fmt.min_code - 4, -(1 << 51)), min(fmt.max_code + 4, 1 << 51)))
            vals.append((k + 0.5) * lsb)
        elif kind == 3:  # grid points, including the edges and beyond
            k = draw(
                st.sampled_from([fmt.min_code, fmt.max_code, fmt.min_code - 1, fmt.max_code + 1, 0])
                | code_span
            )
            vals.append(float(k) * lsb)
        elif kind == 4:  # tiny and zero
            vals.append(draw(st.sampled_from([0.0, -0.0, 5e-324, -5e-324, 2.2e-308, -1e-300])))
        else:  # far out of range
            vals.append(
                draw(st.sampled_from([1e300, -1e300, 1.7e308, -1.7e308])) * draw(st.floats(0.01, 1))
            )
    noise = draw(st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=n, max_size=n))
    return fmt, np.array(vals, dtype=np.float64), np.array(noise, dtype=np.float64)


def reference(x, fmt, rounding, overflow, noise):
    return np.array(
        [
            ref_code(float(v), fmt.wl, fmt.fl, fmt.signed, rounding, overflow, float(u))
            for v, u in zip(x, noise, strict=True)
        ],
        dtype=np.int64,
    )


@pytest.mark.parametrize("overflow", OVERFLOWS)
@pytest.mark.parametrize("rounding", ROUNDINGS)
@given(case=format_and_values())
def test_codes_equal_reference_both_backends(rounding, overflow, case):
    fmt, x, noise = case
    kw = {"noise": noise} if rounding == "stochastic" else {}
    expected = reference(x, fmt, rounding, overflow, noise)
    got_numba = hwsim.to_codes(x, fmt, rounding, overflow, **kw)
    np.testing.assert_array_equal(got_numba, expected)
    kw_t = {"noise": torch.from_numpy(noise)} if rounding == "stochastic" else {}
    got_torch = hwsim.to_codes(torch.from_numpy(x), fmt, rounding, overflow, **kw_t)
    assert got_torch.dtype == torch.int64
    np.testing.assert_array_equal(got_torch.numpy(), expected)
    if fmt.wl <= 53:  # values are exact in float64
        vals = hwsim.quantize(x, fmt, rounding, overflow, **kw)
        np.testing.assert_array_equal(vals, expected.astype(np.float64) * fmt.lsb)
        vals_t = hwsim.quantize(torch.from_numpy(x), fmt, rounding, overflow, **kw_t)
        np.testing.assert_array_equal(vals_t.numpy(), vals)


@pytest.mark.parametrize("rounding", ROUNDINGS)
@given(
    fmt=st.builds(FixedPoint, st.integers(1, 24), st.integers(-8, 30), st.booleans()),
    data=st.lists(st.floats(-1e6, 1e6, width=32), min_size=1, max_size=30),
)
def test_float32_input_keeps_dtype_and_matches_reference(rounding, fmt, data):
    x = np.array(data, dtype=np.float32)
    noise = np.linspace(0, 1, len(data), endpoint=False)
    kw = {"noise": noise} if rounding == "stochastic" else {}
    out = hwsim.quantize(x, fmt, rounding, "saturate", **kw)
    assert out.dtype == np.float32
    expected = reference(x.astype(np.float64), fmt, rounding, "saturate", noise)
    if fmt.representable_in("float32"):
        np.testing.assert_array_equal(out, (expected * fmt.lsb).astype(np.float32))
    out_t = hwsim.quantize(
        torch.from_numpy(x),
        fmt,
        rounding,
        "saturate",
        **({"noise": torch.from_numpy(noise)} if kw else {}),
    )
    assert out_t.dtype == torch.float32
    np.testing.assert_array_equal(out_t.numpy(), out)


@pytest.mark.parametrize("overflow", OVERFLOWS)
def test_seeded_stochastic_is_identical_on_both_backends(overflow):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(37, 41)) * 3
    a = hwsim.to_codes(x, "fx10.5", "stochastic", overflow, seed=1234)
    b = hwsim.to_codes(torch.from_numpy(x), "fx10.5", "stochastic", overflow, seed=1234)
    np.testing.assert_array_equal(a, b.numpy())
    np.testing.assert_array_equal(a, hwsim.to_codes(x, "fx10.5", "stochastic", overflow, seed=1234))
    assert not np.array_equal(a, hwsim.to_codes(x, "fx10.5", "stochastic", overflow, seed=1235))


def test_torch_generator_is_reproducible():
    x = torch.randn(1000, dtype=torch.float64)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    a = hwsim.quantize(x, "fx8.4", "stochastic", seed=g1)
    b = hwsim.quantize(x, "fx8.4", "stochastic", seed=g2)
    assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_stochastic_rounding_is_unbiased_and_picks_neighbours(backend):
    n = 1_000_000
    fmt = FixedPoint(12, 6)
    x = np.random.default_rng(1).uniform(-20, 20, size=n)
    xin = torch.from_numpy(x) if backend == "torch" else x
    q = hwsim.quantize(xin, fmt, "stochastic", seed=99)
    q = q.numpy() if backend == "torch" else q
    lo = np.floor(x / fmt.lsb) * fmt.lsb
    assert np.all((q == lo) | (q == lo + fmt.lsb))
    err = q - x
    frac = (x - lo) / fmt.lsb
    se = fmt.lsb * math.sqrt(np.mean(frac * (1 - frac)) / n)
    assert abs(err.mean()) < 4 * se
    # the fraction rounded up equals the mean distance from the lower neighbour
    assert abs(np.mean(q > lo) - frac.mean()) < 4 * math.sqrt(0.25 / n)


def test_nearest_rounding_is_biased_where_stochastic_is_not():
    # 0.3 LSB above a grid point: nearest always rounds down, stochastic keeps the mean
    fmt = FixedPoint(8, 4)
    x = np.full(200_000, 0.3 * fmt.lsb + 1.0)
    assert hwsim.quantize(x, fmt).mean() == 1.0
    assert abs(
        hwsim.quantize(x, fmt, "stochastic", seed=3).mean() - x[0]
    ) < 4 * fmt.lsb * 0.46 / math.sqrt(x.size)


def test_saturate_and_wrap_known_values():
    x = np.array([7.99, 8.0, -8.0, -8.07, 100.0, -100.0])
    np.testing.assert_array_equal(
        hwsim.quantize(x, "fx8.4"), [8 - 1 / 16, 8 - 1 / 16, -8, -8, 8 - 1 / 16, -8]
    )
    # wrap: 7.99 -> code round(127.84) = 128 -> -128; -8.07 -> -129 -> 127;
    # 100 -> 1600 = 6*256 + 64 -> 4.0; -100 -> -1600 -> -64 -> -4.0
    np.testing.assert_array_equal(
        hwsim.quantize(x, "fx8.4", overflow="wrap"), [-8, -8, -8, 8 - 1 / 16, 4.0, -4.0]
    )
    u = hwsim.quantize(np.array([-1.0, 300.0, 256.0]), "ufx8.0", overflow="wrap")
    np.testing.assert_array_equal(u, [255, 44, 0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_torch_dtypes_and_devices_preserved(dtype):
    x = torch.linspace(-3, 3, 101, dtype=dtype)
    q = hwsim.quantize(x, "fx8.4")
    assert q.dtype == dtype and q.device == x.device and q.shape == x.shape
    ref = hwsim.quantize(x.double().numpy(), "fx8.4")
    np.testing.assert_array_equal(q.double().numpy(), ref)  # fx8.4 is exact in every dtype


def test_float16_numpy_and_unrepresentable_format_rounds_on_cast():
    x = np.linspace(-3, 3, 101).astype(np.float16)
    q = hwsim.quantize(x, "fx16.12")
    assert q.dtype == np.float16
    exact = hwsim.quantize(x.astype(np.float64), "fx16.12")
    np.testing.assert_array_equal(q, exact.astype(np.float16))  # documented: the cast rounds


def test_shapes_scalars_noncontiguous_empty_integers():
    a = np.arange(24, dtype=np.float64).reshape(2, 3, 4) / 7
    assert hwsim.quantize(a, "fx8.4").shape == (2, 3, 4)
    t = a.transpose(2, 0, 1)
    np.testing.assert_array_equal(hwsim.quantize(t, "fx8.4"), hwsim.quantize(t.copy(), "fx8.4"))
    assert hwsim.quantize(0.3, "fx8.4") == 0.3125 and isinstance(
        hwsim.quantize(0.3, "fx8.4"), float
    )
    assert hwsim.quantize(np.zeros(0), "fx8.4").shape == (0,)
    assert hwsim.quantize(np.array([1, 2, 300]), "fx8.0").tolist() == [1.0, 2.0, 127.0]
    tt = torch.arange(12.0).reshape(3, 4).t()
    assert torch.equal(hwsim.quantize(tt, "fx8.2"), hwsim.quantize(tt.contiguous(), "fx8.2"))


def test_codes_round_trip_for_wide_formats():
    fmt = FixedPoint(62, 0)
    codes = np.array([fmt.min_code, fmt.max_code, -3, 0, 12345678901234567], dtype=np.int64)
    back = hwsim.to_codes(codes.astype(np.float64), fmt)
    # float64 cannot hold 2^61-1: to_codes of its float is the nearest in-range code
    assert back[0] == fmt.min_code and back[1] == fmt.max_code
    np.testing.assert_array_equal(
        hwsim.from_codes(codes, FixedPoint(62, 3)), codes.astype(np.float64) / 8
    )


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_non_finite_raises_with_count_and_index(backend):
    x = np.zeros((3, 4))
    x[1, 2], x[2, 0], x[2, 3] = np.nan, np.inf, -np.inf
    xin = torch.from_numpy(x) if backend == "torch" else x
    with pytest.raises(NonFiniteError, match=r"3 non-finite .* index \(1, 2\)") as info:
        hwsim.quantize(xin, "fx8.4")
    assert isinstance(info.value, ValueError)
    assert info.value.count == 3 and info.value.first_index == (1, 2)
    with pytest.raises(NonFiniteError):
        hwsim.to_codes(xin, "fx8.4", "stochastic", seed=1)
    assert np.isnan(x[1, 2])  # the input is untouched


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_noise_errors(backend):
    conv = torch.from_numpy if backend == "torch" else (lambda a: a)
    x = conv(np.zeros(4))
    with pytest.raises(ValueError, match="shape"):
        hwsim.quantize(x, "fx8.4", "stochastic", noise=conv(np.zeros(3)))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        hwsim.quantize(x, "fx8.4", "stochastic", noise=conv(np.array([0, 0.5, 1.0, 0.2])))
    with pytest.raises(ValueError, match="only used by rounding='stochastic'"):
        hwsim.quantize(x, "fx8.4", "nearest", noise=conv(np.zeros(4)))
    with pytest.raises(ValueError, match="seed must be an int"):
        hwsim.quantize(x, "fx8.4", "stochastic", seed=1.5)


def test_argument_errors():
    with pytest.raises(ValueError, match="valid modes"):
        hwsim.quantize(np.zeros(2), "fx8.4", "bankers")
    with pytest.raises(ValueError, match="valid modes"):
        hwsim.quantize(np.zeros(2), "fx8.4", overflow="clamp")
    with pytest.raises(ValueError, match="hwsim.FixedPoint"):
        hwsim.quantize(np.zeros(2), (8, 4))
    with pytest.raises(ValueError, match="dtype"):
        hwsim.quantize(np.array(["a"]), "fx8.4")
    with pytest.raises(
        ValueError, match=r"outside the range of fx8.4: codes must be integers in \[-128, 127\]"
    ):
        hwsim.from_codes(np.array([0, 128]), "fx8.4")
    with pytest.raises(ValueError, match="integer"):
        hwsim.from_codes(np.array([0.5]), "fx8.4")
    with pytest.raises(ValueError, match="outside the range"):
        hwsim.from_codes(torch.tensor([-129]), "fx8.4")


def test_from_codes_torch():
    c = torch.tensor([[-128, 5], [127, 0]])
    v = hwsim.from_codes(c, "fx8.4")
    assert v.dtype == torch.float64
    assert torch.equal(hwsim.to_codes(v, "fx8.4"), c)


def test_import_compiles_nothing():
    import subprocess
    import sys

    code = (
        "import time; t=time.perf_counter(); import hwsim; "
        "import hwsim.kernels.quantize as k; "
        "assert not k.quantize_kernel.cache_info().currsize; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


@pytest.mark.gpu
@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("overflow", OVERFLOWS)
def test_cuda_matches_numba(rounding, overflow):
    rng = np.random.default_rng(5)
    x = rng.normal(size=100_000) * 50
    x[:10] = [0.5, 1.5, -0.5, -2.5, 1e300, -1e300, 5e-324, -5e-324, 7.96875, -8.0]
    noise = rng.random(x.size)
    kw = {"noise": noise} if rounding == "stochastic" else {}
    for fmt in [FixedPoint(8, 4), FixedPoint(16, 14, False), FixedPoint(40, 30), FixedPoint(5, -3)]:
        ref = hwsim.to_codes(x, fmt, rounding, overflow, **kw)
        kw_t = {"noise": torch.from_numpy(noise).cuda()} if kw else {}
        got = hwsim.to_codes(torch.from_numpy(x).cuda(), fmt, rounding, overflow, **kw_t)
        np.testing.assert_array_equal(got.cpu().numpy(), ref)
    a = hwsim.to_codes(x, "fx10.5", "stochastic", overflow, seed=77)
    b = hwsim.to_codes(torch.from_numpy(x).cuda(), "fx10.5", "stochastic", overflow, seed=77)
    np.testing.assert_array_equal(a, b.cpu().numpy())


def test_out_argument():
    x = np.linspace(-2, 2, 50, dtype=np.float32)
    out = np.empty_like(x)
    assert hwsim.quantize(x, "fx8.4", out=out) is out
    np.testing.assert_array_equal(out, hwsim.quantize(x, "fx8.4"))
    with pytest.raises(ValueError, match="out must be a C-contiguous NumPy array of shape"):
        hwsim.quantize(x, "fx8.4", out=np.empty(50, dtype=np.float64))


@pytest.mark.parametrize("rounding", ROUNDINGS)
@settings(max_examples=25)
@given(case=format_and_values(), seed=st.integers(0, 2**64 - 1))
def test_backend_argument_runs_the_other_backend_with_the_same_bits(rounding, case, seed):
    """backend="torch" on NumPy input and backend="numba" on a tensor give the
    reference codes and hand back the caller's kind of array and dtype."""
    fmt, x, noise = case
    expected = reference(x, fmt, rounding, "saturate", noise)
    kw = {"noise": noise} if rounding == "stochastic" else {}
    via_torch = hwsim.to_codes(x, fmt, rounding, backend="torch", **kw)
    assert isinstance(via_torch, np.ndarray) and via_torch.dtype == np.int64
    np.testing.assert_array_equal(via_torch, expected)
    kw_t = {"noise": torch.from_numpy(noise)} if rounding == "stochastic" else {}
    via_numba = hwsim.to_codes(torch.from_numpy(x), fmt, rounding, backend="numba", **kw_t)
    assert isinstance(via_numba, torch.Tensor) and via_numba.dtype == torch.int64
    np.testing.assert_array_equal(via_numba.numpy(), expected)
    x32 = torch.from_numpy(np.clip(x, -1e38, 1e38).astype(np.float32))  # finite in float32
    seeded = hwsim.quantize(x32, fmt, rounding, seed=seed, backend="numba")
    assert seeded.dtype == torch.float32
    torch.testing.assert_close(
        seeded, hwsim.quantize(x32, fmt, rounding, seed=seed), rtol=0, atol=0
    )


def test_cpu_tensor_on_numba_equals_numpy_and_torch_paths():
    # the one-check crossing of a CPU float tensor: non-contiguous, float32 and
    # float64, requiring grad, stochastic by seed; same bits as both paths
    rng = np.random.default_rng(4)
    base = rng.normal(0, 3, size=(6, 9))
    for dtype in (torch.float64, torch.float32):
        t = torch.tensor(base, dtype=dtype, requires_grad=True).t()  # a non-contiguous view
        for rounding in ("nearest", "stochastic", "floor"):
            kw = dict(seed=11) if rounding == "stochastic" else {}
            got = hwsim.quantize(t, "fx8.3", rounding, "wrap", backend="numba", **kw)
            assert got.dtype == dtype and got.shape == t.shape and not got.requires_grad
            want = hwsim.quantize(t.detach().numpy(), "fx8.3", rounding, "wrap", **kw)
            assert np.array_equal(got.numpy(), want)
            torch_path = hwsim.quantize(t.detach(), "fx8.3", rounding, "wrap", **kw)
            assert torch.equal(got, torch_path)


def test_backend_argument_errors_and_bfloat16():
    x = np.array([0.3, -1.2])
    with pytest.raises(
        ValueError, match=r"backend must be None or one of \('numba', 'torch'\), got 'cuda'"
    ):
        hwsim.quantize(x, "fx8.4", backend="cuda")
    with pytest.raises(ValueError, match="out is only taken"):
        hwsim.quantize(x, "fx8.4", out=np.empty(2), backend="torch")
    assert hwsim.quantize(0.3, "fx8.4", backend="torch") == 0.3125
    b = torch.tensor([0.3, -1.2], dtype=torch.bfloat16)
    got = hwsim.quantize(b, "fx8.4", backend="numba")
    assert got.dtype == torch.bfloat16 and torch.equal(got, hwsim.quantize(b, "fx8.4"))


@pytest.mark.parametrize(
    "name",
    ["hwsim", "hwsim.plan.checks", "hwsim.plan.lms", "hwsim.ops.quantize", "hwsim.ops.matmul"],
)
def test_datapath_docstring_examples(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("seed", [0, 5, 2**63 - 1, 2**63, 2**64 - 1])
def test_torch_counter_noise_equals_the_kernels(seed):
    """The torch path's counter hash with torch ops (in place, golden + seed
    folded into one constant: what runs on a GPU) and on the CPU (the Numba
    kernels, one pass) give the Numba scalar's uniforms, past the int64 wrap
    too; so do ranges, serial and parallel (above SERIAL_BELOW_ELEMENTWISE)."""
    from hwsim.kernels.jit import SERIAL_BELOW_ELEMENTWISE
    from hwsim.kernels.scalar import counter_uniform as scalar
    from hwsim.torch_path.core import counter_uniform, counter_uniform_at, counter_uniform_ops

    idx = torch.tensor([0, 1, 2, 1000, 2**40, 2**62 - 1, 2**63 - 2], dtype=torch.int64)
    want = [scalar(np.uint64(seed), int(i)) for i in idx]
    for draw in (counter_uniform_at, counter_uniform_ops):
        assert draw(seed, idx.reshape(1, -1).expand(2, -1)).tolist() == [want, want]
    for n, offset in ((100, 7), (SERIAL_BELOW_ELEMENTWISE + 5, 2**40)):
        ops = counter_uniform_ops(seed, torch.arange(offset, offset + n))
        assert torch.equal(counter_uniform(seed, n, offset=offset), ops)
        assert ops[-1].item() == scalar(np.uint64(seed), offset + n - 1)
