"""Issue 16, a report worth opening: `--html` on prune, check and sweep (and a recipe's output.html) writes
one self-contained page rendered from the JSON report; node names are escaped; a missing matplotlib
fails before any work; sections nobody taught the renderer (sensitivity, auto) still render."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxprune.cli import main
from onnxprune.jobs.html_report import render_html, write_html

pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
MLP = str(ROOT / "samples" / "digits_mlp.onnx")
EVAL = str(ROOT / "samples" / "digits_eval.npz")
EVIL_NODE = '<script>alert("node")</script>&'
EVIL_WEIGHT = 'w"><img src="http://evil.example/x.png">'


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def evil_model(path: Path) -> Path:
    """X(1,64) -> MatMul(64x32) named like an HTML injection -> Relu -> MatMul(32x8)."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["X", EVIL_WEIGHT], ["h"], name=EVIL_NODE),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "head"], ["Y"], name="head_mm")]
    inits = [numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), EVIL_WEIGHT),
             numpy_helper.from_array(rng.standard_normal((32, 8)).astype(np.float32), "head")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def assert_self_contained(page: str, plots: bool = True) -> None:
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I), "fetches something"
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert ("data:image/png;base64," in page) == plots


def test_prune_html_has_layers_verdict_and_escapes_node_names(tmp_path):
    model = evil_model(tmp_path / "evil.onnx")
    out, page_path, report = tmp_path / "out.onnx", tmp_path / "r" / "report.html", tmp_path / "r.json"
    r = run("prune", model, "-o", out, "--sparsity", "0.5", "--check", "--report", report, "--html", page_path,
            "--min-cosine", "0.1", "--quiet")
    assert r.exit_code == 0, r.output
    page = page_path.read_text()
    assert_self_contained(page)
    assert EVIL_NODE not in page and EVIL_WEIGHT not in page  # never raw ...
    assert "&lt;script&gt;alert(&quot;node&quot;)&lt;/script&gt;&amp;" in page  # ... always escaped
    assert "w&quot;&gt;&lt;img src=&quot;http://evil.example/x.png&quot;&gt;" in page
    assert "Per-layer table" in page and "head_mm" in page and "npu-bitmask" in page
    assert "PASS: parity gate" in page and "min_cosine: &gt;= 0.1" in page
    assert "Sizes per stage" in page and "[prune]" in page and "sparsity = 0.5" in page  # the recipe, as TOML
    data = json.loads(report.read_text())  # the JSON report carries what the page shows
    layer = next(x for x in data["layers"] if x["weight"] == EVIL_WEIGHT)
    assert layer["nodes"] == [EVIL_NODE] and layer["macs"] == 64 * 32 and layer["sparsity"] == 0.5
    assert {s["stage"] for s in data["sizes"]} == {"input", "output"}


def test_missing_matplotlib_exits_2_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    missing = tmp_path / "no-such-model.onnx"  # loading it first would fail with another message
    for args in (["prune", missing, "-o", tmp_path / "o.onnx"], ["check", missing, missing],
                 ["sweep", missing, "--sparsities", "0.5"]):
        r = run(*args, "--html", tmp_path / "r.html")
        assert r.exit_code == 2, r.output
        assert r.stderr.strip().splitlines() == [
            "onnxprune: error: --html needs matplotlib: pip install 'onnxprune[plot]'"], r.stderr
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(Exception, match=r"html needs matplotlib: pip install 'onnxprune\[plot\]'"):
        write_html({}, tmp_path / "r.html")


def test_recipe_output_html(tmp_path):
    recipe = tmp_path / "job.toml"
    recipe.write_text(f'[input]\nmodel = "{MLP}"\n[prune]\nsparsity = 0.6\n[data]\nevaluation = "{EVAL}"\n'
                      f'[check]\nenabled = true\n[output]\nmodel = "{tmp_path / "m.onnx"}"\n'
                      f'html = "{tmp_path / "m.html"}"\n')
    r = run("run", recipe, "--quiet")
    assert r.exit_code in (0, 1), r.output
    page = (tmp_path / "m.html").read_text()
    assert_self_contained(page)
    assert "fc1.weight" in page and "parity gate" in page and f'html = &quot;{tmp_path / "m.html"}&quot;' in page


def test_sweep_and_check_html(tmp_path):
    r = run("sweep", MLP, "--sparsities", "0.3,0.9", "--data", EVAL, "--samples", "60", "--html", tmp_path / "s.html",
            "--plot", tmp_path / "s.png")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"  # the same figure: threshold and chosen level
    page = (tmp_path / "s.html").read_text()
    assert_self_contained(page)
    assert "highest passing sparsity: 0.3" in page and "Sweep" in page and "sparsity = 0.3" in page
    r = run("check", MLP, MLP, "--data", EVAL, "--samples", "20", "--html", tmp_path / "c.html")
    assert r.exit_code == 0, r.output
    page = (tmp_path / "c.html").read_text()
    assert_self_contained(page, plots=False)
    assert "PASS: parity gate" in page and "cosine_mean" in page and "original" in page


def test_unknown_sections_render_generically(tmp_path):
    """A sensitivity matrix (layers x levels) becomes a heatmap, with its other grids as tables; a search trace
    (records with a level) a table and curves with the threshold; a verdict at the top level a banner."""
    report = {"schema": "onnxprune.auto", "model": "m.onnx", "passed": True, "thresholds": {"min_cosine": 0.95},
              "sensitivity": {"metric": "cosine_mean", "layers": ["a<b", "c"], "levels": [0.3, 0.6],
                              "matrix": [[0.99, 0.9], [1.0, 0.97]], "saved": {"params": [[10, 20], [30, 60]]}},
              "trace": [{"level": 0.3, "macs": 0.7, "passed": True, "parity": {"y": {"cosine_mean": 0.99}}},
                        {"level": 0.5, "macs": 0.5, "passed": True, "parity": {"y": {"cosine_mean": 0.96}}},
                        {"level": 0.7, "macs": 0.3, "passed": False, "parity": {"y": {"cosine_mean": 0.9}}}],
              "chosen": {"level": 0.5, "layers": [{"name": "fc", "sparsity": 0.5}]}, "notes": ["<b>"]}
    write_html(report, tmp_path / "x.html")
    page = (tmp_path / "x.html").read_text()
    assert_self_contained(page)
    assert 'alt="sensitivity heatmap"' in page and 'alt="trace curve"' in page and ">PASS</div>" in page
    assert "parity.y.cosine_mean" in page and "<h3>params</h3>" in page and "<td class=\"n\">60</td>" in page
    assert "a&lt;b" in page and "<li>&lt;b&gt;</li>" in page and "<b>" not in page
    assert page == render_html(json.loads(json.dumps(report)))  # deterministic, plots included


def test_the_renderer_is_library_code_without_click():
    code = "import sys, onnxprune.jobs.html_report; assert 'click' not in sys.modules, 'click imported'"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
