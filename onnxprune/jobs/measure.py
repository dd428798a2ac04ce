"""What a compressed model costs to ship and run, measured against the dense one: bytes on disk and
onnxruntime CPU latency.

- size: the bytes of the written model file plus its external data files, raw and deflated (zlib level 6,
  what gzip or a zip archive ships). Zeros inside dense weights (unstructured, N:M, blocks) leave the raw
  size unchanged and shrink the deflated one; fewer channels shrink both.
- latency: the two models side by side in one process, CPU provider, one intra-op thread, sequential:
  warm-up runs, then interleaved repetitions on the same feed (alternating which runs first), the median
  of each; ratio = candidate / dense.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import onnx

from onnxprune.core.runtime import median_latencies, session

DEFLATE_LEVEL = 6
_CHUNK = 1 << 22


def model_files(path: str | os.PathLike) -> list[Path]:
    """The model file and the external data files its initializers refer to."""
    path = Path(path)
    proto = onnx.load(str(path), load_external_data=False)
    locations = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    return [path] + sorted(path.parent / loc for loc in locations)


def model_size(path: str | os.PathLike) -> dict:
    """{"bytes": raw bytes, "deflated": bytes after zlib level 6} over the model and its data files."""
    raw = packed = 0
    for file in model_files(path):
        z = zlib.compressobj(DEFLATE_LEVEL)
        with open(file, "rb") as f:
            while chunk := f.read(_CHUNK):
                raw += len(chunk)
                packed += len(z.compress(chunk))
        packed += len(z.flush())
    return {"bytes": raw, "deflated": packed}


def latency(dense: str | os.PathLike, candidate: str | os.PathLike, feed: dict, reps: int = 20,
            warmup: int = 3) -> dict:
    """Median seconds per run of the dense model and the candidate, measured interleaved in one process."""
    a = session(dense, label=str(dense), threads=1, deterministic=True)
    b = session(candidate, label=str(candidate), threads=1, deterministic=True)
    d, c = median_latencies([a, b], feed, reps, warmup)
    return {"dense_ms": d * 1e3, "candidate_ms": c * 1e3, "ratio": c / d if d else 1.0, "reps": reps}
