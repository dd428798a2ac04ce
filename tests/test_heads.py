"""Whole attention heads as the channel unit (--channel-unit head): onnxruntime parity with the model
whose removed heads (and FFN units) are sliced out by hand."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from onnxprune.core.errors import OptionError
from onnxprune.jobs.prune_job import PruneOptions, prune_model

D, HEADS, FF, SEQ = 32, 4, 64, 5
DH = D // HEADS


def block(w: dict, heads: int) -> onnx.ModelProto:
    """y = h + FFN(h), h = x + MHA(x): Q/K/V/out projections with biases, Reshape to heads x head_dim."""
    inits = {k: numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()}
    inits["split"] = numpy_helper.from_array(np.array([0, 0, heads, DH], np.int64), "split")
    inits["merge"] = numpy_helper.from_array(np.array([0, 0, heads * DH], np.int64), "merge")
    inits["scale"] = numpy_helper.from_array(np.array(1 / np.sqrt(DH), np.float32), "scale")
    n = []

    def node(op, ins, out, **kw):
        n.append(helper.make_node(op, ins, [out], name=out, **kw))
        return out

    def proj(x, p):
        return node("Add", [node("MatMul", [x, f"{p}.W"], f"{p}_mm"), f"{p}.b"], f"{p}_add")

    def heads_of(t, perm, p):
        return node("Transpose", [node("Reshape", [t, "split"], f"{p}_split")], f"{p}_t", perm=perm)

    q = heads_of(proj("x", "q"), [0, 2, 1, 3], "q")
    k = heads_of(proj("x", "k"), [0, 2, 3, 1], "k")
    v = heads_of(proj("x", "v"), [0, 2, 1, 3], "v")
    s = node("Softmax", [node("Mul", [node("MatMul", [q, k], "qk"), "scale"], "qk_scaled")], "probs", axis=-1)
    o = node("Reshape", [node("Transpose", [node("MatMul", [s, v], "ctx")], "ctx_t", perm=[0, 2, 1, 3]), "merge"], "ctx_m")
    h = node("Add", ["x", proj(o, "o")], "h")
    f = node("Tanh", [node("MatMul", [h, "f1.W"], "f1_mm")], "f1_act")
    node("Add", [h, node("MatMul", [f, "f2.W"], "f2_mm")], "y")
    graph = helper.make_graph(n, "mha", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, SEQ, D])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, SEQ, D])],
                              list(inits.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def weights(weak_heads=(1, 3)) -> dict:
    r = np.random.default_rng(5)
    w = {f"{p}.W": r.standard_normal((D, D)) * 0.2 for p in "qkvo"}
    w |= {f"{p}.b": r.standard_normal(D) * 0.1 for p in "qkvo"}
    w["f1.W"], w["f2.W"] = r.standard_normal((D, FF)) * 0.2, r.standard_normal((FF, D)) * 0.2
    for hd in weak_heads:  # the least important heads by L2: small Q/K/V columns and output rows
        cols = slice(hd * DH, (hd + 1) * DH)
        for p in "qkv":
            w[f"{p}.W"][:, cols] *= 0.05
        w["o.W"][cols] *= 0.05
    w["f1.W"][:, FF // 2:] *= 0.05  # and the upper half of the FFN units
    w["f2.W"][FF // 2:] *= 0.05
    return w


def sliced(w: dict, kept_heads: list[int], kept_ff: np.ndarray) -> dict:
    """The weights of the smaller model, sliced by hand: Q/K/V output columns and the output projection's
    input rows of the kept heads, the kept FFN units."""
    cols = np.concatenate([np.arange(h * DH, (h + 1) * DH) for h in kept_heads])
    out = {f"{p}.W": w[f"{p}.W"][:, cols] for p in "qkv"} | {f"{p}.b": w[f"{p}.b"][cols] for p in "qkv"}
    out |= {"o.W": w["o.W"][cols], "o.b": w["o.b"], "f1.W": w["f1.W"][:, kept_ff], "f2.W": w["f2.W"][kept_ff]}
    return out


def run(proto, x):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_whole_heads_match_the_hand_sliced_model(tmp_path):
    w = weights()
    path = tmp_path / "mha.onnx"
    onnx.save(block(w, HEADS), str(path))
    ctx, report = prune_model(path, PruneOptions(pattern="channel", channel_unit="head", sparsity=0.5, round_to=8),
                              progress=False)
    pruned = ctx.model.proto
    inits = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    assert inits["split"].tolist() == [0, 0, 2, DH]  # the head count shrinks, head_dim stays
    assert inits["q.W"].shape == (D, 2 * DH) and inits["f1.W"].shape == (D, FF // 2)
    reference = block(sliced(w, [0, 2], np.arange(FF // 2)), 2)
    x = np.random.default_rng(1).standard_normal((2, SEQ, D)).astype(np.float32)
    np.testing.assert_allclose(run(pruned, x), run(reference, x), rtol=1e-5, atol=1e-5)
    assert report["structured"]["macs_ratio"] < 0.75


def test_head_dims_stay_the_default_unit(tmp_path):
    path = tmp_path / "mha.onnx"
    onnx.save(block(weights(), HEADS), str(path))
    ctx, _ = prune_model(path, PruneOptions(pattern="channel", sparsity=0.5, round_to=2), progress=False)
    split = next(numpy_helper.to_array(t) for t in ctx.model.proto.graph.initializer if t.name == "split")
    assert split.tolist() == [0, 0, HEADS, DH // 2]
    with pytest.raises(OptionError, match="channel-unit|channel_unit"):
        PruneOptions(channel_unit="head")  # unstructured: no channels


def test_sensitivity_allocation_measures_whole_heads(tmp_path, monkeypatch):
    """--allocation sensitivity with --channel-unit head: the curves are measured on the head groups (the
    groups the prune then cuts), so whole heads go, never head dims."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tmp_path / "mha.onnx"
    onnx.save(block(weights(), HEADS), str(path))
    x = np.random.default_rng(2).standard_normal((16, 2, SEQ, D)).astype(np.float32)
    data = {"x": x.reshape(32, SEQ, D)}
    ctx, report = prune_model(path, PruneOptions(pattern="channel", channel_unit="head", round_to=2,
                                                 allocation="sensitivity", budget="macs=0.75"),
                              data=data, progress=False)
    levels = report["allocation"]["levels"]
    assert any("q_mm" in g for g in levels) and report["structured"]["macs_ratio"] <= 0.75
    split = next(numpy_helper.to_array(t) for t in ctx.model.proto.graph.initializer if t.name == "split")
    assert split[3] == DH  # head_dim whole: only whole heads were removed
