"""Quantized layers: ``Quantizer``, ``QLinear``, ``QConv2d``, ``quantize_model``.

Data flow of a quantized layer (each arrow a quantizer; forward format /
backward format):

    x --[activation / grad_activation]--> MAC array (accumulator) + bias
    w --[weight / grad_weight]-----------^        |
                                                  v
                       y <--[output / grad_activation]--

The backward GEMMs (gradient wrt input, wrt weight, and the bias sum) run in
their own MAC arrays (``grad_activation_accumulator``,
``grad_weight_accumulator``). Formats left ``None`` stay float.
"""

from __future__ import annotations

import fnmatch

import torch
from torch import nn

from hwsim.formats import parse_format
from hwsim.modes import Overflow, Rounding
from hwsim.nn import fused_mac
from hwsim.nn.block_mac import block_forward, is_block_mac
from hwsim.nn.conv import MACConv2dFunction
from hwsim.nn.functional import (
    GemmConfig,
    MACLinearFunction,
    QuantizeFunction,
    check_backend,
    is_float_mac,
)
from hwsim.nn.fused import derived
from hwsim.nn.precision import Precision
from hwsim.nn.scaling import as_format, stateful
from hwsim.nn.seeds import mix, mix_into
from hwsim.nn.value_mac import ValueMACConv2d, ValueMACLinear

FLOAT = Precision()  # every tensor float: the default of a layer built directly


def quantizer(
    x: torch.Tensor,
    forward=None,
    backward=None,
    *,
    forward_rounding="nearest",
    backward_rounding="nearest",
    overflow="saturate",
    forward_seed=None,
    backward_seed=None,
    backend="torch",
    straight_through=True,
) -> torch.Tensor:
    """Quantize ``x`` to ``forward`` in the forward pass and its gradient to
    ``backward`` in the backward pass (QPyTorch's two-format quantizer;
    Gupta et al. 2015 for stochastic rounding of both).

    >>> import torch
    >>> x = torch.tensor([0.3, 1.7], requires_grad=True)
    >>> y = quantizer(x, "fx8.4", "fx8.2"); y.sum().backward()
    >>> y.detach(), x.grad
    (tensor([0.3125, 1.6875]), tensor([1., 1.]))
    """
    return QuantizeFunction.apply(
        x,
        as_format(forward),
        Rounding.parse(forward_rounding),
        as_format(backward),
        Rounding.parse(backward_rounding),
        Overflow.parse(overflow),
        forward_seed,
        backward_seed,
        check_backend(backend),
        straight_through,
    )


class Quantizer(nn.Module):
    """Module form of :func:`quantizer`; with an int ``seed``, each call draws
    fresh but reproducible stochastic noise (seed, call count)."""

    def __init__(
        self,
        forward=None,
        backward=None,
        *,
        forward_rounding="nearest",
        backward_rounding="nearest",
        overflow="saturate",
        seed=None,
        backend="torch",
        straight_through=True,
    ):
        super().__init__()
        # a Scaled format becomes this module's delayed-scaling state (hwsim.nn.scaling)
        self.forward_format = stateful(self, "forward", 0, parse_format(forward))
        self.backward_format = stateful(self, "backward", 1, parse_format(backward))
        self.forward_rounding = Rounding.parse(forward_rounding)
        self.backward_rounding = Rounding.parse(backward_rounding)
        self.overflow = Overflow.parse(overflow)
        self.seed = seed
        self.backend = check_backend(backend)
        self.straight_through = straight_through
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        fs = bs = None
        if self.seed is not None:
            fs, bs = mix(self.seed, self.calls, 1), mix(self.seed, self.calls, 2)
        return quantizer(
            x,
            self.forward_format,
            self.backward_format,
            forward_rounding=self.forward_rounding,
            backward_rounding=self.backward_rounding,
            overflow=self.overflow,
            forward_seed=fs,
            backward_seed=bs,
            backend=self.backend,
            straight_through=self.straight_through,
        )

    def extra_repr(self) -> str:
        return (
            f"forward={self.forward_format}, backward={self.backward_format}, "
            f"rounding={self.forward_rounding}/{self.backward_rounding}"
        )


