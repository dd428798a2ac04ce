"""prune --check and sweep: the gate as a CI step on the bundled sample and on magika."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onnxprune.cli import main

ROOT = Path(__file__).resolve().parents[1]
MLP = str(ROOT / "samples" / "digits_mlp.onnx")
EVAL = str(ROOT / "samples" / "digits_eval.npz")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_prune_check_passes_and_reports(tmp_path):
    out, rep = tmp_path / "p.onnx", tmp_path / "r.json"
    r = run("prune", MLP, "-o", out, "--sparsity", "0.3", "--check", "--data", EVAL,
            "--max-accuracy-drop", "0.02", "--report", rep, "--quiet")
    assert r.exit_code == 0, r.output
    report = json.loads(rep.read_text())
    assert report["schema"] == "onnxprune.prune" and report["parity"]["passed"] is True
    assert abs(report["totals"]["sparsity_of_selected"] - 0.3) < 1e-3


def test_prune_check_fails_with_exit_1_when_heavily_pruned(tmp_path):
    r = run("prune", MLP, "-o", tmp_path / "p.onnx", "--sparsity", "0.95", "--check", "--data", EVAL,
            "--min-top1-agreement", "0.95", "--quiet")
    assert r.exit_code == 1
    assert "FAIL" in r.output
    assert (tmp_path / "p.onnx").exists()  # the artifact is still written for inspection


def test_check_of_model_against_itself_has_zero_error(tmp_path):
    rep = tmp_path / "c.json"
    r = run("check", MLP, MLP, "--data", EVAL, "--report", rep, "--max-abs", "0")
    assert r.exit_code == 0, r.output
    out = json.loads(rep.read_text())["outputs"][0]["metrics"]
    assert out["max_abs"] == 0 and out["top1_agreement"] == 1 and out["accuracy_drop"] == 0


def test_sweep_curve_is_monotone_enough_and_find_max_passes(tmp_path):
    rep = tmp_path / "s.json"
    r = run("sweep", MLP, "--data", EVAL, "--sparsities", "0.3,0.6,0.9", "--max-accuracy-drop", "0.01",
            "--report", rep)
    assert r.exit_code == 0, r.output
    pts = json.loads(rep.read_text())["points"]
    assert [p["sparsity"] for p in pts] == [0.3, 0.6, 0.9]
    assert pts[0]["passed"] and not pts[-1]["passed"]
    assert pts[0]["top1_agreement"] >= pts[-1]["top1_agreement"]
    rep2 = tmp_path / "m.json"
    r = run("sweep", MLP, "--data", EVAL, "--find-max", "--max-accuracy-drop", "0.01", "--report", rep2)
    best = json.loads(rep2.read_text())["max_passing"]
    assert best is not None and 0.3 <= best < 0.9


def test_sweep_of_channel_pruning(tmp_path):
    rep = tmp_path / "s.json"
    r = run("sweep", MLP, "--pattern", "channel", "--data", EVAL, "--sparsities", "0.25,0.5",
            "--max-accuracy-drop", "0.5", "--report", rep)
    assert r.exit_code == 0, r.output
    pts = json.loads(rep.read_text())["points"]
    assert [p["sparsity"] for p in pts] == [0.25, 0.5]
    assert 0 < pts[0]["achieved_sparsity"] < pts[1]["achieved_sparsity"] <= 0.5 + 1e-9


def test_sweep_rejects_bad_levels():
    r = CliRunner().invoke(main, ["sweep", MLP, "--sparsities", "0.5,1.5"])
    assert r.exit_code == 2 and "--sparsities" in r.output


@pytest.mark.real
def test_magika_gate_on_real_files(tmp_path):
    from realmodels import magika_data, model_path

    data = tmp_path / "magika.npz"
    np.savez(data, **magika_data(48))
    model = model_path("magika")
    r = run("check", model, model, "--data", data, "--batch-size", "16", "--max-abs", "0")
    assert r.exit_code == 0, r.output
    r = run("prune", model, "-o", tmp_path / "m.onnx", "--sparsity", "0.9", "--check", "--data", data,
            "--min-top1-agreement", "0.9", "--batch-size", "16", "--quiet")
    assert r.exit_code == 1


def test_no_output_may_overwrite_the_input_or_another_output(tmp_path):
    before = Path(MLP).read_bytes()
    for extra in (["--report", MLP], ["--masks-out", MLP], ["--masks-out", str(tmp_path / "p.onnx")]):
        r = run("prune", MLP, "-o", tmp_path / "p.onnx", *extra)
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1
    assert Path(MLP).read_bytes() == before
    assert not (tmp_path / "p.onnx").exists()


@pytest.mark.parametrize("bad", ["labels", "output_threshold"])
def test_gate_data_that_cannot_be_judged_fails_before_pruning(tmp_path, monkeypatch, bad):
    """Labels that fit no classifier output, or a per-output threshold naming no output, exit 2 before
    any pruning (not after minutes of work), and nothing is written."""
    from onnxprune.jobs import run as run_module

    data = dict(np.load(EVAL))
    extra = []
    if bad == "labels":
        data["labels"] = np.zeros((len(data["labels"]), 3), np.int64)  # 3 per sample: fits no output
    else:
        extra = ["--output-threshold", "nope:min_cosine=0.9"]
    np.savez(tmp_path / "e.npz", **data)

    def no_pruning(*a, **k):
        raise AssertionError("pruned before the gate's data was checked")

    monkeypatch.setattr(run_module, "prune_model", no_pruning)
    r = run("prune", MLP, "-o", tmp_path / "p.onnx", "--sparsity", "0.5", "--check", "--eval-data",
            tmp_path / "e.npz", *extra)
    assert r.exit_code == 2, r.output
    assert ("match no classifier output" if bad == "labels" else "'nope'") in r.output
    assert not (tmp_path / "p.onnx").exists()
