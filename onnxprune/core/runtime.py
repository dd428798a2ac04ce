"""The one place onnxruntime sessions are made: every run (shapes, captures, the parity gate) gets
its options here, so a model that loads for one step loads for all of them."""

from __future__ import annotations

import os
import re
import statistics
import time

import numpy as np
import onnxruntime as ort

from onnxprune.core.errors import DataError, ModelLoadError

CPU = ("CPUExecutionProvider",)


def first_line(e: BaseException) -> str:
    """onnxruntime's (often multi-line) message, first line only."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def failing_node(message: str) -> str | None:
    """The name of the node an onnxruntime run error names, or None. The Python API reports which
    kernel failed only in the message text: "... while running MatMul node. Name:'mm' Status Message:
    ...". This is the one place that text is parsed; load-time errors ("Node (mm) Op (MatMul)
    [ShapeInferenceError] ...") name no node here."""
    m = re.search(r"Name:'([^']*)'", message)
    return m.group(1) if m else None


def session(source: bytes | str | os.PathLike, *, label: str, base_dir: str | os.PathLike | None = None,
            threads: int | None = None, providers: tuple[str, ...] | list[str] = CPU, optimize: bool = True,
            deterministic: bool = False, log_level: int = 4) -> ort.InferenceSession:
    """A session on serialized model bytes (external data resolved against `base_dir`) or a model path.

    `threads`: intra-op threads (None: onnxruntime's default); `deterministic`: one inter-op thread,
    sequential execution and deterministic kernels (the parity gate); `optimize=False` keeps every
    node as it is (runs that expose intermediate tensors). A model onnxruntime refuses raises
    ModelLoadError naming `label`."""
    opts = ort.SessionOptions()
    opts.log_severity_level = log_level  # failures reach the caller as one-line errors
    if threads:
        opts.intra_op_num_threads = threads
    if deterministic:
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.use_deterministic_compute = True
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if base_dir is not None:
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(base_dir))
    if not isinstance(source, bytes):
        source = os.fspath(source)
    try:
        return ort.InferenceSession(source, opts, providers=list(providers))
    except Exception as e:  # onnxruntime raises its own exception types, all plain Exception subclasses
        raise ModelLoadError(f"{label}: onnxruntime cannot load it: {first_line(e)}") from e


def median_latencies(sessions, feed: dict, reps: int, warmup: int = 3) -> list[float]:
    """Median seconds per run of each session on `feed`, measured side by side: after `warmup`
    untimed rounds, `reps` rounds run every session once, in reversed order every other round (so
    none always runs first, on a warmer cache)."""
    for _ in range(warmup):
        for s in sessions:
            s.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    order = list(range(len(sessions)))
    for r in range(reps):
        for i in (order if r % 2 == 0 else order[::-1]):
            t = time.perf_counter()
            sessions[i].run(None, feed)
            times[i].append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


def output_array(value, name: str, label: str) -> np.ndarray:
    """An output as one array. onnxruntime returns non-tensor outputs as Python objects: a sequence of
    maps (e.g. skl2onnx's ZipMap class probabilities) becomes [rows, classes] ordered by key, a map one
    row, a sequence of equal-shaped tensors their stack."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list):
        if not value:
            return np.zeros((0,), np.float32)
        if all(isinstance(v, dict) for v in value):
            keys = sorted(value[0])
            if any(sorted(v) != keys for v in value):
                raise DataError(f"{label}: output '{name}' is a sequence of maps with different keys; "
                                "it cannot be compared")
            return np.array([[v[k] for k in keys] for v in value])
        arrays = [np.asarray(v) for v in value]
        if all(a.shape == arrays[0].shape and a.dtype == arrays[0].dtype for a in arrays):
            return np.stack(arrays)
    raise DataError(f"{label}: output '{name}' is a {type(value).__name__} onnxprune cannot compare "
                    "(tensors, sequences of equal tensors and maps are supported)")
