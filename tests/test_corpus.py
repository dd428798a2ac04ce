"""A corpus of bad and odd inputs, generated here (no stored binaries), each run through every
subcommand that takes it. Invariants for every run: no traceback; the expected exit code (2 for
bad input, with exactly one line on stderr; 0 (or 1, a parity verdict) for legal oddities); the
input files byte for byte as they were; nothing left behind (no temporary files, and after a
failure no new file in the output folder).

The last test prints the tally: cases, runs, tracebacks, wrong exit codes, leftovers.
"""

from __future__ import annotations

import hashlib
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import builders as B
import ml_dtypes
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxprune.cli import main

ROOT = Path(__file__).resolve().parents[1]
MLP = ROOT / "samples" / "digits_mlp.onnx"

# --------------------------------------------------------------------------------------- harness

TALLY = {"cases": set(), "runs": 0, "failed": 0, "tracebacks": 0, "wrong_exit": 0, "extra_stderr": 0,
         "input_changed": 0, "leftovers": 0}


def _snapshot(folder: Path) -> dict[str, str]:
    """Every entry under `folder` (not following symlinks): name -> content hash / kind."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(folder))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            elif p.is_file():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[rel] = "special"
    return out


@dataclass
class Run:
    """One command line and what it must give."""

    args: list[str]
    codes: set[int]  # acceptable exit codes


@dataclass
class Setup:
    runs: dict[str, Run]
    notes: list[str] = field(default_factory=list)  # fragments a successful inspect must show


def check_run(tmp: Path, run: Run) -> None:
    """Invoke and check every invariant; counts into TALLY."""
    inputs, out = tmp / "in", tmp / "out"
    out.mkdir(exist_ok=True)
    before_in, before_out = _snapshot(inputs), _snapshot(out)
    result = CliRunner().invoke(main, run.args, catch_exceptions=True)
    TALLY["runs"] += 1
    problems: dict[str, str] = {}  # kind -> detail
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        problems["tracebacks"] = "traceback:\n" + "".join(traceback.format_exception(*result.exc_info))
    elif result.exit_code not in run.codes:
        problems["wrong_exit"] = f"exit {result.exit_code}, expected {sorted(run.codes)}"
    err_lines = result.stderr.strip().splitlines()
    if result.exit_code == 2 and not problems and (len(err_lines) != 1 or not err_lines[0].startswith("onnxprune: error: ")):
        problems["extra_stderr"] = "stderr is not exactly one error line"
    if "Traceback" in result.output:
        problems.setdefault("tracebacks", "a traceback was printed")
    if _snapshot(inputs) != before_in:
        problems["input_changed"] = f"the input folder changed: {sorted(set(_snapshot(inputs).items()) ^ set(before_in.items()))}"
    after_out = _snapshot(out)
    tmp_left = [p for p in list(after_out) + list(_snapshot(inputs)) if p.rsplit("/", 1)[-1].endswith(".tmp")]
    new = sorted(set(after_out) - set(before_out))
    if tmp_left or (result.exit_code == 2 and new):
        problems["leftovers"] = f"left behind: {tmp_left or new}"
    for kind in problems:
        TALLY[kind] += 1
    if problems:
        msg = f"{run.args}: " + "; ".join(problems.values()) + f"\nstdout: {result.stdout[-1500:]}\nstderr: {result.stderr[-1500:]}"
        TALLY["failed"] += 1
        pytest.fail(msg)


# ------------------------------------------------------------------------------------ model files

def _save(proto: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(proto.SerializeToString())
    return path


def _graph(nodes, inputs, outputs, inits=(), opset=17, ir=8, extra_opsets=()) -> onnx.ModelProto:
    g = h.make_graph(nodes, "g", inputs, outputs, list(inits))
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset), *extra_opsets], producer_name="corpus")
    m.ir_version = ir
    return m


def _vi(name, shape, elem=T.FLOAT):
    return h.make_tensor_value_info(name, elem, shape)


def _mm(w: np.ndarray | T, x_shape=None, opset=17) -> onnx.ModelProto:
    """Y = X . W with W (K, N) given as an array or a TensorProto named W."""
    t = w if isinstance(w, onnx.TensorProto) else nh.from_array(w, "W")
    k, n = t.dims
    return _graph([h.make_node("MatMul", ["X", "W"], ["Y"], name="mm")], [_vi("X", x_shape or [2, k])],
                  [_vi("Y", (x_shape or [2, k])[:-1] + [n])], [t], opset=opset)


def _w(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _small(mutate: Callable[[onnx.ModelProto], None] | None = None) -> onnx.ModelProto:
    m = B.small_net()
    if mutate:
        mutate(m)
    return m


def _init(m: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in m.graph.initializer if t.name == name)


def _scan_model() -> onnx.ModelProto:
    """Scan over X (3 steps of (2, 8)): y_t = x_t . Ws, Ws (8, 4) an initializer of the body."""
    body = h.make_graph([h.make_node("MatMul", ["x_t", "Ws"], ["y_t"], name="mm_scan"),
                         h.make_node("Identity", ["s_in"], ["s_out"], name="carry")],
                        "scan_body", [_vi("s_in", [1]), _vi("x_t", [2, 8])], [_vi("s_out", [1]), _vi("y_t", [2, 4])],
                        [nh.from_array(_w((8, 4), 3), "Ws")])
    node = h.make_node("Scan", ["S0", "X"], ["S", "Y"], name="scan", body=body, num_scan_inputs=1)
    return _graph([node], [_vi("S0", [1]), _vi("X", [3, 2, 8])], [_vi("S", [1]), _vi("Y", [3, 2, 4])])


def _shared_axes_model() -> onnx.ModelProto:
    """One W (8, 8) read as MatMul B directly (reduces over axis 0) and through a Transpose (axis 1)."""
    return _graph([h.make_node("MatMul", ["X", "W"], ["A"], name="mm_a"),
                   h.make_node("Transpose", ["W"], ["Wt"], name="t", perm=[1, 0]),
                   h.make_node("MatMul", ["A", "Wt"], ["Y"], name="mm_b")],
                  [_vi("X", [2, 8])], [_vi("Y", [2, 8])], [nh.from_array(_w((8, 8)), "W")])


def _dq_model(dtype: int, opset: int) -> onnx.ModelProto:
    """W stored in a narrow type (8, 32) -> DequantizeLinear -> MatMul."""
    w = np.clip(_w((32, 8)) * 2, -6, 6)
    np_t = {T.INT8: np.int8, T.FLOAT8E4M3FN: ml_dtypes.float8_e4m3fn, T.INT4: ml_dtypes.int4}[dtype]
    q = np.round(w).astype(np_t) if dtype != T.FLOAT8E4M3FN else w.astype(np_t)
    inits = [nh.from_array(q, "W"), nh.from_array(np.array(0.05, np.float32), "W_scale")]
    inputs = ["W", "W_scale"]
    if dtype != T.FLOAT8E4M3FN:
        inits.append(nh.from_array(np.zeros((), np_t), "W_zp"))
        inputs.append("W_zp")
    return _graph([h.make_node("DequantizeLinear", inputs, ["Wd"], name="dq"),
                   h.make_node("MatMul", ["X", "Wd"], ["Y"], name="mm")],
                  [_vi("X", [2, 32])], [_vi("Y", [2, 8])], inits, opset=opset, ir=10 if opset >= 21 else 9)


def _ext(tmp: Path, **entries) -> Path:
    """small_net with external data; `entries` overwrite fc.W's external_data keys."""
    path = B.external_data_model(tmp / "in")
    if entries:
        B.set_external_entries(path, "fc.W", **entries)
    return path


