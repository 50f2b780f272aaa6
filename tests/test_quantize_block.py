"""Block-scaled quantize (BlockFloatingPoint, MX): Numba kernels and the torch
path against the slow Fraction reference of the OCP MX spec
(tests/naive_block.py) on random formats, shapes, axes and values, against
each other bit for bit, special values, and errors. Peers: test_peers_block.py."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from naive_block import blocks_of, ref_bfp, ref_mx

import hwsim
from hwsim import FixedPoint, FloatingPoint
from hwsim.formats.block import _MX_ELEMENTS, MX, BlockFloatingPoint
from hwsim.torch_path.core import counter_uniform

MODES = ["nearest", "nearest_away", "zero", "floor", "stochastic"]


def bits(a) -> np.ndarray:
    a = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    return a.astype(np.float64).view(np.int64)


@st.composite
def geometry(draw):
    """A shape, an axis (or None) and a block size (or None)."""
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=1, max_size=3)))
    axis = draw(st.sampled_from([None, *range(-len(shape), len(shape))]))
    block = draw(st.sampled_from([None, 1, 2, 3, 4, 5, 8, 32]))
    return shape, axis, block


@st.composite
def mx_elements(draw):
    """One of the six OCP element types, or a small generic float or fixed one."""
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return draw(st.sampled_from(sorted(_MX_ELEMENTS.values(), key=str)))
    if kind == 1:
        exp, man = draw(st.integers(2, 5)), draw(st.integers(0, 4))
        inf = man > 0 and draw(st.booleans())
        nan = inf or (man > 0 and draw(st.booleans()))
        return FloatingPoint(exp, man, inf=inf, nan=nan, subnormals=draw(st.booleans()))
    wl = draw(st.integers(2, 12))
    return FixedPoint(wl, draw(st.integers(-3, wl + 3)))


@st.composite
def block_values(draw, shape, low=-135, high=135, specials=False):
    """float64 values of 6 significant bits in binades near a random base
    (ties and sticky bits at every element grid), with zeros and signed zeros
    (and with ``specials``, now and then NaN or +-Inf)."""
    base = draw(st.integers(low, high))
    n = math.prod(shape)
    vals = []
    for _ in range(n):
        kind = draw(st.integers(0, 9 if not specials else 40))
        if kind == 40:
            vals.append(draw(st.sampled_from([math.nan, math.inf, -math.inf])))
            continue
        if kind == 0:
            vals.append(draw(st.sampled_from([0.0, -0.0])))
            continue
        e = base - draw(st.integers(0, 14))
        k = draw(st.integers(32, 63))
        vals.append(draw(st.sampled_from([1.0, -1.0])) * math.ldexp(k, e - 5))
    return np.array(vals, dtype=np.float64).reshape(shape)


def noise_for(draw, shape, rounding):
    if rounding != "stochastic":
        return None
    n = math.prod(shape)
    u = draw(st.lists(st.integers(0, (1 << 53) - 1), min_size=n, max_size=n))
    return np.array(u, dtype=np.float64).reshape(shape) * 2.0**-53


@given(st.data())
def test_mx_matches_the_spec_reference(data):
    shape, axis, block = data.draw(geometry())
    element = data.draw(mx_elements())
    fmt = MX(element, block, axis)
    x = data.draw(block_values(shape, specials=True))
    rounding = data.draw(st.sampled_from(MODES))
    noise = noise_for(data.draw, shape, rounding)
    got = hwsim.quantize(x, fmt, rounding, noise=noise)
    want = ref_mx(x, fmt.element, fmt.emax_element, fmt.block, fmt.axis, rounding, noise)
    assert np.array_equal(bits(got), bits(want)), (fmt, rounding, x, got, want)
    got_t = hwsim.quantize(torch.from_numpy(x), fmt, rounding, noise=noise)
    assert np.array_equal(bits(got_t), bits(want))


@given(st.data())
def test_bfp_matches_the_reference(data):
    shape, axis, block = data.draw(geometry())
    fmt = BlockFloatingPoint(data.draw(st.integers(2, 20)), block, axis)
    x = data.draw(block_values(shape, -140, 140))
    rounding = data.draw(st.sampled_from(MODES))
    noise = noise_for(data.draw, shape, rounding)
    got = hwsim.quantize(x, fmt, rounding, noise=noise)
    want = ref_bfp(x, fmt.wl, fmt.block, fmt.axis, rounding, noise)
    assert np.array_equal(bits(got), bits(want)), (fmt, rounding, x, got, want)
    got_t = hwsim.quantize(torch.from_numpy(x), fmt, rounding, noise=noise)
    assert np.array_equal(bits(got_t), bits(want))


@pytest.mark.parametrize("name", [*_MX_ELEMENTS, "bfp8", "bfp8_b32", "bfp6_b16_axis0"])
@pytest.mark.parametrize("rounding", MODES)
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_numba_equals_torch_with_a_seed(name, rounding, dtype):
    """Equal seeds give equal bits on both backends, in every input dtype;
    an int seed draws element i's uniform at its flat index, as a noise array."""
    rng = np.random.default_rng(len(name))
    x = (rng.standard_normal((5, 77)) * np.exp2(rng.integers(-8, 8, (5, 1)))).astype(dtype)
    x[2, :40] = 0.0  # zero blocks
    a = hwsim.quantize(x, name, rounding, seed=11)
    b = hwsim.quantize(torch.from_numpy(x), name, rounding, seed=11)
    assert a.dtype == x.dtype and b.dtype == torch.from_numpy(x).dtype
    assert np.array_equal(bits(a), bits(b))
    if rounding == "stochastic":
        u = counter_uniform(11, x.size).numpy().reshape(x.shape)
        assert np.array_equal(bits(hwsim.quantize(x, name, rounding, noise=u)), bits(a))


