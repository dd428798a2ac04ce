"""Deployable artifacts: a folder with the model as the target consumes it, the packed blobs and a manifest.

`emit_artifact(...)` writes OUT_DIR/
  model.onnx     the model in the chosen emit mode:
                   dense               the pruned model, dense weights with zeros (TensorRT, XNNPACK and
                                       NPU compilers read these and compress themselves)
                   sparse-initializer  packed weights moved to GraphProto.sparse_initializer (COO, int64
                                       linearized indices over the stored tensor); standard ONNX
                   portable            packed weights stored inside the ONNX with standard ops that rebuild
                                       the dense weights at load (onnxprune.pack.portable): any runtime
                                       runs the smaller file, outputs bit-identical to the dense model
                 (model.onnx.<16 hex>.data beside it when the model needs external data: the first
                 16 hex digits of its sha256; the manifest names it)
  weights.bin    every packed array, in this binary layout (little-endian throughout):
                   bytes 0..63   header: magic b"ONNXPRUNEPACK\\0\\0\\0" (16 bytes), uint32 layout version (1),
                                 uint32 alignment (64), uint64 number of arrays, uint64 file size,
                                 24 zero bytes
                   then each array's raw C-order bytes, starting at an offset that is a multiple of 64,
                   zero padding between arrays; offsets, lengths, dtypes and shapes are in the manifest
  manifest.json  schema "onnxprune.pack", version 1:
                   tool, target (its full description), emit, model {file, bytes, sha256},
                   weights {file, bytes, sha256, alignment, header_bytes, magic, byte_order},
                   tensors: per packed weight
                     name (onnxprune key), tensor (name in the graph), graph, storage, shape (stored
                     layout), dtype, matrix [rows, cols], to_stored (the reshape/transpose steps that
                     turn the rows x cols matrix into the stored tensor), format, params, nnz, sparsity,
                     dense_bytes, packed_bytes, bound_bytes, in_model ("dense" | "sparse_initializer" |
                     "decoder"), dense_sha256 (stored-layout bytes), matrix_sha256, arrays: [{name,
                     offset, length, dtype, shape, sha256}]
                   eligibility (totals) and sizes
The folder is built beside OUT_DIR and renamed into place: a failure leaves the previous artifact (or
nothing), never a half-written one. `verify_artifact(OUT_DIR)` re-checks every checksum and decodes
every tensor.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import uuid
import zlib
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune import __version__
from onnxprune.analyze.weights import Weight
from onnxprune.core.atomic import (
    atomic_open,
    is_data_file_name,
    make_parents,
    record_tree,
)
from onnxprune.core.errors import OutputError, TargetError
from onnxprune.core.graph import walk_graphs
from onnxprune.core.model import PROTOBUF_LIMIT, Model
from onnxprune.core.report import to_json
from onnxprune.pack.formats import decode
from onnxprune.pack.formats.base import PackedTensor, bits_of
from onnxprune.pack.formats.coo import from_sparse_tensor_proto, to_sparse_tensor_proto
from onnxprune.pack.portable import decoder_graph
from onnxprune.pack.targets import Target

MAGIC = b"ONNXPRUNEPACK\0\0\0"
LAYOUT_VERSION = 1
ALIGN = 64
HEADER_BYTES = 64
ARTIFACT_FILES = ("model.onnx", "weights.bin", "manifest.json")  # and model.onnx's data file (`_ours`)


# --------------------------------------------------------------------------------------- layout

def layout_steps(w: Weight) -> list[tuple[str, tuple[int, ...]]]:
    """Steps from the (rows x cols) matrix view to the stored tensor: ("reshape", shape) / ("transpose", perm)."""
    perm = tuple(w.row_axes) + tuple(w.col_axes)
    steps: list[tuple[str, tuple[int, ...]]] = [("reshape", tuple(int(w.op_shape[a]) for a in perm)),
                                                ("transpose", tuple(int(i) for i in np.argsort(perm)))]
    for s in reversed(w.chain):
        if s.perm is not None:
            steps.append(("transpose", tuple(int(i) for i in np.argsort(s.perm))))
        elif s.shape is not None:
            steps.append(("reshape", tuple(int(d) for d in s.in_shape)))
    steps.append(("reshape", tuple(int(d) for d in w.shape)))
    out: list[tuple[str, tuple[int, ...]]] = []
    for kind, arg in steps:
        if kind == "transpose" and arg == tuple(range(len(arg))):
            continue
        if out and kind == "reshape" and out[-1][0] == "reshape":
            out[-1] = ("reshape", arg)
            continue
        if out and kind == "transpose" and out[-1][0] == "transpose":
            prev = out[-1][1]
            composed = tuple(prev[i] for i in arg)
            out.pop()
            if composed != tuple(range(len(composed))):
                out.append(("transpose", composed))
            continue
        out.append((kind, arg))
    if out and out[0][0] != "reshape":
        out.insert(0, ("reshape", tuple(int(w.op_shape[a]) for a in perm)))
    # drop reshapes to the shape the tensor already has (the first one always stays: it names the N-D view)
    shape: tuple[int, ...] = (w.rows, w.cols)
    kept: list[tuple[str, tuple[int, ...]]] = []
    for i, (kind, arg) in enumerate(out):
        if kind == "reshape":
            if i and arg == shape:
                continue
            shape = arg
        else:
            shape = tuple(shape[p] for p in arg)
        kept.append((kind, arg))
    return kept


def apply_steps(matrix: np.ndarray, steps) -> np.ndarray:
    a = matrix
    for kind, arg in steps:
        a = a.reshape(arg) if kind == "reshape" else np.transpose(a, arg)
    return np.ascontiguousarray(a)


def _raw(a: np.ndarray) -> np.ndarray:
    """The bytes of an array as a flat uint8 view (C order)."""
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def sha256(a: np.ndarray) -> str:
    return hashlib.sha256(_raw(a)).hexdigest()


def _le(a: np.ndarray) -> np.ndarray:
    """The array in little-endian byte order, C-contiguous."""
    a = np.ascontiguousarray(a)
    return a.astype(a.dtype.newbyteorder("<")) if a.dtype.byteorder == ">" else a


# ------------------------------------------------------------------------------------ model forms

def _tensor_name(key: str, graph: str) -> str:
    prefix = f"{graph}::"
    return key[len(prefix):] if key.startswith(prefix) else key


def _copy(model: Model) -> Model:
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    return Model(proto, model.path)


def _default_opset(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _unique_prefix(proto: onnx.ModelProto, base: str = "onnxprune_pack") -> str:
    names = set()
    for _, g in walk_graphs(proto.graph):
        names |= {t.name for t in g.initializer} | {o for n in g.node for o in n.output} | {n.name for n in g.node}
        names |= {i.name for i in g.input}
    taken = any(n.startswith(base) for n in names)
    i = 0
    while taken:
        i += 1
        cand = f"{base}{i}x"
        taken = any(n.startswith(cand) for n in names)
        if not taken:
            base = cand
    return base


def _remove_initializer(g: onnx.GraphProto, name: str) -> bool:
    for i, t in enumerate(g.initializer):
        if t.name == name:
            del g.initializer[i]
            for j, inp in enumerate(g.input):
                if inp.name == name:  # IR < 4 style: initializers listed as graph inputs
                    del g.input[j]
                    break
            return True
    return False


def portable_model(model: Model, weights: dict[str, Weight], packed: dict[str, PackedTensor]) -> tuple[Model, dict[str, str]]:
    """A copy of `model` whose packed weights are rebuilt at load by standard ops. Returns (model, in_model)."""
    out = _copy(model)
    proto = out.proto
    opset = _default_opset(proto)
    graphs = dict(walk_graphs(proto.graph))
    base = _unique_prefix(proto)
    where: dict[str, str] = {}
    for i, (key, p) in enumerate(packed.items()):
        w = weights[key]
        ref = model.ref(key)
        g = graphs[ref.graph]
        name = _tensor_name(key, ref.graph)
        prefix = f"{base}{i}"
        steps = layout_steps(w)
        first = steps[0][1]
        perm = None
        rest = steps[1:]
        if rest and rest[0][0] == "transpose":
            perm, rest = rest[0][1], rest[1:]
        out_first = name if not rest else f"{prefix}_view"
        inits, nodes = decoder_graph(p, out_first, first, prefix, perm=perm, opset=opset)
        src = out_first
        for j, (kind, arg) in enumerate(rest):
            dst = name if j == len(rest) - 1 else f"{prefix}_step{j}"
            if kind == "reshape":
                shape_name = f"{prefix}_shape{j}"
                inits.append(numpy_helper.from_array(np.asarray(arg, dtype=np.int64), shape_name))
                nodes.append(helper.make_node("Reshape", [src, shape_name], [dst], name=dst))
            else:
                nodes.append(helper.make_node("Transpose", [src], [dst], name=dst, perm=list(arg)))
            src = dst
        if ref.storage == "initializer":
            if not _remove_initializer(g, name):
                raise TargetError(f"{key}: initializer not found in graph {ref.graph or 'main'}; cannot emit it portable")
            at = 0
        else:
            at = next((j for j, n in enumerate(g.node) if n.op_type == "Constant" and n.output and n.output[0] == name), None)
            if at is None:
                raise TargetError(f"{key}: Constant node not found; cannot emit it portable")
            del g.node[at]
        for j, n in enumerate(nodes):
            g.node.insert(at + j, n)
        g.initializer.extend(inits)
        where[key] = "decoder"
    out.replace_proto(proto)
    return out, where


def sparse_initializer_model(model: Model, packed: dict[str, PackedTensor]) -> tuple[Model, dict[str, str], list[str]]:
    """A copy of `model` with the packed main-graph initializers moved to sparse_initializer (COO)."""
    out = _copy(model)
    proto = out.proto
    where: dict[str, str] = {}
    notes: list[str] = []
    for key in packed:
        ref = model.ref(key)
        if ref.graph or ref.storage != "initializer":
            where[key] = "dense"
            notes.append(f"{key}: {'subgraph weight' if ref.graph else 'Constant node'} stays dense "
                         "(only main-graph initializers can be sparse initializers)")
            continue
        name = _tensor_name(key, ref.graph)
        dense = model.read(key)
        _remove_initializer(proto.graph, name)
        proto.graph.sparse_initializer.append(to_sparse_tensor_proto(name, dense))
        where[key] = "sparse_initializer"
    out.replace_proto(proto)
    return out, where, notes


# ------------------------------------------------------------------------------------- the folder

def _ours(name: str) -> bool:
    """A file an artifact folder holds: one of ARTIFACT_FILES or model.onnx's data file."""
    return name in ARTIFACT_FILES or is_data_file_name("model.onnx", name)


