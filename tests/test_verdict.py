"""Issue 12, a verdict you can trust: N:M has one sparsity, the checked model is the deployed one,
sweep fails before its work (and keeps what it measured), reports can go to stdout, and every
interface (CLI, recipe, Python) names its own fix."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from nm_check import assert_model_nm
from onnx import TensorProto, helper, numpy_helper

from onnxprune.cli import main
from onnxprune.core.errors import DataError, OptionError
from onnxprune.core.model import Model
from onnxprune.jobs.prune_job import PruneOptions, prune_model

ROOT = Path(__file__).resolve().parents[1]
MLP = str(ROOT / "samples" / "digits_mlp.onnx")
EVAL = str(ROOT / "samples" / "digits_eval.npz")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def weights(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


# ------------------------------------------------------------------------------ N:M has one sparsity

def test_nm_refuses_a_sparsity_other_than_1_minus_n_over_m(tmp_path):
    out = tmp_path / "m.onnx"
    r = run("prune", MLP, "-o", out, "--pattern", "2:4", "--sparsity", "0.4")
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "1 - N/M = 0.5" in r.output and "leave --sparsity out" in r.output and not out.exists()
    r = run("prune", MLP, "-o", out, "--pattern", "2:4", "--sparsity", "0.25")
    assert r.exit_code == 2 and "--pattern 3:4" in r.output  # the N:M that has that sparsity
    r = run("prune", MLP, "-o", out, "--pattern", "2:4", "--sparsity", "0.5", "--quiet")
    assert r.exit_code == 0, r.output
    assert assert_model_nm(onnx.load(str(out)), 2, 4, ["fc1.weight", "fc2.weight"]) == 2


def test_nm_override_can_only_leave_a_layer_dense(tmp_path):
    out = tmp_path / "m.onnx"
    r = run("prune", MLP, "-o", out, "--pattern", "2:4", "--override", "fc1*=0.3")
    assert r.exit_code == 2 and "--override fc1*=0 or --skip fc1*" in r.output, r.output
    r = run("prune", MLP, "-o", out, "--pattern", "2:4", "--override", "fc1*=0", "--quiet")
    assert r.exit_code == 0, r.output
    w = weights(out)
    assert np.count_nonzero(w["fc1.weight"] == 0) == 0
    assert assert_model_nm(onnx.load(str(out)), 2, 4, ["fc2.weight"]) == 1


@pytest.mark.parametrize("levels", [["--find-max"], ["--sparsities", "0.3,0.5,0.7"]])
def test_sweep_refuses_nm_before_any_work(levels):
    r = run("sweep", MLP, *levels, "--pattern", "2:4", "--data", EVAL)
    assert r.exit_code == 2 and "N:M has one sparsity" in r.stderr, r.output
    assert "--pattern 2:4 --check" in r.stderr and "sparsity 0." not in r.stderr  # nothing was measured


def test_target_prune_checks_the_model_it_deploys(tmp_path):
    """Packing re-prunes (unstructured -> 2:4) before the output is written and checked."""
    out, rep = tmp_path / "m.onnx", tmp_path / "r.json"
    r = run("prune", MLP, "-o", out, "--target", "nvidia-2to4", "--pattern", "unstructured", "--sparsity", "0.5",
            "--check", "--data", EVAL, "--min-cosine", "0", "--report", rep, "--quiet")
    assert r.exit_code == 0, r.output
    checked, deployed = weights(out), weights(tmp_path / "m.nvidia-2to4" / "model.onnx")
    for name in ("fc1.weight", "fc2.weight"):
        assert np.array_equal(checked[name], deployed[name])
    report = json.loads(rep.read_text())
    assert report["target"]["enforce"]["modified"]
    fc1 = next(w for w in report["weights"] if w["name"] == "fc1.weight")
    assert fc1["sparsity"] == pytest.approx(1 - np.count_nonzero(checked["fc1.weight"]) / checked["fc1.weight"].size)
    assert fc1["sparsity"] > 0.55  # the re-pruned model, not the 50% one


def test_target_excluded_layer_gives_the_target_reason(tmp_path):
    rep = tmp_path / "r.json"
    r = run("prune", MLP, "-o", tmp_path / "m.onnx", "--target", "nvidia-2to4", "--report", rep, "--quiet")
    assert r.exit_code == 0, r.output
    fc3 = next(w for w in json.loads(rep.read_text())["weights"] if w["name"] == "fc3.weight")
    assert fc3["skipped"].startswith("not eligible for target nvidia-2to4: ") and "--skip" not in fc3["skipped"]


# ------------------------------------------------------------------------ sweep fails before its work

def test_sweep_checks_the_plot_dependency_first(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # as if not installed
    r = run("sweep", MLP, "--sparsities", "0.3,0.5", "--data", EVAL, "--plot", tmp_path / "p.png")
    assert r.exit_code == 2 and "--plot needs matplotlib" in r.stderr
    assert "sparsity 0." not in r.stderr  # no level ran


def test_sweep_keeps_the_points_measured_before_a_failure(tmp_path, monkeypatch):
    import onnxprune.jobs.sweep as sweep_mod

    real = sweep_mod.prune_and_check

    def fail_at_half(model_path, opts, sparsity, *args, **kw):
        if sparsity == 0.5:
            raise DataError("eval.npz: broken at 0.5")
        return real(model_path, opts, sparsity, *args, **kw)

    monkeypatch.setattr(sweep_mod, "prune_and_check", fail_at_half)
    rep = tmp_path / "s.json"
    r = run("sweep", MLP, "--sparsities", "0.3,0.5,0.7", "--data", EVAL, "--report", rep)
    assert r.exit_code == 2 and "broken at 0.5" in r.stderr
    report = json.loads(rep.read_text())
    assert [p["sparsity"] for p in report["points"]] == [0.3] and "broken at 0.5" in report["error"]


# -------------------------------------------------------------------------------------------- outputs

@pytest.mark.parametrize("flag", [["--report", "-"], ["--json"]])
def test_report_dash_is_pure_json_on_stdout(tmp_path, monkeypatch, flag):
    monkeypatch.chdir(tmp_path)
    pruned = tmp_path / "m.onnx"
    gate = ["--data", EVAL, "--min-cosine", "0.5"]
    for args, schema in [(["prune", MLP, "-o", pruned, "--target", "nvidia-2to4", "--check", *gate], "onnxprune.prune"),
                         (["check", MLP, pruned, *gate], "onnxprune.parity"),
                         (["sweep", MLP, "--sparsities", "0.3", "--data", EVAL], "onnxprune.sweep"),
                         (["pack", pruned, "--target", "nvidia-2to4", "-o", tmp_path / "art", "--no-gzip"],
                          "onnxprune.pack")]:
        r = run(*args, *flag)
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["schema"] == schema
        assert r.stderr.strip()  # the human output is still there, on stderr
    assert not (tmp_path / "-").exists()


def test_json_and_a_report_path_are_exclusive(tmp_path):
    r = run("check", MLP, MLP, "--data", EVAL, "--json", "--report", tmp_path / "r.json")
    assert r.exit_code == 2 and "--json" in r.stderr and not (tmp_path / "r.json").exists()


def test_missing_output_folder_is_created_and_said(tmp_path):
    out = tmp_path / "new" / "sub" / "m.onnx"
    r = run("prune", MLP, "-o", out, "--quiet")
    assert r.exit_code == 0 and out.exists()
    assert r.stderr.strip() == f"onnxprune: created folder {out.parent}"
    r = run("prune", MLP, "-o", out, "--quiet")
    assert "created folder" not in r.stderr  # only when it was missing


def test_pack_of_an_unpruned_model_says_to_prune_first(tmp_path):
    r = run("pack", MLP, "--target", "nvidia-2to4", "-o", tmp_path / "art", "--quiet")  # no stage lines
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "no weight is pruned" in r.output and f"onnxprune prune {MLP} -o OUT --target nvidia-2to4" in r.output
    assert not (tmp_path / "art").exists()
    from onnxprune.core.errors import NothingToPackError
    from onnxprune.pack.passes import pack_model

    with pytest.raises(NothingToPackError, match=r"prune it in the target's pattern \(2:4\) first"):
        pack_model(Model.load(MLP), "nvidia-2to4")


# -------------------------------------------------------------------------- each interface, its own fix

def test_each_interface_names_its_own_fix(tmp_path):
    out = tmp_path / "m.onnx"
    r = run("prune", MLP, "-o", out, "--criterion", "wanda")
    assert r.exit_code == 2 and "give --data FILE" in r.output, r.output
    r = run("run", "unstructured-gate", MLP, "-o", out, "--set", 'prune.criterion="wanda"')
    assert r.exit_code == 2 and 'give data.calibration="FILE"' in r.output and "--data" not in r.output, r.output
    with pytest.raises(OptionError) as e:
        prune_model(Model.load(MLP), PruneOptions(criterion="wanda"))
    assert "give data='FILE'" in str(e.value) and "--" not in str(e.value)
    recipe = tmp_path / "nm.toml"
    recipe.write_text('[prune]\npattern = "2:4"\nsparsity = 0.4\n')
    r = run("run", recipe, MLP, "-o", out)
    assert r.exit_code == 2 and "nm.toml:3: prune.sparsity:" in r.output and "leave prune.sparsity out" in r.output
    with pytest.raises(OptionError, match="leave sparsity out"):
        PruneOptions(pattern="2:4", sparsity=0.4)
    assert not out.exists()


def test_channel_repair_without_data_is_refused_not_run_on_synthetic_inputs(tmp_path):
    r = run("prune", MLP, "-o", tmp_path / "m.onnx", "--pattern", "channel", "--repair", "lstsq")
    assert r.exit_code == 2 and "repair lstsq reads calibration inputs: give --data FILE" in r.output, r.output


def test_prune_model_takes_a_path(tmp_path):
    before = Path(MLP).read_bytes()
    ctx, report = prune_model(MLP, PruneOptions(sparsity=0.5), progress=False)
    assert report["totals"]["sparsity_of_selected"] == pytest.approx(0.5, abs=1e-3)
    assert Path(MLP).read_bytes() == before
    ctx.model.save(tmp_path / "m.onnx")
    with pytest.raises(OptionError, match="give a Model or the path"):
        prune_model(42, PruneOptions())


# ------------------------------------------------------------------- notes that matter (LayerNorm)

def _layernorm_mlp(output_normalised: bool) -> onnx.ModelProto:
    """x -> MatMul -> LayerNormalization -> MatMul; the normalised tensor optionally also a graph output
    (which freezes its channel group)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "w1"),
             numpy_helper.from_array(np.ones(32, np.float32), "ln_scale"),
             numpy_helper.from_array(np.zeros(32, np.float32), "ln_bias"),
             numpy_helper.from_array(rng.standard_normal((32, 8)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("LayerNormalization", ["h", "ln_scale", "ln_bias"], ["n"], name="ln", axis=-1),
             helper.make_node("MatMul", ["n", "w2"], ["y"], name="fc2")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])]
    if output_normalised:
        outputs.append(helper.make_tensor_value_info("n", TensorProto.FLOAT, [1, 32]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("frozen", [False, True])
def test_layernorm_note_only_when_its_axis_is_pruned(frozen):
    _, report = prune_model(Model(_layernorm_mlp(frozen)), PruneOptions(pattern="channel", sparsity=0.5), progress=False)
    notes = [n for n in report["structured"]["notes"] if "LayerNormalization" in n]
    assert (notes == []) == frozen, report["structured"]["notes"]


def test_sweep_keeps_a_relative_report_path_after_a_failure(tmp_path, monkeypatch):
    import onnxprune.jobs.sweep as sweep_mod

    monkeypatch.setattr(sweep_mod, "prune_and_check", lambda *a, **k: (_ for _ in ()).throw(DataError("broken")))
    monkeypatch.chdir(tmp_path)
    r = run("sweep", MLP, "--sparsities", "0.3", "--data", EVAL, "--report", "s.json")
    assert r.exit_code == 2 and json.loads((tmp_path / "s.json").read_text())["error"] == "broken"


def test_an_unknown_repair_fails_when_the_options_are_made():
    with pytest.raises(OptionError, match="repair 'bogus': use one of none, lstsq"):
        PruneOptions(repair="bogus")


def test_margin_is_the_tightest_relative_gap_of_the_gate():
    """ParityReport.margin: negative exactly when a threshold fails, scaled by the limit, and the minimum
    over checks (finite-value checks only count when they fail)."""
    from onnxprune.check.parity import Check, OutputReport, ParityReport, Thresholds

    def report(*checks):
        out = OutputReport("y", "float32", [1], "scores", 1, {}, list(checks))
        return ParityReport("a", "b", {}, {}, Thresholds(), [out])

    top1 = Check("min_top1_agreement", "top1_agreement", 0.99, 0.9922, True)
    l2 = Check("max_rel_l2", "rel_l2", 0.1, 0.05, True)
    finite = Check("finite", "nonfinite", 0, 0, True)
    assert report(top1, finite).margin() == pytest.approx((0.9922 - 0.99) / 0.99)
    assert report(top1, l2).margin() == pytest.approx((0.9922 - 0.99) / 0.99)  # the tighter of 0.0022 and 0.5
    failing = Check("min_top1_agreement", "top1_agreement", 0.99, 0.98, False)
    assert report(failing).margin() < 0 and report(Check("finite", "nonfinite", 0, 3, False)).margin() == -float("inf")
