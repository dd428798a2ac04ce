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
from onnxprune.analyze.groups import (
    constant_array,
    constant_values,
    weight_reader,
)
from onnxprune.core.graph import attrs, subgraph_outer_refs
from onnxprune.core.model import Model
from onnxprune.core.quant import dequantized, dq_params
from onnxprune.core.runtime import output_array

DEFAULT_DAMP = 0.01
MAX_BYTES = 1_500_000_000  # Gram matrices held at once; more consumers are done in further passes


def _conv_cols(x: np.ndarray, at: dict, kshape) -> np.ndarray:

    nd = len(kshape)
    strides = tuple(at.get("strides", [1] * nd))
    dil = tuple(at.get("dilations", [1] * nd))
    pads = tuple(at.get("pads", [0] * 2 * nd))
    auto = at.get("auto_pad", "NOTSET")
    pb, pe = conv_pads(x.shape[2:], kshape, strides, dil, pads, auto)
    return np.concatenate([c[0] for c in im2col(np.asarray(x, dtype=np.float32), kshape, strides, dil, pb, pe, 1)], axis=0)


class _Consumer:
    """One layer to refit: how to build X from its input, its dense weights and bias in matrix form."""

    def __init__(self, n: int, node_new, node_old, op: str, w_o: np.ndarray, b_o: np.ndarray | None,
                 kept_in: np.ndarray, c_in: int, bias_ref, meta: dict):
        self.n, self.node_new, self.node_old, self.op = n, node_new, node_old, op
        self.w_o, self.b_o = w_o, b_o  # (cols_o, outs), (outs,) with kept output units only
        self.kept_in, self.c_in = kept_in, c_in
        self.bias_ref = bias_ref  # how to write the bias back (None: the layer has no bias)
        self.meta = meta
        self.h_pp = self.h_po = self.s_p = self.s_o = None
        self.rows = 0

    def x(self, a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, dtype=np.float32)
        if self.op == "Conv":
            return _conv_cols(a, self.meta["attrs"], self.meta["kshape"])
        if self.op == "Gemm":
            return a.T if self.meta["transA"] else a
        return a.reshape(-1, a.shape[-1])

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
        cp = len(self.kept_in) * self.meta.get("k", 1)
        co = self.c_in * self.meta.get("k", 1)
        return (cp * cp + cp * co) * 8

    def start(self) -> np.ndarray:
        """The dense weights at the kept input columns (the plain sliced weights)."""
        k = self.meta.get("k", 1)
        cols = (np.arange(k)[:, None] * self.c_in + self.kept_in[None, :]).reshape(-1)
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

    read = weight_reader(model, model.proto)
    old, new = model.proto.graph, proto.graph
    consts_old = constant_values(old)
    out, skipped = [], []
    producer = {o: k for k, nd in enumerate(new.node) for o in nd.output}
    readers = Counter(x for nd in new.node for x in nd.input)
    pinned = _pinned(new)

    def sole(name: str) -> bool:
        """Only this layer reads constant `name`: refitting it in place unties nothing."""
        return readers[name] == 1 and name not in pinned
    for n, node in enumerate(new.node):
        op = node.op_type
        at = attrs(node)
        if op == "Conv":
            axis_in, axis_out = 1, 0
            if at.get("group", 1) != 1:
                continue
        elif op == "Gemm":
            axis_in, axis_out = (1, 0) if at.get("transB", 0) else (0, 1)
        elif op == "MatMul":
            axis_in, axis_out = 0, 1
        elif op in ("LSTM", "GRU", "RNN"):
            axis_in, axis_out = 2, 1
        else:
            continue
        node_old = old.node[n]
        wname = node_old.input[1]
        src = (n, 1)  # (node, input) holding the stored weight
        dq = producer.get(node.input[1])
        if dq is not None and new.node[dq].op_type == "DequantizeLinear" and old.node[dq].input[0] in consts_old:
            if ("c", dq, 0, axis_in) not in plan.keep:
                continue
            shared = not sole(node.input[1]) or not sole(new.node[dq].input[0])
            if op not in ("Conv", "Gemm", "MatMul") or shared:
                why = "shared by several layers" if shared else "recurrent"
                skipped.append(f"{node.name or op}: quantized weight ({why}); left as sliced, not refit")
                continue
            src = (dq, 0)
        d_in = ("c", *src, axis_in)
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
        if op == "MatMul" and w.ndim != 2:
            skipped.append(f"{node.name}: batched MatMul weight")
            continue
        kept_out = plan.keep.get(("c", *src, axis_out))
        kept_in = plan.keep[d_in]
        meta: dict = {"attrs": at, "dq": dq if src[0] != n else None}
        bias_ref = None
        b = None
        if op == "Conv":
            if kept_out is not None:
                w = w[kept_out]
            meta["kshape"] = tuple(w.shape[2:])
            meta["wshape"] = (w.shape[0], len(kept_in))  # (kept outputs, kept inputs) of the rewritten weight
            meta["k"] = int(np.prod(w.shape[2:]))
            c_in = w.shape[1]
            wm = w.transpose(*range(2, w.ndim), 1, 0).reshape(-1, w.shape[0])  # (k*C, O)
            if len(node_old.input) > 2 and node_old.input[2]:
                if node_old.input[2] in consts_old and sole(node.input[2]):
                    b = np.asarray(read(node_old.input[2]), dtype=np.float64)
                    b = b[kept_out] if kept_out is not None else b
                    bias_ref = ("input", 2)
                # else a computed (e.g. quantized) or shared bias: it stays, and the fit keeps it fixed
            else:
                b = np.zeros(wm.shape[1])
                bias_ref = ("input", 2)
        elif op == "Gemm":
            wm = w.T if at.get("transB", 0) else w  # (K, N)
            if kept_out is not None:
                wm = wm[:, kept_out]
            alpha, beta = float(at.get("alpha", 1.0)), float(at.get("beta", 1.0))
            wm = wm * alpha
            meta["alpha"], meta["beta"], meta["transA"] = alpha, beta, at.get("transA", 0)
            c_in = wm.shape[0]
            cname = node_old.input[2] if len(node_old.input) > 2 else ""
            if cname and cname in consts_old and sole(node.input[2]):
                c = np.asarray(read(cname), dtype=np.float64)
                if c.size == w.shape[0 if at.get("transB", 0) else 1] and beta != 0:
                    c = c.reshape(-1)
                    b = (c[kept_out] if kept_out is not None else c) * beta
                    bias_ref = ("input", 2)
            elif not cname:
                b = np.zeros(wm.shape[1])
                bias_ref = ("input", 2)
        elif op == "MatMul":
            wm = w[:, kept_out] if kept_out is not None else w
            c_in = wm.shape[0]
            users = [(m, j) for m, nd in enumerate(new.node) for j, x in enumerate(nd.input) if x == node.output[0]]
            if len(users) == 1 and new.node[users[0][0]].op_type == "Add":
                m, j = users[0]
                other = old.node[m].input[1 - j]
                if other in consts_old and sole(new.node[m].input[1 - j]):
                    c = np.asarray(read(other), dtype=np.float64)
                    if c.size == w.shape[1] and c.shape[-1] == w.shape[1]:
                        b = c.reshape(-1)[kept_out] if kept_out is not None else c.reshape(-1)
                        bias_ref = ("add", m, 1 - j, c.shape[:-1])
        else:  # LSTM / GRU / RNN input weights W (D, G*H, I); bias: the W half of B
            if kept_out is not None:
                w = w[:, kept_out]
            d, gh, i = w.shape
            wm = w.transpose(2, 0, 1).reshape(i, d * gh)
            c_in = i
            meta["rnn_shape"] = (d, gh)
            if len(node_old.input) > 3 and node_old.input[3] and sole(node.input[3]):
                bb = np.asarray(read(node_old.input[3]), dtype=np.float64)
                full_gh = bb.shape[1] // 2
                wb = bb[:, :full_gh]
                wb = wb[:, kept_out] if kept_out is not None else wb
                b = wb.reshape(-1)
                bias_ref = ("rnn", 3)
        out.append(_Consumer(n, node, node_old, op, wm, b, kept_in, c_in, bias_ref, meta))
    return out, skipped


