"""Quantization throughput: hwsim (Numba, torch) vs a copy ceiling, qtorch, APyTypes.

    python benchmarks/quantize.py [--log2n 24]

All rows are measured in this one run on the same float32 array (APyTypes on a
smaller slice: it is far slower; its throughput is per element either way).
The first-call JIT cost (cold cache, then warm cache) is measured in fresh
subprocesses.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _timing import best_time, interleaved_best, print_table  # noqa: E402

import hwsim  # noqa: E402
from hwsim.kernels.quantize import copy_kernel  # noqa: E402

FMT = hwsim.FixedPoint(16, 12)


def jit_cost() -> tuple[float, float]:
    code = (
        "import time, numpy as np, hwsim; x = np.ones(1000, np.float32); t = time.perf_counter(); "
        "hwsim.quantize(x, 'fx16.12'); print(time.perf_counter() - t)"
    )
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        cold = float(
            subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
            ).stdout
        )
        warm = float(
            subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
            ).stdout
        )
    return cold, warm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--log2n", type=int, default=24)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    n = 1 << args.log2n
    x = (np.random.default_rng(0).standard_normal(n) * 4).astype(np.float32)
    out = np.empty_like(x)
    xt = torch.from_numpy(x)
    # the contenders over the full array, timed in interleaved rounds so that
    # load on a shared machine hits them alike
    full = {
        "numba copy (bandwidth ceiling)": lambda: copy_kernel(x, out),
        "hwsim numba nearest (out=)": lambda: hwsim.quantize(x, FMT, "nearest", out=out),
        "hwsim numba nearest (allocating)": lambda: hwsim.quantize(x, FMT, "nearest"),
        "hwsim numba stochastic (out=)": lambda: hwsim.quantize(
            x, FMT, "stochastic", seed=1, out=out
        ),
        "hwsim numba nearest, wrap (out=)": lambda: hwsim.quantize(
            x, FMT, "nearest", "wrap", out=out
        ),
        "hwsim torch nearest": lambda: hwsim.quantize(xt, FMT, "nearest"),
        "hwsim torch stochastic": lambda: hwsim.quantize(xt, FMT, "stochastic", seed=1),
    }
    try:
        from qtorch.quant import fixed_point_quantize

        full["qtorch fixed_point_quantize nearest"] = lambda: fixed_point_quantize(
            xt, 16, 12, rounding="nearest"
        )
        full["qtorch fixed_point_quantize stochastic"] = lambda: fixed_point_quantize(
            xt, 16, 12, rounding="stochastic"
        )
    except Exception as e:  # noqa: BLE001
        print(f"qtorch unavailable: {e}")
    times = interleaved_best(full, rounds=args.repeat)
    rows = [[name, t * 1e3, n / t / 1e6] for name, t in times.items()]
    try:
        import apytypes as apy

        m = min(n, 1 << 20)
        src = apy.APyFixedArray.from_float(x[:m].astype(np.float64), int_bits=8, frac_bits=24)
        t = best_time(
            lambda: src.cast(4, 12, apy.QuantizationMode.RND_CONV, apy.OverflowMode.SAT), repeat=3
        )
        rows.append([f"APyTypes cast RND_CONV/SAT ({m} elements)", t * 1e3, m / t / 1e6])
    except Exception as e:  # noqa: BLE001
        print(f"apytypes unavailable: {e}")

    copy_rate = rows[0][2]
    qtorch_rate = next(
        (r[2] for r in rows if r[0].startswith("qtorch fixed_point_quantize nearest")), None
    )
    table = []
    for name, ms, rate in rows:
        table.append(
            [name, ms, rate, rate / copy_rate, (rate / qtorch_rate) if qtorch_rate else "-"]
        )
    print(
        f"\nquantize to {FMT}, {n} float32 elements, {torch.get_num_threads()} torch threads, "
        f"numba threads {os.environ.get('NUMBA_NUM_THREADS', 'default')}\n"
    )
    print_table(["method", "ms", "Melem/s", "x copy", "x qtorch nearest"], table)
    cold, warm = jit_cost()
    print(
        f"\nfirst call of hwsim.quantize in a fresh process: {cold:.2f} s with a cold Numba cache "
        f"(JIT compile), {warm:.2f} s with the cache written"
    )


if __name__ == "__main__":
    main()
