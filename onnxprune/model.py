"""Loading and atomic saving of ONNX models, external data, and weight access.

A `Model` holds the ONNX `ModelProto` (the weights stay in its TensorProtos; external data is
read tensor by tensor, never loaded whole) and gives numpy access to every constant tensor by a stable
key: initializers of the main graph and of subgraphs (If/Loop/Scan), and `Constant` node values.
Written values stay numpy arrays until someone needs the protos (`Model.proto`) or the model is
saved: a save streams them straight to the file, without a bytes copy in the proto.
Graph analysis goes through onnx-graphsurgeon (`Model.graph()`), which reads the same protos.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import onnx.defs
import onnx.helper
import onnx.numpy_helper
from google.protobuf.message import DecodeError

from onnxprune.atomic import atomic_files, atomic_open
from onnxprune.errors import ExternalDataError, ModelLoadError, OnnxPruneError

PROTOBUF_LIMIT = 2**31 - 1  # bytes: above this a model must keep its weights as external data
_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")


@dataclass(frozen=True)
class TensorRef:
    """Where a constant tensor lives: an initializer, or the `value` of a Constant node."""

    key: str  # unique name used across onnxprune (the tensor name as its consumers see it)
    graph: str  # name of the graph that stores it ("" = main graph)
    storage: str  # "initializer" | "constant-node"
    proto: onnx.TensorProto


def np_dtype(elem_type: int) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


def unique_path(path: str, seen: set[str]) -> str:
    """A subgraph's path, made unique: graph names may repeat (two Ifs with "then_branch"s), and
    the second gets "#2". Every walker visits subgraphs depth first in node and attribute order."""
    unique, n = path, 1
    while unique in seen:
        n += 1
        unique = f"{path}#{n}"
    seen.add(unique)
    return unique


def _walk_graphs(graph: onnx.GraphProto, path: str = "", seen: set[str] | None = None) -> Iterator[tuple[str, onnx.GraphProto]]:
    seen = {path} if seen is None else seen
    yield path, graph
    for node in graph.node:
        for attr in node.attribute:
            sub = []
            if attr.type == onnx.AttributeProto.GRAPH:
                sub = [attr.g]
            elif attr.type == onnx.AttributeProto.GRAPHS:
                sub = list(attr.graphs)
            for i, g in enumerate(sub):
                name = g.name or f"{node.name or node.op_type}.{attr.name}{i if len(sub) > 1 else ''}"
                yield from _walk_graphs(g, unique_path(f"{path}/{name}" if path else name, seen), seen)


def subgraph_outer_refs(node: onnx.NodeProto) -> set[str]:
    """Outer-scope names a node's subgraphs read."""
    refs: set[str] = set()
    for a in node.attribute:
        subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs) if a.type == onnx.AttributeProto.GRAPHS else []
        for g in subs:
            local = {i.name for i in g.input} | {t.name for t in g.initializer}
            for n in g.node:
                local |= set(n.output)
            for n in g.node:
                refs |= {i for i in n.input if i and i not in local}
                refs |= subgraph_outer_refs(n) - local
            refs |= {o.name for o in g.output if o.name not in local}
    return refs