# ------------------------------------------------------------------------------------ subcommands


def model_runs(model: Path, tmp: Path, default: set[int], **override: set[int]) -> dict[str, Run]:
    """The model through every subcommand; `override` changes the exit codes of some."""
    m, out = str(model), tmp / "out"
    args = {
        "inspect": ["inspect", m],
        "prune": ["prune", m, "-o", str(out / "p.onnx"), "--quiet", "--min-params", "16", "--report", str(out / "r.json")],
        "check": ["check", m, m, "--samples", "3", "--quiet"],
        "pack": ["pack", m, "--target", "npu-bitmask", "-o", str(out / "pack"), "--quiet", "--no-gzip"],
        "sweep": ["sweep", m, "--sparsities", "0.5", "--samples", "3", "--min-params", "16"],
        "run": ["run", "unstructured-gate", m, "-o", str(out / "g.onnx"), "--quiet", "--set", "data.samples=3"],
    }
    return {name: Run(a, set(override.get(name, default))) for name, a in args.items()}


BAD = {2}
LEGAL = {0}
VERDICT = {0, 1}  # parity gates: a legal model may pass or fail
PACK = {0, 2}  # an unpruned model has nothing to pack: one line saying to prune first


def legal(model: Path, tmp: Path, notes=(), **override) -> Setup:
    o = {"check": VERDICT, "run": VERDICT, "pack": PACK, **override}
    return Setup(model_runs(model, tmp, LEGAL, **o), list(notes))


def bad(model: Path, tmp: Path, **override) -> Setup:
    return Setup(model_runs(model, tmp, BAD, **override))


# ------------------------------------------------------------------------------------- the cases

SUBCOMMANDS = ("inspect", "prune", "check", "pack", "sweep", "run")
CASES: dict[str, tuple[Callable[[Path], Setup], tuple[str, ...]]] = {}  # name -> (set-up, sub-commands run)


def case(name: str, subs: tuple[str, ...] = SUBCOMMANDS):
    def register(fn):
        assert name not in CASES, name
        CASES[name] = (fn, subs)
        return fn
    return register


# files that are not models
@case("empty file")
def _(tmp):
    (tmp / "in").mkdir()
    (tmp / "in" / "m.onnx").write_bytes(b"")
    return bad(tmp / "in" / "m.onnx", tmp)


