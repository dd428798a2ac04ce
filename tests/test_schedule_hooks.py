"""The cubic gradual schedule (Zhu & Gupta 2017) and fine-tuning hooks between pruning steps."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from nm_check import assert_nm

from onnxprune.cli import main
from onnxprune.core.errors import HookError, OptionError
from onnxprune.core.model import Model
from onnxprune.jobs.prune_job import PruneOptions, prune_model
from onnxprune.prune.schedule import cubic_sparsity, schedule

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
MLP = SAMPLES / "digits_mlp.onnx"
HOOK = f"{SAMPLES / 'finetune_hook.py'}:finetune"
WEIGHTS = ("fc1.weight", "fc2.weight", "fc3.weight")


def formula(t, s_i, s_f, n, t0, dt):
    return s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3


def accuracy(proto: onnx.ModelProto) -> float:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    with np.load(SAMPLES / "digits_eval.npz") as d:
        return float((sess.run(["logits"], {"input": d["input"]})[0].argmax(1) == d["labels"]).mean())


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


# --------------------------------------------------------------------------------------- schedule

@pytest.mark.parametrize("s_i,s_f,n,t0,dt", [(0.0, 0.9, 4, 0, 1), (0.1, 0.8, 10, 100, 50), (0.0, 0.5, 3, 7, 3),
                                             (0.3, 0.3, 5, 0, 2)])
def test_cubic_matches_formula_monotone_ends_at_final(s_i, s_f, n, t0, dt):
    ts = range(t0 - 2 * dt, t0 + (n + 2) * dt + 1)
    values = [cubic_sparsity(t, s_i, s_f, n, t0, dt) for t in ts]
    for t, v in zip(ts, values):
        if t <= t0:
            assert v == s_i
        elif t >= t0 + n * dt:
            assert v == s_f
        else:
            assert v == pytest.approx(formula(t, s_i, s_f, n, t0, dt), abs=1e-12)
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))
    assert values[-1] == s_f
    plan = schedule(s_f, n, s_i, t0, dt)
    expected = [(t0 + k * dt, formula(t0 + k * dt, s_i, s_f, n, t0, dt)) for k in range(n + 1)]
    if s_i == 0:
        expected = expected[1:]  # the event at t0 would prune to 0: dropped
    assert [(st.t, round(st.sparsity, 12)) for st in plan] == [(t, round(s, 12)) for t, s in expected]
    assert [st.index for st in plan] == list(range(1, len(plan) + 1))
    assert plan[-1].sparsity == s_f


def test_schedule_one_shot_and_front_loaded():
    assert [(s.index, s.t, s.sparsity) for s in schedule(0.8)] == [(1, 0, 0.8)]
    plan = schedule(0.9, 4)
    gains = np.diff([0.0] + [s.sparsity for s in plan])
    assert np.all(np.diff(gains) < 0)  # prunes fast early, slowly late


@pytest.mark.parametrize("kwargs", [dict(final=1.0), dict(final=-0.1), dict(final=0.5, initial=0.6),
                                    dict(final=0.5, steps=0), dict(final=0.5, steps=2, dt=0)])
def test_schedule_rejects(kwargs):
    with pytest.raises(OptionError):
        schedule(**kwargs)


# --------------------------------------------------------------------------------- gradual + hooks

class Recorder:
    """A hook that records what it sees and changes nothing."""

    def __init__(self):
        self.seen = []

    def __call__(self, ctx):
        self.seen.append(dict(step=ctx.step, steps=ctx.steps, t=ctx.t, sparsity=ctx.sparsity,
                              masks={k: v.copy() for k, v in ctx.masks.items()},
                              weights={k: v.copy() for k, v in ctx.weights.items()}))
        for v in ctx.weights.values():  # scribbling on the copies must not leak into the model
            v[...] = 123
        return None


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_gradual_masks_monotone_and_follow_schedule(pattern):
    rec = Recorder()
    model = Model.load(MLP)
    sparsities = []

    def on_step(ctx, result):
        if result.pass_name == "prune":
            sparsities.append({k: v["sparsity"] for k, v in result.weights.items() if "sparsity" in v})

    final = 0.9 if pattern == "unstructured" else 0.5
    opts = PruneOptions(sparsity=None if pattern == "2:4" else final, pattern=pattern, steps=4, t0=10, dt=5,
                        hooks=[rec])
    prune_model(model, opts, progress=False, on_step=on_step)
    plan = schedule(final, 4, 0.0, 10, 5)
    assert [s["step"] for s in rec.seen] == [1, 2, 3, 4] and {s["steps"] for s in rec.seen} == {4}
    assert [s["t"] for s in rec.seen] == [15, 20, 25, 30] == [p.t for p in plan]
    assert [s["sparsity"] for s in rec.seen] == [p.sparsity for p in plan]
    for step, (seen, per_weight) in enumerate(zip(rec.seen, sparsities)):
        assert set(seen["masks"]) == set(WEIGHTS)
        for k in WEIGHTS:
            size = seen["masks"][k].size
            assert per_weight[k] == pytest.approx(plan[step].sparsity, abs=1 / size)
            assert 1 - seen["masks"][k].mean() == pytest.approx(plan[step].sparsity, abs=1 / size)
            assert np.all(seen["weights"][k][~seen["masks"][k]] == 0)  # the hook sees masked weights
            if step:
                assert not np.any(seen["masks"][k] & ~rec.seen[step - 1]["masks"][k])  # monotone
    for k in WEIGHTS:  # the recorder's scribbles never reached the model
        assert not np.any(model.read(k) == 123)
        if pattern == "2:4":
            assert_nm(model.read(k), "MatMul" if k == "fc1.weight" else "Gemm", 2, 4, trans=int(k != "fc1.weight"))


def _hook_file(tmp_path, body: str) -> str:
    path = tmp_path / "hooks.py"
    path.write_text("import numpy as np\n\n" + body)
    return str(path)


BAD_HOOKS = {
    "name": ("def hook(ctx):\n    return {'no_such_tensor': np.zeros(3, np.float32)}\n", "no_such_tensor"),
    "shape": ("def hook(ctx):\n    return {'fc1.weight': np.zeros((256, 64), np.float32)}\n", "shape"),
    "dtype": ("def hook(ctx):\n    return {'fc1.weight': ctx.weights['fc1.weight'].astype(np.int32)}\n", "int32"),
    "raises": ("def hook(ctx):\n    raise RuntimeError('boom')\n", "boom"),
    "raises-multiline": ("def hook(ctx):\n    raise RuntimeError('first line\\nsecond line')\n", "second line"),
}


@pytest.mark.parametrize("kind", BAD_HOOKS)
def test_bad_hook_fails_with_hook_error(tmp_path, kind):
    body, word = BAD_HOOKS[kind]
    spec = _hook_file(tmp_path, body) + ":hook"
    with pytest.raises(HookError, match=word):
        prune_model(Model.load(MLP), PruneOptions(sparsity=0.5, hooks=[spec]), progress=False)
    r = cli("prune", MLP, "-o", tmp_path / "o.onnx", "--sparsity", "0.5", "--hook", spec)
    assert r.exit_code == 2, r.output
    *stages, err = r.stderr.strip().splitlines()  # the stage lines of the steps that ran, then one error line
    assert err.startswith("onnxprune: error:") and word in err, err
    assert all(s.startswith("onnxprune: ") and "error" not in s for s in stages), stages
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("spec", ["missing_file.py:hook", "{samples}/finetune_hook.py:nope", "no_colon",
                                  "no_such_module_xyz:fn"])
def test_bad_hook_spec_exits_2(tmp_path, spec):
    r = cli("prune", MLP, "-o", tmp_path / "o.onnx", "--hook", spec.format(samples=SAMPLES))
    assert r.exit_code == 2, r.output
    assert "\n" not in r.stderr.strip() and "hook" in r.stderr


def test_float64_from_a_hook_is_cast_with_a_note(tmp_path):
    spec = _hook_file(tmp_path, "def hook(ctx):\n    return {'fc1.weight': ctx.weights['fc1.weight'].astype(np.float64) + 1e-3}\n")
    ctx, report = prune_model(Model.load(MLP), PruneOptions(sparsity=0.5, hooks=[spec + ":hook"]), progress=False)
    assert ctx.model.read("fc1.weight").dtype == np.float32
    notes = [n for r in ctx.results for n in r.notes]
    assert any("as float64: cast to the model's float32" in n for n in notes), notes


def test_module_hook_imports_from_the_current_folder(tmp_path, monkeypatch):
    (tmp_path / "mytune.py").write_text("def hook(ctx):\n    return None\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    r = cli("prune", MLP, "-o", tmp_path / "o.onnx", "--sparsity", "0.5", "--hook", "mytune:hook", "--quiet")
    assert r.exit_code == 0, r.output


def test_reviving_hook_is_remasked(tmp_path):
    spec = _hook_file(tmp_path, "def hook(ctx):\n"
                                "    out = {k: np.ones_like(v) for k, v in ctx.weights.items()}\n"
                                "    out['fc1.bias'] = np.full(256, 0.5, np.float32)\n"
                                "    return out\n") + ":hook"
    r = cli("prune", MLP, "-o", tmp_path / "o.onnx", "--sparsity", "0.7", "--steps", "2", "--hook", spec,
            "--masks-out", tmp_path / "m.npz", "--quiet")
    assert r.exit_code == 0, r.output
    out = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "o.onnx")).graph.initializer}
    with np.load(tmp_path / "m.npz") as z:
        masks = [z[f"mask_{i:05d}"] for i in range(3)]
    for k, keep in zip(WEIGHTS, masks):
        assert np.all(out[k][~keep] == 0) and np.all(out[k][keep] == 1)
        assert 1 - keep.mean() == pytest.approx(0.7, abs=1e-3)
    assert np.all(out["fc1.bias"] == 0.5)  # non-prunable tensors are written as returned


def test_sample_finetune_hook_recovers_accuracy(capsys):
    """Gradual (4 steps to 90%) with the sample hook ends far above one-shot 90% without it."""
    rows = []

    def on_step(ctx, result):
        if result.pass_name in ("prune", "hooks"):
            ws = [w for w in ctx.analysis.weights if w.key in ctx.masks]
            total = sum(w.params for w in ws)
            pruned = sum(round(ctx.masks.sparsity(w.key) * w.params) for w in ws)
            rows.append((result.pass_name, pruned / total, accuracy(ctx.model.proto)))

    dense = accuracy(Model.load(MLP).proto)
    model = Model.load(MLP)
    prune_model(model, PruneOptions(sparsity=0.9, steps=4, hooks=[HOOK]), progress=False, on_step=on_step)
    gradual = accuracy(model.proto)
    one = Model.load(MLP)
    prune_model(one, PruneOptions(sparsity=0.9), progress=False)
    one_shot = accuracy(one.proto)
    with capsys.disabled():
        print(f"\n  dense accuracy {dense:.4f}; one-shot 90% without hook {one_shot:.4f}")
        for i, (name, sp, acc) in enumerate(rows):
            print(f"  step {i // 2 + 1} after {name:6s} sparsity {sp:.4f} accuracy {acc:.4f}")
    plan = schedule(0.9, 4)
    assert [round(sp, 3) for name, sp, _ in rows if name == "prune"] == [round(p.sparsity, 3) for p in plan]
    assert rows[-1][2] == gradual
    for (n1, _, before), (n2, _, after) in zip(rows[::2], rows[1::2]):
        assert (n1, n2) == ("prune", "hooks") and after >= before  # each fine-tuning recovers
    assert gradual >= 0.9 and gradual >= one_shot + 0.3
    for k in WEIGHTS:
        assert np.mean(model.read(k) == 0) == pytest.approx(0.9, abs=1e-3)
