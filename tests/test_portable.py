"""Portable decoders: packed weights rebuilt by standard ONNX ops in onnxruntime, bit for bit."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from bitpatterns import bits as _bits
from bitpatterns import random_bits as _random
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from onnxprune.core.errors import TargetError
from onnxprune.pack import formats as F
from onnxprune.pack.portable import decoder_graph

DTYPES = [np.float32, np.float16, np.int8]
SPECS = [
    ("bitmask", {}), ("coo", {}), ("bsr", {"r": 1, "c": 4}), ("bsr", {"r": 3, "c": 2}),
    ("nm", {"n": 2, "m": 4}), ("nm", {"n": 1, "m": 2}),
]


def _run(model: onnx.ModelProto, feeds=None) -> np.ndarray:
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds or {})[0]


def _decode_model(packed, shape_nd, perm=None, opset=13) -> onnx.ModelProto:
    inits, nodes = decoder_graph(packed, "W", shape_nd, "w0", perm=perm)
    out_shape = list(shape_nd) if perm is None else [shape_nd[p] for p in perm]
    out = helper.make_tensor_value_info("W", helper.np_dtype_to_tensor_dtype(packed.dtype), out_shape)
    graph = helper.make_graph(nodes, "decode", [], [out], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _fit(w: np.ndarray, name: str, params: dict) -> np.ndarray:
    """Make `w` acceptable to the format: N:M keeps the first N non-zeros of each group, cropped to M."""
    if name != "nm":
        return w
    n, m = params["n"], params["m"]
    cols = w.shape[1] // m * m or m
    w = np.resize(w, (w.shape[0], cols)).copy()
    groups = _bits(w).reshape(w.shape[0], -1, m)
    groups[np.cumsum(groups != 0, axis=-1) > n] = 0
    return w


@settings(max_examples=80, deadline=None)
@given(
    st.integers(1, 40), st.integers(1, 70), st.sampled_from(DTYPES), st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    st.sampled_from(SPECS), st.sampled_from([13, 18]), st.integers(0, 2**32 - 1),
)
def test_decoder_rebuilds_weight_bit_exact(rows, cols, dtype, density, spec, opset, seed):
    name, params = spec
    w = _fit(_random(np.random.default_rng(seed), (rows, cols), dtype, density), name, params)
    packed = F.encode(name, w, **params)
    out = _run(_decode_model(packed, (w.shape[0], 1, w.shape[1]), opset=opset))
    assert out.dtype == w.dtype and out.shape == (w.shape[0], 1, w.shape[1])
    assert np.array_equal(_bits(out).ravel(), _bits(w).ravel())


@pytest.mark.parametrize("name,params", SPECS)
def test_decoded_weight_feeds_matmul_with_transpose(name, params):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((12, 16)).astype(np.float32)
    w[rng.random(w.shape) < 0.5] = 0
    w = _fit(w, name, params)
    inits, nodes = decoder_graph(F.encode(name, w, **params), "W_t", (12, 16), "fc", perm=(1, 0))
    nodes.append(helper.make_node("MatMul", ["x", "W_t"], ["y"]))
    graph = helper.make_graph(
        nodes, "fc", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [16, 16])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [16, 12])], initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    y = _run(model, {"x": np.eye(16, dtype=np.float32)})
    assert np.array_equal(_bits(y), _bits(np.ascontiguousarray(w.T)))


def test_nan_payload_and_negative_zero_survive_onnxruntime():
    w = np.array([[0x7FA00001, 0x80000000, 0, 0xFFC12345]], dtype=np.uint32).view(np.float32)
    for name, params in [("bitmask", {}), ("coo", {}), ("bsr", {"r": 1, "c": 2}), ("nm", {"n": 3, "m": 4})]:
        out = _run(_decode_model(F.encode(name, w, **params), (4,)))
        assert np.array_equal(_bits(out), _bits(w).ravel())


def _dense_model(w: np.ndarray) -> onnx.ModelProto:
    out = helper.make_tensor_value_info("W", helper.np_dtype_to_tensor_dtype(w.dtype), list(w.shape))
    graph = helper.make_graph([helper.make_node("Identity", ["W_dense"], ["W"])], "dense", [], [out],
                              initializer=[numpy_helper.from_array(w, "W_dense")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("name,params", [("bitmask", {}), ("coo", {}), ("bsr", {"r": 1, "c": 4})])
def test_packed_model_smaller_than_dense_at_75_percent(name, params):
    rng = np.random.default_rng(7)
    w = rng.standard_normal((256, 256)).astype(np.float32)
    w[rng.random(w.shape) < 0.75] = 0
    packed_model = _decode_model(F.encode(name, w, **params), (256, 256))
    assert packed_model.ByteSize() < _dense_model(w).ByteSize()
    assert np.array_equal(_bits(_run(packed_model)), _bits(w))


def test_24_model_smaller_than_dense():
    w = _fit(np.random.default_rng(8).standard_normal((256, 256)).astype(np.float16), "nm", {"n": 2, "m": 4})
    packed_model = _decode_model(F.encode("nm", w), (256, 256))
    assert packed_model.ByteSize() < 0.6 * _dense_model(w).ByteSize()
    assert np.array_equal(_bits(_run(packed_model)), _bits(w))


def test_decoder_errors():
    w = np.zeros((4, 8), np.float32)
    with pytest.raises(TargetError, match="compact"):
        decoder_graph(F.encode("nm", w, compact=True), "W", (4, 8), "w")
    with pytest.raises(TargetError, match="does not hold"):
        decoder_graph(F.encode("coo", w), "W", (4, 4), "w")
    packed = F.encode("coo", w)
    packed.format = "csr"
    with pytest.raises(TargetError, match="no portable decoder"):
        decoder_graph(packed, "W", (4, 8), "w")