@pytest.mark.parametrize("name", ["mxfp8_e4m3", "mxfp4_e2m1", "mxint8", "bfp8_b32"])
def test_backend_crossing_and_bfloat16(name):
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    a = hwsim.quantize(x, name, "stochastic", seed=5)
    b = hwsim.quantize(x, name, "stochastic", seed=5, backend="numba")
    assert a.dtype == b.dtype == torch.bfloat16
    assert torch.equal(a.view(torch.int16), b.view(torch.int16))
    xn = x.float().numpy()
    c = hwsim.quantize(xn, name, seed=1, backend="torch")
    assert isinstance(c, np.ndarray) and np.array_equal(bits(c), bits(hwsim.quantize(xn, name)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["mxfp8_e4m3", "mxint8", "bfp8_b32"])
def test_backend_crossing_of_float_cpu_tensors(name, dtype):
    """A float32/float64 CPU tensor sent to the kernels (backend="numba")
    goes to the block quantizer, not to the fixed-point shortcut."""
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(0), dtype=dtype)
    assert torch.equal(hwsim.quantize(x, name, backend="numba"), hwsim.quantize(x, name))


def test_the_block_rule_by_hand():
    """X = 2^(floor(log2 amax) - emax): E4M3 emax 8, amax 3.0 -> X = 2^-7;
    448 * X = 3.5 is the largest element value; RNE on the element grid."""
    x = np.array([3.0, 0.1, -0.3, 1e-3])
    assert hwsim.quantize(x, "mxfp8_e4m3_b4").tolist() == [3.0, 0.1015625, -0.3125, 0.0009765625]
    # E2M1 saturates: amax 7.9 -> X = 2^(2-2) = 1, 7.9 -> 6.0
    assert hwsim.quantize(np.array([7.9, 1.2]), "mxfp4_e2m1").tolist() == [6.0, 1.0]
    # BFP 4 bits: amax 7.6 -> e = 2, LSB 2^(2+2-4) = 1, range [-8, 7]: 7.6 saturates
    assert hwsim.quantize(np.array([5.0, 7.6, -7.0, 0.4]), "bfp4").tolist() == [5.0, 7.0, -7.0, 0.0]


