"""Per-layer, per-tensor telemetry of quantized training: for every quantized
layer (QLinear/QConv2d, by module name) and every tensor it quantizes, the
element count and the fractions flushed to zero and saturated
(:mod:`hwsim.ops.telemetry` defines both for every format kind).

>>> import torch, hwsim.nn as hnn
>>> model = hnn.quantize_model(torch.nn.Sequential(torch.nn.Linear(4, 2)),
...                            hnn.Precision(weight="fx8.6", grad_weight="fx8.7"))
>>> with hnn.telemetry(model) as t:
...     model(torch.ones(3, 4)).sum().backward()
>>> sorted({r["tensor"] for r in t.rows()})
['grad_weight', 'weight']

Tensors (a row only where the layer has that format):

- ``weight``, ``activation``, ``output``: the forward quantizers (weight and
  bias together under ``weight``);
- ``grad_activation_in``: the gradient arriving at the layer's output,
  quantized to ``grad_activation``; ``grad_activation_out``: the gradient
  leaving through its input, quantized to ``grad_activation``;
  ``grad_weight``: the weight and bias gradients;
- ``accumulator``, ``grad_activation_accumulator``, ``grad_weight_accumulator``:
  each MAC array's result against the float GEMM of the same quantized
  operands (the reference): flushed where the reference is nonzero and the
  accumulator 0, saturated where the reference lies beyond the accumulator's
  range. The MAC array reports no per-step overflow, so a partial sum that
  clipped mid-way and a final sum inside the range is not seen.
- ``update`` (with ``optimizer=``): ``stall_fraction``, of the weight and bias
  elements with a nonzero gradient, the fraction the optimizer step left
  unchanged (measured on the parameters around ``step()``, for any torch
  optimizer); ``numel`` counts those elements. For a hwsim optimizer without
  a weight accumulator this is its own ``stall_fraction`` per layer (equal
  when each layer is one param group); with an accumulator, an update that
  lands in the accumulator but not yet in the weight counts here as stalled.
  (A hwsim optimizer's first step puts float initial weights on its grid, so
  nothing stalls then.) The optimizer's telemetry is summed per param group
  with no record of which parameter gave which count, hence the measurement.

Counts gather while :attr:`Telemetry.active` is True (toggle it to measure
only some batches); off, and outside the ``with`` block, layers run exactly as
without telemetry (one ``is None`` test per quantizer).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from hwsim.ops.telemetry import quantization_counts

TENSORS = (
    "weight",
    "activation",
    "output",
    "grad_activation_in",
    "grad_activation_out",
    "grad_weight",
    "accumulator",
    "grad_activation_accumulator",
    "grad_weight_accumulator",
    "update",
)
_FORWARD = {"activation": "activation", "weight": "weight", "output": "output"}
_BACKWARD = {"activation": "grad_activation_out", "weight": "grad_weight", "output": "grad_activation_in"}  # fmt: skip


class _Tap(torch.autograd.Function):
    """Identity; calls ``on_grad(grad)`` when the gradient passes backward."""

    @staticmethod
    def forward(ctx, x, on_grad):
        ctx.on_grad = on_grad
        return x.clone()  # not a view: a following in-place op (ReLU(inplace=True)) stays legal

    @staticmethod
    def backward(ctx, grad):
        ctx.on_grad(grad)
        return grad, None


def _tap(x, on_grad):
    if x is None or not x.requires_grad:
        return x
    return _Tap.apply(x, on_grad)


class LayerRecorder:
    """The counts of one layer; the layer calls it while its telemetry is active."""

    def __init__(self, owner: Telemetry, name: str, layer: nn.Module) -> None:
        self.owner, self.name, self.layer = owner, name, layer
        self.counts: dict[str, list[torch.Tensor]] = {}
        self.formats: dict[str, str] = {}
        self._refs: dict[str, torch.Tensor] = {}

    @property
    def active(self) -> bool:
        return self.owner.active

    def add(self, tensor: str, x, q, fmt) -> None:
        self.counts.setdefault(tensor, []).append(quantization_counts(x, q, fmt))
        self.formats[tensor] = str(fmt)

    def quantize(self, x, forward: str, backward: str, role: int):
        """The layer's quantizer of formats ``forward``/``backward`` (fields of
        its Precision) with both of its quantizations counted."""
        p = self.layer.precision
        straight_through = p.straight_through
        f, b = getattr(p, forward), getattr(p, backward)
        slot: dict[str, torch.Tensor] = {}
        inside = None
        if f is not None and not straight_through and hasattr(f, "max"):
            inside = (x.detach() >= getattr(f, "min", -f.max)) & (x.detach() <= f.max)

        def raw(g):
            slot["raw"] = g if inside is None else g * inside

        def quantized(g):
            if b is not None and "raw" in slot:
                self.add(_BACKWARD[forward], slot.pop("raw"), g, b)

        q = self.layer._quantizer(_tap(x, quantized), forward, backward, role)
        if f is not None:
            self.add(_FORWARD[forward], x.detach(), q.detach(), f)
        return _tap(q, raw)

    # -- the MAC arrays ---------------------------------------------------------------
    def _reference(self, x, w, b):
        if isinstance(self.layer, nn.Conv2d):
            return F.conv2d(x, w, b, self.layer.stride, self.layer.padding)
        return F.linear(x, w, b)

    def mac(self, fn, xq, wq, bq, *args):
        """``fn.apply(xq, wq, bq, *args)`` (the layer's MAC-array function) with
        its three MAC arrays counted."""
        xq, wq, bq = self.before_mac(xq, wq, bq)
        return self.after_mac(xq, wq, bq, fn.apply(xq, wq, bq, *args))

    def before_mac(self, xq, wq, bq):
        """Taps on the MAC operands: their gradients are the backward MAC arrays' results."""
        p = self.layer.precision
        accs = {"x": p.grad_activation_accumulator, "w": p.grad_weight_accumulator,
                "b": p.grad_weight_accumulator}  # fmt: skip
        names = {"x": "grad_activation_accumulator", "w": "grad_weight_accumulator",
                 "b": "grad_weight_accumulator"}  # fmt: skip

        def seen(key):
            def on_grad(g):
                ref = self._refs.pop(key, None)
                if ref is not None and accs[key] is not None:
                    self.add(names[key], ref, g, accs[key])

            return on_grad

        return _tap(xq, seen("x")), _tap(wq, seen("w")), _tap(bq, seen("b"))

    def after_mac(self, xq, wq, bq, y):
        """The forward accumulator's counts, and a tap on ``y`` whose gradient
        (the backward MAC arrays' input) gives their references."""
        p = self.layer.precision
        ops = [t.detach() if t is not None else None for t in (xq, wq, bq)]
        if p.accumulator is not None:
            with torch.no_grad():
                self.add("accumulator", self._reference(*ops), y.detach(), p.accumulator)
        if p.grad_activation_accumulator is None and p.grad_weight_accumulator is None:
            return y

        def on_grad(g):
            leaves = [t.requires_grad_() if t is not None else None for t in ops]
            with torch.enable_grad():
                ref = self._reference(*leaves)
                wanted = [(k, t) for k, t in zip("xwb", leaves, strict=True) if t is not None]
                grads = torch.autograd.grad(ref, [t for _, t in wanted], g.detach())
            self._refs = {k: gr for (k, _), gr in zip(wanted, grads, strict=True)}

        return _tap(y, on_grad)

    def rows(self) -> list[dict]:
        out = []
        for tensor in TENSORS:
            if tensor == "update" or tensor not in self.counts:
                continue
            n, fl, sat = (float(v) for v in torch.stack(self.counts[tensor]).sum(0).tolist())
            out.append(
                {"layer": self.name, "tensor": tensor, "format": self.formats[tensor],
                 "numel": n, "flush_fraction": fl / n if n else 0.0,
                 "saturation_fraction": sat / n if n else 0.0}
            )  # fmt: skip
        if "update" in self.counts:
            n, st = (float(v) for v in torch.stack(self.counts["update"]).sum(0).tolist())
            out.append(
                {"layer": self.name, "tensor": "update", "format": "", "numel": n,
                 "stall_fraction": st / n if n else 0.0}
            )  # fmt: skip
        return out


class Telemetry:
    """Counts of every quantized layer of a model (see the module docstring).
    :meth:`rows` reads them (one host sync), :meth:`reset` clears them,
    :meth:`close` detaches from the model and optimizer."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        from hwsim.nn.layers import _QuantizedLayer

        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(
                f"optimizer must be a torch.optim.Optimizer (or None), got {type(optimizer).__name__}"
            )
        self.active = True
        self.recorders: list[LayerRecorder] = []
        for name, m in model.named_modules():
            if isinstance(m, _QuantizedLayer):
                if m._telemetry is not None:
                    raise ValueError(
                        f"layer {name!r} already has telemetry attached: close it first"
                    )
                rec = LayerRecorder(self, name, m)
                m._telemetry = rec
                self.recorders.append(rec)
        self._hooks = []
        self._before: list = []
        if optimizer is not None:
            self._hooks = [
                optimizer.register_step_pre_hook(self._before_step),
                optimizer.register_step_post_hook(self._after_step),
            ]

    def _params(self, rec: LayerRecorder):
        return [p for p in (rec.layer.weight, rec.layer.bias) if p is not None]

    def _before_step(self, *_):
        self._before = []
        if not self.active:
            return
        for rec in self.recorders:
            for p in self._params(rec):
                if p.grad is not None:
                    self._before.append((rec, p, p.detach().clone(), p.grad.detach() != 0))

    def _after_step(self, *_):
        for rec, p, before, nonzero in self._before:
            stalled = (p.detach() == before) & nonzero
            counts = torch.stack([torch.count_nonzero(nonzero), torch.count_nonzero(stalled)])
            rec.counts.setdefault("update", []).append(counts)
        self._before = []

    def rows(self) -> list[dict]:
        """One dict per (layer, tensor) counted since the last :meth:`reset`:
        ``layer``, ``tensor``, ``format``, ``numel`` (elements counted, summed
        over calls), ``flush_fraction``, ``saturation_fraction`` (``update``
        rows: ``stall_fraction``)."""
        return [row for rec in self.recorders for row in rec.rows()]

    def reset(self) -> None:
        for rec in self.recorders:
            rec.counts.clear()

    def table(self) -> str:
        """The rows as a text table."""
        head = f"{'layer':<12} {'tensor':<28} {'format':<14} {'numel':>10} {'flushed':>8} {'saturated':>9} {'stalled':>8}"  # fmt: skip
        lines = [head]
        for r in self.rows():
            cells = [_pct(r.get(k)) for k in ("flush_fraction", "saturation_fraction", "stall_fraction")]  # fmt: skip
            lines.append(
                f"{r['layer']:<12} {r['tensor']:<28} {r['format']:<14} {int(r['numel']):>10} "
                f"{cells[0]:>8} {cells[1]:>9} {cells[2]:>8}"
            )
        return "\n".join(lines)

    def close(self) -> None:
        for rec in self.recorders:
            rec.layer._telemetry = None
        for h in self._hooks:
            h.remove()
        self._hooks = []


def _pct(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}%"


@contextlib.contextmanager
def telemetry(model: nn.Module, optimizer: torch.optim.Optimizer | None = None):
    """Attach a :class:`Telemetry` to ``model``'s quantized layers (and
    ``optimizer``'s steps) for the ``with`` block; its counts stay readable after."""
    t = Telemetry(model, optimizer)
    try:
        yield t
    finally:
        t.close()
