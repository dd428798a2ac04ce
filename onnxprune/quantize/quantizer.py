"""Quantize a (pruned) model with onnxruntime's quantization tool, keeping every pruned zero exact.

    int8          `quantize_static` to QDQ: per-channel symmetric int8 weights (zero point 0, so a pruned
                  weight stays exactly 0 and every N:M group / block stays sparse), activation ranges from
                  the calibration feeds (MinMax), on the nodes that apply a prunable weight (Conv, MatMul,
                  Gemm; attention's activation products stay float). The QDQ layout is the consumer's:
                  "onnxruntime" (uint8 activations, int32 biases, quantized outputs: the CPU provider fuses
                  DQ -> op -> Q into QLinearConv / QLinearMatMul) or "tensorrt" (int8 symmetric activations,
                  float biases, Q/DQ on each weight and its input only: TensorRT's explicit quantization;
                  leaving the outputs float keeps MiniLM's pooled cosine at 0.989 instead of 0.924)
    int8-dynamic  `quantize_dynamic`: MatMul (and Gemm, which the tool splits into MatMul + Add) ->
                  MatMulInteger with per-channel symmetric int8 weights, activations quantized at run time
                  (transformers; no calibration; Conv stays float)
    fp16          `onnxruntime.transformers.float16` (ships in the onnxruntime wheel): float initializers and
                  activations to float16, graph inputs and outputs kept float32; 0 stays 0 and no non-zero
                  becomes 0 (tiny values are clamped to the smallest float16)

`quantize_model` replaces the model's graph and returns its report, with the independent check
(`verify.verify_kept`) per weight.
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib.metadata
import logging
import tempfile
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import onnx

from onnxprune.analyze.weights import find_weights
from onnxprune.core.errors import OnnxPruneError, Opt, OptionError
from onnxprune.core.model import Model
from onnxprune.quantize.verify import verify_kept, zero_maps

QUANTIZE_MODES = ("int8", "int8-dynamic", "fp16")
QDQ_LAYOUTS = ("onnxruntime", "tensorrt")
STATIC_OPS = ("Conv", "MatMul", "Gemm")  # the ops whose weights are pruned
DYNAMIC_OPS = ("MatMul",)


def needs_calibration(mode: str | None) -> bool:
    return mode == "int8"


def check_mode(mode: str | None, layout: str = "onnxruntime") -> None:
    if mode is not None and mode not in QUANTIZE_MODES:
        raise OptionError(Opt("prune.quantize"), f" {mode!r}: use one of {', '.join(QUANTIZE_MODES)}")
    if layout not in QDQ_LAYOUTS:
        raise OptionError(f"QDQ layout {layout!r}: use one of {', '.join(QDQ_LAYOUTS)}")


class _Feeds:
    """onnxruntime's CalibrationDataReader protocol over feed dicts."""

    def __init__(self, feeds: Iterable[Mapping[str, np.ndarray]]):
        self._it = iter(feeds)
        self.count = 0

    def get_next(self) -> dict | None:
        feed = next(self._it, None)
        if feed is not None:
            self.count += 1
            return dict(feed)
        return None


@contextlib.contextmanager
def _quiet_tool():
    """onnxruntime.quantization logs advice (pre-processing) on the root logger, and its calibration sessions
    warn once a run where a model declares a batch-1 output: keep both off stderr (errors still show)."""
    import onnxruntime as ort

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    ort.set_default_logger_severity(3)
    try:
        yield
    finally:
        root.setLevel(level)
        ort.set_default_logger_severity(2)  # onnxruntime's default (warnings)


def _settings(mode: str, layout: str) -> dict:
    if mode == "int8":
        trt = layout == "tensorrt"
        return {"format": "QDQ", "op_types": list(STATIC_OPS), "per_channel": True, "weight_type": "int8",
                "weight_symmetric": True, "activation_type": "int8" if trt else "uint8",
                "activation_symmetric": trt, "quantize_bias": not trt, "quantize_outputs": not trt,
                "calibrate_method": "MinMax",
                "reduce_range": False}
    if mode == "int8-dynamic":
        return {"format": "QOperator (MatMulInteger)", "op_types": list(DYNAMIC_OPS), "per_channel": True,
                "weight_type": "int8", "weight_symmetric": True, "activations": "quantized at run time"}
    return {"converter": "onnxruntime.transformers.float16", "keep_io_types": True}