def test_blocks_along_an_axis_and_a_partial_last_block():
    """A block is its elements alone: quantizing every block by itself (as a
    1-D array) gives the same values, the short last block included."""
    x = np.random.default_rng(3).standard_normal((3, 10, 4)) * np.exp2(np.arange(10))[:, None]
    for fmt in [MX("fp6_e2m3", 3, axis=1), BlockFloatingPoint(5, 4, axis=1), MX("fx8.6", 7, None)]:
        got = hwsim.quantize(x, fmt).reshape(-1)
        flat = x.reshape(-1)
        for idx in blocks_of(x.shape, fmt.block, fmt.axis):
            alone = type(fmt)(*([fmt.element] if isinstance(fmt, MX) else [fmt.wl]), None, None)
            assert np.array_equal(got[idx], hwsim.quantize(flat[idx], alone))


def test_zero_blocks_and_signed_zeros():
    x = np.array([[0.0, -0.0, 0.0, -0.0], [1.0, -0.0, 0.0, -1e-30]])
    mx = hwsim.quantize(x, "mxfp8_e4m3_b4")
    assert np.array_equal(
        bits(mx), bits(np.array([[0.0, -0.0, 0.0, -0.0], [1.0, -0.0, 0.0, -0.0]]))
    )
    fixed = hwsim.quantize(x, "mxint8_b4")  # fixed-point codes carry no sign: +0.0
    assert np.array_equal(bits(fixed), bits(np.zeros((2, 4)) + np.array([[0] * 4, [1, 0, 0, 0]])))


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_mx_nan_and_inf_make_their_block_nan(backend):
    x = np.array([1.0, np.nan, 2.0, 3.0, 1.0, -np.inf, 4.0, 5.0, 6.5, 1.0])
    got = hwsim.quantize(x, "mxfp4_e2m1_b4", backend=backend)  # NaN scale: all elements NaN
    assert np.isnan(got[:8]).all() and got[8:].tolist() == [6.0, 1.0]
    ok = hwsim.quantize(np.array([1.0, 2.0, np.nan, 1.5]), "mxint8_b2", backend=backend)
    assert ok[:2].tolist() == [1.0, 2.0] and np.isnan(ok[2:]).all()


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_bfp_non_finite_raises_like_fixed_point(backend):
    x = np.array([[1.0, 2.0], [np.inf, np.nan]])
    with pytest.raises(hwsim.NonFiniteError, match="2 non-finite"):
        hwsim.quantize(x, "bfp8_b2", backend=backend)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_the_scale_range(backend):
    """The shared exponent is clamped at -127 below (elements then underflow),
    MX scales above 2^127 are NaN and BFP exponents saturate at 127."""
    tiny = np.array([2.0**-140, 2.0**-150, 0.0])
    got = hwsim.quantize(tiny, "mxfp8_e5m2", backend=backend)  # X = 2^-127, e5m2 to 2^-16
    assert got.tolist() == [2.0**-140, 0.0, 0.0]
    huge = np.array([2.0**140, 1.0])
    assert np.isnan(hwsim.quantize(huge, "mxint8", backend=backend)).all()
    assert hwsim.quantize(huge, "mxfp8_e5m2", backend=backend)[0] == 2.0**140  # 140 - 15 <= 127
    lsb = 2.0**121  # e clamped at 127: LSB 2^(127 + 2 - 8)
    assert hwsim.quantize(huge, "bfp8", backend=backend).tolist() == [127 * lsb, 0.0]
    # x * 2^(fl - e) underflows float64: floor and stochastic still see its sign
    far = np.array([2.0**1000, 2.0**-1070, -(2.0**-1070)])
    for rounding in ("floor", "stochastic"):
        noise = np.zeros(3) if rounding == "stochastic" else None
        got = hwsim.quantize(far, "bfp8", rounding, noise=noise, backend=backend)
        assert np.array_equal(got, ref_bfp(far, 8, None, None, rounding, noise))
        assert got[2] == (-lsb if rounding == "floor" else 0.0)


