"""Quantized optimizers: drop-in ``torch.optim`` replacements whose step runs
the hardware's update arithmetic (quantized gradient, rule, quantized update,
weight accumulator, quantized weight) and reports stall telemetry.

>>> import torch, hwsim.optim
>>> model = torch.nn.Linear(4, 1)
>>> opt = hwsim.optim.SGD(model.parameters(), lr=0.01, weight="fx16.12", accumulator="fx24.20")
>>> opt = hwsim.optim.Adam(model.parameters(), weight="bf16", accumulator="fp32",
...                        state=hwsim.optim.ADAM_8BIT_STATES)
"""

from hwsim.optim.base import QuantizedOptimizer
from hwsim.optim.optimizers import (
    ADAM_8BIT_STATES,
    OPTIMIZERS,
    SGD,
    STATE_FORMATS,
    AdaGrad,
    Adam,
    RMSProp,
    SignSGD,
)
from hwsim.optim.rules import Rule

__all__ = [
    "SGD",
    "SignSGD",
    "Adam",
    "AdaGrad",
    "RMSProp",
    "OPTIMIZERS",
    "STATE_FORMATS",
    "ADAM_8BIT_STATES",
    "QuantizedOptimizer",
    "Rule",
]
