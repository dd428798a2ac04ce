"""Size accounting: packed bytes against the information bound (values + mask entropy) and zlib.

Bound per weight (b = value bits): unstructured density d costs d*b + H(d) bits, H the binary entropy;
an N:M pattern costs (N/M)*b + log2(C(M,N))/M bits (N value slots a group, padding included).

Where a format cannot reach 1.05x the bound, and why (512x512 random matrices):
- bitmask pays 1 bit a weight for the mask against H(d) < 1 bit: 1.00x at 50% density, but at 75%
  sparsity fp16 is 1.04x and int8 1.07x, at 90% fp32 1.14x / fp16 1.26x, at 95% 1.38x / 1.67x.
  Only an entropy-coded mask (run lengths, arithmetic coding) closes that gap.
- coo spends 64 bits of index a non-zero (the ONNX SparseTensorProto layout): 2.5x to 7x.
- bsr keeps whole blocks: on unstructured masks most blocks hold a non-zero (a 1x4 block at 50%
  density is kept with p = 0.94), so it stores near-dense values plus int32 indices (2x to 10x); it
  approaches the bound only for masks pruned in the same blocks.
- nm with the 2-bit hardware metadata pays 1 bit a weight for 2:4 against log2(6)/4 = 0.646:
  fp32 1.02x, fp16 1.04x, int8 1.08x (misses). `compact=True` (0.667 bit a weight, three groups a
  byte) stays within 1.005x for all three.
- zlib level 9 of the dense bytes models neither the mask nor the values: 1.04x to 1.4x.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

from onnxprune.core.errors import TargetError
from onnxprune.pack.formats import encode
from onnxprune.pack.formats.base import matrix_bits, nonzero


def binary_entropy(d: float) -> float:
    """H(d) in bits; 0 at d = 0 or 1."""
    if d <= 0.0 or d >= 1.0:
        return 0.0
    return -d * math.log2(d) - (1.0 - d) * math.log2(1.0 - d)


def information_bound_bits(matrix: np.ndarray, pattern="unstructured") -> float:
    """Least bits to store `matrix` with a mask of `pattern`: "unstructured" or ("nm", N, M)."""
    bits = matrix_bits(matrix, "matrix")
    value_bits = 8 * bits.dtype.itemsize
    if pattern == "unstructured":
        d = float(nonzero(bits).mean())
        return bits.size * (d * value_bits + binary_entropy(d))
    if isinstance(pattern, tuple) and len(pattern) == 3 and pattern[0] == "nm":
        _, n, m = pattern
        return bits.size * (n * value_bits + math.log2(math.comb(m, n))) / m
    raise TargetError(f"size pattern {pattern!r} is unknown; use 'unstructured' or ('nm', N, M)")


def _label(name: str, params: dict) -> str:
    return name + "".join(f" {k}={v}" for k, v in params.items())


DEFAULT_FORMATS = ("bitmask", "coo", ("bsr", {"r": 1, "c": 4}), ("bsr", {"r": 4, "c": 4}))


def size_table(matrix: np.ndarray, formats=DEFAULT_FORMATS) -> list[dict]:
    """One row per format (a name or (name, params)), plus "dense" and "zlib9" rows.

    Each row: format, bytes, bound_bytes and ratio (bytes / bound). The bound is the N:M one for `nm`,
    the unstructured one otherwise. A format the matrix does not fit (nm on a non-N:M matrix) raises.
    """
    unstructured = information_bound_bits(matrix) / 8
    dense = np.ascontiguousarray(matrix)
    rows = [("dense", dense.nbytes, unstructured), ("zlib9", len(zlib.compress(dense.tobytes(), 9)), unstructured)]
    for spec in formats:
        name, params = (spec, {}) if isinstance(spec, str) else spec
        packed = encode(name, matrix, **params)
        bound = unstructured
        if name == "nm":
            bound = information_bound_bits(matrix, ("nm", packed.params["n"], packed.params["m"])) / 8
        rows.append((_label(name, params), packed.nbytes, bound))
    return [
        {"format": f, "bytes": int(b), "bound_bytes": bound, "ratio": b / bound if bound else math.inf}
        for f, b, bound in rows
    ]
