"""Stored values, decoded one way: the (scale, zero point) of a DequantizeLinear or of an integer
op's weight, shaped to broadcast along its axis, and the exact bit patterns of an array."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from onnxprune.core.graph import attrs

Read = Callable[[str], np.ndarray]


def quant_params(read: Read, scale: str | None, zero_point: str | None, axis: int, ndim: int,
                 zp_dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero point) read by name (no scale: one, float32; no zero point: 0 of `zp_dtype`), in
    their stored dtypes; per-axis values are shaped to broadcast along `axis` of a rank-`ndim` tensor."""
    s = np.asarray(read(scale)) if scale else np.ones((), np.float32)
    zp = np.asarray(read(zero_point)) if zero_point else np.zeros((), dtype=zp_dtype)
    per_axis = max(s.size, zp.size)
    if per_axis > 1:
        shape = [1] * ndim
        shape[axis % ndim] = per_axis
        s = s.reshape(shape) if s.size > 1 else s.reshape(())
        zp = zp.reshape(shape) if zp.size > 1 else zp.reshape(())
    return s, zp


def dq_params(dq: onnx.NodeProto, read: Read, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero point) of a DequantizeLinear of constants, float64, for an input of rank `ndim`."""
    zp = dq.input[2] if len(dq.input) > 2 and dq.input[2] else None
    scale, zp = quant_params(read, dq.input[1], zp, attrs(dq).get("axis", 1), ndim, np.float64)
    return scale.astype(np.float64), zp.astype(np.float64)


def dequantized(dq: onnx.NodeProto, read: Read) -> np.ndarray:
    """The real values a DequantizeLinear of constants yields: (q - zero_point) * scale."""
    q = np.asarray(read(dq.input[0]), dtype=np.float64)
    scale, zp = dq_params(dq, read, q.ndim)
    return (q - zp) * scale


def bit_view(a: np.ndarray) -> np.ndarray:
    """The values as unsigned integers of the same width (bit patterns: -0.0 != 0.0, NaN == same NaN);
    other widths as bytes, on an extra last axis."""
    a = np.ascontiguousarray(a)
    if a.itemsize in (1, 2, 4, 8):
        return a.view(f"u{a.itemsize}")
    return a.view(np.uint8).reshape(a.shape + (a.itemsize,))
