"""hwsim.conv2d: the im2col MAC array against a direct sequential reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from naive_gemm import mac_gemm

import hwsim
from hwsim import FixedPoint


def on_grid(rng, shape, wl, fl):
    fmt = FixedPoint(wl, fl)
    return rng.integers(fmt.min_code, fmt.max_code + 1, size=shape) * fmt.lsb


def reference_conv(x, w, stride, padding, acc, product, rounding, overflow, seed):
    """Direct loops: each output's products in the order (c, kh, kw), fed to the
    sequential MAC reference as one row times one column."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho, wo = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    # one GEMM per image, as conv2d does: A = weights (O, K), B = patches (K, L)
    out = np.zeros((n, o, ho, wo), dtype=np.int64)
    a = [w.reshape(o, -1).tolist()] * n
    b = []
    for i in range(n):
        cols = [
            [xp[i, ci, y * sh + di, z * sw + dj] for y in range(ho) for z in range(wo)]
            for ci in range(c)
            for di in range(kh)
            for dj in range(kw)
        ]
        b.append(cols)
    codes = np.array(mac_gemm(a, b, acc, product, rounding, overflow, seed), dtype=np.int64)
    out[:] = codes.reshape(n, o, ho, wo)
    return out


@settings(max_examples=15)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 2),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(0, 2),
    st.integers(1, 2),
    st.sampled_from(["nearest", "floor", "stochastic", "nearest_away", "zero"]),
    st.sampled_from(["saturate", "wrap"]),
    st.booleans(),
)
def test_conv_matches_direct_reference(
    seed, n, c, o, k, pad, stride, rounding, overflow, with_product
):
    rng = np.random.default_rng(seed)
    x = on_grid(rng, (n, c, 5, 4), 7, 4)
    w = on_grid(rng, (o, c, k, k), 6, 5)
    acc = FixedPoint(10, 6)
    product = FixedPoint(9, 7) if with_product else None
    want = reference_conv(
        x, w, (stride, stride), (pad, pad), acc, product, rounding, overflow, seed
    )
    kw = dict(
        stride=stride,
        padding=pad,
        accumulator=acc,
        product=product,
        rounding=rounding,
        overflow=overflow,
        seed=seed,
    )
    got = hwsim.conv2d(x, w, **kw)
    assert np.array_equal((got * 2**acc.fl).astype(np.int64), want)
    got_t = hwsim.conv2d(torch.from_numpy(x), torch.from_numpy(w), **kw)
    assert np.array_equal(got_t.numpy(), got)


def test_wide_accumulator_equals_float_conv():
    rng = np.random.default_rng(1)
    x = on_grid(rng, (2, 3, 9, 8), 8, 4)
    w = on_grid(rng, (4, 3, 3, 2), 8, 6)
    for stride, padding in ((1, 0), (2, 1), ((2, 1), (0, 2))):
        got = hwsim.conv2d(x, w, stride=stride, padding=padding, accumulator="fx40.10")
        want = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=stride, padding=padding)
        assert np.array_equal(got, want.numpy())


def test_conv_formats_quantize_first_and_errors():
    rng = np.random.default_rng(2)
    x, w = rng.normal(size=(1, 2, 5, 5)), rng.normal(size=(3, 2, 3, 3))
    got = hwsim.conv2d(x, w, accumulator="fx20.8", x_format="fx8.4", w_format="fx8.5")
    want = hwsim.conv2d(
        hwsim.quantize(x, "fx8.4"), hwsim.quantize(w, "fx8.5"), accumulator="fx20.8"
    )
    assert np.array_equal(got, want)
    with pytest.raises(ValueError, match="channels"):
        hwsim.conv2d(x, np.ones((3, 4, 3, 3)), accumulator="fx20.8", x_format="fx8.4")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        hwsim.conv2d(np.ones((2, 5, 5)), np.ones((3, 2, 3, 3)), accumulator="fx20.8")
    with pytest.raises(ValueError, match="stride"):
        hwsim.conv2d(np.ones((1, 2, 5, 5)), np.ones((3, 2, 3, 3)), stride=0, accumulator="fx20.8")
    with pytest.raises(ValueError, match="smaller than the kernel"):
        hwsim.conv2d(np.ones((1, 2, 2, 2)), np.ones((3, 2, 3, 3)), accumulator="fx20.8")


