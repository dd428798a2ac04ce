"""The accuracy parity gate: data layer, metrics and thresholds, CLI exit codes and report."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxprune.check.data import (
    Dataset,
    input_specs,
    load_dataset,
    parse_int_range,
    parse_shape,
)
from onnxprune.check.parity import (
    Thresholds,
    compare,
    parse_output_threshold,
    thresholds_from_options,
)
from onnxprune.cli import main
from onnxprune.core.errors import DataError, ModelLoadError, OptionError
from onnxprune.core.model import Model

RNG = np.random.default_rng(0)
W = RNG.standard_normal((16, 10)).astype(np.float32)
B = RNG.standard_normal(10).astype(np.float32)
W2 = RNG.standard_normal((16, 3)).astype(np.float32)


def _model(nodes, inputs, outputs, inits=()):
    graph = h.make_graph(nodes, "g", inputs, outputs, [nh.from_array(a, n) for n, a in inits])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


def classifier(w=W, b=B, batch="N"):
    """x [batch, 16] -> logits [batch, 10]."""
    return _model([h.make_node("MatMul", ["x", "W"], ["xw"]), h.make_node("Add", ["xw", "B"], ["logits"])],
                  [h.make_tensor_value_info("x", T.FLOAT, [batch, 16])],
                  [h.make_tensor_value_info("logits", T.FLOAT, [batch, 10])], [("W", w), ("B", b)])


def two_outputs(w2=W2):
    """x [N, 16] -> logits [N, 10], aux [N, 3], label int64 [N]."""
    return _model([h.make_node("MatMul", ["x", "W"], ["logits"]), h.make_node("MatMul", ["x", "W2"], ["aux"]),
                   h.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0)],
                  [h.make_tensor_value_info("x", T.FLOAT, ["N", 16])],
                  [h.make_tensor_value_info("logits", T.FLOAT, ["N", 10]),
                   h.make_tensor_value_info("aux", T.FLOAT, ["N", 3]),
                   h.make_tensor_value_info("label", T.INT64, ["N"])], [("W", W), ("W2", w2)])


def embedding(table=None):
    """ids int64 [N, 5] -> Gather(table [10, 4]) -> emb [N, 5, 4]."""
    table = RNG.standard_normal((10, 4)).astype(np.float32) if table is None else table
    return _model([h.make_node("Gather", ["table", "ids"], ["emb"])],
                  [h.make_tensor_value_info("ids", T.INT64, ["N", 5])],
                  [h.make_tensor_value_info("emb", T.FLOAT, ["N", 5, 4])], [("table", table)])


def stateful():
    """x [N, 4], state [2, N, 4] (batch axis not first) -> y = state + x [2, N, 4]."""
    return _model([h.make_node("Add", ["state", "x"], ["y"])],
                  [h.make_tensor_value_info("x", T.FLOAT, ["N", 4]),
                   h.make_tensor_value_info("state", T.FLOAT, [2, "N", 4])],
                  [h.make_tensor_value_info("y", T.FLOAT, [2, "N", 4])])


def log_model():
    """x [N, 4] -> log(x): -inf where x == 0."""
    return _model([h.make_node("Log", ["x"], ["y"])], [h.make_tensor_value_info("x", T.FLOAT, ["N", 4])],
                  [h.make_tensor_value_info("y", T.FLOAT, ["N", 4])])


@pytest.fixture
def save(tmp_path):
    def _save(model, name):
        path = tmp_path / name
        onnx.save(model, str(path))
        return str(path)
    return _save


def _x(n=32, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)


def _run(*args):
    return CliRunner().invoke(main, ["check", *map(str, args)])


def _one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxprune: error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------------------------------------- data


def test_input_specs_skip_initializers_and_read_dims():
    model = classifier()
    model.graph.input.append(h.make_tensor_value_info("W", T.FLOAT, [16, 10]))
    (spec,) = input_specs(model)
    assert (spec.name, spec.dtype, spec.shape, spec.batch_dynamic) == ("x", np.float32, ("N", 16), True)
    assert spec.describe() == "float32[N,16]"


def test_synthetic_is_deterministic_flagged_and_follows_the_spec():
    model = embedding()
    a = Dataset.synthetic(model, 8, int_range=(0, 9), shapes={"ids": (3, 5)}, seed=0)
    b = Dataset.synthetic(model, 8, int_range=(0, 9), shapes={"ids": (3, 5)}, seed=0)
    c = Dataset.synthetic(model, 8, int_range=(0, 9), shapes={"ids": (3, 5)}, seed=1)
    fa, fb, fc = (list(d.batches()) for d in (a, b, c))
    assert len(fa) == 8 and fa[0]["ids"].shape == (3, 5) and fa[0]["ids"].dtype == np.int64
    assert all(np.array_equal(p["ids"], q["ids"]) for p, q in zip(fa, fb))
    assert not all(np.array_equal(p["ids"], q["ids"]) for p, q in zip(fa, fc))
    ids = np.stack([f["ids"] for f in fa])
    assert ids.min() >= 0 and ids.max() <= 9 and len(np.unique(ids)) > 5
    assert a.synthetic and a.describe()["synthetic"] and a.describe()["seed"] == 0
    assert Dataset.synthetic(classifier(), 2).describe()["inputs"] == {"x": "float32[N,16]"}
    assert next(Dataset.synthetic(classifier(), 2).batches())["x"].shape == (1, 16)  # dynamic dims -> 1


def test_synthetic_option_errors():
    with pytest.raises(OptionError, match="'nope'"):
        Dataset.synthetic(classifier(), shapes={"nope": (1, 16)})
    with pytest.raises(OptionError, match=r"shapes=\{'x': \(2, 15\)\} does not fit"):  # Python: the parameter
        Dataset.synthetic(classifier(), shapes={"x": (2, 15)})
    with pytest.raises(OptionError, match="int64"):
        Dataset.synthetic(embedding(), int_range=(0, 2**70))


def test_batching_along_a_dynamic_batch_axis(tmp_path):
    np.savez(tmp_path / "d.npz", x=_x(10))
    ds = Dataset.from_source(tmp_path / "d.npz", classifier())
    assert len(ds) == 10 and not ds.synthetic
    assert [f["x"].shape[0] for f in ds.batches(4)] == [4, 4, 2]
    assert np.array_equal(np.concatenate([f["x"] for f in ds.batches(4)]), _x(10))


def test_fixed_batch_one_accepts_both_layouts(tmp_path, save):
    model = classifier(batch=1)
    x = _x(6)
    for name, arr in (("rank.npz", x), ("stacked.npz", x[:, None])):
        np.savez(tmp_path / name, x=arr)
        ds = Dataset.from_source(tmp_path / name, model)
        feeds = list(ds.batches(4))  # fixed batch: one feed per sample whatever the batch size
        assert len(feeds) == 6 and all(f["x"].shape == (1, 16) for f in feeds)
        assert np.array_equal(feeds[3]["x"][0], x[3])
    path = save(model, "b1.onnx")
    assert compare(path, path, ds).passed


def test_rank_plus_one_for_a_state_whose_batch_axis_is_not_first(tmp_path, save):
    x = _x(5)[:, :4]
    state = np.random.default_rng(2).standard_normal((5, 2, 3, 4)).astype(np.float32)  # 5 feeds of [2, 3, 4]
    np.savez(tmp_path / "d.npz", x=np.repeat(x[:, None], 3, axis=1), state=state)
    ds = Dataset.from_source(tmp_path / "d.npz", stateful())
    feeds = list(ds.batches(8))
    assert len(feeds) == 5 and feeds[2]["state"].shape == (2, 3, 4) and feeds[2]["x"].shape == (3, 4)
    path = save(stateful(), "s.onnx")
    report = compare(path, path, ds)
    assert report.passed and report.outputs[0].shape == [2, 3, 4]


def test_folder_of_files_sorted_with_npy_for_single_input(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    x = _x(7)
    np.save(folder / "b.npy", x[3:])
    np.savez(folder / "a.npz", x=x[:3], labels=np.arange(3))
    (folder / "notes.txt").write_text("ignored")
    with pytest.raises(DataError, match="some files have a 'labels'"):
        Dataset.from_source(folder, classifier())
    np.save(tmp_path / "labels.npy", np.arange(7))
    ds = Dataset.from_source(folder, classifier(), labels=tmp_path / "labels.npy")
    assert len(ds) == 7 and np.array_equal(np.concatenate([f["x"] for f in ds.batches(16)]), x)
    assert np.array_equal(ds.labels, np.arange(7))
    with pytest.raises(DataError, match=r"\.npy files only work for single-input models"):
        Dataset.from_source(folder / "b.npy", stateful())


@pytest.mark.parametrize("arrays, needles", [
    ({"x": np.zeros((4, 16))}, ["'x'", "float64", "float32[N,16]", "astype"]),
    ({"x": np.zeros((4, 15), np.float32)}, ["'x'", "float32[N,16]", "[4, 15]"]),
    ({"x": np.zeros((4, 2, 3, 16), np.float32)}, ["'x'", "float32[N,16]", "[4, 2, 3, 16]"]),
    ({"x": np.zeros((4, 16), np.float32), "y": np.zeros(4, np.float32)}, ["'y'", "not a model input"]),
    ({"z": np.zeros(4, np.float32)}, ["'z'"]),
])
def test_data_errors_exit_2_with_one_line_naming_the_input(tmp_path, save, arrays, needles):
    np.savez(tmp_path / "d.npz", **arrays)
    path = save(classifier(), "m.onnx")
    _one_line_error(_run(path, path, "--data", tmp_path / "d.npz"), str(tmp_path / "d.npz"), *needles)


def test_missing_input_and_count_mismatch(tmp_path):
    np.savez(tmp_path / "a.npz", x=_x(3)[:, :4])
    with pytest.raises(DataError, match="missing input 'state'"):
        Dataset.from_source(tmp_path / "a.npz", stateful())
    np.savez(tmp_path / "b.npz", x=_x(3)[:, :4], state=np.zeros((2, 2, 1, 4), np.float32))
    with pytest.raises(DataError, match="different sample counts"):
        Dataset.from_source(tmp_path / "b.npz", stateful())
    with pytest.raises(DataError, match="no such file"):
        Dataset.from_source(tmp_path / "missing.npz", stateful())


def test_split_and_subset_are_disjoint_and_keep_labels(tmp_path):
    np.savez(tmp_path / "d.npz", x=_x(20), labels=np.arange(20))
    ds = Dataset.from_source(tmp_path / "d.npz", classifier())
    calib, evals = ds.split(0.25, seed=3)
    assert (len(calib), len(evals)) == (5, 15)
    assert not set(calib.labels) & set(evals.labels) and set(calib.labels) | set(evals.labels) == set(range(20))
    assert np.array_equal(ds.split(0.25, seed=3)[0].labels, calib.labels)
    assert list(ds.subset(4).labels) == [0, 1, 2, 3] and len(ds.split(6)[0]) == 6
    rows = np.concatenate([f["x"] for f in calib.batches(2)])
    assert np.array_equal(rows, _x(20)[calib.labels])
    with pytest.raises(DataError):
        ds.split(1.0)


def test_parsers():
    assert parse_shape("input=1x3x224x224") == ("input", (1, 3, 224, 224))
    assert parse_int_range("0,255") == (None, (0, 255)) and parse_int_range("sr=16000,16000") == ("sr", (16000, 16000))
    assert parse_output_threshold("Identity:0:min_cosine=0.9,max_abs=1")[0] == "Identity:0"
    for bad in ("x", "x=1xa"):
        with pytest.raises(OptionError):
            parse_shape(bad)
    with pytest.raises(OptionError):
        parse_int_range("5,1")
    with pytest.raises(OptionError, match="min_cosine"):
        parse_output_threshold("out:min_cos=1")
    with pytest.raises(OptionError, match="out of range"):
        Thresholds(min_cosine=2)
    assert thresholds_from_options().min_cosine == 0.99  # the default gate
    t = thresholds_from_options(atol=1e-3, output_thresholds=["aux:min_cosine=0.5", "aux:max_abs=2"])
    assert t.min_cosine is None and t.for_output("aux").limits() == {**t.limits(), "min_cosine": 0.5, "max_abs": 2}


# ------------------------------------------------------------------------------------------ metrics


def test_self_check_passes_with_zero_error(save):
    path = save(classifier(), "m.onnx")
    report = compare(path, path, Dataset.synthetic(classifier(), 8), Thresholds(min_cosine=1, max_abs=0, atol=0))
    m = report.outputs[0].metrics
    assert report.passed and report.outputs[0].kind == "classifier"
    assert m["max_abs"] == 0 and m["cosine_mean"] == 1 and m["cosine_min"] == 1 and m["snr_db"] == float("inf")
    assert m["rel_l2"] == 0 and m["top1_agreement"] == 1 and m["topk_agreement"] == 1 and m["nonfinite"] == 0
    assert m["allclose_violations"] == 0 and m["required_atol"] == 0


def test_in_memory_models_and_batching_give_the_same_metrics(tmp_path):
    noisy = classifier(W * (1 + 0.05 * RNG.standard_normal(W.shape)).astype(np.float32))
    np.savez(tmp_path / "d.npz", x=_x(10))
    ds = Dataset.from_source(tmp_path / "d.npz", classifier())
    one, four = (compare(classifier(), noisy, ds, batch_size=b) for b in (1, 4))
    assert one.run["batches"] == 10 and four.run["batches"] == 3
    for k, v in one.outputs[0].metrics.items():
        assert four.outputs[0].metrics[k] == pytest.approx(v, rel=1e-6, abs=1e-9), k
    # reference values from numpy
    ref = (_x(10) @ W + B).astype(np.float64)
    cand = (_x(10) @ nh.to_array(noisy.graph.initializer[0]) + B).astype(np.float64)
    m = one.outputs[0].metrics
    cos = (ref * cand).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(cand, axis=1)
    assert m["max_abs"] == pytest.approx(np.abs(ref - cand).max(), rel=1e-4)
    assert m["rel_l2"] == pytest.approx(np.linalg.norm(ref - cand) / np.linalg.norm(ref), rel=1e-4)
    assert m["cosine_mean"] == pytest.approx(cos.mean(), rel=1e-5)
    assert m["cosine_min"] == pytest.approx(cos.min(), rel=1e-5)
    assert m["snr_db"] == pytest.approx(10 * np.log10((ref ** 2).sum() / ((ref - cand) ** 2).sum()), rel=1e-4)
    assert m["top1_agreement"] == np.mean(ref.argmax(1) == cand.argmax(1))


def test_in_memory_model_objects_keep_their_external_data(tmp_path, monkeypatch):
    (tmp_path / "m").mkdir()
    (tmp_path / "elsewhere").mkdir()
    onnx.save(two_outputs(), str(tmp_path / "m" / "m.onnx"), save_as_external_data=True, location="m.data",
              size_threshold=0)
    monkeypatch.chdir(tmp_path / "elsewhere")
    orig, cand = Model.load(tmp_path / "m" / "m.onnx"), Model.load(tmp_path / "m" / "m.onnx")
    cand.write("W2", W2 * 3)
    report = compare(orig, cand, Dataset.synthetic(orig.proto, 4), Thresholds(max_abs=0))
    assert [o.passed for o in report.outputs] == [True, False, True]
    assert report.original == str(tmp_path / "m" / "m.onnx")


def test_perturbed_candidate_fails_min_cosine_with_exit_1(save):
    noisy = W * (1 + 0.8 * RNG.standard_normal(W.shape)).astype(np.float32)
    orig, cand = save(classifier(), "m.onnx"), save(classifier(noisy), "c.onnx")
    result = _run(orig, cand, "--min-cosine", 0.99)
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.stdout and "min_cosine" in result.stdout and "cosine_mean" in result.stdout
    assert "inputs: synthetic (seed 0), 16 samples" in result.stdout
    assert _run(orig, cand, "--min-cosine", 0.1).exit_code == 0
    quiet = _run(orig, cand, "--quiet")  # default gate: min_cosine 0.99
    assert quiet.exit_code == 1 and quiet.stdout.startswith("FAIL:") and len(quiet.stdout.splitlines()) == 1


def test_self_check_cli_passes(save):
    path = save(classifier(), "m.onnx")
    result = _run(path, path, "--samples", 4, "--max-abs", 0)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1].startswith("PASS:")


def test_nan_in_the_candidate_fails(save):
    bad = W.copy()
    bad[3, 4] = np.nan
    orig, cand = save(classifier(), "m.onnx"), save(classifier(bad), "c.onnx")
    report = compare(orig, cand, Dataset.synthetic(classifier(), 4), Thresholds())
    finite = report.outputs[0].checks[0]
    assert not report.passed and finite.threshold == "finite" and finite.value == 4
    assert report.outputs[0].metrics["nonfinite"] == 4
    result = _run(orig, cand, "--samples", 4, "--min-cosine", -1)
    assert result.exit_code == 1 and "NaN/Inf" in result.stdout


def test_equal_infinities_match(tmp_path, save):
    x = np.abs(_x(6)[:, :4])
    x[:, 0] = 0  # log(0) = -inf in both models
    np.savez(tmp_path / "d.npz", x=x)
    path = save(log_model(), "log.onnx")
    ds = Dataset.from_source(tmp_path / "d.npz", log_model())
    report = compare(path, path, ds, Thresholds(max_abs=0, min_cosine=1))
    assert report.passed and report.outputs[0].metrics["nonfinite_reference"] == 0


@pytest.mark.parametrize("atol, rtol", [(0.05, 0), (0.01, 0), (0, 0.1), (0.02, 0.05), (1.0, 0)])
def test_atol_rtol_follow_numpy_allclose(tmp_path, atol, rtol):
    noisy = classifier(W, B + np.linspace(-0.04, 0.04, 10).astype(np.float32))
    np.savez(tmp_path / "d.npz", x=_x(8))
    ds = Dataset.from_source(tmp_path / "d.npz", classifier())
    report = compare(classifier(), noisy, ds, Thresholds(atol=atol, rtol=rtol))
    ref = ort.InferenceSession(classifier().SerializeToString()).run(None, {"x": _x(8)})[0]
    cand = ort.InferenceSession(noisy.SerializeToString()).run(None, {"x": _x(8)})[0]
    check = next(c for c in report.outputs[0].checks if c.threshold == "allclose")
    assert check.passed == np.allclose(cand, ref, atol=atol, rtol=rtol)
    assert check.value == pytest.approx(max((np.abs(cand - ref) - rtol * np.abs(ref)).max(), 0), abs=1e-6)
    assert report.outputs[0].metrics["allclose_violations"] == np.count_nonzero(
        ~np.isclose(cand, ref, atol=atol, rtol=rtol))


def test_labels_give_accuracy(tmp_path, save):
    x = _x(40)
    truth = (x @ W + B).argmax(1)
    labels = truth.copy()
    labels[:10] = (labels[:10] + 1) % 10  # the original is right on 30 of 40
    noisy = W * (1 + 0.5 * RNG.standard_normal(W.shape)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, labels=labels)
    report = compare(save(classifier(), "m.onnx"), save(classifier(noisy), "c.onnx"),
                     Dataset.from_source(tmp_path / "d.npz", classifier()), Thresholds(max_accuracy_drop=0.0),
                     batch_size=8)
    m = report.outputs[0].metrics
    cand_top = (x @ noisy + B).argmax(1)
    assert m["accuracy_original"] == 0.75
    assert m["accuracy_candidate"] == pytest.approx(np.mean(cand_top == labels))
    assert m["accuracy_drop"] == pytest.approx(0.75 - np.mean(cand_top == labels))
    assert report.passed == (m["accuracy_drop"] <= 0)
    np.save(tmp_path / "bad.npy", np.arange(39))
    with pytest.raises(DataError, match="39 labels for 40 samples"):
        Dataset.from_source(tmp_path / "d.npz", classifier(), labels=tmp_path / "bad.npy")
    np.savez(tmp_path / "multi.npz", x=x, labels=np.stack([labels, labels], axis=1))  # 2 labels per sample
    with pytest.raises(DataError, match=r"labels \(\[2\] per sample, 40 samples\) match no classifier output"):
        compare(save(classifier(), "m.onnx"), save(classifier(), "m.onnx"),
                Dataset.from_source(tmp_path / "multi.npz", classifier()), Thresholds(), batch_size=8)


def test_integer_input_and_non_float_outputs(save):
    path = save(embedding(), "e.onnx")
    ds = load_dataset(embedding(), int_range=(0, 9), samples=5)
    report = compare(path, path, ds, Thresholds(max_abs=0))
    assert report.passed and report.inputs["synthetic"] and len(ds) == 5
    two = save(two_outputs(), "two.onnx")
    report = compare(two, two, Dataset.synthetic(two_outputs(), 4), Thresholds(min_exact_match=1, min_cosine=0.99))
    label = next(o for o in report.outputs if o.name == "label")
    assert label.kind == "exact" and label.metrics["exact_match"] == 1 and "cosine_mean" not in label.metrics
    assert [c.passed for c in label.checks if c.threshold == "min_cosine"] == [None]  # does not apply


def test_onnxruntime_failure_on_the_data_is_a_data_error(save):
    path = save(embedding(), "e.onnx")
    result = _run(path, path, "--int-range", "ids=100,200", "--samples", 2)
    _one_line_error(result, "onnxruntime failed", "--int-range")


def test_per_output_override(save):
    noisy = W2 * (1 + 0.8 * RNG.standard_normal(W2.shape)).astype(np.float32)
    orig, cand = save(two_outputs(), "m.onnx"), save(two_outputs(noisy), "c.onnx")
    failed = _run(orig, cand, "--min-cosine", 0.99)
    assert failed.exit_code == 1 and "aux: cosine_mean" in failed.stdout and "logits: cosine_mean" not in failed.stdout
    passed = _run(orig, cand, "--min-cosine", 0.99, "--output-threshold", "aux:min_cosine=-1")
    assert passed.exit_code == 0, passed.output
    _one_line_error(_run(orig, cand, "--output-threshold", "nope:min_cosine=0"), "'nope'", "aux")


def test_json_report_has_schema_and_loads_back(save, tmp_path):
    path = save(two_outputs(), "m.onnx")
    out = tmp_path / "r" / "parity.json"
    result = _run(path, path, "--samples", 3, "--report", out, "--atol", 0)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["schema"] == "onnxprune.parity" and doc["version"] == 1 and doc["passed"] is True
    assert doc["inputs"]["synthetic"] is True and doc["inputs"]["seed"] == 0 and doc["inputs"]["samples"] == 3
    assert doc["run"] == {"providers": ["CPUExecutionProvider"], "threads": 1, "batch_size": 1, "batches": 3}
    assert doc["thresholds"]["atol"] == 0 and doc["thresholds"]["min_cosine"] is None
    assert [o["name"] for o in doc["outputs"]] == ["logits", "aux", "label"]
    logits = doc["outputs"][0]
    assert logits["metrics"]["snr_db"] == "inf" and logits["kind"] == "classifier" and logits["shape"] == [1, 10]
    assert {c["threshold"] for c in logits["checks"]} == {"finite", "allclose"}
    assert set(logits["checks"][1]) == {"threshold", "metric", "limit", "value", "passed"}
    assert doc["failures"] == []


def test_signature_mismatch_and_bad_model_files(save, tmp_path):
    orig = save(classifier(), "m.onnx")
    other = classifier()
    other.graph.output[0].name = other.graph.node[1].output[0] = "scores"
    _one_line_error(_run(orig, save(other, "o.onnx")), "outputs", "scores", "logits")
    with pytest.raises(ModelLoadError, match="input 'x'"):
        compare(classifier(), classifier(batch=1), Dataset.synthetic(classifier(), 1))
    _one_line_error(_run(orig, tmp_path / "missing.onnx"), "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00not onnx at all")
    _one_line_error(_run(orig, tmp_path / "junk.onnx"), "junk.onnx")
    _one_line_error(_run(orig, orig, "--labels", tmp_path / "l.npy"), "--data")
    _one_line_error(_run(orig, orig, "--provider", "NoSuchProvider"), "NoSuchProvider")


def test_scalar_inputs_stay_scalars_in_feeds():
    from onnx import TensorProto, helper

    from onnxprune.check.data import Dataset

    graph = helper.make_graph(
        [helper.make_node("Identity", ["sr"], ["y"])], "scalar",
        [helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [])])
    model = helper.make_model(graph)
    feed = next(iter(Dataset.synthetic(model, 2, int_range=(16000, 16000)).batches(1)))
    assert feed["sr"].shape == () and int(feed["sr"]) == 16000


def _zipmap_classifier(w=W, b=B):
    """x [N, 16] -> Softmax probabilities as skl2onnx writes them by default: ZipMap, a sequence of
    {class: probability} maps; and the per-class columns as a sequence of tensors."""
    seq = h.make_sequence_type_proto(h.make_map_type_proto(T.INT64, h.make_tensor_type_proto(T.FLOAT, [])))
    cols = h.make_sequence_type_proto(h.make_tensor_type_proto(T.FLOAT, None))
    graph = h.make_graph(
        [h.make_node("MatMul", ["x", "W"], ["xw"]), h.make_node("Add", ["xw", "B"], ["logits"]),
         h.make_node("Softmax", ["logits"], ["p"], axis=1),
         h.make_node("ZipMap", ["p"], ["probabilities"], domain="ai.onnx.ml", classlabels_int64s=list(range(10))),
         h.make_node("SplitToSequence", ["p", "one"], ["columns"], axis=1)],
        "g", [h.make_tensor_value_info("x", T.FLOAT, ["N", 16])],
        [h.make_value_info("probabilities", seq), h.make_value_info("columns", cols)],
        [nh.from_array(w, "W"), nh.from_array(b, "B"), nh.from_array(np.array(1, np.int64), "one")])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("ai.onnx.ml", 3)], ir_version=8)


def test_sequence_and_map_outputs_are_compared_as_arrays():
    """skl2onnx classifiers output ZipMap (a sequence of maps): the gate crashed with AttributeError
    ('list' object has no attribute 'dtype'). Maps are compared as [rows, classes] by key order,
    sequences of equal tensors as their stack."""
    ds = Dataset.synthetic(_zipmap_classifier(), 8)
    same = compare(_zipmap_classifier(), _zipmap_classifier(), ds)
    assert same.passed
    probs, columns = same.outputs
    assert probs.kind == "classifier" and probs.shape == [1, 10] and probs.metrics["top1_agreement"] == 1.0
    assert columns.shape == [10, 1, 1] and columns.metrics["cosine_mean"] == 1.0
    other = compare(_zipmap_classifier(), _zipmap_classifier(w=W * 0.5), ds)
    assert other.outputs[0].metrics["cosine_mean"] < 1.0