class Model:
    """An ONNX model and its weights. Never writes to the file it was loaded from."""

    def __init__(self, proto: onnx.ModelProto, path: str | os.PathLike | None = None):
        self._proto = proto
        self._written: dict[str, np.ndarray] = {}  # key -> values written but not yet in the proto
        self.path = Path(path).resolve() if path else None
        self.base_dir = self.path.parent if self.path else Path.cwd()
        self._refs: dict[str, TensorRef] | None = None
        self._fds: dict[str, int] = {}  # open external-data files
        self._sources: set[Path] = {self.path} if self.path else set()  # files never to overwrite

    @property
    def proto(self) -> onnx.ModelProto:
        """The ModelProto, with every written value stored in its tensor."""
        for key in list(self._written):
            _set_raw(self.ref(key).proto, self._written[key])
            del self._written[key]  # only once the proto holds it
        return self._proto

    def set_metadata(self, props: dict[str, str]) -> None:
        """Set `metadata_props` entries (existing keys are updated in place, new ones appended)."""
        existing = {p.key: p for p in self._proto.metadata_props}
        for key, value in props.items():
            if key in existing:
                existing[key].value = value
            else:
                entry = self._proto.metadata_props.add()
                entry.key, entry.value = key, value

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike) -> "Model":
        """Load a model file; external data is validated and memory-mapped, not read."""
        path = Path(path)
        if not path.exists():
            raise ModelLoadError(f"{path}: no such file; give the path of an .onnx model")
        if not path.is_file():
            raise ModelLoadError(f"{path}: not a file; give the path of an .onnx model")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except (DecodeError, ValueError, RuntimeError, OSError) as e:
            raise ModelLoadError(f"{path}: not a valid ONNX model (truncated or not ONNX: {e})") from e
        if proto.ir_version == 0 or not proto.HasField("graph"):
            raise ModelLoadError(f"{path}: not a valid ONNX model (no IR version or graph); is it really an .onnx file?")
        model = cls(proto, path)
        model._check_opsets()
        for ref in model.tensors():
            if _is_external(ref.proto):
                model._sources.add(model._external_file(ref)[0])  # validates location, existence, bounds
        return model

    def _check_opsets(self) -> None:
        known = onnx.defs.onnx_opset_version()
        for op in self._proto.opset_import:
            if op.domain in ("", "ai.onnx") and op.version > known:
                raise ModelLoadError(
                    f"{self.path}: opset {op.version} is newer than this onnx package knows ({known}); "
                    f"upgrade onnx/onnxruntime or export with opset <= {known}"
                )

    # -- tensors -------------------------------------------------------------------------------
    def tensors(self) -> list[TensorRef]:
        """Every constant tensor of the model, main graph and subgraphs, with a unique key."""
        if self._refs is None:
            found: list[tuple[str, str, str, onnx.TensorProto]] = []
            for gpath, g in _walk_graphs(self._proto.graph):
                for t in g.initializer:
                    found.append((t.name, gpath, "initializer", t))
                for node in g.node:
                    if node.op_type == "Constant" and node.output:
                        for attr in node.attribute:
                            if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                                found.append((node.output[0], gpath, "constant-node", attr.t))
            counts: dict[str, int] = {}
            for name, *_ in found:
                counts[name] = counts.get(name, 0) + 1
            refs = {}
            for name, gpath, storage, t in found:
                key = name if counts[name] == 1 else f"{gpath}::{name}"
                refs[key] = TensorRef(key, gpath, storage, t)
            self._refs = refs
        return list(self._refs.values())

    def ref(self, key: str) -> TensorRef:
        self.tensors()
        try:
            return self._refs[key]  # type: ignore[index]
        except KeyError:
            raise OnnxPruneError(f"{self.path or 'model'}: no constant tensor named {key!r}") from None

    def key_for(self, name: str, graph: str = "") -> str | None:
        """The key of the constant tensor `name` as seen from graph `graph` (or an enclosing one)."""
        self.tensors()
        if name in self._refs:  # type: ignore[operator]
            return name
        scope = graph
        while True:
            key = f"{scope}::{name}"
            if key in self._refs:  # type: ignore[operator]
                return key
            if not scope:
                return None
            scope = scope.rpartition("/")[0]

    def read(self, key: str) -> np.ndarray:
        """The tensor's values in their stored dtype, read-only. External data is read with pread
        into a new array (a memory map would leave every touched page resident); a written tensor
        comes back as a view of the written array, which `set_entries` changes in place."""
        ref = self.ref(key)
        t = ref.proto
        dtype = np_dtype(t.data_type)
        shape = tuple(t.dims)
        if key in self._written:
            values = self._written[key].view()
        elif _is_external(t):
            file, offset, length = self._external_file(ref)
            values = np.empty(shape, dtype=dtype)
            _pread_into(self._fd(file), memoryview(values.reshape(-1).view(np.uint8)), offset)
        elif t.HasField("raw_data") and t.data_type != onnx.TensorProto.STRING:
            values = np.frombuffer(t.raw_data, dtype=dtype).reshape(shape)
        else:
            values = onnx.numpy_helper.to_array(t)
        values.flags.writeable = False
        return values

    def write(self, key: str, values: np.ndarray, *, hand_over: bool = False) -> None:
        """Replace a tensor's values (same shape; cast to the stored dtype); they are copied. With
        `hand_over`, a writable C-contiguous array of the stored dtype that owns its data is kept
        itself, without a copy, and made read-only: the caller gives it up."""
        t = self.ref(key).proto
        dtype = np_dtype(t.data_type)
        if tuple(values.shape) != tuple(t.dims):
            raise OnnxPruneError(f"tensor {key!r}: new values have shape {values.shape}, expected {tuple(t.dims)}")
        if not (hand_over and values.dtype == dtype and values.flags.c_contiguous and values.flags.owndata
                and values.flags.writeable):
            values = np.array(values, dtype=dtype, order="C")
        values.flags.writeable = False
        self._written[key] = values

    def set_entries(self, key: str, flat_index: np.ndarray, value: np.ndarray | float) -> None:
        """Set the entries at `flat_index` (row-major) to `value`, in place when the tensor's
        values are a written array (no copy of the tensor)."""
        values = self._written.get(key)
        if values is None:
            self.write(key, self.read(key))
            values = self._written[key]
        values.flags.writeable = True
        try:
            values.reshape(-1)[flat_index] = value
        finally:
            values.flags.writeable = False

    def weight_bytes(self) -> int:
        return sum(_nbytes(ref.proto) for ref in self.tensors())

    # -- external data -------------------------------------------------------------------------
    def _external_file(self, ref: TensorRef) -> tuple[Path, int, int]:
        info = {e.key: e.value for e in ref.proto.external_data}
        loc = info.get("location", "")
        where = f"{self.path}: tensor {ref.key!r} external data location {loc!r}"
        if not loc or os.path.isabs(loc) or ".." in Path(loc).parts:
            raise ExternalDataError(f"{where} must be a relative path inside the model's folder; refusing to read it")
        file = (self.base_dir / loc).resolve()
        if not file.is_relative_to(self.base_dir.resolve()):
            raise ExternalDataError(f"{where} resolves outside the model's folder ({file}); refusing to read it")
        if not file.is_file():
            raise ExternalDataError(f"{where}: file not found next to the model; copy the .data file with the model")
        t = ref.proto
        need = int(np.prod(tuple(t.dims), dtype=np.int64)) * np_dtype(t.data_type).itemsize
        try:
            offset, length = int(info.get("offset", 0)), int(info.get("length", need))
        except ValueError:
            raise ExternalDataError(f"{where}: offset {info.get('offset')!r} / length {info.get('length')!r} "
                                    "are not integers; the model file is corrupt") from None
        if offset < 0 or length < need or offset + length > file.stat().st_size:
            raise ExternalDataError(f"{where}: offset {offset} + length {length} is beyond the file or too short; the data file is truncated")
        return file, offset, need

    def _fd(self, file: Path) -> int:
        fd = self._fds.get(str(file))
        if fd is None:
            fd = self._fds[str(file)] = os.open(file, os.O_RDONLY)
        return fd

    def tensor_bytes(self, ref: TensorRef) -> bytes | memoryview:
        if ref.key not in self._written and ref.proto.HasField("raw_data"):
            return ref.proto.raw_data
        return memoryview(np.ascontiguousarray(self.read(ref.key)).reshape(-1).view(np.uint8))

    def __del__(self):
        for fd in getattr(self, "_fds", {}).values():
            os.close(fd)

    # -- saving --------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, external_data: bool | None = None) -> Path:
        """Write atomically. External data (`<name>.data` beside it) when asked or above 2 GiB."""
        path = Path(path)
        out = path.resolve()
        inputs = set(self._sources) | ({self.path} if self.path else set())
        inputs |= {self._external_file(r)[0] for r in self.tensors() if _is_external(r.proto)}
        data_path = out.with_name(out.name + ".data")
        if out in inputs or data_path in inputs:
            raise OnnxPruneError(f"{path}: refusing to overwrite the input model or its data; choose another output path")
        if external_data is None:
            external_data = self.weight_bytes() > PROTOBUF_LIMIT - 64 * 2**20
        if external_data:
            self._save_external(out, data_path)
        else:
            for ref in self.tensors():
                if _is_external(ref.proto) and ref.key not in self._written:
                    self.write(ref.key, self.read(ref.key))
            data = self.proto.SerializeToString()
            with atomic_open(out) as f:
                f.write(data)
        return out

    def _save_external(self, out: Path, data_path: Path, align: int = 64) -> None:
        """Stream every tensor of >= 1 KiB into one data file, then point the protos at it and
        write the model; both files go into place together, only on success. No copy of the
        weights is kept for rollback: if the model cannot be written, the protos are restored from
        the data just written and every written value stays pending."""
        pending = dict(self._written)
        with atomic_files(data_path, out) as (data, model_file):
            plan: list[tuple[TensorRef, int, int]] = []
            for ref in self.tensors():
                n = _nbytes(ref.proto)
                if n < 1024:
                    continue
                data.write(b"\0" * ((-data.tell()) % align))
                plan.append((ref, data.tell(), n))
                data.write(self.tensor_bytes(ref))
            data.flush()
            undo: list[tuple[onnx.TensorProto, list[tuple[str, str]], int, int | None]] = []
            try:
                for ref in self.tensors():
                    t = ref.proto
                    if _is_external(t) and _nbytes(t) < 1024:  # small: inline; its old data file stays behind
                        undo.append((t, [(e.key, e.value) for e in t.external_data], int(t.data_location), None))
                        self.write(ref.key, self.read(ref.key))
                for ref, offset, n in plan:
                    t = ref.proto
                    undo.append((t, [(e.key, e.value) for e in t.external_data], int(t.data_location), offset))
                    self._written.pop(ref.key, None)  # now in the data file
                    for field in _TYPED_FIELDS + ("raw_data", "external_data"):
                        t.ClearField(field)
                    t.data_location = onnx.TensorProto.EXTERNAL
                    for k, v in (("location", data_path.name), ("offset", str(offset)), ("length", str(n))):
                        e = t.external_data.add()
                        e.key, e.value = k, v
                model_file.write(self.proto.SerializeToString())
            except BaseException:
                self._restore(undo, data)
                self._written.clear()
                self._written.update(pending)
                raise
        stale = self._fds.pop(str(data_path.resolve()), None)  # a new file now stands at that path
        if stale is not None:
            os.close(stale)
        self.path, self.base_dir = out, out.parent

    @staticmethod
    def _restore(undo, data) -> None:
        """Put tensors back as they were before a failed external save (inline ones read back from
        the unfinished data file `data`)."""
        for t, ext, location, offset in reversed(undo):
            n = _nbytes(t)
            for field in _TYPED_FIELDS + ("raw_data", "external_data"):
                t.ClearField(field)
            for k, v in ext:
                e = t.external_data.add()
                e.key, e.value = k, v
            t.data_location = location
            if location != onnx.TensorProto.EXTERNAL and offset is not None:
                t.raw_data = os.pread(data.fileno(), n, offset)

    # -- graph ---------------------------------------------------------------------------------
    def graph(self):
        """The model as an onnx-graphsurgeon graph (constants stay lazily tied to these protos)."""
        import onnx_graphsurgeon as gs

        # its logger prints on stdout (e.g. a warning per bfloat16 tensor): keep stdout for reports
        gs.logger.G_LOGGER.severity = max(gs.logger.G_LOGGER.severity, gs.logger.G_LOGGER.ERROR)
        return gs.import_onnx(self.proto)

    def replace_proto(self, proto: onnx.ModelProto) -> None:
        """Swap in a rewritten model (after a structural pass); external refs keep resolving.
        Pending writes belong to the old proto and are dropped (the new one was built from
        `Model.proto`, which had them), unless `proto` is the model's own."""
        if proto is not self._proto:
            self._written.clear()
        self._proto = proto
        self._refs = None

    def sha256(self) -> str:
        return hashlib.sha256(self.proto.SerializeToString()).hexdigest()


