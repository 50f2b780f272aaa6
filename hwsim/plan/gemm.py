"""The GEMM plan: how the integer MAC-array datapath moves codes between grids,
and the argument checks every backend shares. Backend-neutral: the NumPy
driver (``hwsim.ops``) and the torch path both take their decisions from here.
Semantics: DESIGN.md, "MAC-array GEMM".
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from hwsim.errors import CodeOverflowError
from hwsim.formats import MAX_WL, FixedPoint
from hwsim.modes import Overflow, Rounding
from hwsim.plan.checks import EXACT_FLOAT, fresh_seed, is_torch, seed64
from hwsim.plan.float_gemm import check_any_format, check_float_gemm_formats

STAGE_NONE, STAGE_LEFT, STAGE_ROUND = 0, 1, 2  # no grid change, exact left shift, rounding
PATHS = ("auto", "sequential", "fast")
INT64_LIMIT = 1 << 63
INT32_LIMIT = 1 << 31  # codes below this in magnitude fit int32 (both signs)
THIN_COLS = 16  # below this many output columns a MAC loop along them is mostly vector tails


def thin_product(rows: int, cols: int) -> bool:
    """Whether a per-term MAC loop, vectorized along the output's columns,
    runs on the transposed product instead: ``out^T = B^T A^T`` gives every
    output the same terms in the same order (the same codes), with the long
    side innermost. Both backends' loops ask it."""
    return cols < THIN_COLS and rows > cols


class GemmPlan(NamedTuple):
    """How the integer datapath moves codes between grids, worked out once from
    the operands' fractional lengths and largest codes.

    ``*_shift`` > 0 rounds to a grid 2^shift coarser; <= 0 is an exact left shift.
    ``fast_*`` say whether float64 BLAS on the codes is exact: it needs no
    rounding stage, no product overflow, every partial sum below 2^53 and, when
    saturating, no partial sum outside the accumulator range."""

    accumulator: FixedPoint
    product: FixedPoint | None
    product_stage: int
    product_shift: int
    acc_stage: int
    acc_shift: int
    max_product: int  # largest |a_ik * b_kj| code, in units of 2^-(fa + fb)
    left_shift: int  # total exact left shift of a term on the fast path
    fast_wrap: bool  # wrap accumulator, BLAS in K-chunks then modulo 2^wl
    fast_saturate_limit: int  # saturate: the fast path is exact if sum_k |t| <= this (-1: never)
    wrap_chunk: int  # K-chunk for wrap (each chunk's |sum| < 2^53)
    term_max: int = 0  # largest |term| on the accumulator grid, after its stages

    @property
    def rounded_term_top(self) -> float:
        """An upper bound on |term| on the accumulator grid, in float64: the
        largest exact product moved there (``max_product 2^-acc_shift``) plus 1
        for its rounding (before any clamp to the accumulator's range)."""
        return self.max_product * 2.0**-self.acc_shift + 1


def products_nonneg(sa, sb) -> bool:
    """Whether every product of two operands with stats (max |code|, min,
    max) is >= 0 (both nonnegative or both nonpositive)."""
    return (sa[1] >= 0 and sb[1] >= 0) or (sa[2] <= 0 and sb[2] <= 0)


def code_ranges(sa, sb) -> tuple:
    """((min, max) of a, of b), 0 included, from the operands' stats: what the
    MAC kernels' variant choice (``mac_variant.choose``) takes."""
    return tuple((min(int(s[1]), 0), max(int(s[2]), 0)) for s in (sa, sb))


def plan_gemm(
    fa: int,
    fb: int,
    max_a: int,
    max_b: int,
    products_nonneg: bool,
    accumulator: FixedPoint,
    product: FixedPoint | None,
    overflow: Overflow,
) -> GemmPlan:
    """Work out the datapath; raise CodeOverflowError where an exact integer
    step would not fit in int64."""
    max_product = max_a * max_b
    if max_product >= INT64_LIMIT:
        raise CodeOverflowError(
            f"an exact product of the operands' codes needs {max_product.bit_length() + 1} bits "
            f"(largest codes {max_a} * 2^-{fa} and {max_b} * 2^-{fb}), more than int64 holds; "
            f"quantize the operands to narrower formats first (a_format=, b_format=)"
        )
    cur_fl, term_max = fa + fb, max_product
    product_stage, product_shift = STAGE_NONE, 0
    product_fits = True
    if max_product == 0:
        # every product is 0 and stays 0 through every stage: sums are 0
        return GemmPlan(
            accumulator, product, STAGE_NONE, 0, STAGE_LEFT, 0, 0, 0, True, EXACT_FLOAT - 1, 1 << 62
        )
    if product is not None:
        term_max, product_shift, product_stage = _stage(
            term_max, cur_fl - product.fl, product, overflow, "product"
        )
        product_fits = (
            product_stage == STAGE_LEFT
            and (max_product << -product_shift) <= product.max_code
            and (product.signed or products_nonneg)
        )
        term_max = min(term_max, max(-product.min_code, product.max_code))
        cur_fl = product.fl
    acc_term, acc_shift, acc_stage = _stage(
        term_max, cur_fl - accumulator.fl, accumulator, overflow, "accumulator"
    )
    acc_term = min(acc_term, max(-accumulator.min_code, accumulator.max_code))
    left = -product_shift - acc_shift if product_fits and acc_stage == STAGE_LEFT else 0
    if overflow == Overflow.WRAP:
        left = min(left, 63)
    exact_terms = product_fits and product_stage != STAGE_ROUND and acc_stage == STAGE_LEFT
    fast_wrap = exact_terms and overflow == Overflow.WRAP and max_product < EXACT_FLOAT
    limit = -1
    if (
        exact_terms
        and overflow == Overflow.SATURATE
        and left < 62
        and (accumulator.signed or products_nonneg)
    ):
        limit = min(accumulator.max_code >> left, EXACT_FLOAT - 1)
    chunk = (EXACT_FLOAT - 1) // max_product if max_product else 1 << 62
    return GemmPlan(
        accumulator,
        product,
        product_stage,
        product_shift,
        acc_stage,
        acc_shift,
        max_product,
        left,
        fast_wrap,
        limit,
        chunk,
        acc_term,
    )


