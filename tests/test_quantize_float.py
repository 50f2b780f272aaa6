"""Float-format quantize: Numba kernels and torch path against the Fraction
reference (tests/naive_float.py), against each other, against the peers
(torch casts, ml_dtypes, qtorch, APyTypes; marked ``peers``), and errors."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from naive_float import neighbours, ref_float, ref_max

import hwsim
from hwsim import FloatingPoint

MODES = ["nearest", "nearest_away", "zero", "floor", "stochastic"]


@st.composite
def float_formats(draw, max_exp=8, max_man=12):
    exp = draw(st.integers(2, max_exp))
    man = draw(st.integers(0, max_man))
    inf = exp == 11 or draw(st.booleans())  # exp=11 without Inf exceeds float64
    nan = True if inf else draw(st.booleans())
    if man == 0 and nan:  # no room for a NaN code
        if exp == 11:
            man = 1
        else:
            inf = nan = False
    return FloatingPoint(
        exp,
        man,
        subnormals=draw(st.booleans()),
        inf=inf,
        nan=nan,
        saturate=draw(st.booleans()),
    )


def special_values(fmt: FloatingPoint) -> list[float]:
    mx = fmt.max
    if fmt.exp == 11:  # beyond max overflows float64 itself
        return [0.0, -0.0, math.inf, -math.inf, mx, -mx, 5e-324, -5e-324, math.nan]
    ulp_top = math.ldexp(1.0, fmt.emax - fmt.man)
    sub = math.ldexp(1.0, fmt.emin - fmt.man)
    vals = [0.0, -0.0, math.inf, -math.inf, mx, mx + ulp_top / 2, mx + ulp_top / 4]
    vals += [mx + ulp_top * 3 / 4, mx + ulp_top, mx * 2, fmt.min_normal, sub, sub / 2, sub / 4]
    vals += [sub * 3 / 4, sub * 1.5, fmt.min_normal - sub / 2, fmt.min_normal - sub, 5e-324]
    if fmt.nan:
        vals.append(math.nan)
    return vals + [-v for v in vals]


@st.composite
def format_and_values(draw, max_exp=8, max_man=12):
    """A format and float64 values on a grid 2^3 finer than its quantum, in
    binades from below the smallest subnormal to beyond max (ties, sticky bits,
    subnormal boundaries and the overflow threshold), plus special values."""
    fmt = draw(float_formats(max_exp, max_man))
    n = draw(st.integers(1, 40))
    vals = []
    for _ in range(n):
        e = draw(st.integers(fmt.emin - fmt.man - 3, min(fmt.emax + 2, 1023)))
        k = draw(st.integers(1 << (fmt.man + 3), (2 << (fmt.man + 3)) - 1))
        sign = draw(st.sampled_from([1.0, -1.0]))
        vals.append(sign * math.ldexp(k, e - fmt.man - 3))
    vals += draw(st.lists(st.sampled_from(special_values(fmt)), max_size=10))
    return fmt, np.array(vals, dtype=np.float64)


def ref_array(x, fmt, rounding, noise=None):
    flags = dict(subnormals=fmt.subnormals, inf=fmt.inf, nan=fmt.nan, saturate=fmt.saturate)
    u = np.zeros(x.size) if noise is None else noise.reshape(-1)
    out = [
        ref_float(float(v), fmt.exp, fmt.man, rounding=rounding, u=float(ui), **flags)
        for v, ui in zip(x.reshape(-1), u, strict=True)
    ]
    return np.array(out, dtype=np.float64).reshape(x.shape)


def same_bits(a, b) -> bool:
    """Equal bit patterns, NaN included (payload and sign)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    view = {2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
    return bool(np.array_equal(a.view(view), b.view(view)))


@given(case=format_and_values(), rounding=st.sampled_from(MODES), seed=st.integers(0, 2**64 - 1))
def test_numba_matches_reference(case, rounding, seed):
    fmt, x = case
    noise = np.random.default_rng(seed % 2**32).random(x.shape)
    noise[::3] = 0.0  # exact ties with u = 0
    ours = hwsim.quantize(x, fmt, rounding, noise=noise if rounding == "stochastic" else None)
    assert same_bits(ours, ref_array(x, fmt, rounding, noise))


@given(case=format_and_values(), rounding=st.sampled_from(MODES), seed=st.integers(0, 2**64 - 1))
def test_torch_matches_numba_every_mode(case, rounding, seed):
    fmt, x = case
    kw = dict(seed=seed) if rounding == "stochastic" else {}
    a = hwsim.quantize(x, fmt, rounding, **kw)
    b = hwsim.quantize(torch.from_numpy(x), fmt, rounding, **kw).numpy()
    assert same_bits(a, b)
    if fmt.representable_in("float32"):
        with np.errstate(over="ignore"):  # beyond float32: +-Inf inputs
            x32 = x.astype(np.float32)
        a32 = hwsim.quantize(x32, fmt, rounding, **kw)
        b32 = hwsim.quantize(torch.from_numpy(x32), fmt, rounding, **kw).numpy()
        assert same_bits(a32, b32)
        ref = ref_array(x32.astype(np.float64), fmt, rounding) if rounding != "stochastic" else None
        if ref is not None:
            assert same_bits(a32, ref.astype(np.float32))


@given(case=format_and_values(max_exp=11, max_man=52), rounding=st.sampled_from(MODES[:4]))
def test_wide_formats_match_reference(case, rounding):
    """Up to fp64-sized formats: deep subnormals and shifts past 62 bits."""
    fmt, x = case
    x = x[np.isfinite(x) | np.isnan(x)]
    assert same_bits(hwsim.quantize(x, fmt, rounding), ref_array(x, fmt, rounding))


def test_seeded_stochastic_uses_the_counter_stream():
    """seed=s gives the uniforms of the fixed-point counter stream (element i ->
    SplitMix64(s, i)), so equal seeds give equal bits on both backends."""
    from hwsim.torch_path.core import counter_uniform

    x = np.random.default_rng(1).standard_normal(1000)
    u = counter_uniform(7, x.size).numpy()
    a = hwsim.quantize(x, "fp8_e5m2", "stochastic", seed=7)
    assert same_bits(a, hwsim.quantize(x, "fp8_e5m2", "stochastic", noise=u))
    assert same_bits(a, ref_array(x, FloatingPoint.parse("fp8_e5m2"), "stochastic", u))


def test_stochastic_unbiased_and_only_two_neighbours():
    fmt = FloatingPoint.parse("fp8_e4m3")
    for v in (0.3, -0.3, 1.7e-3, -5.1e-3, 300.0, 3 * 2.0**-11):
        x = np.full(200_000, v)
        q = hwsim.quantize(x, fmt, "stochastic", seed=123)
        lo, hi = neighbours(v, fmt.exp, fmt.man, inf=False)
        assert set(np.unique(q)) <= {lo, hi}
        # the mean of Bernoulli(p) choices is within 5 sigma of v
        sigma = abs(hi - lo) * 0.5 / math.sqrt(x.size)
        assert abs(q.mean() - v) < 5 * sigma + 1e-300


def test_overflow_rules_at_the_threshold():
    """Round to nearest overflows at max + half an ulp (ties go to the even
    neighbour: up for IEEE formats, whose max has an odd mantissa; down for
    E4M3, whose max 448 = 1.110b 2^8 is even); zero never overflows; floor
    only for negative values; saturate always clamps (Inf inputs too)."""
    fp16 = FloatingPoint.parse("fp16")
    assert hwsim.quantize(65519.0, fp16) == 65504.0
    assert hwsim.quantize(65520.0, fp16) == math.inf
    assert hwsim.quantize(1e9, fp16, "zero") == 65504.0
    assert hwsim.quantize(-1e9, fp16, "zero") == -65504.0
    assert hwsim.quantize(1e9, fp16, "floor") == 65504.0
    assert hwsim.quantize(-1e9, fp16, "floor") == -math.inf
    assert hwsim.quantize(1e9, "fp16_sat") == 65504.0
    assert hwsim.quantize(-math.inf, "fp16_sat") == -65504.0
    e4m3 = FloatingPoint.parse("fp8_e4m3")
    assert hwsim.quantize(464.0, e4m3) == 448.0
    assert math.isnan(hwsim.quantize(464.5, e4m3))
    assert math.isnan(hwsim.quantize(math.inf, e4m3))
    assert hwsim.quantize(1000.0, "fp8_e4m3_sat") == 448.0
    assert hwsim.quantize(-math.inf, "fp8_e4m3_sat") == -448.0
    assert hwsim.quantize(1e9, "fp4_e2m1") == 6.0 and hwsim.quantize(-math.inf, "fp4_e2m1") == -6.0
    assert float(ref_max(4, 3, False, True)) == 448.0


def test_subnormals_and_flush_to_zero():
    fmt = FloatingPoint.parse("fp8_e4m3")
    sub = fmt.min_subnormal
    assert hwsim.quantize(sub / 2, fmt) == 0.0  # tie to even: 0
    assert hwsim.quantize(sub * 0.51, fmt) == sub
    assert hwsim.quantize(sub * 1.5, fmt) == 2 * sub  # tie to even: 2 sub
    ftz = FloatingPoint.parse("fp8_e4m3_ftz")
    assert ftz.min_subnormal == ftz.min_normal
    assert hwsim.quantize(fmt.min_normal - sub, ftz) == 0.0
    assert hwsim.quantize(fmt.min_normal - sub / 4, ftz) == fmt.min_normal  # rounds up first
    r = hwsim.quantize(np.array([-sub]), ftz)
    assert r[0] == 0.0 and math.copysign(1.0, r[0]) < 0  # a zero of the input's sign


def test_signed_zero_and_nan_pass_through():
    x = np.array([0.0, -0.0, -1e-300, np.nan, -np.nan], dtype=np.float64)
    for fmt in ("fp16", "fp8_e4m3", "bf16"):
        for b in (x, torch.from_numpy(x)):
            q = np.asarray(hwsim.quantize(b, fmt))
            assert same_bits(q, np.array([0.0, -0.0, -0.0, np.nan, -np.nan]))


def test_dtypes_scalars_and_out():
    x = np.random.default_rng(0).standard_normal(100)
    for dt in (np.float16, np.float32):
        ref = hwsim.quantize(x.astype(dt).astype(np.float64), "fp8_e4m3")
        q = hwsim.quantize(x.astype(dt), "fp8_e4m3")
        assert q.dtype == dt and np.array_equal(q.astype(np.float64), ref)
        t = hwsim.quantize(torch.from_numpy(x.astype(dt)), "fp8_e4m3")
        assert t.dtype == getattr(torch, dt.__name__) and np.array_equal(t.double().numpy(), ref)
    xb = torch.from_numpy(x).to(torch.bfloat16)
    tb = hwsim.quantize(xb, "fp8_e4m3")
    ref = hwsim.quantize(xb.double().numpy(), "fp8_e4m3")
    assert tb.dtype == torch.bfloat16 and np.array_equal(tb.double().numpy(), ref)
    assert hwsim.quantize(np.arange(5), "fp4_e2m1").tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert hwsim.quantize(torch.arange(5), "fp4_e2m1").dtype == torch.float64
    assert isinstance(hwsim.quantize(0.3, "bf16"), float)
    x32 = x.astype(np.float32)
    out = np.empty_like(x32)
    assert hwsim.quantize(x32, "bf16", out=out) is out
    assert np.array_equal(out, torch.from_numpy(x32).to(torch.bfloat16).float().numpy())


def test_errors_are_clear():
    x = np.ones(3)
    with pytest.raises(ValueError, match="not exactly representable in float16"):
        hwsim.quantize(x.astype(np.float16), "bf16")
    with pytest.raises(ValueError, match="not exactly representable in torch.float32"):
        hwsim.quantize(torch.ones(3), "fp64")
    with pytest.raises(ValueError, match="overflow='wrap' does not apply"):
        hwsim.quantize(x, "bf16", overflow="wrap")
    with pytest.raises(ValueError, match="noise is only used"):
        hwsim.quantize(x, "bf16", "nearest", noise=np.zeros(3))
    with pytest.raises(ValueError, match="noise must have the input's shape"):
        hwsim.quantize(x, "bf16", "stochastic", noise=np.zeros(2))
    with pytest.raises(ValueError, match="unknown rounding mode"):
        hwsim.quantize(x, "bf16", "up")
    for b in (np.array([1.0, np.nan]), torch.tensor([1.0, np.nan])):
        with pytest.raises(hwsim.NonFiniteError, match="1 NaN value.*index \\(1,\\).*no NaN code"):
            hwsim.quantize(b, "fp6_e2m3")
    with pytest.raises(ValueError, match="to_codes is for fixed-point formats"):
        hwsim.to_codes(x, "fp8_e4m3")
    with pytest.raises(ValueError, match="from_codes is for fixed-point formats"):
        hwsim.from_codes(np.zeros(3, dtype=np.int64), FloatingPoint(4, 3))
    with pytest.raises(ValueError, match="out must be"):
        hwsim.quantize(x, "bf16", out=np.empty(3, np.float32))


# -- peers ---------------------------------------------------------------------------


def same_values(ours, theirs, nan_sign: bool = True) -> bool:
    """Bit-equal float32/float64 arrays, except that a NaN must meet a NaN (of
    the same sign if ``nan_sign``). Peers differ in NaN payloads (torch's
    float8 -> float32 gives 0x7ff00000, ml_dtypes 0x7fc00000; quantize passes
    the input NaN through) and torch's fp16/bf16 casts do not keep a NaN's
    sign (-NaN -> 0x7fffffff in fp16; some +NaN -> 0xffff0000 in bf16)."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    nan = np.isnan(ours)
    if not np.array_equal(nan, np.isnan(theirs)):
        return False
    if nan_sign and not np.array_equal(np.signbit(ours[nan]), np.signbit(theirs[nan])):
        return False
    return same_bits(ours[~nan], theirs[~nan])


def float32_cases(fmt: FloatingPoint, n: int = 20000, seed: int = 0) -> np.ndarray:
    """float32 inputs: every bit pattern class (random uint32 patterns, NaN and
    Inf included), values near each grid point and midpoint of ``fmt`` (one
    float32 ulp either side), and the special values."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    e = rng.integers(fmt.emin - fmt.man - 3, min(fmt.emax + 2, 127), n)
    k = rng.integers(1 << (fmt.man + 1), 2 << (fmt.man + 1), n)  # one extra bit: midpoints
    grid = (np.ldexp(k.astype(np.float64), e - fmt.man - 1) * rng.choice([-1, 1], n)).astype(
        np.float32
    )
    near = np.concatenate([grid, np.nextafter(grid, np.float32(np.inf)), np.nextafter(grid, 0)])
    specials = np.array(special_values(fmt), dtype=np.float64)
    with np.errstate(over="ignore"):
        specials = specials.astype(np.float32)
    return np.concatenate([raw, near, specials])


TORCH_CASTS = [
    ("fp16", torch.float16),
    ("bf16", torch.bfloat16),
    ("fp8_e4m3_sat", torch.float8_e4m3fn),  # torch's cast saturates, Inf included
    ("fp8_e5m2", torch.float8_e5m2),
]


@pytest.mark.peers
@pytest.mark.parametrize(("name", "dtype"), TORCH_CASTS)
def test_torch_casts_bit_exact(name, dtype):
    x = torch.from_numpy(float32_cases(FloatingPoint.parse(name)))
    theirs = x.to(dtype).to(torch.float32).numpy()
    assert same_values(hwsim.quantize(x, name).numpy(), theirs, nan_sign=False)
    assert same_values(hwsim.quantize(x.numpy(), name), theirs, nan_sign=False)


ML_DTYPES = [
    ("fp8_e4m3", "float8_e4m3fn"),  # ml_dtypes overflows to NaN (no saturation)
    ("fp8_e5m2", "float8_e5m2"),
    ("fp6_e3m2", "float6_e3m2fn"),
    ("fp6_e2m3", "float6_e2m3fn"),
    ("fp4_e2m1", "float4_e2m1fn"),
    ("bf16", "bfloat16"),
]


@pytest.mark.peers
@pytest.mark.parametrize(("name", "md_name"), ML_DTYPES)
def test_ml_dtypes_bit_exact(name, md_name):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    fmt = FloatingPoint.parse(name)
    x = float32_cases(fmt)
    if not fmt.nan:
        x = x[~np.isnan(x)]  # ml_dtypes turns NaN into +-0 there; hwsim raises (tested above)
    with np.errstate(invalid="ignore"):  # NaN inputs
        theirs = x.astype(getattr(ml_dtypes, md_name)).astype(np.float32)
    assert same_values(hwsim.quantize(x, fmt), theirs)
    assert same_values(hwsim.quantize(torch.from_numpy(x), fmt).numpy(), theirs)


@st.composite
def qtorch_cases(draw):
    """qtorch's float_quantize has no Inf or NaN codes (the top exponent is
    finite, overflow clips to max) and rounds half away from zero: hwsim's
    ``FloatingPoint(exp, man, inf=False, nan=False)`` with ``nearest_away``.
    Below min_normal it adds 2^emin in float32 first, exact only for inputs on a
    grid of 2^(emin - 23): the values are drawn there."""
    exp, man = draw(st.integers(2, 7)), draw(st.integers(0, 22))
    fmt = FloatingPoint(exp, man, inf=False, nan=False)
    n = draw(st.integers(1, 50))
    vals = []
    for _ in range(n):
        e = draw(st.integers(fmt.emin - 23, fmt.emax + 3))
        bits = min(23, e - (fmt.emin - 23))  # stay on the 2^(emin - 23) grid
        k = draw(st.integers(1 << bits, (2 << bits) - 1))
        vals.append(draw(st.sampled_from([1.0, -1.0])) * math.ldexp(k, e - bits))
    vals += draw(st.lists(st.sampled_from([0.0, -0.0, fmt.max, -fmt.max]), max_size=3))
    return fmt, np.array(vals, dtype=np.float32)


@pytest.mark.peers
@given(case=qtorch_cases())
def test_qtorch_float_quantize_nearest(case):
    qtorch_quant = pytest.importorskip("qtorch.quant")
    fmt, x = case
    xt = torch.from_numpy(x)
    theirs = qtorch_quant.float_quantize(xt, fmt.exp, fmt.man, rounding="nearest")
    ours = hwsim.quantize(xt, fmt, "nearest_away")
    # qtorch's subnormal path (x + 2^emin) - 2^emin turns a zero result into +0
    assert same_bits((ours + 0.0).numpy(), (theirs + 0.0).numpy())


@pytest.mark.peers
@given(case=qtorch_cases())
def test_qtorch_float_quantize_stochastic_picks_our_neighbours(case):
    """qtorch draws its own noise (std::mt19937), so only the support is shared:
    its result is one of the two neighbours hwsim's stochastic rounding picks from."""
    qtorch_quant = pytest.importorskip("qtorch.quant")
    fmt, x = case
    theirs = qtorch_quant.float_quantize(torch.from_numpy(x), fmt.exp, fmt.man, "stochastic")
    lo = hwsim.quantize(x, fmt, "stochastic", noise=np.full(x.shape, 1 - 2.0**-53))
    hi = hwsim.quantize(x, fmt, "stochastic", noise=np.zeros(x.shape))
    t = theirs.numpy()
    assert np.all((t == lo) | (t == hi))


APY_MODES = {
    "nearest": "TIES_EVEN",
    "nearest_away": "TIES_AWAY",
    "zero": "TO_ZERO",
    "floor": "TO_NEG",
}


@pytest.mark.peers
@given(
    case=format_and_values(max_exp=11, max_man=30),
    rounding=st.sampled_from(sorted(APY_MODES)),
)
def test_apytypes_float_cast(case, rounding):
    """APyTypes' floats are IEEE style (Inf and NaN, subnormals, no saturation).

    apytypes 0.5.1 gives zero where a value below min_normal rounds up to
    min_normal (seen here: e2m1 TIES_EVEN 0.75 -> 0, not 1; e3m1 TO_NEG
    -0.1875 -> -0, not -0.25; e4m0 TO_NEG -1e-5 -> -0, not -2^-6): those
    elements are compared with the Fraction reference only (above). With
    man = 0 it breaks ties downward (1.5 -> 1, 3 -> 2), where hwsim and gfloat
    take the even code (the even exponent field: 1.5 -> 2, 3 -> 2): man >= 1."""
    apy = pytest.importorskip("apytypes")
    fmt, x = case
    fmt = FloatingPoint(fmt.exp, max(fmt.man, 1))
    src = apy.APyFloatArray.from_float(x, 11, 52)
    mode = getattr(apy.QuantizationMode, APY_MODES[rounding])
    theirs = src.cast(fmt.exp, fmt.man, quantization=mode).to_numpy()
    ours = hwsim.quantize(x, fmt, rounding)
    carry = (np.abs(x) < fmt.min_normal) & (np.abs(ours) == fmt.min_normal)
    assert same_values(ours[~carry], theirs[~carry])


GFLOAT_MODES = {
    "nearest": "TiesToEven",
    "nearest_away": "TiesToAway",
    "zero": "TowardZero",
    "floor": "TowardNegative",
}


@pytest.mark.peers
@given(case=format_and_values(max_exp=8, max_man=10), rounding=st.sampled_from(MODES[:4]))
def test_gfloat_round_float(case, rounding):
    """gfloat (Graphcore's reference, one value at a time) on the same random
    formats: IEEE style, OCP fn (one NaN code) and MX (no NaN), saturating or not,
    man = 0 included. Its FTZ differs in kind (no subnormal codes at all), so
    subnormals are kept here; FTZ is checked against the Fraction reference."""
    gfloat = pytest.importorskip("gfloat")
    fmt, x = case
    if not fmt.subnormals:
        fmt = FloatingPoint(fmt.exp, fmt.man, inf=fmt.inf, nan=fmt.nan, saturate=fmt.saturate)
    info = gfloat.FormatInfo(
        str(fmt),
        fmt.bits,
        fmt.man + 1,
        bias=fmt.bias,
        is_signed=True,
        domain=gfloat.Domain.Extended if fmt.inf else gfloat.Domain.Finite,
        has_nz=True,
        num_high_nans=(1 << fmt.man) - 1 if fmt.inf else int(fmt.nan),
        has_subnormals=True,
        is_twos_complement=False,
    )
    assert info.max == fmt.max
    if not fmt.nan:
        x = x[~np.isnan(x)]
    mode = getattr(gfloat.RoundMode, GFLOAT_MODES[rounding])
    theirs = np.array([gfloat.round_float(info, float(v), mode, fmt.saturate) for v in x])
    assert same_values(hwsim.quantize(x, fmt, rounding), theirs, nan_sign=False)
