"""Optimizer step time: hwsim.optim vs torch.optim and qtorch's OptimLP.

    python benchmarks/optim.py [--params 1000000] [--tensors 0] [--steps 20] [--repeat 5] [--runs 3] [--rules sgd,adam] [--breakdown] [--passes]

One ``nn.Linear`` with about ``--params`` parameters (float32) (``--tensors
T``: T 1-D tensors of ``--params / T`` elements instead, where the time per
tensor shows: the torch path runs a group's rule math as ``torch._foreach_``
ops, the Numba path one kernel per tensor), a fixed random
gradient, and the time of ``optimizer.step()`` alone (best of ``--repeat``
rounds of ``--steps`` steps, the rounds interleaved across the optimizers of a
rule), as a ratio to the torch optimizer with the same rule and to qtorch's
OptimLP (SGD, SGD with momentum, Adam); with ``--runs N`` everything is
measured N times and the table gives the min and median over the runs.
Every rule has rows for nearest and stochastic rounding. "fixed, torch ops" is the torch path
(``fused=False``: what runs on a GPU) on the CPU. Fixed-point rows use weight fx16.12, accumulator fx24.20, gradient
fx16.12 and (Adam, AdaGrad, RMSProp, momentum) state fx24.20 / ufx32.30;
qtorch's OptimLP gets the same formats with its fixed-point quantizers. Adam
also has rows for the float recipe (bf16 weights, fp32 master copy: torch ops
with the values quantized by the Numba kernels) and for block-wise 8-bit
states (``hwsim.optim.ADAM_8BIT_STATES``: MXINT8 / MXFP8 E5M2) with that
recipe and with the fixed-point pipeline above (whose tail stays fused). All
rows are measured in this one run.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numba
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from _timing import print_table  # noqa: E402

import hwsim.optim as hopt  # noqa: E402
from hwsim.kernels.scalar import counter_uniform  # noqa: E402

WARMUP_STEPS = 3  # per optimizer and round, before its timed steps
FIXED = dict(weight="fx16.12", accumulator="fx24.20", grad="fx16.12")
ADAM_STATE = {"exp_avg": "fx24.20", "exp_avg_sq": "ufx32.30"}
BLOCK_STATE = hopt.ADAM_8BIT_STATES


TENSORS = [0]  # --tensors: 0 for one nn.Linear


def make_params(n: int) -> list[torch.nn.Parameter]:
    side = int(math.sqrt(n))
    torch.manual_seed(0)
    if TENSORS[0]:
        params = [torch.nn.Parameter(torch.randn(n // TENSORS[0])) for _ in range(TENSORS[0])]
    else:
        params = list(torch.nn.Linear(side, side).parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-2
    return params


def interleaved_times(makers: dict, n: int, steps: int, repeat: int) -> dict[str, float]:
    """Seconds per ``step()`` of each optimizer, best of ``repeat`` rounds; the
    rounds alternate between the optimizers, so load on a shared machine hits
    them alike and the ratios stay meaningful."""
    opts = {}
    for name, make in makers.items():
        opts[name] = make(make_params(n))
        for _ in range(2):  # warm-up: lazy state, JIT
            opts[name].step()
    best = dict.fromkeys(opts, math.inf)
    for _ in range(repeat):
        for name, opt in opts.items():
            for _ in range(
                WARMUP_STEPS
            ):  # untimed: caches and thread pools settle after the previous optimizer
                opt.step()
            t0 = time.perf_counter()
            for _ in range(steps):
                opt.step()
            best[name] = min(best[name], (time.perf_counter() - t0) / steps)
    return best


def qtorch_optims():
    try:
        from qtorch import FixedPoint
        from qtorch.optim import OptimLP
        from qtorch.quant import quantizer
    except Exception as err:  # pragma: no cover - peer missing
        print(f"qtorch unavailable ({err}); skipping its rows")
        return {}
    w = quantizer(forward_number=FixedPoint(16, 12), forward_rounding="nearest")
    a = quantizer(forward_number=FixedPoint(24, 20), forward_rounding="nearest")
    g = quantizer(forward_number=FixedPoint(16, 12), forward_rounding="nearest")
    m = quantizer(forward_number=FixedPoint(24, 20), forward_rounding="nearest")
    return {
        "sgd": lambda ps: OptimLP(
            torch.optim.SGD(ps, lr=0.01), weight_quant=w, grad_quant=g, acc_quant=a
        ),
        "sgd_momentum": lambda ps: OptimLP(
            torch.optim.SGD(ps, lr=0.01, momentum=0.9),
            weight_quant=w,
            grad_quant=g,
            acc_quant=a,
            momentum_quant=m,
        ),
        "adam": lambda ps: OptimLP(
            torch.optim.Adam(ps, lr=1e-3),
            weight_quant=w,
            grad_quant=g,
            acc_quant=a,
            momentum_quant=m,
        ),
    }


def _median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", type=int, default=1_000_000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument(
        "--runs",
        type=int,
        default=1,
        help="measure everything this many times; the table gives min and median over runs",
    )
    ap.add_argument(
        "--rules",
        default="sgd,sgd_momentum,signsgd,adam,adagrad,rmsprop",
        help="comma-separated subset of the rules to time",
    )
    ap.add_argument(
        "--breakdown",
        action="store_true",
        help="also time the parts of a fixed-point SGD step (gradient check, fused kernel)",
    )
    ap.add_argument(
        "--tensors",
        type=int,
        default=0,
        help="split the parameters into this many 1-D tensors (0: one nn.Linear)",
    )
    ap.add_argument(
        "--passes",
        action="store_true",
        help="only time each rule with state as one fused pass and as two (nearest, stochastic)",
    )
    args = ap.parse_args()
    TENSORS[0] = args.tensors
    wanted = set(args.rules.split(","))
    n, steps, repeat = args.params, args.steps, args.repeat
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{sum(p.numel() for p in make_params(n))} parameters, float32"
    )
    if args.passes:
        passes(n, steps, repeat)
        return

    torch_makers = {
        "sgd": lambda ps: torch.optim.SGD(ps, lr=0.01),
        "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9),
        "adam": lambda ps: torch.optim.Adam(ps, lr=1e-3),
        "adagrad": lambda ps: torch.optim.Adagrad(ps, lr=1e-2),
        "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=1e-2),
    }
    torch_makers["signsgd"] = torch_makers["sgd"]  # torch has no sign SGD: compare with SGD
    qt = qtorch_optims()
    cases = [
        ("sgd", "SGD", dict(lr=0.01)),
        ("sgd_momentum", "SGD", dict(lr=0.01, momentum=0.9)),
        ("signsgd", "SignSGD", dict(lr=1e-3)),
        ("adam", "Adam", dict(lr=1e-3)),
        ("adagrad", "AdaGrad", dict(lr=1e-2)),
        ("rmsprop", "RMSProp", dict(lr=1e-2)),
    ]
    rows, refs = [], []
    for key, cls_name, hyper in cases:
        if key not in wanted:
            continue
        cls = getattr(hopt, cls_name)
        state = (
            ADAM_STATE
            if cls_name == "Adam"
            else ("ufx32.30" if cls_name in ("AdaGrad", "RMSProp") else "fx24.20")
        )
        makers = {"torch": torch_makers[key]}
        if key in qt:
            makers["qtorch"] = qt[key]
        variants = [("float", {}), ("fixed", dict(FIXED, state=state))]
        if key == "adam":
            master = dict(weight="bf16", accumulator="fp32")
            variants += [
                ("bf16 + fp32 master", master),
                ("bf16 + fp32 master, 8-bit block states", dict(master, state=BLOCK_STATE)),
                ("fixed, 8-bit block states", dict(FIXED, state=BLOCK_STATE)),
            ]
        variants += [
            ("fixed, stochastic", dict(FIXED, state=state, rounding="stochastic", seed=0)),
            ("fixed, torch ops", dict(FIXED, state=state, fused=False)),
        ]
        for label, prec in variants:
            for telemetry in (False, True):
                makers[(label, telemetry)] = (
                    lambda ps, cls=cls, hyper=hyper, prec=prec, tel=telemetry: cls(
                        ps, **hyper, **prec, telemetry=tel
                    )
                )
        runs = [interleaved_times(makers, n, steps, repeat) for _ in range(args.runs)]
        name = f"{cls_name}{' momentum' if key == 'sgd_momentum' else ''}"
        refs.append([f"torch {name}", _median([t["torch"] for t in runs]) * 1e3])
        if "qtorch" in runs[0]:
            refs.append([f"qtorch OptimLP {name}", _median([t["qtorch"] for t in runs]) * 1e3])
        for label, _ in variants:
            for telemetry in (False, True):
                ratios = [t[(label, telemetry)] / t["torch"] for t in runs]
                q = [t[(label, telemetry)] / t["qtorch"] for t in runs if "qtorch" in t]
                rows.append(
                    [
                        name,
                        label,
                        "on" if telemetry else "off",
                        _median([t[(label, telemetry)] for t in runs]) * 1e3,
                        min(ratios),
                        _median(ratios),
                        _median(q) if q and label.startswith("fixed") else "",
                    ]
                )
    print_table(
        [
            "optimizer",
            "formats",
            "telemetry",
            "ms/step (median)",
            "x torch (min)",
            "x torch (median)",
            "x qtorch OptimLP",
        ],
        rows,
    )
    print()
    print_table(["reference", "ms/step"], refs)
    if args.breakdown:
        print()
        breakdown(n)


class _Pinned:
    """An optimizer whose rule runs as one fused pass (wherever its math
    bounds the update) or as two, whichever the library would pick."""

    def __init__(self, opt, one_pass: bool) -> None:
        self.opt, self.one_pass = opt, one_pass

    def step(self) -> None:
        from hwsim.optim import rule_path

        real = rule_path.fused_rule_step
        rule_path.ONE_PASS_ALWAYS = self.one_pass
        if not self.one_pass:
            rule_path.fused_rule_step = lambda *args: False
        try:
            self.opt.step()
        finally:
            rule_path.ONE_PASS_ALWAYS, rule_path.fused_rule_step = False, real


def passes(n: int, steps: int, repeat: int) -> None:
    """The one-pass choice (``hwsim.optim.rule_path._pays``) measured: each
    rule with state, fixed point, as one pass and as two, interleaved."""
    rules = {
        "SGD momentum": (hopt.SGD, dict(lr=0.01, momentum=0.9), "fx24.20"),
        "Adam": (hopt.Adam, dict(lr=1e-3), ADAM_STATE),
        "AdaGrad": (hopt.AdaGrad, dict(lr=1e-2), "ufx32.30"),
        "RMSProp": (hopt.RMSProp, dict(lr=1e-2), "ufx32.30"),
    }
    rows = []
    for name, (cls, hyper, state) in rules.items():
        for rounding in ("nearest", "stochastic"):
            prec = dict(FIXED, state=state, rounding=rounding, seed=0, telemetry=False)
            makers = {
                one: (lambda ps, one=one, c=cls, h=hyper, p=prec: _Pinned(c(ps, **h, **p), one))
                for one in (True, False)
            }
            t = interleaved_times(makers, n, steps, repeat)
            rows.append([name, rounding, t[True] * 1e3, t[False] * 1e3, t[True] / t[False]])
    print_table(["rule", "rounding", "one pass ms", "two passes ms", "one / two"], rows)


def breakdown(n: int) -> None:
    """Where a fixed-point SGD step goes: the gradient check and the fused
    kernel alone (with and without the telemetry sample; checking the
    gradient in the same pass, as the step does from its second call), per
    element at two sizes: data that fit the cores' L2 (64K elements) and data
    that do not."""
    from _timing import interleaved_best

    from hwsim.formats import FixedPoint
    from hwsim.optim.fused import Draw, fused_step, max_abs

    rows = []
    for size in (1 << 16, n):
        ps = make_params(size)
        opt = hopt.SGD(ps, lr=0.01, **FIXED, telemetry=False)
        opt.step()
        weight = ps[0]
        grad = weight.grad.reshape(-1).numpy()
        # the optimizer's own views and accumulator bound (a private attribute): the
        # kernel calls keep the bound true for the optimizer's steps in between, and
        # the working set is the step's
        views = opt._views[weight]
        step = fused_step(
            False,
            FixedPoint.parse(FIXED["grad"]),
            None,
            FixedPoint.parse(FIXED["accumulator"]),
            FixedPoint.parse(FIXED["weight"]),
            (0, 0, 0, 0),
            0,
        )
        top = max_abs(grad)

        def kernel(telemetry, s=step, g=grad, v=views, t=top):
            s(g, v.acc_flat, v.param, -0.01, t, Draw(0, 1, 0), telemetry, v.bound)

        def checking(s=step, g=grad, v=views, t=top):
            assert s.speculate(
                g, v.acc_flat, v.param, -0.01, math.frexp(t)[1], Draw(0, 1, 0), False, v.bound
            )

        times = interleaved_best(
            {
                "whole step (weight and bias)": opt.step,
                "gradient check (max_abs)": lambda g=grad: max_abs(g),
                "fused kernel": lambda: kernel(False),
                "fused kernel, telemetry sample": lambda: kernel(True),
                "fused kernel checking the gradient (the step's path)": checking,
            },
            rounds=max(20, 2_000_000 // size),
            warmup=3,
        )
        # references, timed apart (their arrays would double the working set): a kernel
        # with the fused kernel's memory traffic and one addition per element, and a
        # step with no gradient (the torch.optim step wrapper and the loop around it)
        acc_copy, out_copy = views.acc_flat.copy(), views.param.copy()
        idle = hopt.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01, **FIXED, telemetry=False)
        times.update(
            interleaved_best(
                {
                    "same traffic, one addition (floor)": lambda g=grad, a=acc_copy, o=out_copy: (
                        _traffic_floor(g, a, o)
                    ),
                    "step with no gradient (optimizer wrapper)": idle.step,
                    # stochastic rounding's floor: SGD's gradient, accumulator and weight
                    # stages each draw a counter uniform per element (the streams are
                    # the results' bits: only the hash's cost can go)
                    "3 counter uniforms per element alone": lambda o=out_copy: _uniforms(o),
                },
                rounds=max(20, 2_000_000 // size),
                warmup=3,
            )
        )
        for name, sec in times.items():
            rows.append([grad.size, name, sec * 1e3, sec / grad.size * 1e9])
    print_table(["weight elements", "part", "ms", "ns per weight element"], rows)


@numba.njit(parallel=True)
def _traffic_floor(grad, acc, out):
    """The fused kernel's memory traffic (float32 gradient in, int32
    accumulator in and out, float32 weight out) with one addition per element."""
    for i in numba.prange(grad.size):
        a = acc[i] + np.int32(grad[i])
        acc[i] = a
        out[i] = np.float32(a)


@numba.njit(parallel=True)
def _uniforms(out):
    """Three counter uniforms per element (the stochastic stages' draws of an
    SGD step), summed into a float32 output so none is optimized away."""
    for i in numba.prange(out.size):
        u = counter_uniform(1, i) + counter_uniform(2, i) + counter_uniform(3, i)
        out[i] = np.float32(u)


if __name__ == "__main__":
    main()
