"""Fixed-point LMS throughput: the Numba kernel against a NumPy per-sample loop
and against the torch version, in tap-updates per second (one tap-update = one
tap's multiply-accumulate in the filter plus its weight update).

    python benchmarks/lms.py            # the kernel table (~1 min)
    python benchmarks/lms.py --study    # + lms_precision wall time, 1 and 2 workers

The Numba kernel is serial (one sample after another, as the hardware does),
so it runs on one core; target >= 50 M tap-updates/s. Every contender is
warmed up (JIT compiled) before timing; the best of ``--repeat`` runs counts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # models/
sys.path.insert(0, os.path.dirname(__file__))
from _timing import best_time  # noqa: E402

from hwsim import FixedPoint  # noqa: E402
from models.datasets import system_identification  # noqa: E402
from models.lms import FixedLMS, FloatLMS, TorchLMS  # noqa: E402

DATA, WEIGHT = FixedPoint(16, 12), FixedPoint(16, 14)


def numpy_per_sample(x: np.ndarray, d: np.ndarray, taps: int, mu: float) -> np.ndarray:
    """What one writes without a kernel: a Python loop over samples, NumPy
    vectorized over the taps, the weight update rounded to nearest onto the
    weight grid and saturated (float64 emulation)."""
    scale = 2.0**WEIGHT.fl
    lo, hi = WEIGHT.min_code, WEIGHT.max_code
    w = np.zeros(taps)
    xp = np.concatenate([np.zeros(taps - 1), x])
    for n in range(x.size):
        xs = xp[n : n + taps][::-1]
        e = d[n] - w @ xs
        w = np.clip(np.rint((w + mu * e * xs) * scale), lo, hi) / scale
    return w


def kernel_table(taps: int, repeat: int) -> list[tuple[str, float]]:
    big = system_identification(400_000, taps, snr_db=40.0, seed=0)
    mu = 0.005
    rows = []

    def fixed(rounding: str, n: int, cls=FixedLMS):
        filt = cls(taps, "lms", data=DATA, weight=WEIGHT, rounding=rounding, seed=1)
        xc = filt.data_codes(big.x[:n], 1, 0)
        dc = filt.data_codes(big.d[:n], 2, 0)
        filt.run_codes(xc[:16], dc[:16], mu)  # warm-up / JIT
        return lambda: cls(
            taps, "lms", data=DATA, weight=WEIGHT, rounding=rounding, seed=1
        ).run_codes(xc, dc, mu)

    n = big.x.size
    for rounding in ("nearest", "stochastic"):
        rows.append(
            (
                f"Numba kernel, fixed point, {rounding}",
                taps * n / best_time(warmup=0, repeat=repeat, fn=fixed(rounding, n)),
            )
        )
    flt = FloatLMS(taps)
    flt.run(big.x[:16], big.d[:16], mu)
    rows.append(
        (
            "Numba kernel, float64 (reference)",
            taps
            * n
            / best_time(warmup=0, repeat=repeat, fn=lambda: FloatLMS(taps).run(big.x, big.d, mu)),
        )
    )
    n_np = 20_000
    rows.append(
        (
            "NumPy per-sample loop, float64 emulation, nearest",
            taps
            * n_np
            / best_time(
                warmup=0,
                repeat=1,
                fn=lambda: numpy_per_sample(big.x[:n_np], big.d[:n_np], taps, mu),
            ),
        )
    )
    n_t = 2_000
    for rounding in ("nearest", "stochastic"):
        rows.append(
            (
                f"torch version (TorchLMS, CPU), {rounding}",
                taps * n_t / best_time(warmup=0, repeat=1, fn=fixed(rounding, n_t, TorchLMS)),
            )
        )
    return rows


def study_times() -> list[tuple[str, float]]:
    rows = []
    for workers in (1, 2):
        out = tempfile.mkdtemp(prefix="lms_precision_")
        try:
            t = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "hwsim.cli",
                    "sweep",
                    "studies/lms_precision.toml",
                    "--out",
                    out,
                    "--workers",
                    str(workers),
                ],
                check=True,
                env=dict(os.environ, PYTHONPATH="."),
            )
            rows.append((f"lms_precision study, {workers} worker(s)", time.perf_counter() - t))
        finally:
            shutil.rmtree(out, ignore_errors=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--taps", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--study", action="store_true", help="also time the lms_precision study")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = kernel_table(args.taps, args.repeat)
    base = rows[0][1]
    print(f"\nFixed-point LMS, {args.taps} taps, data {DATA}, weight {WEIGHT} (one core)\n")
    print(f"{'implementation':<52} {'M tap-updates/s':>16} {'kernel is x faster':>19}")
    for name, rate in rows:
        print(f"{name:<52} {rate / 1e6:>16.2f} {base / rate:>19.1f}")
    print(f"\ntarget >= 50 M tap-updates/s: {'met' if base >= 50e6 else 'NOT met'}")
    if args.study:
        print()
        for name, seconds in study_times():
            print(f"{name:<52} {seconds:>10.1f} s")


if __name__ == "__main__":
    main()
