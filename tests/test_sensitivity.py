"""`onnxprune sensitivity` and `--allocation sensitivity`: per-layer curves measured with the prune job's
own passes (checked against a prune run of that layer alone), the on-disk cache, the process pool and Ray
executors, the greedy allocation and the budget it meets."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest
from click.testing import CliRunner

from onnxprune.check.data import Dataset
from onnxprune.check.parity import compare
from onnxprune.cli import main
from onnxprune.core.errors import OptionError
from onnxprune.core.model import Model
from onnxprune.jobs import sensitivity as sens
from onnxprune.jobs.prune_job import PruneOptions, build_pipeline, prune_model
from onnxprune.prune.allocation_sensitivity import (
    Budget,
    Curve,
    allocate,
    allocate_from_curves,
)

MLP, CALIB, EVAL = "samples/digits_mlp.onnx", "samples/digits_calib.npz", "samples/digits_eval.npz"
CNN, CNN_CALIB, CNN_EVAL = "samples/digits_cnn.onnx", "samples/digits_cnn_calib.npz", "samples/digits_cnn_eval.npz"


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _spec(path=MLP, calib=CALIB, evals=EVAL, n=60, levels=(0.5, 0.9), **opts) -> sens.Spec:
    model = Model.load(path)
    cal = Dataset.from_source(calib, model.proto).subset(n)
    ev = Dataset.from_source(evals, model.proto).subset(n)
    return sens.Spec(path, PruneOptions(**opts), cal, ev, list(levels), "cosine", build_pipeline,
                     latency=opts.get("pattern") == "channel", batch_size=1)  # as compare() below


# ------------------------------------------------------------------------------------------ allocation

def _curves() -> dict[str, Curve]:
    # "a" is robust and large, "b" fragile and large, "c" robust and small
    return {"a": Curve([0.5, 0.9], [0.99, 0.95], {"params": [0.25, 0.45], "sparsity": [0.25, 0.45]}),
            "b": Curve([0.5, 0.9], [0.80, 0.30], {"params": [0.20, 0.36], "sparsity": [0.20, 0.36]}),
            "c": Curve([0.5, 0.9], [0.999, 0.99], {"params": [0.05, 0.09], "sparsity": [0.05, 0.09]})}


def test_allocation_prunes_robust_layers_first_and_meets_the_budget():
    levels = allocate_from_curves(_curves(), "params=0.6")  # remove 40%
    assert levels["b"] == 0.0 and levels["a"] > 0.5 and levels["c"] > 0
    alloc = allocate(_curves(), Budget.parse("params=0.6"))
    assert alloc.met and alloc.saving >= 0.4 - 1e-9
    assert alloc.saving < 0.4 + 0.03  # interpolated levels: no large overshoot


def test_allocation_uses_measured_levels_only_without_interpolation():
    alloc = allocate(_curves(), Budget.parse("sparsity=0.3"), step=0)
    assert set(alloc.levels.values()) <= {0.0, 0.5, 0.9} and alloc.met


def test_allocation_says_when_the_budget_cannot_be_met():
    alloc = allocate(_curves(), Budget.parse("params=0.05"))
    assert not alloc.met and alloc.levels == {"a": 0.9, "b": 0.9, "c": 0.9}


@pytest.mark.parametrize("text", ["macs", "macs=1.5", "speed=0.5", "params=0"])
def test_bad_budget_is_one_line(text):
    with pytest.raises(OptionError, match="KIND=VALUE"):
        Budget.parse(text)


def test_latency_budget_needs_latency_figures():
    with pytest.raises(OptionError, match="no latency figures"):
        allocate_from_curves(_curves(), "latency=0.5")


# ----------------------------------------------------------------------------------------- measurement

def test_each_point_is_the_prune_job_on_that_layer_alone():
    spec = _spec(criterion="wanda", repair="lstsq")
    result = sens.run_sensitivity(spec, use_cache=False)
    assert result["layers"] == ["fc1.weight", "fc2.weight", "fc3.weight"]
    i = result["layers"].index("fc2.weight")
    model = Model.load(MLP)
    others = {k: "other" for k in result["layers"] if k != "fc2.weight"}
    prune_model(model, dataclasses.replace(spec.opts, sparsity=0.9), spec.calibration, progress=False, exclude=others)
    report = compare(Model.load(MLP), model, spec.evaluation)
    assert result["matrix"][i][1] == report.outputs[0].metrics["cosine_mean"]
    assert result["achieved"][i][1] == pytest.approx(0.9, abs=1e-3)
    assert result["saved"]["sparsity"][i][1] == pytest.approx(0.9 * 32768 / 50432, abs=1e-3)
    assert all(m[0] >= m[1] - 0.02 for m in result["matrix"])  # more pruning, less parity


def test_cache_makes_a_rerun_instant(tmp_path, monkeypatch):
    spec = _spec(levels=(0.5,))
    first = sens.run_sensitivity(spec, cache_dir=tmp_path)
    assert first["cached"] is False and len(list(tmp_path.glob("*.json"))) == 1

    def no_work(*a, **k):
        raise AssertionError("measured again")
    monkeypatch.setattr(sens, "Worker", no_work)
    again = sens.run_sensitivity(_spec(levels=(0.5,)), cache_dir=tmp_path)
    assert again["cached"] is True and again["matrix"] == first["matrix"]
    with pytest.raises(AssertionError, match="measured again"):  # other options: another key
        sens.run_sensitivity(_spec(levels=(0.3,)), cache_dir=tmp_path)


def test_two_workers_give_the_same_matrix():
    one = sens.run_sensitivity(_spec(levels=(0.7,)), use_cache=False)
    two = sens.run_sensitivity(_spec(levels=(0.7,)), workers=2, use_cache=False)
    assert one["matrix"] == two["matrix"] and one["layers"] == two["layers"]


@pytest.mark.slow  # starting Ray takes 30 s or more
def test_ray_executor_gives_the_same_matrix():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        local = sens.run_sensitivity(_spec(levels=(0.7,)), use_cache=False)
        remote = sens.run_sensitivity(_spec(levels=(0.7,)), executor="ray", use_cache=False)
    finally:
        ray.shutdown()
    assert remote["matrix"] == local["matrix"]


def test_missing_ray_is_one_line_before_any_work(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    r = cli("sensitivity", MLP, "--data", CALIB, "--executor", "ray", "--report", tmp_path / "r.json")
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "onnxprune[ray]" in r.output
    assert not (tmp_path / "r.json").exists()


def test_channel_groups_with_shares_and_latency():
    result = sens.run_sensitivity(_spec(CNN, CNN_CALIB, CNN_EVAL, levels=(0.5,), pattern="channel", round_to=4),
                                  use_cache=False)
    assert result["layers"] == ["g0:conv1", "g1:conv2", "g2:fc1"]
    assert set(result["saved"]) == {"params", "macs", "latency", "sparsity"}
    for name in result["layers"]:
        assert 0 < result["shares"][name]["macs"] <= 1 and "latency" in result["shares"][name]
    assert all(0 < row[0] <= 1 for row in result["saved"]["macs"])


def test_cli_table_report_and_heatmap(tmp_path):
    pytest.importorskip("matplotlib")
    report, png = tmp_path / "s.json", tmp_path / "s.png"
    r = cli("sensitivity", MLP, "--data", CALIB, "--eval-data", EVAL, "--levels", "0.5,0.9", "--metric", "top1",
            "--cache-dir", tmp_path / "cache", "--report", report, "--plot", png)
    assert r.exit_code == 0, r.output
    assert "fc2.weight" in r.output and "params share" in r.output
    data = json.loads(report.read_text())
    assert data["schema"] == "onnxprune.sensitivity" and len(data["sensitivity"]["matrix"]) == 3
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_levels_fail_before_work(tmp_path):
    r = cli("sensitivity", MLP, "--levels", "0.5,1.2")
    assert r.exit_code == 2 and "levels" in r.output and r.output.count("\n") == 1


# ------------------------------------------------------------------------------------ prune --allocation

def test_prune_with_sensitivity_allocation_meets_the_sparsity_budget(tmp_path, monkeypatch):
    monkeypatch.setenv(sens.CACHE_ENV, str(tmp_path))
    model = Model.load(MLP)
    data = Dataset.from_source(CALIB, model.proto).subset(60)
    opts = PruneOptions(allocation="sensitivity", budget="sparsity=0.7")
    ctx, report = prune_model(model, opts, data, progress=False)
    alloc = report["allocation"]
    assert alloc["met"] and set(alloc["levels"]) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert len(set(alloc["levels"].values())) > 1  # not uniform
    assert report["totals"]["sparsity_of_prunable"] == pytest.approx(0.7, abs=0.01)
    for key, level in alloc["levels"].items():
        assert ctx.masks.sparsity(key) == pytest.approx(level, abs=1e-3) if level else key not in ctx.masks


def test_prune_channel_allocation_meets_the_macs_budget(tmp_path, monkeypatch):
    monkeypatch.setenv(sens.CACHE_ENV, str(tmp_path))
    out, rep = tmp_path / "c.onnx", tmp_path / "c.json"
    r = cli("prune", CNN, "-o", out, "--pattern", "channel", "--round-to", "4", "--allocation", "sensitivity",
            "--budget", "macs=0.5", "--data", CNN_CALIB, "--report", rep)
    assert r.exit_code == 0, r.output
    data = json.loads(rep.read_text())
    assert data["structured"]["macs_ratio"] <= 0.5 + 1e-9
    assert data["allocation"]["budget"] == "macs=0.5" and data["allocation"]["levels"]


def test_prune_from_a_sensitivity_report(tmp_path):
    report = tmp_path / "s.json"
    assert cli("sensitivity", MLP, "--data", CALIB, "--levels", "0.5,0.9", "--cache-dir", tmp_path,
               "--report", report).exit_code == 0
    out = tmp_path / "m.onnx"
    r = cli("prune", MLP, "-o", out, "--allocation", "sensitivity", "--budget", "params=0.5", "--sensitivity", report,
            "--json")
    assert r.exit_code == 0, r.output
    alloc = json.loads(r.stdout)["allocation"]
    assert alloc["curves_from"] == str(report) and alloc["met"]


@pytest.mark.parametrize("args, what", [
    (["--budget", "macs=0.5"], "allocation"),
    (["--allocation", "sensitivity", "--budget", "macs"], "KIND=VALUE"),
    (["--allocation", "sensitivity", "--pattern", "2:4"], "N:M"),
    (["--allocation", "bogus"], "is not one of"),
])
def test_allocation_option_errors(tmp_path, args, what):
    r = cli("prune", MLP, "-o", tmp_path / "m.onnx", *args)
    assert r.exit_code == 2 and what in r.output and r.output.count("\n") == 1


def test_uniform_default_keeps_the_options_hash():
    assert "allocation" not in PruneOptions().to_dict() and "budget" not in PruneOptions().to_dict()
    assert PruneOptions(allocation="sensitivity").to_dict()["allocation"] == "sensitivity"


def test_glob_escape_matches_exactly():
    import fnmatch

    name = "w[0]*?.x"
    assert fnmatch.fnmatchcase(name, sens.glob_escape(name))
    assert not fnmatch.fnmatchcase("w0.x", sens.glob_escape(name))


def test_prune_channel_allocation_to_a_latency_budget(tmp_path, monkeypatch):
    """Latency-aware: the per-group latency table drives the choice. The table is made deterministic here
    (latency taken as proportional to the candidate's bytes): a timing on a busy CI machine may be noise."""
    monkeypatch.setenv(sens.CACHE_ENV, str(tmp_path))
    dense_bytes = len(Model.load(CNN).proto.SerializeToString())
    monkeypatch.setattr(sens.Worker, "_latency_ratio", lambda self, candidate: len(candidate) / dense_bytes)
    model = Model.load(CNN)
    data = Dataset.from_source(CNN_CALIB, model.proto).subset(60)
    opts = PruneOptions(pattern="channel", round_to=4, allocation="sensitivity", budget="latency=0.8")
    _, report = prune_model(model, opts, data, progress=False)
    alloc = report["allocation"]
    assert alloc["budget"] == "latency=0.8" and alloc["met"] and alloc["saving"] >= 0.2 - 1e-9
    assert report["structured"]["macs_ratio"] < 1


def test_one_group_alone_leaves_the_others_whole():
    """A sensitivity candidate prunes its group only: no other group is trimmed to a multiple of round_to."""
    from onnxprune.prune.structured import prune_channels

    rows = prune_channels(Model.load(CNN), 0.0, round_to=24, group_sparsity={"g2:fc1": 0.5}).report["groups"]  # 32 -> 24
    assert [r["channels_after"] < r["channels_before"] for r in rows] == [r["name"] == "g2:fc1" for r in rows]
