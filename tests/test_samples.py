"""The bundled digits samples: models load, check and classify; the example fine-tuning hook recovers pruned accuracy."""

import importlib.util
import types
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
MODELS = {"digits_mlp.onnx": "digits_eval.npz", "digits_cnn.onnx": "digits_cnn_eval.npz"}
PRUNABLE = {"digits_mlp.onnx": ["fc1.weight", "fc2.weight", "fc3.weight"],
            "digits_cnn.onnx": ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"]}


def _hook():
    spec = importlib.util.spec_from_file_location("finetune_hook", SAMPLES / "finetune_hook.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _accuracy(model, data):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    with np.load(SAMPLES / data) as d:
        logits = sess.run(["logits"], {"input": d["input"]})[0]
        return float((logits.argmax(1) == d["labels"]).mean())


def _with_weights(model, tensors):
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name in tensors:
            t.CopyFrom(numpy_helper.from_array(tensors[t.name], t.name))
    return out


@pytest.mark.parametrize("name", MODELS)
def test_sample_model_checks_and_classifies(name):
    model = onnx.load(SAMPLES / name)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17 and model.ir_version == 8
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert _accuracy(model, MODELS[name]) >= 0.95


def test_sample_data_splits_are_disjoint():
    sets = {}
    for k in ("train", "calib", "eval"):
        with np.load(SAMPLES / f"digits_{k}.npz") as d, np.load(SAMPLES / f"digits_cnn_{k}.npz") as c:
            assert d["input"].dtype == np.float32 and d["input"].shape[1:] == (64,)
            assert d["labels"].dtype == np.int64 and len(d["labels"]) == len(d["input"])
            np.testing.assert_array_equal(c["input"].reshape(-1, 64), d["input"])
            sets[k] = {r.tobytes() + l.tobytes() for r, l in zip(d["input"], d["labels"])}
    assert not (sets["train"] & sets["calib"] or sets["train"] & sets["eval"] or sets["calib"] & sets["eval"])


@pytest.mark.parametrize("name", MODELS)
def test_finetune_hook_keeps_masks_and_recovers_accuracy(name):
    model = onnx.load(SAMPLES / name)
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    masks = {k: np.abs(init[k]) > np.quantile(np.abs(init[k]), 0.8) for k in PRUNABLE[name]}
    weights = {k: init[k] * masks[k] for k in masks}
    pruned = _with_weights(model, weights)
    ctx = types.SimpleNamespace(step=1, steps=1, sparsity=0.8, weights=weights, masks=masks, model=pruned, data=None)

    out = _hook().finetune(ctx)

    assert set(masks) <= set(out) <= set(init)
    for k, a in out.items():
        assert a.dtype == np.float32 and a.shape == init[k].shape
    for k, m in masks.items():
        assert not out[k][~m].any()
    before, after = _accuracy(pruned, MODELS[name]), _accuracy(_with_weights(pruned, out), MODELS[name])
    assert after > before


def test_large_sparse_vs_small_dense_smoke(tmp_path, monkeypatch, capsys):
    """One size, shortened training: equal non-zeros on both sides, a table and the plot."""
    spec = importlib.util.spec_from_file_location("large_sparse", SAMPLES / "large_sparse_vs_small_dense.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "STEPS", 2)
    monkeypatch.setattr(mod, "EPOCHS_PER_STEP", 1)
    monkeypatch.setattr(mod, "DENSE_EPOCHS", 2)
    plot = tmp_path / "large-sparse.png"
    (row,) = mod.main(["--sparsities", "0.95", "--seeds", "1", "--plot", str(plot)])
    assert row["nonzeros"] == pytest.approx(0.05 * 50432, abs=2)
    assert abs(row["small_weights"] - row["nonzeros"]) < 0.1 * row["nonzeros"]
    assert 0.1 < row["large_acc"] <= 1 and 0 < row["small_acc"] <= 1
    assert "| 2,522 | 95% |" in capsys.readouterr().out
    assert plot.stat().st_size > 0 or importlib.util.find_spec("matplotlib") is None
