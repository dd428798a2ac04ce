"""OWL allocation (outlier-weighted layerwise sparsity) and the row / layer granularity of unstructured pruning."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import _init, _model, _vi, _w, save
from click.testing import CliRunner
from onnx import helper

from onnxprune.cli import main
from onnxprune.core.errors import OptionError
from onnxprune.core.model import Model
from onnxprune.jobs.prune_job import PruneOptions, prune_model
from onnxprune.prune.allocation_owl import dense_or_nm, outlier_ratio, spread
from onnxprune.prune.patterns import per_row_unstructured, unstructured


def mlp() -> onnx.ModelProto:
    """X(n,32) -> MatMul a(32x64) -> Relu -> MatMul b(64x64) -> Relu -> MatMul c(64x32)."""
    nodes = [helper.make_node("MatMul", ["X", "a"], ["h1"], name="fa"), helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("MatMul", ["r1", "b"], ["h2"], name="fb"), helper.make_node("Relu", ["h2"], ["r2"]),
             helper.make_node("MatMul", ["r2", "c"], ["Y"], name="fc")]
    inits = [_init("a", _w((32, 64), 1)), _init("b", _w((64, 64), 2)), _init("c", _w((64, 32), 3))]
    return _model(nodes, [_vi("X", ["n", 32])], [_vi("Y", ["n", 32])], inits)


def calib(tmp_path, n=64):
    """Inputs whose first 3 features are 40x larger than the rest: layer a sees outlier columns."""
    x = np.random.default_rng(0).standard_normal((n, 32)).astype(np.float32)
    x[:, :3] *= 40
    path = tmp_path / "calib.npz"
    np.savez(path, X=x)
    return path


def test_spread_averages_to_target_and_orders_by_outliers():
    ratios = {"a": 0.05, "b": 0.01, "c": 0.0, "d": 0.02}
    params = {"a": 1000, "b": 4000, "c": 500, "d": 2000}
    s = spread(ratios, params, 0.6, 0.1)
    mean = sum(s[k] * params[k] for k in s) / sum(params.values())
    assert mean == pytest.approx(0.6, abs=1e-9)
    assert s["a"] < s["d"] < s["b"] < s["c"]
    assert max(s.values()) - min(s.values()) == pytest.approx(0.2)
    assert spread({"a": 0.1, "b": 0.1}, {"a": 5, "b": 7}, 0.5, 0.1) == pytest.approx({"a": 0.5, "b": 0.5})
    near_one = spread(ratios, params, 0.97, 0.1)  # clipped at 0.99: the others rise to keep the mean
    assert max(near_one.values()) <= 0.99
    assert sum(near_one[k] * params[k] for k in s) / sum(params.values()) == pytest.approx(0.97, abs=1e-9)


def test_dense_or_nm_keeps_most_outliers_dense_within_lambda():
    ratios = {"a": 0.05, "b": 0.01, "c": 0.03, "d": 0.0}
    params = {"a": 100, "b": 100, "c": 1000, "d": 800}
    out = dense_or_nm(ratios, params, 0.5, 0.1)
    assert out == {"a": 0.0, "b": 0.0, "c": 0.5, "d": 0.5}  # c passed over: with it dense the sparsity < 0.5 - 0.1
    sparsity = sum(out[k] * params[k] for k in out) / sum(params.values())
    assert 0.4 <= sparsity <= 0.5
    assert set(dense_or_nm(ratios, params, 0.5, 0.0).values()) == {0.5}


def test_outlier_ratio():
    s = np.ones(100)
    s[:3] = 100.0
    assert outlier_ratio(s, 5) == pytest.approx(0.03)
    assert outlier_ratio(np.zeros(10), 5) == 0.0


def test_owl_prunes_the_outlier_layer_less_and_keeps_the_overall_sparsity(tmp_path):
    path = save(mlp(), tmp_path / "m.onnx")
    model = Model.load(path)
    ctx, report = prune_model(model, PruneOptions(sparsity=0.6, allocation="owl", criterion="wanda", min_params=0),
                              data=calib(tmp_path), progress=False)
    owl = next(p for p in report["passes"] if p["pass"] == "allocate-owl")
    chosen = {k: v["sparsity"] for k, v in owl["weights"].items()}
    ratios = {k: v["outlier_ratio"] for k, v in owl["weights"].items()}
    assert max(ratios, key=ratios.get) == "a" and min(chosen, key=chosen.get) == "a"
    assert max(chosen.values()) - min(chosen.values()) == pytest.approx(0.16)
    rows = {w["name"]: w for w in report["weights"]}
    for k, s in chosen.items():  # the masks follow the allocation (to the entry)
        assert rows[k]["sparsity"] == pytest.approx(s, abs=1 / rows[k]["params"] + 1e-9)
    assert report["totals"]["sparsity_of_selected"] == pytest.approx(0.6, abs=2e-3)
    out = ctx.model.proto
    assert onnx.numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == "a")).size == 32 * 64


def test_owl_gradual_reaches_the_allocation_and_nm_leaves_layers_dense(tmp_path):
    path = save(mlp(), tmp_path / "m.onnx")
    data = calib(tmp_path)
    _, once = prune_model(path, PruneOptions(sparsity=0.5, allocation="owl", min_params=0), data=data, progress=False)
    _, steps = prune_model(path, PruneOptions(sparsity=0.5, allocation="owl", min_params=0, steps=3), data=data,
                           progress=False)
    assert [w["sparsity"] for w in once["weights"]] == [w["sparsity"] for w in steps["weights"]]
    _, nm = prune_model(path, PruneOptions(pattern="2:4", allocation="owl", owl_lambda=0.2, min_params=0),
                        data=data, progress=False)
    by = {w["name"]: w for w in nm["weights"]}
    assert by["a"]["sparsity"] == 0 and "allocation" in by["a"]["skipped"]  # the outlier layer stays dense
    assert by["b"]["sparsity"] == by["c"]["sparsity"] == 0.5


def test_owl_needs_data_and_layer_scope(tmp_path):
    path = save(mlp(), tmp_path / "m.onnx")
    with pytest.raises(OptionError, match="allocation owl"):
        prune_model(path, PruneOptions(allocation="owl"))
    with pytest.raises(OptionError, match="scope"):
        PruneOptions(allocation="owl", scope="global")
    with pytest.raises(OptionError, match="channel"):
        PruneOptions(allocation="owl", pattern="channel")
    result = CliRunner().invoke(main, ["prune", str(path), "-o", str(tmp_path / "o.onnx"), "--allocation", "owl"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == "onnxprune: error: allocation owl reads calibration inputs: give --data FILE"
    assert not (tmp_path / "o.onnx").exists()


def test_granularity_row_prunes_every_row_equally():
    scores = np.abs(np.random.default_rng(0).standard_normal((6, 10))) * np.arange(1, 7)[:, None]
    keep = np.ones_like(scores, dtype=bool)
    row = per_row_unstructured(scores, keep, 0.5)
    assert (row.sum(axis=1) == 5).all()
    layer = unstructured(scores, keep, 0.5)
    assert layer.sum() == 30 and not (layer.sum(axis=1) == 5).all()


def test_granularity_option_in_the_job(tmp_path):
    path = save(mlp(), tmp_path / "m.onnx")
    for g in ("row", "layer", "auto"):  # auto: magnitude compares over the layer
        ctx, _ = prune_model(path, PruneOptions(sparsity=0.5, granularity=g, min_params=0), progress=False)
        kept = ctx.masks.get("b")  # MatMul weight (in, out): an output row is a column of the stored tensor
        assert ((kept.sum(axis=0) == 32).all()) == (g == "row")
    with pytest.raises(OptionError, match="granularity"):
        PruneOptions(granularity="block")