@pytest.mark.gpu
def test_conv_torch_path_on_cuda_equals_numba():
    rng = np.random.default_rng(3)
    x, w = on_grid(rng, (2, 3, 8, 8), 8, 4), on_grid(rng, (4, 3, 3, 3), 8, 6)
    kw = dict(stride=2, padding=1, accumulator="fx12.6", rounding="stochastic", seed=5)
    want = hwsim.conv2d(x, w, **kw)
    got = hwsim.conv2d(torch.from_numpy(x).cuda(), torch.from_numpy(w).cuda(), **kw)
    assert np.array_equal(got.cpu().numpy(), want)


@pytest.mark.slow
@settings(max_examples=150)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 3),
    st.integers(1, 3),
    st.sampled_from(["nearest", "floor", "stochastic"]),
    st.sampled_from(["saturate", "wrap"]),
)
def test_conv_matches_direct_reference_many(seed, k, stride, rounding, overflow):
    rng = np.random.default_rng(seed)
    x, w = on_grid(rng, (2, 2, 6, 5), 7, 4), on_grid(rng, (3, 2, k, k), 6, 5)
    acc = FixedPoint(9, 5)
    want = reference_conv(x, w, (stride, stride), (1, 1), acc, None, rounding, overflow, seed)
    got = hwsim.conv2d(
        x,
        w,
        stride=stride,
        padding=1,
        accumulator=acc,
        rounding=rounding,
        overflow=overflow,
        seed=seed,
    )
    assert np.array_equal((got * 2**acc.fl).astype(np.int64), want)


def test_four_sided_padding_and_backend_argument():
    """padding=(top, bottom, left, right) equals padding the input by hand;
    backend="numba" on tensors equals the NumPy result."""
    rng = np.random.default_rng(3)
    x = np.round(rng.normal(size=(2, 3, 5, 6)) * 16) / 16
    w = np.round(rng.normal(size=(4, 3, 2, 3)) * 16) / 16
    padded = np.pad(x, ((0, 0), (0, 0), (1, 0), (2, 1)))
    want, _ = hwsim.ops.conv2d_codes(padded, w, accumulator="fx12.4")
    got, _ = hwsim.ops.conv2d_codes(x, w, padding=(1, 0, 2, 1), accumulator="fx12.4")
    np.testing.assert_array_equal(got, want)
    tx, tw = torch.from_numpy(x), torch.from_numpy(w)
    kw = dict(padding=(1, 0, 2, 1), accumulator="fx12.4")
    got_t, _ = hwsim.ops.conv2d_codes(tx, tw, backend="numba", **kw)
    np.testing.assert_array_equal(got_t.numpy(), want)
    got_np, _ = hwsim.ops.conv2d_codes(x, w, backend="torch", **kw)
    np.testing.assert_array_equal(got_np, want)
    with pytest.raises(ValueError, match=r"padding must be .* got \(1, -1, 0, 0\)"):
        hwsim.ops.conv2d_codes(x, w, padding=(1, -1, 0, 0), accumulator="fx12.4")


