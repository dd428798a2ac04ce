"""Exact packed sparse formats for 2-D weight matrices, by name.

Every module has `NAME`, `encode(matrix, **params) -> PackedTensor` and `decode(packed) -> ndarray`;
`decode(encode(W))` equals W bit for bit, with zero meaning an all-zero bit pattern.
"""

from __future__ import annotations

import numpy as np

from onnxprune.core.errors import TargetError
from onnxprune.pack.formats import bitmask, bsr, coo, nm
from onnxprune.pack.formats.base import PackedTensor

FORMATS = {mod.NAME: mod for mod in (nm, bsr, bitmask, coo)}


def _module(format_name: str):
    if format_name not in FORMATS:
        raise TargetError(f"unknown packed format {format_name!r}; use one of {', '.join(FORMATS)}")
    return FORMATS[format_name]


def encode(format_name: str, matrix: np.ndarray, **params) -> PackedTensor:
    """Pack a 2-D matrix in the named format."""
    return _module(format_name).encode(matrix, **params)


def decode(packed: PackedTensor) -> np.ndarray:
    """Rebuild the dense 2-D matrix of any packed tensor."""
    return _module(packed.format).decode(packed)


__all__ = ["FORMATS", "PackedTensor", "decode", "encode"]
