"""An independent N:M checker: written from the definition, without onnxprune's pattern code.

N:M sparsity: at most N non-zeros in every group of M consecutive weights along the axis the op
reduces over, in the tensor's *stored* layout:

- MatMul B (..., K, N): groups of M along K (axis -2), for each output column;
- MatMul constant A (..., M_, K): along K (axis -1);
- Gemm B: (K, N) along axis 0, or (N, K) along axis 1 when transB=1 (A likewise with transA);
- Conv W (O, C/g, kh, kw...): along C (axis 1) at each (o, kh, kw);
- ConvTranspose W (C, O/g, k...): along C (axis 0);
- LSTM / GRU / RNN W (D, gates*H, I) and R (D, gates*H, H): along the last axis.

When the axis length is not a multiple of M the last group is shorter; it may still keep at most
N (the missing positions count as pruned). "Non-zero" means "differs from `zero`", which is the
zero point for quantized weights (a scalar, or an array broadcastable to the weight).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def group_axis(op: str, rank: int, role: str = "B", trans: int = 0) -> int:
    """The stored-layout axis N:M groups run along, for weight `role` of `op` (no chain in between)."""
    if op == "MatMul":
        return rank - 2 if role == "B" else rank - 1
    if op == "Gemm":
        if role == "B":
            return 1 if trans else 0
        return 0 if trans else 1
    if op == "Conv":
        return 1
    if op == "ConvTranspose":
        return 0
    if op in ("LSTM", "GRU", "RNN"):
        return rank - 1
    raise ValueError(f"no N:M axis known for op {op}")


def group_counts(arr: np.ndarray, axis: int, m: int, zero=0) -> np.ndarray:
    """Non-zero count of every group of M along `axis` (groups x ...), the short tail group included."""
    nonzero = np.asarray(arr) != np.asarray(zero)
    nonzero = np.moveaxis(nonzero, axis, -1)
    length = nonzero.shape[-1]
    flat = nonzero.reshape(-1, length)
    counts = []
    for start in range(0, length, m):
        counts.append(flat[:, start:start + m].sum(axis=1))
    return np.stack(counts, axis=1) if counts else np.zeros((flat.shape[0], 0), dtype=int)


def nm_violations(arr: np.ndarray, axis: int, n: int, m: int, zero=0) -> int:
    """How many groups hold more than N non-zeros."""
    return int((group_counts(arr, axis, m, zero) > n).sum())


def assert_nm(arr: np.ndarray, op: str, n: int, m: int, *, role: str = "B", trans: int = 0, zero=0,
              name: str = "weight") -> None:
    axis = group_axis(op, np.ndim(arr), role, trans)
    bad = nm_violations(arr, axis, n, m, zero)
    assert bad == 0, f"{name} ({op} {role}, shape {np.shape(arr)}): {bad} groups of {m} along axis {axis} keep more than {n}"


def weight_uses(model: onnx.ModelProto) -> dict[str, list[tuple[str, str, int]]]:
    """initializer name -> [(op, role, trans)] for direct weight-input uses in the main graph."""
    roles = {"MatMul": {0: "A", 1: "B"}, "Gemm": {0: "A", 1: "B"}, "Conv": {1: "W"}, "ConvTranspose": {1: "W"},
             "LSTM": {1: "W", 2: "R"}, "GRU": {1: "W", 2: "R"}, "RNN": {1: "W", 2: "R"}}
    inits = {t.name for t in model.graph.initializer}
    uses: dict[str, list[tuple[str, str, int]]] = {}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            role = roles.get(node.op_type, {}).get(i)
            if role is None or name not in inits:
                continue
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            trans = int(attrs.get("transB" if role == "B" else "transA", 0)) if node.op_type == "Gemm" else 0
            uses.setdefault(name, []).append((node.op_type, role, trans))
    return uses


def load_array(t: onnx.TensorProto, base_dir: str | None = None) -> np.ndarray:
    if t.data_location == onnx.TensorProto.EXTERNAL:
        from onnx.external_data_helper import load_external_data_for_tensor

        t2 = onnx.TensorProto()
        t2.CopyFrom(t)
        load_external_data_for_tensor(t2, base_dir or ".")
        t = t2
    return numpy_helper.to_array(t)


def assert_model_nm(model: onnx.ModelProto, n: int, m: int, names, base_dir: str | None = None) -> int:
    """Check every initializer in `names` against each of its direct uses; returns how many were checked."""
    uses = weight_uses(model)
    inits = {t.name: t for t in model.graph.initializer}
    checked = 0
    for name in names:
        assert name in uses, f"{name}: not a direct weight input of MatMul/Gemm/Conv/LSTM in the output"
        arr = load_array(inits[name], base_dir)
        for op, role, trans in uses[name]:
            assert_nm(arr, op, n, m, role=role, trans=trans, name=name)
        checked += 1
    return checked
