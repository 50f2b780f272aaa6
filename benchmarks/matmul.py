"""MAC-array GEMM throughput against APyTypes and BLAS. Prints tables of
ratios measured in one run (training epochs: ``benchmarks/train.py``).

    PYTHONPATH=. python benchmarks/matmul.py [--sizes 256 512 1024] [--apy-max 512]

Operands are square int8-range integers (codes -128..127). Rows:

- ``saturate fx24.0, MAC loop``: the sequential MAC loop forced
  (``path="sequential"``), saturation after every add; int8 operands into a
  <= 30-bit accumulator run on int32 lanes (16 per vector);
- ``saturate fx32.0, MAC loop``: the same with a 32-bit accumulator, which
  needs int64 lanes (8 per vector);
- ``saturate fx16.0, auto``: an accumulator that really saturates, so ``auto``
  cannot prove BLAS exact and the MAC loop runs, on int16 lanes (32 per
  vector, the lane's saturating add);
- ``saturate fx32.0, auto``: the operand bound proves no partial sum
  overflows, so float64 BLAS on the codes is exact;
- ``wrap fx32.0``: float64 BLAS then modulo 2^32;
- ``apytypes``: ``a @ b`` under ``APyFixedAccumulatorContext(32, 0, SAT)``;
- ``float32/float64 BLAS``: NumPy matmul on the same values.

A second table times the case quantized layers meet: fractional operands
fx8.6 x fx8.6 (int8-range codes, products on the grid 2^-12) with every
product rounded onto a narrow fx16.8 accumulator's LSB (a right shift by 4
with rounding) before the saturating (or wrapping) add, for each rounding
mode, against APyTypes' accumulator context on the same case (``--apy-modes``
picks the modes it is timed for: about 2 s each at 512).
"""

from __future__ import annotations

import argparse
import os
import sys

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
            times["apytypes accumulator context"] = best_time(
                _apytypes(a, b, 8, 0, 32, 0, "TO_NEG"), repeat=1, budget_s=0
            )
        apy = times.get("apytypes accumulator context")
        for name, t in times.items():
            gmacs = n**3 / t / 1e9
            vs_apy = f"{apy / t:11.1f}" if apy else f"{'-':>11}"
            print(
                f"{n:>5}  {name:<32} {t * 1e3:10.2f} {gmacs:8.2f} {vs_apy} "
                f"{times['float64 BLAS'] / t:10.3f}"
            )
    print()


FRACTIONAL = [
    ("nearest", "saturate"),
    ("floor", "saturate"),
    ("zero", "saturate"),
    ("nearest_away", "saturate"),
    ("stochastic", "saturate"),
    ("nearest", "wrap"),
    ("floor", "wrap"),
    ("stochastic", "wrap"),
]
APY_MODES = {"nearest": "TIES_EVEN", "floor": "TO_NEG", "zero": "TO_ZERO"}


def fractional_table(sizes: list[int], apy_max: int, apy_modes: list[str]) -> None:
    """fx8.6 x fx8.6 into fx16.8: per-product rounding, narrow accumulator."""
    rng = np.random.default_rng(0)
    print(
        "GEMM, fractional operands fx8.6 x fx8.6, each product rounded to the LSB of an "
        "fx16.8 accumulator; GMAC/s and ratios (best of several runs)"
    )
    header = f"{'n':>5}  {'implementation':<36} {'ms':>10} {'GMAC/s':>8} {'x apytypes':>11} {'x float64':>10}"
    print(header)
    print("-" * len(header))
    for n in sizes:
        a = rng.integers(-128, 128, size=(n, n)) / 64.0
        b = rng.integers(-128, 128, size=(n, n)) / 64.0
        rows = {
            f"hwsim {rounding}, {overflow}": _hwsim_fractional(a, b, rounding, overflow)
            for rounding, overflow in FRACTIONAL
        }
        rows["float64 BLAS"] = lambda a=a, b=b: a @ b
        times = {name: best_time(fn, repeat=15, budget_s=3.0) for name, fn in rows.items()}
        apy = {}
        if n <= apy_max:
            for mode in apy_modes:
                t = best_time(_apytypes(a, b, 8, 6, 8, 8, APY_MODES[mode]), repeat=1, budget_s=0)
                apy[mode] = t
                times[f"apytypes {mode}, saturate"] = t
        for name, t in times.items():
            mode = name.split(" ")[1].rstrip(",") if name.startswith("hwsim") else None
            ref = apy.get(mode) if name.endswith("saturate") else None
            vs_apy = f"{ref / t:11.1f}" if ref else f"{'-':>11}"
            print(
                f"{n:>5}  {name:<36} {t * 1e3:10.2f} {n**3 / t / 1e9:8.2f} {vs_apy} "
                f"{times['float64 BLAS'] / t:10.3f}"
            )
    print()


def _hwsim_fractional(a, b, rounding, overflow):
    return lambda: hwsim.matmul(
        a, b, accumulator="fx16.8", rounding=rounding, overflow=overflow, seed=1
    )


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


def _apytypes(a, b, wl, fl, acc_wl, acc_fl, quantization):
    """``a @ b`` under APyTypes' accumulator context: operands fx{wl}.{fl},
    accumulator fx{acc_wl}.{acc_fl} with the given quantization, saturating."""
    import apytypes as apy

    x = apy.APyFixedArray.from_float(a, int_bits=wl - fl, frac_bits=fl)
    y = apy.APyFixedArray.from_float(b, int_bits=wl - fl, frac_bits=fl)

    def run():
        with apy.APyFixedAccumulatorContext(
            int_bits=acc_wl - acc_fl,
            frac_bits=acc_fl,
            quantization=getattr(apy.QuantizationMode, quantization),
            overflow=apy.OverflowMode.SAT,
        ):
            return x @ y

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument(
        "--apy-max",
        type=int,
        default=512,
        help="largest n timed with APyTypes (about 13 s at 1024)",
    )
    parser.add_argument(
        "--apy-modes",
        nargs="*",
        default=list(APY_MODES),
        choices=list(APY_MODES),
        help="roundings timed with APyTypes in the fractional table",
    )
    args = parser.parse_args()
    import numba

    print(f"numba threads: {numba.get_num_threads()}")
    gemm_table(args.sizes, args.apy_max)
    fractional_table(args.sizes, args.apy_max, args.apy_modes)


if __name__ == "__main__":
    main()
