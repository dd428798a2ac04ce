"""The global cut against an independent reference: sort every alive entry of every weight by
(|score|, weight order, flat index) and prune the first `need`."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxprune.core.masks import MaskSet
from onnxprune.core.model import Model
from onnxprune.jobs.prune_job import PruneOptions, prune_model
from onnxprune.prune import global_rank
from onnxprune.prune.global_rank import GlobalCut


def reference_keep(scores: list[np.ndarray], alive: list[np.ndarray | None], need: int) -> list[np.ndarray]:
    rows = []  # (score, owner, flat index) of every alive entry
    for o, (s, a) in enumerate(zip(scores, alive)):
        for i, v in enumerate(np.abs(s).ravel()):
            if a is None or a.ravel()[i]:
                rows.append((float(v), o, i))
    rows.sort()
    keep = [np.ones(s.size, bool) if a is None else a.ravel().copy() for s, a in zip(scores, alive)]
    for _, o, i in rows[:need]:
        keep[o][i] = False
    return keep


def run_cut(scores: list[np.ndarray], alive: list[np.ndarray | None], need: int) -> list[np.ndarray]:
    bits = [global_rank.score_bits(s.copy()) for s in scores]
    flat_alive = [None if a is None else a.ravel() for a in alive]
    cut = GlobalCut.plan(lambda: (b if a is None else b[a] for b, a in zip(bits, flat_alive)), need)
    keep = [cut.keep(o, b, a) for o, (b, a) in enumerate(zip(bits, flat_alive))]
    for o, index in cut.late_picks().items():
        assert not (~keep[o][index]).any()  # a late pick was kept until now
        keep[o][index] = False
    return keep


values = st.sampled_from([0.0, -0.0, 0.5, -0.5, 1.0, 1.0 + 2**-20, 3.0, 1e-30, np.inf])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.one_of(values, st.floats(-4, 4, width=32)), min_size=1, max_size=40), min_size=1, max_size=4),
       st.floats(0, 1), st.integers(0, 2**32 - 1), st.booleans())
def test_cut_matches_reference(tensors, fraction, seed, narrow):
    rng = np.random.default_rng(seed)
    scores = [np.array(t, dtype=np.float32) for t in tensors]
    alive = [None if rng.random() < 0.5 else rng.random(s.size) < 0.7 for s in scores]
    n_alive = sum(s.size if a is None else int(a.sum()) for s, a in zip(scores, alive))
    need = int(round(fraction * n_alive))
    old = global_rank.BAND_LIMIT
    global_rank.BAND_LIMIT = 0 if narrow else old  # 0: every band is narrowed to one value
    try:
        got = run_cut(scores, alive, need)
    finally:
        global_rank.BAND_LIMIT = old
    for g, r in zip(got, reference_keep(scores, alive, need)):
        assert np.array_equal(g, r)


def test_counts_agree_with_the_cut():
    rng = np.random.default_rng(1)
    scores = [rng.standard_normal(n).astype(np.float32) for n in (100, 7, 300)]
    alive = [None, rng.random(7) < 0.5, None]
    need = 150
    flat = [global_rank.score_bits(s.copy()) for s in scores]
    counts = global_rank.counts(lambda: zip(flat, alive), need)
    keep = reference_keep(scores, alive, need)
    assert counts == [int((np.ones(s.size, bool) if a is None else a).sum() - k.sum())
                      for s, a, k in zip(scores, alive, keep)]


def test_many_equal_scores_are_narrowed_and_taken_in_order(monkeypatch):
    """A band of equal scores larger than the limit: an extra read narrows it to one value, whose
    entries go in weight order, then flat index."""
    monkeypatch.setattr(global_rank, "BAND_LIMIT", 4)
    scores = [np.full(50, 2.0, np.float32), np.full(30, 2.0, np.float32)]
    scores[0][:5] = 1.0
    reads = []

    def alive_bits():
        reads.append(1)
        return (global_rank.score_bits(s.copy()) for s in scores)

    cut = GlobalCut.plan(alive_bits, 60)
    assert len(reads) == 2 and cut.hi == cut.lo + 1 and cut.take == 55
    keep = [cut.keep(o, global_rank.score_bits(s.copy()), None) for o, s in enumerate(scores)]
    assert cut.late_picks() == {}
    assert not keep[0].any() and keep[1].sum() == 20 and not keep[1][:10].any()


def test_prune_entries_clears_packed_bits():
    masks = MaskSet()
    rng = np.random.default_rng(0)
    keep = rng.random((13, 7)) < 0.8
    masks.set("w", keep, "unstructured", 1)
    index = np.array([0, 5, 8, 9, 90])
    masks.prune_entries("w", index)
    expected = keep.copy().reshape(-1)
    expected[index] = False
    assert np.array_equal(masks.get("w").reshape(-1), expected)


@pytest.mark.parametrize("limit,chunk", [(0, 1 << 18), (1 << 20, 1 << 18), (0, 7), (1 << 20, 7)])
def test_global_prune_with_ties_and_existing_masks_matches_reference(limit, chunk, monkeypatch):
    """End to end through the pass: two gradual steps (existing masks), many tied magnitudes; with
    chunk 7 the weights are scored in many chunks (magnitude is scored chunk by chunk)."""
    monkeypatch.setattr(global_rank, "BAND_LIMIT", limit)
    monkeypatch.setattr(global_rank, "_CHUNK", chunk)
    rng = np.random.default_rng(5)
    shapes = {"a": (32, 24), "b": (24, 40)}
    dense = {k: (rng.integers(-6, 7, s) * 0.25).astype(np.float32) for k, s in shapes.items()}
    nodes = [helper.make_node("MatMul", ["x", "a"], ["h"]), helper.make_node("MatMul", ["h", "b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 40])],
                              [numpy_helper.from_array(v, k) for k, v in dense.items()])
    model = Model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    total = sum(v.size for v in dense.values())
    ctx1, _ = prune_model(model, PruneOptions(sparsity=0.3, scope="global", min_params=0), progress=False)
    keep1 = reference_keep(list(dense.values()), [None, None], int(round(0.3 * total)))
    for k, ref in zip(shapes, keep1):
        assert np.array_equal(ctx1.masks.get(k).ravel(), ref), k
        assert np.array_equal(model.read(k).ravel(), np.where(ref, dense[k].ravel(), 0)), k
    ctx2, _ = prune_model(model, PruneOptions(sparsity=0.6, scope="global", min_params=0), masks=ctx1.masks,
                          progress=False)
    need2 = int(round(0.6 * total)) - int(sum((~k).sum() for k in keep1))
    keep2 = reference_keep(list(dense.values()), [k.reshape(shapes[n]) for n, k in zip(shapes, keep1)], need2)
    assert sum(int((~k).sum()) for k in keep2) == int(round(0.6 * total))
    for k, ref in zip(shapes, keep2):
        assert np.array_equal(ctx2.masks.get(k).ravel(), ref), k
        assert np.array_equal(model.read(k).ravel(), np.where(ref, dense[k].ravel(), 0)), k
