"""Output buffers for memory-bound kernels: large arrays reuse freed memory.

A fresh multi-megabyte ``np.empty`` is a fresh ``mmap`` from glibc, so the
kernel that fills it takes a page fault (and the OS zeroes a page) on every
4 KiB it writes: an allocating ``hwsim.quantize`` of 2^24 float32 ran at
0.05x the copy ceiling against 0.93x into a preallocated ``out=``. ``empty``
hands out large arrays backed by pooled anonymous maps instead: once every
array (and view) on a block is gone, the next ``empty`` of a size that fits
takes the block again, its pages already mapped. Small arrays go to
``np.empty`` as before.

A block is free when nothing but the pool refers to it: every NumPy array on
it (views included) holds a buffer export, hence a reference, to the map.
"""

from __future__ import annotations

import math
import mmap
import sys
import threading

import numpy as np

POOL_MIN_BYTES = 1 << 22  # below this np.empty: few pages, and the pool stays small
POOL_MAX_BLOCKS = 8  # free blocks kept beyond this are unmapped, least recently used first
GRANULE = 1 << 21  # block sizes round up to 2 MiB, so near sizes share blocks

_blocks: list[mmap.mmap] = []  # most recently used last
_lock = threading.Lock()


def empty(shape, dtype) -> np.ndarray:
    """Like ``np.empty(shape, dtype)`` (C order, contents undefined); large
    arrays come from the pool of reused maps."""
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int | np.integer) else tuple(shape)
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if nbytes < POOL_MIN_BYTES:
        return np.empty(shape, dtype=dtype)
    block = _take(nbytes)
    return np.frombuffer(block, dtype=dtype, count=count).reshape(shape)


def _free(i: int) -> bool:
    # two references when free: the pool's list and getrefcount's argument
    return sys.getrefcount(_blocks[i]) == 2


def _take(nbytes: int) -> mmap.mmap:
    size = -(-nbytes // GRANULE) * GRANULE
    with _lock:
        best = None
        for i in range(len(_blocks)):
            if len(_blocks[i]) >= size and _free(i):
                if best is None or len(_blocks[i]) < len(_blocks[best]):
                    best = i
        if best is not None and len(_blocks[best]) <= 2 * size:
            block = _blocks.pop(best)
        else:
            block = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            _trim()
        _blocks.append(block)
        return block


def _trim() -> None:
    """Unmap the least recently used free blocks beyond ``POOL_MAX_BLOCKS - 1``."""
    free = [i for i in range(len(_blocks)) if _free(i)]
    for i in reversed(free[: max(0, len(free) - (POOL_MAX_BLOCKS - 1))]):
        _blocks.pop(i).close()


def pooled_bytes() -> int:
    """Bytes mapped by the pool (blocks in use included)."""
    with _lock:
        return sum(len(b) for b in _blocks)


def release() -> None:
    """Unmap every free block (blocks still in use stay until their arrays die
    and are reused or trimmed later)."""
    with _lock:
        for i in reversed(range(len(_blocks))):
            if _free(i):
                _blocks.pop(i).close()
