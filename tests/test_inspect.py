"""`onnxprune inspect`: the table, the JSON report (schema onnxprune.inspect v1), --fold-constants."""

from __future__ import annotations

import json

import builders as B
import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxprune.analyze.inspect import inspect_model, zero_fraction
from onnxprune.analyze.weights import find_weights
from onnxprune.cli import main
from onnxprune.core.model import Model


def _inspect(*args):
    result = CliRunner().invoke(main, ["inspect", *map(str, args)])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def _json(*args) -> dict:
    return json.loads(_inspect("--json", *args).stdout)  # stdout is the JSON document and nothing else


@pytest.fixture
def net(tmp_path):
    return B.save(B.small_net(), tmp_path / "net.onnx")


def test_table(net):
    out = _inspect(net).stdout
    lines = out.splitlines()
    assert lines[0].split() == ["weight", "op", "dtype", "shape", "params", "matrix", "red.axes", "chain", "zeros"]
    rows = {line.split()[0]: line.split() for line in lines[2:5]}
    assert rows["conv.W"][1:8] == ["Conv:W", "float32", "4x1x3x3", "36", "4x9", "1,2,3", "-"]
    assert rows["fc.W"][1:8] == ["Gemm:B", "float32", "10x64", "640", "10x64", "1", "-"]
    assert rows["head.W"][1:8] == ["MatMul:B", "float32", "10x3", "30", "3x10", "0", "-"]
    assert "params 720  prunable 706 (98.1%) in 3 weights  zeros in prunable 0.0%" in out
    assert "opsets ai.onnx 17" in out and "Conv 1" in out and "Gemm 1" in out
    assert "not prunable" not in out


def test_json(net):
    report = _json(net)
    assert (report["schema"], report["version"]) == ("onnxprune.inspect", 1)
    assert {"totals", "weights", "not_prunable", "ops", "opsets"} <= set(report)
    assert report["opsets"] == {"ai.onnx": 17}
    assert report["ops"] == {"Conv": 1, "Flatten": 1, "Gemm": 1, "MatMul": 1, "Relu": 1}
    t = report["totals"]
    assert (t["params"], t["prunable_params"], t["prunable_weights"], t["prunable_zeros"]) == (720, 706, 3, 0)
    assert t["prunable_share"] == pytest.approx(706 / 720) and t["weight_bytes"] == 720 * 4
    by_name = {w["name"]: w for w in report["weights"]}
    assert list(by_name) == ["conv.W", "fc.W", "head.W"]
    fc = by_name["fc.W"]
    assert (fc["ops"], fc["nodes"], fc["shape"], fc["matrix"], fc["reduction_axes"], fc["group_axis_len"]) == (
        ["Gemm:B"], ["fc"], [10, 64], [10, 64], [1], 64)
    assert (fc["dtype"], fc["storage"], fc["graph"], fc["chain"], fc["quantized"]) == ("float32", "initializer", "", [], False)
    assert fc["zero_fraction"] == 0.0
    assert report["not_prunable"] == []


def test_json_lists_what_is_not_prunable(tmp_path):
    report = _json(B.save(B.matmul_runtime_b(), tmp_path / "gram.onnx"))
    assert report["weights"] == [] and report["totals"]["prunable_share"] == 0.0
    assert [(u["name"], u["node"], u["op"], u["role"], u["foldable"]) for u in report["not_prunable"]] == [
        ("Xt", "gram", "MatMul", "B", False), ("Xr", "mm_relu", "MatMul", "B", False)]


def test_json_stdout_stays_clean_for_bfloat16(tmp_path):
    # onnx-graphsurgeon warns about bfloat16 on stdout unless its logger is quieted
    report = _json(B.save(B.matmul_dtype("bfloat16"), tmp_path / "bf16.onnx"))
    assert report["weights"][0]["dtype"] == "bfloat16" and report["weights"][0]["chain"] == ["Cast"]


def test_fold_constants(tmp_path):
    path = B.save(B.lstm_folded_w(), tmp_path / "lstm.onnx")
    plain = _json(path)
    assert plain["weights"] == [] and plain["totals"]["prunable_params"] == 0
    assert [(u["name"], u["role"], u["foldable"]) for u in plain["not_prunable"]] == [
        ("W_full", "W", True), ("R_full", "R", True)]
    assert "foldable (use --fold-constants)" in _inspect(path).stdout

    folded = _json("--fold-constants", path)
    assert folded["not_prunable"] == []
    assert [(w["name"], w["ops"], w["shape"], w["matrix"]) for w in folded["weights"]] == [
        ("W_full", ["LSTM:W"], [1, 16, 5], [16, 5]), ("R_full", ["LSTM:R"], [1, 16, 4], [16, 4])]
    assert folded["totals"]["prunable_params"] == 144 and folded["totals"]["prunable_share"] == 1.0
    assert "Concat" not in folded["ops"] and "Constant" not in folded["ops"]
    table = _inspect("--fold-constants", path).stdout
    assert "W_full" in table and "not prunable" not in table
    assert onnx.load(str(path)).SerializeToString() == B.lstm_folded_w().SerializeToString()  # file untouched


def test_external_data_model_from_another_directory(tmp_path, monkeypatch):
    path = B.external_data_model(tmp_path / "m")
    monkeypatch.chdir(tmp_path)
    report = _json(path)
    assert report["totals"]["prunable_weights"] == 3 and report["totals"]["params"] == 720


def test_quantized_zeros_count_the_zero_point():
    proto = B.matmul_dequantized(per_axis=True)
    model = Model(proto)
    q = np.array(model.read("W"))
    zp = model.read("W_zp")  # per output column (axis 1)
    q[:3] = zp  # three rows of real zeros: 12 of 32
    q[3, 0] = 0  # column 0 has zero point 0: a real zero
    q[3, 1] = 0  # column 1 has zero point 3: stored 0 means -3 * scale, not a zero
    model.write("W", q)
    w = find_weights(model).weights[0]
    assert zero_fraction(model, "W", w) == 13 / 32
    report = inspect_model(model)
    assert report["totals"]["prunable_zeros"] == 13
    # the real weights agree: dequantized values that are exactly zero
    real = (q.astype(np.float32) - zp) * model.read("W_scale")
    assert np.count_nonzero(real == 0) == 13


def test_per_tensor_zero_point():
    model = Model(B.matmul_dequantized())
    q = np.array(model.read("W"))
    q[0] = 3  # the zero point
    model.write("W", q)
    assert zero_fraction(model, "W", find_weights(model).weights[0]) == pytest.approx(
        np.count_nonzero(q == 3) / q.size)
    assert zero_fraction(model, "W") == np.count_nonzero(q == 0) / q.size  # raw stored zeros without the weight


def test_version_names_onnx_and_onnxruntime():
    import importlib.metadata as md

    out = CliRunner().invoke(main, ["--version"]).output
    assert out.startswith("onnxprune ") and f"onnx {md.version('onnx')}" in out
    assert f"onnxruntime {md.version('onnxruntime')}" in out
