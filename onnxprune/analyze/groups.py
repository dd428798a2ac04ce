"""Channel-dependency groups: which channels of which tensors must be removed together.

Structured pruning removes whole channels (Conv filters, Gemm/MatMul output units, LSTM/GRU hidden
units). Removing output channel c of a layer changes every tensor that carries that channel: the
layer's bias, a following BatchNormalization's four vectors, both inputs of a residual Add (and so
every other layer feeding it), a slice of a Concat, the input columns of each consumer (one column
per channel, or a block of H*W columns after a Flatten), and so on. This module finds those
couplings once and never changes the model.

How (Torch-Pruning's dependency groups, re-done for ONNX graphs):
- A *dim* is one axis of one tensor: `ValueDim(value name, axis)` for activations, `ConstDim(node,
  input, axis)` for one use of a constant (an initializer or Constant node; every use gets its own dim, so
  two layers that happen to share a deduplicated bias constant are not coupled; the rewrite clones
  such a constant when its uses end up sliced differently), `HiddenDim(node)` for the hidden units of an
  LSTM/GRU/RNN node, `SlotDim(node, side)` for the per-group channel slots of a grouped convolution
  (position j of every group is one channel). Axes of size 1 are inert (broadcast) and get no dim.
- Each op rule links dims of its inputs and outputs with an index map (identity, an offset for
  Concat/Split/Slice, a block expansion for Flatten/Reshape (channel c -> columns c*HW..c*HW+HW-1),
  a stride pattern for channels-last reshapes and LSTM gate blocks). Dims an op does not link are
  *unhandled* by it; a dim some op cannot handle is blocked (frozen) with that op as the reason, as
  are the dims of graph inputs and outputs (their shapes are kept).
- Dims connected by links form components (networkx). A component containing a *root* (the output
  axis of a layer with constant weights: Conv/ConvTranspose/Gemm/MatMul output units, LSTM/GRU
  hidden units) is a channel group. Inside it, positions are unified through the index maps into
  *channels* (connected components over positions): the units that are removed together. A
  channel that touches a blocked dim or no root is frozen; the others can be pruned.
- Channels touching the same set of dims form a *segment* (e.g. the two inputs of a Concat are two
  segments of one group): rounding to a multiple and "never empty a layer" apply per segment.
- Reductions over a channel axis (ReduceSum/Max/Min/L1/L2/SumSquare/LogSumExp/Mean) end the channel's
  path: removed channels simply drop out of the sum or max; ReduceMean and a ReduceSum followed by a
  multiplication with the constant 1/C (a mean, as exporters write LayerNorm) average over the kept
  channels (the constant is rewritten to 1/kept). Softmax, ArgMax etc. freeze.
- A Reshape that merges a channel axis with others (Flatten into Gemm, channels-last flatten) links
  only the factor that carries channels; one that splits a channel axis into several (attention:
  d -> heads x head_dim) links one factor, `prefer="inner"` (head_dim, the default) or "outer"
  (heads). Q/K head dims then couple through Q.K^T, heads through the attention MatMuls.
- Ops whose rewrite needs more than slicing constants register *fixups*: Conv group counts
  (depthwise), LSTM/GRU/RNN hidden_size, Split sizes, Slice starts/ends, mean constants (above), and
  the shape vectors of Reshape/Expand/ConstantOfShape/Resize (traced back to the constant element
  that holds the size; sizes computed at run time from Shape ops adapt by themselves and are
  verified after the rewrite).

Shapes come from `value_shapes` (onnx shape inference completed by one onnxruntime run), so Reshape
targets computed at run time are known exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, NamedTuple

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper

from onnxprune.analyze.constants import constant_array, constant_shape, constant_values
from onnxprune.analyze.value_shapes import value_shapes
from onnxprune.core.graph import attrs, subgraph_outer_refs
from onnxprune.core.shapes import (
    FeedShapes,
    input_specs,
    random_feeds,
    resolve_feed_shapes,
)
from onnxprune.ops import spec_for
from onnxprune.ops.quantized import is_quantized_layer


# Dims are tuples whose first field names their kind, so a dim equals (and hashes as) the plain tuple
# ("v", name, axis) etc.; each kind is built by its own class and read by field name.
class _ValueDim(NamedTuple):
    kind: str
    value: str  # activation (graph value) name
    axis: int


class ValueDim(_ValueDim):
    """Axis `axis` of the activation `value`."""

    __slots__ = ()

    def __new__(cls, value: str, axis: int):
        return super().__new__(cls, "v", value, axis)

    def __getnewargs__(self):  # copy and pickle call __new__ with these
        return (self.value, self.axis)


class _ConstDim(NamedTuple):
    kind: str
    node: int  # index in the main graph's node list
    input: int
    axis: int


class ConstDim(_ConstDim):
    """Axis `axis` of the constant read by input `input` of node `node` (one use of a constant)."""

    __slots__ = ()

    def __new__(cls, node: int, input: int, axis: int):
        return super().__new__(cls, "c", node, input, axis)

    def __getnewargs__(self):  # copy and pickle call __new__ with these
        return (self.node, self.input, self.axis)


class _HiddenDim(NamedTuple):
    kind: str
    node: int


class HiddenDim(_HiddenDim):
    """The hidden units of the LSTM/GRU/RNN node `node`."""

    __slots__ = ()

    def __new__(cls, node: int):
        return super().__new__(cls, "h", node)

    def __getnewargs__(self):  # copy and pickle call __new__ with these
        return (self.node,)


class _SlotDim(NamedTuple):
    kind: str
    node: int
    side: str  # "in" or "out"


class SlotDim(_SlotDim):
    """The per-group channel slots on `side` of the grouped convolution `node`."""

    __slots__ = ()

    def __new__(cls, node: int, side: str):
        return super().__new__(cls, "s", node, side)

    def __getnewargs__(self):  # copy and pickle call __new__ with these
        return (self.node, self.side)


Dim = ValueDim | ConstDim | HiddenDim | SlotDim

INT_MAX = 2**62

ELEMENTWISE = {
    "Relu", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "LeakyRelu", "Clip", "Elu", "Selu", "Celu", "Softplus",
    "Softsign", "Gelu", "Erf", "Exp", "Log", "Sqrt", "Reciprocal", "Neg", "Abs", "Cast", "Identity", "Dropout",
    "Sin", "Cos", "Tan", "Atan", "Asin", "Acos", "Sinh", "Cosh", "Floor", "Ceil", "Round", "Sign", "Mish",
    "ThresholdedRelu", "Not", "IsNaN", "IsInf", "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean",
    "Where", "PRelu", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Mod",
    "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot",
}
POOL = {"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "MaxRoiPool"}
# reductions over the channel axis that stay consistent when channels are removed (a removed channel
# acts as a zero channel); ReduceMean/ReduceProd/... would change their meaning and freeze the group
# ReduceMean (and a ReduceSum scaled by the constant 1/C, as exporters write a mean; its constant is
# rewritten to 1/kept) then averages over the kept channels, as a LayerNorm over fewer channels does.
SINK_REDUCE = {"ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceMax", "ReduceMin", "ReduceLogSumExp",
               "ReduceMean"}
REDUCE = SINK_REDUCE | {"ReduceProd", "ReduceLogSum"}


# ------------------------------------------------------------------------------------------ results

@dataclass
class Member:
    """One tensor axis in a group and its index mapping: `channel_of[p]` is the group channel that
    position p of this axis belongs to (every position belongs to exactly one channel)."""

    dim: Dim
    kind: str  # "value" (activation) | "const" (one use of a constant) | "hidden" (LSTM/GRU/RNN units) | "slot" (grouped conv)
    tensor: str  # value name or constant name (for "hidden": the node name)
    axis: int
    size: int
    node: str  # const: the node that reads it; value: the node that makes it; hidden: the RNN node
    op: str
    role: str  # "out" (layer output units) | "in" (layer input columns) | "hidden" | "param" | "act"
    channel_of: np.ndarray

    def positions(self, channels: Iterable[int]) -> np.ndarray:
        """Positions of this axis that belong to `channels` (sorted)."""
        return np.flatnonzero(np.isin(self.channel_of, np.fromiter(channels, dtype=np.int64)))

    def describe(self) -> dict:
        per = np.bincount(self.channel_of, minlength=int(self.channel_of.max()) + 1 if self.size else 0)
        k = int(per[per > 0][0]) if self.size and (per > 0).any() else 0
        return {"tensor": self.tensor, "kind": self.kind, "axis": self.axis, "size": self.size, "node": self.node,
                "op": self.op, "role": self.role,
                "positions_per_channel": k if (per[per > 0] == k).all() else "varies"}


@dataclass
class ChannelGroup:
    """Channels that are removed together, every tensor axis they live on, and what is frozen."""

    id: int
    channels: int
    members: list[Member]
    segments: list[np.ndarray]  # channel ids per segment (same set of members); rounding works per segment
    frozen: np.ndarray  # bool per channel
    reasons: list[str]  # why channels are frozen (empty if none)
    producers: list[str] = field(default_factory=list)  # nodes whose output units are in the group
    consumers: list[str] = field(default_factory=list)  # nodes whose input columns are in the group

    @property
    def prunable(self) -> bool:
        return bool((~self.frozen).any())

    @property
    def fully_frozen(self) -> bool:
        return bool(self.frozen.all())

    def name(self) -> str:
        return f"g{self.id}:" + (",".join(self.producers[:3]) + ("..." if len(self.producers) > 3 else "")
                                 if self.producers else "?")

    def describe(self) -> dict:
        return {"id": self.id, "name": self.name(), "channels": self.channels,
                "frozen_channels": int(self.frozen.sum()), "reasons": self.reasons,
                "segments": [len(s) for s in self.segments], "producers": self.producers,
                "consumers": self.consumers, "members": [m.describe() for m in self.members]}


@dataclass(frozen=True)
class ElementSource:
    """Where one element of a shape vector comes from: "const" (element `flat` of constant `const`,
    read by input `input` of node `node`, holding `value`), "dynamic" (computed from shapes at run time,
    so it follows the rewrite) or "unknown" (`why` it cannot be followed)."""

    kind: str
    why: str = ""
    const: str = ""
    flat: int = 0
    node: int = 0
    input: int = 0
    value: int = 0


@dataclass
class Fixup:
    """A rewrite beyond slicing constants: node `node` needs `kind` updated from the kept sizes of `dims`."""

    kind: str  # conv_group | rnn_hidden | split | slice | shape_vector
    node: int
    dims: list[Dim]
    data: dict = field(default_factory=dict)


@dataclass
class GroupAnalysis:
    groups: list[ChannelGroup]
    fixups: list[Fixup]
    shapes: dict[str, tuple[int, ...]]  # every value's shape in the analysis run
    blocked: dict[Dim, str]
    sizes: dict[Dim, int]
    notes: list[str] = field(default_factory=list)
    dim_notes: list[tuple[Dim, str]] = field(default_factory=list)  # notes that matter if the dim's group is pruned

    @property
    def prunable(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    @property
    def frozen(self) -> list[ChannelGroup]:
        return [g for g in self.groups if not g.prunable]

    def describe(self) -> dict:
        return {"groups": [g.describe() for g in self.groups],
                "prunable_groups": len(self.prunable), "frozen_groups": len(self.frozen),
                "prunable_channels": int(sum((~g.frozen).sum() for g in self.groups)),
                "channels": int(sum(g.channels for g in self.groups)), "notes": self.notes}

    def summary_rows(self) -> list[list]:
        return [[g.name(), g.channels, int(g.frozen.sum()), "; ".join(g.reasons)[:120]] for g in self.groups]


# --------------------------------------------------------------------------------- graph helpers



# -------------------------------------------------------------------------------------- builder

@dataclass
class _Pending:
    """A Reshape axis related to several axes on the other side: only one of them may be linked."""

    node: int
    single: Dim
    candidates: list[tuple[Dim, np.ndarray | None, bool]]  # (dim, idx, single is the small side)
    strides: list[int]  # stride of each candidate (inner first when sorted)


class _Builder:
    def __init__(self, proto: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], values: dict[str, np.ndarray],
                 prefer: str = "inner"):
        self.proto = proto
        self.g = proto.graph
        self.shapes = shapes
        self.values = values
        self.prefer = prefer
        self.consts = constant_values(self.g)
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.sizes: dict[Dim, int] = {}
        self.meta: dict[Dim, tuple] = {}  # dim -> (kind, tensor, axis, node name, op)
        self.links: list[tuple[Dim, Dim, np.ndarray | None]] = []
        self.roots: set[Dim] = set()
        self.roles: dict[Dim, str] = {}
        self.handled: set[tuple[int, Dim]] = set()
        self.blocked: dict[Dim, str] = {}
        self.pending: list[_Pending] = []
        self.fixups: list[Fixup] = []
        self.notes: list[str] = []
        self.dim_notes: list[tuple[Dim, str]] = []
        self._why: dict[int, tuple[bool, str | None]] = {}
        self.producer: dict[str, int] = {}
        for i, n in enumerate(self.g.node):
            for o in n.output:
                if o:
                    self.producer[o] = i
        self.const_derived: set[str] = set(self.consts)
        self.shape_derived: set[str] = set()
        for n in self.g.node:
            ins = [x for x in n.input if x]
            has_sub = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute)
            if n.op_type in ("Shape", "Size") or any(x in self.shape_derived for x in ins):
                self.shape_derived |= {o for o in n.output if o}
            if ins and not has_sub and all(x in self.const_derived for x in ins):
                self.const_derived |= {o for o in n.output if o}

    # -- dims --------------------------------------------------------------------------------
    def shape_of(self, name: str) -> tuple[int, ...] | None:
        if name in self.consts:
            return constant_shape(self.consts[name])
        return self.shapes.get(name)

    def value_of(self, name: str) -> np.ndarray | None:
        if not name:
            return None
        if name in self.consts:
            try:
                return constant_array(self.consts[name])
            except ValueError:
                return None
        return self.values.get(name)

    def _dim(self, n: int, name: str, axis: int, input_index: int | None) -> Dim | None:
        shape = self.shape_of(name)
        if not name or shape is None or not shape:
            return None
        axis = axis % len(shape)
        size = int(shape[axis])
        if size <= 1:
            return None
        node = self.g.node[n]
        if name in self.consts and input_index is not None:
            d = ConstDim(n, input_index, axis)
            self.meta.setdefault(d, ("const", name, axis, node.name or f"{node.op_type}#{n}", node.op_type))
        else:
            d = ValueDim(name, axis)
            p = self.producer.get(name)
            pn = self.g.node[p] if p is not None else None
            self.meta.setdefault(d, ("value", name, axis, (pn.name or f"{pn.op_type}#{p}") if pn else name,
                                     pn.op_type if pn else "input"))
        self.sizes[d] = size
        return d

    def I(self, n: int, i: int, axis: int) -> Dim | None:  # noqa: E743 - input dim
        node = self.g.node[n]
        if i >= len(node.input) or not node.input[i]:
            return None
        return self._dim(n, node.input[i], axis, i)

    def O(self, n: int, j: int, axis: int) -> Dim | None:  # noqa: E743 - output dim
        node = self.g.node[n]
        if j >= len(node.output) or not node.output[j]:
            return None
        return self._dim(n, node.output[j], axis, None)

    def rank_in(self, n: int, i: int) -> int | None:
        node = self.g.node[n]
        if i >= len(node.input) or not node.input[i]:
            return None
        s = self.shape_of(node.input[i])
        return None if s is None else len(s)

    def rank_out(self, n: int, j: int = 0) -> int | None:
        node = self.g.node[n]
        if j >= len(node.output) or not node.output[j]:
            return None
        s = self.shapes.get(node.output[j])
        return None if s is None else len(s)

    def link(self, n: int, a: Dim | None, b: Dim | None, idx: np.ndarray | None = None) -> bool:
        """Link dim a (the small side when idx is given: a's position i <-> b's positions idx[i]) to b."""
        if a is None or b is None:
            return False
        if idx is None:
            if self.sizes[a] != self.sizes[b]:
                return False
        else:
            idx = np.asarray(idx, dtype=np.int64).reshape(self.sizes[a], -1)
            if idx.size and (idx.min() < 0 or idx.max() >= self.sizes[b]):
                return False
        self.links.append((a, b, idx))
        self.handled.add((n, a))
        self.handled.add((n, b))
        return True

    def handle(self, n: int, d: Dim | None) -> None:
        if d is not None:
            self.handled.add((n, d))

    def role(self, d: Dim | None, role: str, root: bool = False) -> None:
        if d is None:
            return
        self.roles.setdefault(d, role)
        if root:
            self.roots.add(d)

    # -- traversal ---------------------------------------------------------------------------
    def touched(self, n: int) -> list[Dim]:
        node = self.g.node[n]
        dims = []
        for i, name in enumerate(node.input):
            s = self.shape_of(name) if name else None
            if s:
                dims += [d for a in range(len(s)) if (d := self.I(n, i, a)) is not None]
        for j, name in enumerate(node.output):
            s = self.shapes.get(name) if name else None
            if s:
                dims += [d for a in range(len(s)) if (d := self.O(n, j, a)) is not None]
        for name in sorted(subgraph_outer_refs(node)):
            s = self.shape_of(name)
            if s:
                dims += [d for a in range(len(s)) if (d := self._dim(n, name, a, None)) is not None]
        return dims

    def build(self) -> None:
        for n, node in enumerate(self.g.node):
            spec = spec_for(node.op_type, node.domain)
            if spec is not None:
                rule = lambda n, node, spec=spec: spec.link_channels(self, n, node)  # noqa: E731
            else:
                rule = getattr(self, f"op_{node.op_type}", None) if node.domain in ("", "ai.onnx") else None
            if rule is None and node.op_type in ELEMENTWISE and node.domain in ("", "ai.onnx"):
                rule = self.elementwise
            if rule is None and node.op_type in POOL:
                rule = self.pool
            if rule is None and node.op_type in REDUCE:
                rule = self.reduce
            why = None
            if rule is not None:
                try:
                    why = rule(n, node)
                except (KeyError, IndexError, ValueError, TypeError) as e:  # shapes or attributes it cannot read
                    why = f"could not analyse it ({type(e).__name__}: {e})"
            self._why[n] = (rule is not None, why)

    def finish(self) -> None:
        """Block every dim an op touches but does not handle (after the reshape choices are made)."""
        for n, node in enumerate(self.g.node):
            known, why = self._why.get(n, (False, None))
            rule = known or None
            label = f"{node.op_type} node {node.name or '#' + str(n)!r}"
            for d in self.touched(n):
                if (n, d) not in self.handled:
                    reason = why or (f"{label}: op not supported by structured pruning" if rule is None
                                     else f"{label} cannot follow a change of this axis")
                    if why:
                        reason = f"{label}: {why}"
                    self.blocked.setdefault(d, reason)
        for vi in self.g.input:
            if vi.name in self.consts:
                continue
            for a in range(len(self.shapes.get(vi.name, ()))):
                d = self._dim(0, vi.name, a, None) if self.g.node else None
                if d is not None:
                    self.blocked[d] = f"graph input {vi.name!r} keeps its shape"
        for vi in self.g.output:
            s = self.shapes.get(vi.name) or self.shape_of(vi.name)
            for a in range(len(s or ())):
                d = ValueDim(vi.name, a)
                if vi.name in self.consts:
                    continue
                if d in self.sizes:
                    self.blocked[d] = f"graph output {vi.name!r} keeps its shape"

    # -- op rules: each returns None, or a reason that applies to every axis it leaves unhandled
    def elementwise(self, n: int, node) -> str | None:
        ro = self.rank_out(n, 0)
        if ro is None:
            return "output shape unknown"
        out_shape = self.shapes[node.output[0]]
        for i, name in enumerate(node.input):
            r = self.rank_in(n, i)
            if r is None:
                continue
            if node.op_type == "Dropout" and i > 0:
                continue
            in_shape = self.shape_of(name)
            for a in range(r):
                oa = a + ro - r
                if oa < 0:
                    continue
                if in_shape[a] == out_shape[oa]:
                    self.link(n, self.I(n, i, a), self.O(n, 0, oa))
        for j in range(1, len(node.output)):
            if node.output[j] and self.rank_out(n, j) == ro:
                for a in range(ro):
                    self.link(n, self.O(n, j, a), self.O(n, 0, a))
        return None

    def op_Transpose(self, n, node):
        r = self.rank_in(n, 0)
        perm = attrs(node).get("perm") or list(reversed(range(r)))
        for o, i in enumerate(perm):
            self.link(n, self.I(n, 0, i), self.O(n, 0, o))

    def op_Shape(self, n, node):
        for a in range(self.rank_in(n, 0) or 0):
            self.handle(n, self.I(n, 0, a))

    op_Size = op_Shape

    def op_Constant(self, n, node):
        return None

    def op_Concat(self, n, node):
        r = self.rank_out(n, 0)
        axis = attrs(node)["axis"] % r
        off = 0
        for i, name in enumerate(node.input):
            s = self.shape_of(name)
            if not s:
                continue
            for a in range(r):
                if a == axis:
                    d = self.I(n, i, a)
                    if d is not None:
                        self.link(n, d, self.O(n, 0, a), off + np.arange(s[a]))
                else:
                    self.link(n, self.I(n, i, a), self.O(n, 0, a))
            off += s[axis]

    def op_Split(self, n, node):
        r = self.rank_in(n, 0)
        at = attrs(node)
        axis = at.get("axis", 0) % r
        off = 0
        dims = []
        for j, name in enumerate(node.output):
            s = self.shapes.get(name)
            if s is None:
                return "an output is not computed"
            for a in range(r):
                if a == axis:
                    d = self.O(n, j, a)
                    if d is not None:
                        self.link(n, d, self.I(n, 0, a), off + np.arange(s[a]))
                    dims.append(d)
                else:
                    self.link(n, self.O(n, j, a), self.I(n, 0, a))
            off += s[axis]
        if self.I(n, 0, axis) is not None:
            self.fixups.append(Fixup("split", n, dims, {"axis": axis, "sizes": [self.shapes[o][axis] for o in node.output]}))

    def op_Slice(self, n, node):
        r = self.rank_in(n, 0)
        in_shape = self.shape_of(node.input[0])
        out_shape = self.shapes[node.output[0]]
        at = attrs(node)
        if self.opset < 10:
            starts, ends = at["starts"], at["ends"]
            axes = at.get("axes", list(range(len(starts))))
            steps = [1] * len(starts)
            src = "attr"
        else:
            starts, ends = self.value_of(node.input[1]), self.value_of(node.input[2])
            axes = self.value_of(node.input[3]) if len(node.input) > 3 and node.input[3] else None
            steps = self.value_of(node.input[4]) if len(node.input) > 4 and node.input[4] else None
            if starts is None or ends is None:
                return "starts/ends unknown"
            axes = list(range(len(starts))) if axes is None else list(axes)
            steps = [1] * len(starts) if steps is None else list(steps)
            src = "input"
        sliced = {}
        for k, (a, st, en, sp) in enumerate(zip(axes, starts, ends, steps)):
            a = int(a) % r
            sliced[a] = (k, int(st), int(en), int(sp))
        for a in range(r):
            if a not in sliced:
                self.link(n, self.I(n, 0, a), self.O(n, 0, a))
                continue
            k, st, en, sp = sliced[a]
            size = in_shape[a]
            if sp != 1:
                continue  # strided: positions cannot follow a removal (the axis stays unhandled)
            s0 = min(max(st + size if st < 0 else st, 0), size)
            e0 = min(max(en + size if en < 0 else en, 0), size)
            din, dout = self.I(n, 0, a), self.O(n, 0, a)
            if dout is not None:
                self.link(n, dout, din, s0 + np.arange(out_shape[a]))
            elif din is not None:
                if out_shape[a] == 0:
                    self.handle(n, din)
                else:
                    continue  # one position kept of many: leave unhandled
            if din is not None:
                data = {"axis": a, "k": k, "start": s0, "end": e0, "orig_start": st, "orig_end": en, "src": src}
                if src == "input":
                    data["start_src"] = self.trace_element(n, 1, k)
                    data["end_src"] = self.trace_element(n, 2, k)
                self.fixups.append(Fixup("slice", n, [din], data))

    def _squeeze_axes(self, n, node) -> list[int] | None:
        at = attrs(node)
        if "axes" in at:
            return list(at["axes"])
        if len(node.input) > 1 and node.input[1]:
            v = self.value_of(node.input[1])
            return None if v is None else [int(x) for x in np.ravel(v)]
        return []

    def op_Squeeze(self, n, node):
        r = self.rank_in(n, 0)
        axes = self._squeeze_axes(n, node)
        in_shape = self.shape_of(node.input[0])
        if axes is None:
            return "axes unknown"
        axes = {a % r for a in axes} if axes else {a for a in range(r) if in_shape[a] == 1}
        o = 0
        for a in range(r):
            if a in axes:
                continue
            self.link(n, self.I(n, 0, a), self.O(n, 0, o))
            o += 1

    def op_Unsqueeze(self, n, node):
        ro = self.rank_out(n, 0)
        axes = self._squeeze_axes(n, node)
        if axes is None:
            return "axes unknown"
        axes = {a % ro for a in axes}
        i = 0
        for o in range(ro):
            if o in axes:
                continue
            self.link(n, self.I(n, 0, i), self.O(n, 0, o))
            i += 1

    def op_Flatten(self, n, node):
        return self._reshape(n, node, with_fixup=False)

    def op_Reshape(self, n, node):
        return self._reshape(n, node, with_fixup=True)

    def _reshape(self, n, node, with_fixup: bool):
        in_shape = self.shape_of(node.input[0])
        out_shape = self.shapes.get(node.output[0])
        if in_shape is None or out_shape is None:
            return "shape unknown"

        def ranges(shape):
            out, stride = [], 1
            for a in reversed(range(len(shape))):
                out.append((a, stride, stride * shape[a]))
                stride *= shape[a]
            return {a: (lo, hi) for a, lo, hi in out}

        ri, ro = ranges(in_shape), ranges(out_shape)
        rel_in: dict[int, list] = {a: [] for a in ri}
        rel_out: dict[int, list] = {a: [] for a in ro}
        for a, (ilo, ihi) in ri.items():
            if in_shape[a] <= 1:
                continue
            for b, (olo, ohi) in ro.items():
                if out_shape[b] <= 1:
                    continue
                if (ilo, ihi) == (olo, ohi):
                    rel_in[a].append((b, None, "eq"))
                    rel_out[b].append((a, None, "eq"))
                elif olo <= ilo and ihi <= ohi and ilo % olo == 0 and ohi % ihi == 0:  # in axis inside out axis
                    inner, outer = ilo // olo, ohi // ihi
                    p = np.arange(in_shape[a])[:, None, None] * inner
                    idx = (np.arange(outer)[None, :, None] * (in_shape[a] * inner) + p + np.arange(inner)[None, None, :])
                    rel_in[a].append((b, idx.reshape(in_shape[a], -1), "in_small"))
                    rel_out[b].append((a, idx.reshape(in_shape[a], -1), "in_small"))
                elif ilo <= olo and ohi <= ihi and olo % ilo == 0 and ihi % ohi == 0:  # out axis inside in axis
                    inner, outer = olo // ilo, ihi // ohi
                    p = np.arange(out_shape[b])[:, None, None] * inner
                    idx = (np.arange(outer)[None, :, None] * (out_shape[b] * inner) + p + np.arange(inner)[None, None, :])
                    rel_in[a].append((b, idx.reshape(out_shape[b], -1), "out_small"))
                    rel_out[b].append((a, idx.reshape(out_shape[b], -1), "out_small"))
        done = set()
        for a, rels in rel_in.items():
            for b, idx, kind in rels:
                if len(rels) == 1 and len(rel_out[b]) == 1:
                    din, dout = self.I(n, 0, a), self.O(n, 0, b)
                    if kind == "out_small":
                        self.link(n, dout, din, idx)
                    else:
                        self.link(n, din, dout, idx)
                    done.add((a, b))
        for a, rels in rel_in.items():  # one in axis split over several out axes
            if len(rels) > 1:
                cands = [(self.O(n, 0, b), idx, kind == "in_small") for b, idx, kind in rels]
                self.pending.append(_Pending(n, self.I(n, 0, a), cands, [ro[b][0] for b, _, _ in rels]))
        for b, rels in rel_out.items():  # several in axes merged into one out axis
            if len(rels) > 1:
                cands = [(self.I(n, 0, a), idx, kind == "out_small") for a, idx, kind in rels]
                self.pending.append(_Pending(n, self.O(n, 0, b), cands, [ri[a][0] for a, _, _ in rels]))
        if with_fixup:
            for b in range(len(out_shape)):
                d = self.O(n, 0, b)
                if d is None:
                    continue
                src = self.trace_element(n, 1, b)
                self.fixups.append(Fixup("shape_vector", n, [d], {"input": 1, "element": b, "src": src}))
                if src.kind == "unknown":
                    self.blocked.setdefault(d, f"Reshape {node.name!r}: target shape element {b} {src.why}")
        return None

    def op_Expand(self, n, node):
        in_shape = self.shape_of(node.input[0])
        out_shape = self.shapes.get(node.output[0])
        ri, ro = len(in_shape), len(out_shape)
        shape_len = int((self.shape_of(node.input[1]) or (0,))[0])  # elements of the 1-D shape input
        for b in range(ro):
            a = b - (ro - ri)
            d = self.O(n, 0, b)
            if a >= 0 and in_shape[a] == out_shape[b]:
                self.link(n, self.I(n, 0, a), d)
            if d is not None:
                self.handle(n, d)
                e = b - (ro - shape_len)
                if e >= 0:
                    src = self.trace_element(n, 1, e)
                    self.fixups.append(Fixup("shape_vector", n, [d], {"input": 1, "element": e, "src": src,
                                                                      "allow_one": a >= 0 and in_shape[a] == out_shape[b]}))
                    if src.kind == "unknown":
                        self.blocked.setdefault(d, f"Expand {node.name!r}: shape element {e} {src.why}")

    def op_ConstantOfShape(self, n, node):
        for b in range(self.rank_out(n, 0) or 0):
            d = self.O(n, 0, b)
            if d is None:
                continue
            self.handle(n, d)
            src = self.trace_element(n, 0, b)
            self.fixups.append(Fixup("shape_vector", n, [d], {"input": 0, "element": b, "src": src}))
            if src.kind == "unknown":
                self.blocked.setdefault(d, f"ConstantOfShape {node.name!r}: shape element {b} {src.why}")

    def op_Tile(self, n, node):
        reps = self.value_of(node.input[1])
        if reps is None:
            return "repeats unknown"
        for a, rep in enumerate(np.ravel(reps)):
            if int(rep) == 1:
                self.link(n, self.I(n, 0, a), self.O(n, 0, a))

    def op_Pad(self, n, node):
        r = self.rank_in(n, 0)
        at = attrs(node)
        pads = at.get("pads") if self.opset < 11 else self.value_of(node.input[1]) if len(node.input) > 1 else None
        if pads is None:
            return "pads unknown"
        pads = [int(p) for p in np.ravel(pads)]
        axes = list(range(r))
        if len(node.input) > 3 and node.input[3]:
            v = self.value_of(node.input[3])
            if v is None:
                return "axes unknown"
            axes = [int(a) % r for a in np.ravel(v)]
        k = len(axes)
        padded = {ax for j, ax in enumerate(axes) if pads[j] != 0 or pads[j + k] != 0}
        for a in range(r):
            if a not in padded:
                self.link(n, self.I(n, 0, a), self.O(n, 0, a))

    def op_Resize(self, n, node):
        in_shape = self.shape_of(node.input[0])
        out_shape = self.shapes.get(node.output[0])
        at = attrs(node)
        if "axes" in at:
            return "the axes attribute is not supported"
        sizes_input = 3 if node.op_type == "Resize" and len(node.input) > 3 and node.input[3] else None
        for a in range(len(in_shape)):
            if in_shape[a] == out_shape[a]:
                d = self.O(n, 0, a)
                self.link(n, self.I(n, 0, a), d)
                if sizes_input is not None and d is not None:
                    src = self.trace_element(n, sizes_input, a)
                    self.fixups.append(Fixup("shape_vector", n, [d], {"input": sizes_input, "element": a, "src": src}))
                    if src.kind == "unknown":
                        self.blocked.setdefault(d, f"Resize {node.name!r}: sizes element {a} {src.why}")

    op_Upsample = op_Resize

    def pool(self, n, node):
        if len(node.output) > 1 and node.output[1]:
            return "its Indices output encodes channel positions"
        self.link(n, self.I(n, 0, 0), self.O(n, 0, 0))
        self.link(n, self.I(n, 0, 1), self.O(n, 0, 1))
        if node.op_type.startswith("Global"):
            for a in range(2, self.rank_in(n, 0)):
                self.handle(n, self.I(n, 0, a))

    def reduce(self, n, node):
        r = self.rank_in(n, 0)
        at = attrs(node)
        keep = at.get("keepdims", 1)
        if "axes" in at:
            axes = at["axes"]
        elif len(node.input) > 1 and node.input[1]:
            v = self.value_of(node.input[1])
            if v is None:
                return "axes unknown"
            axes = [int(x) for x in np.ravel(v)]
        else:
            axes = []
        if not axes:
            if at.get("noop_with_empty_axes", 0):
                for a in range(r):
                    self.link(n, self.I(n, 0, a), self.O(n, 0, a))
                return None
            axes = list(range(r))
        axes = {a % r for a in axes}
        o = 0
        for a in range(r):
            if a in axes:
                if node.op_type in SINK_REDUCE:
                    self.handle(n, self.I(n, 0, a))
                if keep:
                    o += 1
                continue
            self.link(n, self.I(n, 0, a), self.O(n, 0, o))
            o += 1
        if node.op_type not in SINK_REDUCE:
            return f"{node.op_type} over a channel axis cannot follow a removal"
        if node.op_type == "ReduceSum":
            self._mean_scale(n, node, [self.I(n, 0, a) for a in sorted(axes)])
        return None

    def _mean_scale(self, n, node, dims) -> None:
        """ReduceSum whose every reader multiplies by the scalar constant 1/C (or divides by C): a mean."""
        dims = [d for d in dims if d is not None]
        if not dims:
            return
        total = int(np.prod([self.sizes[d] for d in dims]))
        out = node.output[0]
        readers = [(m, j) for m, nd in enumerate(self.g.node) for j, x in enumerate(nd.input) if x == out]
        found = []
        for m, j in readers:
            nd = self.g.node[m]
            if nd.op_type not in ("Mul", "Div") or len(nd.input) != 2 or (nd.op_type == "Div" and j != 0):
                return
            other = nd.input[1 - j]
            v = self.value_of(other) if other in self.consts else None
            if v is None or np.size(v) != 1:
                return
            c = float(np.ravel(v)[0])
            if nd.op_type == "Mul" and abs(c * total - 1) > 1e-3 or nd.op_type == "Div" and abs(c / total - 1) > 1e-3:
                return
            found.append((m, 1 - j, nd.op_type, c))
        if found:
            self.fixups.append(Fixup("mean_scale", n, dims, {"readers": found, "total": total}))

    def _softmax(self, n, node):
        r = self.rank_in(n, 0)
        axis = attrs(node).get("axis", -1 if self.opset >= 13 else 1) % r
        for a in range(r):
            if a < axis or (self.opset >= 13 and a != axis):
                self.link(n, self.I(n, 0, a), self.O(n, 0, a))
        return f"{node.op_type} normalises over the axis"

    op_Softmax = op_LogSoftmax = op_Hardmax = _softmax

    def _argreduce(self, n, node):
        r = self.rank_in(n, 0)
        at = attrs(node)
        axis = at.get("axis", 0) % r
        keep = at.get("keepdims", 1)
        o = 0
        for a in range(r):
            if a == axis:
                o += keep
                continue
            self.link(n, self.I(n, 0, a), self.O(n, 0, o))
            o += 1
        return f"{node.op_type} returns positions along the axis"

    op_ArgMax = op_ArgMin = _argreduce

    def op_BatchNormalization(self, n, node):
        if len([o for o in node.output if o]) > 1:
            return "training-mode outputs"
        for a in range(self.rank_in(n, 0)):
            self.link(n, self.I(n, 0, a), self.O(n, 0, a))
        y = self.O(n, 0, 1)
        for i in range(1, 5):
            d = self.I(n, i, 0)
            self.link(n, d, y)
            self.role(d, "norm" if i == 1 else "param")

    def op_InstanceNormalization(self, n, node):
        for a in range(self.rank_in(n, 0)):
            self.link(n, self.I(n, 0, a), self.O(n, 0, a))
        for i in (1, 2):
            d = self.I(n, i, 0)
            self.link(n, d, self.O(n, 0, 1))
            self.role(d, "norm" if i == 1 else "param")

    def op_LayerNormalization(self, n, node):
        r = self.rank_in(n, 0)
        axis = attrs(node).get("axis", -1) % r
        for a in range(r):
            self.link(n, self.I(n, 0, a), self.O(n, 0, a))
            for j in (1, 2):
                if self.rank_out(n, j) == r and a < axis:
                    self.link(n, self.I(n, 0, a), self.O(n, j, a))
        for i in (1, 2):
            ri = self.rank_in(n, i)
            if ri is None:
                continue
            for a in range(ri):
                d = self.I(n, i, a)
                self.link(n, d, self.O(n, 0, a + r - ri))
                self.role(d, "norm" if i == 1 else "param")
        self.dim_notes += [(d, f"LayerNormalization {node.name!r}: pruning its normalised axis changes its statistics")
                           for d in (self.I(n, 0, a) for a in range(axis, r)) if d is not None]

    def op_DequantizeLinear(self, n, node):
        r = self.rank_in(n, 0)
        for a in range(r):
            self.link(n, self.I(n, 0, a), self.O(n, 0, a))
        axis = attrs(node).get("axis", 1) % max(r, 1)
        for i in (1, 2):
            if self.rank_in(n, i) == 1:
                self.link(n, self.I(n, i, 0), self.O(n, 0, axis))

    op_QuantizeLinear = op_DequantizeLinear

    def op_Gather(self, n, node):
        data_shape = self.shape_of(node.input[0])
        idx_shape = self.shape_of(node.input[1])
        if data_shape is None or idx_shape is None:
            return "shapes unknown"
        axis = attrs(node).get("axis", 0) % len(data_shape)
        const = node.input[0] in self.const_derived
        for a in range(len(data_shape)):
            if a == axis:
                continue
            o = a if a < axis else a - 1 + len(idx_shape)
            d = self.O(n, 0, o)
            di = self.I(n, 0, a)
            self.link(n, di, d)
            if const and node.input[0] not in self.shape_derived:
                self.role(di, "out", root=False)
        for a in range(len(idx_shape)):
            self.link(n, self.I(n, 1, a), self.O(n, 0, axis + a))
        return "positions along the gathered axis are data"

    # -- layers ------------------------------------------------------------------------------
    # (conv, matmul and recurrent layers link their channels in their op specs: OpSpec.link_channels)
    def is_const(self, name: str) -> bool:
        """`name` is a constant or computed from constants only (not from shapes)."""
        return bool(name) and name in self.const_derived and name not in self.shape_derived

    def slot(self, n: int, side: str, size: int) -> Dim:
        """The per-group channel slots of grouped conv node n on `side` ("in" | "out")."""
        slot: Dim = SlotDim(n, side)
        name = self.g.node[n].name or f"{self.g.node[n].op_type}#{n}"
        self.sizes[slot] = size
        self.meta[slot] = ("slot", name, 0, name, self.g.node[n].op_type)
        self.roles[slot] = "slot"
        return slot

    def hidden(self, n: int, size: int, root: bool) -> Dim:
        """The hidden units of recurrent node n (a root when its weights are constant)."""
        node = self.g.node[n]
        h: Dim = HiddenDim(n)
        self.sizes[h] = size
        self.meta[h] = ("hidden", node.name or f"{node.op_type}#{n}", 0, node.name or f"{node.op_type}#{n}", node.op_type)
        if root:
            self.roots.add(h)
        self.roles[h] = "hidden"
        return h

    def fixup(self, kind: str, n: int, dims: list, params: dict) -> None:
        self.fixups.append(Fixup(kind, n, dims, params))


    # -- shape vector provenance -------------------------------------------------------------
    def trace_element(self, n: int, i: int, element: int, depth: int = 0) -> ElementSource:
        """Where element `element` of node n's input i comes from."""
        node = self.g.node[n]
        if i >= len(node.input) or not node.input[i]:
            return ElementSource("unknown", "is missing")
        name = node.input[i]
        if name in self.consts:
            try:
                v = np.ravel(constant_array(self.consts[name]))
            except ValueError:
                return ElementSource("unknown", "is in a Constant of an unsupported form")
            if element >= v.size:
                return ElementSource("unknown", "is out of range")
            return ElementSource("const", const=name, flat=element, node=n, input=i, value=int(v[element]))
        if depth > 32:
            return ElementSource("unknown", "is computed by a long chain")
        p = self.producer.get(name)
        if p is None:
            return ElementSource("unknown", "comes from a graph input")
        pn = self.g.node[p]
        op = pn.op_type
        if op in ("Cast", "Identity"):
            return self.trace_element(p, 0, element, depth + 1)
        if op == "Concat":
            off = 0
            for k, piece in enumerate(pn.input):
                s = self.shape_of(piece)
                if s is None or len(s) != 1:
                    return ElementSource("dynamic") if name in self.shape_derived else ElementSource("unknown", "is built by a Concat of unknown pieces")
                if element < off + s[0]:
                    return self.trace_element(p, k, element - off, depth + 1)
                off += s[0]
            return ElementSource("unknown", "is out of range")
        if op in ("Unsqueeze", "Squeeze", "Reshape", "Flatten"):
            s = self.shape_of(pn.input[0])
            if s is not None and int(np.prod(s)) == 1:
                return self.trace_element(p, 0, 0, depth + 1)
        if name in self.shape_derived:
            return ElementSource("dynamic")
        return ElementSource("unknown", f"is computed at run time by {op} node {pn.name!r}")

    # -- components --------------------------------------------------------------------------
    def resolve_pending(self) -> None:
        changed = True
        while self.pending and changed:
            changed = False
            rooted = self._rooted_dims()
            rest = []
            for p in self.pending:
                if p.single is None:
                    continue
                cands = [(d, idx, small) for d, idx, small in p.candidates if d is not None]
                rc = [c for c in cands if c[0] in rooted]
                pick = None
                if len(rc) == 1:
                    pick = rc[0]
                elif len(rc) > 1:
                    self.blocked.setdefault(p.single, f"{self.g.node[p.node].op_type} node {self.g.node[p.node].name!r} "
                                                      "mixes several channel groups into one axis")
                    changed = True
                    continue
                elif p.single in rooted and cands:
                    # axes the next ops can follow first (a Conv follows channels, not width), then
                    # the preferred factor (attention: head_dim or heads)
                    order = sorted(range(len(cands)), key=lambda j: p.strides[j])
                    if self.prefer != "inner":
                        order.reverse()
                    order.sort(key=lambda j: not self._followable(cands[j][0], p.node))
                    pick = cands[order[0]]
                if pick is None:
                    rest.append(p)
                    continue
                d, idx, single_small = pick
                if single_small:
                    self.link(p.node, p.single, d, idx)
                else:
                    self.link(p.node, d, p.single, idx)
                changed = True
            self.pending = rest  # what is never decided stays unhandled by its reshape

    def _followable(self, d: Dim, reshape: int) -> bool:
        """Does every op reading activation dim `d` (other than `reshape`) handle that axis?"""
        return d.kind == "v" and all((k, d) in self.handled for k, node in enumerate(self.g.node)
                                   if k != reshape and d.value in node.input)

    def _rooted_dims(self) -> set[Dim]:
        import networkx as nx  # here, not at the top: the plain pruning path does without it (start-up time)

        graph = nx.Graph()
        graph.add_nodes_from(self.sizes)
        graph.add_edges_from((a, b) for a, b, _ in self.links)
        rooted = set()
        for comp in nx.connected_components(graph):
            if comp & self.roots:
                rooted |= comp
        return rooted

    def _layers_of(self, m: Member) -> list[str]:
        """The layer(s) a weight member belongs to: the node reading a constant, or, for a weight
        computed at run time (e.g. DequantizeLinear of a stored int8 tensor), the layers reading it."""
        if m.kind != "value":
            return [m.node]
        return [n.name or f"{n.op_type}#{k}" for k, n in enumerate(self.g.node)
                if _is_layer(n) and m.tensor in n.input[1:3]]

    def groups(self) -> list[ChannelGroup]:
        import networkx as nx  # these three here, not at the top: the plain pruning path does without them
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        graph = nx.Graph()
        graph.add_nodes_from(self.sizes)
        for a, b, idx in self.links:
            graph.add_edge(a, b)
        order = {d: i for i, d in enumerate(self.sizes)}  # graph order of first appearance
        comps = [sorted(c, key=order.get) for c in nx.connected_components(graph) if set(c) & self.roots]
        comps.sort(key=lambda c: order[c[0]])
        out = []
        for gid, dims in enumerate(comps):
            base, total = {}, 0
            for d in dims:
                base[d] = total
                total += self.sizes[d]
            rows, cols = [np.arange(total)], [np.arange(total)]
            dimset = set(dims)
            for a, b, idx in self.links:
                if a not in dimset:
                    continue
                if idx is None:
                    rows.append(base[a] + np.arange(self.sizes[a]))
                    cols.append(base[b] + np.arange(self.sizes[b]))
                else:
                    rows.append(base[a] + np.repeat(np.arange(idx.shape[0]), idx.shape[1]))
                    cols.append(base[b] + idx.ravel())
            r, c = np.concatenate(rows), np.concatenate(cols)
            mat = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(total, total))
            _, labels = connected_components(mat, directed=False)
            # channel ids in order of the first root dim's positions
            roots = [d for d in dims if d in self.roots]
            first = []
            for d in roots + dims:
                first.append(labels[base[d]: base[d] + self.sizes[d]])
            seq = np.concatenate(first)
            _, first_pos = np.unique(seq, return_index=True)
            uniq = np.unique(seq)
            rank = np.empty(labels.max() + 1, dtype=np.int64)
            rank[uniq[np.argsort(first_pos)]] = np.arange(len(uniq))
            labels = rank[labels]
            nch = len(uniq)
            frozen = np.zeros(nch, dtype=bool)
            has_root = np.zeros(nch, dtype=bool)
            reasons = []
            members = []
            sig: list[set] = [set() for _ in range(nch)]
            for j, d in enumerate(dims):
                ch = labels[base[d]: base[d] + self.sizes[d]]
                for cid in np.unique(ch):
                    sig[cid].add(j)
                if d in self.roots:
                    has_root[ch] = True
                if d in self.blocked:
                    frozen[ch] = True
                    if self.blocked[d] not in reasons:
                        reasons.append(self.blocked[d])
                kind, tensor, axis, node, op = self.meta[d]
                role = self.roles.get(d, "act" if kind == "value" else "param")
                members.append(Member(d, kind, tensor, axis, self.sizes[d], node, op, role, ch))
            if (~has_root).any():
                frozen[~has_root] = True
                reasons.append(f"{int((~has_root).sum())} channel(s) are not produced by a layer with constant weights")
            segs: dict[tuple, list[int]] = {}
            for cid in range(nch):
                segs.setdefault(tuple(sorted(sig[cid])), []).append(cid)
            producers = list(dict.fromkeys(layer for m in members if m.role in ("out", "hidden")
                                           for layer in self._layers_of(m)))
            consumers = list(dict.fromkeys(layer for m in members if m.role == "in" for layer in self._layers_of(m)))
            out.append(ChannelGroup(gid, nch, members, [np.array(s) for s in segs.values()], frozen, reasons,
                                    producers, consumers))
        return out