def test_scalars_and_empty_inputs():
    assert hwsim.quantize(0.3, "mxfp8_e4m3") == 0.3125
    assert hwsim.quantize(torch.tensor(0.3), "bfp4").item() == 0.3125
    for shape in [(0,), (0, 5), (5, 0)]:
        assert hwsim.quantize(np.zeros(shape), "mxfp4_e2m1_axis0").shape == shape
        assert hwsim.quantize(torch.zeros(shape), "bfp8_b4").shape == shape


def test_mxint8_is_bfp8_with_blocks_of_32_on_finite_float32():
    """Same elements (fx8.6 below 2^floor(log2 amax)), same clamp at -127."""
    x = np.random.default_rng(4).standard_normal((6, 96)).astype(np.float32)
    assert np.array_equal(hwsim.quantize(x, "mxint8"), hwsim.quantize(x, "bfp8_b32"))


def test_out_and_the_stream_of_a_seed():
    x = np.random.default_rng(5).standard_normal(1000).astype(np.float32)
    out = np.empty_like(x)
    assert hwsim.quantize(x, "mxfp8_e5m2", "stochastic", seed=3, out=out) is out
    assert np.array_equal(out, hwsim.quantize(x, "mxfp8_e5m2", "stochastic", seed=3))
    assert not np.array_equal(out, hwsim.quantize(x, "mxfp8_e5m2", "stochastic", seed=4))


def test_errors_say_what_is_wrong():
    x = np.ones((2, 3))
    with pytest.raises(ValueError, match=r"axis 2 of mxfp8_e4m3_axis2 is out of range .* \(2, 3\)"):
        hwsim.quantize(x, MX("fp8_e4m3", axis=2))
    with pytest.raises(ValueError, match="axis -3"):
        hwsim.quantize(torch.ones(2, 3), BlockFloatingPoint(8, 4, axis=-3))
    with pytest.raises(ValueError, match="always saturate"):
        hwsim.quantize(x, "bfp8", overflow="wrap")
    with pytest.raises(ValueError, match="noise is only used"):
        hwsim.quantize(x, "mxint8", noise=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="noise must have the input's shape"):
        hwsim.quantize(x, "mxint8", "stochastic", noise=np.zeros(3))
    with pytest.raises(ValueError, match="to_codes is for fixed-point formats"):
        hwsim.to_codes(x, "bfp8_b32")
    with pytest.raises(ValueError, match="from_codes is for fixed-point formats"):
        hwsim.from_codes(np.ones(3, np.int64), MX("fp4_e2m1"))
    with pytest.raises(ValueError, match="out must be a C-contiguous"):
        hwsim.quantize(x, "mxint8", out=np.empty((3, 2)))
    with pytest.raises(ValueError, match="seed must be an int"):
        hwsim.quantize(x, "bfp8", "stochastic", seed=1.5)
    with pytest.raises(ValueError, match="float16/float32/float64 or integer"):
        hwsim.quantize(x.astype(np.complex128), "bfp8")


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["mxfp8_e4m3", "mxfp4_e2m1", "mxint8", "bfp8_b32", "bfp8_axis0"])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_cuda_equals_numba(name, rounding):
    x = np.random.default_rng(7).standard_normal((33, 100)).astype(np.float32)
    want = hwsim.quantize(x, name, rounding, seed=9)
    got = hwsim.quantize(torch.from_numpy(x).cuda(), name, rounding, seed=9)
    assert got.device.type == "cuda" and np.array_equal(bits(got.cpu()), bits(want))