def _check_out_dir(out: Path, model: Model) -> None:
    if out.exists() and not out.is_dir():
        raise TargetError(f"{out}: exists and is not a folder; give a folder path for the artifact")
    if out.is_dir():
        extra = [p.name for p in out.iterdir() if not _ours(p.name)]
        if extra and not (out / "manifest.json").is_file():
            raise TargetError(f"{out}: folder exists and is not an onnxprune pack folder (has {extra[0]!r}); "
                              "choose a new or empty folder")
        if extra:
            raise TargetError(f"{out}: pack folder also holds {extra[0]!r}, which onnxprune did not write; "
                              "move it away or choose another folder")
    if model.path is not None:
        inputs = {model.path.resolve()}
        for ref in model.tensors():
            if ref.proto.data_location == onnx.TensorProto.EXTERNAL:
                inputs.add(model._external_file(ref)[0].resolve())
        for p in inputs:
            if p.is_relative_to(out.resolve()):
                raise TargetError(f"{out}: the input model {p.name} lives in this folder, which the artifact replaces; "
                                  "choose another output folder")


def _publish(staging: Path, out: Path) -> None:
    """Move the finished staging folder to `out`, replacing an earlier artifact there."""
    record_tree(out)  # a command that fails later removes it again
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
        try:
            os.replace(staging, out)
        except BaseException:
            os.replace(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)


