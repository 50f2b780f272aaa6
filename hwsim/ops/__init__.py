"""Public ops, one function each, dispatching on the array type (or on an
explicit ``backend="numba"`` / ``"torch"``)."""

from hwsim.ops.backend import BACKENDS, check_backend
from hwsim.ops.codes import conv2d_on_codes, grid_codes, matmul_on_codes
from hwsim.ops.float_gemm import add_float
from hwsim.ops.matmul import add_codes, conv2d, conv2d_codes, matmul, matmul_codes
from hwsim.ops.quantize import from_codes, quantize, to_codes

__all__ = [
    "BACKENDS",
    "add_codes",
    "add_float",
    "check_backend",
    "conv2d",
    "conv2d_codes",
    "conv2d_on_codes",
    "from_codes",
    "grid_codes",
    "matmul",
    "matmul_codes",
    "matmul_on_codes",
    "quantize",
    "to_codes",
]
