"""Bit-true Numba kernels on integer codes (CPU). Imports no torch.

Thin public functions elsewhere validate and convert, then call these kernels,
which take only arrays and scalars. JIT flags live in ``hwsim.kernels.jit``.
"""