def analyze_groups(proto: onnx.ModelProto, feed: dict[str, np.ndarray] | None = None, *,
                   shapes: dict[str, tuple[int, ...]] | None = None, values: dict[str, np.ndarray] | None = None,
                   base_dir: str | None = None, prefer: str = "inner") -> GroupAnalysis:
    """Channel groups of the main graph. `feed` (one batch of real or synthetic inputs) gives the
    shapes of every tensor (`value_shapes`), unless `shapes`/`values` are given.
    `prefer`: when a Reshape splits a channel axis into several (heads x head_dim), which factor
    carries the channels: "inner" (head_dim) or "outer" (heads).

    Example::

        model = load_model("m.onnx")
        for g in analyze_groups(model.proto, shapes={"x": (1, 3, 224, 224)}).groups:
            print(g.name, g.prunable)
    """
    if shapes is None:
        if feed is None:
            raise ValueError("analyze_groups needs a feed (one batch of inputs) or precomputed shapes")
        shapes, values = value_shapes(proto, feed, base_dir)
    b = _Builder(proto, shapes, values or {}, prefer)
    b.build()
    b.resolve_pending()
    b.finish()
    groups = b.groups()
    quantized_layers = [n.op_type for n in proto.graph.node if is_quantized_layer(n)]
    if quantized_layers:
        quantized, count = sorted(set(quantized_layers)), len(quantized_layers)
        b.notes.append(f"{count} layer(s) are quantized operators ({', '.join(quantized)}), which channel pruning "
                       "does not rewrite: prune the float model, then quantize it")
    for node in proto.graph.node:
        if inner := _subgraph_layers(node):
            b.notes.append(f"{node.op_type} node {node.name!r}: its subgraphs hold {inner} layer(s) with weights; "
                           "structured pruning rewrites the main graph only, so they keep their channels")
    return GroupAnalysis(groups, b.fixups, shapes, b.blocked, b.sizes, list(dict.fromkeys(b.notes)), b.dim_notes)