def _write_weights(path: Path, packed: dict[str, PackedTensor]) -> tuple[dict[str, list[dict]], int, str]:
    """Write weights.bin; returns per-tensor array records, total bytes and the file's sha256."""
    records: dict[str, list[dict]] = {}
    order = [(key, name, _le(arr)) for key, p in packed.items() for name, arr in p.arrays.items()]
    offset = HEADER_BYTES
    layout = []
    for key, name, arr in order:
        offset += (-offset) % ALIGN
        layout.append((key, name, arr, offset))
        offset += arr.nbytes
    total = offset
    h = hashlib.sha256()
    with atomic_open(path) as f:
        header = MAGIC + struct.pack("<IIQQ", LAYOUT_VERSION, ALIGN, len(order), total) + b"\0" * 24
        assert len(header) == HEADER_BYTES
        f.write(header)
        h.update(header)
        pos = HEADER_BYTES
        for key, name, arr, off in layout:
            pad = b"\0" * (off - pos)
            raw = _raw(arr) if arr.nbytes else b""
            f.write(pad)
            f.write(raw)
            h.update(pad)
            h.update(raw)
            pos = off + arr.nbytes
            records.setdefault(key, []).append({
                "name": name, "offset": off, "length": int(arr.nbytes), "dtype": arr.dtype.name,
                "shape": list(arr.shape), "sha256": hashlib.sha256(raw).hexdigest()})
    return records, total, h.hexdigest()


