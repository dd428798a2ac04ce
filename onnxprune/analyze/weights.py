"""Find every prunable weight, the chain it reaches its op through, and its matrix view.

A prunable weight is a constant tensor feeding a weight input of an op with a spec in onnxprune.ops
(MatMul, Gemm, Conv, ConvTranspose, LSTM/GRU/RNN and their quantized forms), directly or through
Transpose, Cast, Reshape, Squeeze, Unsqueeze, Identity and DequantizeLinear, or Mul(Cast(integer
weight), constant scale) as some exporters write weight-only quantization; integer weights of
quantized ops carry their zero point. Its *matrix view* is the 2-D matrix (output units x reduction)
that N:M groups and blocks use, with the axes the op's spec gives; the reduction axis is the one the op
sums over, with N:M groups running along the input channels for Conv (design notes).
Constants the pruner cannot touch are listed with the reason. This module never changes a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune.core.graph import NodeRef, subgraph_name, unique_path
from onnxprune.core.model import Model, np_dtype
from onnxprune.core.quant import quant_params
from onnxprune.ops import spec_for

PASS_THROUGH = {"Transpose", "Cast", "Reshape", "Squeeze", "Unsqueeze", "Identity", "DequantizeLinear"}
# chain steps that make the stored values quantized: DequantizeLinear; Mul(Cast(integer constant), constant
# scale), the symmetric weight-only quantization some exporters write by hand; an integer op's zero point
QUANT_STEPS = ("DequantizeLinear", "ScaleMul", "ZeroPoint")
_INTEGER_TYPES = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16,
                  onnx.TensorProto.INT4, onnx.TensorProto.UINT4}


@dataclass(frozen=True)
class Step:
    """One op between the stored tensor and the weight input: forward maps stored -> op layout."""

    op: str
    node: str
    perm: tuple[int, ...] | None = None  # Transpose
    shape: tuple[int, ...] | None = None  # Reshape/Squeeze/Unsqueeze: output shape
    in_shape: tuple[int, ...] | None = None
    to: int | None = None  # Cast target (onnx elem type)
    scale: str | None = None  # DequantizeLinear scale / zero-point keys, quantization axis
    zero_point: str | None = None
    axis: int | None = None

    def forward(self, a: np.ndarray) -> np.ndarray:
        if self.perm is not None:
            return np.transpose(a, self.perm)
        if self.shape is not None:
            return a.reshape(self.shape)
        return a

    def inverse(self, a: np.ndarray) -> np.ndarray:
        if self.perm is not None:
            return np.transpose(a, np.argsort(self.perm))
        if self.shape is not None:
            return a.reshape(self.in_shape)
        return a


@dataclass(frozen=True)
class Use:
    """One node applying a weight: its name, op, the input the weight feeds and that input's role."""

    node: str
    op: str
    input_index: int
    role: str
    ref: NodeRef

    @property
    def graph(self) -> str:
        return self.ref.graph

    def resolve(self, graph: onnx.GraphProto) -> onnx.NodeProto | None:
        """This use's node in the model whose main graph is `graph` (None if it is no longer there)."""
        node = self.ref.resolve(graph)
        return node if node is not None and (node.op_type, node.name) == (self.op, self.node) else None


