"""Activation statistics of every prunable weight's op, from onnxruntime on calibration data.

For each prunable weight the input activation X of its op is exposed as an extra output of an
onnxruntime session (a copy of the model cut down to what those tensors need) and reduced batch
by batch into statistics; activations are never stored. X is the matrix (samples x reduction)
whose columns are in the SAME order as `Weight.matrix`'s columns, so the op's output for matrix
row i is X @ W[i]:
- MatMul B (K, N): X = A flattened to (-1, K); constant A: X = B^T. Weights with leading batch
  dims (h, K, N) have one X per leading index (row groups, see below).
- Gemm: X = A (A^T with transA) for the B weight; B^T (B with transB) for an A weight.
- Conv: im2col patches of the input (strides, pads or auto_pad, dilations honoured), columns
  ordered (kernel position major, input channel minor); with group > 1 each group of output rows
  gets the patches of its own input channels (one set of statistics per group).
- ConvTranspose: norms only, approximated by each input channel's energy (every kernel tap meets
  every input element once, borders aside); no Gram matrix.
- LSTM/GRU/RNN W: the input sequence flattened to (-1, I), shared by all directions.
- LSTM/GRU/RNN R: the hidden state each step multiplies, rebuilt exactly from the op's Y output and
  initial_h (forward: h0, Y[0..T-2]; reverse: h0, Y[1..T-1]); one set per direction. Approximate
  with sequence_lens (padded steps count) and for GRU's hidden-gate rows when linear_before_reset
  is 0 (they see r*h, not h).

Statistics per weight (`LayerStats`, float64): count, per-column sum (mean), per-column sum of
squares (Wanda's ||X_j||^2) and the Gram matrix H = X^T X (cols x cols) when cols <= max_cols and
the total stays under max_bytes; otherwise norms only, with the reason. Rows of the matrix view
split into `groups` contiguous equal blocks, each with its own statistics (grouped Conv, LSTM R
per direction, batched MatMul); groups == 1 is the common case. Weights whose op sits inside an
If/Loop/Scan subgraph cannot be captured (onnxruntime cannot expose subgraph tensors) and are
listed with the reason. Weights that share one activation share one statistics object.

Pipelines keep these statistics in a `CalibrationState` (onnxprune.pipeline.calibration).
"""

from __future__ import annotations

import time
import tracemalloc
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import onnx
import onnx.helper

from onnxprune.analyze.weights import Weight
from onnxprune.core.errors import Opt, OptionError
from onnxprune.core.graph import node_subgraphs, subgraph_outer_refs, unique_path
from onnxprune.core.model import Model
from onnxprune.core.progress import progress
from onnxprune.core.runtime import session
from onnxprune.ops import spec_for

DEFAULT_MAX_COLS = 8192  # above this many reduction columns only norms are kept (H would be cols^2 float64)
DEFAULT_MAX_BYTES = 2 * 2**30  # all Gram matrices of one capture together
DEFAULT_BATCH = 8
CHUNK_BYTES = 64 * 2**20  # im2col / activation chunks are cut to about this size


# ------------------------------------------------------------------------------------ statistics

@dataclass
class LayerStats:
    """Accumulated statistics of one op input (float64). Arrays are (groups, cols[, cols])."""

    cols: int
    groups: int
    count: int = 0  # activation rows accumulated (per group)
    sum: np.ndarray | None = None
    sumsq: np.ndarray | None = None
    gram: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def norms(self) -> np.ndarray:
        """||X_j||_2 per group and column (Wanda)."""
        return np.sqrt(self.sumsq)

    @property
    def mean(self) -> np.ndarray:
        return self.sum / max(self.count, 1)

    def per_row(self, array: np.ndarray, rows: int) -> np.ndarray:
        """Expand a per-group array (groups, ...) to one entry per matrix row (rows, ...)."""
        if self.groups == 1:
            return np.broadcast_to(array[0], (rows,) + array.shape[1:])
        return np.repeat(array, rows // self.groups, axis=0)

    def row_slices(self, rows: int) -> list[slice]:
        step = rows // self.groups
        return [slice(g * step, (g + 1) * step) for g in range(self.groups)]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.sum, self.sumsq, self.gram) if a is not None)


@dataclass(frozen=True)
class ActSpec:
    """How to turn fetched tensors into X (groups, n, cols) for one op input."""

    kind: str  # matmul | conv | convT | rnn_w | rnn_r
    tensors: tuple[str, ...]
    cols: int
    groups: int
    params: tuple = ()
    note: str = ""


