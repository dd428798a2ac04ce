"""What a person sees: stage lines and -q/-v, tables fitted to the terminal, the summary line after a
write, grouped help, shell completion, readable reprs and API errors that name the parameter."""

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import onnxprune as op
from onnxprune.cli import main
from onnxprune.core.errors import OptionError
from onnxprune.core.report import table

ROOT = Path(__file__).resolve().parents[1]
MLP = str(ROOT / "samples" / "digits_mlp.onnx")
HOOK = str(ROOT / "samples" / "finetune_hook.py") + ":finetune"
CALIB = str(ROOT / "samples" / "digits_calib.npz")


def run(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


# ------------------------------------------------------------------------------------- progress

def _hook(ctx):
    return None


def test_gradual_run_logs_one_stage_line_per_step_and_quiet_verbose_change_it(tmp_path):
    args = ("prune", MLP, "-o", tmp_path / "m.onnx", "--sparsity", "0.8", "--steps", "2", "--hook",
            __file__ + ":_hook")
    r = run(*args)
    assert r.exit_code == 0, r.output
    lines = r.stderr.splitlines()
    assert any(x.startswith("onnxprune: step 1/2: sparsity 0.") and "hook _hook" in x for x in lines), r.stderr
    assert any(x.startswith("onnxprune: step 2/2: sparsity 0.80") for x in lines), r.stderr
    assert not any(": 1/3 fc1.weight" in x for x in lines)  # per-layer lines only with -v
    assert "wrote " in r.stdout and " on disk, params 50,826 -> 50,826, non-zeros " in r.stdout
    quiet = run(*args, "-q")
    assert quiet.exit_code == 0 and quiet.stderr == "" and quiet.stdout == ""
    assert run("-q", *args).stderr == ""  # on the group too
    verbose = run(*args, "-v", env={"COLUMNS": "80"})
    assert verbose.exit_code == 0 and "onnxprune: prune step 1" in verbose.stderr


def test_calibrated_run_logs_capture_per_layer_and_repair_with_verbose(tmp_path):
    r = run("prune", MLP, "-o", tmp_path / "m.onnx", "--criterion", "wanda", "--repair", "bias", "--data", CALIB,
            "--calib-samples", "16", "-v")
    assert r.exit_code == 0, r.output
    err = r.stderr
    for line in ("onnxprune: calibration data: 16 samples", "onnxprune: wanda step 1: 1/3 fc1.weight",
                 "onnxprune: capture (", "onnxprune: prune step 1: sparsity 0.50 (wanda, unstructured), 3 weights",
                 "onnxprune: repair bias: 3/3 fc3.weight", "onnxprune: repair bias: "):
        assert line in err, (line, err)


def test_failed_gate_says_the_model_was_kept(tmp_path):
    out = tmp_path / "m.onnx"
    r = run("prune", MLP, "-o", out, "--sparsity", "0.95", "--check", "--data", CALIB, "--min-cosine", "0.999")
    assert r.exit_code == 1 and out.exists()
    assert r.stdout.strip().splitlines()[-1].startswith(f"the model failed the parity gate and was kept at {out}")


# --------------------------------------------------------------------------------------- tables

def test_table_fits_the_width_aligns_and_never_cuts_a_word_without_an_ellipsis():
    rows = [("encoder/layer.0/attention/self/query/MatMul_weight_quantized", "MatMul", 1234567, 0.5,
             "too small: fewer than 1024 parameters and a reason long enough to wrap over lines"),
            ("b", "Conv", 12, 0.25, "-")]
    text = table(["weight", "op", "params", "sparsity", "note"], rows, width=60)
    lines = text.splitlines()
    assert max(map(len, lines)) <= 60, text
    assert "1,234,567" in text and "12" in text
    joined = "".join(x.strip() for x in lines)
    assert "encoder/layer.0/attention/self/query/" in joined  # a long name is broken after "/", not lost
    params_col = [x for x in lines if "1,234,567" in x][0]
    small = [x for x in lines if x.rstrip().endswith("-") and "Conv" in x][0]
    assert params_col.index("1,234,567") + len("1,234,567") == small.index("12") + 2  # numbers right-aligned
    clipped = table(["name", "n"], [("x" * 50, 1)], width=20)
    assert "…" in clipped and max(map(len, clipped.splitlines())) <= 20
    legend = table(["a", "b"], [(1, 2)], legend={"a": "explained once"})
    assert legend.splitlines()[-1] == "a: explained once"


def test_inspect_and_targets_fit_80_columns():
    for args in (("inspect", MLP), ("targets",)):
        r = run(*args, env={"COLUMNS": "80"})
        assert r.exit_code == 0, r.output
        assert max(map(len, r.stdout.splitlines())) <= 80, r.stdout
    r = run("inspect", MLP, env={"COLUMNS": "80"})
    assert "red.axes: " in r.stdout and "matrix: " in r.stdout and "chain: " in r.stdout


def test_parity_table_explains_cosine_and_hides_topk_for_hidden_states(tmp_path):
    x = np.load(CALIB)["input"][:32]  # no labels: top-k agreement is the only class-score metric
    report = op.compare(MLP, MLP, op.Dataset.from_arrays({"input": x}, op.load_model(MLP).proto))
    text = report.render()
    assert "cosine_mean: cosine similarity of candidate and original per sample" in text
    assert "top1_agreement" in text  # [batch, 10] logits are class scores
    o = report.outputs[0]
    o.shape = [1, 8, 10]  # as a hidden state [batch, tokens, features] would be
    assert "top1_agreement" not in report.render() and "top5_agreement" not in report.render()


# ----------------------------------------------------------------------------------------- help

def test_help_groups_prune_options_and_lists_full_summaries():
    r = run("prune", "--help")
    for section in ("Pattern:", "Scope", "Calibration data and repair:", "Schedule", "Target", "Check",
                    "Output:", "Examples:"):
        assert section in r.stdout, section
    assert r.stdout.index("Pattern:") < r.stdout.index("Examples:")
    top = " ".join(run("--help").stdout.split())
    assert "Compare CANDIDATE with ORIGINAL in onnxruntime on the same inputs; exit 1 if a threshold" in top
    assert "-q, --quiet" in top and "-v, --verbose" in top
    for command in ("inspect", "check", "prune", "sweep", "run", "pack", "targets"):
        assert "-q, --quiet" in run(command, "--help").stdout, command


def test_shell_completion_completes_commands():
    r = CliRunner().invoke(main, [], prog_name="onnxprune",
                           env={"_ONNXPRUNE_COMPLETE": "bash_complete", "COMP_WORDS": "onnxprune pr",
                                "COMP_CWORD": "1"})
    assert "prune" in r.output


# ------------------------------------------------------------------------------------ python API

def test_pipeline_and_passes_print_readably():
    text = repr(op.build_pipeline(op.PruneOptions(sparsity=0.5, criterion="sparsegpt", repair="lstsq")))
    assert text.splitlines()[0] == "Pipeline(["
    assert "CalibrationPass()" in text and "CalibratedPrunePass(sparsity=0.5, criterion='sparsegpt'" in text
    assert "RepairPass()" in text
    assert repr(op.PrunePass(0.7000000000000001, pattern="4x4")) == "PrunePass(sparsity=0.7, pattern='4x4')"


def test_prune_model_takes_arrays_and_errors_name_the_parameter():
    calib = dict(np.load(CALIB))
    ctx, report = op.prune_model(MLP, op.PruneOptions(sparsity=0.5, criterion="wanda"), data=calib,
                                 progress=False)
    assert ctx.data.source == "data (arrays)" and report["totals"]["sparsity_of_selected"] == pytest.approx(0.5, 1e-3)
    with pytest.raises(OptionError, match=r"^data: give a Dataset"):
        op.prune_model(MLP, op.PruneOptions(), data=[1, 2])
    with pytest.raises(OptionError, match=r"give data='FILE'"):
        op.prune_model(MLP, op.PruneOptions(criterion="wanda"))
    with pytest.raises(OptionError, match=r"^scope 'x'"):
        op.PruneOptions(scope="x")


def test_every_public_name_has_an_example():
    missing = [n for n in op._EXPORTS if "Example::" not in (getattr(op, n).__doc__ or "")]
    assert not missing