def _set_raw(t: onnx.TensorProto, values: np.ndarray) -> None:
    raw = values.tobytes()  # before anything is cleared
    for field in _TYPED_FIELDS + ("external_data",):
        t.ClearField(field)
    t.data_location = onnx.TensorProto.DEFAULT
    t.raw_data = raw


def _nbytes(t: onnx.TensorProto) -> int:
    return int(np.prod(tuple(t.dims), dtype=np.int64)) * np_dtype(t.data_type).itemsize


def _pread_into(fd: int, buf: memoryview, offset: int) -> None:
    done = 0
    while done < len(buf):
        n = os.preadv(fd, [buf[done:]], offset + done)
        if n <= 0:
            raise ExternalDataError(f"external data ended early at byte {offset + done}; the data file is truncated")
        done += n


def _is_external(t: onnx.TensorProto) -> bool:
    return t.data_location == onnx.TensorProto.EXTERNAL


def check_structure(proto: onnx.ModelProto) -> None:
    """onnx.checker on a rewritten model whose weights may live in external files. The checker
    would look for those files relative to the working directory, so main-graph external
    initializers are checked as typed graph inputs instead (their files were validated when the
    model was loaded and are streamed when it is saved); with external tensors in subgraphs the
    check is left out."""
    external = {t.name: t for t in proto.graph.initializer if _is_external(t)}
    if any(_is_external(t) for path, g in _walk_graphs(proto.graph) if path for t in g.initializer):
        return
    if external:
        copy = onnx.ModelProto()
        copy.CopyFrom(proto)
        kept = [t for t in copy.graph.initializer if t.name not in external]
        del copy.graph.initializer[:]
        copy.graph.initializer.extend(kept)
        declared = {i.name for i in copy.graph.input}
        copy.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                                for name, t in external.items() if name not in declared)
        proto = copy
    onnx.checker.check_model(proto)


def load_model(path: str | os.PathLike) -> Model:
    return Model.load(path)
