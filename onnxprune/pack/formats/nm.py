"""N:M structured sparsity (e.g. 2:4), as NVIDIA sparse tensor cores take it.

Each row is cut into groups of M consecutive weights; each group keeps exactly N slots. Arrays:
`values` (rows, cols*N/M) in the weight dtype and `metadata`, the position (0..M-1) of every kept slot.

Metadata forms:
- default (hardware): log2(M) bits per index (M a power of two), positions ascending within a group,
  packed little-endian into uint8 per row: for 2:4, 2 bits an index, 4 bits a group, two groups a byte.
  This is the layout sparse tensor cores (and cuSPARSELt) consume.
- `compact=True` (storage only): each group's subset as its colex rank among the C(M,N) subsets,
  packed over the whole matrix in base C(M,N) words of the fewest bytes that hold one subset, as many
  groups a word as fit (2:4: 3 groups a byte, 6^3 = 216 <= 256). That is 2.67 bits a 2:4 group against
  the log2(6) = 2.585 bound; hardware needs the 2-bit form, so decode and re-encode before deployment.

A group with fewer than N non-zeros is padded with zero values at its lowest unused positions.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from onnxprune.core.errors import TargetError
from onnxprune.pack.formats.base import (
    PackedTensor,
    bits_of,
    from_bits,
    matrix_bits,
    nonzero,
)

NAME = "nm"
_MAX_SUBSETS = 1 << 16


def _check(cols: int, n: int, m: int, compact: bool, name: str) -> None:
    if not 1 <= n < m:
        raise TargetError(f"{name}: {n}:{m} sparsity is invalid; use 1 <= N < M (N = M is dense: store it dense)")
    if not compact and m & (m - 1):
        raise TargetError(f"{name}: {n}:{m} metadata needs M a power of two; use a power-of-two M or compact=True")
    if compact and math.comb(m, n) > _MAX_SUBSETS:
        raise TargetError(f"{name}: {n}:{m} has too many subsets for compact metadata; use compact=False")
    if cols % m:
        raise TargetError(f"{name}: {cols} columns are not a multiple of M={m}; pad the reduction axis or change M")


def _positions(nz: np.ndarray, n: int, name: str) -> np.ndarray:
    """Kept slots (rows, groups, n): the non-zeros plus the lowest unused positions as padding."""
    count = nz.sum(axis=-1)
    if (count > n).any():
        row, group = np.argwhere(count > n)[0]
        raise TargetError(
            f"{name}: row {row}, group {group} has {count[row, group]} non-zeros, more than N={n}; prune to N:M first"
        )
    free = ~nz
    pad = free & (np.cumsum(free, axis=-1) <= (n - count)[..., None])
    keep = nz | pad
    m = nz.shape[-1]
    return (np.flatnonzero(keep) % m).reshape(*nz.shape[:-1], n)


def _colex_rank(pos: np.ndarray, m: int) -> np.ndarray:
    """Colex rank sum_i C(pos_i, i+1) of each row of ascending positions (the last axis)."""
    n = pos.shape[-1]
    binom = np.array([[math.comb(p, i + 1) for i in range(n)] for p in range(m)], dtype=np.uint64)
    return binom[pos, np.arange(n)].sum(axis=-1, dtype=np.uint64)


def _subsets(m: int, n: int) -> np.ndarray:
    """All n-subsets of range(m), ascending positions, indexed by colex rank."""
    combos = np.array(list(itertools.combinations(range(m), n)), dtype=np.int64)
    ranks = _colex_rank(combos, m).astype(np.int64)
    out = np.empty_like(combos)
    out[ranks] = combos
    return out


def _word(radix: int) -> tuple[int, int]:
    """(bytes a word, subsets a word) of the base-`radix` word with the fewest bits a subset."""
    options = []
    for nbytes in (1, 2, 4, 8):
        per_word = 0
        while radix ** (per_word + 1) <= 1 << (8 * nbytes):
            per_word += 1
        if per_word:
            options.append((8 * nbytes / per_word, nbytes, per_word))
    _, nbytes, per_word = min(options)
    return nbytes, per_word


def _pack_compact(pos: np.ndarray, m: int, n: int) -> np.ndarray:
    ranks = _colex_rank(pos.reshape(-1, n), m)
    radix = math.comb(m, n)
    nbytes, per_word = _word(radix)
    digits = np.zeros(-(-ranks.size // per_word) * per_word, dtype=np.uint64)
    digits[: ranks.size] = ranks
    powers = np.array([radix**k for k in range(per_word)], dtype=np.uint64)
    words = (digits.reshape(-1, per_word) * powers).sum(axis=1, dtype=np.uint64)
    return words.astype(f"<u{nbytes}").view(np.uint8)


def _unpack_compact(meta: np.ndarray, groups: int, m: int, n: int) -> np.ndarray:
    radix = math.comb(m, n)
    nbytes, per_word = _word(radix)
    words = meta.view(f"<u{nbytes}").astype(np.uint64)
    powers = np.array([radix**k for k in range(per_word)], dtype=np.uint64)
    ranks = (words[:, None] // powers) % np.uint64(radix)
    return _subsets(m, n)[ranks.ravel()[:groups].astype(np.int64)]


def _pack_indices(pos: np.ndarray, m: int) -> np.ndarray:
    """Per row, log2(m) bits an index, little-endian, into uint8."""
    width = m.bit_length() - 1
    rows = pos.shape[0]
    bits = (pos.reshape(rows, -1, 1) >> np.arange(width)) & 1
    return np.packbits(bits.reshape(rows, -1).astype(np.uint8), axis=-1, bitorder="little")


def _unpack_indices(meta: np.ndarray, count: int, m: int) -> np.ndarray:
    """The (rows, count) positions of the 2-bit-style metadata: the inverse of the hardware packing."""
    width = m.bit_length() - 1
    bits = np.unpackbits(meta, axis=-1, count=count * width, bitorder="little")
    return (bits.reshape(meta.shape[0], count, width).astype(np.int64) << np.arange(width)).sum(axis=-1)


def encode(matrix: np.ndarray, *, n: int = 2, m: int = 4, compact: bool = False, name: str = "weight") -> PackedTensor:
    """Pack a 2-D matrix that already follows N:M along its rows."""
    bits = matrix_bits(matrix, name)
    rows, cols = bits.shape
    _check(cols, n, m, compact, name)
    groups = bits.reshape(rows, cols // m, m)
    pos = _positions(nonzero(groups), n, name)
    values = np.take_along_axis(groups, pos, axis=-1).reshape(rows, -1)
    meta = _pack_compact(pos, m, n) if compact else _pack_indices(pos, m)
    arrays = {"values": from_bits(values, matrix.dtype), "metadata": meta}
    return PackedTensor(NAME, bits.shape, np.dtype(matrix.dtype), arrays, {"n": n, "m": m, "compact": compact})


def positions(packed: PackedTensor) -> np.ndarray:
    """The (rows, cols*N/M) in-group position of every stored value."""
    n, m = packed.params["n"], packed.params["m"]
    rows, cols = packed.shape
    count = cols // m * n
    if packed.params["compact"]:
        return _unpack_compact(packed.arrays["metadata"], rows * cols // m, m, n).reshape(rows, count)
    return _unpack_indices(packed.arrays["metadata"], count, m)


def decode(packed: PackedTensor) -> np.ndarray:
    """Rebuild the dense 2-D matrix bit for bit."""
    n, m = packed.params["n"], packed.params["m"]
    rows, cols = packed.shape
    vbits = bits_of(packed.arrays["values"]).reshape(rows, -1, n)
    out = np.zeros((rows, cols // m, m), dtype=vbits.dtype)
    np.put_along_axis(out, positions(packed).reshape(rows, -1, n), vbits, axis=-1)
    return from_bits(out.reshape(rows, cols), packed.dtype)
