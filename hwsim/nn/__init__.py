"""Quantized layers with bit-true MAC arrays, forward and backward.

>>> import torch, hwsim.nn as hnn
>>> model = torch.nn.Sequential(torch.nn.Linear(8, 4))
>>> p = hnn.Precision(weight="fx16.12", activation="fx16.12", accumulator="fx32.20")
>>> model = hnn.quantize_model(model, p, backend="torch")
>>> model(torch.zeros(2, 8)).shape
torch.Size([2, 4])
"""

from hwsim.nn.layers import QConv2d, QLinear, Quantizer, quantize_model, quantizer
from hwsim.nn.precision import Precision
from hwsim.nn.scaling import AmaxHistory
from hwsim.nn.telemetry import Telemetry, telemetry

__all__ = [
    "AmaxHistory",
    "Precision",
    "Quantizer",
    "quantizer",
    "QLinear",
    "QConv2d",
    "quantize_model",
    "Telemetry",
    "telemetry",
]