def _is_layer(node: onnx.NodeProto) -> bool:
    """A float layer with weights: an op with a spec that is not an integer op."""
    spec = spec_for(node.op_type, node.domain)
    return spec is not None and spec.view_of is None


def _subgraph_layers(node: onnx.NodeProto) -> int:
    """How many weight layers (Conv, Gemm, MatMul, LSTM, ...) the node's subgraphs hold, nested ones included."""
    count = 0
    for a in node.attribute:
        for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            for inner in g.node:
                count += _is_layer(inner) + _subgraph_layers(inner)
    return count


def sample_feed(proto: onnx.ModelProto, data=None, base_dir: str | None = None) -> tuple[dict[str, np.ndarray], FeedShapes]:
    """One feed and where its shapes came from: the first batch of `data` (a Dataset), else a synthetic
    one at the shapes onnxprune.core.shapes resolves (which may be guessed, and then say so)."""
    if data is not None:
        return next(iter(data.batches(1))), data.feed_shapes
    shapes = resolve_feed_shapes(proto, base_dir=base_dir)
    arrays = random_feeds(input_specs(proto), shapes.shapes, 1, 0, {})
    return {k: np.asarray(v[0]) for k, v in arrays.items()}, shapes


def model_macs(proto: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Multiply-accumulates per weight layer from concrete shapes (one run with a real input), as each
    op's spec counts them."""
    consts = constant_values(proto.graph)

    def shape_of(name):
        return constant_shape(consts[name]) if name in consts else shapes.get(name)

    macs = {}
    for i, n in enumerate(proto.graph.node):
        spec = spec_for(n.op_type, n.domain)
        count = spec.macs(n, shape_of) if spec is not None else None
        if count is not None:
            macs[n.name or f"{n.op_type}#{i}"] = count
    return macs
