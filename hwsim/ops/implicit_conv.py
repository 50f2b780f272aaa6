"""The NumPy backend's convolution without im2col columns, where every
product is rounded (or moved) term by term: ``implicit_conv_kernel`` reads
the input where it lies and skips the padding's zero terms. Same plan and
same MAC variant as the im2col GEMM it replaces (``hwsim.ops.numpy_gemm``'s
sequential path), so the same codes."""

from __future__ import annotations

import numpy as np

from hwsim.kernels import gemm_mac, mac_variant
from hwsim.kernels.jit import SERIAL_BELOW, threads_for
from hwsim.modes import Overflow, Rounding
from hwsim.plan.gemm import code_ranges, narrow_ok, plan_gemm, products_nonneg


def implicit_conv(cx, fx, cw, fw, stride, pads, out_shape, acc, product, rounding, overflow,
                  path, stats):  # fmt: skip
    """Accumulator codes (N, O, Ho, Wo) of the convolution of NumPy codes
    ``cx`` (N, C, H, W) and ``cw`` (O, C, kh, kw), or None where the im2col
    GEMM runs instead: stochastic rounding (its noise is keyed by the im2col
    layout), a column stride other than 1, unknown operand stats, or a plan
    whose terms need no rounding (BLAS or the narrow kernel may then run)."""
    sx, sw = stats
    if sx is None or sw is None or stride[1] != 1 or rounding == Rounding.STOCHASTIC:
        return None
    if path not in ("auto", "sequential") or cx.size == 0 or cw.size == 0:
        return None
    nonneg = products_nonneg(sw, sx)
    plan = plan_gemm(fw, fx, int(sw[0]), int(sx[0]), nonneg, acc, product, overflow)
    blas = plan.fast_wrap if overflow == Overflow.WRAP else plan.fast_saturate_limit >= 0
    if (blas and path == "auto") or narrow_ok(plan):
        return None
    p = product if product is not None else acc
    depth = cw[0].size
    key = mac_variant.variant(
        *code_ranges(sw, sx),
        depth,
        product is not None,
        int(rounding),
        int(overflow),
        (plan.product_shift, plan.acc_shift),
        (p.min_code, p.max_code, acc.min_code, acc.max_code),
    )
    if key is None:
        return None
    lane = mac_variant.LANES[key[0]]
    n, o, ho, wo = out_shape
    out = np.empty((o, ho, wo, n), dtype=np.int64)
    xt = np.ascontiguousarray(cx.transpose(1, 2, 3, 0), dtype=lane)
    serial, parallel = gemm_mac.implicit_conv_kernel(*key)
    work = out.size * depth
    with threads_for(work):
        (parallel if work >= SERIAL_BELOW else serial)(
            np.ascontiguousarray(cw, dtype=lane), xt, out, pads[0], pads[2], stride[0],
            plan.product_shift, p.min_code, p.max_code, plan.acc_shift, acc.min_code,
            acc.max_code,
        )  # fmt: skip
    return np.ascontiguousarray(out.transpose(3, 0, 1, 2))
