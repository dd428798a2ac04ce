"""`onnxprune prune` and `prune_model`: real models (ddddocr common.onnx, magika) and tiny built models.

"Prunable parameters" in the sparsity assertions means all *selected* weights: every weight the
analysis finds prunable, minus those the allocation skips (smaller than --min-params, --skip,
N:M remainder). N:M results are verified with the independent checker tests/nm_check.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from nm_check import assert_model_nm, assert_nm, group_counts
from onnx import TensorProto, helper, numpy_helper

from onnxprune import __version__
from onnxprune.analyze.weights import find_weights
from onnxprune.cli import main
from onnxprune.core.masks import MaskSet
from onnxprune.core.model import Model
from onnxprune.jobs.prune_job import PruneOptions, prune_model
from onnxprune.pipeline import options_hash

F = TensorProto.FLOAT


# ------------------------------------------------------------------------------------------ helpers

def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_usage_error(result, *words):
    assert result.exit_code == 2, (result.exit_code, result.output)
    err = result.stderr.strip()
    assert err.startswith("onnxprune: error:") and "\n" not in err, err
    assert "Traceback" not in result.output
    for w in words:
        assert w in err, err


def inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def run_ort(model_or_path, feeds):
    src = model_or_path if isinstance(model_or_path, (str, Path)) else model_or_path.SerializeToString()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(src) if isinstance(src, Path) else src, opts,
                                providers=["CPUExecutionProvider"]).run(None, feeds)


def vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def make_model(nodes, inputs, outputs, initializers) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="test_prune")
    m.ir_version = 8
    return m


def rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def mlp3() -> onnx.ModelProto:
    """x(1,64) -> enc_mm1 [enc.w1 64x64] -> enc_mm2 [enc.w2 64x64] -> dec_mm [dec.w 64x32] -> small_mm [small.w 32x16]."""
    nodes = [helper.make_node("MatMul", ["x", "enc.w1"], ["h1"], name="enc_mm1"),
             helper.make_node("MatMul", ["h1", "enc.w2"], ["h2"], name="enc_mm2"),
             helper.make_node("MatMul", ["h2", "dec.w"], ["h3"], name="dec_mm"),
             helper.make_node("MatMul", ["h3", "small.w"], ["y"], name="small_mm")]
    ws = {"enc.w1": rand((64, 64), 1), "enc.w2": rand((64, 64), 2), "dec.w": rand((64, 32), 3),
          "small.w": rand((32, 16), 4)}
    return make_model(nodes, [vi("x", [1, 64])], [vi("y", [1, 16])],
                      [numpy_helper.from_array(a, n) for n, a in ws.items()])


def conv_c6() -> onnx.ModelProto:
    """Conv W (32, 6, 3, 3): C = 6 is not a multiple of 4."""
    return make_model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])],
                      [vi("x", [1, 6, 8, 8])], [vi("y", [1, 32, 8, 8])],
                      [numpy_helper.from_array(rand((32, 6, 3, 3), 5), "w")])


def save(model, path) -> Path:
    onnx.save(model, str(path))
    return Path(path)


# ----------------------------------------------------------------------------------- real models

def _real_feeds(key):
    if key == "ddddocr_common":
        from realmodels import ddddocr_data

        return {"input1": ddddocr_data(1)["input1"][0]}
    return {"bytes": np.random.default_rng(0).integers(0, 257, (2, 2048)).astype(np.int32)}


@pytest.fixture(scope="module", params=["ddddocr_common", "magika"])
def real(request, tmp_path_factory):
    from realmodels import model_path

    key = request.param
    src = model_path(key)
    before = sha256(src)
    tmp = tmp_path_factory.mktemp(key)
    outs = {}
    for tag in ("a", "b"):  # the same 2:4 run twice
        r = cli("prune", src, "-o", tmp / f"nm_{tag}.onnx", "--pattern", "2:4", "--report", tmp / f"nm_{tag}.json",
                "--quiet")
        assert r.exit_code == 0, r.output
        outs[f"nm_{tag}"] = tmp / f"nm_{tag}.onnx"
    model = Model.load(src)
    ctx, report = prune_model(model, PruneOptions(sparsity=0.8, scope="global"), progress=False)
    model.save(tmp / "g80.onnx")
    outs["g80"] = tmp / "g80.onnx"
    return dict(key=key, src=src, before=before, after=sha256(src), outs=outs, g80_report=report,
                nm_report=json.loads((tmp / "nm_a.json").read_text()))


@pytest.mark.real
def test_real_2_4_passes_independent_checker(real):
    report = real["nm_report"]
    pruned = [w["name"] for w in report["weights"] if not w["skipped"]]
    skipped = {w["name"]: w["skipped"] for w in report["weights"] if w["skipped"]}
    assert pruned, "nothing was pruned"
    out = onnx.load(str(real["outs"]["nm_a"]))
    assert assert_model_nm(out, 2, 4, pruned) == len(pruned)
    # every pruned weight reaches exactly 50% (all reduction lengths here are multiples of 4)
    got = inits(out)
    for name in pruned:
        counts = np.count_nonzero(got[name] == 0)
        assert counts >= got[name].size // 2
    if real["key"] == "magika":  # MatMul B (257, 64): K = 257 is no multiple of 4
        assert any("multiple of 4" in r for r in skipped.values()), skipped
    else:  # the first conv (24, 1, 3, 3) has 216 < 1024 params
        assert any("minimum" in r for r in skipped.values()), skipped


@pytest.mark.real
def test_real_global_80_exact(real):
    report = real["g80_report"]
    selected = [w for w in report["weights"] if not w["skipped"]]
    out = inits(onnx.load(str(real["outs"]["g80"])))
    params = sum(out[w["name"]].size for w in selected)
    zeros = sum(int(np.count_nonzero(out[w["name"]] == 0)) for w in selected)
    assert abs(zeros / params - 0.8) <= 0.001, zeros / params
    assert abs(report["totals"]["sparsity_of_selected"] - 0.8) <= 0.001
    # global: one ranking, so per-weight sparsities differ
    assert len({round(w["sparsity"], 3) for w in selected}) > 1


@pytest.mark.real
def test_real_outputs_run_and_input_untouched(real):
    assert real["before"] == real["after"]
    feeds = _real_feeds(real["key"])
    ref = run_ort(Path(real["src"]), feeds)
    for name, path in real["outs"].items():
        out = run_ort(path, feeds)
        assert [o.shape for o in out] == [o.shape for o in ref], name
        assert all(np.isfinite(o).all() for o in out), name


@pytest.mark.real
def test_real_deterministic_and_stamped(real):
    a, b = real["outs"]["nm_a"], real["outs"]["nm_b"]
    assert a.read_bytes() == b.read_bytes()
    props = {p.key: p.value for p in onnx.load(str(a)).metadata_props}
    assert props["onnxprune.version"] == __version__
    opts = PruneOptions(pattern="2:4")
    assert props["onnxprune.options_sha256"] == opts.sha256() == options_hash(opts.to_dict())
    assert props["onnxprune.options_sha256"] == real["nm_report"]["options_sha256"]
    g80 = {p.key: p.value for p in onnx.load(str(real["outs"]["g80"])).metadata_props}
    assert g80["onnxprune.options_sha256"] != props["onnxprune.options_sha256"]


# ------------------------------------------------------------------------------------ dtypes

@pytest.mark.parametrize("elem,np_type", [(TensorProto.FLOAT16, np.float16), (TensorProto.BFLOAT16, ml_dtypes.bfloat16)])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_low_precision_pruned_in_own_dtype(tmp_path, elem, np_type, pattern):
    w = rand((64, 32), 7).astype(np_type)
    t = helper.make_tensor("w", elem, w.shape, w.view(np.uint16).tobytes(), raw=True)
    model = make_model([helper.make_node("Cast", ["w"], ["wf"], to=F), helper.make_node("MatMul", ["x", "wf"], ["y"])],
                       [vi("x", [1, 64])], [vi("y", [1, 32])], [t])
    src = save(model, tmp_path / "in.onnx")
    r = cli("prune", src, "-o", tmp_path / "out.onnx", "--pattern", pattern, "--sparsity", "0.5", "--quiet")
    assert r.exit_code == 0, r.output
    out = onnx.load(str(tmp_path / "out.onnx"))
    t_out = out.graph.initializer[0]
    assert t_out.data_type == elem
    got = np.frombuffer(t_out.raw_data, dtype=np.uint16).view(np_type).reshape(w.shape)
    kept = got != 0
    assert int((~kept).sum()) == w.size // 2
    # kept values are bit-identical, pruned ones are +0.0
    assert np.array_equal(got[kept].view(np.uint16), w[kept].view(np.uint16))
    assert np.all(got[~kept].view(np.uint16) == 0)
    mag = np.abs(w.astype(np.float32))
    if pattern == "unstructured":
        assert mag[~kept].max() <= mag[kept].min()
    else:
        assert_nm(got, "MatMul", 2, 4)
    run_ort(tmp_path / "out.onnx", {"x": np.ones((1, 64), np.float32)})


def test_fp16_direct_matmul_runs(tmp_path):
    w = rand((64, 32), 8).astype(np.float16)
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [vi("x", [1, 64], TensorProto.FLOAT16)],
                       [vi("y", [1, 32], TensorProto.FLOAT16)], [numpy_helper.from_array(w, "w")])
    m = Model(model)
    prune_model(m, PruneOptions(pattern="2:4"), progress=False)
    got = m.read("w")
    assert got.dtype == np.float16
    assert_nm(got, "MatMul", 2, 4)
    run_ort(m.proto, {"x": np.ones((1, 64), np.float16)})


# -------------------------------------------------------------------------------- quantized weights

def dq_model(per_axis: bool, with_zp: bool = True, seed: int = 9) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    q = rng.integers(-128, 128, (64, 32)).astype(np.int8)
    if per_axis:  # per output column (axis 1), very different scales
        scale = (10.0 ** rng.uniform(-3, 0, 32)).astype(np.float32)
        zp = rng.integers(-20, 20, 32).astype(np.int8)
    else:
        scale, zp = np.array(0.05, np.float32), np.array(7, np.int8)
    if not with_zp:
        zp = np.zeros_like(zp)
    ins = ["q", "s", "zp"] if with_zp else ["q", "s"]
    tensors = [numpy_helper.from_array(q, "q"), numpy_helper.from_array(scale, "s")]
    if with_zp:
        tensors.append(numpy_helper.from_array(zp, "zp"))
    model = make_model([helper.make_node("DequantizeLinear", ins, ["wf"], **({"axis": 1} if per_axis else {})),
                        helper.make_node("MatMul", ["x", "wf"], ["y"])],
                       [vi("x", [1, 64])], [vi("y", [1, 32])], tensors)
    return model, q, scale, zp


@pytest.mark.parametrize("per_axis,with_zp", [(False, True), (True, True), (True, False)])
def test_dequantized_int8_pruned_in_quantized_domain(tmp_path, per_axis, with_zp):
    model, q, scale, zp = dq_model(per_axis, with_zp)
    src = save(model, tmp_path / "q.onnx")
    r = cli("prune", src, "-o", tmp_path / "out.onnx", "--sparsity", "0.5", "--quiet")
    assert r.exit_code == 0, r.output
    out = onnx.load(str(tmp_path / "out.onnx"))
    got = inits(out)["q"]
    assert got.dtype == np.int8
    zpb = np.broadcast_to(zp.reshape(1, -1) if per_axis else zp, q.shape)
    pruned = got == zpb
    changed = got != q
    assert np.all(got[changed] == zpb[changed])  # only ever set to the zero point
    assert np.array_equal(got[~pruned], q[~pruned])
    assert int(pruned.sum()) == q.size // 2  # exact (entries already at the zero point score lowest)
    real = np.abs(q.astype(np.float32) - zpb.astype(np.float32)) * np.broadcast_to(
        scale.reshape(1, -1) if per_axis else scale, q.shape)
    assert real[pruned].max() <= real[~pruned].min()  # ranked in real units
    if per_axis:  # in real units, not raw |q|: the raw-magnitude ranking would differ
        raw = np.abs(q.astype(np.float32) - zpb)
        assert not np.array_equal(pruned, raw <= np.sort(raw, axis=None)[q.size // 2 - 1])
    y = run_ort(tmp_path / "out.onnx", {"x": np.ones((1, 64), np.float32)})[0]
    assert np.isfinite(y).all()


def test_dequantized_nm(tmp_path):
    model, q, scale, zp = dq_model(True)
    m = Model(model)
    prune_model(m, PruneOptions(pattern="2:4"), progress=False)
    assert_nm(m.read("q"), "MatMul", 2, 4, zero=zp.reshape(1, -1))


@pytest.mark.parametrize("scale_shape", [(1, 32), (32,), ()])
def test_cast_mul_int8_weights_pruned_in_quantized_domain(tmp_path, scale_shape):
    """Weight-only quantization written by hand (Mul(Cast(int8), scale), as in all-MiniLM-L6 int8): the
    int8 tensor is pruned in place, ranked in real units, and stays int8."""
    rng = np.random.default_rng(4)
    q = rng.integers(-128, 128, (64, 32)).astype(np.int8)
    scale = (10.0 ** rng.uniform(-3, 0, 32)).astype(np.float32).reshape(scale_shape) if scale_shape else np.float32(0.02)
    model = make_model([helper.make_node("Cast", ["q"], ["qf"], to=TensorProto.FLOAT),
                        helper.make_node("Mul", ["s", "qf"], ["wf"]),  # scale first: either order
                        helper.make_node("MatMul", ["x", "wf"], ["y"])],
                       [vi("x", [1, 64])], [vi("y", [1, 32])],
                       [numpy_helper.from_array(q, "q"), numpy_helper.from_array(np.asarray(scale), "s")])
    src = save(model, tmp_path / "q.onnx")
    r = cli("prune", src, "-o", tmp_path / "out.onnx", "--sparsity", "0.5", "--quiet")
    assert r.exit_code == 0, r.output
    got = inits(onnx.load(str(tmp_path / "out.onnx")))["q"]
    assert got.dtype == np.int8 and int((got == 0).sum()) >= q.size // 2
    assert np.array_equal(got[got != 0], q[got != 0])
    real = np.abs(q * np.broadcast_to(np.asarray(scale, np.float64).reshape(-1)[None, :] if scale_shape else scale, q.shape))
    assert real[got == 0].max() <= real[got != 0].min()  # ranked in real units
    x = rng.standard_normal((1, 64)).astype(np.float32)
    want = x @ (got.astype(np.float32) * np.asarray(scale, np.float32))
    np.testing.assert_allclose(run_ort(tmp_path / "out.onnx", {"x": x})[0], want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------- selection rules

def test_skip_and_override_globs(tmp_path):
    src = save(mlp3(), tmp_path / "m.onnx")
    orig = inits(onnx.load(str(src)))
    r = cli("prune", src, "-o", tmp_path / "o.onnx", "--sparsity", "0.6", "--skip", "enc.w1",
            "--override", "dec*=0.3", "--report", tmp_path / "r.json", "--quiet")
    assert r.exit_code == 0, r.output
    got = inits(onnx.load(str(tmp_path / "o.onnx")))
    zeros = {k: float(np.mean(v == 0)) for k, v in got.items()}
    assert np.array_equal(got["enc.w1"], orig["enc.w1"])
    assert zeros["enc.w2"] == pytest.approx(0.6, abs=1 / 4096)
    assert zeros["dec.w"] == pytest.approx(0.3, abs=1 / 2048)
    assert zeros["small.w"] == 0  # 512 < 1024 params
    report = {w["name"]: w for w in json.loads((tmp_path / "r.json").read_text())["weights"]}
    assert "skip" in report["enc.w1"]["skipped"] and "minimum" in report["small.w"]["skipped"]
    # globs also match node names; the last matching override wins
    r = cli("prune", src, "-o", tmp_path / "o2.onnx", "--sparsity", "0.6", "--skip", "enc_mm*",
            "--override", "*=0.2", "--override", "dec_*=0.4", "--quiet")
    assert r.exit_code == 0, r.output
    got = inits(onnx.load(str(tmp_path / "o2.onnx")))
    assert np.array_equal(got["enc.w1"], orig["enc.w1"]) and np.array_equal(got["enc.w2"], orig["enc.w2"])
    assert float(np.mean(got["dec.w"] == 0)) == pytest.approx(0.4, abs=1 / 2048)
    assert float(np.mean(got["small.w"] == 0)) == pytest.approx(0.2, abs=1 / 512)  # override beats min_params


@pytest.mark.parametrize("bad", ["dec*", "dec*=1.0", "dec*=-0.1", "=0.3", "dec*=x"])
def test_bad_override_exits_2(tmp_path, bad):
    src = save(mlp3(), tmp_path / "m.onnx")
    assert_usage_error(cli("prune", src, "-o", tmp_path / "o.onnx", "--override", bad), "override")
    assert not (tmp_path / "o.onnx").exists()


def test_min_params(tmp_path):
    m = Model(mlp3())
    _, rep = prune_model(m, PruneOptions(sparsity=0.5, min_params=4096), progress=False)
    rows = {w["name"]: w for w in rep["weights"]}
    assert rows["dec.w"]["skipped"] and rows["small.w"]["skipped"] and not rows["enc.w1"]["skipped"]
    assert float(np.mean(m.read("dec.w") == 0)) == 0 and float(np.mean(m.read("enc.w1") == 0)) == 0.5
    m = Model(mlp3())
    prune_model(m, PruneOptions(sparsity=0.5, min_params=0), progress=False)
    assert all(float(np.mean(m.read(k) == 0)) == 0.5 for k in ("enc.w1", "enc.w2", "dec.w", "small.w"))


# --------------------------------------------------------------------------------- N:M remainder

def test_nm_conv_remainder_skip_then_pad(tmp_path):
    src = save(conv_c6(), tmp_path / "c.onnx")
    orig = inits(onnx.load(str(src)))["w"]
    r = cli("prune", src, "-o", tmp_path / "skip.onnx", "--pattern", "2:4", "--report", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    assert "not a multiple of 4" in r.stdout  # reported in the table
    row = json.loads((tmp_path / "r.json").read_text())["weights"][0]
    assert "multiple of 4" in row["skipped"] and row["sparsity"] == 0
    assert np.array_equal(inits(onnx.load(str(tmp_path / "skip.onnx")))["w"], orig)

    r = cli("prune", src, "-o", tmp_path / "pad.onnx", "--pattern", "2:4", "--nm-remainder", "pad", "--quiet")
    assert r.exit_code == 0, r.output
    got = inits(onnx.load(str(tmp_path / "pad.onnx")))["w"]
    assert_nm(got, "Conv", 2, 4, name="w")
    counts = group_counts(got, 1, 4)  # groups (0..3), (4, 5) at each (o, kh, kw)
    assert np.all(counts[:, 0] == 2) and np.all(counts[:, 1] == 2)
    kept = got != 0
    assert np.array_equal(got[kept], orig[kept])
    run_ort(tmp_path / "pad.onnx", {"x": np.ones((1, 6, 8, 8), np.float32)})


def test_nm_conv_multiple_of_4_groups_along_channels(tmp_path):
    model = make_model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
                       [vi("x", [1, 8, 4, 4])], [vi("y", [1, 16, 4, 4])],
                       [numpy_helper.from_array(rand((16, 8, 3, 3), 12), "w")])
    m = Model(model)
    prune_model(m, PruneOptions(pattern="2:4"), progress=False)
    got = m.read("w")
    assert_nm(got, "Conv", 2, 4)
    assert np.all(group_counts(got, 1, 4) == 2)


# ----------------------------------------------------------------------------------------- masks

def test_masks_export_import_round_trip(tmp_path):
    src = save(mlp3(), tmp_path / "m.onnx")
    r = cli("prune", src, "-o", tmp_path / "a.onnx", "--sparsity", "0.7", "--min-params", "0",
            "--masks-out", tmp_path / "masks.npz", "--quiet")
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "masks.npz.json").read_text())
    entries = {e["name"]: e for e in manifest["masks"]}
    assert set(entries) == {"enc.w1", "enc.w2", "dec.w", "small.w"}
    out = inits(onnx.load(str(tmp_path / "a.onnx")))
    for name, e in entries.items():
        assert {"name", "shape", "pattern", "sparsity", "step"} <= set(e)
        assert tuple(e["shape"]) == out[name].shape and e["pattern"] == "unstructured" and e["step"] == 1
        assert e["sparsity"] == pytest.approx(0.7, abs=1e-3)
    with np.load(tmp_path / "masks.npz") as z:
        for name, e in entries.items():
            keep = z[e.get("array", name)]
            assert keep.dtype == bool and np.array_equal(keep, out[name] != 0)
    loaded = MaskSet.load(tmp_path / "masks.npz", {k: v.shape for k, v in out.items()})
    assert loaded.keys() == list(entries)
    assert all(np.array_equal(loaded.get(k), out[k] != 0) for k in entries)
    # importing them into a fresh run at the same options reproduces the output exactly
    r = cli("prune", src, "-o", tmp_path / "b.onnx", "--sparsity", "0.7", "--min-params", "0",
            "--masks-in", tmp_path / "masks.npz", "--masks-out", tmp_path / "masks2.npz", "--quiet")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert (tmp_path / "masks.npz").read_bytes() == (tmp_path / "masks2.npz").read_bytes()


def test_masks_import_applied_monotone_even_when_skipped(tmp_path):
    """An imported mask is the starting point: its pruned entries stay zero, even in a skipped weight."""
    src = save(mlp3(), tmp_path / "m.onnx")
    ms = MaskSet()
    keep = np.ones((64, 64), bool)
    keep[:, :40] = False  # 62.5% pruned, regardless of magnitude
    ms.set("enc.w1", keep, "external", 3)
    keep_small = np.ones((32, 16), bool)
    keep_small[0] = False
    ms.set("small.w", keep_small, "external", 3)
    ms.save(tmp_path / "ext.npz")
    r = cli("prune", src, "-o", tmp_path / "o.onnx", "--sparsity", "0.5", "--masks-in", tmp_path / "ext.npz",
            "--report", tmp_path / "r.json", "--quiet")
    assert r.exit_code == 0, r.output
    got = inits(onnx.load(str(tmp_path / "o.onnx")))
    assert np.all(got["enc.w1"][:, :40] == 0)  # already beyond 50%: nothing else changes
    assert float(np.mean(got["enc.w1"] == 0)) == pytest.approx(0.625)
    assert np.all(got["small.w"][0] == 0)  # skipped (< min params) but its imported mask still holds
    rows = {w["name"]: w for w in json.loads((tmp_path / "r.json").read_text())["weights"]}
    assert rows["small.w"]["sparsity"] == pytest.approx(1 / 32) and rows["small.w"]["zeros"] == 16


def test_masks_import_wrong_shape_exits_2(tmp_path):
    src = save(mlp3(), tmp_path / "m.onnx")
    ms = MaskSet()
    ms.set("dec.w", np.ones((32, 64), bool), "external", 0)  # transposed
    ms.save(tmp_path / "bad.npz")
    r = cli("prune", src, "-o", tmp_path / "o.onnx", "--masks-in", tmp_path / "bad.npz")
    assert_usage_error(r, "dec.w", "shape")
    assert not (tmp_path / "o.onnx").exists()
    ms = MaskSet()
    ms.set("nope", np.ones((2, 2), bool), "external", 0)
    ms.save(tmp_path / "unknown.npz")
    assert_usage_error(cli("prune", src, "-o", tmp_path / "o.onnx", "--masks-in", tmp_path / "unknown.npz"), "nope")
    assert_usage_error(cli("prune", src, "-o", tmp_path / "o.onnx", "--masks-in", tmp_path / "missing.npz"),
                       "missing.npz")


# ----------------------------------------------------------------------------------- CLI refusals

def test_refuses_output_equal_to_input(tmp_path):
    src = save(mlp3(), tmp_path / "m.onnx")
    before = sha256(src)
    assert_usage_error(cli("prune", src, "-o", src), "overwrite")
    assert_usage_error(cli("prune", src, "-o", tmp_path / "." / "m.onnx"), "overwrite")
    assert sha256(src) == before


@pytest.mark.parametrize("bad", ["2:5x", "4:4", "0:4", "3x0", "dense", "2:"])
def test_bad_pattern_exits_2_one_line(tmp_path, bad):
    src = save(mlp3(), tmp_path / "m.onnx")
    r = cli("prune", src, "-o", tmp_path / "o.onnx", "--pattern", bad)
    assert_usage_error(r, "pattern")
    assert not (tmp_path / "o.onnx").exists()


def test_external_data_output_and_input_untouched(tmp_path):
    src = save(mlp3(), tmp_path / "m.onnx")
    before = sha256(src)
    r = cli("prune", src, "-o", tmp_path / "ext" / "o.onnx", "--sparsity", "0.5", "--external-data", "--quiet")
    assert r.exit_code == 0, r.output
    (data,) = [p for p in (tmp_path / "ext").iterdir() if p.name != "o.onnx"]
    assert data.name == f"o.onnx.{sha256(data)[:16]}.data"  # named by its content
    assert sha256(src) == before
    y = run_ort(tmp_path / "ext" / "o.onnx", {"x": np.ones((1, 64), np.float32)})[0]
    assert np.isfinite(y).all()
    first = sha256(tmp_path / "ext" / "o.onnx")
    r = cli("prune", src, "-o", tmp_path / "ext" / "o.onnx", "--sparsity", "0.5", "--external-data", "--quiet")
    assert r.exit_code == 0 and r.stderr == "", r.output  # the same run again: the same files, no notes
    assert sorted(p.name for p in (tmp_path / "ext").iterdir()) == ["o.onnx", data.name]
    assert sha256(tmp_path / "ext" / "o.onnx") == first


def test_no_output_may_be_named_like_the_output_models_data_file(tmp_path):
    """The save replaces or removes files named OUT.<16 hex>.data: no report or masks there, and
    none of the input's data files as an output."""
    src = save(mlp3(), tmp_path / "m.onnx")
    r = cli("prune", src, "-o", tmp_path / "o.onnx", "--report", tmp_path / "o.onnx.0123456789abcdef.data")
    assert_usage_error(r, "named like a data file of the output model")
    (tmp_path / "m.onnx.0123456789abcdef.data").write_bytes(b"x")  # as if the input's data
    assert_usage_error(cli("prune", src, "-o", tmp_path / "m.onnx.0123456789abcdef.data"), "overwrite the input")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.0123456789abcdef.data"]


