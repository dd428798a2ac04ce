"""Accelerator targets: bundled files validate, broken files give one-line errors naming file and key, CLI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from onnxprune.cli import main
from onnxprune.core.errors import TargetError
from onnxprune.pack import targets as T
from onnxprune.prune.patterns import Pattern

REPO_TARGETS = Path(__file__).resolve().parents[1] / "targets"
EXPECTED = {"nvidia-2to4", "xnnpack-bsr", "npu-bitmask", "onnx-sparse", "bsr-generic"}


def test_every_bundled_target_validates():
    names = T.builtin_names()
    assert EXPECTED <= set(names)
    for t in T.all_targets():
        assert t.description and "\n" not in t.description
        assert t.dtypes and t.emit_modes and t.default_emit in t.emit_modes
        assert t.eligibility.ops
        assert t.format in ("nm", "bsr", "bitmask", "coo")
        # every repo file validates when loaded by path too
        assert T.read_target_file(REPO_TARGETS / f"{t.name}.toml").name == t.name


def test_key_facts_of_the_bundled_targets():
    nv = T.load_target("nvidia-2to4")
    assert nv.pattern == Pattern("nm", 2, 4) and nv.format == "nm" and nv.format_params == {"n": 2, "m": 4, "compact": False}
    assert set(nv.dtypes) == {"float16", "bfloat16", "int8"} and "float32" in nv.converts
    assert nv.default_emit == "dense" and set(nv.eligibility.ops) == {"Conv", "MatMul", "Gemm"}
    assert nv.eligibility.reduction_multiple == 4 and nv.eligibility.multiples("int8") == (32, 16)
    assert nv.eligibility.multiples("float16") == (16, 8)
    xn = T.load_target("xnnpack-bsr")
    assert xn.format == "bsr" and xn.eligibility.ops == ("Conv",) and xn.eligibility.conv_kernels == ((1, 1),)
    assert xn.eligibility.min_sparsity_scope == "model" and abs(xn.eligibility.min_sparsity - 2 / 3) < 1e-3
    assert set(xn.dtypes) == {"float32", "float16"} and xn.block_choices == ("1x1", "2x1", "4x1")
    npu = T.load_target("npu-bitmask")
    assert npu.pattern.kind == "unstructured" and npu.format == "bitmask" and set(npu.dtypes) == {"int8", "float16"}
    sp = T.load_target("onnx-sparse")
    assert sp.format == "coo" and sp.default_emit == "sparse-initializer" and not sp.accelerates
    bg = T.load_target("bsr-generic")
    assert bg.pattern == Pattern("block", 4, 4) and bg.format_params == {"r": 4, "c": 4}


def test_block_option_and_recipe_key():
    t = T.load_target("bsr-generic", block="8x1")
    assert t.pattern == Pattern("block", 8, 1) and t.format_params == {"r": 8, "c": 1}
    assert T.load_target("bsr-generic", options={"block": "2x2"}).format_params == {"r": 2, "c": 2}
    assert T.load_target("xnnpack-bsr", block="4x1").format_params == {"r": 4, "c": 1}
    with pytest.raises(TargetError, match="block 8x1 is not supported; use one of 1x1, 2x1, 4x1"):
        T.load_target("xnnpack-bsr", block="8x1")
    with pytest.raises(TargetError, match="not configurable"):
        T.load_target("nvidia-2to4", block="4x4")
    with pytest.raises(TargetError, match="not a block"):
        T.load_target("bsr-generic", block="2:4")
    with pytest.raises(TargetError, match="unknown target option 'pattern'"):
        T.load_target("bsr-generic", options={"pattern": "2:4"})


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(TargetError) as e:
        T.load_target("tpu-magic")
    msg = str(e.value)
    assert "\n" not in msg and "tpu-magic" in msg and all(n in msg for n in EXPECTED)


def test_builtin_dir_is_the_source_checkout_folder_here():
    assert T.builtin_dir() == REPO_TARGETS  # an installed package uses onnxprune/targets_data instead
    assert EXPECTED <= set(T.builtin_names())


GOOD = (REPO_TARGETS / "bsr-generic.toml").read_text()


def _sub(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new, 1)


BROKEN = [
    # (file text, key named in the message, a word of the allowed values)
    (_sub("accelerates = true", "accelerates = true\ncolour = \"red\""), "colour", "allowed keys"),
    (_sub("accelerates = true", "accelerates = \"yes\""), "accelerates", "true or false"),
    (_sub('pattern = "4x4"', 'pattern = "5:4"'), "pattern", "N:M"),
    (_sub('dtypes = ["float32", "float16", "int8"]', 'dtypes = ["float32", "float33"]'), "dtypes", "float16"),
    (_sub("min_sparsity = 0.5", "min_sparsity = 1.5"), "eligibility.min_sparsity", "[0, 1)"),
    (_sub("min_params = 1024", "min_params = -3"), "eligibility.min_params", ">= 0"),
    (_sub("block_aligned = true", "block_aligned = true\nmin_spasity = 0.3"), "eligibility.min_spasity", "min_sparsity"),
    (_sub('ops = ["MatMul", "Gemm", "Conv"]', 'ops = ["MatMul", "Einsum"]'), "eligibility.ops", "Conv"),
    (_sub('modes = ["portable", "dense"]', 'modes = ["portable", "zip"]'), "emit.modes", "sparse-initializer"),
    (_sub('default = "portable"', 'default = "sparse-initializer"'), "emit.default", "portable"),
    (_sub('name = "bsr"', 'name = "csr"'), "format.name", "bitmask"),
    (_sub('name = "bsr"', 'name = "bsr"\nparams = { r = 2, c = 2 }'), "format.params", "pattern is 4x4"),
    (_sub('name = "bsr"', 'name = "bsr"\nparams = { rows = 2 }'), "format.params.rows", "r, c"),
    (_sub('choices = ["any"]', 'choices = ["4by4"]'), "block.choices", "RxC"),
    (_sub('name = "bsr-generic"', 'name = "other"'), "name", "file"),
    (_sub("schema_version = 1", "schema_version = 2"), "schema_version", "version 1"),
    (_sub('runtime = "sparse kernels or compilers that take BSR weights (TVM sparse_dense, sparse BLAS)"\n', ""),
     "runtime", "required"),
]


@pytest.mark.parametrize("text,key,hint", BROKEN)
def test_broken_target_file_gives_one_line_error(tmp_path, text, key, hint):
    path = tmp_path / "bsr-generic.toml"
    path.write_text(text)
    with pytest.raises(TargetError) as e:
        T.load_target(path)
    msg = str(e.value)
    assert "\n" not in msg
    assert str(path) in msg
    assert f"'{key}'" in msg, msg
    assert hint in msg, msg


def test_invalid_toml_and_wrong_table_types(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text("name = \n")
    with pytest.raises(TargetError, match=re.escape(str(path)) + r": not valid TOML .*fix the syntax"):
        T.load_target(path)
    path = tmp_path / "bsr-generic.toml"
    path.write_text(GOOD.replace("[emit]", "[emitx]").replace("accelerates = true", "accelerates = true\nemit = 3"))
    with pytest.raises(TargetError, match="key 'emit' must be a table, got 3"):
        T.load_target(path)


def test_cli_targets_list_show_check(tmp_path):
    r = CliRunner().invoke(main, ["targets"])
    assert r.exit_code == 0, r.output
    for name in EXPECTED:
        assert name in r.output
    assert "2:4" in r.output and "bitmask" in r.output
    r = CliRunner().invoke(main, ["targets", "show", "nvidia-2to4"])
    assert r.exit_code == 0 and "TensorRT" in r.output and "reduction multiple of 16" in r.output
    r = CliRunner().invoke(main, ["targets", "show", "nope"])
    assert r.exit_code == 2 and "known targets" in r.output and r.output.count("\n") == 1
    bad = tmp_path / "bsr-generic.toml"
    bad.write_text(BROKEN[0][0])
    r = CliRunner().invoke(main, ["targets", "check", str(bad)])
    assert r.exit_code == 2 and "'colour'" in r.output
    r = CliRunner().invoke(main, ["targets", "check", str(REPO_TARGETS / "nvidia-2to4.toml")])
    assert r.exit_code == 0 and "ok" in r.output


def test_a_target_with_a_minimum_sparsity_sets_the_default_sparsity(tmp_path):
    """xnnpack-bsr runs sparse only from 2/3 zeros: without --sparsity (or prune.sparsity) the job prunes
    to reach it, where the global 0.5 default would hold every layer back; a given sparsity wins."""
    import json

    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from onnxprune.jobs.recipe import load_recipe

    assert T.load_target("xnnpack-bsr").prune_defaults() == {"pattern": "1x1", "sparsity": 0.67}
    assert T.load_target("nvidia-2to4").prune_defaults() == {"pattern": "2:4"}
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 64, 1, 1)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 4, 4])], [w])
    src = tmp_path / "m.onnx"
    src.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    for extra, want in (([], 0.67), (["--sparsity", "0.8"], 0.8)):
        r = CliRunner().invoke(main, ["prune", str(src), "-o", str(tmp_path / "o.onnx"), "--target", "xnnpack-bsr",
                                      "--report", str(tmp_path / "r.json"), "--quiet", *extra])
        assert r.exit_code == 0, r.output
        assert json.loads((tmp_path / "r.json").read_text())["options"]["sparsity"] == want
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[input]\nmodel = "{src}"\n[target]\nname = "xnnpack-bsr"\n')
    assert load_recipe(recipe).prune.sparsity == 0.67
