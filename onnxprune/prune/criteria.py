"""Scoring functions: higher score = more important weight. A criterion is one function.

`criterion(weight, stored, ctx) -> scores` gets the Weight (analysis), its stored values and the
pipeline context, and returns float scores in the stored layout. Weights behind
DequantizeLinear are scored in real units: |q - zero_point| * scale.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from onnxprune.analyze.weights import Weight
from onnxprune.core.errors import OptionError


def dequant_params(weight: Weight, model) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero_point) of a quantized weight, broadcastable to its stored layout."""
    q = weight.quant
    assert q is not None
    scale = model.read(q.scale).astype(np.float32) if q.scale else np.ones((), np.float32)  # integer ops: one
    zp = model.read(q.zero_point) if q.zero_point else np.zeros((), dtype=weight.dtype)      # scale, applied later
    per_axis = max(scale.size, zp.size)
    if per_axis > 1:  # per-axis along q.axis of the stored tensor
        shape = [1] * len(weight.shape)
        shape[q.axis % len(weight.shape)] = per_axis
        scale = scale.reshape(shape) if scale.size > 1 else scale.reshape(())
        zp = zp.reshape(shape) if zp.size > 1 else zp.reshape(())  # no zero point: one scalar 0
    return scale, zp


def zero_value(weight: Weight, model) -> np.ndarray:
    """The stored value that means "pruned": 0, or the zero point for quantized weights."""
    if weight.quant is None:
        return np.zeros((), dtype=weight.dtype)
    return dequant_params(weight, model)[1]


def magnitude(weight: Weight, stored: np.ndarray, ctx) -> np.ndarray:
    if weight.quant is not None:
        scale, zp = dequant_params(weight, ctx.model)
        return np.abs(stored.astype(np.float32) - zp.astype(np.float32)) * scale
    return np.abs(stored.astype(np.float32, copy=False))


def wanda(weight: Weight, stored: np.ndarray, ctx) -> np.ndarray:
    """|W_ij| * ||X_j||_2 from calibration data (prune/calibrated.py; needs ctx.data)."""
    from onnxprune.prune.calibrated import wanda as score

    return score(weight, stored, ctx)


def sparsegpt(weight: Weight, stored: np.ndarray, ctx) -> np.ndarray:
    """OBS saliency w^2 / [H^-1]_jj^2 (prune/calibrated.py); the full SparseGPT with weight
    updates runs in CalibratedPrunePass."""
    from onnxprune.prune.calibrated import sparsegpt_score as score

    return score(weight, stored, ctx)


CRITERIA: dict[str, Callable] = {"magnitude": magnitude, "wanda": wanda, "sparsegpt": sparsegpt}


def get(name: str) -> Callable:
    try:
        return CRITERIA[name]
    except KeyError:
        raise OptionError(f"criterion {name!r} is unknown; choose one of {', '.join(sorted(CRITERIA))}") from None