def test_options_fail_before_the_model_is_read(tmp_path):
    """A bad option is reported even when the model path is bad too: options are checked first."""
    assert_usage_error(cli("prune", tmp_path / "missing.onnx", "-o", tmp_path / "o.onnx", "--pattern", "2:5x"), "pattern")
    assert_usage_error(cli("prune", tmp_path / "missing.onnx", "-o", tmp_path / "o.onnx", "--sparsity", "1.5"), "sparsity")


def test_nm_with_higher_sparsity_is_refused(tmp_path):
    src = save(mlp3(), tmp_path / "m.onnx")
    assert_usage_error(cli("prune", src, "-o", tmp_path / "o.onnx", "--pattern", "2:4", "--sparsity", "0.8"), "2:4")
    with pytest.raises(Exception, match="1 - N/M"):
        PruneOptions(pattern="2:4", sparsity=0.8)
    PruneOptions(pattern="1:4", sparsity=0.75)  # exactly 1 - N/M is fine


@pytest.mark.parametrize("manifest", ['{"masks": [{"shape": [64, 32]}]}', '[]', '{"masks": [{"name": "dec.w", "step": "x"}]}',
                                      '{"masks": [{"name": "dec.w", "shape": [32, 64]}]}', 'not json'])
def test_masks_bad_manifest_exits_2(tmp_path, manifest):
    src = save(mlp3(), tmp_path / "m.onnx")
    ms = MaskSet()
    ms.set("dec.w", np.ones((64, 32), bool), "external", 0)
    ms.save(tmp_path / "m.npz")
    (tmp_path / "m.npz.json").write_text(manifest.replace('"name": "dec.w"', '"name": "dec.w", "array": "mask_00000"'))
    assert_usage_error(cli("prune", src, "-o", tmp_path / "o.onnx", "--masks-in", tmp_path / "m.npz"), "m.npz")