class _Acc:
    def __init__(self, spec: ActSpec, gram: bool):
        self.spec = spec
        g, c = spec.groups, spec.cols
        inner = c if spec.kind != "convT" else spec.params[1]  # convT: per input channel, tiled at the end
        self.n = 0
        self.s = np.zeros((g, inner))
        self.sq = np.zeros((g, inner))
        self.h = np.zeros((g, c, c)) if gram else None

    def add(self, x: np.ndarray) -> None:  # (groups, n, cols) float32
        self.n += x.shape[1]
        self.s += x.sum(axis=1, dtype=np.float64)
        self.sq += np.einsum("gnc,gnc->gc", x, x, dtype=np.float64) if x.shape[1] else 0.0
        if self.h is not None:
            if x.shape[0] == 1:
                self.h[0] += x[0].T @ x[0]  # symmetric rank-k update in float32, summed in float64
            else:
                self.h += np.matmul(x.transpose(0, 2, 1), x)

    def result(self) -> LayerStats:
        s, sq = self.s, self.sq
        notes = [self.spec.note] if self.spec.note else []
        if self.spec.kind == "convT":
            k = self.spec.cols // self.spec.params[1]
            s, sq = np.tile(s, (1, k)), np.tile(sq, (1, k))
        return LayerStats(self.spec.cols, self.spec.groups, self.n, s, sq, self.h, notes)


# ------------------------------------------------------------------------------ activation specs

def activation_spec(model: Model, weight: Weight) -> ActSpec | str:
    """The activation spec of the weight's (first) use, or the reason it cannot be captured."""
    use = weight.uses[0]
    if use.graph:
        return (f"its {use.op} node {use.node!r} is inside subgraph {use.graph!r} (If/Loop/Scan): onnxruntime "
                "cannot expose tensors of a subgraph")
    node = use.resolve(model.proto.graph)
    if node is None:
        return f"{use.op} node {use.node!r} not found in the main graph"
    found = spec_for(node.op_type, node.domain).capture(node, use.role, weight.op_shape, use.ref.index)
    if found is None:
        return f"op {use.op} has no activation capture"
    return ActSpec(found.kind, found.tensors, weight.cols, found.groups, found.params, found.note)


# ----------------------------------------------------------------------------- X from activations

