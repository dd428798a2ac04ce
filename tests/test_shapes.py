"""Feed shapes for dynamic inputs (onnxprune.core.shapes): -1/0 dims, hints, guesses, and a gate that says so."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from builders import save
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxprune.check.data import Dataset
from onnxprune.cli import main
from onnxprune.core.model import Model
from onnxprune.core.shapes import input_specs, resolve_feed_shapes
from onnxprune.prune.structured import prune_channels


def image_net(dims=(-1, 3, -1, -1), metadata=None, flatten_k=None, resize=None) -> onnx.ModelProto:
    """x[dims] -> Conv 3x3 (16) -> Relu -> GlobalAveragePool (or Flatten into a fixed Gemm) -> Gemm 10."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "w1")]
    nodes, src = [], "x"
    if resize is not None:
        inits.append(numpy_helper.from_array(np.array(resize, np.int64), "sizes"))
        nodes.append(helper.make_node("Resize", ["x", "", "", "sizes"], ["xr"], name="resize"))
        src = "xr"
    nodes += [helper.make_node("Conv", [src, "w1"], ["c"], name="conv", pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c"], ["r"], name="relu")]
    if flatten_k is None:
        nodes += [helper.make_node("GlobalAveragePool", ["r"], ["p"]), helper.make_node("Flatten", ["p"], ["f"])]
        k = 16
    else:
        nodes.append(helper.make_node("Flatten", ["r"], ["f"]))
        k = flatten_k
    inits.append(numpy_helper.from_array(rng.standard_normal((k, 10)).astype(np.float32), "w2"))
    nodes.append(helper.make_node("Gemm", ["f", "w2"], ["y"], name="fc"))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 10])
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 13)])
    for k_, v in (metadata or {}).items():
        m.metadata_props.add(key=k_, value=v)
    return m


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_minus_one_and_zero_dims_are_dynamic():
    (spec,) = input_specs(image_net((-1, 3, 0, "?")))
    assert spec.shape == (None, 3, None, None) and spec.batch_dynamic
    fs = resolve_feed_shapes(image_net((-1, 3, 0, "?")))
    assert fs.shapes == {"x": (1, 3, 224, 224)} and fs.guessed == ("x",)


def test_batch_only_dynamic_is_not_a_guess(tmp_path):
    m = image_net((-1, 3, 32, 32))
    fs = resolve_feed_shapes(m)
    assert fs.shapes["x"] == (1, 3, 32, 32) and not fs.guessed and fs.sources["x"] == "batch 1"
    path = save(m, tmp_path / "m.onnx")
    r = cli("check", path, path)
    assert r.exit_code == 0 and "x=1x3x32x32 (batch 1)" in r.output, r.output


def test_gate_refuses_guessed_shapes_unless_allowed(tmp_path):
    path = save(image_net(), tmp_path / "paddle_style.onnx")  # dim_value -1, as paddle2onnx writes them
    before = path.read_bytes()
    r = cli("check", path, path)
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert "guessed shapes (x=1x3x224x224 (guessed))" in r.output
    assert "--shape x=1x3xHxW" in r.output and "--allow-guessed-shapes" in r.output
    r = cli("check", path, path, "--allow-guessed-shapes", "--report", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    assert "x=1x3x224x224" in r.output and "GUESSED" in r.output
    inputs = json.loads((tmp_path / "r.json").read_text())["inputs"]
    assert inputs["shapes"] == {"x": [1, 3, 224, 224]} and inputs["shapes_guessed"] is True
    r = cli("check", path, path, "--shape", "x=1x3x48x320", "--report", tmp_path / "r2.json")
    assert r.exit_code == 0 and "x=1x3x48x320 (given)" in r.output and "GUESSED" not in r.output
    assert json.loads((tmp_path / "r2.json").read_text())["inputs"]["shapes_guessed"] is False
    assert path.read_bytes() == before


def test_prune_check_refuses_guessed_shapes_before_the_work(tmp_path):
    path = save(image_net(), tmp_path / "m.onnx")
    out = tmp_path / "out.onnx"
    r = cli("prune", path, "-o", out, "--sparsity", "0.5", "--min-params", "1", "--check")
    assert r.exit_code == 2 and "--allow-guessed-shapes" in r.output and not out.exists(), r.output
    r = cli("run", "unstructured-gate", path, "-o", out)
    assert r.exit_code == 2 and "guessed shapes" in r.output and not out.exists(), r.output
    r = cli("prune", path, "-o", out, "--sparsity", "0.5", "--min-params", "1", "--check", "--shape", "x=1x3x40x40")
    assert r.exit_code in (0, 1) and out.exists() and "x=1x3x40x40 (given)" in r.output, r.output


def test_sweep_refuses_guessed_shapes_before_any_level(tmp_path):
    path = save(image_net(), tmp_path / "m.onnx")
    r = cli("sweep", path, "--sparsities", "0.3,0.5", "--min-params", "1")
    assert r.exit_code == 2 and "--allow-guessed-shapes" in r.output and "sparsity 0.300" not in r.output, r.output
    r = cli("sweep", path, "--sparsities", "0.3", "--min-params", "1", "--allow-guessed-shapes")
    assert r.exit_code == 0 and "sparsity 0.300" in r.output, r.output


def test_hints_from_metadata_resize_and_shared_dim_params():
    fs = resolve_feed_shapes(image_net(metadata={"imgsz": "[48, 320]"}))
    assert fs.shapes["x"] == (1, 3, 48, 320) and not fs.guessed and fs.sources["x"] == "model metadata 'imgsz'"
    fs = resolve_feed_shapes(image_net(metadata={"input_shape": "1,3,64,96"}))
    assert fs.shapes["x"] == (1, 3, 64, 96) and not fs.guessed
    fs = resolve_feed_shapes(image_net(resize=[1, 3, 56, 56]))
    assert fs.shapes["x"] == (1, 3, 56, 56) and fs.sources["x"] == "Resize node 'resize' sizes"
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])
    mask = helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "seq"])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, None)
    two = helper.make_model(helper.make_graph([helper.make_node("Add", ["ids", "mask"], ["y"])], "g", [ids, mask], [y]))
    fs = resolve_feed_shapes(two, {"ids": (2, 7)})
    assert fs.shapes == {"ids": (2, 7), "mask": (2, 7)} and not fs.guessed
    fs = resolve_feed_shapes(two)
    assert fs.shapes == {"ids": (1, 128), "mask": (1, 128)} and fs.guessed == ("ids", "mask")