def test_masks_non_boolean_array_exits_2(tmp_path):
    src = save(mlp3(), tmp_path / "m.onnx")
    np.savez(tmp_path / "m.npz", **{"dec.w": np.full((64, 32), 0.5, np.float32)})
    (tmp_path / "m.npz.json").write_text(json.dumps({"masks": [{"name": "dec.w", "shape": [64, 32]}]}))
    assert_usage_error(cli("prune", src, "-o", tmp_path / "o.onnx", "--masks-in", tmp_path / "m.npz"), "boolean")
    np.savez(tmp_path / "m.npz", **{"dec.w": (np.arange(64 * 32).reshape(64, 32) % 2).astype(np.uint8)})
    r = cli("prune", src, "-o", tmp_path / "o.onnx", "--masks-in", tmp_path / "m.npz", "--quiet")  # 0/1 is accepted
    assert r.exit_code == 0, r.output
    assert np.all(inits(onnx.load(str(tmp_path / "o.onnx")))["dec.w"][:, 0::2] == 0)


@pytest.mark.parametrize("pattern, sparsity", [("unstructured", 0.5), ("2:4", None)])
def test_pruning_an_external_data_model_in_place_of_its_fresh_reads(tmp_path, pattern, sparsity):
    import hashlib

    import builders as B

    src = B.external_data_model(tmp_path / "in")
    data = src.parent / "model.onnx.data"
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (src, data)}
    model = Model.load(src)
    dense = {w.key: np.array(model.read(w.key)) for w in find_weights(model).weights}
    ctx, _ = prune_model(model, PruneOptions(sparsity=sparsity, pattern=pattern, min_params=0), progress=False)
    assert ctx.masks.keys()
    for key, values in dense.items():
        now = model.read(key)
        keep = ctx.masks.get(key) if key in ctx.masks else np.ones(values.shape, bool)  # skipped: unchanged
        assert np.array_equal(now[keep], values[keep]) and not np.any(now[~keep])
    for external in (True, False):
        out = tmp_path / f"out{external}" / "m.onnx"
        model.save(out, external_data=external)
        again = Model.load(out)
        assert all(np.array_equal(again.read(k), model.read(k)) for k in dense)
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (src, data)} == before


