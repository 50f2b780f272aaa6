"""The im2col of a convolution, shared by every MAC-array convolution (codes,
float values, block-scaled operands)."""

from __future__ import annotations

import numpy as np

from hwsim.kernels.im2col import im2col_kernel
from hwsim.plan.checks import is_torch
from hwsim.plan.gemm import INT32_LIMIT


def im2col(x, w, stride, pads, wide: bool = False, dtype=None, spare: int = 0):
    """The columns of a convolution of NCHW ``x`` (codes or values) with ``w`` of
    shape (O, C, kh, kw): ``(cols (N, C*kh*kw, Ho*Wo), (N, O, Ho, Wo))``, each
    column one window in (c, kh, kw) order; ``pads`` = (top, bottom, left,
    right), a negative pad crops. Checks the shapes. ``wide``: the batch side
    by side instead, cols (1, C*kh*kw, N*Ho*Wo). ``dtype``: the NumPy
    columns' dtype (the caller proves every value fits it), x's by default;
    ``spare``: that many more rows after the columns, left unwritten."""
    n, o, ho, wo = conv_shape(x, w, stride, pads)
    c, kh, kw = w.shape[1:]
    sh, sw = stride
    top, bottom, left, right = pads
    if is_torch(x):
        import torch.nn.functional as F

        xp = F.pad(x, (left, right, top, bottom)) if any(pads) else x  # a negative pad crops
        cols = xp.unfold(2, kh, sh).unfold(3, kw, sw)  # (N, C, Ho, Wo, kh, kw)
        if wide:  # one copy into the wide layout
            cols = cols.permute(1, 4, 5, 0, 2, 3).reshape(1, c * kh * kw, n * ho * wo)
        else:
            cols = cols.permute(0, 1, 4, 5, 2, 3).reshape(n, c * kh * kw, ho * wo)
    else:
        rows = c * kh * kw
        shape, steps = (
            ((1, rows + spare, n * ho * wo), (0, ho * wo))
            if wide
            else ((n, rows + spare, ho * wo), (rows + spare, 0))
        )
        xp = _padded(x, pads, x.dtype if dtype is None else dtype)
        cols = np.empty(shape, dtype=xp.dtype)
        if cols.size:
            corners = np.arange(ho, dtype=np.uintp)[:, None] * np.uintp(sh * xp.shape[3])
            corners = (corners + np.arange(wo, dtype=np.uintp) * np.uintp(sw)).reshape(-1)
            im2col_kernel(xp, corners, cols.reshape(-1, shape[2]), *steps, kh, kw)
    return cols, (n, o, ho, wo)


def code_columns(cx, cw, stride, pads, wide: bool, x_stats, spare: int = 0):
    """:func:`im2col` of x's codes, int32 on NumPy where ``x_stats`` (max
    |code|, min, max) show they fit: the MAC kernels' lanes (or BLAS's float
    copy) then read half the bytes, or take them as they are. ``spare``
    (NumPy): rows left unwritten after the columns', for the caller."""
    narrow = not is_torch(cx) and x_stats is not None and x_stats[0] < INT32_LIMIT
    return im2col(cx, cw, stride, pads, wide, np.int32 if narrow else None, spare)


def conv_shape(x, w, stride, pads) -> tuple[int, int, int, int]:
    """(N, O, Ho, Wo) of the convolution of x (N, C, H, W) with w (O, C, kh,
    kw); raises where the shapes do not fit together."""
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(
            f"conv2d takes x of shape (N, C, H, W) and w of shape (O, C, kh, kw), "
            f"got {tuple(x.shape)} and {tuple(w.shape)}"
        )
    n, c = x.shape[:2]
    o, cw, kh, kw = w.shape
    if c != cw:
        raise ValueError(f"x has {c} channels but w expects {cw} (w shape {tuple(w.shape)})")
    sh, sw = stride
    top, bottom, left, right = pads
    hp, wp = x.shape[2] + top + bottom, x.shape[3] + left + right
    if hp < kh or wp < kw:
        raise ValueError(f"the padded input ({hp}x{wp}) is smaller than the kernel ({kh}x{kw})")
    return n, o, (hp - kh) // sh + 1, (wp - kw) // sw + 1


def _padded(x, pads, dtype) -> np.ndarray:
    """x (N, C, H, W) with zeros around it (a negative pad crops), C-contiguous."""
    top, bottom, left, right = pads
    h, w = x.shape[2:]
    if not any(pads) and x.dtype == dtype:
        return np.ascontiguousarray(x)
    out = np.zeros(x.shape[:2] + (h + top + bottom, w + left + right), dtype=dtype)
    t, lf = max(top, 0), max(left, 0)
    inner = x[:, :, max(-top, 0) : h - max(-bottom, 0), max(-left, 0) : w - max(-right, 0)]
    out[:, :, t : t + inner.shape[2], lf : lf + inner.shape[3]] = inner
    return out
