"""Bit-level helpers shared by the packed-format tests: exact comparisons and adversarial values."""

from __future__ import annotations

import numpy as np


def bits(a: np.ndarray) -> np.ndarray:
    """The values as unsigned integers of the same width (so -0.0 != 0.0 and NaN payloads compare)."""
    return np.ascontiguousarray(a).view(np.dtype(f"u{a.dtype.itemsize}"))


def random_bits(rng, shape, dtype, density) -> np.ndarray:
    """Random bit patterns (NaN payloads, infinities, denormals) with -0.0 sprinkled and zeros by `density`."""
    dtype = np.dtype(dtype)
    raw = rng.integers(0, 1 << (8 * dtype.itemsize), size=shape, dtype=np.dtype(f"u{dtype.itemsize}"))
    if dtype.kind == "f":
        raw[rng.random(shape) < 0.1] = 1 << (8 * dtype.itemsize - 1)
    raw[rng.random(shape) >= density] = 0
    return raw.view(dtype)
