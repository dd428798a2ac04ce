"""Structured (channel) pruning: remove filters, neurons and hidden units, giving a smaller dense model.

Unstructured and N:M zeros only pay off on sparse hardware or after compression; removing whole
channels makes every runtime faster, CPU included. The steps:

1. groups: `onnxprune.analyze.groups.analyze_groups` (coupled channels, frozen ones with reasons);
2. importance per channel: the sum over the group's weight slices of their L2 norms (criterion
   "l2"), or, from calibration activations, sum over the consumers of ||W[:, c]|| * ||X_c||
   (criterion "activation": the size of the channel's contribution to the next layers);
3. allocation: scope "layer" removes the ratio from every segment (a producer's output channels,
   or one input of a Concat); "global" ranks all prunable channels by importance normalised per
   group. Kept counts are rounded to a multiple of `round_to` (default 8; see CPU_ROUND_TO),
   never below it, and a segment of `round_to` channels or fewer is left whole: no layer is ever emptied;
4. rewrite (`rewrite`): every constant of the group is sliced (each use of a shared constant on
   its own; cloned when uses differ), Conv group counts (depthwise), LSTM/GRU hidden_size, Split
   sizes, Slice starts/ends and the constant elements of Reshape/Expand/ConstantOfShape/Resize
   shape vectors are updated, stale value_info is dropped, onnx shape inference and the checker
   run, then the result runs once in onnxruntime and every tensor's shape is compared with the
   prediction (a group whose run-time shape computation does not follow is frozen and the rewrite
   redone). The graph's inputs and outputs keep their shapes.
5. optional repair (least squares from calibration data, `onnxprune.repair.structured_repair`) or
   `reinit`: the pruned architecture with fresh He-initialised weights for training from scratch.

`ChannelPrunePass` runs it all as a structural pass; `prune_channels` is the one-call API.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
import onnx.checker
import onnx.helper
import onnx.numpy_helper
import onnx.shape_inference
import onnxruntime as ort

from onnxprune.analyze.activations import capture_proto, capture_session
from onnxprune.analyze.cleanup import (
    check_no_unused,
    check_params_not_increased,
    remove_unused,
)
from onnxprune.analyze.constants import (
    constant_array,
    constant_shape,
    constant_values,
    model_params,
    weight_reader,
)
from onnxprune.analyze.groups import (
    ChannelGroup,
    ConstDim,
    Dim,
    ElementSource,
    GroupAnalysis,
    ValueDim,
    analyze_groups,
    model_macs,
    sample_feed,
)
from onnxprune.analyze.value_shapes import runtime_shapes
from onnxprune.core.errors import DataError, OnnxPruneError, Opt, OptionError
from onnxprune.core.graph import attrs, subgraph_outer_refs
from onnxprune.core.model import Model, check_structure
from onnxprune.core.progress import progress
from onnxprune.core.quant import dequantized
from onnxprune.core.report import table
from onnxprune.core.runtime import failing_node
from onnxprune.ops import spec_for
from onnxprune.pipeline import ANALYSIS_FRESH, NO_UNUSED, Context, Pass, PassResult

CRITERIA = ("l2", "activation")
SCOPES = ("layer", "global")
IMPORTANCE_ROLES = ("out", "in", "hidden", "norm")


class RewriteError(OnnxPruneError):
    """A planned rewrite cannot be carried out; `dims` names the tensor axes involved."""

    def __init__(self, message: str, dims: list[Dim] | None = None):
        super().__init__(message)
        self.dims = dims or []


# ------------------------------------------------------------------------------------ importance

def member_values(m, proto: onnx.ModelProto, read) -> np.ndarray:
    """A constant member's values in real units (float64): a weight stored quantized behind
    DequantizeLinear is dequantized, (q - zero_point) * scale, per axis where the scale is."""
    node = proto.graph.node[m.dim.node]
    if node.op_type == "DequantizeLinear" and m.dim.input == 0:
        return dequantized(node, read)
    return np.asarray(read(m.tensor), dtype=np.float64)


def l2_importance(group: ChannelGroup, read, proto: onnx.ModelProto) -> np.ndarray:
    """Per channel: the sum over the group's weight slices (layer weights, norm scales) of their L2
    norms, in real units (quantized weights dequantized)."""
    members = [m for m in group.members if m.kind == "const" and m.role in IMPORTANCE_ROLES]
    if not members:
        members = [m for m in group.members if m.kind == "const"]
    imp = np.zeros(group.channels)
    for m in members:
        a = member_values(m, proto, read)
        sq = (np.moveaxis(a, m.axis, 0).reshape(m.size, -1) ** 2).sum(axis=1)
        imp += np.sqrt(np.bincount(m.channel_of, weights=sq, minlength=group.channels))
    return imp


def _consumer_inputs(proto: onnx.ModelProto, group: ChannelGroup) -> list[tuple[str, int, object]]:
    """(activation name, channel axis, const member) for each consumer weight in the group."""
    out = []
    for m in group.members:
        if m.kind != "const" or m.role != "in":
            continue
        node = proto.graph.node[m.dim.node]
        spec = spec_for(node.op_type, node.domain)
        axis = spec.input_channel_axis(node) if spec is not None and m.dim.input == 1 else None
        if axis is not None:
            out.append((node.input[0], axis, m))
    return out


def activation_importance(model: Model, analysis: GroupAnalysis, data, samples: int = 32,
                          batch_size: int = 8) -> dict[int, np.ndarray]:
    """Per group and channel: sum over consumers of sqrt(sum_p ||W[:, p]||^2 E[x_p^2]) over the
    channel's positions p (the expected size of its contribution to each consumer's output)."""

    proto = model.proto
    read = weight_reader(model, proto)
    wanted: dict[int, list] = {g.id: _consumer_inputs(proto, g) for g in analysis.groups if g.prunable}
    names = sorted({x for lst in wanted.values() for x, _, _ in lst})
    feeds = set()
    sumsq: dict[tuple[str, int], np.ndarray] = {}
    count: dict[tuple[str, int], int] = {}
    if names and data is not None:
        ds = data.subset(min(samples, len(data))) if samples else data
        feeds = {s.name for s in ds.specs}
        run = [x for x in names if x not in feeds]
        sess = capture_session(capture_proto(model, run), model, None) if run else None
        batches = -(-len(ds) // batch_size)
        for feed in progress(ds.batches(batch_size), "channel importance", total=batches, unit="batch"):
            outs = dict(zip(run, sess.run(run, feed))) if sess else {}
            outs.update({k: v for k, v in feed.items() if k in names})
            for lst in wanted.values():
                for x, axis, _ in lst:
                    a = np.asarray(outs[x], dtype=np.float64)
                    ax = axis % a.ndim
                    key = (x, ax)
                    s = (np.moveaxis(a, ax, 0).reshape(a.shape[ax], -1) ** 2)
                    sumsq[key] = sumsq.get(key, 0) + s.sum(axis=1)
                    count[key] = count.get(key, 0) + s.shape[1]
    result = {}
    for g in analysis.groups:
        if not g.prunable:
            continue
        imp = np.zeros(g.channels)
        got = False
        for x, axis, m in wanted.get(g.id, []):
            w = member_values(m, proto, read)
            wsq = (np.moveaxis(w, m.axis, 0).reshape(m.size, -1) ** 2).sum(axis=1)
            key = next(((x, a) for (xx, a) in sumsq if xx == x), None)
            if key is None or len(sumsq[key]) != m.size:
                continue
            ex2 = sumsq[key] / max(count[key], 1)
            imp += np.sqrt(np.bincount(m.channel_of, weights=wsq * ex2, minlength=g.channels))
            got = True
        result[g.id] = imp if got else l2_importance(g, read, proto)
    return result


# ------------------------------------------------------------------------------------ allocation

DEFAULT_ROUND_TO = 8  # what tensor cores, AVX2 and NEON kernels want
# onnxruntime's CPU convolutions (MLAS NCHWc) work on blocks of 16 channels with AVX-512 (8 with
# AVX2); a layer whose channel counts are not block multiples drops to a slower path with layout
# reorders around it. Measured on ddddocr common_det, 25% removed, on an AVX-512 machine: with
# multiples of 8 the latency ratio was 0.70 for a MACs ratio of 0.58; with 16, 0.63 for 0.62 (and
# faster in absolute terms). The cpu-channels recipe and bench_structured use this.
CPU_ROUND_TO = 16


def round_keep(n: int, target: float, round_to: int) -> int:
    """Kept channels: `target` rounded to a multiple of round_to, at least round_to, at most n."""
    r = max(int(round_to), 1)
    low = max(r, 2) if n >= 2 else n
    if n <= low:
        return n
    k = int(np.floor(target / r + 0.5)) * r
    return int(min(max(k, low), n))


def channel_round(group: ChannelGroup, round_to: int) -> int:
    """The multiple of channels that keeps the layers' output widths a multiple of `round_to`: where a
    channel is a contiguous block of w output units (a whole attention head: head_dim units), a multiple
    of round_to / gcd(round_to, w) channels; else round_to channels."""
    r = max(int(round_to), 1)
    w = 1
    for m in group.members:
        if m.role == "out" and m.size:
            runs = 1 + int(np.count_nonzero(np.diff(m.channel_of)))
            if runs == len(np.unique(m.channel_of)):  # every channel one contiguous block
                w = max(w, int(np.bincount(m.channel_of).max()))
    return r // math.gcd(r, w)


def allocate(analysis: GroupAnalysis, importance: dict[int, np.ndarray], sparsity: float,
             round_to: int = DEFAULT_ROUND_TO,
             scope: str = "layer", skip_groups: set[int] | None = None,
             group_sparsity: dict[int, float] | None = None) -> dict[int, np.ndarray]:
    """Channels to remove per group id (sorted ids). `group_sparsity`: group id -> its own ratio (scope
    "layer"; non-uniform allocation), instead of `sparsity`; a ratio of 0 leaves a group whole."""
    if not 0 <= sparsity < 1:
        raise OptionError(f"sparsity {sparsity}: give a fraction of channels to remove in [0, 1)")
    if scope not in SCOPES:
        raise OptionError(f"scope {scope!r}: use one of {', '.join(SCOPES)}")
    skip_groups = skip_groups or set()
    segs = []  # (group, segment channel ids, importance)
    for g in analysis.groups:
        if not g.prunable or g.id in skip_groups:
            continue
        imp = importance[g.id]
        for seg in g.segments:
            if g.frozen[seg].any():
                continue
            segs.append((g, seg, imp[seg]))
    removed: dict[int, list] = {}
    if scope == "global":
        normed = []
        for g, seg, imp in segs:
            mean = float(np.mean(importance[g.id][~g.frozen])) or 1.0
            normed.append(imp / mean)
        pooled = np.concatenate(normed) if normed else np.zeros(0)
        k = int(round(sparsity * len(pooled)))
        thr = np.sort(pooled)[k - 1] if k > 0 else -np.inf
        for (g, seg, imp), nimp in zip(segs, normed):
            target = float(np.count_nonzero(nimp > thr))
            keep = round_keep(len(seg), target, channel_round(g, round_to))
            order = np.argsort(-imp, kind="stable")
            removed.setdefault(g.id, []).extend(seg[order[keep:]].tolist())
    else:
        ratios = group_sparsity or {}
        for g, seg, imp in segs:
            ratio = ratios.get(g.id, sparsity)
            if ratio == 0:  # nothing to remove: not even what rounding to round_to would trim
                continue
            keep = round_keep(len(seg), len(seg) * (1 - ratio), channel_round(g, round_to))
            order = np.argsort(-imp, kind="stable")
            removed.setdefault(g.id, []).extend(seg[order[keep:]].tolist())
    return {gid: np.array(sorted(ch), dtype=np.int64) for gid, ch in removed.items() if ch}


def keep_positions(analysis: GroupAnalysis, removed: dict[int, np.ndarray]) -> dict[Dim, np.ndarray]:
    """Kept positions of every tensor axis that loses positions."""
    keep = {}
    for g in analysis.groups:
        rem = removed.get(g.id)
        if rem is None or not len(rem):
            continue
        for m in g.members:
            mask = ~np.isin(m.channel_of, rem)
            if not mask.all():
                keep[m.dim] = np.flatnonzero(mask)
    return keep


# --------------------------------------------------------------------------------------- rewrite

@dataclass
class RewritePlan:
    analysis: GroupAnalysis
    removed: dict[int, np.ndarray]
    keep: dict[Dim, np.ndarray]
    renamed: dict[tuple[int, int], str] = field(default_factory=dict)  # (node, input) -> new constant name

    def kept(self, d: Dim) -> int:
        return len(self.keep[d]) if d in self.keep else self.analysis.sizes[d]


def _tensor(array: np.ndarray, name: str, like: onnx.TensorProto | None = None) -> onnx.TensorProto:
    t = onnx.numpy_helper.from_array(np.ascontiguousarray(array), name)
    if like is not None and like.data_type != t.data_type:
        t = onnx.helper.make_tensor(name, like.data_type, array.shape, np.ascontiguousarray(array).tobytes(), raw=True)
    return t


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(onnx.helper.make_attribute(name, value))


def _del_attr(node: onnx.NodeProto, name: str) -> None:
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            return


def rewrite(model: Model, plan: RewritePlan) -> onnx.ModelProto:
    """A new ModelProto with the plan applied (the model itself is not changed)."""
    src = model.proto
    proto = onnx.ModelProto()
    proto.CopyFrom(src)
    g = proto.graph
    read = weight_reader(model, src)
    consts = constant_values(g)
    an = plan.analysis
    slicing: dict[tuple[int, int], list[tuple[int, np.ndarray]]] = {}
    for d, kept in plan.keep.items():
        if d.kind == "c":
            slicing.setdefault((d.node, d.input), []).append((d.axis, kept))
    writes: dict[tuple[int, int], dict[int, int]] = {}

    def write_elem(elem: ElementSource, value: int, dims):
        if elem.kind != "const":
            raise RewriteError(f"shape element {elem.why} cannot be rewritten", dims)
        if elem.value == value:
            return
        w = writes.setdefault((elem.node, elem.input), {})
        if w.get(elem.flat, value) != value:
            raise RewriteError(f"constant {elem.const!r} element {elem.flat} would need two values ({w[elem.flat]} and {value})", dims)
        w[elem.flat] = value

    for fx in an.fixups:
        node = g.node[fx.node]
        if not any(d in plan.keep for d in fx.dims if d is not None):
            continue
        if fx.kind == "conv_group":
            _set_attr(node, "group", plan.kept(fx.dims[0]))
        elif fx.kind == "rnn_hidden":
            _set_attr(node, "hidden_size", plan.kept(fx.dims[0]))
        elif fx.kind == "split":
            sizes = [plan.kept(d) if d is not None else s for d, s in zip(fx.dims, fx.data["sizes"])]
            _del_attr(node, "num_outputs")
            opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
            if opset >= 13:
                name = f"{node.output[0]}__split_sizes"
                g.initializer.append(_tensor(np.array(sizes, dtype=np.int64), name))
                while len(node.input) < 2:
                    node.input.append("")
                node.input[1] = name
            else:
                _set_attr(node, "split", sizes)
        elif fx.kind == "slice":
            d = fx.dims[0]
            kept = plan.keep[d]
            dt = fx.data
            new_start = int(np.searchsorted(kept, dt["start"]))
            new_end = int(np.searchsorted(kept, dt["end"]))
            size = an.sizes[d]
            orig_start, orig_end = dt["orig_start"], dt["orig_end"]
            start_ok = orig_start == 0 or (orig_start < 0 and orig_start <= -size) or new_start == orig_start
            end_ok = orig_end >= size or new_end == orig_end
            if dt["src"] == "attr":
                at = attrs(node)
                if not start_ok:
                    starts = list(at["starts"]); starts[dt["k"]] = new_start; _set_attr(node, "starts", starts)
                if not end_ok:
                    ends = list(at["ends"]); ends[dt["k"]] = new_end; _set_attr(node, "ends", ends)
            else:
                if not start_ok:
                    write_elem(dt["start_src"], new_start, [d])
                if not end_ok:
                    write_elem(dt["end_src"], new_end, [d])
        elif fx.kind == "mean_scale":
            kept_total = int(np.prod([plan.kept(d) for d in fx.dims]))
            for m, j, op, c in fx.data["readers"]:
                name = g.node[m].input[j]
                value = 1.0 / kept_total if op == "Mul" else float(kept_total)
                w = writes.setdefault((m, j), {})
                if 0 in w and not np.isclose(w[0], value):
                    raise RewriteError(f"constant {name!r} would need two values", fx.dims)
                w[0] = value
        elif fx.kind == "shape_vector":
            d = fx.dims[0]
            elem = fx.data["src"]
            if elem.kind == "dynamic":
                continue
            if elem.kind == "const" and (elem.value in (-1, 0) and node.op_type == "Reshape"
                                         or elem.value == 1 and node.op_type == "Expand"):
                continue
            write_elem(elem, plan.kept(d), [d])
    # constants: one new array per modified use
    uses: dict[str, list[tuple[int, int]]] = {}
    for n, node in enumerate(g.node):
        for i, name in enumerate(node.input):
            if name in consts:
                uses.setdefault(name, []).append((n, i))
    outer = {o.name for o in g.output}
    for n, node in enumerate(g.node):
        for a in node.attribute:
            if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                outer |= subgraph_outer_refs(node)
    modified = set(slicing) | set(writes)
    by_name: dict[str, dict[tuple[int, int], np.ndarray]] = {}
    for (n, i) in modified:
        name = g.node[n].input[i]
        arr = np.asarray(read(name))
        for axis, kept in sorted(slicing.get((n, i), []), key=lambda t: t[0]):
            arr = np.take(arr, kept, axis=axis)
        if (n, i) in writes:
            arr = np.array(arr)
            flat = arr.reshape(-1)
            for k, v in writes[(n, i)].items():
                flat[k] = v
        by_name.setdefault(name, {})[(n, i)] = arr
    init_index = {t.name: k for k, t in enumerate(g.initializer)}
    removed_consts = []
    for name, per_use in by_name.items():
        all_uses = uses.get(name, [])
        arrays = list(per_use.values())
        same = all(a.shape == arrays[0].shape and np.array_equal(a, arrays[0]) for a in arrays[1:])
        kind, obj = consts[name]
        like = obj if kind == "initializer" else None
        if same and len(per_use) == len(all_uses) and name not in outer:
            new = _tensor(arrays[0], name, like)
            if kind == "initializer":
                g.initializer[init_index[name]].CopyFrom(new)
            else:
                cn = g.node[obj[0]]
                del cn.attribute[:]
                cn.attribute.append(onnx.helper.make_attribute("value", new))
            continue
        for k, ((n, i), arr) in enumerate(per_use.items()):
            new_name = f"{name}__pruned{k}" if len(per_use) > 1 else f"{name}__pruned"
            while new_name in consts or new_name in init_index:
                new_name += "_"
            g.initializer.append(_tensor(arr, new_name, like))
            g.node[n].input[i] = new_name
            plan.renamed[(n, i)] = new_name
        if len(per_use) == len(all_uses) and name not in outer:
            removed_consts.append(name)
    for name in removed_consts:
        kind, obj = consts[name]
        if kind == "initializer":
            for k, t in enumerate(g.initializer):
                if t.name == name:
                    del g.initializer[k]
                    break
    # Constant nodes left without readers stay until prune_channels' final sweep (remove_unused):
    # node indices must match the original model's until the repair has run.
    for vi in g.input:  # initializers also listed as inputs (old IR): keep their declared shapes right
        if vi.name in init_index or any(t.name == vi.name for t in g.initializer):
            t = next((t for t in g.initializer if t.name == vi.name), None)
            if t is not None and vi.type.tensor_type.HasField("shape"):
                vi.type.tensor_type.shape.Clear()
                for dim in t.dims:
                    vi.type.tensor_type.shape.dim.add().dim_value = dim
    # A shared constant whose uses keep different channels is copied per use: that unties it, and
    # where the copies hold more elements than the removed channels save, the prune would make the
    # model bigger. Then the groups that sliced those copies are frozen instead (retry).
    if plan.renamed:
        before, after = model_params(src), _read_params(proto)
        if after > before:
            shared = sorted({src.graph.node[n].input[i] for n, i in plan.renamed})
            raise RewriteError(f"shared constant(s) {', '.join(map(repr, shared[:3]))} would be copied per layer "
                               f"(the layers keep different channels), raising the parameters from {before} to {after}",
                               [ConstDim(n, i, a) for n, i in plan.renamed for a in range(8)])
    del g.value_info[:]
    try:
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception:  # inference is an aid, not a requirement: the onnxruntime run below decides
        pass
    # The graph's inputs and outputs keep their declared types. Inference names the dynamic dims it
    # cannot relate ("unk__1"); onnxruntime then carries such a name from the value_info to a graph
    # output the model left unnamed (skl2onnx's labels), which changes the signature: the names the
    # original did not use go.
    stored = {t.name for t in proto.graph.initializer}  # old IR lists them as inputs: their shapes changed
    for mine, theirs in ((proto.graph.input, src.graph.input), (proto.graph.output, src.graph.output)):
        declared = {v.name: v for v in theirs}
        for v in mine:
            if v.name in declared and v.name not in stored:
                v.type.CopyFrom(declared[v.name].type)
    used = {d.dim_param for vs in (src.graph.input, src.graph.output, src.graph.value_info) for v in vs
            if v.type.HasField("tensor_type") for d in v.type.tensor_type.shape.dim if d.dim_param}
    for v in proto.graph.value_info:
        if v.type.HasField("tensor_type"):
            for d in v.type.tensor_type.shape.dim:
                if d.HasField("dim_param") and d.dim_param not in used:
                    d.ClearField("dim_param")
    return proto


def _read_params(proto: onnx.ModelProto) -> int:
    """Elements of the main graph's constants that something reads (model_params without the ones
    a rewrite left unread, which the final sweep removes)."""

    g = proto.graph
    reads = {x for n in g.node for x in n.input} | {o.name for o in g.output} | {i.name for i in g.input}
    for n in g.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute):
            reads |= subgraph_outer_refs(n)
    return int(sum(int(np.prod(constant_shape(e), dtype=np.int64))
                   for name, e in constant_values(g).items() if name in reads))


def predicted_shapes(plan: RewritePlan) -> dict[str, tuple[int, ...]]:
    shapes = dict(plan.analysis.shapes)
    for d, kept in plan.keep.items():
        if d.kind == "v" and d.value in shapes:
            s = list(shapes[d.value])
            s[d.axis] = len(kept)
            shapes[d.value] = tuple(s)
    return shapes


def verify(model: Model, proto: onnx.ModelProto, plan: RewritePlan, feed: dict) -> tuple[dict, list[tuple[str, tuple, tuple]]]:
    """Run the rewritten model once; returns (its shapes, [(tensor, expected, got)] mismatches)."""

    try:
        shapes = runtime_shapes(proto, feed, str(model.base_dir))
    except (DataError, ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidArgument,
            ort.capi.onnxruntime_pybind11_state.RuntimeException, ort.capi.onnxruntime_pybind11_state.InvalidGraph) as e:
        first = str(e.__cause__ or e).splitlines()[0][:300]
        raise RewriteError(f"the rewritten model does not run in onnxruntime: {first}", _node_dims(proto, failing_node(first))) from e
    want = predicted_shapes(plan)
    bad = [(k, want[k], v) for k, v in shapes.items() if k in want and tuple(want[k]) != tuple(v)]
    return shapes, bad


def _node_dims(proto: onnx.ModelProto, name: str | None) -> list[Dim]:
    """The tensor axes around the main-graph node `name` (the one an onnxruntime error names), so the
    groups that reach it are the ones frozen; [] when there is none."""
    found = [(n, node) for n, node in enumerate(proto.graph.node) if name is not None and node.name == name]
    if not found:
        return []
    n, node = found[0]
    dims: list[Dim] = [ValueDim(name, a) for name in list(node.input) + list(node.output) if name for a in range(8)]
    return dims + [ConstDim(n, i, a) for i in range(len(node.input)) for a in range(8)]


# --------------------------------------------------------------------------------------- reinit

def reinit_weights(proto: onnx.ModelProto, seed: int = 0) -> list[str]:
    """Fresh weights for every layer as its op's spec draws them (He-normal Conv/ConvTranspose/Gemm/MatMul
    weights, std sqrt(2/fan_in), zero biases; LSTM/GRU/RNN weights uniform in +-1/sqrt(hidden), the
    PyTorch default, zero biases) and BatchNormalization scale 1 / bias 0 / mean 0 / var 1. Returns the
    tensors rewritten."""
    rng = np.random.default_rng(seed)
    g = proto.graph
    consts = constant_values(g)  # initializers and Constant nodes (Paddle, TF exports)
    done = []

    def put(name, arr):
        entry = consts.get(name)
        if entry is None or name in done:
            return
        if entry[0] == "initializer":
            t = entry[1]
            t.CopyFrom(_tensor(arr.astype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)), name, t))
        else:
            node = entry[1][1]
            old = constant_array(entry)
            del node.attribute[:]
            node.attribute.append(onnx.helper.make_attribute("value", _tensor(arr.astype(old.dtype), name)))
        done.append(name)

    def shape(name):
        return tuple(constant_shape(consts[name])) if name in consts else None

    for node in g.node:
        spec = spec_for(node.op_type, node.domain)
        if spec is not None:
            for i, arr in spec.reinit(node, shape, rng).items():
                put(node.input[i], arr)
        elif node.op_type == "BatchNormalization":
            for i, v in ((1, 1.0), (2, 0.0), (3, 0.0), (4, 1.0)):
                if shape(node.input[i]):
                    put(node.input[i], np.full(shape(node.input[i]), v))
    return done


# ---------------------------------------------------------------------------------------- driver

@dataclass
class StructuredResult:
    proto: onnx.ModelProto
    plan: RewritePlan
    report: dict


def _group_row(g: ChannelGroup, removed: np.ndarray | None) -> dict:
    after = g.channels - (len(removed) if removed is not None else 0)
    return {"group": g.id, "name": g.name(), "channels_before": g.channels, "channels_after": after,
            "segments_before": [len(s) for s in g.segments],
            "segments_after": [len(s) - (int(np.isin(s, removed).sum()) if removed is not None else 0)
                               for s in g.segments],
            "frozen": bool(g.frozen.all()), "frozen_channels": int(g.frozen.sum()), "reasons": g.reasons,
            "producers": g.producers, "consumers": g.consumers}


def prune_channels(model: Model, sparsity: float, *, round_to: int = DEFAULT_ROUND_TO, scope: str = "layer",
                   criterion: str = "l2", data=None, repair: str = "none", reinit: bool = False, seed: int = 0,
                   skip: list[str] | tuple = (), calib_samples: int | None = 32, prefer: str = "inner",
                   feed: dict | None = None, max_retries: int = 4, refit: Callable | None = None,
                   group_sparsity: dict[str, float] | None = None,
                   analysis: GroupAnalysis | None = None) -> StructuredResult:
    """Plan and apply channel pruning to `model` (not modified: the result holds the new proto).

    `group_sparsity`: group name (`ChannelGroup.name()`) -> its own ratio of channels to remove
    (the others take `sparsity`; 0 leaves a group whole). `analysis`: the model's group analysis at
    `feed`, made once by a caller that prunes the same model many times (copied, not changed).

    Example::

        result = prune_channels(load_model("m.onnx"), 0.25, round_to=16)
        print(result.report["macs_ratio"])
    """
    if criterion not in CRITERIA:
        raise OptionError(f"criterion {criterion!r} for channel pruning: use one of {', '.join(CRITERIA)}")
    if repair not in ("none", "lstsq"):
        raise OptionError(f"repair {repair!r} for channel pruning: use none or lstsq")
    if (repair != "none" or criterion == "activation") and data is None:
        raise OptionError("channel pruning with repair or the activation criterion needs calibration data (",
                          Opt("data.calibration", "FILE"), ")")
    if repair != "none" and reinit:
        raise OptionError("reinit starts from fresh weights: repair would be thrown away; choose one")
    if round_to < 1:
        raise OptionError(f"round_to {round_to}: give a multiple >= 1")
    if repair == "lstsq" and refit is None:  # the refit lives in onnxprune.repair; jobs pass it in
        raise OptionError("repair 'lstsq' needs its refit: pass refit=onnxprune.repair.structured_repair.lstsq_repair "
                          "(build_pipeline does)")
    feed_shapes = None
    if feed is None:
        feed, feed_shapes = sample_feed(model.proto, data, str(model.base_dir))
    if analysis is None:
        analysis = analyze_groups(model.proto, feed, base_dir=str(model.base_dir), prefer=prefer)
    else:
        analysis = copy.deepcopy(analysis)
    names = {g.name(): g.id for g in analysis.groups}
    unknown = sorted(set(group_sparsity or {}) - set(names))
    if unknown:
        raise OptionError(f"channel group {unknown[0]!r} is not a group of this model (groups: "
                          f"{', '.join(list(names)[:6])}{', ...' if len(names) > 6 else ''})")
    by_id = {names[k]: float(v) for k, v in (group_sparsity or {}).items()}
    read = weight_reader(model, model.proto)
    if criterion == "activation":
        importance = activation_importance(model, analysis, data, samples=calib_samples or 32)
    else:
        importance = {g.id: l2_importance(g, read, model.proto) for g in analysis.groups if g.prunable}
    skip_groups = {g.id for g in analysis.groups
                   if any(fnmatch.fnmatch(p, pat) for p in g.producers for pat in skip)}
    forced: dict[int, str] = {}
    notes = list(analysis.notes)
    if feed_shapes is not None and feed_shapes.guessed:
        notes.append(f"channel analysis and MACs at guessed input shapes ({feed_shapes.text()}); give --shape "
                     "or --data for the sizes the model really runs at")
    for attempt in range(max_retries + 1):
        removed = allocate(analysis, importance, sparsity, round_to, scope, skip_groups | set(forced), by_id)
        keep = keep_positions(analysis, removed)
        plan = RewritePlan(analysis, removed, keep)
        try:
            proto = rewrite(model, plan)
            new_shapes, bad = verify(model, proto, plan, feed)
            if not bad:
                break
            dims = [ValueDim(name, a) for name, want, got in bad for a in range(min(len(want), len(got)))
                    if want[a] != got[a]]
            err = RewriteError(f"tensor {bad[0][0]!r} has shape {bad[0][2]} where {bad[0][1]} was planned", dims)
        except RewriteError as e:
            err = e
        culprits = {g.id for g in analysis.groups if g.id in removed and
                    (not err.dims or any(m.dim in err.dims for m in g.members))}
        if not culprits:
            culprits = set(removed)  # cannot tell which group: freeze all that were pruned
        for gid in culprits:
            forced[gid] = f"rewrite check failed: {err}"
        notes.append(f"attempt {attempt + 1}: {err}; froze group(s) {sorted(culprits)} and retried")
    else:
        raise OnnxPruneError(f"channel pruning could not produce a consistent model: {err}")
    for gid, why in forced.items():
        g = analysis.groups[gid]
        g.frozen[:] = True
        g.reasons.append(why)
    for gid in skip_groups:
        analysis.groups[gid].reasons.append("skipped by --skip")
    group_of = {m.dim: g.id for g in analysis.groups for m in g.members}
    notes += list(dict.fromkeys(text for d, text in analysis.dim_notes if group_of.get(d) in removed))  # pruned only
    repair_report = refit(model, proto, plan, data, samples=calib_samples) if repair == "lstsq" else None
    if reinit:
        notes.append(f"reinit: {len(reinit_weights(proto, seed))} weight tensors freshly initialised (seed {seed})")
    # Constants the rewrite or the repair replaced (and nodes computing only for them) go: a sliced
    # or refitted copy must not leave its original behind. Plan indices refer to the model before.
    swept = remove_unused(proto)
    check_no_unused(proto, "channel pruning")
    check_structure(proto)
    macs_before = model_macs(model.proto, analysis.shapes)
    macs_after = model_macs(proto, new_shapes)
    params_before, params_after = model_params(model.proto), model_params(proto)
    check_params_not_increased(params_before, params_after, "channel pruning")
    rows = [_group_row(g, removed.get(g.id)) for g in analysis.groups]
    report = {
        "sparsity": sparsity, **({"group_sparsity": dict(group_sparsity)} if group_sparsity else {}),
        "round_to": round_to, "scope": scope, "criterion": criterion,
        "repair": repair, "reinit": reinit,
        "groups": rows,
        "frozen_groups": [{"group": r["group"], "name": r["name"], "channels": r["channels_before"],
                           "reasons": r["reasons"]} for r in rows if r["frozen"]],
        "channels_before": int(sum(r["channels_before"] for r in rows)),
        "channels_after": int(sum(r["channels_after"] for r in rows)),
        "params_before": params_before, "params_after": params_after,
        "params_ratio": params_after / params_before if params_before else 1.0,
        "macs_before": int(sum(macs_before.values())), "macs_after": int(sum(macs_after.values())),
        "macs_ratio": sum(macs_after.values()) / sum(macs_before.values()) if sum(macs_before.values()) else 1.0,
        "macs_per_layer": {k: [v, macs_after.get(k, 0)] for k, v in macs_before.items()},
        "input_shapes": {k: list(np.shape(v)) for k, v in feed.items()},
        "input_shapes_guessed": bool(feed_shapes and feed_shapes.guessed),
        "repair_report": repair_report,
        "removed_unused": len(swept),
        "notes": notes,
    }
    return StructuredResult(proto, plan, report)


def render(report: dict, top: int | None = None) -> str:
    """Terminal table: per group channels before -> after, frozen reasons, totals."""

    rows = []
    for r in report["groups"][:top]:
        if r["frozen"]:
            note = "frozen: " + "; ".join(r["reasons"])[:90]
        elif r["frozen_channels"]:
            note = "partly frozen"
        elif r["channels_after"] == r["channels_before"] and "skipped by --skip" not in r["reasons"]:
            note = f"kept whole: multiples of {report['round_to']} leave no smaller count (try --round-to)"
        else:
            note = "; ".join(r["reasons"])[:90]
        rows.append([r["group"], r["name"][:48], r["channels_before"], r["channels_after"], note])
    lines = [table(["group", "producers", "before", "after", "note"], rows, right_align=False), ""]
    lines.append(f"channels {report['channels_before']} -> {report['channels_after']}; "
                 f"params {report['params_before']} -> {report['params_after']} ({report['params_ratio']:.3f}x); "
                 f"MACs {report['macs_before']} -> {report['macs_after']} ({report['macs_ratio']:.3f}x) "
                 f"at input {report['input_shapes']}")
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)


class ChannelPrunePass(Pass):
    """Structured pruning as a structural pass: remove `sparsity` of the prunable channels.

    Reads calibration data from ctx.data (the first batch also gives the shapes; without data a
    synthetic feed is used). The full report is in ctx.channel_report.

    Example::

        Pipeline([ChannelPrunePass(0.25, round_to=16)]).run(Context(load_model("m.onnx")))
    """

    name = "channel-prune"
    structural = True
    ensures = (ANALYSIS_FRESH, NO_UNUSED)

    def __init__(self, sparsity: float = 0.5, round_to: int = DEFAULT_ROUND_TO, scope: str = "layer", criterion: str = "l2",
                 repair: str = "none", reinit: bool = False, seed: int = 0, skip: list[str] | tuple = (),
                 calib_samples: int | None = 32, prefer: str = "inner", refit: Callable | None = None,
                 group_sparsity: dict[str, float] | None = None):
        self.sparsity = float(sparsity)
        self.group_sparsity = dict(group_sparsity or {})  # group name -> its ratio (non-uniform allocation)
        self.refit = refit  # repair "lstsq": onnxprune.repair.structured_repair.lstsq_repair
        self.round_to = int(round_to)
        self.scope = scope
        self.criterion = criterion
        self.repair = repair
        self.reinit = bool(reinit)
        self.seed = int(seed)
        self.skip = list(skip)
        self.calib_samples = calib_samples
        self.prefer = prefer
        if scope not in SCOPES:
            raise OptionError(f"scope {scope!r}: use one of {', '.join(SCOPES)}")
        if criterion not in CRITERIA:
            raise OptionError(f"criterion {criterion!r} for channel pruning: use one of {', '.join(CRITERIA)}")
        if not 0 <= self.sparsity < 1:
            raise OptionError(f"sparsity {sparsity}: give a fraction of channels to remove in [0, 1)")

    def call(self, ctx: Context) -> PassResult:
        model = ctx.model
        res = prune_channels(model, self.sparsity, round_to=self.round_to, scope=self.scope,
                             criterion=self.criterion, data=ctx.data, repair=self.repair, reinit=self.reinit,
                             seed=self.seed, skip=self.skip, calib_samples=self.calib_samples, prefer=self.prefer,
                             refit=self.refit, group_sparsity=self.group_sparsity)
        # initializers and Constant nodes alike (Paddle exports keep every weight in a Constant)
        before = {k: tuple(constant_shape(e)) for k, e in constant_values(model.proto.graph).items()}
        after = {k: tuple(constant_shape(e)) for k, e in constant_values(res.proto.graph).items()}
        changed = {k: {"shape_before": list(v), "shape_after": list(after[k])}
                   for k, v in before.items() if k in after and after[k] != v}
        for k in after:
            if k not in before:
                changed[k] = {"shape_before": None, "shape_after": list(after[k]), "note": "new (cloned or added)"}
        for k in before:
            if k not in after:
                changed[k] = {"shape_before": list(before[k]), "shape_after": None, "note": "removed (nothing reads it)"}
        modified = bool(res.plan.removed) or self.reinit
        if modified:
            model.replace_proto(res.proto)
            for key in [k for k in ctx.masks.keys() if k in changed]:
                ctx.masks.entries.pop(key, None)  # masks of reshaped weights no longer apply
        ctx.channel_report = res.report
        notes = [f"channels {res.report['channels_before']} -> {res.report['channels_after']}, params x"
                 f"{res.report['params_ratio']:.3f}, MACs x{res.report['macs_ratio']:.3f}"]
        notes += [f"frozen group {f['name']} ({f['channels']} ch): {'; '.join(f['reasons'])}"
                  for f in res.report["frozen_groups"]]
        notes += res.report["notes"]
        return PassResult(self.name, modified, changed, notes)

    def stage(self, result: PassResult) -> str:
        return f"{self.name} {self.sparsity:.2f} ({self.criterion}): {result.notes[0]}, {result.seconds:.1f} s"
