"""Loading and atomic saving of ONNX models, external data, and weight access.

A `Model` holds the ONNX `ModelProto` (the weights stay in its TensorProtos; external data is
read tensor by tensor, never loaded whole) and gives numpy access to every constant tensor by a stable
key: initializers of the main graph and of subgraphs (If/Loop/Scan), and `Constant` node values.
Written values stay numpy arrays until someone needs the protos (`Model.proto`) or the model is
saved: a save streams them straight to the file, without a bytes copy in the proto.
Graph analysis goes through onnx-graphsurgeon (`Model.graph()`), which reads the same protos.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import heapq
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import onnx.defs
import onnx.helper
import onnx.numpy_helper
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError

from onnxprune.core.atomic import atomic_model_and_data, data_files_beside
from onnxprune.core.errors import ExternalDataError, ModelLoadError, OnnxPruneError
from onnxprune.core.graph import node_subgraphs, unique_path, walk_graphs

log = logging.getLogger("onnxprune")

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


class Model:
    """An ONNX model and its weights. Never writes to the file it was loaded from.

    Example::

        model = Model.load("samples/digits_mlp.onnx")   # lazy external data
        w = model.read(model.key_for("fc1.weight"))
        model.save("out/copy.onnx")
    """

    def __init__(self, proto: onnx.ModelProto, path: str | os.PathLike | None = None):
        self._proto = proto
        self._written: dict[str, np.ndarray] = {}  # key -> values written but not yet in the proto
        self.path = Path(path).resolve() if path else None
        self.base_dir = self.path.parent if self.path else Path.cwd()
        self._refs: dict[str, TensorRef] | None = None
        self._fds: dict[str, int] = {}  # open external-data files
        self._sources: set[Path] = {self.path} if self.path else set()  # files never to overwrite
        self.notes: list[str] = []  # what loading found legal but worth saying (see `validate`)
        self.edits = 0  # values written (write, set_entries): the pass contract checks `modified` with it
        self.edited_at: dict[str, int] = {}  # key -> the `edits` count of its last write (what a pass touched)
        self.rewrites = 0  # protos swapped in (replace_proto): the graph, and so its analysis, changed

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
    def copy(self) -> "Model":
        """An independent Model of the same file over a copy of the proto, for a job that prunes one
        model many times: validated once (by `load`), not read and checked again. Values written and
        not yet in the proto are not copied, so a model with such writes is refused."""
        if self._written:
            raise ValueError("copy() of a model with unsaved writes; copy it before writing")
        proto = onnx.ModelProto()
        proto.CopyFrom(self._proto)
        out = Model(proto, self.path)
        out.notes, out._sources = list(self.notes), set(self._sources)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Model":
        """Load a model file and validate it once, up front (`validate`): versions, tensor sizes,
        names, graph structure, external-data references (checked, not read), then onnx's checker
        and shape inference. A model that fails is refused with one line naming the node or tensor;
        notes on legal oddities (unknown domains, nodes out of order) are kept in `notes`."""
        path = Path(path)
        if not path.exists():
            raise ModelLoadError(f"{path}: no such file; give the path of an .onnx model")
        if not path.is_file():
            raise ModelLoadError(f"{path}: not a file; give the path of an .onnx model")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except (DecodeError, ValueError, RuntimeError, OSError, UnicodeDecodeError) as e:
            raise ModelLoadError(f"{path}: not a valid ONNX model (truncated or not ONNX: {e})") from e
        if proto.ir_version == 0 or not proto.HasField("graph"):
            raise ModelLoadError(f"{path}: not a valid ONNX model (no IR version or graph); is it really an .onnx file?")
        bad_text = _invalid_text(proto)
        if bad_text:
            raise ModelLoadError(f"{path}: not a valid ONNX model ({bad_text} is not UTF-8 text); the file is corrupt")
        model = cls(proto, path)
        model.notes = validate(proto, str(path))
        for ref in model.tensors():
            if _is_external(ref.proto):
                model._sources.add(model._external_file(ref)[0])  # validates location, existence, bounds
        check_structure(proto, str(path))
        return model

    # -- tensors -------------------------------------------------------------------------------
    def tensors(self) -> list[TensorRef]:
        """Every constant tensor of the model, main graph and subgraphs, with a unique key."""
        if self._refs is None:
            found: list[tuple[str, str, str, onnx.TensorProto]] = []
            for gpath, g in walk_graphs(self._proto.graph):
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
        elif t.data_type in _PACKED_BITS:  # several values a byte: onnx unpacks them
            if _is_external(t):
                file, offset, length = self._external_file(ref)
                packed = onnx.TensorProto(data_type=t.data_type, dims=t.dims)
                buf = bytearray(length)
                _pread_into(self._fd(file), memoryview(buf), offset)
                packed.raw_data = bytes(buf)
                t = packed
            values = onnx.numpy_helper.to_array(t)
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

    def read_ahead(self, keys: list[str]) -> Iterator[np.ndarray]:
        """`read(key)` for each of `keys` in order, the next one read on a second thread while the
        caller works on the current one (pread and numpy release the GIL): one tensor ahead, no more."""
        if not keys:
            return
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="onnxprune-read") as pool:
            ahead = pool.submit(self.read, keys[0])
            for nxt in keys[1:]:
                current = ahead.result()
                ahead = pool.submit(self.read, nxt)
                yield current
            yield ahead.result()

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
        self.edits += 1
        self.edited_at[key] = self.edits

    def set_entries(self, key: str, flat_index: np.ndarray, value: np.ndarray | float) -> None:
        """Set the entries at `flat_index` (row-major) to `value`, in place when the tensor's
        values are a written array (no copy of the tensor)."""
        values = self._written.get(key)
        if values is None:
            self.write(key, self.read(key))
            values = self._written[key]
        self.edits += 1
        self.edited_at[key] = self.edits
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
        need = _nbytes(ref.proto)
        try:
            offset, length = int(info.get("offset", 0)), int(info.get("length", need))
        except ValueError:
            raise ExternalDataError(f"{where}: offset {info.get('offset')!r} / length {info.get('length')!r} "
                                    "are not integers; the model file is corrupt") from None
        if length != need:
            raise ExternalDataError(f"{where}: length {length} does not match its dims {tuple(ref.proto.dims)} of "
                                    f"{_dtype_name(ref.proto.data_type)} ({need} bytes); the model file is corrupt, re-export it")
        if offset < 0 or offset + length > file.stat().st_size:
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
        if ref.proto.data_type in _PACKED_BITS:
            return _to_bytes(self.read(ref.key))
        return memoryview(np.ascontiguousarray(self.read(ref.key)).reshape(-1).view(np.uint8))

    def __del__(self):
        for fd in getattr(self, "_fds", {}).values():
            os.close(fd)

    # -- saving --------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, external_data: bool | None = None) -> Path:
        """Write atomically. External data when asked or above 2 GiB: in `<name>.<16 hex>.data`
        beside it, named by the sha256 of its content (see `atomic_model_and_data`). Data files of
        `path` no model refers to any more (the replaced model's) are removed."""
        path = Path(path)
        out = path.resolve()
        inputs = self.input_files()
        if out in inputs:
            raise OnnxPruneError(f"{path}: refusing to overwrite the input model or its data; choose another output path")
        if external_data is None:
            external_data = self.weight_bytes() > PROTOBUF_LIMIT - 64 * 2**20
        if external_data:
            self._save_external(out, inputs)
        else:
            for ref in self.tensors():
                if _is_external(ref.proto) and ref.key not in self._written:
                    self.write(ref.key, self.read(ref.key))
            data = self.proto.SerializeToString()
            with atomic_model_and_data(out, protect=inputs, replaced=_replaced_locations(out), data=False) as w:
                w.model.write(data)  # data files of an external model replaced here go
            self._forget(w.removed)
        return out

    def input_files(self) -> set[Path]:
        """The files this model was loaded from or reads its weights from (never to be overwritten)."""
        inputs = set(self._sources) | ({self.path} if self.path else set())
        return inputs | self.external_files()

    def external_files(self) -> set[Path]:
        """The data files the model's tensors refer to now (resolved paths)."""
        return {self._external_file(r)[0] for r in self.tensors() if _is_external(r.proto)}

    def _save_external(self, out: Path, inputs: set[Path], align: int = 64) -> None:
        """Stream every tensor of >= 1 KiB into one data file, named by its sha256, then point the
        protos at it and write the model; both files go into place only on success, the data file
        first, and the old model at `out` stays usable until the new one replaces it. No copy of the
        weights is kept for rollback: if the model cannot be written, the protos are restored from
        the data just written and every written value stays pending."""
        pending = dict(self._written)
        replaced = _replaced_locations(out)
        with atomic_model_and_data(out, protect=inputs, replaced=replaced) as w:
            data = w.data
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
                name = w.data_name() if plan else ""  # no large tensor: no data file
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
                    for k, v in (("location", name), ("offset", str(offset)), ("length", str(n))):
                        e = t.external_data.add()
                        e.key, e.value = k, v
                w.model.write(self.proto.SerializeToString())
                w.commit()
            except BaseException:
                self._restore(undo, data)
                self._written.clear()
                self._written.update(pending)
                raise
        self._forget([w.data_path, *w.removed])  # a new file stands at that path, or none any more
        legacy = out.name + ".data"  # the name of the data file before names came from the content
        if legacy in replaced and (out.parent / legacy).is_file() and (out.parent / legacy).resolve() not in inputs:
            log.warning("onnxprune: note: left %s in place: the model this save replaced used it, the new one "
                        "does not; remove it if nothing else does", out.parent / legacy)
        self.path, self.base_dir = out, out.parent

    def _forget(self, files) -> None:
        """Close what is open of `files` (replaced or removed by a save)."""
        for file in files:
            fd = self._fds.pop(str(file.resolve()), None) if file is not None else None
            if fd is not None:
                os.close(fd)

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
        self.rewrites += 1

    def sha256(self) -> str:
        return hashlib.sha256(self.proto.SerializeToString()).hexdigest()


def _replaced_locations(path: Path, limit: int = 64 * 2**20) -> set[str]:
    """The external-data locations the model file at `path` (about to be replaced) refers to, as
    far as they matter: read only when a data file of ours (or an older onnxprune's) lies beside
    it. Empty if the model cannot be read or is over `limit` bytes (a model with external data keeps
    only small tensors inline, so a larger one has its weights inside)."""
    if not data_files_beside(path) and not path.with_name(path.name + ".data").exists():
        return set()
    try:
        if not path.is_file() or path.stat().st_size > limit:
            return set()
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError, UnicodeDecodeError):  # not a model: nothing to recognise
        return set()
    return {e.value for ref in Model(proto).tensors() if _is_external(ref.proto)
            for e in ref.proto.external_data if e.key == "location"}