def weight_nodes(model: Model, ops: tuple[str, ...]) -> list[str] | None:
    """The main-graph nodes of `ops` that apply a prunable constant weight: the only nodes quantized, so Q/DQ
    sit around the weights (and their inputs) and activation x activation products (attention scores)
    stay float. None when such a node has no name (the tool selects by name): then every node of `ops`."""
    names = {u.node for w in find_weights(model).weights for u in w.uses if u.op in ops and not u.graph}
    return None if "" in names else sorted(names)


def kept_float(model: Model, skip: Iterable[str]) -> list[str]:
    """The main-graph nodes `skip` keeps in float: a glob matching the node's name or the key of a
    weight it applies (as --skip names weights). Sorted; empty without globs."""
    globs = list(skip)
    if not globs:
        return []

    def hit(name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, g) for g in globs)

    names = {n.name for n in model.proto.graph.node if n.name and hit(n.name)}
    names |= {u.node for w in find_weights(model).weights if hit(w.key) for u in w.uses if u.node and not u.graph}
    return sorted(names)


def _run_tool(src: Path, dst: Path, mode: str, layout: str, feeds, large: bool, nodes: list[str] | None,
              exclude: list[str]) -> int:
    """Run onnxruntime's tool from file `src` to file `dst`; returns the calibration samples read."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if mode == "int8":
        s = _settings(mode, layout)
        reader = _Feeds(feeds)
        quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=list(STATIC_OPS),
                        nodes_to_quantize=nodes, nodes_to_exclude=exclude, per_channel=True, reduce_range=False,
                        weight_type=QuantType.QInt8,
                        activation_type=QuantType.QInt8 if s["activation_type"] == "int8" else QuantType.QUInt8,
                        use_external_data_format=large, calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"WeightSymmetric": True, "ActivationSymmetric": s["activation_symmetric"],
                                       "QuantizeBias": s["quantize_bias"],
                                       "OpTypesToExcludeOutputQuantization": [] if s["quantize_outputs"]
                                       else list(STATIC_OPS)})
        if reader.count == 0:
            raise OptionError("quantize int8 got no calibration sample: give ", Opt("data.calibration", "FILE"))
        return reader.count
    if mode == "int8-dynamic":
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=list(DYNAMIC_OPS), nodes_to_quantize=nodes,
                         nodes_to_exclude=exclude, per_channel=True,
                         reduce_range=False, weight_type=QuantType.QInt8, use_external_data_format=large,
                         extra_options={"WeightSymmetric": True})
        return 0
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = onnx.load(str(src))
    onnx.save(convert_float_to_float16(proto, keep_io_types=True, node_block_list=exclude or None), str(dst),
              save_as_external_data=large)
    return 0


PER_CHANNEL_OPSET = 13  # DequantizeLinear's axis (per-channel scales) needs opset 13


def _upgrade_opset(path: Path, mode: str, large: bool) -> int | None:
    """Per-channel QDQ needs opset 13: convert an older model file in place (onnx's version converter);
    returns the opset it had, or None when nothing changed. The tool itself only warns and writes an
    invalid model."""
    if mode != "int8":
        return None
    proto = onnx.load(str(path))
    old = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), PER_CHANNEL_OPSET)
    if old >= PER_CHANNEL_OPSET:
        return None
    from onnx import version_converter

    try:
        proto = version_converter.convert_version(proto, PER_CHANNEL_OPSET)
    except Exception as e:  # noqa: BLE001 - the converter raises plain RuntimeErrors
        raise OnnxPruneError(f"per-channel int8 needs opset {PER_CHANNEL_OPSET}; converting the model from opset "
                             f"{old} failed ({str(e).strip().splitlines()[0] if str(e).strip() else e!r}); "
                             "re-export it at opset 13 or later") from e
    onnx.save(proto, str(path), save_as_external_data=large)
    return old


def file_bytes(path: Path) -> int:
    """On-disk size of a model file and the external data files beside it that it refers to."""
    proto = onnx.load(str(path), load_external_data=False)
    files = {e.value for t in _all_tensors(proto) for e in t.external_data if e.key == "location"}
    return path.stat().st_size + sum((path.parent / f).stat().st_size for f in files)


def _all_tensors(proto: onnx.ModelProto):
    from onnx.external_data_helper import _get_all_tensors

    return _get_all_tensors(proto)


def quantize_model(model: Model, mode: str, calibration_feeds: Iterable[Mapping[str, np.ndarray]] | None = None, *,
                   layout: str = "onnxruntime", patterns: Mapping[str, str] | None = None,
                   skip: Iterable[str] = ()) -> dict:
    """Quantize `model` in place (its graph is replaced) with onnxruntime's tool; returns the report.

    `calibration_feeds`: input dicts for int8 (the same set pruning calibrated on); `layout`: the QDQ layout
    ("onnxruntime" for the CPU provider, "tensorrt"); `patterns`: weight key -> the pattern it was pruned in
    ("2:4", "4x4", ...), whose groups / blocks are then checked on the quantized tensor; `skip`: globs of
    nodes (or of the weights they apply) kept in float (`kept_float`). Every stored zero
    must stay the zero point: anything else raises (it would be a bug in the settings, not in the input).

    Example::

        model = Model.load("pruned.onnx")
        calib = Dataset.from_source("calib.npz", model.proto)
        report = quantize_model(model, "int8", (b.feed for b in calib.iter_batches(1)))
        model.save("pruned_int8.onnx")
    """
    check_mode(mode, layout)
    if needs_calibration(mode) and calibration_feeds is None:
        raise OptionError("quantize int8 calibrates activation ranges: give ", Opt("data.calibration", "FILE"))
    before = zero_maps(model, dict(patterns or {}))
    nodes = weight_nodes(model, STATIC_OPS) if mode == "int8" else None  # dynamic renames Gemm nodes first
    exclude = kept_float(model, skip)
    tool_exclude = exclude
    if mode == "int8-dynamic":  # the tool turns Gemm NAME into NAME_MatMul + NAME_Add before it selects
        gemm = {n.name for n in model.proto.graph.node if n.op_type == "Gemm"}
        tool_exclude = exclude + [f"{n}_MatMul" for n in exclude if n in gemm]
    large = model.weight_bytes() > 1_800_000_000
    with tempfile.TemporaryDirectory(prefix="onnxprune-quantize-") as tmp:
        src, dst = Path(tmp) / "pruned.onnx", Path(tmp) / "quantized.onnx"
        model.save(src, external_data=large)
        input_bytes = file_bytes(src)
        opset = _upgrade_opset(src, mode, large)
        try:
            with _quiet_tool():
                samples = _run_tool(src, dst, mode, layout, calibration_feeds, large, nodes, tool_exclude)
        except OnnxPruneError:
            raise
        except Exception as e:  # the tool's failures (an op it cannot handle, a feed it rejects)
            line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise OnnxPruneError(f"onnxruntime quantization ({mode}) failed: {line}") from e
        output_bytes = file_bytes(dst)
        model.replace_proto(onnx.load(str(dst)))
    model.set_metadata({"onnxprune.quantize": mode})
    rows = verify_kept(before, model)
    bad = [r for r in rows if not r["ok"]]
    if bad:
        r = bad[0]
        raise OnnxPruneError(f"{r['name']}: quantization did not keep its zeros ({r.get('problem') or r}); "
                             "please report this")
    return {
        "mode": mode,
        "tool": (f"onnxruntime {importlib.metadata.version('onnxruntime')} "
                 + ("transformers.float16" if mode == "fp16" else "quantization")),
        "layout": layout if mode == "int8" else None,
        "settings": _settings(mode, layout),
        "nodes_quantized": "every node of the op types" if nodes is None and mode != "fp16" else
                           (len(set(nodes) - set(exclude)) if nodes is not None else None),
        "nodes_kept_float": exclude,
        "calibration_samples": samples,
        "opset_upgraded_from": opset,
        "weights": rows,
        "quantized_weights": sum(1 for r in rows if r.get("quantized")),
        "zeros_kept": all(r["ok"] for r in rows),
        "bytes_before": input_bytes,
        "bytes_after": output_bytes,
    }


def renamed(report: dict) -> dict[str, str]:
    """Float weight key -> its key in the quantized model, for the weights the tool renamed."""
    return {r["name"]: r["quantized_name"] for r in report["weights"]
            if r.get("quantized_name") and r["quantized_name"] != r["name"]}
