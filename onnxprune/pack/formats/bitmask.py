"""Bitmask format (zero-skipping NPUs, NVDLA-style weight compression): one bit per weight plus the non-zeros.

`mask` is `np.packbits` of the row-major non-zero bitmap with bitorder little; `values` are the
non-zeros in row-major order. At density d it costs 1 bit per weight where the bound is H(d), so it is
within 1.05x of the bound near 50% density and falls behind at high sparsity (see `sizes`).
"""

from __future__ import annotations

import numpy as np

from onnxprune.pack.formats.base import (
    PackedTensor,
    bits_of,
    from_bits,
    matrix_bits,
    nonzero,
)

NAME = "bitmask"


def encode(matrix: np.ndarray, *, name: str = "weight") -> PackedTensor:
    """Pack a 2-D matrix into mask + values."""
    bits = matrix_bits(matrix, name)
    nz = nonzero(bits).ravel()
    arrays = {"mask": np.packbits(nz, bitorder="little"), "values": from_bits(bits.ravel()[nz], matrix.dtype)}
    return PackedTensor(NAME, bits.shape, np.dtype(matrix.dtype), arrays, {})


def decode(packed: PackedTensor) -> np.ndarray:
    """Rebuild the dense 2-D matrix bit for bit."""
    size = int(np.prod(packed.shape))
    nz = np.unpackbits(packed.arrays["mask"], count=size, bitorder="little").astype(bool)
    values = bits_of(packed.arrays["values"])
    out = np.zeros(size, dtype=values.dtype)
    out[nz] = values
    return from_bits(out, packed.dtype).reshape(packed.shape)
