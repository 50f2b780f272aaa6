"""MAC-array GEMM throughput against APyTypes and BLAS, and one quantized
training epoch against float torch. Prints tables of ratios measured in one run.

    PYTHONPATH=. python benchmarks/matmul.py [--sizes 256 512 1024] [--apy-max 512]

Operands are square int8-range integers (codes -128..127). Rows:

- ``saturate fx24.0, MAC loop``: the sequential MAC loop forced
  (``path="sequential"``), saturation after every add; a <= 31-bit
  accumulator with int8 operands runs the int32 kernel (16 lanes per vector);
- ``saturate fx32.0, MAC loop``: the same with a 32-bit accumulator, which
  needs the int64 kernel (8 lanes);
- ``saturate fx16.0, auto``: an accumulator that really saturates, so ``auto``
  cannot prove BLAS exact and the int32 MAC loop runs;
- ``saturate fx32.0, auto``: the operand bound proves no partial sum
  overflows, so float64 BLAS on the codes is exact;
- ``wrap fx32.0``: float64 BLAS then modulo 2^32;
- ``apytypes``: ``a @ b`` under ``APyFixedAccumulatorContext(32, 0, SAT)``;
- ``float32/float64 BLAS``: NumPy matmul on the same values.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import hwsim

sys.path.insert(0, os.path.dirname(__file__))
from _timing import best_time  # noqa: E402


def gemm_table(sizes: list[int], apy_max: int) -> None:
    rng = np.random.default_rng(0)
    print("GEMM, square int8-range operands; GMAC/s and ratios (higher is faster)")
    header = f"{'n':>5}  {'implementation':<32} {'ms':>10} {'GMAC/s':>8} {'x apytypes':>11} {'x float64':>10}"
    print(header)
    print("-" * len(header))
    for n in sizes:
        a = rng.integers(-128, 128, size=(n, n)).astype(np.float64)
        b = rng.integers(-128, 128, size=(n, n)).astype(np.float64)
        rows = _contenders(a, b)
        times = {name: best_time(fn, repeat=5, budget_s=5.0) for name, fn in rows.items()}
        if n <= apy_max:
            times["apytypes accumulator context"] = best_time(_apytypes(a, b), repeat=1, budget_s=0)
        apy = times.get("apytypes accumulator context")
        for name, t in times.items():
            gmacs = n**3 / t / 1e9
            vs_apy = f"{apy / t:11.1f}" if apy else f"{'-':>11}"
            print(
                f"{n:>5}  {name:<32} {t * 1e3:10.2f} {gmacs:8.2f} {vs_apy} "
                f"{times['float64 BLAS'] / t:10.3f}"
            )
    print()


def _contenders(a, b):
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    return {
        "hwsim saturate fx24.0, MAC loop": lambda: hwsim.matmul(
            a, b, accumulator="fx24.0", path="sequential"
        ),
        "hwsim saturate fx32.0, MAC loop": lambda: hwsim.matmul(
            a, b, accumulator="fx32.0", path="sequential"
        ),
        "hwsim saturate fx16.0, auto": lambda: hwsim.matmul(a, b, accumulator="fx16.0"),
        "hwsim saturate fx32.0, auto": lambda: hwsim.matmul(a, b, accumulator="fx32.0"),
        "hwsim wrap fx32.0": lambda: hwsim.matmul(a, b, accumulator="fx32.0", overflow="wrap"),
        "float32 BLAS": lambda: a32 @ b32,
        "float64 BLAS": lambda: a @ b,
    }


def _apytypes(a, b):
    import apytypes as apy

    x = apy.APyFixedArray.from_float(a, int_bits=8, frac_bits=0)
    y = apy.APyFixedArray.from_float(b, int_bits=8, frac_bits=0)

    def run():
        with apy.APyFixedAccumulatorContext(
            int_bits=32,
            frac_bits=0,
            quantization=apy.QuantizationMode.TO_NEG,
            overflow=apy.OverflowMode.SAT,
        ):
            return x @ y

    return run


def mlp_epoch() -> None:
    import torch
    from sklearn.datasets import load_digits
    from torch import nn

    import hwsim.nn as hnn

    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    precision = hnn.Precision(
        weight="fx16.12",
        activation="fx16.12",
        output="fx16.10",
        grad_activation="fx16.14",
        grad_weight="fx16.14",
        accumulator="fx32.20",
        grad_activation_accumulator="fx32.24",
        grad_weight_accumulator="fx32.24",
        rounding="nearest",
        grad_weight_rounding="stochastic",
        grad_activation_rounding="stochastic",
        seed=0,
    )

    def epoch(model) -> float:
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        start = time.perf_counter()
        for i in range(0, len(x), 32):
            idx = perm[i : i + 32]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        return time.perf_counter() - start

    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(64, 100), nn.ReLU(), nn.Linear(100, 10))

    results = {}
    for name, build in (
        ("float torch", make),
        (
            "hwsim numba backend, all quantized",
            lambda: hnn.quantize_model(make(), precision, backend="numba"),
        ),
        (
            "hwsim torch backend, all quantized",
            lambda: hnn.quantize_model(make(), precision, backend="torch"),
        ),
    ):
        epoch(build())  # warm up (JIT compile)
        results[name] = min(epoch(build()) for _ in range(2))
    print(f"One epoch, 64-100-10 MLP on sklearn digits ({len(x)} samples, batch 32, SGD)")
    print(f"{'model':<38} {'s/epoch':>9} {'x float':>8}")
    for name, t in results.items():
        print(f"{name:<38} {t:9.3f} {t / results['float torch']:8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument(
        "--apy-max",
        type=int,
        default=512,
        help="largest n timed with APyTypes (about 13 s at 1024)",
    )
    args = parser.parse_args()
    import numba

    print(f"numba threads: {numba.get_num_threads()}")
    gemm_table(args.sizes, args.apy_max)
    mlp_epoch()


if __name__ == "__main__":
    main()