@pytest.mark.parametrize("weight_type", ["QInt8", "QUInt8"])
def test_dynamically_quantized_model_is_pruned_in_the_quantized_domain(tmp_path, weight_type):
    """onnxruntime's quantize_dynamic output: ConvInteger / MatMulInteger weights with zero points."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = Path(__file__).resolve().parents[1] / "samples"
    q = tmp_path / "q.onnx"
    quantize_dynamic(str(root / "digits_cnn.onnx"), str(q), weight_type=getattr(QuantType, weight_type))
    model = Model.load(q)
    weights = find_weights(model).weights
    assert {w.op for w in weights} == {"ConvInteger", "MatMulInteger"} and all(w.quant for w in weights)
    ctx, report = prune_model(model, PruneOptions(sparsity=0.5, min_params=0), progress=False)
    model.save(tmp_path / "p.onnx")
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "p.onnx")).graph.initializer}
    for w in weights:
        zp = inits[w.quant.zero_point]
        zp = zp.reshape([-1 if i == w.quant.axis else 1 for i in range(len(w.shape))]) if zp.size > 1 else zp
        pruned = ~ctx.masks.get(w.key)
        assert abs(pruned.mean() - 0.5) < 0.01
        assert np.all(np.broadcast_to(zp, w.shape)[pruned] == inits[w.key][pruned])
    data = np.load(root / "digits_cnn_eval.npz")
    logits = ort.InferenceSession(str(tmp_path / "p.onnx")).run(None, {"input": data["input"]})[0]
    assert np.mean(logits.argmax(1) == data["labels"]) > 0.8


def test_statically_quantized_operator_model_is_pruned_in_the_quantized_domain(tmp_path):
    """onnxruntime's quantize_static in operator format: QLinearConv / QLinearMatMul int8 weights,
    per-channel scales and zero points; 2:4 along the reduction axis counts values != zero point."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        quantize_static,
    )

    root = Path(__file__).resolve().parents[1] / "samples"
    calib = np.load(root / "digits_cnn_calib.npz")["input"][:32]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": calib[i:i + 8]} for i in range(0, 32, 8)])

        def get_next(self):
            return next(self.batches, None)

    q = tmp_path / "q.onnx"
    quantize_static(str(root / "digits_cnn.onnx"), str(q), Reader(), quant_format=QuantFormat.QOperator, per_channel=True)
    model = Model.load(q)
    weights = find_weights(model).weights
    assert {w.op for w in weights} >= {"QLinearConv"} and all(w.quant and w.quant.scale for w in weights)
    ctx, _ = prune_model(model, PruneOptions(pattern="2:4", min_params=0), progress=False)
    model.save(tmp_path / "p.onnx")
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "p.onnx")).graph.initializer}
    pruned = [w for w in weights if w.key in ctx.masks]  # the 1-channel first conv is skipped (reported)
    assert len(pruned) >= 2
    for w in pruned:
        zp = inits[w.quant.zero_point]
        zp = zp.reshape([-1 if i == w.quant.axis else 1 for i in range(len(w.shape))]) if zp.size > 1 else zp
        op = {"QLinearConv": "Conv", "QGemm": "Gemm", "QLinearMatMul": "MatMul"}[w.op]
        trans = next((a.i for n in onnx.load(str(q)).graph.node if n.input[3:4] == [w.key]
                      for a in n.attribute if a.name == "transB"), 0)
        assert_nm(inits[w.key], op, 2, 4, role="W" if op == "Conv" else "B", trans=trans,
                  zero=np.broadcast_to(zp, w.shape), name=w.key)
    data = np.load(root / "digits_cnn_eval.npz")
    logits = ort.InferenceSession(str(tmp_path / "p.onnx")).run(None, {"input": data["input"]})[0]
    assert np.mean(logits.argmax(1) == data["labels"]) > 0.7