def _chunks(n: int, row_bytes: int) -> Iterable[tuple[int, int]]:
    step = max(1, CHUNK_BYTES // max(row_bytes, 1))
    for lo in range(0, n, step):
        yield lo, min(n, lo + step)


def _matmul_x(spec: ActSpec, a: np.ndarray) -> Iterable[np.ndarray]:
    swap, lead = spec.params
    a = np.asarray(a)
    if a.ndim == 1:
        a = a[None, :] if not swap else a[:, None]
    if swap:
        a = np.swapaxes(a, -1, -2)
    if not lead:
        x = a.reshape(-1, spec.cols)
        for lo, hi in _chunks(len(x), x.shape[1] * 4):
            yield x[None, lo:hi].astype(np.float32, copy=False)
        return
    full = np.broadcast_shapes(a.shape[:-2], lead)
    a = np.broadcast_to(a, full + a.shape[-2:])
    g = spec.groups
    a = a.reshape((-1, g) + a.shape[-2:])  # (batch, groups, M, K)
    x = np.moveaxis(a, 1, 0).reshape(g, -1, spec.cols)
    for lo, hi in _chunks(x.shape[1], g * x.shape[2] * 4):
        yield x[:, lo:hi].astype(np.float32, copy=False)


def conv_pads(spatial: Sequence[int], k, strides, dil, pads, auto: str) -> tuple[list[int], list[int]]:
    nd = len(k)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for i in range(nd):
            out = -(-spatial[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + (k[i] - 1) * dil[i] + 1 - spatial[i])
            small = total // 2
            begin.append(small if auto == "SAME_UPPER" else total - small)
            end.append(total - begin[-1])
        return begin, end
    if auto == "VALID":
        return [0] * nd, [0] * nd
    return list(pads[:nd]), list(pads[nd:])


def im2col(x: np.ndarray, k, strides, dil, pads_begin, pads_end, groups: int = 1) -> Iterable[np.ndarray]:
    """Patches of x (N, C, *S) as (groups, rows, prod(k) * C/groups) chunks, columns ordered (kernel
    position major, channel minor), rows ordered (sample, output position)."""
    nd = len(k)
    n, c = x.shape[:2]
    xp = np.pad(x, [(0, 0), (0, 0)] + list(zip(pads_begin, pads_end)))
    span = [(k[i] - 1) * dil[i] + 1 for i in range(nd)]
    win = np.lib.stride_tricks.sliding_window_view(xp, span, axis=tuple(range(2, 2 + nd)))
    sl = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides) + tuple(slice(None, None, d) for d in dil)
    win = win[sl]  # (N, C, *out, *k)
    out = win.shape[2:2 + nd]
    kk = int(np.prod(k, dtype=np.int64))
    cg = c // groups
    # -> (N, *out, *k, C): rows (sample, position), columns (kernel position, channel)
    perm = (0,) + tuple(range(2, 2 + nd)) + tuple(range(2 + nd, 2 + 2 * nd)) + (1,)
    win = win.transpose(perm)
    per_out0 = int(np.prod(out[1:], dtype=np.int64)) if nd > 1 else 1
    row_bytes = kk * c * 4 * max(per_out0, 1)
    for i in range(n):
        for lo, hi in _chunks(out[0] if nd else 1, row_bytes):
            part = np.ascontiguousarray(win[i, lo:hi], dtype=np.float32)  # (o0, *out[1:], *k, C)
            rows = part.size // (kk * c)
            part = part.reshape(rows, kk, groups, cg).transpose(2, 0, 1, 3).reshape(groups, rows, kk * cg)
            yield part


def _conv_x(spec: ActSpec, x: np.ndarray) -> Iterable[np.ndarray]:
    k, strides, dil, pads, auto, group, _ = spec.params
    x = np.asarray(x)
    pb, pe = conv_pads(x.shape[2:], k, strides, dil, pads, auto)
    yield from im2col(x, k, strides, dil, pb, pe, group)


def _rnn_r_x(spec: ActSpec, y: np.ndarray, h0: np.ndarray | None) -> Iterable[np.ndarray]:
    layout, direction, d = spec.params
    y = np.asarray(y)
    if layout:  # (batch, seq, D, H) -> (seq, D, batch, H)
        y = y.transpose(1, 2, 0, 3)
        h0 = None if h0 is None else np.asarray(h0).transpose(1, 0, 2)
    seq, _, batch, hid = y.shape
    if h0 is None:
        h0 = np.zeros((d, batch, hid), dtype=y.dtype)
    xs = []
    for i in range(d):
        reverse = direction == "reverse" or (direction == "bidirectional" and i == 1)
        steps = y[1:, i] if reverse else y[:-1, i]
        xs.append(np.concatenate([h0[i][None], steps], axis=0).reshape(-1, hid))
    yield np.stack(xs).astype(np.float32, copy=False)


def activation_chunks(spec: ActSpec, arrays: dict[str, np.ndarray]) -> Iterable[np.ndarray]:
    """X chunks (groups, rows, cols) float32 for one batch of fetched tensors."""
    if spec.kind == "matmul":
        yield from _matmul_x(spec, arrays[spec.tensors[0]])
    elif spec.kind == "conv":
        yield from _conv_x(spec, arrays[spec.tensors[0]])
    elif spec.kind == "convT":
        x = np.asarray(arrays[spec.tensors[0]])
        c = x.shape[1]
        x = np.moveaxis(x, 1, -1).reshape(-1, c)
        for lo, hi in _chunks(len(x), c * 4):
            yield x[None, lo:hi].astype(np.float32, copy=False)
    elif spec.kind == "rnn_w":
        x = np.asarray(arrays[spec.tensors[0]]).reshape(-1, spec.cols)
        for lo, hi in _chunks(len(x), spec.cols * 4):
            yield x[None, lo:hi].astype(np.float32, copy=False)
    elif spec.kind == "rnn_r":
        h0 = arrays.get(spec.tensors[1]) if spec.tensors[1] else None
        yield from _rnn_r_x(spec, arrays[spec.tensors[0]], h0)
    else:
        raise ValueError(spec.kind)


# --------------------------------------------------------------------------------- capture model



def _node_inputs(node: onnx.NodeProto) -> list[str]:
    return [i for i in node.input if i] + sorted(subgraph_outer_refs(node))


def capture_proto(model: Model, fetch: Sequence[str], renames: dict[int, tuple[int, str]] | None = None) -> onnx.ModelProto:
    """A copy of the model whose outputs are `fetch`, cut down to the nodes they need.

    `renames`: node position -> (output index, name) for op outputs that are unnamed (e.g. LSTM Y)."""
    src = model.proto
    proto = onnx.ModelProto()
    proto.CopyFrom(src)
    g = proto.graph
    for pos, node in enumerate(g.node):
        if renames and pos in renames:
            idx, name = renames[pos]
            while len(node.output) <= idx:
                node.output.append("")
            node.output[idx] = name
    producer = {o: i for i, n in enumerate(g.node) for o in n.output if o}
    need, stack, keep = set(), list(fetch), set()
    while stack:
        t = stack.pop()
        if t in need:
            continue
        need.add(t)
        i = producer.get(t)
        if i is not None and i not in keep:
            keep.add(i)
            stack.extend(_node_inputs(g.node[i]))
    nodes = [n for i, n in enumerate(g.node) if i in keep]
    used = set()
    for n in nodes:
        used |= set(_node_inputs(n))
    inits = [t for t in g.initializer if t.name in used]
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(inits)
    del g.output[:]
    for name in fetch:
        vi = g.output.add()
        vi.name = name
    del g.value_info[:]  # stale shapes of renamed or cut tensors must not bind the session
    return proto


def capture_session(proto: onnx.ModelProto, model: Model, threads: int | None):
    """A session on a capture model of `model` (its external data resolves against the model's folder)."""
    return session(proto.SerializeToString(), label=f"{model.path or 'model'} (capture model)",
                   base_dir=model.base_dir, threads=threads, log_level=3)


# ------------------------------------------------------------------------------------- capturing

@dataclass
class Capture:
    """The statistics of one capture run and what it cost."""

    stats: dict[str, LayerStats]  # weight key -> statistics (shared objects for a shared activation)
    skipped: dict[str, str]  # weight key -> why no statistics
    samples: int = 0
    batches: int = 0
    seconds: float = 0.0
    stats_bytes: int = 0
    peak_bytes: int = 0  # peak of numpy/Python allocations during the capture (tracemalloc)
    activations: int = 0  # distinct op inputs captured

    def describe(self) -> dict:
        return {"weights": len(self.stats), "activations": self.activations, "samples": self.samples,
                "batches": self.batches, "seconds": round(self.seconds, 3), "stats_bytes": self.stats_bytes,
                "peak_bytes": self.peak_bytes, "skipped": dict(self.skipped),
                "norms_only": sorted({k for k, s in self.stats.items() if s.gram is None})}


def plan(model: Model, weights: Sequence[Weight], *, gram: bool = True, max_cols: int = DEFAULT_MAX_COLS,
         max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[dict[str, ActSpec], dict[ActSpec, bool], dict[str, str]]:
    """(weight -> spec, spec -> keep its Gram matrix, weight -> why it is skipped) for one capture."""
    specs: dict[str, ActSpec] = {}
    skipped: dict[str, str] = {}
    final: dict[ActSpec, ActSpec] = {}  # spec as found -> spec with the memory decision in its note
    grams: dict[ActSpec, bool] = {}
    budget = max_bytes
    for w in weights:
        spec = activation_spec(model, w)
        if isinstance(spec, str):
            skipped[w.key] = spec
            continue
        if spec.cols != w.cols or w.rows % spec.groups:
            skipped[w.key] = (f"activation of {spec.cols} columns x {spec.groups} groups does not fit "
                              f"the matrix {w.rows}x{w.cols}")
            continue
        if spec not in final:
            want = gram and spec.kind != "convT"
            size = spec.groups * spec.cols * spec.cols * 8
            why = ""
            if want and spec.cols > max_cols:
                want, why = False, f"{spec.cols} reduction columns > max {max_cols}: norms only, no Gram matrix"
            elif want and size > budget:
                want, why = False, f"Gram matrices over the memory budget ({max_bytes} bytes): norms only"
            budget -= size if want else 0
            done = ActSpec(spec.kind, spec.tensors, spec.cols, spec.groups, spec.params,
                           "; ".join(filter(None, [spec.note, why])))
            final[spec] = done
            grams[done] = want
        specs[w.key] = final[spec]
    return specs, grams, skipped


def capture(model: Model, data, weights: Sequence[Weight], *, gram: bool = True, samples: int | None = None,
            batch_size: int = DEFAULT_BATCH, max_cols: int = DEFAULT_MAX_COLS, max_bytes: int = DEFAULT_MAX_BYTES,
            threads: int | None = None, trace_memory: bool = True) -> Capture:
    """Run the calibration data through onnxruntime once and accumulate statistics for `weights`."""
    if data is None:
        raise OptionError("calibration needs data: give calibration inputs (", Opt("data.calibration", "FILE"),
                          ", with ", Opt("prune.calib_samples", "N"), ")")
    start = time.perf_counter()
    tracing = trace_memory and not tracemalloc.is_tracing()
    if tracing:
        tracemalloc.start()
    try:
        specs, grams, skipped = plan(model, weights, gram=gram, max_cols=max_cols, max_bytes=max_bytes)
        accs = {spec: _Acc(spec, keep) for spec, keep in grams.items()}
        if samples:
            data = data.subset(min(samples, len(data)))
        n_samples = n_batches = 0
        if accs:
            fetch, renames = _fetch_list(model, list(accs))
            feeds = {s.name for s in data.specs}
            consts = {name: model.read(model.key_for(name)) for name in fetch if model.key_for(name) is not None}
            run_names = [f for f in fetch if f not in feeds and f not in consts]
            sess = capture_session(capture_proto(model, run_names, renames), model, threads) if run_names else None
            batches = -(-len(data) // max(batch_size, 1))
            for batch in progress(data.iter_batches(batch_size), f"capture ({len(accs)} inputs)", total=batches,
                                  unit="batch", name=lambda b: f"{b.size} samples"):
                outs = dict(zip(run_names, sess.run(run_names, batch.feed))) if sess else {}
                outs.update({k: v for k, v in batch.feed.items() if k in fetch})
                outs.update(consts)
                for spec, acc in accs.items():
                    for x in activation_chunks(spec, outs):
                        acc.add(x)
                del outs
                n_samples += batch.size
                n_batches += 1
        results = {spec: acc.result() for spec, acc in accs.items()}
        stats = {key: results[spec] for key, spec in specs.items()}
        peak = tracemalloc.get_traced_memory()[1] if tracemalloc.is_tracing() else 0
    finally:
        if tracing:
            tracemalloc.stop()
    return Capture(stats, skipped, n_samples, n_batches, time.perf_counter() - start,
                   sum(s.nbytes for s in results.values()), peak, len(results))


def _fetch_list(model: Model, specs: Sequence[ActSpec]) -> tuple[list[str], dict[int, tuple[int, str]]]:
    fetch, renames = [], {}
    for spec in specs:
        for i, t in enumerate(spec.tensors):
            if not t:
                continue
            if t.startswith("__onnxprune_Y::"):
                renames[int(t.partition("::")[2])] = (0, t)
            if t not in fetch:
                fetch.append(t)
    return fetch, renames


# ------------------------------------------------------------------------------ weight dependency

def upstream_weights(model: Model, weights: Sequence[Weight]) -> dict[str, frozenset[str]]:
    """For each weight, the weights whose op output flows (in the main graph) into its op's input.

    A weight used inside a subgraph counts as used by the main-graph node that holds the subgraph."""
    g = model.proto.graph
    index = {w.key: i for i, w in enumerate(weights)}
    owner = _subgraph_owners(g)
    at_node: dict[int, int] = {}  # node position -> bitmask of weights it applies
    first: dict[str, int | None] = {}
    for w in weights:
        for j, u in enumerate(w.uses):
            if u.graph:
                pos = [owner[u.graph.split("/")[0]]] if u.graph.split("/")[0] in owner else []
            else:
                pos = [u.ref.index] if u.resolve(g) is not None else []
            if j == 0:
                first[w.key] = pos[0] if pos else None
            for p in pos:
                at_node[p] = at_node.get(p, 0) | (1 << index[w.key])
    anc: dict[str, int] = {}
    before: dict[int, int] = {}  # node position -> weights upstream of its inputs
    for i, node in enumerate(g.node):
        mask = 0
        for t in _node_inputs(node):
            mask |= anc.get(t, 0)
        before[i] = mask
        out = mask | at_node.get(i, 0)
        for o in node.output:
            if o:
                anc[o] = out
    result = {}
    for w in weights:
        pos = first.get(w.key)
        mask = before.get(pos, 0) if pos is not None else 0
        result[w.key] = frozenset(weights[b].key for b in range(len(weights)) if mask >> b & 1 and b != index[w.key])
    return result


def _subgraph_owners(g: onnx.GraphProto) -> dict[str, int]:
    """Top-level subgraph path name (as Model/analysis name it) -> position of the owning node."""
    owners, seen = {}, {""}
    for i, node in enumerate(g.node):
        for name, _ in node_subgraphs(node):
            owners[unique_path(name, seen)] = i
    return owners
