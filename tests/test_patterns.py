"""Mask patterns on the matrix view: unstructured, N:M and r x c blocks (onnxprune.prune.patterns).

N:M results are verified with the independent checker in tests/nm_check.py, never with the
project's own grouping code.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nm_check import assert_nm, group_axis, group_counts
from onnx import TensorProto, helper, numpy_helper

from onnxprune.analyze.weights import find_weights
from onnxprune.core.errors import OptionError
from onnxprune.core.model import Model
from onnxprune.prune import patterns
from onnxprune.prune.patterns import Pattern


def distinct_scores(shape, seed=0):
    """Scores with no ties: a random permutation of 1..size."""
    rng = np.random.default_rng(seed)
    return (rng.permutation(int(np.prod(shape))) + 1).astype(np.float32).reshape(shape)


def all_kept(shape):
    return np.ones(shape, dtype=bool)


# ---------------------------------------------------------------------------------------- parsing

@pytest.mark.parametrize("text,expected", [("unstructured", ("unstructured", 0, 0)), ("2:4", ("nm", 2, 4)),
                                           (" 1:4 ", ("nm", 1, 4)), ("4X4", ("block", 4, 4)), ("8x1", ("block", 8, 1))])
def test_parse(text, expected):
    p = Pattern.parse(text)
    assert (p.kind, p.a, p.b) == expected
    assert Pattern.parse(str(p)) == p


@pytest.mark.parametrize("text", ["4:4", "0:4", "5:4", "0x4", "4x0", "2-4", "", "dense", "2:4:8"])
def test_parse_rejects(text):
    with pytest.raises(OptionError):
        Pattern.parse(text)


def test_fixed_sparsity():
    assert Pattern.parse("2:4").fixed_sparsity == 0.5
    assert Pattern.parse("1:4").fixed_sparsity == 0.75
    assert Pattern.parse("4x4").fixed_sparsity is None


# ----------------------------------------------------------------------------------- unstructured

@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.333, 0.5, 0.8, 0.95, 0.999])
def test_unstructured_exact_count_prunes_lowest(sparsity):
    s = distinct_scores((37, 23))
    keep = patterns.unstructured(s, all_kept(s.shape), sparsity)
    target = int(round(sparsity * s.size))
    assert int((~keep).sum()) == target
    if 0 < target < s.size:
        assert s[~keep].max() < s[keep].min()


def test_unstructured_ties_prune_lower_index_first():
    s = np.ones((3, 4), dtype=np.float32)
    keep = patterns.unstructured(s, all_kept(s.shape), 5 / 12)
    assert np.array_equal(np.flatnonzero(~keep.reshape(-1)), [0, 1, 2, 3, 4])
    # mixed: the boundary value is tied; the lower indices among the tied go first
    s = np.array([[3, 1, 2, 1], [2, 1, 0, 2]], dtype=np.float32)
    keep = patterns.unstructured(s, all_kept(s.shape), 4 / 8)  # 0, then three of the 1s
    assert np.array_equal(np.flatnonzero(~keep.reshape(-1)), [1, 3, 5, 6])
    keep = patterns.unstructured(s, all_kept(s.shape), 5 / 8)  # 0, all 1s, the first of the 2s
    assert np.array_equal(np.flatnonzero(~keep.reshape(-1)), [1, 2, 3, 5, 6])


def test_unstructured_monotone():
    s = distinct_scores((16, 16), seed=1)
    keep0 = all_kept(s.shape)
    keep0[s > 200] = False  # already prune the *largest* scores: they must stay pruned
    n0 = int((~keep0).sum())
    keep = patterns.unstructured(s, keep0, 0.5)
    assert not np.any(keep & ~keep0)
    assert int((~keep).sum()) == 128
    # the newly pruned are the lowest among the previously kept
    new = keep0 & ~keep
    assert int(new.sum()) == 128 - n0
    assert s[new].max() < s[keep].min()
    # a lower target than already reached revives nothing
    again = patterns.unstructured(s, keep, 0.2)
    assert np.array_equal(again, keep)


# -------------------------------------------------------------------------------------------- N:M

@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (2, 8), (3, 16)])
def test_nm_exact_keeps_n_largest(n, m):
    rows, cols = 24, 64
    s = distinct_scores((rows, cols), seed=n * 10 + m)
    keep = patterns.nm(s, all_kept(s.shape), n, m, cols)
    assert_nm(keep, "Gemm", n, m, trans=1, name=f"{n}:{m}")  # (N, K) matrix view: groups along axis 1
    counts = group_counts(keep, 1, m)
    assert np.all(counts == n)  # exactly N kept in every full group
    assert int((~keep).sum()) == round((1 - n / m) * s.size)
    groups = s.reshape(rows, cols // m, m)
    kept = keep.reshape(rows, cols // m, m)
    expect = np.argsort(groups, axis=2)[..., m - n:]  # the N largest of each group
    want = np.zeros_like(kept)
    np.put_along_axis(want, expect, True, axis=2)
    assert np.array_equal(kept, want)


def test_nm_ties_prune_lower_index_first():
    s = np.ones((2, 8), dtype=np.float32)
    keep = patterns.nm(s, all_kept(s.shape), 2, 4, 8)
    assert keep[0].tolist() == [False, False, True, True] * 2
    s = np.ones((1, 16), dtype=np.float32)  # M > 8 takes the sorting path: same rule
    keep = patterns.nm(s, all_kept(s.shape), 2, 16, 16)
    assert keep[0].tolist() == [False] * 14 + [True, True]
    s = np.array([[5, 1, 1, 1]], dtype=np.float32)
    keep = patterns.nm(s, all_kept(s.shape), 2, 4, 4)
    assert keep[0].tolist() == [True, False, False, True]


@pytest.mark.parametrize("n,m,cols", [(2, 4, 6), (1, 4, 7), (2, 4, 5), (4, 8, 12), (2, 8, 3)])
def test_nm_pad_remainder(n, m, cols):
    rows = 10
    s = distinct_scores((rows, cols), seed=cols)
    keep = patterns.nm(s, all_kept(s.shape), n, m, cols)
    assert_nm(keep, "Gemm", n, m, trans=1)
    counts = group_counts(keep, 1, m)
    full, tail = divmod(cols, m)
    assert np.all(counts[:, :full] == n)
    if tail:  # the short last group keeps min(N, its length): padding counts as pruned
        assert np.all(counts[:, full] == min(n, tail))
        start = full * m
        for r in range(rows):
            seg = s[r, start:]
            want = np.zeros(tail, dtype=bool)
            want[np.argsort(seg)[tail - min(n, tail):]] = True
            assert np.array_equal(keep[r, start:], want)


def test_nm_groups_along_inner_group_axis():
    """Conv-like matrix view: (O, kh*kw*C) with groups along the innermost C of each kernel position."""
    o, kpos, c = 8, 9, 8
    s = distinct_scores((o, kpos * c), seed=3)
    keep = patterns.nm(s, all_kept(s.shape), 2, 4, c)
    assert_nm(keep.reshape(o, kpos, c), "LSTM", 2, 4)  # last axis of a 3-D array
    c = 6  # C not a multiple of 4: groups must not run across kernel positions
    s = distinct_scores((o, kpos * c), seed=4)
    keep = patterns.nm(s, all_kept(s.shape), 2, 4, c)
    counts = group_counts(keep.reshape(o, kpos, c), 2, 4)
    assert np.all(counts[..., 0] == 2) and np.all(counts[..., 1] == 2)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (2, 8)])
def test_nm_gradual_prunes_only_candidates_then_exact(n, m):
    rows, cols = 16, 32
    s = distinct_scores((rows, cols), seed=7)
    final = patterns.nm(s, all_kept(s.shape), n, m, cols)
    candidates = ~final
    keep = all_kept(s.shape)
    fixed = 1 - n / m
    for frac in (0.2, 0.55, 0.9):
        sp = fixed * frac
        new = patterns.nm(s, keep, n, m, cols, sparsity=sp)
        assert not np.any(new & ~keep)  # monotone
        assert int((~new).sum()) == round(sp * s.size)  # exact intermediate count
        assert not np.any(~new & ~candidates)  # only final N:M candidates are pruned
        pruned_now = keep & ~new
        if pruned_now.any():  # the lowest-scored remaining candidates go first
            assert s[pruned_now].max() < s[candidates & new].min(initial=np.inf)
        keep = new
    end = patterns.nm(s, keep, n, m, cols, sparsity=fixed)
    assert np.array_equal(end, final)
    assert_nm(end, "Gemm", n, m, trans=1)


def test_nm_with_prior_unstructured_mask_stays_monotone():
    s = distinct_scores((8, 16), seed=9)
    keep0 = all_kept(s.shape)
    keep0[:, 0] = False
    keep0[s > 120] = False  # some of the top scores already gone
    new = patterns.nm(s, keep0, 2, 4, 16)
    assert not np.any(new & ~keep0)
    assert_nm(new, "Gemm", 2, 4, trans=1)


# ----------------------------------------------------------------------------------------- blocks

def block_grid_ok(keep: np.ndarray, r: int, c: int) -> bool:
    """Every r x c block (edge blocks smaller) is wholly kept or wholly pruned (independent loop)."""
    rows, cols = keep.shape
    for i in range(0, rows, r):
        for j in range(0, cols, c):
            b = keep[i:i + r, j:j + c]
            if b.any() and not b.all():
                return False
    return True


def block_sizes(shape, r, c):
    rows, cols = shape
    return [min(r, rows - i) * min(c, cols - j) for i in range(0, rows, r) for j in range(0, cols, c)]


@pytest.mark.parametrize("r,c", [(4, 4), (1, 4), (8, 1)])
@pytest.mark.parametrize("shape", [(32, 32), (30, 21), (9, 7)])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.8])
def test_blocks_whole_and_closest(r, c, shape, sparsity):
    s = distinct_scores(shape, seed=r * 100 + c)
    keep = patterns.blocks(s, all_kept(shape), r, c, sparsity)
    assert block_grid_ok(keep, r, c)
    target = sparsity * s.size
    pruned = int((~keep).sum())
    assert abs(pruned - target) <= max(block_sizes(shape, r, c)) / 2 + 0.5
    # the pruned blocks have the lowest mean scores
    means = {}
    for i in range(0, shape[0], r):
        for j in range(0, shape[1], c):
            means[(i, j)] = (s[i:i + r, j:j + c].mean(), bool(keep[i, j]))
    pruned_means = [mu for mu, k in means.values() if not k]
    kept_means = [mu for mu, k in means.values() if k]
    if pruned_means and kept_means:
        assert max(pruned_means) <= min(kept_means)


def test_blocks_closest_uses_edge_blocks():
    """10 x 1 column, 4x1 blocks -> sizes 4, 4, 2: 20% (2 entries) is reachable only via the edge block."""
    s = np.array([[9], [9], [9], [9], [8], [8], [8], [8], [1], [1]], dtype=np.float32)
    keep = patterns.blocks(s, all_kept(s.shape), 4, 1, 0.2)
    assert keep.reshape(-1).tolist() == [True] * 8 + [False, False]
    keep = patterns.blocks(s, all_kept(s.shape), 4, 1, 0.6)  # 6 entries: edge block + middle block
    assert keep.reshape(-1).tolist() == [True] * 4 + [False] * 6


def test_blocks_monotone_partial_block_pruned_whole():
    s = distinct_scores((8, 8), seed=11)
    keep0 = all_kept(s.shape)
    keep0[0, 0] = False  # one entry of the first 4x4 block already pruned
    keep = patterns.blocks(s, keep0, 4, 4, 0.0)
    assert not keep[:4, :4].any() and keep[4:, :].all() and keep[:4, 4:].all()


# ------------------------------------------------------------------ layouts through the matrix view

def _model(nodes, inits, inputs, outputs, opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def layout_models():
    rng = np.random.default_rng(0)
    f = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    yield "MatMul", dict(role="B"), "w", _model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], {"w": f(16, 12)}, [_vi("x", [1, 16])], [_vi("y", [1, 12])])
    yield "Gemm", dict(role="B", trans=1), "w", _model(
        [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)], {"w": f(12, 16)}, [_vi("x", [1, 16])], [_vi("y", [1, 12])])
    yield "Gemm", dict(role="B", trans=0), "w", _model(
        [helper.make_node("Gemm", ["x", "w"], ["y"])], {"w": f(16, 12)}, [_vi("x", [1, 16])], [_vi("y", [1, 12])])
    yield "Conv", dict(role="W"), "w", _model(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], {"w": f(6, 8, 3, 3)},
        [_vi("x", [1, 8, 5, 5])], [_vi("y", [1, 6, 5, 5])])
    yield "LSTM", dict(role="W"), "W", _model(
        [helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=4)], {"W": f(1, 16, 8), "R": f(1, 16, 4)},
        [_vi("x", [3, 1, 8])], [_vi("y", [3, 1, 1, 4])])


@pytest.mark.parametrize("case", list(layout_models()), ids=lambda c: f"{c[0]}-{c[1]}")
@pytest.mark.parametrize("n,m", [(2, 4), (1, 4)])
def test_nm_in_stored_layout(case, n, m):
    op, kw, name, proto = case
    model = Model(proto)
    w = find_weights(model).by_key()[name]
    stored = model.read(name)
    s = np.abs(stored)
    keep = w.unmatrix(patterns.apply(Pattern.parse(f"{n}:{m}"), w.matrix(s), w.matrix(all_kept(w.shape)), 1 - n / m,
                                     w.group_axis_len))
    assert keep.shape == stored.shape
    assert_nm(np.where(keep, stored, 0), op, n, m, **kw)
    assert np.all(group_counts(keep, group_axis(op, stored.ndim, **kw), m) == n)


def test_matrix_unmatrix_round_trip():
    for op, kw, name, proto in layout_models():
        model = Model(proto)
        w = find_weights(model).by_key()[name]
        a = model.read(name)
        assert np.array_equal(w.unmatrix(w.matrix(a)), a)
        assert w.matrix(a).shape == (w.rows, w.cols)


# --------------------------------------------------------------------------------------- properties

shapes = st.tuples(st.integers(1, 17), st.integers(1, 40))
sparsities = st.floats(0.0, 0.99, allow_nan=False)
PROP = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROP
@given(shape=shapes, s1=sparsities, s2=sparsities, seed=st.integers(0, 2**16))
def test_prop_unstructured(shape, s1, s2, seed):
    s = np.random.default_rng(seed).integers(0, 5, shape).astype(np.float32)  # many ties
    lo, hi = sorted((s1, s2))
    k1 = patterns.unstructured(s, all_kept(shape), lo)
    assert int((~k1).sum()) == round(lo * s.size)
    k2 = patterns.unstructured(s, k1, hi)
    assert not np.any(k2 & ~k1)
    assert int((~k2).sum()) == max(round(hi * s.size), int((~k1).sum()))


@PROP
@given(shape=shapes, nm=st.sampled_from([(2, 4), (1, 4), (4, 8), (2, 8), (1, 2), (5, 16)]), frac=st.floats(0, 1),
       seed=st.integers(0, 2**16))
def test_prop_nm(shape, nm, frac, seed):
    n, m = nm
    s = np.random.default_rng(seed).integers(0, 7, shape).astype(np.float32)
    fixed = 1 - n / m
    mid = patterns.nm(s, all_kept(shape), n, m, shape[1], sparsity=fixed * frac)
    end = patterns.nm(s, mid, n, m, shape[1], sparsity=fixed)
    assert not np.any(end & ~mid)
    assert_nm(end, "Gemm", n, m, trans=1)
    assert np.array_equal(end, patterns.nm(s, all_kept(shape), n, m, shape[1]))  # gradual == one-shot
    counts = group_counts(end, 1, m)
    full, tail = divmod(shape[1], m)
    assert np.all(counts[:, :full] == n) and (not tail or np.all(counts[:, full] == min(n, tail)))


@PROP
@given(shape=shapes, rc=st.sampled_from([(4, 4), (1, 4), (8, 1), (2, 3)]), sp=sparsities, seed=st.integers(0, 2**16))
def test_prop_blocks(shape, rc, sp, seed):
    r, c = rc
    s = np.random.default_rng(seed).random(shape).astype(np.float32)
    keep = patterns.blocks(s, all_kept(shape), r, c, sp)
    assert block_grid_ok(keep, r, c)
    assert abs(int((~keep).sum()) - sp * s.size) <= max(block_sizes(shape, r, c)) / 2 + 0.5
    more = patterns.blocks(s, keep, r, c, min(0.99, sp + 0.2))
    assert not np.any(more & ~keep) and block_grid_ok(more, r, c)


@PROP
@given(shape=shapes, sp=sparsities, seed=st.integers(0, 2**16), nm=st.sampled_from([(2, 4), (1, 4), (2, 8), (3, 16)]))
def test_prop_layout_independent(shape, sp, seed, nm):
    """Matrix views are often transposed views of the stored weight: results must equal those on a
    row-major copy (same tie rule: lower row-major index of the matrix view pruned first)."""
    n, m = nm
    rng = np.random.default_rng(seed)
    stored = rng.integers(0, 4, shape[::-1]).astype(np.float32)  # many ties
    keep_stored = rng.random(shape[::-1]) > 0.2
    view, kview = stored.T, keep_stored.T  # non-contiguous (rows, cols) views
    copy, kcopy = np.ascontiguousarray(view), np.ascontiguousarray(kview)
    assert np.array_equal(patterns.unstructured(view, kview, sp), patterns.unstructured(copy, kcopy, sp))
    for frac in (0.5, None):
        spn = None if frac is None else (1 - n / m) * frac
        assert np.array_equal(patterns.nm(view, kview, n, m, shape[1], spn), patterns.nm(copy, kcopy, n, m, shape[1], spn))
    assert np.array_equal(patterns.blocks(view, kview, 2, 4, sp), patterns.blocks(copy, kcopy, 2, 4, sp))


def test_ties_on_transposed_view():
    s = np.ones((4, 3), dtype=np.float32).T  # (3, 4) view, column-major in memory
    keep = patterns.unstructured(s, all_kept(s.shape), 5 / 12)
    assert np.array_equal(np.flatnonzero(~keep), [0, 1, 2, 3, 4])
    keep = patterns.nm(np.ones((8, 2), dtype=np.float32).T, all_kept((2, 8)), 2, 4, 8)
    assert keep[0].tolist() == [False, False, True, True] * 2


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize("nm,cols", [((2, 4), 16), ((1, 4), 8), ((2, 8), 16), ((3, 16), 32), ((2, 4), 6)])
def test_nm_scored_block_by_block_equals_whole_scores(monkeypatch, dtype, nm, cols):
    """`score_of` (magnitude of a weight, entry by entry) gives the masks of the scores made whole,
    with ties, NaN and -0.0, on a transposed view split into many blocks, for one-shot, gradual
    and already-masked weights (the last two score whole)."""
    monkeypatch.setattr(patterns, "_NM_CHUNK", 24)
    n, m = nm
    rng = np.random.default_rng(cols + n)
    values = (rng.integers(-3, 4, (cols, 40)) * rng.choice([1.0, 0.5], (cols, 40))).astype(dtype).T
    values[0, :4] = [np.nan, -0.0, 0.0, 1.0]

    def score_of(v):
        return np.abs(v.astype(np.float32, copy=False))

    nothing_pruned = np.broadcast_to(np.True_, values.shape)
    masked = rng.random(values.shape) > 0.2
    for keep, sparsity in ((nothing_pruned, None), (nothing_pruned, 1 - n / m), (nothing_pruned, (1 - n / m) / 2),
                           (masked, None)):
        whole = patterns.nm(score_of(values), keep, n, m, cols, sparsity)
        assert np.array_equal(patterns.nm(values, keep, n, m, cols, sparsity, score_of=score_of), whole)
        assert np.array_equal(patterns.apply(Pattern("nm", n, m), values, keep, sparsity or 1 - n / m, cols, score_of=score_of),
                              patterns.apply(Pattern("nm", n, m), score_of(values), keep, sparsity or 1 - n / m, cols))