@case("truncated protobuf")
def _(tmp):
    data = B.small_net().SerializeToString()
    p = tmp / "in" / "m.onnx"
    p.parent.mkdir()
    p.write_bytes(data[: len(data) // 3])
    return bad(p, tmp)


@case("byte-flipped protobuf header")
def _(tmp):
    data = bytearray(B.small_net().SerializeToString())
    data[0] ^= 0xFF
    p = tmp / "in" / "m.onnx"
    p.parent.mkdir()
    p.write_bytes(bytes(data))
    return bad(p, tmp)


@case("byte-flipped weight length prefix")
def _(tmp):
    m = B.small_net()
    data = bytearray(m.SerializeToString())
    raw = _init(m, "fc.W").raw_data
    at = bytes(data).index(raw[:16])
    data[at - 2] ^= 0x7F  # the varint length of raw_data
    p = tmp / "in" / "m.onnx"
    p.parent.mkdir()
    p.write_bytes(bytes(data))
    return bad(p, tmp)


@case("text file")
def _(tmp):
    p = tmp / "in" / "m.onnx"
    p.parent.mkdir()
    p.write_text("not a model\n" * 10)
    return bad(p, tmp)


@case("a tensor protobuf, not a model")
def _(tmp):
    p = tmp / "in" / "m.onnx"
    p.parent.mkdir()
    p.write_bytes(nh.from_array(np.zeros(3, np.float32), "t").SerializeToString())
    return bad(p, tmp)


@case("directory given as the model")
def _(tmp):
    (tmp / "in" / "m.onnx").mkdir(parents=True)
    return bad(tmp / "in" / "m.onnx", tmp)


@case("FIFO given as the model")
def _(tmp):
    (tmp / "in").mkdir()
    os.mkfifo(tmp / "in" / "m.onnx")
    return bad(tmp / "in" / "m.onnx", tmp)


@case("missing file")
def _(tmp):
    (tmp / "in").mkdir()
    return bad(tmp / "in" / "m.onnx", tmp)


@case("file name not valid UTF-8")
def _(tmp):
    (tmp / "in").mkdir()
    raw = os.fsencode(str(tmp / "in")) + b"/m\xff\xfe.onnx"
    with open(raw, "wb") as f:
        f.write(B.small_net().SerializeToString())
    return legal(Path(os.fsdecode(raw)), tmp)


@case("missing file whose name is not valid UTF-8")
def _(tmp):
    (tmp / "in").mkdir()
    return bad(Path(os.fsdecode(os.fsencode(str(tmp / "in")) + b"/gone\xff.onnx")), tmp)


@case("a node name that is not UTF-8 inside the protobuf")
def _(tmp):
    data = bytearray(B.small_net().SerializeToString())
    at = bytes(data).index(b"relu")
    data[at] = 0xE6  # a lead byte without its continuation
    p = tmp / "in" / "m.onnx"
    p.parent.mkdir()
    p.write_bytes(bytes(data))
    return bad(p, tmp)


# external data traps
@case("external data: location with ..")
def _(tmp):
    p = _ext(tmp, location="../outside.data")
    (tmp / "outside.data").write_bytes((p.parent / "model.onnx.data").read_bytes())
    return bad(p, tmp)


@case("external data: absolute location")
def _(tmp):
    p = _ext(tmp)
    return bad(_ext(tmp, location=str(p.parent / "model.onnx.data")), tmp)


@case("external data: symlink escaping the folder")
def _(tmp):
    p = _ext(tmp)
    data = p.parent / "model.onnx.data"
    real = tmp / "elsewhere.data"
    real.write_bytes(data.read_bytes())
    data.unlink()
    data.symlink_to(real)
    return bad(p, tmp)


@case("external data: missing file")
def _(tmp):
    p = _ext(tmp)
    (p.parent / "model.onnx.data").unlink()
    return bad(p, tmp)


@case("external data: location is a directory")
def _(tmp):
    p = _ext(tmp, location="sub")
    (p.parent / "sub").mkdir()
    return bad(p, tmp)


@case("external data: location is a FIFO")
def _(tmp):
    p = _ext(tmp, location="pipe.data")
    os.mkfifo(p.parent / "pipe.data")
    return bad(p, tmp)


@case("external data: offset past the end")
def _(tmp):
    return bad(_ext(tmp, offset=str(10**9)), tmp)


@case("external data: negative offset")
def _(tmp):
    return bad(_ext(tmp, offset="-64"), tmp)


@case("external data: length past the end")
def _(tmp):
    p = _ext(tmp)
    size = (p.parent / "model.onnx.data").stat().st_size
    return bad(_ext(tmp, length=str(size * 2)), tmp)


@case("external data: length shorter than the dims")
def _(tmp):
    return bad(_ext(tmp, length="100"), tmp)


@case("external data: length longer than the dims")
def _(tmp):
    return bad(_ext(tmp, length=str(10 * 64 * 4 + 4)), tmp)


@case("external data: offset not a number")
def _(tmp):
    return bad(_ext(tmp, offset="zero"), tmp)


@case("external data: file truncated")
def _(tmp):
    p = _ext(tmp)
    data = p.parent / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:-16])
    return bad(p, tmp)


@case("external data: legal, all tensors in one file")
def _(tmp):
    return legal(_ext(tmp), tmp)


