"""Independent check that quantization kept the pruning: every stored zero of the float weight is the
zero point in the quantized one, and every N:M group / RxC block that was sparse still is.

It reads only the two models' stored tensors (no onnxruntime, no pruner code): a pruned weight and its
quantized form are matched through the consumer of the weight (graph, node name, input index)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from onnxprune.analyze.weights import Weight, find_weights, zero_value
from onnxprune.core.model import Model


@dataclass(frozen=True)
class ZeroMap:
    """A float weight's zeros (matrix view) and the pattern it was pruned in."""

    key: str
    zeros: np.ndarray  # bool, rows x reduction
    group_axis_len: int
    pattern: str | None


def use_id(w: Weight) -> tuple[str, str, int]:
    u = w.uses[0]
    return (u.graph, u.node, u.input_index)


def zero_maps(model: Model, patterns: dict[str, str] | None = None) -> dict[tuple, ZeroMap]:
    """Every prunable weight's zero map, by the use that reads it."""
    patterns = patterns or {}
    out = {}
    for w in find_weights(model).weights:
        zeros = w.matrix(model.read(w.key) == zero_value(w, model))
        out[use_id(w)] = ZeroMap(w.key, np.ascontiguousarray(zeros), w.group_axis_len, patterns.get(w.key))
    return out


def _parse(pattern: str | None) -> tuple[str, int, int] | None:
    if pattern and (m := re.fullmatch(r"(\d+):(\d+)", pattern)):
        return "nm", int(m[1]), int(m[2])
    if pattern and (m := re.fullmatch(r"(\d+)x(\d+)", pattern)):
        return "block", int(m[1]), int(m[2])
    return None


def nm_violations(nonzero: np.ndarray, group_axis_len: int, n: int, m: int) -> tuple[int, int]:
    """(groups, groups with more than n non-zeros) of m consecutive entries along the N:M axis (the last
    reduction axis, `group_axis_len` long; a last partial group counts as a group)."""
    rows, cols = nonzero.shape
    lines = nonzero.reshape(rows * (cols // group_axis_len), group_axis_len)
    pad = (-group_axis_len) % m
    groups = np.pad(lines, ((0, 0), (0, pad))).reshape(lines.shape[0], -1, m).sum(axis=-1)
    return int(groups.size), int(np.count_nonzero(groups > n))


def zero_blocks(zeros: np.ndarray, r: int, c: int) -> np.ndarray:
    """Which r x c blocks of the matrix are all zero (edges padded with zeros)."""
    rows, cols = zeros.shape
    padded = np.pad(zeros, ((0, (-rows) % r), (0, (-cols) % c)), constant_values=True)
    return padded.reshape(padded.shape[0] // r, r, padded.shape[1] // c, c).all(axis=(1, 3))


def _renamed(key: str, weights: list[Weight]) -> Weight | None:
    """The weight a tool rewrote the op of (Gemm -> MatMulInteger) under a derived name ("W_quantized",
    "W_Transposed_quantized"; a Gemm kept float: "W_Transposed"), when exactly one weight is so named."""
    derived = [w for w in weights if w.key.startswith(key + "_")]
    for hits in ([w for w in derived if w.key.endswith("quantized")], [w for w in derived if "_Transposed" in w.key]):
        if len(hits) == 1:
            return hits[0]
    return None


def verify_kept(before: dict[tuple, ZeroMap], after: Model) -> list[dict]:
    """Per float weight: its form after quantization, whether every zero stayed the zero point, and
    whether the pattern's groups/blocks stayed sparse (checked on the quantized tensor itself)."""
    weights = find_weights(after).weights
    found = {use_id(w): w for w in weights}
    rows = []
    for uid, zm in before.items():
        w = found.get(uid) or _renamed(zm.key, weights)
        row: dict = {"name": zm.key, "node": uid[1], "sparsity_before": float(zm.zeros.mean())}
        if w is None:
            row.update(quantized_name=None, ok=False, problem="weight not found in the quantized model")
            rows.append(row)
            continue
        zp = zero_value(w, after)
        stored = after.read(w.key)
        zeros = w.matrix(stored == zp)
        if zeros.shape != zm.zeros.shape:
            row.update(quantized_name=w.key, ok=False, problem=f"matrix {zeros.shape} differs from {zm.zeros.shape}")
            rows.append(row)
            continue
        lost = int(np.count_nonzero(zm.zeros & ~zeros))
        row.update(quantized_name=w.key, dtype=str(stored.dtype), quantized=w.quant is not None or
                   stored.dtype != np.float32, zero_point_zero=bool(np.all(np.asarray(zp) == 0)),
                   sparsity_after=float(zeros.mean()), zeros_lost=lost, pattern=zm.pattern)
        ok = lost == 0
        kind = _parse(zm.pattern)
        if kind and kind[0] == "nm" and zm.zeros.any():
            _, n, m = kind
            groups, bad_before = nm_violations(~zm.zeros, zm.group_axis_len, n, m)
            _, bad_after = nm_violations(~zeros, w.group_axis_len, n, m)
            row.update(groups=groups, groups_violating_before=bad_before, groups_violating=bad_after)
            ok &= bad_after <= bad_before
        elif kind and kind[0] == "block" and zm.zeros.any():
            _, r, c = kind
            was, now = zero_blocks(zm.zeros, r, c), zero_blocks(zeros, r, c)
            row.update(blocks=int(was.size), zero_blocks_before=int(was.sum()), zero_blocks_lost=int((was & ~now).sum()))
            ok &= not (was & ~now).any()
        row["ok"] = bool(ok)
        rows.append(row)
    return rows
