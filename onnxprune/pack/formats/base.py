"""The packed-tensor container and the bit-level helpers every exact format shares."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnxprune.core.errors import TargetError
from onnxprune.core.quant import bit_view


@dataclass
class PackedTensor:
    """A 2-D weight matrix (rows = output units, cols = reduction axis) in a packed sparse format."""

    format: str
    shape: tuple[int, ...]
    dtype: np.dtype
    arrays: dict[str, np.ndarray]
    params: dict = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes of all stored arrays (the payload; params and shape are a few bytes of header)."""
        return int(sum(a.nbytes for a in self.arrays.values()))


def bits_of(array: np.ndarray, name: str = "values") -> np.ndarray:
    """An array viewed as unsigned integers of the same width, so every copy keeps exact bits."""
    a = np.asarray(array)
    if a.itemsize not in (1, 2, 4, 8):
        raise TargetError(f"{name}: dtype {a.dtype} has no same-width integer view; use a 1, 2, 4 or 8 byte dtype")
    return bit_view(a)


def matrix_bits(matrix: np.ndarray, name: str) -> np.ndarray:
    """`bits_of` a 2-D matrix view; other ranks are rejected."""
    if np.ndim(matrix) != 2:
        shape = np.shape(matrix)
        raise TargetError(f"{name}: expected a 2-D matrix view, got shape {shape}; reshape the weight to (rows, cols) first")
    return bits_of(matrix, name)


def from_bits(bits: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Reinterpret unsigned-integer bits as `dtype` (the inverse of `bits_of`)."""
    return bits.view(np.dtype(dtype))


def nonzero(bits: np.ndarray) -> np.ndarray:
    """Boolean map of elements whose bit pattern is not all zero (-0.0 and NaN count as values)."""
    return bits != 0
