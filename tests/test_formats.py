"""Exact packed formats: bit-exact round trips, layouts checked by hand, and size accounting."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from bitpatterns import bits as _bits
from bitpatterns import random_bits as _random
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from onnxprune.core.errors import TargetError
from onnxprune.pack import formats as F
from onnxprune.pack.formats import bitmask, bsr, coo, nm
from onnxprune.pack.sizes import binary_entropy, information_bound_bits, size_table

DTYPES = [np.float32, np.float16, np.int8]
FAST = settings(max_examples=100, deadline=None)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(_bits(a), _bits(b))


@st.composite
def matrices(draw, max_rows=40, max_cols=70):
    rows, cols = draw(st.integers(1, max_rows)), draw(st.integers(1, max_cols))
    dtype = draw(st.sampled_from(DTYPES))
    density = draw(st.sampled_from([0.0, 0.05, 0.25, 0.5, 0.9, 1.0]))
    return _random(np.random.default_rng(draw(st.integers(0, 2**32 - 1))), (rows, cols), dtype, density)


@st.composite
def nm_matrices(draw):
    n, m = draw(st.sampled_from([(2, 4), (1, 4), (1, 2), (4, 8), (3, 8), (2, 16)]))
    rows, groups = draw(st.integers(1, 40)), draw(st.integers(1, max(1, 70 // m)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dense = _random(rng, (rows, groups, m), draw(st.sampled_from(DTYPES)), 1.0)
    bits = _bits(dense)
    bits[bits == 0] = 1
    keep = rng.integers(0, n + 1, size=(rows, groups, 1))
    rank = np.argsort(rng.random((rows, groups, m)), axis=-1).argsort(axis=-1)
    bits[rank >= keep] = 0
    return dense.reshape(rows, groups * m), n, m


UNSTRUCTURED = [
    ("bitmask", {}), ("coo", {}), ("bsr", {"r": 1, "c": 4}), ("bsr", {"r": 4, "c": 4}), ("bsr", {"r": 3, "c": 5}),
]


@FAST
@given(matrices(), st.sampled_from(UNSTRUCTURED))
def test_unstructured_formats_round_trip_bit_exact(w, spec):
    name, params = spec
    packed = F.encode(name, w, **params)
    assert packed.format == name and packed.shape == w.shape and packed.dtype == w.dtype
    assert packed.nbytes == sum(a.nbytes for a in packed.arrays.values())
    assert _same(F.decode(packed), w)


@FAST
@given(nm_matrices(), st.booleans())
def test_nm_round_trip_bit_exact(case, compact):
    w, n, m = case
    packed = nm.encode(w, n=n, m=m, compact=compact)
    assert packed.arrays["values"].shape == (w.shape[0], w.shape[1] * n // m)
    assert _same(F.decode(packed), w)


@pytest.mark.parametrize("dtype", DTYPES)
def test_edge_matrices_round_trip(dtype):
    one = np.ones((), dtype=dtype)
    value = -np.zeros((), dtype=dtype) if np.dtype(dtype).kind == "f" else one
    cases = [np.zeros((5, 8), dtype), np.full((3, 8), one), np.full((1, 8), value), np.full((7, 1), one)]
    for w in cases:
        for name, params in UNSTRUCTURED:
            assert _same(F.decode(F.encode(name, w, **params)), w)
    half = np.tile(np.array([value, 0, 0, one], dtype=dtype), (2, 2))
    for w in (cases[0], half):
        for compact in (False, True):
            assert _same(F.decode(F.encode("nm", w, compact=compact)), w)


def test_nan_payloads_and_negative_zero_kept():
    w = np.array([[0x7FA00001, 0x80000000, 0, 0xFFC12345]], dtype=np.uint32).view(np.float32)
    for name, params in UNSTRUCTURED + [("nm", {"n": 3, "m": 4})]:
        packed = F.encode(name, w, **params)
        assert _same(F.decode(packed), w)
    assert bitmask.encode(w).arrays["values"].size == 3


def _hand_positions(row_bits: np.ndarray, n: int, m: int) -> list[list[int]]:
    out = []
    for g in range(len(row_bits) // m):
        nz = [p for p in range(m) if row_bits[g * m + p] != 0]
        pad = [p for p in range(m) if row_bits[g * m + p] == 0][: n - len(nz)]
        out.append(sorted(nz + pad))
    return out


@FAST
@given(nm_matrices())
def test_nm_2bit_metadata_decoded_by_hand(case):
    w, _, _ = case
    w = w[:, : w.shape[1] // 4 * 4]
    if w.shape[1] == 0:
        return
    bits = _bits(w)
    if ((bits.reshape(w.shape[0], -1, 4) != 0).sum(-1) > 2).any():
        with pytest.raises(TargetError):
            nm.encode(w, n=2, m=4)
        return
    packed = nm.encode(w, n=2, m=4)
    meta, values = packed.arrays["metadata"], _bits(packed.arrays["values"])
    assert meta.dtype == np.uint8 and meta.shape == (w.shape[0], math.ceil(w.shape[1] / 8))
    for r in range(w.shape[0]):
        idx = [(int(byte) >> (2 * k)) & 3 for byte in meta[r] for k in range(4)][: w.shape[1] // 2]
        groups = [idx[i : i + 2] for i in range(0, len(idx), 2)]
        assert groups == _hand_positions(bits[r], 2, 4)
        for g, pos in enumerate(groups):
            assert list(values[r, 2 * g : 2 * g + 2]) == [bits[r, 4 * g + p] for p in pos]


def test_nm_padding_takes_lowest_unused_positions():
    w = np.array([[0, 0, 0, 5, 0, 0, 0, 0]], dtype=np.int8)
    meta = nm.encode(w).arrays["metadata"][0]
    assert [(int(meta[0]) >> (2 * k)) & 3 for k in range(4)] == [0, 3, 0, 1]


def test_nm_compact_packs_three_24_groups_a_byte():
    w = np.zeros((1, 12), np.float32)
    w[0, [2, 3, 4, 6, 8, 9]] = 1
    meta = nm.encode(w, compact=True).arrays["metadata"]
    # colex ranks: {2,3} -> C(2,1)+C(3,2) = 5, {0,2} -> 0+1 = 1, {0,1} -> 0; base 6 little-endian.
    assert meta.tolist() == [5 + 6 * 1 + 36 * 0]


def test_nm_rejections():
    dense_group = np.array([[1, -0.0, 2, 0]], dtype=np.float32)
    with pytest.raises(TargetError, match="row 0, group 0 has 3"):
        nm.encode(dense_group, name="fc.weight")
    with pytest.raises(TargetError, match="multiple of M=4"):
        nm.encode(np.zeros((2, 6), np.float32))
    with pytest.raises(TargetError, match="power of two"):
        nm.encode(np.zeros((2, 6), np.float32), n=2, m=3)
    zeros = np.zeros((2, 6), np.float32)
    assert _same(nm.decode(nm.encode(zeros, n=1, m=3, compact=True)), zeros)
    with pytest.raises(TargetError):
        nm.encode(np.zeros((2, 4), np.float32), n=4, m=4)
    with pytest.raises(TargetError, match="2-D"):
        nm.encode(np.zeros(8, np.float32))


@FAST
@given(matrices(), st.integers(1, 5), st.integers(1, 5))
def test_bsr_keeps_exactly_the_nonzero_blocks(w, r, c):
    packed = bsr.encode(w, r=r, c=c)
    bits = _bits(w)
    rows, cols = w.shape
    expected = {
        (i, j)
        for i in range(math.ceil(rows / r))
        for j in range(math.ceil(cols / c))
        if (bits[i * r : (i + 1) * r, j * c : (j + 1) * c] != 0).any()
    }
    indptr, indices = packed.arrays["indptr"], packed.arrays["indices"]
    assert indptr.dtype == indices.dtype == np.int32 and len(indptr) == math.ceil(rows / r) + 1
    kept = [(i, int(j)) for i in range(len(indptr) - 1) for j in indices[indptr[i] : indptr[i + 1]]]
    assert kept == sorted(expected)
    assert packed.arrays["blocks"].shape == (len(kept), r, c) and packed.arrays["blocks"].dtype == w.dtype


@FAST
@given(matrices())
def test_bitmask_and_coo_layouts(w):
    bits = _bits(w).ravel()
    b = bitmask.encode(w)
    assert np.array_equal(np.unpackbits(b.arrays["mask"], bitorder="little")[: bits.size], (bits != 0).astype(np.uint8))
    assert np.array_equal(_bits(b.arrays["values"]), bits[bits != 0])
    c = coo.encode(w)
    assert c.arrays["indices"].dtype == np.int64 and np.all(np.diff(c.arrays["indices"]) > 0)
    assert np.array_equal(_bits(c.arrays["values"]), bits[c.arrays["indices"]])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=5), st.sampled_from(DTYPES), st.integers(0, 2**32 - 1))
def test_sparse_tensor_proto_round_trip(shape, dtype, seed):
    a = _random(np.random.default_rng(seed), tuple(shape), dtype, 0.4)
    sp = coo.to_sparse_tensor_proto("w", a)
    onnx.checker.check_sparse_tensor(sp)
    assert list(sp.dims) == list(a.shape) and sp.indices.data_type == onnx.TensorProto.INT64
    assert _same(coo.from_sparse_tensor_proto(sp), a)


def test_sparse_tensor_proto_coordinate_indices_and_onnxruntime():
    a = np.array([[0, 1.5, 0], [-0.0, 0, 2]], dtype=np.float32)
    values = onnx.numpy_helper.from_array(np.array([1.5, -0.0, 2], np.float32), "w")
    coords = onnx.numpy_helper.from_array(np.array([[0, 1], [1, 0], [1, 2]], np.int64), "w_idx")
    assert _same(coo.from_sparse_tensor_proto(helper.make_sparse_tensor(values, coords, [2, 3])), a)
    with pytest.raises(TargetError, match="rank"):
        coo.to_sparse_tensor_proto("s", np.float32(1))
    sp = coo.to_sparse_tensor_proto("w", a)
    out = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [], [out], sparse_initializer=[sp])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    (y,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})
    assert _same(y, a)


def test_registry_and_errors():
    assert set(F.FORMATS) == {"nm", "bsr", "bitmask", "coo"}
    assert all(mod.NAME == key for key, mod in F.FORMATS.items())
    with pytest.raises(TargetError, match="unknown packed format"):
        F.encode("csr", np.zeros((2, 2), np.float32))
    with pytest.raises(TargetError, match="2-D"):
        F.encode("bitmask", np.zeros((2, 2, 2), np.float32))


def _pruned_24(rng, dtype, shape=(256, 256)):
    w = _random(rng, shape, dtype, 1.0)
    bits = _bits(w)
    bits[bits == 0] = 1
    g = bits.reshape(shape[0], -1, 4)
    np.put_along_axis(g, np.argsort(rng.random(g.shape), axis=-1)[..., :2], 0, axis=-1)
    return w


def test_information_bound():
    w = np.zeros((10, 10), np.float32)
    assert information_bound_bits(w) == 0
    w.ravel()[::2] = 1
    assert information_bound_bits(w) == pytest.approx(100 * (16 + 1))
    assert information_bound_bits(w, ("nm", 2, 4)) == pytest.approx(100 * (16 + math.log2(6) / 4))
    assert binary_entropy(0.25) == pytest.approx(0.811278, abs=1e-6)
    with pytest.raises(TargetError):
        information_bound_bits(w, "blocks")


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_compact_24_within_5_percent_of_bound(dtype):
    w = _pruned_24(np.random.default_rng(0), dtype)
    table = size_table(w, [("nm", {"n": 2, "m": 4, "compact": True}), ("nm", {"n": 2, "m": 4})])
    rows = {r["format"]: r for r in table}
    assert rows["nm n=2 m=4 compact=True"]["ratio"] <= 1.05
    assert rows["nm n=2 m=4"]["ratio"] <= 1.05
    assert rows["nm n=2 m=4 compact=True"]["bound_bytes"] == pytest.approx(information_bound_bits(w, ("nm", 2, 4)) / 8)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_bitmask_at_half_density_within_5_percent(dtype):
    w = _random(np.random.default_rng(1), (256, 256), dtype, 0.5)
    rows = {r["format"]: r for r in size_table(w)}
    assert set(rows) >= {"dense", "zlib9", "bitmask", "coo", "bsr r=1 c=4", "bsr r=4 c=4"}
    assert rows["bitmask"]["ratio"] <= 1.05
    assert rows["dense"]["bytes"] == w.nbytes
