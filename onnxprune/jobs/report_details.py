"""What an HTML report adds to a JSON report: per-layer details (nodes, pattern, MACs, eligibility on every
bundled target) and sizes per stage (bytes on disk, params, non-zeros). Computed only when a page is asked
for (`--html`), since eligibility on every target reads every weight once per target."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx

from onnxprune.analyze.weights import find_weights
from onnxprune.core.masks import MaskSet
from onnxprune.core.model import Model
from onnxprune.pack.eligibility import assess, mac_shapes
from onnxprune.pack.targets import all_targets


def layer_details(model: Model, report: dict, masks: MaskSet | None = None,
                  input_shapes: dict[str, tuple[int, ...]] | None = None) -> tuple[list[dict], dict]:
    """One row per prunable weight of `model` (the written model): the nodes using it, op, pattern, params,
    sparsity, MACs (summed over its nodes), the prune job's skip reason and, per bundled target, whether it
    runs sparse or packs and why not; plus each target's totals."""
    analysis = find_weights(model)
    skipped = {w["name"]: w.get("skipped") for w in report.get("weights") or []}
    patterns: dict[str, str] = {}
    for p in report.get("passes") or []:
        for key, rec in (p.get("weights") or {}).items():
            if isinstance(rec, dict) and rec.get("pattern"):
                patterns[key] = rec["pattern"]
    structured = "structured" in report
    rows: dict[str, dict] = {}
    totals: dict[str, dict] = {}
    inferred = None if structured else mac_shapes(model, input_shapes)
    for target in ([] if structured else all_targets()):
        elig = assess(model, target, analysis, masks, inferred=inferred)
        totals[target.name] = elig.totals
        for r in elig.rows:
            row = rows.setdefault(r.weight, {"weight": r.weight, "nodes": [], "op": r.op, "params": r.params,
                                             "sparsity": r.sparsity, "macs": 0, "macs_note": "", "targets": {}})
            if r.node not in row["nodes"]:
                row["nodes"].append(r.node)
                row["macs"] = None if r.macs is None or row["macs"] is None else row["macs"] + r.macs
                row["macs_note"] = row["macs_note"] or r.macs_note
            t = row["targets"].setdefault(target.name, {"runs_sparse": True, "packed": r.packed, "reasons": []})
            t["runs_sparse"] = t["runs_sparse"] and r.runs_sparse
            t["reasons"] += [x.to_dict() for x in r.reasons if x.to_dict() not in t["reasons"]]
    if structured:  # a dense model: no target can use it sparse; params per weight only
        for w in analysis.weights:
            rows[w.key] = {"weight": w.key, "nodes": list(dict.fromkeys(u.node for u in w.uses)), "op": w.op,
                           "params": w.params, "sparsity": 0.0, "pattern": "dense (channels removed)"}
    out = []
    for w in analysis.weights:
        row = rows[w.key]
        if not structured:
            row["sparsity"] = masks.sparsity(w.key) if masks is not None and w.key in masks else row["sparsity"]
            row["pattern"] = patterns.get(w.key, "dense")
            row["skipped"] = skipped.get(w.key)
        out.append(row)
    return out, totals


def _disk_bytes(path: str | os.PathLike) -> int:
    """The model file and the external data files it names."""
    proto = onnx.load(str(path), load_external_data=False)
    files = {Path(path)}
    for t in _tensors(proto.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if loc:
                files.add(Path(path).parent / loc)
    return sum(f.stat().st_size for f in files if f.is_file())


def _tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t
            elif a.type == onnx.AttributeProto.GRAPH:
                yield from _tensors(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _tensors(g)


def stage_sizes(stages: list[tuple[str, str | os.PathLike]]) -> list[dict]:
    """Per (stage name, model path): bytes on disk (model + external data), params and non-zero elements
    of its stored constants (read once, one tensor at a time)."""
    out = []
    for stage, path in stages:
        model = Model.load(path)
        params = nonzero = 0
        for ref in model.tensors():
            values = model.read(ref.key)
            params += values.size
            nonzero += int(np.count_nonzero(values)) if values.dtype.kind in "biufc" else values.size
        out.append({"stage": stage, "path": str(path), "bytes": _disk_bytes(path), "params": params,
                    "nonzero": nonzero})
    return out