# tensors whose bytes do not match their dims
@case("raw_data 25 bytes for (16, 8)")
def _(tmp):
    t = nh.from_array(np.zeros((16, 8), np.uint8), "W")
    t.raw_data = bytes(25)
    m = _graph([h.make_node("Cast", ["W"], ["Wf"], name="cast", to=T.FLOAT), h.make_node("MatMul", ["X", "Wf"], ["Y"], name="mm")],
               [_vi("X", [2, 16])], [_vi("Y", [2, 8])], [t])
    return bad(_save(m, tmp / "in" / "m.onnx"), tmp)


@case("raw_data longer than the dims")
def _(tmp):
    m = _small(lambda m: setattr(_init(m, "fc.W"), "raw_data", _init(m, "fc.W").raw_data + b"\0\0\0\0"))
    return bad(_save(m, tmp / "in" / "m.onnx"), tmp)


@case("float_data count not matching the dims")
def _(tmp):
    t = h.make_tensor("W", T.FLOAT, [8, 4], [1.0] * 32)
    del t.float_data[5:]
    return bad(_save(_mm(t), tmp / "in" / "m.onnx"), tmp)


@case("initializer with a negative dim")
def _(tmp):
    t = nh.from_array(_w((8, 4)), "W")
    t.dims[0] = -8
    m = _graph([h.make_node("MatMul", ["X", "W"], ["Y"], name="mm")], [_vi("X", [2, 8])], [_vi("Y", [2, 4])], [t])
    return bad(_save(m, tmp / "in" / "m.onnx"), tmp)


@case("initializer with huge dims")
def _(tmp):
    t = nh.from_array(_w((8, 4)), "W")
    t.dims[:] = [2**40, 2**40]
    m = _graph([h.make_node("MatMul", ["X", "W"], ["Y"], name="mm")], [_vi("X", [2, 2**40])], [_vi("Y", [2, 2**40])], [t])
    return bad(_save(m, tmp / "in" / "m.onnx"), tmp)


@case("initializer with an undefined element type")
def _(tmp):
    m = _small(lambda m: setattr(_init(m, "fc.W"), "data_type", 0))
    return bad(_save(m, tmp / "in" / "m.onnx"), tmp)


@case("initializer with an element type onnx does not know")
def _(tmp):
    m = _small(lambda m: setattr(_init(m, "fc.W"), "data_type", 99))
    return bad(_save(m, tmp / "in" / "m.onnx"), tmp)


# names and structure
@case("duplicate initializer names")
def _(tmp):
    m = _small(lambda m: m.graph.initializer.append(_init(m, "fc.W")))
    return bad(_save(m, tmp / "in" / "m.onnx"), tmp)


@case("duplicate graph input names")
def _(tmp):
    m = _small(lambda m: m.graph.input.append(m.graph.input[0]))
    return bad(_save(m, tmp / "in" / "m.onnx"), tmp)


@case("undefined node input")
def _(tmp):
    m = _small(lambda m: m.graph.node[1].input.__setitem__(0, "nowhere"))
    return bad(_save(m, tmp / "in" / "m.onnx"), tmp)


@case("a tensor produced twice")
def _(tmp):
    m = _small(lambda m: m.graph.node[2].output.__setitem__(0, "c"))
    return bad(_save(m, tmp / "in" / "m.onnx"), tmp)


@case("a node output shadowing an initializer")
def _(tmp):
    m = _small(lambda m: m.graph.node[1].output.__setitem__(0, "conv.B"))
    return bad(_save(m, tmp / "in" / "m.onnx"), tmp)


@case("a cycle")
def _(tmp):
    def mutate(m):
        m.graph.node[1].input[0] = "f"  # relu reads flatten's output, which reads relu's
    return bad(_save(_small(mutate), tmp / "in" / "m.onnx"), tmp)


@case("graph output nobody produces")
def _(tmp):
    m = _small(lambda m: m.graph.output.append(_vi("ghost", [1])))
    return bad(_save(m, tmp / "in" / "m.onnx"), tmp)


@case("unknown op in the default domain")
def _(tmp):
    m = _small(lambda m: setattr(m.graph.node[1], "op_type", "Rellu"))
    return bad(_save(m, tmp / "in" / "m.onnx"), tmp)


@case("MatMul with incompatible weight shape")
def _(tmp):
    m = _small(lambda m: _init(m, "head.W").dims.__setitem__(slice(None), [3, 10]))
    return bad(_save(m, tmp / "in" / "m.onnx"), tmp)


@case("subgraph reading an undefined name")
def _(tmp):
    m = B.if_branches()
    m.graph.node[0].attribute[0].g.node[0].input[0] = "nowhere"
    return bad(_save(m, tmp / "in" / "m.onnx"), tmp)


@case("nodes out of topological order (legal)")
def _(tmp):
    m = _small(lambda m: m.graph.node.reverse())
    return legal(_save(m, tmp / "in" / "m.onnx"), tmp, notes=["topological order"])


# versions
@case("opset newer than onnx knows")
def _(tmp):
    m = _small(lambda m: setattr(m.opset_import[0], "version", onnx.defs.onnx_opset_version() + 1))
    return bad(_save(m, tmp / "in" / "m.onnx"), tmp)


