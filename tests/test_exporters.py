"""Every command on models from six exporters (TorchScript, dynamo, spox, tf2onnx, paddle2onnx,
skl2onnx): no traceback, exit 0/1 (or 2 with one line where refusing is the answer), every model
written loads and runs in onnxruntime with the original's signature, pruning never adds parameters,
packed models compute what the pruned model computes. The cases and the runner: tests/exporters.py;
the table of results: bench/exporters.py."""

from __future__ import annotations

import exporters as E
import numpy as np
import onnx
import pytest

pytestmark = pytest.mark.real

# Refusals that are the right answer, with why (none today: paddle_cls declares its input as
# [-1, 3, ?, ?], and -1 is read as a dynamic dim like the other exporters' names).
REFUSALS: dict[str, set[str]] = {}
EXIT_CODES = {"check_u50": (0, 1), "check_channel": (0, 1), "run": (0, 1)}  # 1: the parity verdict

_RUNS: dict[str, E.CaseRun] = {}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    def get(key: str) -> E.CaseRun:
        if key not in _RUNS:
            _RUNS[key] = E.run_case(E.CASES[key], tmp_path_factory.mktemp(key))
        return _RUNS[key]
    return get


def _shapes(outputs) -> list:
    return [o.shape if isinstance(o, np.ndarray) else (type(o).__name__, len(o)) for o in outputs]


@pytest.mark.parametrize("key", E.TEST_KEYS)
def test_every_command_exits_cleanly(key, runs):
    for name, r in runs(key).results.items():
        assert r.exception is None, f"{key} {name}: {type(r.exception).__name__}: {r.exception}"
        assert "Traceback" not in r.stdout + r.stderr, f"{key} {name}:\n{r.stderr}"
        if r.exit_code == 2 and name in REFUSALS.get(key, ()):
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("onnxprune: error:"), f"{key} {name}: {r.stderr}"
            continue
        assert r.exit_code in EXIT_CODES.get(name, (0,)), f"{key} {name}: exit {r.exit_code}\n{r.stderr[-2000:]}"


@pytest.mark.parametrize("key", E.TEST_KEYS)
def test_written_models_run_with_the_original_signature_and_no_more_parameters(key, runs):
    run = runs(key)
    ref = E.session(run.model)
    feed = E.feed(run.case, ref)
    want = _shapes(ref.run(None, feed))
    before = E.params(run.model)
    written = set()
    for name, rel in E.OUTPUTS.items():
        if run.results[name].exit_code not in (0, 1):
            continue
        path = run.folder / rel
        assert path.is_file(), f"{key} {name}: {path} was not written"
        sess = E.session(path)
        assert E.signature(sess) == E.signature(ref), f"{key} {name}"
        assert _shapes(sess.run(None, feed)) == want, f"{key} {name}"
        if name not in E.PACKED_FROM:
            assert E.params(path) <= before, f"{key} {name}: {E.params(path)} > {before} parameters"
        written.add(name)
    assert written >= set(E.OUTPUTS) - REFUSALS.get(key, set()), f"{key}: only {sorted(written)} written"


@pytest.mark.parametrize("key", E.TEST_KEYS)
def test_packed_models_compute_what_the_pruned_model_computes(key, runs):
    run = runs(key)
    feed = E.feed(run.case, E.session(run.model))
    for name, source in E.PACKED_FROM.items():
        want = E.session(run.folder / source).run(None, feed)
        got = E.session(run.folder / E.OUTPUTS[name]).run(None, feed)
        for w, g in zip(want, got):
            if isinstance(w, np.ndarray):
                np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=f"{key} {name}")
            else:
                assert g == w, f"{key} {name}"


def test_channel_pruning_shrinks_the_paddle_model_whose_weights_are_constant_nodes(runs):
    """PaddleOCR det keeps every weight in a Constant node (issue 12, item 6, on a real export)."""
    from onnxprune.analyze.cleanup import unused_constants

    run = runs("paddle_det")
    out = run.folder / "channel.onnx"
    report = run.results["prune_channel"].report["structured"]
    assert report["channels_after"] < report["channels_before"]
    assert E.params(out) < 0.8 * E.params(run.model)
    assert not unused_constants(onnx.load(str(out)))