def test_global_ranking_keeps_exactly_the_largest_magnitudes_across_weights(tmp_path):
    """An independent reference: sort |w| over all selected weights together, keep the top half."""
    rng = np.random.default_rng(3)
    shapes = {"a": (64, 48), "b": (48, 96), "c": (96, 16)}
    scale = {"a": 0.1, "b": 1.0, "c": 3.0}  # very different layer scales: global sparsities must differ
    inits = [numpy_helper.from_array((rng.standard_normal(s) * scale[k]).astype(np.float32), k) for k, s in shapes.items()]
    nodes = [helper.make_node("MatMul", ["x", "a"], ["h1"]), helper.make_node("MatMul", ["h1", "b"], ["h2"]),
             helper.make_node("MatMul", ["h2", "c"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [1, 64])],
                              [helper.make_tensor_value_info("y", F, [1, 16])], inits)
    model = Model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    dense = {k: np.array(model.read(k)) for k in shapes}
    prune_model(model, PruneOptions(sparsity=0.5, scope="global", min_params=0), progress=False)
    everything = np.sort(np.concatenate([np.abs(v).ravel() for v in dense.values()]))
    threshold = everything[everything.size // 2]  # the smallest kept magnitude
    for k, v in dense.items():
        kept = model.read(k) != 0
        assert np.array_equal(kept, np.abs(v) >= threshold), k
    per_layer = [float((model.read(k) == 0).mean()) for k in shapes]
    assert per_layer[0] > 0.9 and per_layer[2] < 0.2  # small-scale layer pruned hard, large-scale one barely


def test_overrides_follow_their_own_cubic_schedule_in_gradual_runs():
    """An override is the layer's final sparsity: in a gradual run it ramps on the same cubic
    schedule (s_i -> its value), instead of jumping there at the first step."""
    from onnxprune.jobs.prune_job import build_pipeline
    from onnxprune.prune.schedule import cubic_sparsity

    opts = PruneOptions(sparsity=0.8, steps=4, overrides=["fc*=0.4"])
    prunes = [p for p in build_pipeline(opts).passes if p.name == "prune"]
    got = [float(p.overrides[0].split("=")[1]) for p in prunes]
    assert got == pytest.approx([cubic_sparsity(t, 0, 0.4, 4) for t in (1, 2, 3, 4)])
    assert [p.sparsity for p in prunes] == pytest.approx([cubic_sparsity(t, 0, 0.8, 4) for t in (1, 2, 3, 4)])
    assert got[-1] == pytest.approx(0.4) and got[0] < 0.4