@dataclass
class Weight:
    """A prunable constant: where it is stored, who uses it, and how to view it as a matrix."""

    key: str
    storage: str
    graph: str
    dtype: np.dtype
    shape: tuple[int, ...]
    uses: list[Use]
    chain: tuple[Step, ...]
    op_shape: tuple[int, ...]
    row_axes: tuple[int, ...]  # op-layout axes forming matrix rows (output units)
    col_axes: tuple[int, ...]  # op-layout axes forming the reduction; the last one is the N:M axis
    other_uses: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def params(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def op(self) -> str:
        return self.uses[0].op

    @property
    def rows(self) -> int:
        return int(np.prod([self.op_shape[a] for a in self.row_axes], dtype=np.int64))

    @property
    def cols(self) -> int:
        return int(np.prod([self.op_shape[a] for a in self.col_axes], dtype=np.int64))

    @property
    def group_axis_len(self) -> int:
        """Length of the axis N:M groups run along (input channels for Conv)."""
        return self.op_shape[self.col_axes[-1]]

    @property
    def quant(self) -> Step | None:
        """The step that makes the stored values quantized: DequantizeLinear, or an integer op's zero point."""
        return next((s for s in self.chain if s.op in QUANT_STEPS), None)

    @property
    def reduction_axes(self) -> tuple[int, ...] | None:
        """Reduction axes in the stored tensor's layout (None when a reshape hides them)."""
        axes = list(self.col_axes)
        for step in reversed(self.chain):
            if step.shape is not None:
                return None
            if step.perm is not None:
                axes = [step.perm[a] for a in axes]
        return tuple(sorted(axes))

    def to_op(self, stored: np.ndarray) -> np.ndarray:
        for step in self.chain:
            stored = step.forward(stored)
        return stored

    def to_stored(self, op_layout: np.ndarray) -> np.ndarray:
        for step in reversed(self.chain):
            op_layout = step.inverse(op_layout)
        return op_layout

    def matrix(self, stored: np.ndarray) -> np.ndarray:
        """The (rows x reduction) view of a stored-layout array (a copy only when needed)."""
        return np.transpose(self.to_op(stored), self.row_axes + self.col_axes).reshape(self.rows, self.cols)

    def unmatrix(self, matrix: np.ndarray) -> np.ndarray:
        """Inverse of `matrix`: back to the stored layout."""
        perm = self.row_axes + self.col_axes
        op_layout = matrix.reshape([self.op_shape[a] for a in perm]).transpose(np.argsort(perm))
        return self.to_stored(op_layout)

    def describe(self) -> dict:
        return {
            "name": self.key,
            "storage": self.storage,
            "graph": self.graph,
            "dtype": str(self.dtype),
            "shape": list(self.shape),
            "params": self.params,
            "ops": [f"{u.op}:{u.role}" for u in self.uses],
            "nodes": [u.node for u in self.uses],
            "chain": [s.op for s in self.chain],
            "reduction_axes": list(self.reduction_axes) if self.reduction_axes is not None else None,
            "matrix": [self.rows, self.cols],
            "group_axis_len": self.group_axis_len,
            "quantized": self.quant is not None,
            "other_uses": self.other_uses,
            "notes": self.notes,
        }


@dataclass
class Unprunable:
    """A weight input the pruner leaves alone, and why."""

    name: str
    node: str
    op: str
    role: str
    reason: str
    foldable: bool = False

    def describe(self) -> dict:
        return {"name": self.name, "node": self.node, "op": self.op, "role": self.role,
                "reason": self.reason, "foldable": self.foldable}


@dataclass
class Analysis:
    weights: list[Weight]
    unprunable: list[Unprunable]

    def by_key(self) -> dict[str, Weight]:
        return {w.key: w for w in self.weights}

    @property
    def foldable(self) -> list[Unprunable]:
        return [u for u in self.unprunable if u.foldable]


def _integer_zero_point(tracer: "_Tracer", node: gs.Node, path: str, inputs: tuple[int, int | None], axis: int,
                        steps: list[Step]) -> Step | str:
    """The zero point (and scale) of a quantized op's weight as a chain step (or why not prunable)."""
    if steps:
        return f"{node.op} weight reaches the op through {steps[0].op}; only stored integer weights are supported"
    zp_index, scale_index = inputs
    found = {}
    for what, index in (("zero point", zp_index), ("scale", scale_index)):
        if index is not None and index < len(node.inputs) and node.inputs[index].name:
            found[what] = tracer.storage_of(node.inputs[index], path)
            if found[what] is None:
                return f"{node.op} {node.name!r} has a run-time {what}"
    return Step("ZeroPoint", node.name, scale=found.get("scale"), zero_point=found.get("zero point"), axis=axis)


def _const_shape(t) -> tuple[int, ...] | None:
    if isinstance(t, gs.Constant):
        return tuple(int(v) for v in np.asarray(t.values).reshape(-1))
    if isinstance(t, gs.Variable) and len(t.inputs) == 1 and t.inputs[0].op == "Constant":
        return tuple(int(v) for v in np.asarray(t.inputs[0].attrs["value"].values).reshape(-1))
    return None


def _reshape_target(in_shape: tuple[int, ...], spec: tuple[int, ...], allowzero: int) -> tuple[int, ...]:
    out = [in_shape[i] if (d == 0 and not allowzero) else d for i, d in enumerate(spec)]
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1], dtype=np.int64))
        out[out.index(-1)] = int(np.prod(in_shape, dtype=np.int64)) // max(known, 1)
    return tuple(out)