def _set_weight(proto: onnx.ModelProto, c: "_Consumer", array: np.ndarray) -> None:
    """Write a refit weight: as it is, or requantized into the DequantizeLinear's stored integers.
    Where the refit values leave a channel's representable range, its scale grows (and, for an
    asymmetric zero point, the zero point moves) just enough to hold them."""
    dq = c.meta.get("dq")
    if dq is None:
        _set_const(proto, c.n, 1, array)
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
    node = g.node[c.n]
    consts = constant_values(g)
    if c.op == "Conv":
        shape = c.meta["wshape"]
        k = c.meta["kshape"]
        arr = w.reshape(*k, shape[1], shape[0]).transpose(len(k) + 1, len(k), *range(len(k)))
        _set_weight(proto, c, arr)
        if b is not None and c.bias_ref is not None:
            _set_const(proto, c.n, 2, b)
    elif c.op == "Gemm":
        at = c.meta["attrs"]
        wm = w / c.meta["alpha"]
        _set_weight(proto, c, wm.T if at.get("transB", 0) else wm)
        if b is not None and c.bias_ref is not None:
            _set_const(proto, c.n, 2, b / (c.meta["beta"] or 1.0))
    elif c.op == "MatMul":
        _set_weight(proto, c, w)
        if b is not None and c.bias_ref is not None and c.bias_ref[0] == "add":
            _, m, j, lead = c.bias_ref
            _set_const(proto, m, j, b.reshape(*lead, -1))
    else:
        d, gh = c.meta["rnn_shape"]
        _set_const(proto, c.n, 1, w.reshape(w.shape[0], d, gh).transpose(1, 2, 0))
        if b is not None and c.bias_ref is not None:
            bb = constant_array(consts[node.input[3]]).astype(np.float64)
            bb[:, :gh] = b.reshape(d, gh)
            _set_const(proto, c.n, 3, bb)


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
    for chunk in chunks:
        names = sorted({c.node_new.input[0] for c in chunk} - feeds)
        pruned.replace_proto(proto)
        s_o = capture_session(capture_proto(model, names), model, None) if names else None
        s_p = capture_session(capture_proto(pruned, names), pruned, None) if names else None
        for feed in ds.batches(batch_size):
            oo = dict(zip(names, s_o.run(names, feed))) if s_o else {}
            pp = dict(zip(names, s_p.run(names, feed))) if s_p else {}
            for k in feeds:
                oo[k] = pp[k] = feed[k]
            for c in chunk:
                c.add(oo[c.node_new.input[0]], pp[c.node_new.input[0]])
        for c in chunk:
            w, b, info = c.solve(damp)
            _write(proto, c, w, b)
            info["bias"] = b is not None
            report["layers"][c.node_new.name or f"{c.op}#{c.n}"] = info
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
    if any(c.op in ("LSTM", "GRU", "RNN") for c in consumers):
        report["note"] = "LSTM/GRU/RNN: input weights W refit; recurrent weights R kept as sliced"
    return report
