"""The op registry: every registered spec agrees with the ONNX schema of its op, views each weight as a
matrix whose axes partition the weight's, counts the MACs of a tiny node as an independent count does,
and a spec registered for a custom-domain op makes that op's weight prunable end to end."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.analyze.weights import find_weights
from onnxprune.core.model import Model
from onnxprune.jobs.prune_job import PruneOptions, prune_model
from onnxprune.ops import all_specs, register, registry, spec_for
from onnxprune.ops.matmul import MatMulSpec

OPS = [(spec.domain, op) for spec in all_specs() for op in spec.op_types]
IDS = [f"{d}.{op}" if d else op for d, op in OPS]


@pytest.mark.parametrize(("domain", "op"), OPS, ids=IDS)
def test_weight_inputs_exist_in_the_schema(domain, op):
    spec = spec_for(op, domain)
    if domain:
        pytest.skip(f"{domain} ops have no schema in onnx.defs")
    inputs = [i.name for i in onnx.defs.get_schema(op).inputs]
    for index, role in spec.weight_inputs.items():
        assert index < len(inputs) and inputs[index].lower() == role.lower(), (op, index, role, inputs)
        if spec.zero_point(role) is not None:
            zp, scale = spec.zero_point(role)
            assert "zero_point" in inputs[zp], (op, role, inputs[zp])
            assert scale is None or "scale" in inputs[scale], (op, role, inputs[scale])


FIXED_RANK = {"Gemm", "QGemm", "LSTM", "GRU", "RNN"}  # weights of exactly min_rank


@pytest.mark.parametrize(("domain", "op"), OPS, ids=IDS)
@pytest.mark.parametrize("attrs", [{}, {"transA": 1, "transB": 1}])
def test_view_axes_partition_the_weight(domain, op, attrs):
    spec = spec_for(op, domain)
    for rank in range(spec.min_rank, spec.min_rank + (1 if op in FIXED_RANK else 3)):
        for role in spec.weight_inputs.values():
            rows, cols = spec.view_axes(role, rank, attrs)
            assert rows and cols, (op, role, rank)
            assert sorted(rows + cols) == list(range(rank)), (op, role, rank, rows, cols)


# ------------------------------------------------------------------------------------ MACs

def _conv(op: str, group: int):
    x, w = (1, 4, 7, 6), ((6, 4 // group, 3, 2) if op == "Conv" else (4, 6 // group, 3, 2))
    node = helper.make_node(op, ["x", "w"], ["y"], group=group, strides=[2, 1])
    # independent counts: every output (Conv) / input (ConvTranspose) element touches C/group x kernel weights
    if op == "Conv":
        out = 1 * 6 * ((7 - 3) // 2 + 1) * ((6 - 2) // 1 + 1)
        return node, {"x": x, "w": w}, out * (4 // group) * 3 * 2
    return node, {"x": x, "w": w}, math.prod(x) * (6 // group) * 3 * 2


def _rnn(op: str):
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    seq, batch, inp, hidden, dirs = 5, 2, 3, 4, 2
    node = helper.make_node(op, ["x", "w", "r"], ["y"], hidden_size=hidden, direction="bidirectional")
    shapes = {"x": (seq, batch, inp), "w": (dirs, gates * hidden, inp), "r": (dirs, gates * hidden, hidden)}
    return node, shapes, seq * batch * dirs * gates * hidden * (inp + hidden)  # each step: W x + R h per gate


MAC_CASES = {  # op -> (node, shapes of its inputs, independent MAC count); None: the op has no MAC rule
    "MatMul": (helper.make_node("MatMul", ["x", "w"], ["y"]), {"x": (3, 2, 5), "w": (5, 7)}, 3 * 2 * 7 * 5),
    "Gemm": (helper.make_node("Gemm", ["x", "w"], ["y"], transA=1, transB=1), {"x": (5, 3), "w": (7, 5)},
             3 * 7 * 5),
    "Conv": _conv("Conv", 1),
    "ConvTranspose": _conv("ConvTranspose", 2),
    "LSTM": _rnn("LSTM"),
    "GRU": _rnn("GRU"),
    "RNN": _rnn("RNN"),
    "ConvInteger": None,
    "MatMulInteger": None,
    "QLinearConv": None,
    "QLinearMatMul": None,
    "QGemm": None,
}


def _inferred_shapes(node: onnx.NodeProto, shapes: dict) -> dict:
    """Input shapes plus the output shape ONNX shape inference gives the node."""
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                                            for n, s in shapes.items()],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    inferred = onnx.shape_inference.infer_shapes(helper.make_model(graph), strict_mode=True)
    y = inferred.graph.output[0].type.tensor_type.shape
    return {**shapes, "y": tuple(d.dim_value for d in y.dim)}


@pytest.mark.parametrize(("domain", "op"), OPS, ids=IDS)
def test_macs_equal_an_independent_count(domain, op):
    spec = spec_for(op, domain)
    assert op in MAC_CASES, f"add a tiny {op} node and its MAC count to MAC_CASES"
    if MAC_CASES[op] is None:
        node = helper.make_node(op, [f"i{i}" for i in range(max(spec.weight_inputs) + 1)], ["y"])
        assert spec.macs(node, lambda name: (2, 2)) is None
        return
    node, shapes, expected = MAC_CASES[op]
    shapes = _inferred_shapes(node, shapes)
    assert spec.macs(node, shapes.get) == expected
    assert sum(spec.macs(node, shapes.get, i) for i in spec.weight_inputs if i > 0) == expected
    unknown = {n: tuple(None for _ in s) for n, s in shapes.items()}  # no dim known: no count
    assert spec.macs(node, lambda name: shapes[name] if name == node.input[1] else unknown[name]) is None


# ------------------------------------------------------------------------- a custom-domain op

class MyMatMulSpec(MatMulSpec):
    op_types = ("MyMatMul",)
    domain = "mydomain"


def test_a_custom_domain_op_is_prunable_end_to_end(monkeypatch):
    monkeypatch.setattr(registry, "_SPECS", dict(registry._SPECS))  # the registration ends with the test
    w = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MyMatMul", ["x", "w"], ["y"], domain="mydomain")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 64))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, (1, 32))], [numpy_helper.from_array(w, "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("mydomain", 1)])
    assert find_weights(Model(proto)).weights == []  # no spec: not a weight op

    register(MyMatMulSpec())
    model = Model(proto)
    (weight,) = find_weights(model).weights
    assert (weight.op, weight.uses[0].role, weight.rows, weight.cols) == ("MyMatMul", "B", 32, 64)
    prune_model(model, PruneOptions(sparsity=0.5))
    pruned = model.read(weight.key)
    assert (pruned == 0).mean() == 0.5
    kept = np.abs(w[pruned != 0]).min()
    assert kept >= np.abs(w[pruned == 0]).max()  # magnitude pruning kept the largest half