class _Tracer:
    def __init__(self, model: Model, graph: gs.Graph):
        self.model = model
        self.graph = graph
        self.graph_of: dict[int, str] = {}  # id(node) -> graph path
        self.ref_of: dict[int, NodeRef] = {}
        self.node_list: list[gs.Node] = []
        self._seen: set[str] = {""}
        self._collect(graph, "")

    def _collect(self, graph: gs.Graph, path: str) -> None:
        for index, node in enumerate(graph.nodes):
            self.graph_of[id(node)] = path
            self.ref_of[id(node)] = NodeRef(path, index)
            self.node_list.append(node)
            for attr_name, value in node.attrs.items():
                subs = value if isinstance(value, list) else [value]
                subs = [s for s in subs if isinstance(s, gs.Graph)]
                for i, sub in enumerate(subs):
                    name = subgraph_name(sub.name, node.name, node.op, attr_name, i, len(subs))
                    self._collect(sub, unique_path(f"{path}/{name}" if path else name, self._seen))

    def storage_of(self, tensor, graph_path: str) -> str | None:
        """Key of the constant this tensor *is* (an initializer or a Constant node's output)."""
        if isinstance(tensor, gs.Constant):
            return self.model.key_for(tensor.name, graph_path)
        if isinstance(tensor, gs.Variable) and len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
            producer = tensor.inputs[0]
            return self.model.key_for(tensor.name, self.graph_of.get(id(producer), graph_path))
        return None

    def trace(self, tensor, graph_path: str) -> tuple[str | None, list[Step], str]:
        """Walk from an op input up to its stored constant through pass-through ops.

        Returns (key, steps from stored to op, reason when no key)."""
        steps: list[Step] = []
        while True:
            key = self.storage_of(tensor, graph_path)
            if key is not None:
                steps.reverse()
                return key, steps, ""
            if not isinstance(tensor, gs.Variable) or not tensor.inputs:
                steps.reverse()
                if not any(tensor is i for i in self.graph.inputs):
                    return None, steps, "is computed at run time"
                if steps:  # e.g. the Transpose of an input
                    return None, steps, f"is computed at run time from graph input {tensor.name!r}"
                return None, steps, "is a graph input"
            node = tensor.inputs[0]
            scaled = self._scale_mul(node, graph_path)
            if scaled is not None:
                steps.append(scaled[0])
                tensor = scaled[1]
                continue
            if node.op not in PASS_THROUGH:
                steps.reverse()
                return None, steps, f"is computed at run time by {node.op} node {node.name!r}"
            step = self._step(node)
            if isinstance(step, str):
                steps.reverse()
                return None, steps, step
            steps.append(step)
            tensor = node.inputs[0]

    def _scale_mul(self, node: gs.Node, graph_path: str):
        """(ScaleMul step, the Cast output) when `node` is Mul(Cast(stored integer weight), stored scale)
        with a scalar or one-axis scale; else None."""
        if node.op != "Mul" or len(node.inputs) != 2:
            return None
        for cast_out, scale in (node.inputs, node.inputs[::-1]):
            producer = cast_out.inputs[0] if isinstance(cast_out, gs.Variable) and len(cast_out.inputs) == 1 else None
            if producer is None or producer.op != "Cast":
                continue
            q_key = self.storage_of(producer.inputs[0], graph_path)
            scale_key = self.storage_of(scale, graph_path)
            if q_key is None or scale_key is None:
                continue
            q, sc = self.model.ref(q_key).proto, self.model.ref(scale_key).proto
            if q.data_type not in _INTEGER_TYPES or sc.data_type in _INTEGER_TYPES or len(sc.dims) > len(q.dims):
                continue
            aligned = [1] * (len(q.dims) - len(sc.dims)) + list(sc.dims)
            axes = [a for a, d in enumerate(aligned) if d != 1]
            if len(axes) > 1 or any(aligned[a] != q.dims[a] for a in axes):
                continue
            return Step("ScaleMul", node.name, scale=scale_key, axis=axes[0] if axes else 0), cast_out
        return None

    def _step(self, node: gs.Node) -> Step | str:
        op = node.op
        src = node.inputs[0]
        in_shape = self._shape(src, self.graph_of.get(id(node), ""))
        if op == "Transpose":
            perm = node.attrs.get("perm")
            if perm is None and in_shape is not None:
                perm = list(reversed(range(len(in_shape))))
            if perm is None:
                return f"Transpose {node.name!r} has an unknown permutation"
            return Step(op, node.name, perm=tuple(int(p) for p in perm))
        if op in ("Cast", "Identity"):
            return Step(op, node.name, to=node.attrs.get("to"))
        if op == "DequantizeLinear":
            path = self.graph_of.get(id(node), "")
            scale = self.storage_of(node.inputs[1], path)
            zp = self.storage_of(node.inputs[2], path) if len(node.inputs) > 2 and node.inputs[2].name else None
            if scale is None or (len(node.inputs) > 2 and node.inputs[2].name and zp is None):
                return f"DequantizeLinear {node.name!r} has a run-time scale or zero point"
            return Step(op, node.name, scale=scale, zero_point=zp, axis=int(node.attrs.get("axis", 1)))
        # Reshape / Squeeze / Unsqueeze: need the output shape
        out_shape = self._reshaped(node, in_shape)
        if out_shape is None:
            return f"{op} {node.name!r} has a shape only known at run time"
        return Step(op, node.name, shape=out_shape, in_shape=in_shape)

    def _shape(self, tensor, graph_path: str) -> tuple[int, ...] | None:
        key = self.storage_of(tensor, graph_path)
        if key is not None:
            return tuple(self.model.ref(key).proto.dims)
        scaled = self._scale_mul(tensor.inputs[0], graph_path) if isinstance(tensor, gs.Variable) and tensor.inputs else None
        if scaled is not None:
            return self._shape(scaled[1], graph_path)
        if isinstance(tensor, gs.Variable) and tensor.inputs and tensor.inputs[0].op in PASS_THROUGH:
            node = tensor.inputs[0]
            src = self._shape(node.inputs[0], graph_path)
            if src is None:
                return None
            if node.op == "Transpose":
                perm = node.attrs.get("perm") or list(reversed(range(len(src))))
                return tuple(src[p] for p in perm)
            if node.op in ("Cast", "Identity", "DequantizeLinear"):
                return src
            return self._reshaped(node, src)
        return None

    def _reshaped(self, node: gs.Node, in_shape) -> tuple[int, ...] | None:
        if in_shape is None:
            return None
        if node.op == "Reshape":
            spec = _const_shape(node.inputs[1]) if len(node.inputs) > 1 else None
            return None if spec is None else _reshape_target(in_shape, spec, node.attrs.get("allowzero", 0))
        axes = node.attrs.get("axes")
        if axes is None and len(node.inputs) > 1 and node.inputs[1].name:
            axes = _const_shape(node.inputs[1])
            if axes is None:
                return None
        if node.op == "Squeeze":
            if axes is None:
                return tuple(d for d in in_shape if d != 1)
            axes = {a % len(in_shape) for a in axes}
            return tuple(d for i, d in enumerate(in_shape) if i not in axes)
        if node.op == "Unsqueeze":
            rank = len(in_shape) + len(axes)
            axes = {a % rank for a in axes}
            it = iter(in_shape)
            return tuple(1 if i in axes else next(it) for i in range(rank))
        return None

    def constant_cone(self, tensor) -> tuple[bool, str]:
        """Is this tensor computed from constants alone? (foldable) and, if not, why."""
        seen: set[int] = set()
        stack = [tensor]
        while stack:
            t = stack.pop()
            if id(t) in seen:
                continue
            seen.add(id(t))
            if isinstance(t, gs.Constant) or (isinstance(t, gs.Variable) and not t.name):
                continue
            if not t.inputs:
                return False, f"depends on graph input {t.name!r}"
            node = t.inputs[0]
            if node.op == "Constant":
                continue
            if node.op in ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"):
                return False, f"depends on random op {node.name!r}"
            if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
                return False, f"depends on control flow node {node.name!r}"
            stack.extend(node.inputs)
        return True, ""