def _set_raw(t: onnx.TensorProto, values: np.ndarray) -> None:
    raw = _to_bytes(values)  # before anything is cleared
    for field in _TYPED_FIELDS + ("external_data",):
        t.ClearField(field)
    t.data_location = onnx.TensorProto.DEFAULT
    t.raw_data = raw


def _numel(t: onnx.TensorProto) -> int:
    """Element count in Python integers (numpy's int64 product would wrap on absurd dims)."""
    n = 1
    for d in t.dims:
        n *= d
    return n


def _nbytes(t: onnx.TensorProto) -> int:
    """Bytes of the tensor as stored (4-bit and 2-bit types packed, as onnx stores them)."""
    bits = _PACKED_BITS.get(t.data_type)
    return -(-_numel(t) * bits // 8) if bits else _numel(t) * np_dtype(t.data_type).itemsize


def _to_bytes(values: np.ndarray) -> bytes:
    """A tensor's raw bytes as stored: packed for 4-bit and 2-bit element types."""
    if values.dtype.itemsize == 1 and onnx.helper.np_dtype_to_tensor_dtype(values.dtype) in _PACKED_BITS:
        return onnx.numpy_helper.from_array(np.ascontiguousarray(values)).raw_data
    return values.tobytes()


def _pread_into(fd: int, buf: memoryview, offset: int) -> None:
    done = 0
    while done < len(buf):
        n = os.preadv(fd, [buf[done:]], offset + done)
        if n <= 0:
            raise ExternalDataError(f"external data ended early at byte {offset + done}; the data file is truncated")
        done += n


def _is_external(t: onnx.TensorProto) -> bool:
    return t.data_location == onnx.TensorProto.EXTERNAL


# -- validation -------------------------------------------------------------------------------

MIN_IR_VERSION = 3  # opset imports exist from IR 3 on
MIN_OPSET = 7  # the oldest ai.onnx opset onnxruntime guarantees to run
# domains onnx or onnxruntime define operators in; others need a custom-op library to run
KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview", "ai.onnx.preview.training", "ai.onnx.training",
                 "com.microsoft", "com.microsoft.nchwc", "com.microsoft.experimental", "com.ms.internal.nhwc"}
