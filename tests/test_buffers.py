"""hwsim.kernels.buffers: pooled output arrays are reused only once nothing
refers to them, never alias a live array, and the allocating quantize returns
the same bits as quantize into ``out=``."""

from __future__ import annotations

import gc

import numpy as np
import pytest

import hwsim
from hwsim.kernels import buffers

BIG = buffers.POOL_MIN_BYTES // 4  # float32 elements filling the pool's threshold


def address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def test_small_arrays_are_plain_numpy():
    a = buffers.empty((3, 4), np.float64)
    assert a.shape == (3, 4) and a.dtype == np.float64 and a.flags.owndata


@pytest.mark.parametrize("shape", [(BIG,), (2, BIG // 2 + 7), BIG + 1])
def test_large_arrays_have_the_asked_layout(shape):
    a = buffers.empty(shape, np.float32)
    want = (shape,) if isinstance(shape, int) else shape
    assert a.shape == want and a.dtype == np.float32
    assert a.flags.c_contiguous and a.flags.writeable
    a[...] = 1.5
    assert (a == 1.5).all()


def test_a_freed_block_is_reused_and_a_live_one_is_not():
    buffers.release()
    a = buffers.empty(BIG, np.float32)
    first = address(a)
    view = a[10:20]  # a view keeps the block in use after its parent is gone
    del a
    gc.collect()
    b = buffers.empty(BIG, np.float32)
    second = address(b)
    assert second != first
    b[:] = 2.0
    view[:] = 3.0
    assert (b == 2.0).all()  # no aliasing between the live view and b
    del view, b
    gc.collect()
    # both blocks free: the next two arrays take them, without a new map
    c = buffers.empty(BIG, np.float32)
    d = buffers.empty(BIG // 2, np.float64)  # the same bytes, another dtype
    assert {address(c), address(d)} == {first, second}
    assert buffers.pooled_bytes() == 2 * len(buffers._blocks[0])


def test_free_blocks_are_trimmed():
    buffers.release()
    for i in range(3 * buffers.POOL_MAX_BLOCKS):
        # ever larger sizes: no freed block fits, so each call maps a new one
        buffers.empty(BIG * (i + 1), np.float32)
    free = [i for i in range(len(buffers._blocks)) if buffers._free(i)]
    assert 0 < len(free) <= buffers.POOL_MAX_BLOCKS
    buffers.release()
    assert buffers.pooled_bytes() == 0


def test_allocating_quantize_equals_out_and_results_do_not_alias():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(BIG * 2) * 4).astype(np.float32)
    out = np.empty_like(x)
    hwsim.quantize(x, "fx16.12", out=out)
    first = hwsim.quantize(x, "fx16.12")
    second = hwsim.quantize(x * 2, "fx16.12")  # while ``first`` lives
    assert np.array_equal(first, out)
    assert np.array_equal(second, hwsim.quantize(x * 2, "fx16.12", out=np.empty_like(x)))
    assert address(first) != address(second)
    del first
    gc.collect()
    third = hwsim.quantize(x, "fx16.12", "stochastic", seed=3)
    assert np.array_equal(
        third, hwsim.quantize(x, "fx16.12", "stochastic", seed=3, out=np.empty_like(x))
    )
