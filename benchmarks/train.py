"""One epoch of quantized training against float torch, on sklearn digits.
Prints a table of ratios measured in one run (rounds interleaved, best of each).

    PYTHONPATH=. python benchmarks/train.py [--rounds 3] [--models mlp cnn] [--breakdown]

Models: the 64-100-10 MLP and a LeNet-style CNN (``models.nets.LeNet`` on the
1x8x8 digits: conv5x5(6) -> pool -> conv5x5(16) -> pool -> 120 -> 84 -> 10),
batch 32, plain ``torch.optim.SGD``. "All quantized": every weight,
activation, output and gradient on a fixed-point grid, and the forward and
both backward GEMMs through MAC arrays with saturating accumulators (nearest
rounding forward, stochastic rounding of the gradients), on the numba backend
(Numba kernels, CPU) and the torch backend (torch ops, CPU).

``--breakdown``: instead, where a training step of each backend goes: the
fused layers' steps (``hwsim.nn.fused`` / ``fused_torch``: GEMMs, finishing
passes, operand passes, bias codes) timed by wrappers in the training loop
(each wrapper adds about a microsecond), and torch's own optimizer step on
the float and on the quantized model (after a quantized backward it starts
on caches the quantized step evicted).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import hwsim.nn as hnn  # noqa: E402

PRECISION = hnn.Precision(
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


def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    return x, torch.tensor(data.target)


def build(kind: str) -> torch.nn.Module:
    from models.nets import LeNet

    torch.manual_seed(0)
    if kind == "mlp":
        nn = torch.nn
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 100), nn.ReLU(), nn.Linear(100, 10))
    return LeNet((1, 8, 8), 10)


def epoch_fn(kind: str, backend: str | None, x, y, batch: int = 32):
    """A function that trains a fresh model for one epoch and returns nothing."""

    def run():
        model = build(kind)
        if backend is not None:
            model = hnn.quantize_model(model, PRECISION, backend=backend)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        for i in range(0, len(x), batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    parser.add_argument("--backends", nargs="+", default=["numba", "torch"])
    parser.add_argument("--breakdown", action="store_true", help="time the pieces of a step")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch and Numba threads for every row (1: on a shared 2-core machine two "
        "OpenMP threads wait on each other at every op, float torch included)",
    )
    args = parser.parse_args()
    import numba
    import scipy.linalg  # noqa: F401  SciPy's BLAS (Numba's np.dot): loaded, so the limit reaches it
    from threadpoolctl import threadpool_limits

    numba.set_num_threads(args.threads)  # launches Numba's pool first: it resets OpenMP's count
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)  # NumPy's and SciPy's OpenBLAS too
    x, y = digits()
    print(
        f"torch threads: {torch.get_num_threads()}, numba threads: {numba.get_num_threads()}, "
        f"load average: {os.getloadavg()[0]:.2f}"
    )
    names = {"mlp": "64-100-10 MLP", "cnn": "LeNet-style CNN"}
    if args.breakdown:
        for kind in args.models:
            for backend in args.backends:
                breakdown(f"{names[kind]}, {backend} backend", kind, backend, x, y, args.rounds)
        return
    for kind in args.models:
        fns = {"float torch": epoch_fn(kind, None, x, y)}
        for backend in args.backends:
            fns[f"hwsim {backend} backend, all quantized"] = epoch_fn(kind, backend, x, y)
        start = time.perf_counter()
        wall, cpu = interleaved(fns, args.rounds)
        print(
            f"\nOne epoch, {names[kind]} on sklearn digits ({len(x)} samples, batch 32, SGD); "
            f"best of {args.rounds} interleaved rounds ({time.perf_counter() - start:.0f} s)"
        )
        print(f"{'model':<38} {'s/epoch':>9} {'x float':>8} {'cpu s':>8} {'x float':>8}")
        w0, c0 = wall["float torch"], cpu["float torch"]
        for name in fns:
            print(
                f"{name:<38} {wall[name]:9.4f} {wall[name] / w0:8.2f} "
                f"{cpu[name]:8.4f} {cpu[name] / c0:8.2f}"
            )


PIECES = {  # the fused layers' steps: (where, name) -> label; "steps" is hwsim.nn.fused
    # (numba backend) or hwsim.nn.fused_torch (torch backend), same names
    ("steps", "gemm"): "linear GEMM (MAC array)",
    ("fused_mac", "_conv"): "conv forward (implicit or im2col MAC array)",
    ("fused_mac", "_grad_input"): "conv input-gradient GEMM",
    ("fused_mac", "_grad_weight"): "conv weight(+bias)-gradient GEMM",
    ("fused_mac", "code_columns"): "conv columns formed in the backward pass",
    ("fused_mac", "_mac"): "conv bias-gradient GEMM (stochastic MAC rounding only)",
    ("steps", "finish"): "finishing pass (accumulator codes to the output)",
    ("steps", "finish_split"): "finishing pass of a weight-and-bias GEMM (both)",
    ("steps", "codes"): "operand pass (a tensor to its MAC codes)",
    ("steps", "bias_codes"): "bias codes",
}


def breakdown(title: str, kind: str, backend: str, x, y, rounds: int) -> None:
    """Per training step: calls and time of each piece of :data:`PIECES`
    and of torch's optimizer step, over ``rounds`` epochs after a warm-up
    one; the optimizer step also on the float model, for comparison."""
    from torch.optim.optimizer import (
        register_optimizer_step_post_hook,
        register_optimizer_step_pre_hook,
    )

    from hwsim.nn import fused, fused_mac, fused_torch

    modules = {"steps": fused if backend == "numba" else fused_torch, "fused_mac": fused_mac}
    spent = {key: [0.0, 0] for key in (*PIECES, "optimizer")}
    real = {(where, name): getattr(modules[where], name) for where, name in PIECES}

    def timed(key, fn):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[key][0] += time.perf_counter() - t0
                spent[key][1] += 1

        return run

    began = []

    def before(*_):
        began.append(time.perf_counter())

    def after(*_):
        spent["optimizer"][0] += time.perf_counter() - began.pop()

    pre = register_optimizer_step_pre_hook(before)
    post = register_optimizer_step_post_hook(after)
    try:
        float_epoch, quantized_epoch = epoch_fn(kind, None, x, y), epoch_fn(kind, backend, x, y)
        float_epoch()
        quantized_epoch()  # warm-up: JIT, caches
        spent["optimizer"][0] = 0.0
        for _ in range(rounds):
            float_epoch()
        float_step = spent["optimizer"][0] / rounds
        for key, fn in real.items():
            setattr(modules[key[0]], key[1], timed(key, fn))
        spent["optimizer"][0] = 0.0
        t0 = time.perf_counter()
        for _ in range(rounds):
            quantized_epoch()
        epoch = (time.perf_counter() - t0) / rounds
    finally:
        pre.remove()
        post.remove()
        for (where, name), fn in real.items():
            setattr(modules[where], name, fn)
    steps = rounds * -(-len(x) // 32)
    print(f"\n{title}: {epoch * 1e3:.1f} ms per epoch with the wrappers, {rounds} epochs")
    print(f"{'piece':<62} {'calls/step':>10} {'us/call':>8} {'us/step':>8} {'share':>6}")
    for key, label in PIECES.items():
        sec, calls = spent[key]
        if calls:
            print(
                f"{label:<62} {calls / steps:10.1f} {sec / calls * 1e6:8.1f} "
                f"{sec / steps * 1e6:8.1f} {sec / rounds / epoch:6.1%}"
            )
    opt = spent["optimizer"][0] / steps * 1e6
    print(f"{'torch.optim.SGD step, quantized model':<62} {1:10.1f} {opt:8.1f} {opt:8.1f}")
    opt = float_step * rounds / steps * 1e6
    print(f"{'torch.optim.SGD step, float model (for comparison)':<62} {1:10.1f} {opt:8.1f}")


def interleaved(fns, rounds: int):
    """Best wall and best process CPU time of each function over ``rounds``
    rounds that alternate between them (after one warm-up call each), so that
    load on a shared machine hits them alike; on one thread the CPU time is
    what the load does not inflate."""
    for fn in fns.values():
        fn()
    wall = dict.fromkeys(fns, float("inf"))
    cpu = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name] = min(wall[name], time.perf_counter() - t0)
            cpu[name] = min(cpu[name], time.process_time() - c0)
    return wall, cpu


if __name__ == "__main__":
    main()
