"""The public Python API: every exported name resolves, and the README example runs."""

from pathlib import Path

import onnxprune as op

ROOT = Path(__file__).resolve().parents[1]


def test_every_export_resolves():
    for name in op.__all__:
        assert getattr(op, name) is not None


def test_readme_python_example(tmp_path):
    model = op.Model.load(ROOT / "samples" / "digits_mlp.onnx")
    ctx, report = op.prune_model(model, op.PruneOptions(sparsity=0.8, scope="global"), progress=False)
    model.save(tmp_path / "mlp_80.onnx")
    ctx.masks.save(tmp_path / "mlp_80.masks.npz")
    assert abs(report["totals"]["sparsity_of_selected"] - 0.8) < 1e-3
    data = op.Dataset.from_source(ROOT / "samples" / "digits_eval.npz", model.proto)
    parity = op.compare(ROOT / "samples" / "digits_mlp.onnx", tmp_path / "mlp_80.onnx", data,
                        op.Thresholds(max_accuracy_drop=0.5))
    assert parity.passed
    assert (tmp_path / "mlp_80.masks.npz.json").exists()
