"""OpSpec: what the compiler asks about one op family, answered in one place.

A spec declares which inputs of its ops are prunable weights (index -> role), the smallest weight rank
that is a matrix, how a weight is viewed as a (output units x reduction) matrix, how many
multiply-accumulates a node costs, and how --reinit draws fresh weights. Subclass it per family and
`register` an instance (onnxprune.ops.registry); the defaults say "no rule".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx

Shape = tuple  # dims of a tensor; a dim is None where it is not known
ShapeOf = Callable[[str], "Shape | None"]  # tensor name -> its shape, None when unknown
ConstantAt = Callable[[int, int], "np.ndarray | None"]  # (node index, input index) -> a constant there or None
ConstantAt = Callable[[int, int], "np.ndarray | None"]
Axes = tuple[tuple[int, ...], tuple[int, ...]]


def known(*shapes: Shape | None) -> bool:
    """Every shape is there and all its dims are known."""
    return all(s is not None and None not in s for s in shapes)


def he_normal(rng: np.random.Generator, shape: Shape, fan_in: int) -> np.ndarray:
    """Normal weights with std sqrt(2 / fan_in) (He initialisation)."""
    return rng.standard_normal(shape) * np.sqrt(2.0 / max(fan_in, 1))


@dataclass(frozen=True)
class Capture:
    """The activation a weight multiplies, for calibration statistics: `kind` is the layout
    onnxprune.analyze.activations turns into X (matmul | conv | convT | rnn_w | rnn_r), `tensors` the
    graph tensors it reads, `groups` the row blocks with statistics of their own, `params` the layout's."""

    kind: str
    tensors: tuple[str, ...]
    groups: int
    params: tuple = ()
    note: str = ""


@dataclass(frozen=True)
class Bias:
    """The op's own bias for a weight's output units: its tensor, the factor a shift of the output is
    scaled by, the shapes it may have (None: one value per unit along the last axis of any shape) and
    the flat bias index of each matrix row (None: row i is element i)."""

    tensor: str
    scale: float = 1.0
    shapes: tuple[tuple[int, ...], ...] | None = None
    index: np.ndarray | None = None


@dataclass
class Refit:
    """A consumer of pruned channels as the least-squares refit sees it: its weight as a (k * c_in
    input columns x kept output units) matrix, columns kernel position major, channel minor; its bias
    in the same units (None: not fitted); `layout` what the op's `refit_write` needs."""

    matrix: np.ndarray
    k: int = 1
    bias: np.ndarray | None = None
    layout: tuple = ()


class OpSpec:
    """One op family. `op_types` in `domain` ("" is the default ONNX domain)."""

    op_types: tuple[str, ...] = ()
    domain: str = ""
    weight_inputs: Mapping[int, str] = {}  # input index -> role ("W", "B", ...)
    min_rank: int = 2  # a weight of lower rank (a vector) is not a matrix
    view_of: str | None = None  # integer ops: the float op whose layout the weight has
    macs_unknown: str = "no MAC rule for {op}"  # why `macs` gave None ({node}: node name, {op}: op type)
    refit_quantized: str = ""  # why a DequantizeLinear-fed weight is not refit ("": it is)
    refit_note: str = ""  # what the structured refit report says about the op

    def view_axes(self, role: str, rank: int, attrs: dict) -> Axes:
        """(row axes, reduction axes) of the weight at `role` in the op's layout; the last reduction
        axis is the one N:M groups run along."""
        raise NotImplementedError

    def zero_point(self, role: str) -> tuple[int, int | None] | None:
        """Integer ops: (zero-point input, scale input or None) of the weight at `role`; per-channel
        values run along the matrix view's rows."""
        return None

    def macs_reads(self, node: onnx.NodeProto) -> tuple[str, ...]:
        """The activation shapes `macs` reads (shape inference tries harder when they are unknown)."""
        return (node.input[0],)

    def macs(self, node: onnx.NodeProto, shape_of: ShapeOf, index: int | None = None) -> int | None:
        """Multiply-accumulates of `node` (of its weight at input `index` where the op has several);
        None when a dim it needs is unknown."""
        return None

    def reinit(self, node: onnx.NodeProto, shape_of: ShapeOf, rng: np.random.Generator) -> dict[int, np.ndarray]:
        """Fresh values for --reinit: input index -> array, for the constant inputs `shape_of` knows."""
        return {}

    def capture(self, node: onnx.NodeProto, role: str, shape: tuple[int, ...], position: int) -> Capture | None:
        """What activation the weight at `role` (op layout `shape`) multiplies; None: not captured.
        `position` is the node's index in the main graph."""
        return None

    def input_channel_axis(self, node: onnx.NodeProto) -> int | None:
        """Axis of the activation (input 0) whose channels the weight at input 1 reduces over, for
        activation-based channel importance; None: the op's channels are not scored that way."""
        return None

    def bias(self, node: onnx.NodeProto, role: str, shape: tuple[int, ...], rows: int,
             graph: onnx.GraphProto) -> Bias | str:
        """The bias that can absorb a shift of the outputs of the weight at `role` (op layout `shape`,
        `rows` output units), or why there is none."""
        return f"{node.op_type} role {role} has no bias"

    def link_channels(self, b, n: int, node: onnx.NodeProto) -> str | None:
        """Channel linking for structured pruning: link the dims of node `n`'s inputs and outputs through
        `b` (onnxprune.analyze.groups' builder: I, O, link, role, slot, hidden, fixup, shape_of, ...);
        returns why the axes it leaves unlinked cannot follow a change (None: no reason)."""
        return "op not supported by structured pruning"

    # the structured least-squares refit of a layer whose input lost channels (onnxprune.repair)

    def refit_axes(self, node: onnx.NodeProto) -> tuple[int, int] | None:
        """(input-channel axis, output axis) of the weight at input 1; None: the node is not refit."""
        return None

    def refit(self, node: onnx.NodeProto, n: int, w: np.ndarray, kept_out: np.ndarray | None,
              graph: onnx.GraphProto, constant: ConstantAt) -> Refit | str:
        """Node `n`'s dense weight `w` (kept output units `kept_out`, None: all) and bias as a `Refit`,
        or why it is not refit; `graph` is the pruned main graph, `constant` reads the dense model's
        constants that only that input reads."""
        raise NotImplementedError

    def refit_columns(self, node: onnx.NodeProto, refit: Refit, x: np.ndarray, im2col) -> np.ndarray:
        """The activation `x` at input 0 as rows of the refit matrix's columns; `im2col(x, kernel,
        strides, dilations, pads, auto_pad)` gives conv patches."""
        return x.reshape(-1, x.shape[-1])

    def refit_write(self, node: onnx.NodeProto, n: int, refit: Refit, w: np.ndarray, b: np.ndarray | None,
                    current: ConstantAt) -> list[tuple[int, int, np.ndarray]]:
        """(node index, input index, value) to write for the refit matrix `w` and bias `b` (None: kept);
        `current` reads the pruned model's constants."""
        raise NotImplementedError


def prod(dims) -> int:
    return math.prod(int(d) for d in dims)