# element types stored packed, several per byte: bits per element
_PACKED_BITS = {getattr(onnx.TensorProto, n): b for n, b in (("UINT4", 4), ("INT4", 4), ("FLOAT4E2M1", 4), ("UINT2", 2),
                                                              ("INT2", 2), ("FLOAT6E2M3", 6), ("FLOAT6E3M2", 6))
                if hasattr(onnx.TensorProto, n)}
_STUB_BYTES = 1024  # the checker's copy replaces tensors above this by data-free stand-ins


_TEXT_FIELDS: dict = {}  # message descriptor -> (string fields, message fields)


def _invalid_text(msg, where: str = "model") -> str | None:
    """The first string field that is not valid UTF-8 (protobuf parses proto2 strings unchecked; upb
    hands such a field out as bytes, and fails when it is copied), as a path like
    'graph.node[3].name'; None if all are valid. Bytes fields (weights) are not touched."""
    fields = _TEXT_FIELDS.get(msg.DESCRIPTOR)
    if fields is None:
        fields = _TEXT_FIELDS[msg.DESCRIPTOR] = (
            [(f.name, _is_repeated(f)) for f in msg.DESCRIPTOR.fields if f.type == f.TYPE_STRING],
            [(f.name, _is_repeated(f)) for f in msg.DESCRIPTOR.fields if f.type == f.TYPE_MESSAGE])
    strings, messages = fields
    for name, repeated in strings:
        try:
            values = list(getattr(msg, name)) if repeated else [getattr(msg, name)]
        except UnicodeDecodeError:
            return f"{where}.{name}"
        if any(not isinstance(v, str) for v in values):
            return f"{where}.{name}"
    for name, repeated in messages:
        if repeated:
            for i, sub in enumerate(getattr(msg, name)):
                bad = _invalid_text(sub, f"{where}.{name}[{i}]")
                if bad:
                    return bad
        elif msg.HasField(name):
            bad = _invalid_text(getattr(msg, name), f"{where}.{name}")
            if bad:
                return bad
    return None