def test_batch_shared_operand_fast_path_equals_mac_loop():
    # the BLAS fast path runs an operand shared by the whole batch (a conv's
    # weights, a 2-D b under a 3-D a) as one GEMM; the MAC loop gives the same codes
    rng = np.random.default_rng(5)
    x = rng.integers(-40, 40, size=(5, 3, 6, 7)) / 8.0
    w = rng.integers(-40, 40, size=(4, 3, 3, 3)) / 16.0
    for overflow, acc in (("saturate", "fx24.7"), ("wrap", "fx12.7")):
        kw = dict(accumulator=acc, overflow=overflow, padding=1)
        fast = hwsim.conv2d(x, w, path="fast", **kw)
        seq = hwsim.conv2d(x, w, path="sequential", **kw)
        assert np.array_equal(fast, seq)
        assert np.array_equal(fast, hwsim.conv2d(torch.from_numpy(x), torch.from_numpy(w), **kw))
    a = rng.integers(-40, 40, size=(3, 4, 9)) / 8.0
    for b in (rng.integers(-40, 40, size=(9, 5)) / 4.0, rng.integers(-9, 9, size=(2, 1, 9, 5))):
        for args in ((a, b), (np.swapaxes(b, -1, -2), np.swapaxes(a, -1, -2))):
            fast = hwsim.matmul(*args, accumulator="fx24.6", path="fast")
            assert np.array_equal(
                fast, hwsim.matmul(*args, accumulator="fx24.6", path="sequential")
            )


def test_im2col_kernel_equals_the_torch_unfold():
    """The NumPy im2col (one Numba pass) gives the torch path's unfold columns:
    pads and crops (negative pads), strides, int64 codes and float values,
    a non-contiguous input; the wide layout and int32 columns too."""
    from hwsim.ops.im2col import im2col

    rng = np.random.default_rng(0)
    for trial in range(60):
        n, c, h, w = (int(v) for v in rng.integers(1, 5, 4))
        kh, kw = (int(v) for v in rng.integers(1, 4, 2))
        pads = tuple(int(v) for v in rng.integers(-1, 3, 4))
        stride = tuple(int(v) for v in rng.integers(1, 3, 2))
        if h + pads[0] + pads[1] < kh or w + pads[2] + pads[3] < kw:
            continue
        x = rng.integers(-50, 50, (n, c, w, h)).transpose(0, 1, 3, 2)
        x = x.astype(np.float64) if trial % 2 else x
        wt = np.zeros((2, c, kh, kw))
        got, shape = im2col(x, wt, stride, pads)
        want, want_shape = im2col(torch.from_numpy(np.ascontiguousarray(x)), wt, stride, pads)
        assert shape == want_shape and got.dtype == want.numpy().dtype
        assert np.array_equal(got, want.numpy())
        wide, _ = im2col(x, wt, stride, pads, wide=True)  # the batch side by side
        assert np.array_equal(wide[0], np.concatenate(list(got), axis=1))
        narrow, _ = im2col(x, wt, stride, pads, wide=bool(trial % 3), dtype=np.int32)
        assert narrow.dtype == np.int32  # the columns in the MAC lane's type, same values
        assert np.array_equal(narrow, wide if trial % 3 else got)


@pytest.mark.parametrize("acc", ["fx30.14", "fx12.12", "fx24.10"])
@pytest.mark.parametrize("overflow", ["saturate", "wrap"])
def test_int32_columns_through_every_kernel(acc, overflow):
    """The columns come as int32 where x's codes fit (hwsim.conv2d knows their
    stats): the narrow kernel (exact left shift onto the accumulator, done in
    int64 before the int32 cast), the MAC kernels and the BLAS path all give
    the direct reference's codes."""
    rng = np.random.default_rng(len(acc))
    x = on_grid(rng, (2, 3, 6, 5), 9, 4)
    w = on_grid(rng, (4, 3, 3, 3), 8, 6)
    fmt = FixedPoint.parse(acc)
    want = reference_conv(x, w, (1, 1), (1, 1), fmt, None, "nearest", overflow, 0)
    for path in ("sequential", "auto"):
        got = hwsim.conv2d(x, w, padding=1, accumulator=acc, overflow=overflow, path=path)
        assert np.array_equal((got * 2**fmt.fl).astype(np.int64), want), path