def emit_artifact(model: Model, target: Target, weights: dict[str, Weight], packed: dict[str, PackedTensor],
                  out_dir: str | os.PathLike, mode: str | None = None, *, tensor_info: dict[str, dict] | None = None,
                  eligibility: dict | None = None, measure_gzip: bool = True, fail_after=None) -> dict:
    """Write the artifact folder for `packed` (see the module docstring); returns the manifest.

    `tensor_info` adds per-weight fields (sizes) to the manifest; `eligibility` the totals.
    `fail_after` (tests) is called with each file name after it is written."""
    mode = mode or target.default_emit
    if mode not in target.emit_modes:
        raise TargetError(f"target {target.name} cannot emit {mode!r}; use one of {', '.join(target.emit_modes)}")
    out = Path(out_dir)
    _check_out_dir(out, model)
    make_parents(out)
    staging = out.with_name(f".{out.name}.staging-{uuid.uuid4().hex[:8]}")
    try:
        staging.mkdir()
    except OSError as e:
        raise OutputError(f"{out}: cannot write the artifact folder there ({e.strerror}); choose another path") from None
    notes: list[str] = []
    try:
        dense_bytes = model.proto.ByteSize()
        if mode == "portable":
            emitted, where = portable_model(model, weights, packed)
        elif mode == "sparse-initializer":
            emitted, where, notes = sparse_initializer_model(model, packed)
        else:
            emitted, where = _copy(model), {k: "dense" for k in packed}
        emitted.save(staging / "model.onnx")
        data_file = next(iter(emitted.external_files()), None)  # the one data file of an external save
        if fail_after:
            fail_after("model.onnx")
        records, wbytes, wsha = _write_weights(staging / "weights.bin", packed)
        if fail_after:
            fail_after("weights.bin")
        tensors = []
        for key, p in packed.items():
            w = weights[key]
            ref = model.ref(key)
            stored = model.read(key)
            matrix = decode(p)
            tensors.append({
                "name": key, "tensor": _tensor_name(key, ref.graph), "graph": ref.graph, "storage": ref.storage,
                "shape": list(w.shape), "dtype": np.dtype(p.dtype).name, "matrix": list(p.shape),
                "to_stored": [[k, list(a)] for k, a in layout_steps(w)],
                "format": p.format, "params": dict(p.params),
                "nnz": int(np.count_nonzero(bits_of(matrix))),
                "sparsity": 1.0 - np.count_nonzero(bits_of(matrix)) / matrix.size if matrix.size else 0.0,
                "in_model": where[key],
                "dense_sha256": sha256(_le(stored)), "matrix_sha256": sha256(_le(matrix)),
                **(tensor_info or {}).get(key, {}),
                "arrays": records.get(key, []),
            })
        model_file = staging / "model.onnx"
        sizes = {"dense_model_bytes": dense_bytes, "model_bytes": model_file.stat().st_size,
                 "weights_bin_bytes": wbytes}
        if data_file is not None:
            sizes["model_data_bytes"] = data_file.stat().st_size
        if measure_gzip and dense_bytes <= PROTOBUF_LIMIT:
            sizes["gzip_dense_model_bytes"] = len(zlib.compress(model.proto.SerializeToString(), 9))
        manifest = {
            "tool": {"name": "onnxprune", "version": __version__},
            "target": target.describe(),
            "emit": mode,
            "source": str(model.path) if model.path else None,
            "model": {"file": "model.onnx", "bytes": sizes["model_bytes"], "sha256": _file_sha(model_file),
                      **({"data_file": data_file.name, "data_sha256": _file_sha(data_file)} if data_file is not None else {})},
            "weights": {"file": "weights.bin", "bytes": wbytes, "sha256": wsha, "alignment": ALIGN,
                        "header_bytes": HEADER_BYTES, "magic": MAGIC.rstrip(b"\0").decode(), "byte_order": "little",
                        "layout_version": LAYOUT_VERSION},
            "tensors": tensors,
            "eligibility": eligibility or {},
            "sizes": sizes,
            "notes": notes,
        }
        text = to_json(manifest, "pack")
        with atomic_open(staging / "manifest.json", "w") as f:
            f.write(text)
        if fail_after:
            fail_after("manifest.json")
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return json.loads(text)


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------------- reading back