@case("opset 5, older than onnxruntime supports")
def _(tmp):
    m = _graph([h.make_node("Relu", ["X"], ["Y"], name="relu")], [_vi("X", [2, 4])], [_vi("Y", [2, 4])], opset=5, ir=3)
    return bad(_save(m, tmp / "in" / "m.onnx"), tmp)


@case("IR version newer than onnx knows")
def _(tmp):
    m = _small(lambda m: setattr(m, "ir_version", onnx.IR_VERSION + 1))
    return bad(_save(m, tmp / "in" / "m.onnx"), tmp)


@case("IR version 2")
def _(tmp):
    m = _small(lambda m: setattr(m, "ir_version", 2))
    return bad(_save(m, tmp / "in" / "m.onnx"), tmp)


@case("no opset import for ai.onnx")
def _(tmp):
    m = _small(lambda m: m.opset_import.__delitem__(slice(None)))
    return bad(_save(m, tmp / "in" / "m.onnx"), tmp)


@case("opset 7, the oldest supported (legal)")
def _(tmp):
    m = _graph([h.make_node("MatMul", ["X", "W"], ["Y"], name="mm")], [_vi("X", [2, 32])], [_vi("Y", [2, 32])],
               [nh.from_array(_w((32, 32)), "W")], opset=7, ir=3)
    m.graph.input.append(_vi("W", [32, 32]))  # IR 3: initializers are graph inputs too
    return legal(_save(m, tmp / "in" / "m.onnx"), tmp)


@case("custom-domain op (legal, noted)")
def _(tmp):
    def mutate(m):
        n = m.graph.node[1]
        n.op_type, n.domain = "MyRelu", "com.example"
        m.opset_import.append(h.make_opsetid("com.example", 1))
    m = _small(mutate)
    # onnxruntime cannot run the op: the gates refuse it in one line
    return legal(_save(m, tmp / "in" / "m.onnx"), tmp, notes=["com.example"], check=BAD, sweep=BAD, run=BAD)


# weights: values and types
@case("NaN weights")
def _(tmp):
    m = _small(lambda m: _init(m, "fc.W").CopyFrom(nh.from_array(np.full((10, 64), np.nan, np.float32), "fc.W")))
    # the original gives only NaN: nothing to judge parity on
    return legal(_save(m, tmp / "in" / "m.onnx"), tmp, sweep=BAD, check=BAD, run=BAD)


@case("Inf weights")
def _(tmp):
    w = _w((10, 3))
    w[:3, 0] = [np.inf, -np.inf, np.inf]  # output column 0 is non-finite, the others are not
    m = _small(lambda m: _init(m, "head.W").CopyFrom(nh.from_array(w, "head.W")))
    return legal(_save(m, tmp / "in" / "m.onnx"), tmp, check=LEGAL)


@case("fp16 weights")
def _(tmp):
    m = _graph([h.make_node("MatMul", ["X", "W"], ["Y"], name="mm")], [_vi("X", [2, 32], T.FLOAT16)],
               [_vi("Y", [2, 16], T.FLOAT16)], [nh.from_array(_w((32, 16)).astype(np.float16), "W")])
    return legal(_save(m, tmp / "in" / "m.onnx"), tmp)


@case("bf16 weights")
def _(tmp):
    m = _graph([h.make_node("Cast", ["W"], ["Wf"], name="cast", to=T.FLOAT), h.make_node("MatMul", ["X", "Wf"], ["Y"], name="mm")],
               [_vi("X", [2, 32])], [_vi("Y", [2, 16])], [nh.from_array(_w((32, 16)).astype(ml_dtypes.bfloat16), "W")])
    return legal(_save(m, tmp / "in" / "m.onnx"), tmp)


@case("int8 weights behind DequantizeLinear")
def _(tmp):
    return legal(_save(_dq_model(T.INT8, 17), tmp / "in" / "m.onnx"), tmp)


@case("float8 weights behind DequantizeLinear")
def _(tmp):
    return legal(_save(_dq_model(T.FLOAT8E4M3FN, 19), tmp / "in" / "m.onnx"), tmp)


@case("int4 weights behind DequantizeLinear")
def _(tmp):
    return legal(_save(_dq_model(T.INT4, 21), tmp / "in" / "m.onnx"), tmp)


@case("already-zero weights")
def _(tmp):
    def mutate(m):
        for t in m.graph.initializer:
            t.CopyFrom(nh.from_array(np.zeros(tuple(t.dims), np.float32), t.name))
    return legal(_save(_small(mutate), tmp / "in" / "m.onnx"), tmp)


@case("no prunable weights")
def _(tmp):
    m = _graph([h.make_node("Relu", ["X"], ["Y"], name="relu")], [_vi("X", [2, 4])], [_vi("Y", [2, 4])])
    return legal(_save(m, tmp / "in" / "m.onnx"), tmp)


@case("no nodes at all")
def _(tmp):
    m = _graph([], [_vi("X", [2, 4])], [_vi("X", [2, 4])])
    return legal(_save(m, tmp / "in" / "m.onnx"), tmp)


