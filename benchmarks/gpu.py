"""The torch path on a CUDA device: quantize, the MAC-array GEMM and the
optimizer step, against torch's own ops on the same device, in one run.

    PYTHONPATH=. python benchmarks/gpu.py [--elements 67108864] [--gemm 1024] [--params 16777216]

Needs a CUDA device (exits with a message without one). Times are CUDA-event
medians of ``--repeat`` calls after warm-up. Rows:

- ``quantize``: ``hwsim.quantize`` of ``--elements`` float32 values that
  round (normal * 0.3) to fx8.6 (nearest, stochastic), bf16, fp8_e4m3 and
  fp4_e2m1 (nearest), against a device-to-device copy (``clone``: the memory
  ceiling) and, for bf16 and fp8, torch's own cast there and back;
- ``matmul``: ``hwsim.matmul`` of ``--gemm``^3 fx8.6 x fx8.6 codes into a
  saturating fx16.8 accumulator (each product rounded to its LSB: the
  sequential MAC loop over k), and with a wrapping fx32.12 accumulator,
  against float32 ``torch.matmul`` (GMAC/s);
- ``optimizer``: every ``hwsim.optim`` rule with every format None (torch's
  own step) and in fixed point on the torch ops (what a GPU runs: weight
  fx16.12, accumulator fx24.20, gradient fx16.12, states fx24.20 / ufx32.30,
  nearest and stochastic), against torch.optim's step on the same
  ``--params`` parameters.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import hwsim  # noqa: E402
import hwsim.optim as hopt  # noqa: E402

FIXED = dict(weight="fx16.12", accumulator="fx24.20", grad="fx16.12")
ADAM_STATE = {"exp_avg": "fx24.20", "exp_avg_sq": "ufx32.30"}


def timed(fn, repeat: int) -> float:
    """Median milliseconds of ``fn()`` over ``repeat`` calls (CUDA events)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def quantize_rows(n: int, repeat: int) -> list[tuple]:
    x = torch.randn(n, device="cuda") * 0.3
    copy = timed(lambda: x.clone(), repeat)
    rows = [("copy (clone)", copy, 1.0, "")]
    casts = {"bf16": torch.bfloat16, "fp8_e4m3": torch.float8_e4m3fn}
    for fmt, rounding in [
        ("fx8.6", "nearest"),
        ("fx8.6", "stochastic"),
        ("bf16", "nearest"),
        ("fp8_e4m3", "nearest"),
        ("fp4_e2m1", "nearest"),
    ]:
        ms = timed(lambda f=fmt, r=rounding: hwsim.quantize(x, f, r, seed=0), repeat)
        ref = ""
        if fmt in casts and rounding == "nearest":
            dtype = casts[fmt]
            torch_ms = timed(lambda d=dtype: x.to(d).float(), repeat)
            ref = f"torch cast {torch_ms:.3f} ms ({ms / torch_ms:.2f}x)"
        rows.append((f"quantize {fmt} {rounding}", ms, ms / copy, ref))
    return rows


def matmul_rows(size: int, repeat: int) -> list[tuple]:
    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randint(-128, 128, (size, size), device="cuda", generator=g).float() / 64
    b = torch.randint(-128, 128, (size, size), device="cuda", generator=g).float() / 64
    macs = size**3
    float_ms = timed(lambda: a @ b, repeat)
    rows = [(f"matmul float32 {size}^3", float_ms, 1.0, f"{macs / float_ms / 1e6:.1f} GMAC/s")]
    for acc, overflow in [("fx16.8", "saturate"), ("fx32.12", "wrap")]:
        ms = timed(
            lambda c=acc, o=overflow: hwsim.matmul(
                a, b, accumulator=c, a_format="fx8.6", b_format="fx8.6", overflow=o
            ),
            max(3, repeat // 4),
        )
        rows.append(
            (
                f"matmul fx8.6 -> {acc} {overflow}",
                ms,
                ms / float_ms,
                f"{macs / ms / 1e6:.1f} GMAC/s",
            )
        )
    return rows


def optimizer_rows(n: int, repeat: int) -> list[tuple]:
    def params():
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(n, device="cuda") * 0.1)
        p.grad = torch.randn_like(p) * 1e-2
        return [p]

    rows = []
    cases = {
        "SGD": (torch.optim.SGD, hopt.SGD, dict(lr=0.01), None),
        "SGD momentum": (torch.optim.SGD, hopt.SGD, dict(lr=0.01, momentum=0.9), "fx24.20"),
        "Adam": (torch.optim.Adam, hopt.Adam, dict(lr=1e-3), ADAM_STATE),
        "AdaGrad": (torch.optim.Adagrad, hopt.AdaGrad, dict(lr=1e-2), "ufx32.30"),
        "RMSProp": (torch.optim.RMSprop, hopt.RMSProp, dict(lr=1e-2), "ufx32.30"),
    }
    for name, (torch_cls, cls, hyper, state) in cases.items():
        base = torch_cls(params(), **hyper)
        torch_ms = timed(base.step, repeat)
        rows.append((f"torch {name}", torch_ms, 1.0, ""))
        ms = timed(cls(params(), **hyper, telemetry=False).step, repeat)
        rows.append((f"hwsim {name} float (torch.optim's step)", ms, ms / torch_ms, ""))
        for rounding in ("nearest", "stochastic"):
            extra = {} if state is None else dict(state=state)
            opt = cls(params(), **hyper, **FIXED, **extra, rounding=rounding, telemetry=False)
            ms = timed(opt.step, repeat)
            rows.append((f"hwsim {name} fixed {rounding} (torch ops)", ms, ms / torch_ms, ""))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--elements", type=int, default=1 << 26)
    parser.add_argument("--gemm", type=int, default=1024)
    parser.add_argument("--params", type=int, default=1 << 24)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA device: torch.cuda.is_available() is False")
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, hwsim {hwsim.__version__}")
    print("| what | ms | ratio | note |")
    print("|---|---|---|---|")
    sections = [
        (quantize_rows, args.elements),
        (matmul_rows, args.gemm),
        (optimizer_rows, args.params),
    ]
    for rows, size in sections:
        for what, ms, ratio, note in rows(size, args.repeat):
            print(f"| {what} | {ms:.3f} | {ratio:.2f} | {note} |", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