def find_weights(model: Model) -> Analysis:
    """All prunable weights of `model` (one entry per stored tensor) and the unprunable ones.

    Example::

        for w in find_weights(load_model("samples/digits_mlp.onnx")).weights:
            print(w.key, w.op, w.shape, w.reduction_axes)
    """
    graph = model.graph()
    tracer = _Tracer(model, graph)
    weights: dict[str, Weight] = {}
    unprunable: list[Unprunable] = []
    consumers: dict[str, list[str]] = {}
    for node in tracer.node_list:
        path = tracer.graph_of[id(node)]
        for i, t in enumerate(node.inputs):
            key = tracer.storage_of(t, path)
            if key is not None:
                consumers.setdefault(key, []).append(f"{node.op}:{node.name}")
        spec = spec_for(node.op, node.domain)
        if spec is None:
            continue
        constant_a = False
        for index, role in spec.weight_inputs.items():
            if index >= len(node.inputs) or not node.inputs[index].name:
                continue
            tensor = node.inputs[index]
            key, steps, reason = tracer.trace(tensor, path)
            constant_a = constant_a or (role == "A" and key is not None)
            if key is None:
                if role == "A" or constant_a:
                    continue  # the activation side of a matmul, not a weight
                foldable, why = tracer.constant_cone(tensor)
                if foldable:
                    reason = "computed from constants only: foldable (use --fold-constants)"
                elif why:
                    reason = f"{reason}; {why}" if "graph input" not in reason else reason
                unprunable.append(Unprunable(tensor.name, node.name, node.op, role, reason, foldable))
                continue
            stored_shape = tuple(model.ref(key).proto.dims)
            op_shape = stored_shape
            for s in steps:
                op_shape = tuple(np.empty(op_shape, dtype=np.bool_).transpose(s.perm).shape) if s.perm else (s.shape or op_shape)
            if len(op_shape) < spec.min_rank:
                unprunable.append(Unprunable(key, node.name, node.op, role,
                                             f"weight of rank {len(op_shape)} (a vector) is not a matrix"))
                continue
            axes = spec.view_axes(role, len(op_shape), node.attrs)
            if spec.zero_point(role) is not None:
                step = _integer_zero_point(tracer, node, path, spec.zero_point(role), axes[0][-1], steps)
                if isinstance(step, str):
                    unprunable.append(Unprunable(key, node.name, node.op, role, step))
                    continue
                steps = steps + [step]
            use = Use(node.name, node.op, index, role, tracer.ref_of[id(node)])
            if key in weights:
                w = weights[key]
                w.uses.append(use)
                if (tuple(steps), axes) != (w.chain, (w.row_axes, w.col_axes)):
                    w.notes.append(f"also used by {node.op} {node.name!r} with another layout; patterns follow the first use")
                continue
            weights[key] = Weight(
                key=key, storage=model.ref(key).storage, graph=model.ref(key).graph,
                dtype=np_dtype(model.ref(key).proto.data_type),
                shape=stored_shape, uses=[use], chain=tuple(steps), op_shape=op_shape,
                row_axes=axes[0], col_axes=axes[1],
            )
    for key, w in weights.items():
        prunable_nodes = {f"{u.op}:{u.node}" for u in w.uses}
        w.other_uses = sorted(set(consumers.get(key, [])) - prunable_nodes
                              - {c for c in consumers.get(key, []) if c.split(":")[0] in PASS_THROUGH})
        if w.other_uses:
            w.notes.append("also read by " + ", ".join(w.other_uses) + "; pruning changes those uses too")
    return Analysis(list(weights.values()), unprunable)  # in graph order of first use


# ------------------------------------------------------------------------- quantized weights

def dequant_params(weight: Weight, model) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero_point) of a quantized weight, broadcastable to its stored layout (integer ops have
    no scale here: one, applied later)."""
    q = weight.quant
    assert q is not None
    scale, zp = quant_params(model.read, q.scale, q.zero_point, q.axis, len(weight.shape), weight.dtype)
    return scale.astype(np.float32), zp


def zero_value(weight: Weight, model) -> np.ndarray:
    """The stored value that means "pruned": 0, or the zero point for quantized weights."""
    if weight.quant is None:
        return np.zeros((), dtype=weight.dtype)
    return dequant_params(weight, model)[1]
