"""Block sparse row (BSR) format with r x c blocks, as XNNPACK, TVM and scipy's `bsr_matrix` use it.

Arrays: `indptr` (int32, block_rows + 1), `indices` (int32 block columns, ascending within a block row)
and `blocks` (nblocks, r, c) in the weight dtype. A block is kept iff any element has a non-zero bit
pattern. A shape not divisible by the block is padded with zeros for packing and cropped on decode.
"""

from __future__ import annotations

import numpy as np

from onnxprune.core.errors import TargetError
from onnxprune.pack.formats.base import (
    PackedTensor,
    bits_of,
    from_bits,
    matrix_bits,
    nonzero,
)

NAME = "bsr"


def _grid(rows: int, cols: int, r: int, c: int) -> tuple[int, int]:
    return -(-rows // r), -(-cols // c)


def encode(matrix: np.ndarray, *, r: int = 1, c: int = 4, name: str = "weight") -> PackedTensor:
    """Pack a 2-D matrix into kept r x c blocks."""
    if r < 1 or c < 1:
        raise TargetError(f"{name}: BSR block {r}x{c} is invalid; use positive block sizes")
    bits = matrix_bits(matrix, name)
    rows, cols = bits.shape
    br, bc = _grid(rows, cols, r, c)
    padded = np.zeros((br * r, bc * c), dtype=bits.dtype)
    padded[:rows, :cols] = bits
    tiles = padded.reshape(br, r, bc, c).transpose(0, 2, 1, 3)
    keep = nonzero(tiles).any(axis=(2, 3))
    block_row, block_col = np.nonzero(keep)
    indptr = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int32)
    arrays = {
        "indptr": indptr,
        "indices": block_col.astype(np.int32),
        "blocks": from_bits(tiles[block_row, block_col], matrix.dtype),
    }
    return PackedTensor(NAME, bits.shape, np.dtype(matrix.dtype), arrays, {"r": r, "c": c})


def block_rows(indptr: np.ndarray) -> np.ndarray:
    """The block-row index of every stored block."""
    return np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))


def decode(packed: PackedTensor) -> np.ndarray:
    """Rebuild the dense 2-D matrix bit for bit."""
    r, c = packed.params["r"], packed.params["c"]
    rows, cols = packed.shape
    br, bc = _grid(rows, cols, r, c)
    blocks = packed.arrays["blocks"]
    bbits = bits_of(blocks)
    tiles = np.zeros((br, bc, r, c), dtype=bbits.dtype)
    tiles[block_rows(packed.arrays["indptr"]), packed.arrays["indices"]] = bbits
    dense = tiles.transpose(0, 2, 1, 3).reshape(br * r, bc * c)[:rows, :cols]
    return from_bits(np.ascontiguousarray(dense), packed.dtype)
