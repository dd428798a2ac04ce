"""COO format, as ONNX `SparseTensorProto` stores it: values plus ascending int64 linearized indices."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.core.errors import TargetError
from onnxprune.pack.formats.base import (
    PackedTensor,
    bits_of,
    from_bits,
    matrix_bits,
    nonzero,
)

NAME = "coo"


def encode(matrix: np.ndarray, *, name: str = "weight") -> PackedTensor:
    """Pack a 2-D matrix into values + linearized indices."""
    bits = matrix_bits(matrix, name)
    flat = bits.ravel()
    idx = np.flatnonzero(nonzero(flat))
    arrays = {"values": from_bits(flat[idx], matrix.dtype), "indices": idx.astype(np.int64)}
    return PackedTensor(NAME, bits.shape, np.dtype(matrix.dtype), arrays, {})


def _scatter(shape: tuple[int, ...], dtype: np.dtype, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
    vbits = bits_of(values)
    out = np.zeros(int(np.prod(shape)), dtype=vbits.dtype)
    out[indices] = vbits
    return from_bits(out, dtype).reshape(shape)


def decode(packed: PackedTensor) -> np.ndarray:
    """Rebuild the dense 2-D matrix bit for bit."""
    return _scatter(packed.shape, packed.dtype, packed.arrays["indices"], packed.arrays["values"])


def to_sparse_tensor_proto(name: str, array_nd: np.ndarray) -> onnx.SparseTensorProto:
    """An exact `SparseTensorProto` (linearized [NNZ] indices) of an array of rank 1 or more."""
    a = np.asarray(array_nd)
    if a.ndim == 0:
        raise TargetError(f"{name}: ONNX sparse tensors need rank >= 1; store the scalar as a dense initializer")
    packed = encode(a.reshape(1, -1), name=name)
    values = numpy_helper.from_array(packed.arrays["values"], name)
    indices = numpy_helper.from_array(packed.arrays["indices"], f"{name}_indices")
    return onnx.helper.make_sparse_tensor(values, indices, list(a.shape))


def from_sparse_tensor_proto(sp: onnx.SparseTensorProto) -> np.ndarray:
    """The dense N-D array of a `SparseTensorProto` with [NNZ] or [NNZ, rank] indices, bit for bit."""
    shape = tuple(int(d) for d in sp.dims)
    values = numpy_helper.to_array(sp.values)
    indices = numpy_helper.to_array(sp.indices).astype(np.int64)
    if indices.ndim == 2:
        indices = np.ravel_multi_index(tuple(indices.T), shape) if indices.size else indices.reshape(-1)
    if indices.shape != values.shape[:1]:
        raise TargetError(
            f"{sp.values.name}: sparse indices {indices.shape} do not match values {values.shape}; re-export the tensor"
        )
    return _scatter(shape, values.dtype, indices, values)