@case("weights inside If branches")
def _(tmp):
    return legal(_save(B.if_branches(), tmp / "in" / "m.onnx"), tmp)


@case("weights inside a Loop body")
def _(tmp):
    return legal(_save(B.loop_body(), tmp / "in" / "m.onnx"), tmp)


@case("weights inside a Scan body")
def _(tmp):
    return legal(_save(_scan_model(), tmp / "in" / "m.onnx"), tmp)


@case("one weight read on two axes")
def _(tmp):
    return legal(_save(_shared_axes_model(), tmp / "in" / "m.onnx"), tmp)


@case("weight in a Constant node")
def _(tmp):
    return legal(_save(B.matmul_constant_node(), tmp / "in" / "m.onnx"), tmp)


@case("LSTM weights")
def _(tmp):
    return legal(_save(B.rnn("LSTM"), tmp / "in" / "m.onnx"), tmp)


@case("sparse initializer (legal)")
def _(tmp):
    w = _w((8, 4))
    w[w < 0.5] = 0
    idx = np.flatnonzero(w)
    sp = h.make_sparse_tensor(nh.from_array(w.reshape(-1)[idx], "W"), nh.from_array(idx.astype(np.int64), "W_idx"), [8, 4])
    m = _graph([h.make_node("MatMul", ["X", "W"], ["Y"], name="mm")], [_vi("X", [2, 8])], [_vi("Y", [2, 4])])
    m.graph.sparse_initializer.append(sp)
    return legal(_save(m, tmp / "in" / "m.onnx"), tmp)


# graph inputs with odd dims: every command works or refuses in one line
@case("graph output declared without a shape (legal: onnxruntime runs it)")
def _(tmp):
    m = _small(lambda m: m.graph.output[0].type.tensor_type.ClearField("shape"))
    return legal(_save(m, tmp / "in" / "m.onnx"), tmp, sweep=LEGAL)


@case("graph input dim -1")
def _(tmp):
    m = _small(lambda m: setattr(m.graph.input[0].type.tensor_type.shape.dim[0], "dim_value", -1))
    return legal(_save(m, tmp / "in" / "m.onnx"), tmp, sweep=LEGAL)


@case("graph input dim 0")
def _(tmp):
    # onnxprune reads 0 as dynamic, but onnxruntime takes a declared 0 literally (only empty tensors
    # run): feeding it is refused in one line.
    m = _small(lambda m: setattr(m.graph.input[0].type.tensor_type.shape.dim[0], "dim_value", 0))
    return legal(_save(m, tmp / "in" / "m.onnx"), tmp, check=BAD, sweep=BAD, run=BAD)


@case("graph input with a huge dim")
def _(tmp):
    m = _small(lambda m: setattr(m.graph.input[0].type.tensor_type.shape.dim[0], "dim_value", 2**40))
    return legal(_save(m, tmp / "in" / "m.onnx"), tmp, check=BAD, sweep=BAD, run=BAD)  # synthetic data too large


# ---------------------------------------------------------------------------------- bad options

def _mlp(tmp: Path) -> Path:
    p = tmp / "in" / "mlp.onnx"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(MLP.read_bytes())
    return p


def _odd_dim_model(tmp: Path) -> Path:
    """MatMul W (33, 16): a reduction length that no M of N:M divides."""
    return _save(_mm(_w((33, 16))), tmp / "in" / "odd.onnx")


def option_case(name: str, argv: Callable[[Path, Path], list[str]], codes=BAD):
    """A bad (or legal) option set on the sample MLP; `argv(model, out)` gives the command line."""
    @case(name, (name.split()[0],))
    def _(tmp):
        m = _mlp(tmp) if "odd dim" not in name else _odd_dim_model(tmp)
        return Setup({name.split()[0]: Run([str(a) for a in argv(m, tmp / "out")], set(codes))})


option_case("prune --sparsity -0.1", lambda m, o: ["prune", m, "-o", o / "p.onnx", "--sparsity", "-0.1"])
option_case("prune --sparsity 1.0", lambda m, o: ["prune", m, "-o", o / "p.onnx", "--sparsity", "1.0"])
option_case("prune --sparsity nan", lambda m, o: ["prune", m, "-o", o / "p.onnx", "--sparsity", "nan"])
option_case("prune --sparsity inf", lambda m, o: ["prune", m, "-o", o / "p.onnx", "--sparsity", "inf"])
option_case("prune --pattern 0:4", lambda m, o: ["prune", m, "-o", o / "p.onnx", "--pattern", "0:4"])
option_case("prune --pattern 5:4", lambda m, o: ["prune", m, "-o", o / "p.onnx", "--pattern", "5:4"])
option_case("prune --pattern 2:3 on an odd dim", lambda m, o: ["prune", m, "-o", o / "p.onnx", "--pattern", "2:3",
                                                              "--min-params", "1", "--quiet"], LEGAL)
option_case("prune --pattern 2:3 --nm-remainder pad on an odd dim",
            lambda m, o: ["prune", m, "-o", o / "p.onnx", "--pattern", "2:3", "--nm-remainder", "pad",
                          "--min-params", "1", "--quiet"], LEGAL)