def read_artifact(out_dir: str | os.PathLike) -> tuple[dict, dict[str, PackedTensor]]:
    """The manifest and every packed tensor of an artifact folder (arrays are copies)."""
    out = Path(out_dir)
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise TargetError(f"{out}: no readable manifest.json ({e}); is this an onnxprune pack folder?") from None
    if manifest.get("schema") != "onnxprune.pack":
        raise TargetError(f"{out / 'manifest.json'}: schema is {manifest.get('schema')!r}, not 'onnxprune.pack'")
    raw = (out / manifest["weights"]["file"]).read_bytes()
    packed = {}
    for t in manifest["tensors"]:
        arrays = {}
        for a in t["arrays"]:
            dt = _dtype(a["dtype"])
            arrays[a["name"]] = np.frombuffer(raw, dtype=dt.newbyteorder("<"), count=int(np.prod(a["shape"], dtype=np.int64)),
                                              offset=a["offset"]).reshape(a["shape"]).astype(dt)
        params = dict(t["params"])
        packed[t["name"]] = PackedTensor(t["format"], tuple(t["matrix"]), _dtype(t["dtype"]), arrays, params)
    return manifest, packed


def _dtype(name: str) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:

        return np.dtype(getattr(ml_dtypes, name))


def verify_artifact(out_dir: str | os.PathLike) -> dict:
    """Re-check an artifact: file and array checksums, header, decode of every tensor, dense checksums,
    and the tensors in model.onnx (dense and sparse-initializer forms). Returns {"ok", "problems", ...}."""
    out = Path(out_dir)
    manifest, packed = read_artifact(out)
    problems: list[str] = []
    wfile = out / manifest["weights"]["file"]
    raw = wfile.read_bytes()
    if hashlib.sha256(raw).hexdigest() != manifest["weights"]["sha256"]:
        problems.append("weights.bin: sha256 differs from the manifest")
    if len(raw) != manifest["weights"]["bytes"]:
        problems.append(f"weights.bin: {len(raw)} bytes, the manifest says {manifest['weights']['bytes']}")
    if raw[:16] != MAGIC or struct.unpack("<IIQQ", raw[16:40])[:2] != (LAYOUT_VERSION, ALIGN):
        problems.append("weights.bin: bad header (magic, layout version or alignment)")
    mfile = out / manifest["model"]["file"]
    if _file_sha(mfile) != manifest["model"]["sha256"]:
        problems.append("model.onnx: sha256 differs from the manifest")
    proto = onnx.load(str(mfile), load_external_data=False)
    emitted = Model(proto, mfile)
    for t in manifest["tensors"]:
        for a in t["arrays"]:
            if a["offset"] % ALIGN:
                problems.append(f"{t['name']}.{a['name']}: offset {a['offset']} not aligned to {ALIGN}")
            if hashlib.sha256(raw[a["offset"]:a["offset"] + a["length"]]).hexdigest() != a["sha256"]:
                problems.append(f"{t['name']}.{a['name']}: array sha256 differs from the manifest")
        matrix = decode(packed[t["name"]])
        if sha256(_le(matrix)) != t["matrix_sha256"]:
            problems.append(f"{t['name']}: decoded matrix sha256 differs from the manifest")
        dense = apply_steps(matrix, [(k, tuple(a)) for k, a in t["to_stored"]])
        if sha256(_le(dense)) != t["dense_sha256"]:
            problems.append(f"{t['name']}: rebuilt dense tensor sha256 differs from the manifest")
        if t["in_model"] == "dense":
            inside = emitted.read(t["name"])
        elif t["in_model"] == "sparse_initializer":
            sp = next((s for s in proto.graph.sparse_initializer if s.values.name == t["tensor"]), None)
            inside = from_sparse_tensor_proto(sp) if sp is not None else None
        else:
            inside = None
            if any(i.name == t["tensor"] for i in proto.graph.initializer):
                problems.append(f"{t['name']}: still a dense initializer in the portable model")
        if t["in_model"] != "decoder":
            if inside is None or sha256(_le(np.asarray(inside))) != t["dense_sha256"]:
                problems.append(f"{t['name']}: the tensor in model.onnx differs from the packed one")
    return {"ok": not problems, "problems": problems, "tensors": len(manifest["tensors"]), "emit": manifest["emit"]}

