"""A main graph's constants (initializers and Constant nodes) by name: their values, shapes and count,
and a reader that takes a weight from the model (lazily, external data too) where it can."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper

from onnxprune.core.model import Model


def constant_values(graph: onnx.GraphProto) -> dict[str, tuple[str, Any]]:
    """name -> ("initializer", TensorProto) | ("constant", (node index, NodeProto)) of the main graph."""
    consts: dict[str, tuple[str, Any]] = {t.name: ("initializer", t) for t in graph.initializer}
    for i, n in enumerate(graph.node):
        if n.op_type == "Constant" and n.output and n.output[0]:
            consts[n.output[0]] = ("constant", (i, n))
    return consts


def constant_array(entry: tuple[str, Any]) -> np.ndarray:
    kind, obj = entry
    if kind == "initializer":
        return onnx.numpy_helper.to_array(obj)
    node = obj[1]
    a = node.attribute[0]
    if a.name == "value":
        return onnx.numpy_helper.to_array(a.t)
    if a.name == "sparse_value":
        raise ValueError("sparse Constant")
    v = onnx.helper.get_attribute_value(a)
    if a.name in ("value_float", "value_int"):
        return np.array(v, dtype=np.float32 if a.name == "value_float" else np.int64)
    if a.name in ("value_floats", "value_ints"):
        return np.array(v, dtype=np.float32 if a.name == "value_floats" else np.int64)
    raise ValueError(f"Constant attribute {a.name}")


def constant_shape(entry: tuple[str, Any]) -> tuple[int, ...]:
    kind, obj = entry
    if kind == "initializer":
        return tuple(obj.dims)
    a = obj[1].attribute[0]
    if a.name == "value":
        return tuple(a.t.dims)
    if a.name in ("value_floats", "value_ints"):
        return (len(onnx.helper.get_attribute_value(a)),)
    return ()


def model_params(proto: onnx.ModelProto) -> int:
    """Elements of every constant (initializers and Constant nodes) of the main graph."""
    return int(sum(int(np.prod(constant_shape(e), dtype=np.int64)) for e in constant_values(proto.graph).values()))


def weight_reader(model: Model | None, proto: onnx.ModelProto):
    """name -> values of a constant: from `model` (lazily, external data too) where it is a main-graph
    initializer, else from `proto`'s initializers and Constant nodes."""
    consts = constant_values(proto.graph)

    def read(name: str) -> np.ndarray:
        if model is not None:
            key = model.key_for(name)
            if key is not None and model.ref(key).storage == "initializer" and model.ref(key).graph == "":
                return np.asarray(model.read(key))
        return constant_array(consts[name])

    return read
