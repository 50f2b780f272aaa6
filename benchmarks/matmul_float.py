"""Float MAC-array GEMM (a FloatingPoint accumulator) against APyTypes'
``APyFloatAccumulatorContext`` and float64 BLAS. Prints one table measured in
one run (interleaved rounds, so load on a shared machine hits every row alike).

    PYTHONPATH=. python benchmarks/matmul_float.py [--n 128] [--rounds 3]

Operands: n x n bf16 values (standard normal, quantized). Rows: hwsim's Numba
kernel and torch path (CPU) with an fp32, an fp16 and a bf16 accumulator
(nearest), the fp16 one with a bf16 product format and with stochastic
rounding, APyTypes on the fp16 case, and NumPy's float64 matmul (no rounding
at all: the ceiling a float MAC array emulation is measured against).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _timing import interleaved_best

import hwsim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = args.n
    rng = np.random.default_rng(0)
    a = hwsim.quantize(rng.standard_normal((n, n)), "bf16")
    b = hwsim.quantize(rng.standard_normal((n, n)), "bf16")
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    rows = {
        "hwsim numba, fp32 acc": lambda: hwsim.matmul(a, b, accumulator="fp32"),
        "hwsim numba, fp16 acc": lambda: hwsim.matmul(a, b, accumulator="fp16"),
        "hwsim numba, bf16 acc": lambda: hwsim.matmul(a, b, accumulator="bf16"),
        "hwsim numba, fp16 acc, bf16 product": lambda: hwsim.matmul(
            a, b, accumulator="fp16", product="bf16"
        ),
        "hwsim numba, fp16 acc, stochastic": lambda: hwsim.matmul(
            a, b, accumulator="fp16", rounding="stochastic", seed=1
        ),
        "hwsim torch (CPU), fp16 acc": lambda: hwsim.matmul(ta, tb, accumulator="fp16"),
        "float64 BLAS (no rounding)": lambda: a @ b,
    }
    try:
        import apytypes as apy

        fa = apy.APyFloatArray.from_float(a, 8, 7)
        fb = apy.APyFloatArray.from_float(b, 8, 7)

        def apy_fp16():
            with apy.APyFloatAccumulatorContext(
                exp_bits=5, man_bits=10, quantization=apy.QuantizationMode.TIES_EVEN
            ):
                return fa @ fb

        rows["APyTypes accumulator context, fp16 acc"] = apy_fp16
        ours = hwsim.matmul(a, b, accumulator="fp16")
        assert np.array_equal(ours, apy_fp16().to_numpy()), "hwsim and APyTypes disagree"
    except ImportError:
        pass
    best = interleaved_best(rows, rounds=args.rounds)
    apy_s = best.get("APyTypes accumulator context, fp16 acc")
    print(f"n = {n} (bf16 operands), {n**3 / 1e6:.2f} M MACs per call")
    print("| method | ms | M MAC/s | x APyTypes |")
    print("|---|---|---|---|")
    for name, s in best.items():
        ratio = f"{apy_s / s:.1f}" if apy_s else "-"
        print(f"| {name} | {s * 1e3:.2f} | {n**3 / s / 1e6:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