def _dtype_name(elem_type: int) -> str:
    try:
        return onnx.TensorProto.DataType.Name(elem_type).lower()
    except ValueError:
        return f"data type {elem_type}"


def _valid_dtype(elem_type: int) -> bool:
    if elem_type == onnx.TensorProto.UNDEFINED:
        return False
    try:
        np_dtype(elem_type)
        onnx.helper.tensor_dtype_to_field(elem_type)
    except (KeyError, ValueError, TypeError):
        return False
    return True


def _tensor_problem(t: onnx.TensorProto) -> str | None:
    """What is wrong with a tensor's element type, dims or amount of data; None if nothing. External
    data is not read here (its `length` is checked against the dims with the file)."""
    if not _valid_dtype(t.data_type):
        return f"has element type {t.data_type}, which is not a tensor type onnx knows"
    if any(d < 0 for d in t.dims):
        return f"has a negative dim in {tuple(t.dims)}"
    if t.HasField("segment"):
        return "is stored in segments, which onnxprune cannot read"
    if _is_external(t):
        return None
    n = _numel(t)
    if t.data_type == onnx.TensorProto.STRING:
        have, need, unit = len(t.string_data), n, "strings"
    elif t.HasField("raw_data"):
        have, need, unit = len(t.raw_data), _nbytes(t), "bytes"
    else:
        bits = _PACKED_BITS.get(t.data_type)
        per = 2 if t.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128) else 1
        have = len(getattr(t, onnx.helper.tensor_dtype_to_field(t.data_type)))
        need, unit = (-(-n * bits // 8) if bits else n * per), "values"
    if have != need:
        return (f"holds {have} {unit} of data but its dims {tuple(t.dims)} of {_dtype_name(t.data_type)} need {need}")
    return None


def _node_label(node: onnx.NodeProto, index: int) -> str:
    if node.name:
        return f"node {node.name!r} ({node.op_type})"
    out = next((o for o in node.output if o), None)
    return f"the {node.op_type} node producing {out!r}" if out else f"{node.op_type} node #{index}"


def _graph_label(path: str) -> str:
    return "the main graph" if not path else f"subgraph {path!r}"


class _Validator:
    """One pass over every graph: tensors, names, scopes, order. Raises ModelLoadError; collects notes."""

    def __init__(self, where: str):
        self.where = where
        self.notes: list[str] = []
        self.seen_paths: set[str] = {""}
        self.sorted_graphs: list[str] = []

    def fail(self, what: str, todo: str = "the model is corrupt or was exported wrongly; re-export it") -> None:
        raise ModelLoadError(f"{self.where}: {what}; {todo}")

    def tensor(self, t: onnx.TensorProto, what: str) -> None:
        problem = _tensor_problem(t)
        if problem:
            self.fail(f"{what} {problem}")

    def graph(self, g: onnx.GraphProto, path: str, outer: set[str]) -> set[str]:
        """Validate `g` (which sees the names in `outer`); returns the outer names it reads."""
        glabel = _graph_label(path)
        defined: set[str] = set()
        for vi in g.input:
            if vi.name in defined:
                self.fail(f"{glabel} declares input {vi.name!r} twice")
            defined.add(vi.name)
        inits: set[str] = set()
        for t in g.initializer:
            if t.name in inits:
                self.fail(f"initializer {t.name!r} is defined twice in {glabel}",
                          "names must be unique; remove or rename the duplicate and re-export")
            inits.add(t.name)
            self.tensor(t, f"initializer {t.name!r} in {glabel}")
        for st in g.sparse_initializer:
            name = st.values.name
            if name in inits:
                self.fail(f"initializer {name!r} is defined twice in {glabel} (dense and sparse)",
                          "names must be unique; remove or rename the duplicate and re-export")
            inits.add(name)
        defined |= inits
        producer: dict[str, int] = {}
        for i, node in enumerate(g.node):
            for o in node.output:
                if not o:
                    continue
                if o in producer:
                    self.fail(f"tensor {o!r} in {glabel} is produced twice, by {_node_label(g.node[producer[o]], producer[o])} "
                              f"and {_node_label(node, i)}")
                if o in defined:
                    self.fail(f"{_node_label(node, i)} in {glabel} produces {o!r}, which is already a graph input or initializer")
                producer[o] = i
        visible = outer | defined | set(producer)
        reads_outer: set[str] = set()
        deps: list[set[int]] = []
        for i, node in enumerate(g.node):
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    self.tensor(attr.t, f"attribute {attr.name!r} of {_node_label(node, i)} in {glabel}")
                elif attr.type == onnx.AttributeProto.TENSORS:
                    for t in attr.tensors:
                        self.tensor(t, f"attribute {attr.name!r} of {_node_label(node, i)} in {glabel}")
            names = [n for n in node.input if n]
            for name in names:
                if name not in visible:
                    self.fail(f"{_node_label(node, i)} in {glabel} reads {name!r}, which no node, graph input or "
                              "initializer defines")
            for sub_name, sub in node_subgraphs(node):
                sub_path = unique_path(f"{path}/{sub_name}" if path else sub_name, self.seen_paths)
                names += sorted(self.graph(sub, sub_path, visible))
            node_deps = set()
            for name in names:
                if name in producer:
                    node_deps.add(producer[name])
                elif name not in defined:
                    reads_outer.add(name)
            deps.append(node_deps)
        for vi in g.output:
            if vi.name not in visible:
                self.fail(f"{glabel} has output {vi.name!r}, which no node, graph input or initializer defines")
            if vi.name not in defined and vi.name not in producer:
                reads_outer.add(vi.name)
        self.order(g, glabel, deps, producer)
        return reads_outer

    def order(self, g: onnx.GraphProto, glabel: str, deps: list[set[int]], producer: dict[str, int]) -> None:
        """Kahn's algorithm, stable (earliest node first): a cycle is an error, nodes out of order are
        sorted in place (onnxruntime accepts them; onnx's checker and graph walkers want them sorted)."""

        n = len(deps)
        if all(d < i for i, ds in enumerate(deps) for d in ds):
            return
        users: list[list[int]] = [[] for _ in range(n)]
        indegree = [len(ds) for ds in deps]
        for i, ds in enumerate(deps):
            for d in ds:
                users[d].append(i)
        ready = [i for i in range(n) if indegree[i] == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            i = heapq.heappop(ready)
            order.append(i)
            for u in users[i]:
                indegree[u] -= 1
                if indegree[u] == 0:
                    heapq.heappush(ready, u)
        if len(order) < n:
            stuck = set(range(n)) - set(order)
            i = min(stuck)
            dep = min(d for d in deps[i] if d in stuck)
            via = next((o for o in g.node[dep].output if o and producer.get(o) == dep), "?")
            self.fail(f"{_node_label(g.node[i], i)} in {glabel} is on a cycle (it reads {via!r}, which depends on "
                      "its own output)")
        rank = [0] * n
        for pos, i in enumerate(order):
            rank[i] = pos
        ranks = iter(rank)
        g.node.sort(key=lambda _node: next(ranks))  # the key is taken once per node, in order
        self.sorted_graphs.append(glabel)


def validate(proto: onnx.ModelProto, where: str = "model") -> list[str]:
    """Check a model once, in O(size), without reading external data: IR and opset versions, every
    tensor's element type, dims and amount of data, unique initializers, single assignment, defined
    inputs (subgraphs see the names of enclosing graphs), no cycles. Nodes out of topological order
    are sorted in place. Raises ModelLoadError with one line naming the tensor or node; returns
    notes on what is legal but worth saying (unknown domains, sorted graphs). `check_structure` then
    runs onnx's checker and shape inference."""
    known_ir = onnx.IR_VERSION
    if proto.ir_version > known_ir:
        raise ModelLoadError(f"{where}: IR version {proto.ir_version} is newer than this onnx/onnxruntime supports "
                             f"({known_ir}); upgrade onnx and onnxruntime, or re-export with IR version <= {known_ir}")
    if proto.ir_version < MIN_IR_VERSION:
        raise ModelLoadError(f"{where}: IR version {proto.ir_version} is older than onnxruntime supports "
                             f"({MIN_IR_VERSION}); re-export the model with a current exporter")
    known = {"": onnx.defs.onnx_opset_version(), "ai.onnx.ml": onnx.helper.VERSION_TABLE[-1][3]}
    domains: dict[str, int] = {}
    for op in proto.opset_import:
        domain = "" if op.domain == "ai.onnx" else op.domain
        if domain in domains:
            raise ModelLoadError(f"{where}: opset of domain {op.domain or 'ai.onnx'!r} is imported twice; "
                                 "the model is corrupt, re-export it")
        domains[domain] = op.version
        top = known.get(domain)
        if top is not None and op.version > top:
            raise ModelLoadError(
                f"{where}: opset {op.version}{f' of {domain}' if domain else ''} is newer than this onnx package knows ({top}); "
                f"upgrade onnx/onnxruntime or export with opset <= {top}")
    if "" in domains and domains[""] < MIN_OPSET:
        raise ModelLoadError(
            f"{where}: opset {domains['']} is older than onnxruntime supports ({MIN_OPSET}); convert the model with "
            "onnx.version_converter.convert_version(model, 17) or re-export it")
    v = _Validator(where)
    v.graph(proto.graph, "", set())
    used = {n.domain for _, g in walk_graphs(proto.graph) for n in g.node} | set(domains)
    for domain in sorted(used - KNOWN_DOMAINS):
        v.notes.append(f"domain {domain!r} is not an onnx or onnxruntime domain: its ops are left as they are "
                       "and running the model needs their custom-op library")
    if v.sorted_graphs:
        v.notes.append(f"nodes of {', '.join(v.sorted_graphs)} were not in topological order; sorted them")
    return v.notes


def _is_repeated(field) -> bool:
    return field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED


def _copy_except(src, dst, skip: set[str]) -> None:
    """Copy the set fields of message `src` into `dst`, except `skip` (those stay unset)."""
    for field, value in src.ListFields():
        if field.name in skip:
            continue
        if _is_repeated(field):
            getattr(dst, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


# Cast can produce these element types from this ai.onnx opset on (a subgraph's stand-in is
# ConstantOfShape, float, then Cast); other types keep their data in the checker's copy.
_CAST_SINCE = {**{t: 9 for t in (onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.INT8,
                                 onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64,
                                 onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32,
                                 onnx.TensorProto.UINT64, onnx.TensorProto.BOOL)},
               onnx.TensorProto.FLOAT: 9, onnx.TensorProto.BFLOAT16: 13,
               **{t: 19 for t in (onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E4M3FNUZ,
                                  onnx.TensorProto.FLOAT8E5M2, onnx.TensorProto.FLOAT8E5M2FNUZ)}}


class _Skeleton:
    """A copy of a model for onnx's checker without the weights' bytes: large or external tensors of
    the main graph become typed graph inputs, those of subgraphs ConstantOfShape(+Cast) nodes of the
    same type and shape. With `strip`, the declared value_info, output shapes and negative input
    dims are dropped, so shape inference judges the graph itself, not stale annotations (onnxruntime
    only warns about those)."""

    def __init__(self, proto: onnx.ModelProto, strip: bool):
        self.opset = next((op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")), 0)
        self.strip = strip
        self.count = 0
        self.complete = True  # False when an external tensor could not be replaced

    def big(self, t: onnx.TensorProto) -> bool:
        return _is_external(t) or _nbytes(t) > _STUB_BYTES

    def stub_nodes(self, t: onnx.TensorProto, name: str, g: onnx.GraphProto) -> bool:
        since = _CAST_SINCE.get(t.data_type)
        if since is None or self.opset < since:
            return False
        self.count += 1
        shape = f"__onnxprune_stub_shape{self.count}"
        g.initializer.append(onnx.numpy_helper.from_array(np.array(list(t.dims), np.int64), shape))
        zero = onnx.numpy_helper.from_array(np.zeros(1, np.float32), "value")
        if t.data_type == onnx.TensorProto.FLOAT:
            g.node.add().CopyFrom(onnx.helper.make_node("ConstantOfShape", [shape], [name], value=zero))
        else:
            mid = f"__onnxprune_stub{self.count}"
            g.node.add().CopyFrom(onnx.helper.make_node("ConstantOfShape", [shape], [mid], value=zero))
            g.node.add().CopyFrom(onnx.helper.make_node("Cast", [mid], [name], to=t.data_type))
        return True

    def keep(self, t: onnx.TensorProto) -> bool:
        """A tensor kept as it is: fine unless its data is external (the checker would look for the
        file relative to the working directory)."""
        if _is_external(t):
            self.complete = False
        return True

    def model(self, proto: onnx.ModelProto) -> onnx.ModelProto:
        out = onnx.ModelProto()
        _copy_except(proto, out, {"graph", "metadata_props", "training_info"})
        self.graph(proto.graph, out.graph, main=True)
        return out

    def graph(self, g: onnx.GraphProto, out: onnx.GraphProto, main: bool) -> None:
        skip = {"node", "initializer", "input", "output"} | ({"value_info"} if self.strip else set())
        _copy_except(g, out, skip)
        out.input.extend(g.input)
        declared = {vi.name for vi in g.input}
        if main:  # onnx's shape inference leaves sparse initializers untyped: declare them
            del out.sparse_initializer[:]
            for sp in g.sparse_initializer:
                if sp.values.name not in declared:
                    out.input.append(onnx.helper.make_tensor_value_info(sp.values.name, sp.values.data_type, list(sp.dims)))
        for t in g.initializer:
            if not self.big(t):
                out.initializer.append(t)
            elif main:
                if t.name not in declared:
                    out.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
            elif not self.stub_nodes(t, t.name, out) and self.keep(t):
                out.initializer.append(t)
        for node in g.node:
            value = next((a.t for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR),
                         None) if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output else None
            if value is not None and self.big(value):
                if main and node.output[0] not in declared:
                    out.input.append(onnx.helper.make_tensor_value_info(node.output[0], value.data_type, list(value.dims)))
                    continue
                if not main and self.stub_nodes(value, node.output[0], out):
                    continue
                self.keep(value)
            copy = out.node.add()
            _copy_except(node, copy, {"attribute"})
            for attr in node.attribute:
                a = copy.attribute.add()
                _copy_except(attr, a, {"g", "graphs"})
                if attr.HasField("g"):
                    self.graph(attr.g, a.g, main=False)
                for sub in attr.graphs:
                    self.graph(sub, a.graphs.add(), main=False)
        out.output.extend(g.output)
        if self.strip:
            for vi in out.output:  # dims unknown, rank kept (onnx wants a shape on graph outputs)
                if vi.type.HasField("tensor_type"):
                    for d in vi.type.tensor_type.shape.dim:
                        d.ClearField("dim_value")
                        d.ClearField("dim_param")
            for vi in out.input:
                if vi.type.HasField("tensor_type"):
                    for d in vi.type.tensor_type.shape.dim:
                        if d.HasField("dim_value") and d.dim_value < 0:
                            d.ClearField("dim_value")


def _checker_line(e: Exception) -> str:
    """onnx's multi-line checker / shape inference message as one line naming the node."""

    text = str(e)
    m = re.search(r"\(op_type:([^,]*), node name: ([^)]*)\): (?:\[\w+\] )?([^\n]*)", text)
    if m:
        return f"node {m[2]!r} ({m[1]}): {m[3].strip()}"
    head, _, context = text.partition("==> Context:")
    head = " ".join(head.split())
    m = re.search(r"Name: (.*?) OpType: (\S+)", context)
    return head.rstrip(".") + (f" (in node {m[1]!r} ({m[2]}))" if m else "")


def _drop_shapeless_outputs(copy: onnx.ModelProto) -> None:
    """onnx's checker wants a shape on every graph output, onnxruntime does not (exporters leave it out):
    the checked copy leaves such outputs out (the nodes computing them are still checked)."""
    kept = [vi for vi in copy.graph.output
            if not (vi.type.HasField("tensor_type") and not vi.type.tensor_type.HasField("shape"))]
    if len(kept) < len(copy.graph.output):
        del copy.graph.output[:]
        copy.graph.output.extend(kept)


def check_structure(proto: onnx.ModelProto, where: str | None = None) -> None:
    """onnx's checker on a model whose weights may live in external files, run on a copy without
    the weights' bytes (`_Skeleton`), so it costs the size of the graph, not of the weights.

    With `where` (loading), the checker also runs shape inference (on the graph, not on its stale
    annotations) and a failure is a ModelLoadError of one line naming the node. Without it (a
    rewritten model), onnx's own exception is raised."""
    skeleton = _Skeleton(proto, strip=where is not None)
    copy = skeleton.model(proto)
    if not skeleton.complete:
        return  # external tensors the copy could not replace: their files were validated on load
    _drop_shapeless_outputs(copy)
    if where is None:
        onnx.checker.check_model(copy)
        return
    try:
        onnx.checker.check_model(copy, full_check=True)
    except Exception as e:  # ValidationError, InferenceError, and whatever else onnx's C++ side raises
        raise ModelLoadError(f"{where}: invalid ONNX model: {_checker_line(e)}; fix the model or re-export it "
                             "(onnx.checker.check_model shows the details)") from None


def load_model(path: str | os.PathLike) -> Model:
    """Load and validate an ONNX model (`Model.load`): external weights are read lazily, when needed.

    Example::

        model = load_model("samples/digits_mlp.onnx")
    """
    return Model.load(path)