class _QuantizedLayer:
    """Shared precision plumbing of QLinear and QConv2d."""

    precision: Precision
    backend: str
    _telemetry = None  # a hwsim.nn.telemetry.LayerRecorder while telemetry is attached

    def _setup(self, precision: Precision, backend: str, salt: int) -> None:
        if not isinstance(precision, Precision):
            raise ValueError(f"precision must be a hwsim.nn.Precision, got {precision!r}")
        self.precision = precision
        self.backend = check_backend(backend)
        self.salt = int(salt)
        self.calls = 0

    def _seed(self, role: int) -> int | None:
        if self.precision.seed is None:
            return None
        return self._role_seeds(self.calls, (role,))[0]

    def _block_mac(self) -> bool:
        """``is_block_mac`` of this layer's precision, worked out once per
        Precision object (a layer call asks it first)."""
        return derived(self, "_block_mac_of", self.precision, is_block_mac)

    def _role_seeds(self, calls: int, roles) -> list[int]:
        """``_seed`` of each role at call count ``calls`` (seed set), the
        shared head mixed once."""
        head = mix(self.precision.seed, self.salt, calls)
        return [mix_into(head, r) for r in roles]

    def _quantize(self, x, forward: str, backward: str, role: int):
        p = self.precision
        if x is None or (getattr(p, forward) is None and getattr(p, backward) is None):
            return x
        if self._telemetry is not None and self._telemetry.active:
            return self._telemetry.quantize(x, forward, backward, role)
        return self._quantizer(x, forward, backward, role)

    def _quantizer(self, x, forward: str, backward: str, role: int):
        p = self.precision
        return quantizer(
            x,  # a Scaled format: this layer's delayed-scaling state (hwsim.nn.scaling)
            stateful(self, forward, role, getattr(p, forward)),
            stateful(self, backward, role + 1, getattr(p, backward)),
            forward_rounding=p.rounding_of(forward),
            backward_rounding=p.rounding_of(backward),
            overflow=p.overflow,
            forward_seed=self._seed(role),
            backward_seed=self._seed(role + 1),
            backend=self.backend,
            straight_through=p.straight_through,
        )

    def _mac(self, fn, *args):  # fn.apply, counted while telemetry is active
        rec = self._telemetry
        return fn.apply(*args) if rec is None or not rec.active else rec.mac(fn, *args)

    def _gemm_configs(self) -> tuple[GemmConfig, GemmConfig, GemmConfig]:
        p = self.precision
        overflow = p.overflow_mode
        return tuple(
            GemmConfig(
                getattr(p, acc),
                p.product,
                p.rounding_of(acc),
                overflow,
                self._seed(role),
                self.backend,
            )
            for acc, role in (
                ("accumulator", 10),
                ("grad_activation_accumulator", 11),
                ("grad_weight_accumulator", 12),
            )
        )

    def _quantized_operands(self, x):
        self.calls += 1
        xq = self._quantize(x, "activation", "grad_activation", 0)
        wq = self._quantize(self.weight, "weight", "grad_weight", 2)
        bq = self._quantize(self.bias, "weight", "grad_weight", 4)
        return xq, wq, bq

    def _finish(self, y):
        return self._quantize(y, "output", "grad_activation", 6)


