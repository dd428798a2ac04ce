"""The pass contract: declared requires/ensures, an exact `modified`, failures named by pass (Pass.__call__)."""

import builders as B
import numpy as np
import pytest
from click.testing import CliRunner

from onnxprune.cli import cli_flag, main
from onnxprune.core.errors import OnnxPruneError
from onnxprune.core.masks import MaskSet
from onnxprune.core.model import Model
from onnxprune.pipeline import NO_UNUSED, Context, Pass, PassError, PassResult, Pipeline
from onnxprune.pipeline.calibration import CalibrationPass
from onnxprune.prune.prune_pass import PrunePass


def _ctx() -> Context:
    return Context(Model(B.matmul_2d()), MaskSet(), progress=False)


def _one_line(e: OnnxPruneError, *words: str) -> str:
    text = e.render(cli_flag)
    assert "\n" not in text and all(w in text for w in words), text
    return text


def test_a_missing_requirement_is_one_line_naming_the_pass_and_the_fix():
    ctx = _ctx()
    with pytest.raises(PassError) as e:
        CalibrationPass()(ctx)
    assert _one_line(e.value, "pass 'calibrate' requires calibration data", "--data FILE")
    assert e.value.exit_code == 2 and not ctx.results


def test_a_broken_guarantee_is_caught_after_the_pass():
    """A pass that writes a pruned entry back to non-zero breaks PRUNED_ZERO, which the prune pass ensures."""

    class Revives(PrunePass):
        name = "revives"

        def call(self, ctx):
            result = super().call(ctx)
            w = ctx.model.read("W").copy()
            w[~ctx.masks.get("W")] = 1.0
            ctx.model.write("W", w)
            return result

    with pytest.raises(PassError) as e:
        Revives(0.5, min_params=0)(_ctx())
    _one_line(e.value, "pass 'revives' ensures pruned weights exactly zero", "'W'")


class _Writes(Pass):
    name = "writes"

    def __init__(self, claim: bool, write: bool):
        self.claim, self.write = claim, write

    def call(self, ctx):
        if self.write:
            ctx.model.write("W", ctx.model.read("W") * 2)
        return PassResult(self.name, self.claim)


@pytest.mark.parametrize("claim,write", [(False, True), (True, False)])
def test_modified_must_say_what_the_pass_did(claim, write):
    with pytest.raises(PassError) as e:
        _Writes(claim, write)(_ctx())
    _one_line(e.value, f"pass 'writes' reported modified={claim}")


def test_the_epoch_moves_only_when_a_pass_modified_the_model():
    ctx = _ctx()
    Pipeline([_Writes(False, False), _Writes(True, True), _Writes(False, False)]).run(ctx)
    assert ctx.epoch == 1 and [r.modified for r in ctx.results] == [False, True, False]


def test_a_crash_inside_a_pass_names_the_pass_and_the_weight():
    class Crashes(PrunePass):
        name = "crashes"

        def _global_cut(self, *args):
            raise ValueError("boom\nsecond line")

    with pytest.raises(PassError) as e:
        Crashes(0.5, scope="global", min_params=0)(_ctx())
    assert isinstance(e.value.__cause__, ValueError)
    _one_line(e.value, "pass 'crashes' failed", "ValueError: boom second line")

    class CrashesAtWeight(PrunePass):
        name = "crashes-at"

        def _plan(self, ctx):
            pattern, score, alloc, result = super()._plan(ctx)
            return pattern, lambda *a: 1 / 0, alloc, result

    with pytest.raises(PassError) as e:
        CrashesAtWeight(0.5, min_params=0)(_ctx())
    _one_line(e.value, "pass 'crashes-at' failed at W", "ZeroDivisionError")


def test_a_graph_rewrite_must_be_declared_structural():
    """A pass that swaps the graph under an analysis already built leaves that analysis stale."""

    class Rewrites(Pass):
        name = "rewrites"

        def call(self, ctx):
            ctx.analysis  # noqa: B018 (built before the rewrite)
            ctx.model.replace_proto(ctx.model.proto)
            return PassResult(self.name, True)

    with pytest.raises(PassError) as e:
        Rewrites()(_ctx())
    _one_line(e.value, "pass 'rewrites' ensures a fresh analysis", "structural")
    Rewrites.structural = True
    ctx = _ctx()
    Rewrites()(ctx)
    assert ctx.analysis.weights  # rebuilt


def test_a_pass_that_changed_nothing_is_not_held_to_its_ensures():
    """An input model may hold unread constants: a structural pass that rewrote nothing leaves them."""
    from onnx import numpy_helper

    class Idle(Pass):
        name, structural, ensures = "idle", True, (NO_UNUSED,)

        def call(self, ctx):
            return PassResult(self.name, False)

    proto = B.matmul_2d()
    proto.graph.initializer.append(numpy_helper.from_array(np.ones(3, np.float32), "unread"))
    ctx = Context(Model(proto))
    Idle()(ctx)
    assert [t.name for t in ctx.model.proto.graph.initializer] == ["W", "unread"]


def test_the_cli_reports_a_crashing_pass_in_one_line(monkeypatch, tmp_path):
    import onnxprune.jobs.prune_job as job

    class Crashes(Pass):
        name = "crashes"

        def call(self, ctx):
            raise KeyError("nope")

    monkeypatch.setattr(job, "build_pipeline", lambda opts: Pipeline([Crashes()]))
    model = B.save(B.matmul_2d(), tmp_path / "m.onnx")
    r = CliRunner().invoke(main, ["prune", str(model), "-o", str(tmp_path / "o.onnx"), "--quiet"])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert lines[0].startswith("onnxprune: error: pass 'crashes' failed: KeyError: 'nope'"), lines
    assert not (tmp_path / "o.onnx").exists()


def test_ctx_skipped_names_what_the_pruning_passes_left_dense():
    ctx = _ctx()
    PrunePass(0.5, skip=["W"], min_params=0)(ctx)
    assert ctx.skipped == {"W": "skipped by --skip"} and not ctx.results[0].modified
    assert np.array_equal(ctx.model.read("W"), Model(B.matmul_2d()).read("W"))