def _stage(term_max: int, shift: int, fmt: FixedPoint, overflow: Overflow, what: str):
    """(largest |term| after the move, the shift to use, stage) for one grid change."""
    if shift > 0:
        return (term_max >> shift) + 1, shift, STAGE_ROUND
    left = -shift
    if overflow == Overflow.WRAP:
        # wrap is computed modulo 2^64, exact modulo 2^wl (wl <= 62); any shift
        # >= 63 leaves a multiple of 2^63, i.e. 0 modulo 2^wl, as 63 does
        left = min(left, 63)
    elif term_max and (term_max << left) >= INT64_LIMIT:
        raise CodeOverflowError(
            f"moving a product onto the {what} grid ({fmt}) shifts it left by {left} bits, "
            f"past int64; use a {what} format with fewer fractional bits"
        )
    return term_max << left, -left, STAGE_LEFT


def check_grid_span(bits: int, fl: int, name: str) -> None:
    if bits > MAX_WL:
        raise ValueError(
            f"{name} is not on a fixed-point grid with codes of at most {MAX_WL} bits: its "
            f"finest value needs an LSB of 2^-{fl} and its largest then needs a {bits}-bit "
            f"code. Quantize it onto a format first (e.g. pass a_format=/b_format=, or "
            f"hwsim.quantize)."
        )


def narrow_ok(plan: GemmPlan) -> bool:
    """True when the int32 kernel computes exactly what the int64 one does: a
    term and the accumulator each fit 31 bits, so their sum fits int32."""
    return (
        plan.product_stage == STAGE_NONE
        and plan.acc_stage == STAGE_LEFT
        and plan.accumulator.wl <= (31 if plan.accumulator.signed else 30)
        and (plan.max_product << -plan.acc_shift) < INT32_LIMIT
    )


def use_fast_path(plan: GemmPlan, path: str, k: int, overflow: Overflow, tight_bound) -> bool:
    """Decide the path; ``tight_bound()`` computes max sum_k |t| only when needed."""
    if path == "sequential":
        return False
    fast = plan.fast_wrap if overflow == Overflow.WRAP else saturate_fast(plan, k, tight_bound)
    if path == "fast" and not fast:
        raise ValueError(
            "path='fast' needs float64 BLAS to be exact: no rounding of products onto the "
            "product/accumulator grid, no product overflow, partial sums below 2^53 and (with "
            "saturate) no partial sum outside the accumulator range; here it is not. Use "
            "path='auto' or 'sequential'."
        )
    return fast


def saturate_fast(plan: GemmPlan, k: int, tight_bound) -> bool:
    if plan.fast_saturate_limit < 0:
        return False
    if plan.max_product * k <= plan.fast_saturate_limit:
        return True
    return float_sum_upper(tight_bound(), k) <= plan.fast_saturate_limit


def float_sum_upper(x: float, k: int, extra_roundings: int = 0) -> float:
    """An upper bound on the exact sum ``s`` of ``k`` nonnegative terms, from
    ``x``, their float64 sum (a dot product of nonnegative operands as BLAS or
    a reduction computes it: any order, blocking or FMA).

    Forming each term (a product of float64 values, or a value converted to
    float64) and each of the k - 1 additions rounds once, a relative error of
    at most u = 2^-53 each, so ``x >= s (1 - k u / (1 - k u))`` (Higham,
    "Accuracy and Stability of Numerical Algorithms", 3.1), i.e.
    ``s <= x (1 + k u / (1 - 2 k u))``. The factor ``1 + (2k + 4) u``, twice
    the first-order ``k u`` and exact in float64, covers that for k up to
    2^50 with room for the rounding of the product ``x * factor`` itself.
    ``extra_roundings``: further rounded operations in forming ``x`` beyond
    the sum (a conversion, a scaling product), each adding u to the factor."""
    return x * (1.0 + (2 * k + 4 + extra_roundings) * 2.0**-53)


