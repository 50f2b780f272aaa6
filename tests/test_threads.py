"""``threads_for``: small kernels run on one Numba thread, and the count is restored."""

from __future__ import annotations

import numba

from hwsim.kernels.jit import threads_for


def test_threads_for_runs_small_work_on_one_thread_and_restores():
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    before = numba.get_num_threads()
    with threads_for(10):
        assert numba.get_num_threads() == 1
        with threads_for(10):  # nested: stays at one, restores one
            assert numba.get_num_threads() == 1
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == before
    with threads_for(1 << 30):
        assert numba.get_num_threads() == before
