"""The torch path: hwsim's arithmetic with torch ops, on any device.

It mirrors ``hwsim.kernels.scalar`` operation for operation and is tested
bit-identical to the Numba kernels.
"""
