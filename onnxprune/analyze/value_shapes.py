"""The shapes of a model's intermediate tensors, from one source for every caller (MAC counts in the
eligibility table and in channel pruning, channel analysis): onnx shape inference at the fed input
shapes, completed by one onnxruntime run that exposes only what inference leaves open (and the small
integer tensors whose values channel analysis reads, such as Reshape targets computed at run time)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
import onnx.version_converter
import onnxruntime as ort

from onnxprune.analyze.constants import constant_values
from onnxprune.core.errors import DataError, Opt
from onnxprune.core.graph import walk_graphs
from onnxprune.core.runtime import session

Shape = tuple  # dims, None for a dim inference could not fix
_INT_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32}


def inferred_shapes(proto: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]],
                    needed: Iterable[str] = ()) -> tuple[dict[str, Shape], dict[str, int]]:
    """({tensor: dims, None where unknown}, {tensor: element type}) from onnx shape inference with the
    inputs fixed to `input_shapes`, in every graph. Below opset 18, where a `needed` tensor is left
    open, inference runs again on a copy converted to opset 18 (it propagates shape values, Shape ->
    Gather -> Concat -> Reshape, better) and fills the gaps."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(proto)
    for inp in fixed.graph.input:
        if inp.name in input_shapes:
            for d, v in zip(inp.type.tensor_type.shape.dim, input_shapes[inp.name]):
                d.ClearField("dim_param")
                d.dim_value = int(v)
    shapes: dict[str, Shape] = {}
    types: dict[str, int] = {}
    _collect(onnx.shape_inference.infer_shapes(fixed, strict_mode=False, data_prop=True), shapes, types)
    opset = next((o.version for o in fixed.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 18 and any(shapes.get(n) is None or None in shapes[n] for n in needed):
        try:
            more: dict[str, Shape] = {}
            converted = onnx.version_converter.convert_version(fixed, 18)
            _collect(onnx.shape_inference.infer_shapes(converted, strict_mode=False, data_prop=True), more, types)
        except Exception:  # noqa: BLE001 - best effort: the gaps stay open
            more = {}
        for name, dims in more.items():
            old = shapes.get(name)
            if old is None or (None in old and None not in dims and len(old) == len(dims)):
                shapes[name] = dims
    return shapes, types


def _collect(inferred: onnx.ModelProto, shapes: dict, types: dict) -> None:
    for _, g in walk_graphs(inferred.graph):
        for vi in list(g.value_info) + list(g.output) + list(g.input):
            t = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
            if t is None:
                continue
            if t.elem_type:
                types[vi.name] = t.elem_type
            if t.HasField("shape"):
                shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                                        for d in t.shape.dim)


def value_shapes(proto: onnx.ModelProto, feed: dict[str, np.ndarray], base_dir: str | None = None, *,
                 names: Iterable[str] | None = None, keep_values: int = 64,
                 ) -> tuple[dict[str, tuple[int, ...]], dict[str, np.ndarray]]:
    """Exact shapes at `feed`: of the feed, of every tensor inference fixes (in any graph), and of each
    of `names` (default: every main-graph node output) that it leaves open, from one onnxruntime run on
    `feed`. With `keep_values`, that run also takes the integer outputs and returns the values of
    those of at most `keep_values` elements."""
    g = proto.graph
    consts = constant_values(g)
    if names is None:
        names = (o for n in g.node for o in n.output)
    wanted = list(dict.fromkeys(o for o in names if o and o not in feed and o not in consts))
    try:
        inferred, types = inferred_shapes(proto, {k: np.shape(v) for k, v in feed.items()}, wanted)
    except Exception:  # noqa: BLE001 - inference is best effort: onnxruntime gives the shapes then
        inferred, types = {}, {}
    shapes = {k: tuple(int(d) for d in v) for k, v in inferred.items() if None not in v}
    shapes.update((k, tuple(np.shape(v))) for k, v in feed.items())
    fetch = [name for name in wanted if name not in shapes
             or (keep_values and types.get(name, onnx.TensorProto.INT64) in _INT_TYPES)]
    values: dict[str, np.ndarray] = {}
    if fetch:
        for name, arr in zip(fetch, _run(proto, feed, fetch, base_dir)):
            arr = np.asarray(arr)
            shapes[name] = tuple(arr.shape)
            if arr.dtype.kind in "iu" and arr.size <= keep_values:
                values[name] = arr.copy()
    return shapes, values


def runtime_shapes(proto: onnx.ModelProto, feed: dict[str, np.ndarray], base_dir: str | None = None) -> dict[str, tuple[int, ...]]:
    """The shapes onnxruntime gives every main-graph node output at `feed`: a check of a rewritten
    model's shapes against the planned ones, not a source for analysis."""
    consts = constant_values(proto.graph)
    fetch = list(dict.fromkeys(o for n in proto.graph.node for o in n.output if o and o not in feed and o not in consts))
    shapes = {k: tuple(np.shape(v)) for k, v in feed.items()}
    shapes.update((name, tuple(np.shape(a))) for name, a in zip(fetch, _run(proto, feed, fetch, base_dir)))
    return shapes


def _run(proto: onnx.ModelProto, feed: dict[str, np.ndarray], fetch: list[str], base_dir: str | None) -> list:
    """One onnxruntime run of `proto` on `feed` with the tensors `fetch` as its outputs."""
    p = onnx.ModelProto()
    p.CopyFrom(proto)
    del p.graph.output[:]
    for name in fetch:
        p.graph.output.add().name = name
    del p.graph.value_info[:]
    sess = session(p.SerializeToString(), label="model (analysis run)", base_dir=base_dir, optimize=False)
    try:
        return sess.run(fetch, feed)
    except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidArgument,
            ort.capi.onnxruntime_pybind11_state.RuntimeException) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        shapes_given = ", ".join(f"{k}={'x'.join(map(str, np.shape(v)))}" for k, v in feed.items())
        raise DataError(f"onnxprune runs the model once to learn its shapes, and onnxruntime failed on "
                        f"inputs {shapes_given} ({first[:300]}); give real data (", Opt("data.calibration", "FILE"),
                        ") or larger shapes (", Opt("data.shapes", ["NAME=DIMS"]), ")") from e
