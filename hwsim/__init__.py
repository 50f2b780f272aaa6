"""hwsim: a fixed-point, hardware-aware training simulator.

>>> import hwsim
>>> hwsim.quantize(0.3, hwsim.FixedPoint(8, 4))
0.3125
"""

from hwsim.errors import NonFiniteError
from hwsim.formats import FixedPoint, FloatingPoint, parse_format
from hwsim.formats.block import MX, BlockFloatingPoint
from hwsim.formats.scaled import Scaled
from hwsim.modes import Overflow, Rounding
from hwsim.ops import conv2d, from_codes, matmul, quantize, to_codes

__version__ = "0.1.0"

__all__ = [
    "FixedPoint",
    "FloatingPoint",
    "BlockFloatingPoint",
    "MX",
    "Scaled",
    "parse_format",
    "Rounding",
    "Overflow",
    "NonFiniteError",
    "quantize",
    "to_codes",
    "from_codes",
    "matmul",
    "conv2d",
    "__version__",
]
