"""Recipes: schema errors name file, line and key; flags and recipes give the same bytes;
every shipped recipe runs."""

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onnxprune.cli import main
from onnxprune.core.errors import OptionError
from onnxprune.jobs.recipe import load_recipe, shipped_recipes

ROOT = Path(__file__).resolve().parents[1]
MLP = str(ROOT / "samples" / "digits_mlp.onnx")
EVAL = str(ROOT / "samples" / "digits_eval.npz")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_dump_recipe_then_run_reproduces_prune_byte_for_byte(tmp_path):
    a, b, recipe = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "job.toml"
    r = run("prune", MLP, "-o", a, "--sparsity", "0.6", "--scope", "global", "--skip", "fc3*",
            "--override", "fc1*=0.4", "--check", "--data", EVAL, "--max-accuracy-drop", "0.05",
            "--dump-recipe", recipe, "--quiet")
    assert r.exit_code == 0, r.output
    r = run("run", recipe, "-o", b, "--quiet")
    assert r.exit_code == 0, r.output
    assert a.read_bytes() == b.read_bytes()
    r = run("run", recipe, "-o", tmp_path / "c.onnx", "--set", "prune.sparsity=0.7", "--quiet")
    assert r.exit_code == 0 and (tmp_path / "c.onnx").read_bytes() != a.read_bytes()


@pytest.mark.parametrize("text, line, key", [
    ("[prune]\nsparsity = 0.5\npatern = '2:4'\n", 3, "prune.patern"),
    ("[prune]\nsparsity = 'high'\n", 2, "prune.sparsity"),
    ("[job]\nname = 'x'\n[prune]\npattern = '3:2'\n", 4, "prune.pattern"),
    ("[checks]\nenabled = true\n", 1, "[checks]"),
    ("[check]\nenabled = 1\n", 2, "check.enabled"),
])
def test_broken_recipe_is_one_line_naming_line_and_key(tmp_path, text, line, key):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(OptionError) as e:
        load_recipe(str(path))
    assert f"bad.toml:{line}:" in str(e.value) and key in str(e.value)
    r = CliRunner().invoke(main, ["run", str(path), MLP, "-o", str(tmp_path / "o.onnx")])
    assert r.exit_code == 2
    assert len(r.output.strip().splitlines()) == 1 and f":{line}:" in r.output


def test_unknown_recipe_lists_shipped_ones():
    r = CliRunner().invoke(main, ["run", "no-such-recipe", MLP, "-o", "x.onnx"])
    assert r.exit_code == 2 and "unstructured-gate" in r.output


@pytest.mark.real
@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_every_shipped_recipe_runs_on_magika(tmp_path, name):
    from realmodels import magika_data, model_path

    data = tmp_path / "magika.npz"
    np.savez(data, **magika_data(32))
    out = tmp_path / "out.onnx"
    r = CliRunner().invoke(main, ["run", name, str(model_path("magika")), "-o", str(out),
                                  "--set", f'data.evaluation="{data}"', "--set", f'data.calibration="{data}"',
                                  "--set", "check.batch_size=16", "--quiet"])
    assert r.exit_code in (0, 1), r.output  # 1 = the gate said no: still a complete run
    assert out.exists()


def test_dumped_recipe_paths_are_relative_to_it_and_run_from_any_folder(tmp_path, monkeypatch):
    import shutil

    import onnx

    from onnxprune.jobs.recipe import tomllib

    (tmp_path / "in").mkdir()
    shutil.copy(MLP, tmp_path / "in" / "mlp.onnx")
    shutil.copy(EVAL, tmp_path / "in" / "eval.npz")
    monkeypatch.chdir(tmp_path)
    r = run("prune", "in/mlp.onnx", "-o", "job/out/a.onnx", "--sparsity", "0.6", "--check", "--data", "in/eval.npz",
            "--max-accuracy-drop", "0.05", "--dump-recipe", "job/job.toml", "--quiet")
    assert r.exit_code == 0, r.output
    dumped = tomllib.loads((tmp_path / "job" / "job.toml").read_text())
    assert dumped["input"]["model"] == "../in/mlp.onnx" and dumped["data"]["calibration"] == "../in/eval.npz"
    assert dumped["output"]["model"] == "out/a.onnx"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    r = run("run", "../job/job.toml", "-o", "b.onnx", "--quiet")  # -o on the command line: from this folder
    assert r.exit_code == 0, r.output

    def weights(path):
        return {t.name: t.raw_data for t in onnx.load(str(path)).graph.initializer}
    assert weights(tmp_path / "elsewhere" / "b.onnx") == weights(tmp_path / "job" / "out" / "a.onnx")


def test_readme_lists_every_recipe_key_whose_flag_is_spelled_differently():
    import re

    from onnxprune.cli import cli_flag
    from onnxprune.core.errors import Opt
    from onnxprune.jobs.recipe import SCHEMA

    readme = (ROOT / "README.md").read_text()
    listed = dict(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \| `([^`]+)`", readme, flags=re.M))
    differ = {f"{s}.{k}": cli_flag(Opt(f"{s}.{k}")) for s, keys in SCHEMA.items() for k in keys
              if cli_flag(Opt(f"{s}.{k}")) != "--" + k.replace("_", "-")}
    assert {k: v for k, v in listed.items() if k in differ} == differ
