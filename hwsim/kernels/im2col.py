"""The im2col of a convolution on NumPy arrays (``hwsim.ops.im2col``): a
gather from the padded input, one window element per output column."""

from __future__ import annotations

import numpy as np

from hwsim.kernels.jit import kernel


@kernel
def im2col_kernel(xp, offsets, out, row_step, col_step, kh, kw):
    """Window element (c, i, j) at output position p of image b, that is
    xp[b, c].flat[i wp + j + offsets[p]] (``offsets[y wo + q] = y sh wp + q
    sw``: the window's top-left corner in the padded plane of width wp),
    goes to out[b row_step + (c kh + i) kw + j, b col_step + p]: ``out`` a
    C-contiguous 2-D array, (N C kh kw, ho wo) with steps (C kh kw, 0) or
    (C kh kw, N ho wo) with steps (0, ho wo). ``xp`` the C-contiguous padded
    (or cropped) input. Data movement only: exact for any dtype.

    The innermost loop is a gather along one output row with unsigned
    indices (no negative-index wraparound to check), which vectorizes, where
    a loop over each window row testing the pads per element stayed scalar."""
    n, c, hp, wp = xp.shape
    positions = offsets.size
    src = xp.reshape(-1)
    dst = out.reshape(-1)
    width = out.shape[1]
    plane = hp * wp
    for ch in range(c):
        for i in range(kh):
            for j in range(kw):
                row = ((ch * kh + i) * kw + j) * width
                for b in range(n):
                    d = np.uintp(b * row_step * width + row + b * col_step)
                    s = np.uintp((b * c + ch) * plane + i * wp + j)
                    for p in range(positions):
                        dst[d + np.uintp(p)] = src[s + offsets[p]]
