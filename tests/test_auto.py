"""`onnxprune auto`: the most compressed passing model within a budget, its reproducing recipe, its trace."""

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onnxprune.cli import main
from onnxprune.core.errors import OptionError
from onnxprune.core.model import Model
from onnxprune.jobs.auto import Budget, default_options
from onnxprune.jobs.measure import latency, model_size

ROOT = Path(__file__).resolve().parents[1]
CNN = str(ROOT / "samples" / "digits_cnn.onnx")
CALIB = str(ROOT / "samples" / "digits_cnn_calib.npz")
EVAL = str(ROOT / "samples" / "digits_cnn_eval.npz")
FAST = ["--calib-samples", "16", "--samples", "64", "--latency-reps", "2", "--quiet"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_recipe_reproduces(recipe: Path, out: Path) -> None:
    """`onnxprune run RECIPE` writes the bytes auto wrote to `out` (and its gate passes again)."""
    again = out.with_name("again.onnx")
    r = run("run", recipe, "-o", again, "--quiet")
    assert r.exit_code == 0, r.output
    assert sha(again) == sha(out)


@pytest.fixture(scope="module")
def channel_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auto")
    out, report = tmp / "cnn.onnx", tmp / "report.json"
    r = run("auto", CNN, "-o", out, "--data", CALIB, "--eval-data", EVAL, "--pattern", "channel",
            "--budget", "macs=0.3", "--min-top1-agreement", "0.95", "--max-candidates", "4", "--report", report,
            *(["--html", tmp / "auto.html"] if importlib.util.find_spec("matplotlib") else []), *FAST)
    return tmp, out, report, r


def test_the_html_report_shows_the_search(channel_run):
    pytest.importorskip("matplotlib")
    tmp, _, report, r = channel_run
    page = (tmp / "auto.html").read_text()
    assert "onnxprune.auto" in page or "auto" in page.lower()
    assert "<img" in page and "http://" not in page and "https://" not in page  # plots inline, nothing fetched
    assert f"{json.loads(report.read_text())['chosen']['level']:g}" in page


def test_channel_search_finds_a_passing_level_within_the_budget(channel_run):
    tmp, out, report_path, r = channel_run
    assert r.exit_code == 0, r.output
    report = json.loads(report_path.read_text())
    assert report["schema"] == "onnxprune.auto" and report["passed"]
    chosen, trace = report["chosen"], report["trace"]
    assert 0 < sum("same_as_level" not in p for p in trace) <= 4 and report["search"]["budget_probes"]
    for p in trace:  # every candidate: level, parity metrics, MACs, latency, size, verdict, time
        assert {"level", "parity", "macs", "latency", "size", "sparsity", "passed", "time_s"} <= set(p)
    assert chosen["passed"] and chosen["level"] == max(p["level"] for p in trace if p["passed"])
    assert chosen["level"] <= report["search"]["cap_level"]
    assert chosen["macs"] < 1 and chosen["parity"]["logits"]["top1_agreement"] >= 0.95
    assert chosen["options"]["repair"] == "lstsq" and chosen["options"]["round_to"] == 16  # channel defaults
    assert any(g["channels_after"] < g["channels_before"] for g in chosen["layers"])  # per-layer choices
    assert out.exists() and Path(report["recipe"]).exists()


def test_the_recipe_reproduces_the_chosen_model_byte_for_byte(channel_run):
    tmp, out, report_path, r = channel_run
    recipe = tmp / "cnn.recipe.toml"
    again = tmp / "again.onnx"
    r = run("run", recipe, "-o", again, "--quiet")
    assert r.exit_code == 0, r.output  # the recipe also re-runs the gate
    assert sha(again) == sha(out)


def test_sensitivity_allocation_sets_each_level_and_the_recipe_reproduces_it(tmp_path, monkeypatch):
    """With --allocation sensitivity every candidate level is an overall budget the measured curves are
    allocated to (prune.budget in the recipe), and `onnxprune run` of the recipe gives the same bytes."""
    monkeypatch.setenv("ONNXPRUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "cnn.onnx"
    r = run("auto", CNN, "-o", out, "--data", CALIB, "--eval-data", EVAL, "--pattern", "channel", "--budget",
            "macs=0.5", "--min-top1-agreement", "0.9", "--max-candidates", "3", "--allocation", "sensitivity", *FAST)
    assert r.exit_code == 0, r.output
    recipe = (tmp_path / "cnn.recipe.toml").read_text()
    assert 'allocation = "sensitivity"' in recipe and 'budget = "sparsity=' in recipe
    assert_recipe_reproduces(tmp_path / "cnn.recipe.toml", out)


def test_quantize_checks_the_quantized_candidate_and_the_recipe_reproduces_it(tmp_path):
    """With --quantize every candidate is pruned, repaired, then quantized before the gate (the artifact
    deployed), and `onnxprune run` of the recipe writes the same bytes."""
    out = tmp_path / "cnn.onnx"
    r = run("auto", CNN, "-o", out, "--data", CALIB, "--eval-data", EVAL, "--pattern", "channel", "--budget",
            "macs=0.5", "--min-top1-agreement", "0.9", "--max-candidates", "2", "--quantize", "int8", *FAST)
    assert r.exit_code == 0, r.output
    assert any(n.op_type == "DequantizeLinear" for n in Model.load(out).proto.graph.node)
    assert_recipe_reproduces(tmp_path / "cnn.recipe.toml", out)


def test_unstructured_with_one_data_file_splits_and_reproduces(tmp_path):
    out = tmp_path / "m.onnx"
    r = run("auto", CNN, "-o", out, "--data", CALIB, "--budget", "sparsity=0.6", "--criterion", "wanda",
            "--min-top1-agreement", "0.9", "--max-candidates", "2", "--json", *FAST)
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["inputs"]["calibration"]["samples"] + report["inputs"]["evaluation"]["samples"] == 64  # halves
    assert report["chosen"]["sparsity"] == pytest.approx(report["chosen"]["level"], abs=0.02)
    assert report["chosen"]["size"] < 1 and report["chosen"]["macs"] == 1.0  # zeros: smaller deflated, same MACs
    assert_recipe_reproduces(tmp_path / "m.recipe.toml", out)


def test_impossible_thresholds_exit_1_and_write_no_model(tmp_path):
    out, report = tmp_path / "m.onnx", tmp_path / "r.json"
    r = run("auto", CNN, "-o", out, "--data", CALIB, "--eval-data", EVAL, "--budget", "sparsity=0.5",
            "--criterion", "magnitude", "--repair", "none", "--max-abs", "0", "--max-candidates", "2",
            "--report", report, *FAST)
    assert r.exit_code == 1, r.output
    assert "no candidate passed" in r.output and "max_abs" in r.output
    assert not out.exists() and not (tmp_path / "m.recipe.toml").exists()
    data = json.loads(report.read_text())
    assert data["passed"] is False and data["chosen"] is None and len(data["trace"]) == 2


@pytest.mark.parametrize("budget", ["macs", "macs=", "macs=1.5", "speed=0.5", "sparsity=0", "macs=abc"])
def test_bad_budget_exits_2_with_one_line(tmp_path, budget):
    r = run("auto", CNN, "-o", tmp_path / "m.onnx", "--data", CALIB, "--budget", budget)
    assert r.exit_code == 2
    assert len(r.output.strip().splitlines()) == 1 and "--budget" in r.output
    assert not (tmp_path / "m.onnx").exists()


def test_speed_budget_needs_channel_pattern(tmp_path):
    r = run("auto", CNN, "-o", tmp_path / "m.onnx", "--data", CALIB, "--budget", "latency=0.5")
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "--pattern channel" in r.output


def test_budget_parse_and_defaults():
    assert Budget.parse("macs=0.6") == Budget("macs", 0.6)
    assert Budget("macs", 0.6).met(0.59) and not Budget("macs", 0.6).met(0.61)
    assert Budget("sparsity", 0.5).met(0.5) and not Budget("sparsity", 0.5).met(0.4)
    with pytest.raises(OptionError):
        Budget.parse("size=-1")
    assert (default_options({"pattern": "2:4"}).criterion, default_options({}).repair) == ("sparsegpt", "lstsq")
    assert default_options({"pattern": "channel", "criterion": "wanda"}).criterion == "wanda"  # given wins


def test_size_counts_external_data_and_latency_is_side_by_side(tmp_path):
    path = tmp_path / "ext.onnx"
    Model.load(CNN).save(path, external_data=True)
    files = [f for f in tmp_path.iterdir() if f.name.startswith("ext.onnx")]
    assert len(files) == 2  # the model and its content-named data file
    size = model_size(path)
    assert size["bytes"] == sum(f.stat().st_size for f in files) and 0 < size["deflated"] < size["bytes"]
    feed = {"input": np.zeros((1, 1, 8, 8), np.float32)}
    lat = latency(CNN, path, feed, reps=3)
    assert lat["dense_ms"] > 0 and lat["candidate_ms"] > 0 and lat["reps"] == 3


def test_a_level_that_removes_nothing_is_not_an_answer(tmp_path):
    out = tmp_path / "m.onnx"
    r = run("auto", CNN, "-o", out, "--data", CALIB, "--eval-data", EVAL, "--pattern", "channel", "--budget",
            "sparsity=0.02", "--min-top1-agreement", "0.5", "--max-candidates", "1", *FAST)
    assert r.exit_code == 1, r.output  # 2% of a few channels rounds to none removed: the dense model
    assert "removes nothing" in r.output and not out.exists()


def _outlier_mlp(folder: Path) -> tuple[Path, Path, Path]:
    """x -> fc1 -> Relu -> x[1000, 1, 1, ...] -> fc2: one activation channel 1000x the others, so int8 of fc2's
    input (one range per tensor) rounds every other channel to zero, while fc1 quantizes well."""
    import onnx
    from onnx import helper, numpy_helper

    r = np.random.default_rng(0)
    w1 = r.standard_normal((32, 64)).astype(np.float32) / 6
    w2 = r.standard_normal((64, 10)).astype(np.float32) / 8
    w2[0] *= 1e-3
    scale = np.ones(64, np.float32)
    scale[0] = 1000
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["a"], name="act"),
             helper.make_node("Mul", ["a", "s"], ["b"], name="outlier"), helper.make_node("MatMul", ["b", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "outlier", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 32])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 10])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
                               numpy_helper.from_array(scale, "s")])
    path = folder / "outlier.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = r.standard_normal((256, 32)).astype(np.float32)
    x[:, 0] = np.abs(x[:, 0])
    np.savez(folder / "cal.npz", x=x[:128])
    np.savez(folder / "ev.npz", x=x[128:])
    return path, folder / "cal.npz", folder / "ev.npz"


