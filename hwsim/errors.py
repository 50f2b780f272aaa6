"""Exceptions raised by hwsim."""

from __future__ import annotations


class NonFiniteError(ValueError):
    """A value with no fixed-point code (NaN or +-Inf) reached a quantizer.

    Attributes:
        count: how many non-finite values the input held.
        first_index: the index (a tuple, one entry per dimension) of the first one.
    """

    def __init__(self, count: int, first_index: tuple[int, ...], shape: tuple[int, ...]):
        self.count = int(count)
        self.first_index = tuple(int(i) for i in first_index)
        self.shape = tuple(int(s) for s in shape)
        super().__init__(
            f"input holds {self.count} non-finite value(s) (NaN or +-Inf) out of "
            f"{_numel(self.shape)} (shape {self.shape}); the first is at index "
            f"{self.first_index}. Fixed-point formats have no code for NaN or Inf."
        )


class CodeOverflowError(ValueError):
    """An exact integer computation would not fit in int64."""


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
