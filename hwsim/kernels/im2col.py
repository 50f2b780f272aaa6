"""The im2col of a convolution on NumPy arrays in one pass
(``hwsim.ops.im2col``): each window copied straight from the input into its
column, pads read as zeros, instead of a padded copy, a strided window view
and the copy its reshape makes (three passes over the largest array of a
conv layer's step)."""

from __future__ import annotations

from hwsim.kernels.jit import kernel


@kernel
def im2col_kernel(x, out, row_step, col_step, top, left, sh, sw, kh, kw, ho, wo):
    """Window element (c, i, j) at output position (y, q) of image b, that is
    x[b, c, y sh + i - top, q sw + j - left] (0 outside x), goes to
    out[b row_step + (c kh + i) kw + j, b col_step + y wo + q]: ``out`` a
    C-contiguous 2-D array, (N C kh kw, ho wo) with steps (C kh kw, 0) or
    (C kh kw, N ho wo) with steps (0, ho wo). ``top``/``left`` may be
    negative (a crop). Data movement only: exact for any dtype."""
    n, c, h, w = x.shape
    for b in range(n):
        for ch in range(c):
            src = x[b, ch]
            for i in range(kh):
                for j in range(kw):
                    row = out[b * row_step + (ch * kh + i) * kw + j]
                    for y in range(ho):
                        yy = y * sh + i - top
                        base = b * col_step + y * wo
                        if yy < 0 or yy >= h:
                            for q in range(wo):
                                row[base + q] = 0
                            continue
                        line = src[yy]
                        for q in range(wo):
                            xx = q * sw + j - left
                            row[base + q] = line[xx] if 0 <= xx < w else 0