def test_mixed_precision_keeps_the_harmful_node_float_and_the_recipe_reproduces_it(tmp_path):
    """auto --quantize int8 where int8 of the dense model already fails the gate: the node whose quantization
    alone hurts (fc2) stays float, the other is quantized, and the recipe records it (prune.quantize_skip)."""
    path, cal, ev = _outlier_mlp(tmp_path)
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    r = run("auto", path, "-o", out, "--data", cal, "--eval-data", ev, "--budget", "sparsity=0.3", "--min-cosine",
            "0.99", "--max-candidates", "2", "--quantize", "int8", "--criterion", "magnitude", "--repair", "none",
            "--report", report, *FAST)
    assert r.exit_code == 0, r.output
    mixed = json.loads(report.read_text())["mixed_precision"]
    assert mixed["quantized_dense"]["passed"] is False and mixed["kept_float"] == ["fc2"]
    assert mixed["nodes"]["fc2"]["margin_lost"] > mixed["nodes"]["fc1"]["margin_lost"]
    proto = Model.load(out).proto
    inits = {t.name: t.data_type for t in proto.graph.initializer}
    assert inits["w2"] == 1 and "w1" not in inits and inits["w1_quantized"] == 3  # float, int8
    assert_recipe_reproduces(tmp_path / "out.recipe.toml", out)


def test_with_quantize_a_level_that_removes_nothing_is_the_quantized_model(tmp_path):
    """With --quantize the level that rounds to no channel removed is the dense model quantized: compressed,
    so an answer (the user asked for int8), and its recipe reproduces it."""
    out = tmp_path / "m.onnx"
    r = run("auto", CNN, "-o", out, "--data", CALIB, "--eval-data", EVAL, "--pattern", "channel", "--budget",
            "sparsity=0.02", "--min-top1-agreement", "0.5", "--max-candidates", "1", "--quantize", "int8", *FAST)
    assert r.exit_code == 0, r.output
    assert any(n.op_type == "DequantizeLinear" for n in Model.load(out).proto.graph.node)
    assert_recipe_reproduces(tmp_path / "m.recipe.toml", out)


def test_median_latencies_alternate_which_session_runs_first():
    from onnxprune.core.runtime import median_latencies

    calls = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def run(self, outputs, feed):
            calls.append(self.name)

    medians = median_latencies([Fake("a"), Fake("b")], {}, reps=4, warmup=1)
    assert len(medians) == 2 and calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]