def broadcast_operands(ca, cb, xp):
    if ca.ndim == cb.ndim == 2 and ca.shape[1] == cb.shape[0]:  # a layer's GEMM: nothing
        return ca, cb, (False, False), ()  # to broadcast (np.broadcast_shapes costs 5 us)
    squeeze = (ca.ndim == 1, cb.ndim == 1)
    if ca.ndim == 0 or cb.ndim == 0:
        raise ValueError("matmul operands must have at least one dimension")
    if ca.ndim == 1:
        ca = ca.reshape(1, -1)
    if cb.ndim == 1:
        cb = cb.reshape(-1, 1)
    if ca.shape[-1] != cb.shape[-2]:
        raise ValueError(
            f"matmul shapes do not match: a is {tuple(ca.shape)} (K = "
            f"{ca.shape[-1]}) and b is {tuple(cb.shape)} (K = {cb.shape[-2]})"
        )
    if ca.shape[:-2] == cb.shape[:-2]:  # nothing to broadcast
        return ca, cb, squeeze, tuple(ca.shape[:-2])
    try:
        batch = tuple(np.broadcast_shapes(tuple(ca.shape[:-2]), tuple(cb.shape[:-2])))
    except ValueError:
        raise ValueError(
            f"matmul leading dims do not broadcast: {tuple(ca.shape[:-2])} and "
            f"{tuple(cb.shape[:-2])}"
        ) from None
    return ca, cb, squeeze, batch


def squeeze_result(out, squeeze):
    if squeeze[1]:
        out = out[..., 0]
    if squeeze[0]:
        out = out[..., 0, :] if not squeeze[1] else out[..., 0]
    return out


def check_gemm_args(accumulator, product, rounding, overflow, seed, path):
    """The checked arguments; the accumulator and product may be fixed-point
    or floating-point formats (``hwsim.plan.float_gemm`` says which combine)."""
    acc = check_any_format(accumulator, "accumulator")
    product = None if product is None else check_any_format(product, "product")
    check_float_gemm_formats(acc, product)
    rounding, overflow = Rounding.parse(rounding), Overflow.parse(overflow)
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if seed is not None:
        seed = seed64(seed)
    elif rounding == Rounding.STOCHASTIC:
        seed = fresh_seed()
    return acc, product, rounding, overflow, seed


def sub_seed(seed, offset):
    """A derived seed for the operand quantizers (independent of the GEMM's noise)."""
    if seed is None:
        return None
    return (seed * 0x2545F4914F6CDD1D + offset) & ((1 << 64) - 1)


def seed_bits(seed) -> int:
    return 0 if seed is None else int(seed)


def check_pair(value, name, minimum):
    def whole(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))

    try:
        pair = (value, value) if whole(value) else tuple(value)
    except TypeError:  # a float, None, ...: not a pair either
        pair = ()
    if len(pair) != 2 or not all(whole(v) and v >= minimum for v in pair):
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def check_pads(padding) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) zero padding from an int, an (h, w) pair or
    a 4-tuple of ints >= 0."""
    if isinstance(padding, (int, np.integer)) or len(tuple(padding)) == 2:
        ph, pw = check_pair(padding, "padding", 0)
        return ph, ph, pw, pw
    pads = tuple(padding)
    if len(pads) != 4 or not all(isinstance(v, (int, np.integer)) and v >= 0 for v in pads):
        raise ValueError(
            "padding must be an int >= 0, an (h, w) pair or (top, bottom, left, right) of "
            f"them, got {padding!r}"
        )
    return tuple(int(v) for v in pads)


def fast_chunk(plan: GemmPlan, overflow: Overflow, k: int) -> int:
    """The K-chunk of the BLAS fast path: wrap sums chunks whose sums stay below
    2^53 (then modulo 2^64); a saturating fast path is exact in one piece."""
    return plan.wrap_chunk if overflow == Overflow.WRAP else max(k, 1)


def blas_code_sums(a, b, chunk: int, scale: float = 1.0):
    """The one "float64 BLAS on codes" step, for NumPy arrays and torch tensors
    alike: ``sum_k a_ik b_kj`` of float64 operands (..., M, K) @ (..., K, N)
    whose products are integers divided by ``scale``.

    Returns ``(sums, chunked)``: with ``chunk >= K`` the float64 product itself
    (exact: the plan proved every partial sum below 2^53; the caller scales
    it), else the int64 sum over K-chunks of ``chunk_sum * scale``, each exact,
    added modulo 2^64 (what wrap needs)."""
    k = a.shape[-1]
    if chunk >= k:
        return a @ b, False
    sums = None
    for k0 in range(0, k, chunk):
        part = (a[..., k0 : k0 + chunk] @ b[..., k0 : k0 + chunk, :]) * scale
        part = part.to(_torch_int64()) if is_torch(part) else part.astype(np.int64)
        sums = part if sums is None else sums + part
    return sums, True


def _torch_int64():
    import torch

    return torch.int64
