"""The `inspect` report: every weight, totals, op counts and opsets (schema onnxprune.inspect v1)."""

from __future__ import annotations

from collections import Counter

import numpy as np

from onnxprune.analyze.weights import Analysis, Weight, find_weights
from onnxprune.core.graph import walk_graphs
from onnxprune.core.model import Model
from onnxprune.core.report import fill, table


def zero_fraction(model: Model, key: str, weight: Weight | None = None) -> float:
    """Share of the stored values that mean zero: 0, or the zero point of a quantized weight."""
    values = model.read(key)
    zero = np.zeros((), values.dtype)
    q = weight.quant if weight is not None else None
    if q is not None and q.zero_point is not None:
        for step in weight.chain[:weight.chain.index(q)]:  # to the DequantizeLinear input's layout
            values = step.forward(values)
        zero = model.read(q.zero_point)
        if zero.ndim == 1 and values.ndim > 1:  # per axis
            shape = [1] * values.ndim
            shape[q.axis % values.ndim] = zero.size
            zero = zero.reshape(shape)
    return float(np.count_nonzero(values == zero)) / max(values.size, 1)


def inspect_model(model: Model, analysis: Analysis | None = None) -> dict:
    """The `inspect` report of a model: every prunable weight (op, layout, reduction axes, zeros), the
    tensors that are not prunable and why, totals, op counts and opsets (schema onnxprune.inspect v1).

    Example::

        report = inspect_model(load_model("samples/digits_mlp.onnx"))
        print(report["totals"]["prunable_params"])
    """
    analysis = analysis or find_weights(model)
    ops: Counter[str] = Counter()
    for _, g in walk_graphs(model.proto.graph):
        ops.update(n.op_type if not n.domain or n.domain == "ai.onnx" else f"{n.domain}.{n.op_type}" for n in g.node)
    weights = []
    zeros = 0
    for w in analysis.weights:
        z = zero_fraction(model, w.key, w)
        zeros += int(round(z * w.params))
        weights.append({**w.describe(), "zero_fraction": z})
    prunable = sum(w.params for w in analysis.weights)
    total = sum(int(np.prod(tuple(r.proto.dims), dtype=np.int64)) for r in model.tensors())
    return {
        "model": str(model.path) if model.path else None,
        "opsets": {op.domain or "ai.onnx": op.version for op in model.proto.opset_import},
        "ir_version": model.proto.ir_version,
        "ops": dict(sorted(ops.items())),
        "totals": {
            "params": total,
            "prunable_params": prunable,
            "prunable_share": prunable / total if total else 0.0,
            "prunable_weights": len(analysis.weights),
            "prunable_zeros": zeros,
            "prunable_zero_fraction": zeros / prunable if prunable else 0.0,
            "weight_bytes": model.weight_bytes(),
        },
        "weights": weights,
        "not_prunable": [u.describe() for u in analysis.unprunable],
        "notes": list(getattr(model, "notes", [])),  # what loading found legal but odd
    }


LEGEND = {
    "op": "the op that reads the weight and its input slot (+N: N more uses)",
    "matrix": "the weight as the 2-D matrix pruning ranks: outputs x reduction length (N:M groups run "
              "along the reduction)",
    "red.axes": "axes of the stored tensor the op sums over (the reduction)",
    "chain": "ops between the stored tensor and the op (Transpose, Cast, DequantizeLinear, ...), undone when "
             "pruning",
    "zeros": "share of stored values that are already zero (the zero point for quantized weights)",
}


def render(report: dict) -> str:
    rows = [
        (w["name"], w["ops"][0] + (f" +{len(w['ops']) - 1}" if len(w["ops"]) > 1 else ""), w["dtype"],
         "x".join(map(str, w["shape"])), w["params"], f"{w['matrix'][0]}x{w['matrix'][1]}",
         ",".join(map(str, w["reduction_axes"])) if w["reduction_axes"] is not None else "-",
         "->".join(w["chain"]) or "-", f"{w['zero_fraction']:.1%}")
        for w in report["weights"]
    ]
    out = [table(["weight", "op", "dtype", "shape", "params", "matrix", "red.axes", "chain", "zeros"], rows,
                 legend=LEGEND)]
    if report["not_prunable"]:
        out.append("\nnot prunable:")
        out.append(table(["tensor", "node", "op", "reason"],
                         [(u["name"], u["node"], f"{u['op']}:{u['role']}", u["reason"]) for u in report["not_prunable"]]))
    t = report["totals"]
    out.append("\n" + fill(
        f"params {t['params']:,}  prunable {t['prunable_params']:,} ({t['prunable_share']:.1%}) in "
        f"{t['prunable_weights']} weights  zeros in prunable {t['prunable_zero_fraction']:.1%}"))
    out.append(fill("opsets " + ", ".join(f"{k} {v}" for k, v in report["opsets"].items())))
    out.append(fill("ops " + ", ".join(f"{k} {v}" for k, v in report["ops"].items())))
    out += [fill(f"note: {n}") for n in report.get("notes", [])]
    return "\n".join(out)
