"""Quantization throughput: hwsim (Numba, torch) vs a copy ceiling, qtorch, APyTypes.

    python benchmarks/quantize.py [--log2n 24] [--floats-only] [--blocks-only]

Float formats (bf16, fp8_e4m3, fp4_e2m1) get their own table: hwsim vs
qtorch's float_quantize, ml_dtypes' astype and torch's cast. Block formats
(mxfp8_e4m3, bfp8 with blocks of 32 and per tensor) get a third: hwsim vs
qtorch's block_quantize (blocks of 32 as one exponent per row of a (n/32, 32)
view, dim=0) and gfloat's quantize_block (per block in Python: timed on a
slice, its rate is per element either way).

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
    ap.add_argument("--floats-only", action="store_true", help="only the float-format table")
    ap.add_argument("--blocks-only", action="store_true", help="only the block-format table")
    args = ap.parse_args()
    if args.floats_only:
        float_rows(args.log2n, args.repeat)
        return
    if args.blocks_only:
        block_rows(args.log2n, args.repeat)
        return
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

    float_rows(args.log2n, args.repeat)
    block_rows(args.log2n, args.repeat)


FLOAT_CASES = {  # hwsim name -> (exp, man, ml_dtypes name, torch dtype name)
    "bf16": (8, 7, "bfloat16", "bfloat16"),
    "fp8_e4m3": (4, 3, "float8_e4m3fn", "float8_e4m3fn"),
    "fp4_e2m1": (2, 1, "float4_e2m1fn", None),
}


def float_rows(log2n: int, repeat: int) -> None:
    """Float formats: hwsim (Numba on the IEEE bits, writing float32; torch ops)
    against qtorch.float_quantize (float32 out; ties away and no Inf, so not
    the same rounding), ml_dtypes astype and torch's cast (narrow output, fewer
    bytes written). Ratios are against the copy and against qtorch nearest."""
    n = 1 << log2n
    x = (np.random.default_rng(0).standard_normal(n) * 4).astype(np.float32)
    out = np.empty_like(x)
    xt = torch.from_numpy(x)
    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover
        ml_dtypes = None
    try:
        from qtorch.quant import float_quantize
    except Exception as e:  # noqa: BLE001
        float_quantize = None
        print(f"qtorch unavailable: {e}")
    fns = {"numba copy (bandwidth ceiling)": lambda: copy_kernel(x, out)}
    for name, (exp, man, md, td) in FLOAT_CASES.items():
        fns[f"{name}: hwsim numba nearest (out=)"] = lambda f=name: hwsim.quantize(x, f, out=out)
        fns[f"{name}: hwsim numba stochastic (out=)"] = lambda f=name: hwsim.quantize(
            x, f, "stochastic", seed=1, out=out
        )
        fns[f"{name}: hwsim torch nearest"] = lambda f=name: hwsim.quantize(xt, f)
        if float_quantize is not None:
            fns[f"{name}: qtorch float_quantize nearest"] = lambda e=exp, m=man: float_quantize(
                xt, e, m, "nearest"
            )
            fns[f"{name}: qtorch float_quantize stochastic"] = lambda e=exp, m=man: float_quantize(
                xt, e, m, "stochastic"
            )
        if ml_dtypes is not None:
            md_type = getattr(ml_dtypes, md)
            fns[f"{name}: ml_dtypes astype"] = lambda t=md_type: x.astype(t)
        if td is not None:
            torch_type = getattr(torch, td)
            fns[f"{name}: torch cast .to({td})"] = lambda t=torch_type: xt.to(t)
    times = interleaved_best(fns, rounds=repeat)
    copy_t = times["numba copy (bandwidth ceiling)"]
    table = []
    for label, t in times.items():
        fmt = label.split(":")[0]
        q = times.get(f"{fmt}: qtorch float_quantize nearest")
        table.append([label, t * 1e3, n / t / 1e6, copy_t / t, (q / t) if q else "-"])
    print(
        f"\nfloat formats, {n} float32 elements, {torch.get_num_threads()} torch threads, "
        f"numba threads {os.environ.get('NUMBA_NUM_THREADS', 'default')}, best of {repeat}\n"
    )
    print_table(["method", "ms", "Melem/s", "x copy", "x qtorch nearest"], table)


def block_rows(log2n: int, repeat: int) -> None:
    """Block formats: hwsim (Numba, writing float32; torch ops) against
    qtorch.block_quantize (float32 out; ties half up, symmetric clip: see
    tests/test_peers_block.py) and gfloat.quantize_block (MX, one block per
    Python call). Ratios are against the copy and against qtorch nearest."""
    n = 1 << log2n
    x = (np.random.default_rng(0).standard_normal(n) * 4).astype(np.float32)
    out = np.empty_like(x)
    xt = torch.from_numpy(x)
    rows32 = xt.view(-1, 32)  # one qtorch exponent per row: blocks of 32
    try:
        from qtorch.quant import block_quantize
    except Exception as e:  # noqa: BLE001
        block_quantize = None
        print(f"qtorch unavailable: {e}")
    fns = {"numba copy (bandwidth ceiling)": lambda: copy_kernel(x, out)}
    for name in ("mxfp8_e4m3", "bfp8_b32", "bfp8"):
        fns[f"{name}: hwsim numba nearest (out=)"] = lambda f=name: hwsim.quantize(x, f, out=out)
        fns[f"{name}: hwsim numba stochastic (out=)"] = lambda f=name: hwsim.quantize(
            x, f, "stochastic", seed=1, out=out
        )
        fns[f"{name}: hwsim torch nearest"] = lambda f=name: hwsim.quantize(xt, f)
        fns[f"{name}: hwsim torch stochastic"] = lambda f=name: hwsim.quantize(
            xt, f, "stochastic", seed=1
        )
    if block_quantize is not None:
        for mode in ("nearest", "stochastic"):
            fns[f"bfp8_b32: qtorch block_quantize {mode}"] = lambda m=mode: block_quantize(
                rows32, 8, dim=0, rounding=m
            )
            fns[f"bfp8: qtorch block_quantize {mode}"] = lambda m=mode: block_quantize(
                xt, 8, dim=-1, rounding=m
            )
    times = interleaved_best(fns, rounds=repeat)
    rates = {label: n / t for label, t in times.items()}
    try:
        import gfloat
        from gfloat.formats import format_info_mxfp8_e4m3

        m = min(n, 1 << 12)
        blocks = x[:m].astype(np.float64).reshape(-1, 32)
        t = best_time(
            lambda: [
                gfloat.quantize_block(format_info_mxfp8_e4m3, b, gfloat.compute_scale_amax)
                for b in blocks
            ],
            repeat=3,
        )
        times[f"mxfp8_e4m3: gfloat quantize_block ({m} elements)"] = t
        rates[f"mxfp8_e4m3: gfloat quantize_block ({m} elements)"] = m / t
    except Exception as e:  # noqa: BLE001
        print(f"gfloat unavailable: {e}")
    copy_rate = rates["numba copy (bandwidth ceiling)"]
    table = []
    for label, t in times.items():
        fmt = label.split(":")[0]
        q = rates.get(f"{fmt}: qtorch block_quantize nearest") or rates.get(
            "bfp8_b32: qtorch block_quantize nearest"
        )
        rate = rates[label]
        table.append([label, t * 1e3, rate / 1e6, rate / copy_rate, (rate / q) if q else "-"])
    print(
        f"\nblock formats, {n} float32 elements, {torch.get_num_threads()} torch threads, "
        f"numba threads {os.environ.get('NUMBA_NUM_THREADS', 'default')}, best of {repeat}; "
        f"mxfp8_e4m3 is compared with qtorch's bfp8 blocks of 32 (qtorch has no MX)\n"
    )
    print_table(["method", "ms", "Melem/s", "x copy", "x qtorch nearest (same blocks)"], table)


if __name__ == "__main__":
    main()
