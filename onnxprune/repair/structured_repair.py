"""Repair after channel pruning, without training: least-squares reconstruction of each consumer.

A layer whose input lost channels (a Conv, Gemm, MatMul with constant weights, or the input side of
an LSTM/GRU/RNN) sees X_p, the pruned model's activation with the kept channels only, where the
dense model saw X_o (all channels). Its new weights (and bias, where the op has one or can take
one) are the ridge least-squares fit of the dense layer's output:

    [W', b'] = argmin ||X_p W' + b' - (X_o W_o + b_o)||^2 + lam ||W' - W_o[kept]||^2

solved from the normal equations H_pp [W'; b'] = H_po [W_o; b_o] + lam [W_o[kept]; 0], with
H_pp = [X_p 1]^T [X_p 1] and H_po = [X_p 1]^T [X_o 1] accumulated over the calibration data by
running both models side by side in onnxruntime (Conv columns are im2col patches, kernel position
major, channel minor). W_o is restricted to the layer's kept output units. lam = damp * mean(diag
H_pp), damp raised to cols / rows when the calibration gives few activation rows (e.g. after a
global pooling). The ridge pulls toward the plain sliced weights, so a weak fit changes little.
By default layers are refit stage by stage in graph order from the partly repaired model (sequential),
so errors do not compound; sequential=False uses one capture of the unrepaired pruned model.
LSTM/GRU/RNN recurrent weights R are left as sliced (their input, the hidden state, is not refit).
What a layer's refit reads and writes (weight axes, matrix form, bias, input columns, write-back) is
its op spec's (`OpSpec.refit_*`, onnxprune.ops).
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import onnx
import onnx.numpy_helper

from onnxprune.analyze.activations import (
    capture_proto,
    capture_session,
    conv_pads,
    im2col,
)
from onnxprune.analyze.constants import constant_array, constant_values, weight_reader
from onnxprune.analyze.groups import ConstDim
from onnxprune.core.graph import attrs, subgraph_outer_refs
from onnxprune.core.model import Model
from onnxprune.core.progress import progress
from onnxprune.core.quant import dequantized, dq_params
from onnxprune.core.runtime import output_array
from onnxprune.ops import OpSpec, spec_for
from onnxprune.ops.spec import Refit

DEFAULT_DAMP = 0.01
MAX_BYTES = 1_500_000_000  # Gram matrices held at once; more consumers are done in further passes


def _im2col(x: np.ndarray, kshape, strides, dil, pads, auto) -> np.ndarray:
    """Conv patches of x as (rows, k * C), kernel position major, channel minor."""
    pb, pe = conv_pads(x.shape[2:], kshape, strides, dil, pads, auto)
    return np.concatenate([c[0] for c in im2col(np.asarray(x, dtype=np.float32), kshape, strides, dil, pb, pe, 1)], axis=0)


class _Consumer:
    """One layer to refit: its spec's `Refit` (dense weights and bias in matrix form, kept output units
    only), its kept input channels and the DequantizeLinear node its weight is stored behind (None: none)."""

    def __init__(self, n: int, node, spec: OpSpec, refit: Refit, kept_in: np.ndarray, dq: int | None):
        self.n, self.node, self.spec, self.refit, self.op = n, node, spec, refit, node.op_type
        self.w_o, self.b_o, self.k = refit.matrix, refit.bias, refit.k  # (cols_o, outs), (outs,)
        self.kept_in, self.c_in, self.dq = kept_in, refit.matrix.shape[0] // refit.k, dq
        self.h_pp = self.h_po = self.s_p = self.s_o = None
        self.rows = 0

    def x(self, a: np.ndarray) -> np.ndarray:
        return self.spec.refit_columns(self.node, self.refit, np.asarray(a, dtype=np.float32), _im2col)

    def add(self, xo: np.ndarray, xp: np.ndarray) -> None:
        xo, xp = self.x(xo), self.x(xp)
        if self.h_pp is None:
            self.h_pp = np.zeros((xp.shape[1], xp.shape[1]))
            self.h_po = np.zeros((xp.shape[1], xo.shape[1]))
            self.s_p, self.s_o = np.zeros(xp.shape[1]), np.zeros(xo.shape[1])
        self.h_pp += xp.T @ xp
        self.h_po += xp.T @ xo
        self.s_p += xp.sum(axis=0, dtype=np.float64)
        self.s_o += xo.sum(axis=0, dtype=np.float64)
        self.rows += xp.shape[0]

    def nbytes(self) -> int:
        cp = len(self.kept_in) * self.k
        co = self.c_in * self.k
        return (cp * cp + cp * co) * 8

    def start(self) -> np.ndarray:
        """The dense weights at the kept input columns (the plain sliced weights)."""
        cols = (np.arange(self.k)[:, None] * self.c_in + self.kept_in[None, :]).reshape(-1)
        return self.w_o[cols]

    def solve(self, damp: float) -> tuple[np.ndarray, np.ndarray | None, dict]:
        cp = self.h_pp.shape[0]
        damp_eff = damp if self.rows >= 4 * cp else max(damp, cp / max(self.rows, 1))
        lam = damp_eff * float(np.mean(np.diag(self.h_pp))) or 1e-8
        w0 = self.start()
        if self.b_o is not None:
            a = np.zeros((cp + 1, cp + 1))
            a[:cp, :cp] = self.h_pp + lam * np.eye(cp)
            a[:cp, cp] = a[cp, :cp] = self.s_p
            a[cp, cp] = self.rows
            rhs = np.zeros((cp + 1, self.w_o.shape[1]))
            rhs[:cp] = self.h_po @ self.w_o + np.outer(self.s_p, self.b_o) + lam * w0
            rhs[cp] = self.s_o @ self.w_o + self.rows * self.b_o
            sol = np.linalg.solve(a, rhs)
            w, b = sol[:cp], sol[cp]
        else:
            w = np.linalg.solve(self.h_pp + lam * np.eye(cp), self.h_po @ self.w_o + lam * w0)
            b = None
        return w, b, {"rows": self.rows, "cols": cp, "damp": round(damp_eff, 5)}


def _pinned(g: onnx.GraphProto) -> set[str]:
    """Names read by something other than a main-graph node input: graph outputs and subgraphs'
    outer references (a constant they read must not change under them)."""

    pinned = {o.name for o in g.output}
    for node in g.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            pinned |= subgraph_outer_refs(node)
    return pinned


def _const_dtype(entry) -> np.dtype:
    kind, obj = entry
    if kind == "initializer":
        return onnx.helper.tensor_dtype_to_np_dtype(obj.data_type)
    a = obj[1].attribute[0]
    if a.name == "value":
        return onnx.helper.tensor_dtype_to_np_dtype(a.t.data_type)
    return constant_array(entry).dtype


def _set_const(proto: onnx.ModelProto, n: int, i: int, array: np.ndarray) -> None:
    """Write `array` as node n's input i. When that node is the constant's only reader, the constant
    itself takes the new value (an initializer's tensor, or a Constant node's `value`), so no copy is
    left behind; otherwise this input gets a new initializer of its own and the old constant stays
    for its other readers (a constant left with none is removed by the sweep after the prune)."""
    g = proto.graph
    node = g.node[n]
    consts = constant_values(g)
    name = node.input[i] if i < len(node.input) else ""
    entry = consts.get(name) if name else None
    dtype = np.dtype(np.float32) if entry is None else _const_dtype(entry)
    value = np.array(array, dtype=dtype, order="C")
    if entry is not None:
        readers = sum(1 for m in g.node for x in m.input if x == name)
        if readers == 1 and name not in _pinned(g):
            t = onnx.numpy_helper.from_array(value, name)
            if entry[0] == "initializer":
                entry[1].CopyFrom(t)
            else:
                cn = entry[1][1]
                del cn.attribute[:]
                cn.attribute.append(onnx.helper.make_attribute("value", t))
            return
    new = f"{node.output[0]}__repaired_in{i}"
    g.initializer.append(onnx.numpy_helper.from_array(value, new))
    while len(node.input) <= i:
        node.input.append("")
    node.input[i] = new


def _plan_consumers(model: Model, proto: onnx.ModelProto, plan) -> tuple[list[_Consumer], list[str]]:
    """The layers to refit (consumers of pruned channels) and why others are not. The plan names nodes
    by their index in the main graph, valid in both the dense and the rewritten graph since the
    rewrite slices constants and edits attributes in place; checked here, not assumed."""
    read = weight_reader(model, model.proto)
    old, new = model.proto.graph, proto.graph
    if [(n.op_type, n.name) for n in old.node] != [(n.op_type, n.name) for n in new.node]:
        raise RuntimeError("structured repair: the rewritten graph's nodes are not the dense graph's in the same "
                           "order, so the plan's node indices do not name the same nodes")
    consts_old = constant_values(old)
    out, skipped = [], []
    producer = {o: k for k, nd in enumerate(new.node) for o in nd.output}
    readers = Counter(x for nd in new.node for x in nd.input)
    pinned = _pinned(new)

    def sole(name: str) -> bool:
        """Only this layer reads constant `name`: refitting it in place unties nothing."""
        return readers[name] == 1 and name not in pinned

    def constant(m: int, i: int) -> np.ndarray | None:
        """The dense model's constant at node m's input i, where only that input reads it."""
        name = old.node[m].input[i]
        return np.asarray(read(name), dtype=np.float64) if name in consts_old and sole(new.node[m].input[i]) else None

    for n, node in enumerate(new.node):
        op = node.op_type
        spec = spec_for(op, node.domain)
        axes = spec.refit_axes(node) if spec is not None else None
        if axes is None:
            continue
        axis_in, axis_out = axes
        wname = old.node[n].input[1]
        src = (n, 1)  # (node, input) holding the stored weight
        dq = producer.get(node.input[1])
        if dq is not None and new.node[dq].op_type == "DequantizeLinear" and old.node[dq].input[0] in consts_old:
            if ConstDim(dq, 0, axis_in) not in plan.keep:
                continue
            shared = not sole(node.input[1]) or not sole(new.node[dq].input[0])
            if spec.refit_quantized or shared:
                why = "shared by several layers" if shared else spec.refit_quantized
                skipped.append(f"{node.name or op}: quantized weight ({why}); left as sliced, not refit")
                continue
            src = (dq, 0)
        d_in = ConstDim(*src, axis_in)
        if d_in not in plan.keep:
            continue
        if src[0] == n and wname not in consts_old:
            skipped.append(f"{node.name}: weight is not a constant")
            continue
        if src[0] == n and not sole(node.input[1]):
            # a refit copy for this layer would untie the weight and add its size to the model
            skipped.append(f"{node.name or op}: weight shared by several layers; left as sliced, not refit")
            continue
        w = (np.asarray(read(wname), dtype=np.float64) if src[0] == n
             else dequantized(old.node[dq], read))  # refit in real units, requantized on writing
        refit = spec.refit(node, n, w, plan.keep.get(ConstDim(*src, axis_out)), new, constant)
        if isinstance(refit, str):
            skipped.append(f"{node.name}: {refit}")
            continue
        out.append(_Consumer(n, node, spec, refit, plan.keep[d_in], dq if src[0] != n else None))
    return out, skipped


def _set_weight(proto: onnx.ModelProto, n: int, dq: int | None, array: np.ndarray) -> None:
    """Write node n's refit weight: as it is, or requantized into the stored integers of DequantizeLinear
    node dq (None: none). Where the refit values leave a channel's representable range, its scale grows (and, for an
    asymmetric zero point, the zero point moves) just enough to hold them."""
    if dq is None:
        _set_const(proto, n, 1, array)
        return
    node = proto.graph.node[dq]
    consts = constant_values(proto.graph)
    read = lambda name: constant_array(consts[name])  # noqa: E731
    stored = read(node.input[0])
    info = np.iinfo(stored.dtype)
    scale, zp = dq_params(node, read, array.ndim)
    n = scale.size
    per = np.moveaxis(array, attrs(node).get("axis", 1) % array.ndim, 0).reshape(n, -1) if n > 1 else array.reshape(1, -1)
    lo, hi = np.minimum(per.min(axis=1), 0.0), np.maximum(per.max(axis=1), 0.0)
    s0, z0 = scale.reshape(-1), np.broadcast_to(zp, scale.shape).reshape(-1)
    outside = (lo < (info.min - z0) * s0) | (hi > (info.max - z0) * s0)
    if outside.any():
        if not zp.any() and info.min < 0:  # symmetric: the scale alone grows
            s1, z1 = np.where(outside, np.maximum(s0, np.maximum(hi / info.max, lo / info.min)), s0), z0
        else:
            s1 = np.where(outside, np.maximum(s0, (hi - lo) / (info.max - info.min)), s0)
            z1 = np.where(outside, np.clip(np.round(info.min - lo / s1), info.min, info.max), z0)
            zshape = read(node.input[2]).shape if len(node.input) > 2 and node.input[2] else read(node.input[1]).shape
            _set_const(proto, dq, 2, z1.reshape(zshape).astype(stored.dtype))
        _set_const(proto, dq, 1, s1.reshape(read(node.input[1]).shape).astype(read(node.input[1]).dtype))
        scale, zp = s1.reshape(scale.shape), z1.reshape(scale.shape)
    q = np.clip(np.round(array / scale + zp), info.min, info.max)
    _set_const(proto, dq, 0, q.astype(stored.dtype))


def _write(proto: onnx.ModelProto, c: _Consumer, w: np.ndarray, b: np.ndarray | None) -> None:
    g = proto.graph
    consts = constant_values(g)

    def current(m: int, i: int) -> np.ndarray:
        return constant_array(consts[g.node[m].input[i]]).astype(np.float64)

    for m, i, array in c.spec.refit_write(c.node, c.n, c.refit, w, b, current):
        if (m, i) == (c.n, 1):
            _set_weight(proto, c.n, c.dq, array)
        else:
            _set_const(proto, m, i, array)


def _output_error(model: Model, proto: onnx.ModelProto, ds, batch_size: int) -> float:
    """Relative L2 error of all float outputs of `proto` against the dense model over `ds`."""

    cand = Model(proto, model.path)
    cand.base_dir = model.base_dir
    ref = onnx.ModelProto()
    ref.CopyFrom(model.proto)
    s_o, s_p = capture_session(ref, model, None), capture_session(proto, cand, None)
    num = den = 0.0
    names = [o.name for o in s_o.get_outputs()]
    for feed in ds.batches(batch_size):
        for name, a, b in zip(names, s_o.run(None, feed), s_p.run(None, feed)):
            # sequence and map outputs (skl2onnx's ZipMap probabilities) as arrays, as the gate reads them
            a, b = output_array(a, name, "original"), output_array(b, name, "repaired")
            if a.dtype.kind == "f" and a.shape == b.shape:
                a, b = a.astype(np.float64), b.astype(np.float64)
                num += float(((a - b) ** 2).sum())
                den += float((a ** 2).sum())
    return float(np.sqrt(num / den)) if den else 0.0


def _stages(proto: onnx.ModelProto, consumers: list[_Consumer]) -> list[list[_Consumer]]:
    """Consumers grouped so that no consumer depends (through the graph) on one of its own stage or later."""
    g = proto.graph
    at = {c.n: c for c in consumers}
    depth: dict[str, int] = {}  # tensor -> stage index its value depends on (-1: no consumer upstream)
    stage_of: dict[int, int] = {}
    for n, node in enumerate(g.node):
        d = max([depth.get(x, -1) for x in node.input if x] + [-1])
        if n in at:
            stage_of[n] = d + 1
            d = d + 1
        for o in node.output:
            if o:
                depth[o] = d
    stages: dict[int, list[_Consumer]] = {}
    for c in consumers:
        stages.setdefault(stage_of[c.n], []).append(c)
    return [stages[k] for k in sorted(stages)]


def lstsq_repair(model: Model, proto: onnx.ModelProto, plan, data, *, samples: int | None = 32, batch_size: int = 8,
                 damp: float = DEFAULT_DAMP, max_bytes: int = MAX_BYTES, sequential: bool = True,
                 guard: bool = True) -> dict:
    """Refit every consumer whose input lost channels (see module doc); writes into `proto`.

    sequential: layers are refit stage by stage in graph order, each from activations of the model
    with the layers before it already refit (one pass over the data per stage); else one capture.
    guard: keep the repair only if it lowers the relative L2 error of the model outputs (against the
    dense model) on held-out calibration samples (a quarter of them, when there are 8 or more; the
    fit uses the rest); otherwise the plain sliced weights stay."""

    start = time.perf_counter()
    consumers, skipped = _plan_consumers(model, proto, plan)
    report = {"method": "lstsq", "sequential": sequential, "layers": {}, "skipped": skipped, "samples": 0}
    if not consumers or data is None:
        return report
    ds = data.subset(min(samples, len(data))) if samples else data
    check = ds
    if guard and len(ds) >= 8:  # judge on samples the fit has not seen (few samples overfit easily)
        ds, check = ds.split(0.75, seed=0)
    report["samples"] = len(ds)
    report["guard_samples"] = len(check) if guard else 0
    feeds = {s.name for s in ds.specs}
    saved = onnx.ModelProto()
    saved.CopyFrom(proto)
    pruned = Model(proto, model.path)
    pruned.base_dir = model.base_dir
    chunks = []
    for stage in (_stages(proto, consumers) if sequential else [consumers]):
        cur, size = [], 0
        for c in stage:
            if cur and size + c.nbytes() > max_bytes:
                chunks.append(cur)
                cur, size = [], 0
            cur.append(c)
            size += c.nbytes()
        if cur:
            chunks.append(cur)
    report["passes"] = len(chunks)
    for chunk in progress(chunks, "channel repair", unit="stage",
                          name=lambda chunk: ", ".join(c.node.name or c.op for c in chunk)):
        names = sorted({c.node.input[0] for c in chunk} - feeds)
        pruned.replace_proto(proto)
        s_o = capture_session(capture_proto(model, names), model, None) if names else None
        s_p = capture_session(capture_proto(pruned, names), pruned, None) if names else None
        for feed in ds.batches(batch_size):
            oo = dict(zip(names, s_o.run(names, feed))) if s_o else {}
            pp = dict(zip(names, s_p.run(names, feed))) if s_p else {}
            for k in feeds:
                oo[k] = pp[k] = feed[k]
            for c in chunk:
                c.add(oo[c.node.input[0]], pp[c.node.input[0]])
        for c in chunk:
            w, b, info = c.solve(damp)
            _write(proto, c, w, b)
            info["bias"] = b is not None
            report["layers"][c.node.name or f"{c.op}#{c.n}"] = info
            c.h_pp = c.h_po = None
    if guard:
        err_before = _output_error(model, saved, check, batch_size)
        err_after = _output_error(model, proto, check, batch_size)
        report["guard_rel_l2_before"], report["guard_rel_l2_after"] = round(err_before, 5), round(err_after, 5)
        report["accepted"] = err_after <= err_before
        if not report["accepted"]:
            proto.CopyFrom(saved)
            report["note_guard"] = ("repair rejected: it raised the output error on held-out calibration samples "
                                    f"({err_before:.4g} -> {err_after:.4g}); the plain sliced weights are kept")
    report["seconds"] = round(time.perf_counter() - start, 3)
    notes = [n for n in dict.fromkeys(c.spec.refit_note for c in consumers) if n]
    if notes:
        report["note"] = "; ".join(notes)
    return report
