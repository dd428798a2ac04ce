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


class OpSpec:
    """One op family. `op_types` in `domain` ("" is the default ONNX domain)."""

    op_types: tuple[str, ...] = ()
    domain: str = ""
    weight_inputs: Mapping[int, str] = {}  # input index -> role ("W", "B", ...)
    min_rank: int = 2  # a weight of lower rank (a vector) is not a matrix
    view_of: str | None = None  # integer ops: the float op whose layout the weight has
    macs_unknown: str = "no MAC rule for {op}"  # why `macs` gave None ({node}: node name, {op}: op type)

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


def prod(dims) -> int:
    return math.prod(int(d) for d in dims)
