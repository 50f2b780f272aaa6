"""Optimizer step time: hwsim.optim vs torch.optim and qtorch's OptimLP.

    python benchmarks/optim.py [--params 1000000] [--steps 20] [--repeat 5]

One ``nn.Linear`` with about ``--params`` parameters (float32), a fixed random
gradient, and the time of ``optimizer.step()`` alone (best of ``--repeat``
runs of ``--steps`` steps), as a ratio to the torch optimizer with the same
rule. Fixed-point rows use weight fx16.12, accumulator fx24.20, gradient
fx16.12 and (Adam, AdaGrad, RMSProp, momentum) state fx24.20 / ufx32.30;
qtorch's OptimLP gets the same formats with its fixed-point quantizers. All
rows are measured in this one run.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from _timing import print_table  # noqa: E402

import hwsim.optim as hopt  # noqa: E402

FIXED = dict(weight="fx16.12", accumulator="fx24.20", grad="fx16.12")
ADAM_STATE = {"exp_avg": "fx24.20", "exp_avg_sq": "ufx32.30"}


def make_params(n: int) -> list[torch.nn.Parameter]:
    side = int(math.sqrt(n))
    torch.manual_seed(0)
    layer = torch.nn.Linear(side, side)
    params = list(layer.parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-2
    return params


def step_time(make_opt, n: int, steps: int, repeat: int) -> float:
    params = make_params(n)
    opt = make_opt(params)
    for _ in range(2):
        opt.step()
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(steps):
            opt.step()
        best = min(best, (time.perf_counter() - t0) / steps)
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
        "sgd": lambda ps: OptimLP(torch.optim.SGD(ps, lr=0.01), weight_quant=w, grad_quant=g, acc_quant=a),
        "sgd_momentum": lambda ps: OptimLP(torch.optim.SGD(ps, lr=0.01, momentum=0.9), weight_quant=w,
                                           grad_quant=g, acc_quant=a, momentum_quant=m),
        "adam": lambda ps: OptimLP(torch.optim.Adam(ps, lr=1e-3), weight_quant=w, grad_quant=g, acc_quant=a,
                                   momentum_quant=m),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", type=int, default=1_000_000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    n, steps, repeat = args.params, args.steps, args.repeat
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{sum(p.numel() for p in make_params(n))} parameters, float32")

    def t(make):
        return step_time(make, n, steps, repeat)

    torch_ref = {
        "sgd": t(lambda ps: torch.optim.SGD(ps, lr=0.01)),
        "sgd_momentum": t(lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9)),
        "adam": t(lambda ps: torch.optim.Adam(ps, lr=1e-3)),
        "adagrad": t(lambda ps: torch.optim.Adagrad(ps, lr=1e-2)),
        "rmsprop": t(lambda ps: torch.optim.RMSprop(ps, lr=1e-2)),
    }
    torch_ref["signsgd"] = torch_ref["sgd"]  # torch has no sign SGD: compare with SGD
    qt = qtorch_optims()
    qtorch_times = {k: t(make) for k, make in qt.items()}

    cases = [
        ("sgd", "SGD", dict(lr=0.01)),
        ("sgd_momentum", "SGD", dict(lr=0.01, momentum=0.9)),
        ("signsgd", "SignSGD", dict(lr=1e-3)),
        ("adam", "Adam", dict(lr=1e-3)),
        ("adagrad", "AdaGrad", dict(lr=1e-2)),
        ("rmsprop", "RMSProp", dict(lr=1e-2)),
    ]
    rows = []
    for key, cls_name, hyper in cases:
        cls = getattr(hopt, cls_name)
        state = ADAM_STATE if cls_name == "Adam" else ("ufx32.30" if cls_name in ("AdaGrad", "RMSProp") else "fx24.20")
        variants = [
            ("float", {}),
            ("fixed", dict(FIXED, state=state)),
            ("fixed, stochastic", dict(FIXED, state=state, rounding="stochastic", seed=0)),
        ]
        for label, prec in variants:
            if label == "fixed, stochastic" and key not in ("sgd", "adam"):
                continue
            for telemetry in (False, True):
                sec = t(lambda ps, cls=cls, hyper=hyper, prec=prec, tel=telemetry: cls(ps, **hyper, **prec, telemetry=tel))
                q = qtorch_times.get(key)
                rows.append([
                    f"{cls_name}{' momentum' if key == 'sgd_momentum' else ''}", label, "on" if telemetry else "off",
                    sec * 1e3, sec / torch_ref[key],
                    (sec / q) if (q is not None and label == "fixed" and not telemetry) else "",
                ])
    print_table(["optimizer", "formats", "telemetry", "ms/step", "x torch", "x qtorch OptimLP"], rows)
    print()
    print_table(["reference", "ms/step"],
                [[f"torch {k}", v * 1e3] for k, v in torch_ref.items() if k != "signsgd"]
                + [[f"qtorch OptimLP {k}", v * 1e3] for k, v in qtorch_times.items()])


if __name__ == "__main__":
    main()