class QLinear(nn.Linear, _QuantizedLayer):
    """``nn.Linear`` through a bit-true MAC array, with per-tensor formats
    (Sakr & Shanbhag, ICLR 2019). Same parameters and state dict as nn.Linear.

    >>> import torch
    >>> layer = QLinear(4, 2, precision=Precision(weight="fx8.6", activation="fx8.4",
    ...                                           accumulator="fx20.10"))
    >>> layer(torch.ones(3, 4)).shape
    torch.Size([3, 2])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        precision: Precision = FLOAT,
        backend: str = "torch",
        salt: int = 0,
        device=None,
        dtype=None,
    ):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._setup(precision, backend, salt)

    @classmethod
    def from_float(
        cls, layer: nn.Linear, precision: Precision, backend: str = "torch", salt: int = 0
    ) -> QLinear:
        q = cls(
            layer.in_features,
            layer.out_features,
            layer.bias is not None,
            precision=precision,
            backend=backend,
            salt=salt,
            device=layer.weight.device,
            dtype=layer.weight.dtype,
        )
        q.weight, q.bias = layer.weight, layer.bias  # the same Parameters: optimizers keep working
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._block_mac():  # block-scaled operands in the MAC arrays
            return block_forward(self, x)
        if (y := fused_mac.fused_forward(self, x)) is not None:  # same bits, fewer calls
            return y
        xq, wq, bq = self._quantized_operands(x)
        configs = self._gemm_configs()
        fn = ValueMACLinear if is_float_mac(*configs) else MACLinearFunction
        y = self._mac(fn, xq, wq, bq, *configs)
        return self._finish(y)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend}, precision={self.precision}"


class QConv2d(nn.Conv2d, _QuantizedLayer):
    """``nn.Conv2d`` (groups=1, dilation=1, zero padding) through a bit-true MAC
    array; same parameters and state dict as nn.Conv2d.

    >>> import torch
    >>> conv = QConv2d(1, 2, 3, padding=1, precision=Precision(weight="fx8.6",
    ...                activation="fx8.4", accumulator="fx20.10"))
    >>> conv(torch.ones(1, 1, 5, 5)).shape
    torch.Size([1, 2, 5, 5])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        bias: bool = True,
        *,
        precision: Precision = FLOAT,
        backend: str = "torch",
        salt: int = 0,
        device=None,
        dtype=None,
    ):
        if isinstance(padding, str):
            raise ValueError(f"QConv2d takes integer padding, got {padding!r}")
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            bias=bias,
            device=device,
            dtype=dtype,
        )
        self._setup(precision, backend, salt)

    @classmethod
    def from_float(
        cls, layer: nn.Conv2d, precision: Precision, backend: str = "torch", salt: int = 0
    ) -> QConv2d:
        unsupported = []
        if layer.groups != 1:
            unsupported.append(f"groups={layer.groups}")
        if tuple(layer.dilation) != (1, 1):
            unsupported.append(f"dilation={layer.dilation}")
        if layer.padding_mode != "zeros":
            unsupported.append(f"padding_mode={layer.padding_mode!r}")
        if isinstance(layer.padding, str):
            unsupported.append(f"padding={layer.padding!r}")
        if unsupported:
            raise ValueError(
                f"QConv2d supports groups=1, dilation=1 and integer zero padding; "
                f"this layer has {', '.join(unsupported)}"
            )
        q = cls(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.bias is not None,
            precision=precision,
            backend=backend,
            salt=salt,
            device=layer.weight.device,
            dtype=layer.weight.dtype,
        )
        q.weight, q.bias = layer.weight, layer.bias  # the same Parameters: optimizers keep working
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._block_mac():  # block-scaled operands in the MAC arrays
            return block_forward(self, x, conv=True)
        if (y := fused_mac.fused_forward(self, x, conv=True)) is not None:
            return y
        xq, wq, bq = self._quantized_operands(x)
        configs = self._gemm_configs()
        fn = ValueMACConv2d if is_float_mac(*configs) else MACConv2dFunction
        y = self._mac(fn, xq, wq, bq, tuple(self.stride), tuple(self.padding), *configs)
        return self._finish(y)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend}, precision={self.precision}"


def quantize_model(
    model: nn.Module,
    precision: Precision | None,
    backend: str = "torch",
    per_layer: dict[str, Precision | None] | None = None,
) -> nn.Module:
    """Swap every ``nn.Linear``/``nn.Conv2d`` of ``model`` (in place) for a
    QLinear/QConv2d with the same parameters, and return the model.

    ``precision`` applies to every layer; ``per_layer`` maps module names (as in
    ``model.named_modules()``, glob patterns allowed, first match wins) to a
    Precision, or to ``None`` to leave that layer float. ``precision=None``
    with ``per_layer`` quantizes only the named layers.

    >>> import torch
    >>> m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> m = quantize_model(m, Precision(weight="fx8.6", activation="fx8.4"))
    >>> type(m[0]).__name__, type(m[2]).__name__
    ('QLinear', 'QLinear')
    """
    check_backend(backend)
    if precision is not None and not isinstance(precision, Precision):
        raise ValueError(f"precision must be a hwsim.nn.Precision or None, got {precision!r}")
    per_layer = dict(per_layer or {})
    targets = [(name, m) for name, m in model.named_modules() if type(m) in (nn.Linear, nn.Conv2d)]
    names = [name for name, _ in targets]
    for pattern in per_layer:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise ValueError(
                f"per_layer names {pattern!r}, which matches no Linear/Conv2d layer; "
                f"the layers are {names}"
            )
    for salt, (name, module) in enumerate(targets):
        chosen = precision
        for pattern, p in per_layer.items():
            if fnmatch.fnmatchcase(name, pattern):
                chosen = p
                break
        if chosen is None:
            continue
        cls = QLinear if isinstance(module, nn.Linear) else QConv2d
        swapped = cls.from_float(module, chosen, backend, salt)
        if name == "":
            return swapped
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, swapped)
    return model


__all__ = ["Quantizer", "quantizer", "QLinear", "QConv2d", "quantize_model", "Precision"]