option_case("prune --pattern 0x4", lambda m, o: ["prune", m, "-o", o / "p.onnx", "--pattern", "0x4"])
option_case("prune --pattern nonsense", lambda m, o: ["prune", m, "-o", o / "p.onnx", "--pattern", "2of4"])
option_case("prune --scope bogus", lambda m, o: ["prune", m, "-o", o / "p.onnx", "--scope", "bogus"])
option_case("prune --steps 0", lambda m, o: ["prune", m, "-o", o / "p.onnx", "--steps", "0"])
option_case("prune --min-params -5", lambda m, o: ["prune", m, "-o", o / "p.onnx", "--min-params", "-5", "--quiet"],
            {0, 2})
option_case("prune --override without a value", lambda m, o: ["prune", m, "-o", o / "p.onnx", "--override", "fc*"])
option_case("prune --override 1.5", lambda m, o: ["prune", m, "-o", o / "p.onnx", "--override", "*=1.5"])
option_case("prune --skip everything", lambda m, o: ["prune", m, "-o", o / "p.onnx", "--skip", "*", "--quiet"], LEGAL)
option_case("prune --pattern channel --sparsity 1.0",
            lambda m, o: ["prune", m, "-o", o / "p.onnx", "--pattern", "channel", "--sparsity", "1.0"])
option_case("sweep --sparsities -0.1", lambda m, o: ["sweep", m, "--sparsities", "-0.1"])
option_case("sweep --sparsities nan", lambda m, o: ["sweep", m, "--sparsities", "nan"])
option_case("sweep --sparsities 1.0", lambda m, o: ["sweep", m, "--sparsities", "1.0"])
option_case("sweep --pattern 5:4", lambda m, o: ["sweep", m, "--pattern", "5:4"])
option_case("run --set prune.sparsity=1.0", lambda m, o: ["run", "unstructured-gate", m, "-o", o / "g.onnx",
                                                           "--set", "prune.sparsity=1.0"])
option_case("run --set prune.sparsity=nan", lambda m, o: ["run", "unstructured-gate", m, "-o", o / "g.onnx",
                                                           "--set", "prune.sparsity=nan"])
option_case("run --set prune.pattern=0:4", lambda m, o: ["run", "unstructured-gate", m, "-o", o / "g.onnx",
                                                          "--set", 'prune.pattern="0:4"'])
option_case("pack --block 0x4", lambda m, o: ["pack", m, "--target", "bsr-generic", "--block", "0x4", "-o", o / "pk"])
option_case("pack --target unknown", lambda m, o: ["pack", m, "--target", "no-such-target", "-o", o / "pk"])
option_case("pack --max-increase nan", lambda m, o: ["pack", m, "--target", "npu-bitmask", "--max-increase", "nan",
                                                     "-o", o / "pk", "--quiet"], {0, 2})
option_case("check --min-cosine nan", lambda m, o: ["check", m, m, "--min-cosine", "nan", "--samples", "2"])
option_case("check --samples 0", lambda m, o: ["check", m, m, "--samples", "0"])


# ---------------------------------------------------------------------------------- bad data files

def data_case(name: str, arrays: Callable[[], dict] | None, codes=BAD, raw: bytes | None = None):
    """A data file for the MLP (input 'input' [N, 64]) through check, sweep and prune --check."""
    @case(name, ("check", "sweep", "prune"))
    def _(tmp):
        m = _mlp(tmp)
        d = tmp / "in" / "data.npz"
        if raw is not None:
            d.write_bytes(raw)
        elif arrays is not None:
            np.savez(d, **arrays())
        else:
            d = tmp / "in" / "datadir"
            d.mkdir()
        o = tmp / "out"
        return Setup({
            "check": Run(["check", str(m), str(m), "--data", str(d), "--quiet"], set(codes)),
            "sweep": Run(["sweep", str(m), "--sparsities", "0.5", "--data", str(d)], set(codes)),
            "prune": Run(["prune", str(m), "-o", str(o / "p.onnx"), "--check", "--eval-data", str(d), "--quiet"], set(codes)),
        })


def _mlp_input_name() -> str:
    return onnx.load(str(MLP), load_external_data=False).graph.input[0].name


def _x(n=8, dtype=np.float32):
    return np.random.default_rng(0).standard_normal((n, 64)).astype(dtype)


data_case("data with a wrong input name", lambda: {"nope": _x()})
data_case("data with a wrong dtype (strings)", lambda: {_mlp_input_name(): np.array([["a"] * 64] * 4)})
data_case("data with a wrong shape", lambda: {_mlp_input_name(): _x()[:, :10]})
# NaN inputs give NaN outputs in both models, at the same places: a match, not a parity failure
# (2 would be a fair answer too, should the data layer refuse NaN inputs)
data_case("data with NaN", lambda: {_mlp_input_name(): np.where(_x() > 1, np.nan, _x())}, {0, 1, 2})
data_case("data with no samples", lambda: {_mlp_input_name(): _x(0)})
data_case("data file with no arrays", lambda: {})
data_case("data file that is not an npz", None, raw=b"garbage, not a zip file\n")
data_case("data folder with no files", None)