def test_guess_is_a_size_the_model_runs_at():
    # Flatten into a Gemm of K = 16 * 32 * 32: only 32x32 planes run; 224, 256, ... fail in onnxruntime
    fs = resolve_feed_shapes(image_net(flatten_k=16 * 32 * 32))
    assert fs.shapes["x"] == (1, 3, 32, 32) and fs.guessed == ("x",)
    assert fs.sources["x"] == "guessed: the first size that ran in onnxruntime"
    ds = Dataset.synthetic(image_net(flatten_k=16 * 32 * 32), 2)
    assert next(ds.batches())["x"].shape == (1, 3, 32, 32) and ds.describe()["shapes_guessed"] is True


def test_channel_macs_at_resolved_not_1x1_shapes(tmp_path):
    model = Model(image_net())
    rep = prune_channels(model, 0.5, round_to=4).report
    assert rep["input_shapes"] == {"x": [1, 3, 224, 224]} and rep["input_shapes_guessed"] is True
    assert rep["macs_before"] == 224 * 224 * 16 * 27 + 16 * 10
    assert any("guessed input shapes" in n for n in rep["notes"])


def test_pack_macs_at_given_shape(tmp_path):
    path = save(image_net(), tmp_path / "m.onnx")
    pruned = tmp_path / "p.onnx"
    assert cli("prune", path, "-o", pruned, "--pattern", "2:4", "--min-params", "1").exit_code == 0
    for shape, macs in (("x=1x3x48x320", 48 * 320 * 16 * 27), (None, 224 * 224 * 16 * 27)):
        extra = ["--shape", shape] if shape else []
        r = cli("pack", pruned, "--target", "npu-bitmask", "-o", tmp_path / "o", "--report", tmp_path / "r.json",
                "--no-gzip", *extra)
        assert r.exit_code == 0, r.output
        rep = json.loads((tmp_path / "r.json").read_text())
        conv = next(row for row in rep["eligibility"]["layers"] if row["weight"] == "w1")
        assert conv["macs"] == macs
        assert ("guessed input shapes" in r.output) == (shape is None)


def test_prune_target_says_macs_are_at_guessed_shapes(tmp_path):
    path = save(image_net(), tmp_path / "m.onnx")
    r = cli("prune", path, "-o", tmp_path / "p.onnx", "--target", "npu-bitmask", "--min-params", "1")
    assert r.exit_code == 0 and "MACs at guessed input shapes (x=1x3x224x224 (guessed))" in r.output, r.output


@pytest.mark.real
def test_paddle_recogniser_gate_runs_at_real_size(tmp_path):
    """PP-OCRv4's recogniser (paddle2onnx, height '?'): 2:4 passed at 1x3x1x1 and fails at 1x3x48x320."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None:
        pytest.skip("rapidocr-onnxruntime is not installed")
    rec = Path(next(iter(spec.submodule_search_locations))) / "models" / "ch_PP-OCRv4_rec_infer.onnx"
    out = tmp_path / "rec.onnx"
    r = cli("prune", rec, "-o", out, "--pattern", "2:4", "--check", "--samples", "4")
    assert r.exit_code == 2 and "--shape x=1x3xHxW" in r.output and not out.exists(), r.output
    r = cli("prune", rec, "-o", out, "--pattern", "2:4", "--check", "--samples", "4", "--shape", "x=1x3x48x320")
    assert r.exit_code == 1 and "x=1x3x48x320 (given)" in r.output and "FAIL" in r.output, r.output


def test_python_api_names_its_own_fix_for_guessed_shapes():
    from onnxprune.check.parity import compare
    from onnxprune.core.errors import DataError

    m = image_net()
    with pytest.raises(DataError) as e:
        compare(m, m, Dataset.synthetic(m, 2))
    assert "shapes={'x': (1, 3, H, W)}" in str(e.value) and "allow_guessed_shapes=True" in str(e.value)
    report = compare(m, m, Dataset.synthetic(m, 2, shapes={"x": (1, 3, 32, 32)}))  # as the message says
    assert report.passed and report.inputs["shapes_guessed"] is False
