"""Portable decoders: store a packed weight in an ONNX model and rebuild it at load with standard ops.

`decoder_graph` returns initializers holding the packed arrays and nodes whose output is the dense
weight, so any runtime (onnxruntime 1.17+) runs the smaller file. The ops used (BitShift, CumSum, Gather,
ScatterND, ScatterElements, Range, ReduceSum, Unsqueeze, ...) need opset 11 or later; pass the model's
opset as `opset` so ReduceSum/Unsqueeze take their axes the way that opset wants (attribute below 13,
input from 13). The dense weight is rebuilt bit for bit: values are only copied, never converted. Every
decoder has static output shapes (no NonZero), so onnxruntime constant-folds it at session creation and
the weight reaches its op as an initializer, exactly as in the dense model (same kernels, same outputs).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.core.errors import TargetError
from onnxprune.pack.formats.base import PackedTensor


class _Builder:
    """Collects initializers and nodes under one name prefix."""

    def __init__(self, prefix: str, opset: int = 13):
        self.prefix = prefix
        self.opset = opset
        self.inits: list[onnx.TensorProto] = []
        self.nodes: list[onnx.NodeProto] = []
        self._ints: dict[tuple, str] = {}

    def const(self, tag: str, array) -> str:
        name = f"{self.prefix}_{tag}"
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def i64(self, values) -> str:
        """A shared int64 constant (shapes, axes, scalars)."""
        a = np.asarray(values, dtype=np.int64)
        key = (a.shape, a.tobytes())
        if key not in self._ints:
            self._ints[key] = self.const(f"i64_{len(self._ints)}", a)
        return self._ints[key]

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        out = out or f"{self.prefix}_{op_type.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def reduce_sum(self, tensor: str, axes: list[int], keepdims: int) -> str:
        if self.opset >= 13:
            return self.op("ReduceSum", [tensor, self.i64(axes)], keepdims=keepdims)
        return self.op("ReduceSum", [tensor], axes=list(axes), keepdims=keepdims)

    def unsqueeze(self, tensor: str, axes: list[int]) -> str:
        if self.opset >= 13:
            return self.op("Unsqueeze", [tensor, self.i64(axes)])
        return self.op("Unsqueeze", [tensor], axes=list(axes))

    def int64(self, tensor: str) -> str:
        return self.op("Cast", [tensor], to=onnx.TensorProto.INT64)

    def zeros(self, shape: tuple[int, ...], dtype: np.dtype) -> str:
        value = numpy_helper.from_array(np.zeros(1, dtype=dtype), "zero")
        return self.op("ConstantOfShape", [self.i64(shape)], value=value)

    def unpack_bits(self, packed_bytes: str) -> str:
        """uint8 (..., 1) -> its 8 bits (..., 8), little bit order, as uint8 0/1."""
        left = self.const("shift_left", np.arange(7, -1, -1, dtype=np.uint8))
        high = self.op("BitShift", [packed_bytes, left], direction="LEFT")
        return self.op("BitShift", [high, self.const("shift_right", np.array([7], dtype=np.uint8))], direction="RIGHT")


def _bitmask(b: _Builder, packed: PackedTensor) -> str:
    """dense[i] = [0, values...][bit[i] * cumsum(bits)[i]]: no NonZero, whose data-dependent shape keeps
    onnxruntime from constant-folding the decoder (the weight would then feed its op as a run-time
    tensor and the op could pick another kernel, changing the model's outputs)."""
    size = int(np.prod(packed.shape))
    mask = b.const("mask", packed.arrays["mask"].reshape(-1, 1))
    flat = b.op("Reshape", [b.unpack_bits(mask), b.i64([-1])])
    bits = b.int64(b.op("Slice", [flat, b.i64([0]), b.i64([size])]))
    rank = b.op("CumSum", [bits, b.i64(0)])
    idx = b.op("Mul", [bits, rank])
    values = packed.arrays["values"]
    padded = np.concatenate([np.zeros(1, dtype=values.dtype), values.reshape(-1)])
    return b.op("Gather", [b.const("values", padded), idx], axis=0)


def _coo(b: _Builder, packed: PackedTensor) -> str:
    size = int(np.prod(packed.shape))
    idx = b.const("indices", packed.arrays["indices"].reshape(-1, 1))
    return b.op("ScatterND", [b.zeros((size,), packed.dtype), idx, b.const("values", packed.arrays["values"])])


def _nm(b: _Builder, packed: PackedTensor) -> str:
    n, m = packed.params["n"], packed.params["m"]
    if packed.params["compact"]:
        raise TargetError(f"{b.prefix}: compact N:M metadata has no portable decoder; encode with compact=False")
    rows, cols = packed.shape
    count = cols // m * n
    width = m.bit_length() - 1
    meta = b.const("metadata", packed.arrays["metadata"].reshape(rows, -1, 1))
    bits = b.op("Reshape", [b.unpack_bits(meta), b.i64([rows, -1])])
    bits = b.op("Slice", [bits, b.i64([0]), b.i64([count * width]), b.i64([1])])
    bits = b.int64(b.op("Reshape", [bits, b.i64([rows, count, width])]))
    weighted = b.op("Mul", [bits, b.i64(1 << np.arange(width))])
    pos = b.reduce_sum(weighted, [-1], keepdims=0)
    slot = b.op("Range", [b.i64(0), b.i64(count), b.i64(1)])
    base = b.op("Mul", [b.op("Div", [slot, b.i64(n)]), b.i64(m)])
    col = b.op("Add", [pos, base])
    values = b.const("values", packed.arrays["values"])
    return b.op("ScatterElements", [b.zeros((rows, cols), packed.dtype), col, values], axis=1)


def _bsr(b: _Builder, packed: PackedTensor) -> str:
    r, c = packed.params["r"], packed.params["c"]
    rows, cols = packed.shape
    br, bc = -(-rows // r), -(-cols // c)
    nblocks = len(packed.arrays["indices"])
    ends = b.op("Slice", [b.int64(b.const("indptr", packed.arrays["indptr"])), b.i64([1]), b.i64([br + 1])])
    k = b.unsqueeze(b.op("Range", [b.i64(0), b.i64(nblocks), b.i64(1)]), [1])
    past = b.op("Not", [b.op("Less", [k, ends])])  # k >= end of the block row (GreaterOrEqual needs opset 12)
    block_row = b.reduce_sum(b.int64(past), [1], keepdims=1)
    block_col = b.unsqueeze(b.int64(b.const("indices", packed.arrays["indices"])), [1])
    idx = b.op("Concat", [block_row, block_col], axis=1)
    blocks = b.const("blocks", packed.arrays["blocks"])
    tiles = b.op("ScatterND", [b.zeros((br, bc, r, c), packed.dtype), idx, blocks])
    padded = b.op("Reshape", [b.op("Transpose", [tiles], perm=[0, 2, 1, 3]), b.i64([br * r, bc * c])])
    return b.op("Slice", [padded, b.i64([0, 0]), b.i64([rows, cols])])


_DECODERS = {"bitmask": _bitmask, "coo": _coo, "nm": _nm, "bsr": _bsr}


MIN_OPSET = 11


def decoder_graph(
    packed: PackedTensor, out_name: str, out_shape_nd: tuple, prefix: str, perm: tuple | None = None,
    opset: int = 13,
) -> tuple[list[onnx.TensorProto], list[onnx.NodeProto]]:
    """Initializers and nodes that rebuild `packed` as `out_name`: the matrix reshaped to `out_shape_nd`,
    then transposed by `perm` when given. All names start with `prefix`. `opset` is the default-domain
    opset of the model the nodes go into (11 or later)."""
    if packed.format not in _DECODERS:
        known = ", ".join(_DECODERS)
        raise TargetError(f"{prefix}: format {packed.format!r} has no portable decoder; use one of {known}")
    if int(np.prod(out_shape_nd)) != int(np.prod(packed.shape)):
        raise TargetError(
            f"{prefix}: shape {tuple(out_shape_nd)} does not hold the {packed.shape} matrix; pass the weight's own shape"
        )
    if opset < MIN_OPSET:
        raise TargetError(f"{prefix}: portable decoders need opset {MIN_OPSET} or later, the model has {opset}; "
                          "convert it with onnx.version_converter or emit dense")
    b = _Builder(prefix, opset)
    dense = _DECODERS[packed.format](b, packed)
    shape = b.i64(list(out_shape_nd))
    if perm is None:
        b.op("Reshape", [dense, shape], out=out_name)
    else:
        b.op("Transpose", [b.op("Reshape", [dense, shape])], out=out_name, perm=list(perm))
    return b.inits, b.nodes