# ---------------------------------------------------------------------------------- blocked outputs

def output_case(name: str, argv: Callable[[Path, Path, Path], list[str]], codes=BAD):
    """`argv(model, out, blocker)`: `blocker` is a regular file in the output folder (a path under it
    cannot be created, even by root)."""
    @case(name, (name.split()[0],))
    def _(tmp):
        m = _mlp(tmp)
        o = tmp / "out"
        o.mkdir()
        (o / "x.onnx.0123456789abcdef.data").mkdir()  # named like a data file of x.onnx: never removed
        blocker = o / "blocker"
        blocker.write_text("a file where a folder is needed\n")
        (o / "adir.onnx").mkdir()
        return Setup({name.split()[0]: Run([str(a) for a in argv(m, o, blocker)], set(codes))})


output_case("prune -o under a file", lambda m, o, b: ["prune", m, "-o", b / "p.onnx", "--quiet"])
output_case("prune -o onto a folder", lambda m, o, b: ["prune", m, "-o", o / "adir.onnx", "--quiet"])
output_case("prune --report under a file", lambda m, o, b: ["prune", m, "-o", o / "p.onnx", "--report", b / "r.json",
                                                            "--quiet"])
output_case("prune --masks-out under a file", lambda m, o, b: ["prune", m, "-o", o / "p.onnx", "--masks-out",
                                                               b / "m.npz", "--quiet"])
output_case("prune --dump-recipe under a file", lambda m, o, b: ["prune", m, "-o", o / "p.onnx", "--dump-recipe",
                                                                 b / "j.toml", "--quiet"])
output_case("prune --external-data beside a folder named like its data file",
            lambda m, o, b: ["prune", m, "-o", o / "x.onnx", "--external-data", "--quiet"], codes={0})
output_case("prune --report named like the output's data file",
            lambda m, o, b: ["prune", m, "-o", o / "x.onnx", "--report", o / "x.onnx.00000000deadbeef.data", "--quiet"])
output_case("prune -o onto the input", lambda m, o, b: ["prune", m, "-o", m, "--quiet"])
output_case("pack -o onto a file", lambda m, o, b: ["pack", m, "--target", "npu-bitmask", "-o", b, "--quiet"])
output_case("pack -o under a file", lambda m, o, b: ["pack", m, "--target", "npu-bitmask", "-o", b / "pk", "--quiet"])
output_case("pack --report under a file", lambda m, o, b: ["pack", m, "--target", "npu-bitmask", "-o", o / "pk",
                                                          "--report", b / "r.json", "--quiet"])
output_case("check --report under a file", lambda m, o, b: ["check", m, m, "--report", b / "r.json", "--quiet",
                                                            "--samples", "2"])
output_case("sweep --report under a file", lambda m, o, b: ["sweep", m, "--sparsities", "0.5", "--samples", "2",
                                                            "--report", b / "r.json"])
output_case("sweep --plot under a file", lambda m, o, b: ["sweep", m, "--sparsities", "0.5", "--samples", "2",
                                                          "--report", o / "r.json", "--plot", b / "p.png"])
output_case("prune --html under a file", lambda m, o, b: ["prune", m, "-o", o / "p.onnx", "--html", b / "r.html",
                                                          "--quiet"])
output_case("check --html under a file", lambda m, o, b: ["check", m, m, "--html", b / "r.html", "--quiet",
                                                          "--samples", "2"])
output_case("sweep --html under a file", lambda m, o, b: ["sweep", m, "--sparsities", "0.5", "--samples", "2",
                                                          "--html", b / "r.html"])
output_case("run -o under a file", lambda m, o, b: ["run", "unstructured-gate", m, "-o", b / "g.onnx", "--quiet"])


# ----------------------------------------------------------------------------------------- tests

PARAMS = [pytest.param(name, sub, id=f"{name}-{sub}") for name, (_, subs) in CASES.items() for sub in subs]


@pytest.mark.parametrize("name, sub", PARAMS)
def test_corpus(tmp_path, name, sub):
    setup = CASES[name][0](tmp_path)
    run = setup.runs[sub]
    TALLY["cases"].add(name)
    check_run(tmp_path, run)
    if sub == "inspect" and setup.notes and 0 in run.codes:
        out = CliRunner().invoke(main, ["inspect", run.args[1]], catch_exceptions=False).stdout
        for note in setup.notes:
            assert note in out, (note, out[-800:])


def test_corpus_tally(capsys):
    """The corpus has at least 60 inputs; prints what the runs above found (this module only)."""
    assert len(CASES) >= 60, len(CASES)
    with capsys.disabled():
        print(f"\ncorpus: {len(CASES)} cases ({len(TALLY['cases'])} run here), {TALLY['runs']} runs: "
              f"{TALLY['failed']} failed; {TALLY['tracebacks']} tracebacks, "
              f"{TALLY['wrong_exit']} wrong exit codes, {TALLY['extra_stderr']} multi-line errors, "
              f"{TALLY['input_changed']} inputs changed, {TALLY['leftovers']} leftovers")
