"""Public ops, one function each, dispatching on the array type."""

from hwsim.ops.matmul import conv2d, matmul
from hwsim.ops.quantize import from_codes, quantize, to_codes

__all__ = ["quantize", "to_codes", "from_codes", "matmul", "conv2d"]
