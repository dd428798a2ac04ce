"""LSTM, GRU and RNN: input weights W (D, gates*H, I) and recurrent weights R (D, gates*H, H)."""

from __future__ import annotations

import numpy as np
import onnx

from onnxprune.core.graph import attrs
from onnxprune.ops.registry import register
from onnxprune.ops.spec import Axes, OpSpec, ShapeOf, prod


class RecurrentSpec(OpSpec):
    op_types = ("LSTM", "GRU", "RNN")
    weight_inputs = {1: "W", 2: "R"}
    min_rank = 3
    macs_unknown = "sequence length or batch not static"

    def view_axes(self, role: str, rank: int, attrs: dict) -> Axes:
        return (0, 1), (2,)  # rows: direction x gate unit

    def macs(self, node: onnx.NodeProto, shape_of: ShapeOf, index: int | None = None) -> int | None:
        x = shape_of(node.input[0])
        weights = [shape_of(node.input[i]) for i in ((index,) if index is not None else (1, 2))]
        if x is None or len(x) != 3 or None in x[:2] or any(w is None or None in w for w in weights):
            return None
        return int(x[0]) * int(x[1]) * sum(prod(w) for w in weights)  # every step, every sequence

    def reinit(self, node: onnx.NodeProto, shape_of: ShapeOf, rng: np.random.Generator) -> dict[int, np.ndarray]:
        """Uniform in +-1/sqrt(hidden) (the PyTorch default), zero biases."""
        h = int(attrs(node).get("hidden_size", 1))
        out = {i: rng.uniform(-1, 1, shape_of(node.input[i])) / np.sqrt(h) for i in (1, 2) if shape_of(node.input[i])}
        if len(node.input) > 3 and shape_of(node.input[3]):
            out[3] = np.zeros(shape_of(node.input[3]))
        return out


RECURRENT = register(RecurrentSpec())
