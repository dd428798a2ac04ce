"""The op registry: every registered spec agrees with the ONNX schema of its op, views each weight as a
matrix whose axes partition the weight's, counts the MACs of a tiny node as an independent count does,
a spec registered for a custom-domain op makes that op's weight prunable end to end, and each refit
spec's matrix form reproduces its op and writes back unchanged, and each linking spec groups a layer's
output channels with its consumer's input columns."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnxprune.analyze.groups import analyze_groups
from onnxprune.analyze.weights import find_weights
from onnxprune.core.model import Model
from onnxprune.jobs.prune_job import PruneOptions, prune_model
from onnxprune.ops import OpSpec, all_specs, register, registry, spec_for
from onnxprune.ops.matmul import MatMulSpec
from onnxprune.repair.structured_repair import _im2col

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


# ------------------------------------------------------------------- the structured refit

REFIT_OPS = [(d, op) for d, op in OPS if spec_for(op, d).refit_axes(helper.make_node(op, ["x", "w"], ["y"])) is not None]


def _refit_case(op: str, rng):
    """(graph nodes, weight of node 0, (node, input, bias) or None, x, expected pre-activation rows
    (rows, outs))."""
    if op == "Conv":
        w, b, x = rng.standard_normal((5, 3, 3, 2)), rng.standard_normal(5), rng.standard_normal((2, 3, 6, 5))
        node = helper.make_node(op, ["x", "w", "b"], ["y"], strides=[2, 1], pads=[1, 0, 1, 1], dilations=[1, 2])
        y = ReferenceEvaluator(node).run(None, {"x": x, "w": w, "b": b})[0]
        return [node], w, (0, 2, b), x, y.transpose(0, 2, 3, 1).reshape(-1, 5)
    if op == "Gemm":
        w, c, x = rng.standard_normal((5, 4)), rng.standard_normal(5), rng.standard_normal((4, 3))
        node = helper.make_node(op, ["x", "w", "c"], ["y"], transA=1, transB=1, alpha=0.5, beta=2.0)
        return [node], w, (0, 2, c), x, ReferenceEvaluator(node).run(None, {"x": x, "w": w, "c": c})[0]
    if op == "MatMul":
        w, c, x = rng.standard_normal((4, 5)), rng.standard_normal((1, 5)), rng.standard_normal((2, 3, 4))
        nodes = [helper.make_node(op, ["x", "w"], ["y"]), helper.make_node("Add", ["c", "y"], ["z"])]
        return nodes, w, (1, 0, c), x, (x @ w + c).reshape(-1, 5)
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]  # the input projection W x + Wb of each direction
    w, bb, x = rng.standard_normal((2, gates * 3, 4)), rng.standard_normal((2, 2 * gates * 3)), rng.standard_normal((5, 2, 4))
    node = helper.make_node(op, ["x", "w", "r", "b"], ["y"], hidden_size=3, direction="bidirectional")
    expected = np.einsum("sbi,dgi->sbdg", x, w) + bb[:, :gates * 3]
    return [node], w, (0, 3, bb), x, expected.reshape(10, -1)


@pytest.mark.parametrize(("domain", "op"), REFIT_OPS, ids=[f"{d}.{op}" if d else op for d, op in REFIT_OPS])
def test_refit_matrix_reproduces_the_op_and_writes_back_unchanged(domain, op):
    spec = spec_for(op, domain)
    nodes, w, bias, x, expected = _refit_case(op, np.random.default_rng(0))
    node = nodes[0]
    consts = {(0, 1): w} | ({bias[:2]: bias[2]} if bias else {})
    refit = spec.refit(node, 0, w, None, helper.make_graph(nodes, "g", [], []), lambda m, i: consts.get((m, i)))
    cols = spec.refit_columns(node, refit, x, _im2col)
    got = cols @ refit.matrix + (refit.bias if refit.bias is not None else 0)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert cols.shape[1] == refit.matrix.shape[0] and refit.matrix.shape[0] % refit.k == 0
    written = {(m, i): a for m, i, a in spec.refit_write(node, 0, refit, refit.matrix, refit.bias,
                                                          lambda m, i: consts[m, i].copy())}
    assert set(written) == set(consts)
    for at, a in written.items():
        np.testing.assert_allclose(a, consts[at], rtol=1e-12)


# ------------------------------------------------------------------- channel linking

LINK_OPS = [(d, op) for d, op in OPS if type(spec_for(op, d)).link_channels is not OpSpec.link_channels]


def _two_layers(op: str, rng):
    """A tiny model where a layer of `op` with 6 output channels feeds a consumer; (proto, feed, the
    dims that must share one prunable 6-channel group)."""
    names = iter(range(9))
    f = lambda *s: numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), f"w{next(names)}")  # noqa: E731
    if op in ("Conv", "ConvTranspose"):
        w1, w2 = (f(6, 3, 3, 3), f(4, 6, 3, 3)) if op == "Conv" else (f(3, 6, 3, 3), f(6, 4, 3, 3))
        nodes = [helper.make_node(op, ["x", w1.name], ["h"]), helper.make_node(op, ["h", w2.name], ["y"])]
        x, inits = (1, 3, 8, 8), [w1, w2]
        o, i = (0, 1) if op == "Conv" else (1, 0)
        dims = [("c", 0, 1, o), ("c", 1, 1, i)]
    elif op in ("Gemm", "MatMul"):
        w1, w2 = f(5, 6), f(6, 4)
        nodes = [helper.make_node(op, ["x", w1.name], ["h"]), helper.make_node(op, ["h", w2.name], ["y"])]
        x, inits, dims = (2, 5), [w1, w2], [("c", 0, 1, 1), ("c", 1, 1, 0)]
    else:
        gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
        w, r, w2 = f(1, gates * 6, 3), f(1, gates * 6, 6), f(6, 4)
        axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
        nodes = [helper.make_node(op, ["x", w.name, r.name], ["h"], hidden_size=6),
                 helper.make_node("Squeeze", ["h", "axes"], ["hs"]), helper.make_node("MatMul", ["hs", w2.name], ["y"])]
        x, inits, dims = (5, 2, 3), [w, r, w2, axes], [("h", 0), ("c", 2, 1, 0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return proto, {"x": rng.standard_normal(x).astype(np.float32)}, dims


@pytest.mark.parametrize(("domain", "op"), LINK_OPS, ids=[f"{d}.{op}" if d else op for d, op in LINK_OPS])
def test_link_channels_groups_a_layer_with_its_consumer(domain, op):
    proto, feed, dims = _two_layers(op, np.random.default_rng(0))
    groups = [g for g in analyze_groups(proto, feed).prunable if g.channels == 6]
    assert any(set(dims) <= {m.dim for m in g.members} for g in groups), [[m.dim for m in g.members] for g in groups]


def test_gemm_with_beta_zero_and_no_c_fits_no_bias():
    """A new C would be multiplied by beta = 0 at run time: the refit must not fit one."""
    from onnx import helper

    from onnxprune.ops import spec_for

    w = np.ones((4, 3), np.float32)
    for beta, fitted in ((0.0, False), (1.0, True)):
        node = helper.make_node("Gemm", ["x", "w"], ["y"], beta=beta)
        refit = spec_for("Gemm").refit(node, 0, w, None, helper.make_graph([node], "g", [], []), lambda n, i: None)
        assert (refit.bias is not None) == fitted
