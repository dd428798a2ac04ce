"""LSTM, GRU and RNN: input weights W (D, gates*H, I) and recurrent weights R (D, gates*H, H)."""

from __future__ import annotations

import numpy as np
import onnx

from onnxprune.core.graph import attrs
from onnxprune.ops.registry import register
from onnxprune.ops.spec import (
    Axes,
    Bias,
    Capture,
    ConstantAt,
    OpSpec,
    Refit,
    ShapeOf,
    prod,
)

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}  # gate blocks of W, R (B: twice as many)


class RecurrentSpec(OpSpec):
    op_types = ("LSTM", "GRU", "RNN")
    weight_inputs = {1: "W", 2: "R"}
    min_rank = 3
    macs_unknown = "sequence length or batch not static"
    refit_quantized = "recurrent"
    refit_note = "LSTM/GRU/RNN: input weights W refit; recurrent weights R kept as sliced"

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

    def capture(self, node: onnx.NodeProto, role: str, shape: tuple[int, ...], position: int) -> Capture:
        """W: the input sequence; R: the hidden states, rebuilt from Y and initial_h, one block per direction."""
        at = attrs(node)
        layout = int(at.get("layout", 0))
        seq_note = " (sequence_lens given: padded steps are counted)" if len(node.input) > 4 and node.input[4] else ""
        if role == "W":
            return Capture("rnn_w", (node.input[0],), 1, (layout,), note=seq_note.strip(" ()"))
        d = shape[0]
        y = node.output[0] if node.output else ""
        h0 = node.input[5] if len(node.input) > 5 else ""
        note = "R: hidden states rebuilt from Y and initial_h" + seq_note
        if node.op_type == "GRU" and not at.get("linear_before_reset", 0):
            note += "; GRU hidden-gate rows see r*h, approximated by h"
        return Capture("rnn_r", (y or f"__onnxprune_Y::{position}", h0), d,
                       (layout, at.get("direction", "forward"), d), note=note)

    def input_channel_axis(self, node: onnx.NodeProto) -> int:
        return 2  # X (seq, batch, I)

    def bias(self, node: onnx.NodeProto, role: str, shape: tuple[int, ...], rows: int,
             graph: onnx.GraphProto) -> Bias | str:
        """B (D, 2*gates*H): the W half, then the R half, per direction."""
        if len(node.input) < 4 or not node.input[3]:
            return f"{node.op_type} without B"
        d, gh = shape[0], shape[1]
        off = 0 if role == "W" else gh
        index = (np.arange(d)[:, None] * 2 * gh + off + np.arange(gh)[None, :]).reshape(-1)
        return Bias(node.input[3], shapes=((d, 2 * gh),), index=index)

    def link_channels(self, b, n: int, node: onnx.NodeProto) -> str | None:
        """The hidden units (a synthetic dim, a root when W and R are constant) to each gate block of W,
        R and B, to R's input axis, initial_h/c, P and the outputs; X's features to W's input axis;
        time, batch and direction axes through; hidden_size is a fixup."""
        at = attrs(node)
        if at.get("layout", 0):
            return "layout=1 (batch first) is not supported"
        gates = GATES[node.op_type]
        ws = b.shape_of(node.input[1])
        hidden = int(at.get("hidden_size", ws[1] // gates))
        const = b.is_const(node.input[1]) and b.is_const(node.input[2])
        if hidden <= 1:
            return "hidden size 1"
        h = b.hidden(n, hidden, root=const)
        blocks = lambda k: np.arange(hidden)[:, None] + hidden * np.arange(k)[None, :]  # noqa: E731
        for i, k in ((1, gates), (2, gates)):
            d = b.I(n, i, 1)
            b.link(n, h, d, blocks(k))
            b.role(d, "hidden")
        d = b.I(n, 2, 2)
        b.link(n, h, d)
        b.role(d, "hidden")
        d = b.I(n, 3, 1)
        b.link(n, h, d, blocks(2 * gates))
        b.role(d, "param")
        for i in (5, 6):
            b.link(n, h, b.I(n, i, 2))
        if node.op_type == "LSTM":
            d = b.I(n, 7, 1)
            b.link(n, h, d, blocks(3))
            b.role(d, "param")
        b.link(n, h, b.O(n, 0, 3))
        b.link(n, h, b.O(n, 1, 2))
        b.link(n, h, b.O(n, 2, 2))
        xi, wi = b.I(n, 0, 2), b.I(n, 1, 2)
        b.link(n, xi, wi)
        b.role(wi, "in")
        # time, batch and direction axes
        b.link(n, b.I(n, 0, 0), b.O(n, 0, 0))
        xb = b.I(n, 0, 1)
        for d in (b.O(n, 0, 2), b.O(n, 1, 1), b.O(n, 2, 1), b.I(n, 5, 1), b.I(n, 6, 1), b.I(n, 4, 0)):
            b.link(n, xb, d)
        dirs = [b.I(n, i, 0) for i in (1, 2, 3, 5, 6, 7)] + [b.O(n, 0, 1), b.O(n, 1, 0), b.O(n, 2, 0)]
        dirs = [d for d in dirs if d is not None]
        for d in dirs[1:]:
            b.link(n, dirs[0], d)
        b.fixup("rnn_hidden", n, [h], {"hidden_size": hidden})
        return None

    def refit_axes(self, node: onnx.NodeProto) -> tuple[int, int]:
        return 2, 1

    def refit(self, node: onnx.NodeProto, n: int, w: np.ndarray, kept_out: np.ndarray | None,
              graph: onnx.GraphProto, constant: ConstantAt) -> Refit:
        """The input weights W (D, G*H, I) as (I, D*G*H); the bias: the W half of B."""
        if kept_out is not None:
            w = w[:, kept_out]
        d, gh, i = w.shape
        wm = w.transpose(2, 0, 1).reshape(i, d * gh)
        bb = constant(n, 3) if len(node.input) > 3 and node.input[3] else None
        b = None
        if bb is not None:
            wb = bb[:, :bb.shape[1] // 2]
            b = (wb[:, kept_out] if kept_out is not None else wb).reshape(-1)
        return Refit(wm, 1, b, (d, gh))

    def refit_write(self, node: onnx.NodeProto, n: int, refit: Refit, w: np.ndarray, b: np.ndarray | None,
                    current: ConstantAt) -> list[tuple[int, int, np.ndarray]]:
        d, gh = refit.layout
        out = [(n, 1, w.reshape(w.shape[0], d, gh).transpose(1, 2, 0))]
        if b is None:
            return out
        bb = current(n, 3)
        bb[:, :gh] = b.reshape(d, gh)
        return out + [(n, 3, bb)]


RECURRENT = register(RecurrentSpec())
