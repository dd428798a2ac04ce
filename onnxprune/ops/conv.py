"""Conv and ConvTranspose: weights (O, C/group, k...) and (C, O/group, k...); N:M groups run along the
input channels at each kernel position."""

from __future__ import annotations

import numpy as np
import onnx

from onnxprune.core.graph import attrs
from onnxprune.ops.registry import register
from onnxprune.ops.spec import Axes, OpSpec, ShapeOf, he_normal, known, prod


class _ConvFamily(OpSpec):
    weight_inputs = {1: "W"}
    min_rank = 3

    def fan_in(self, w: tuple[int, ...], attrs: dict) -> int:
        raise NotImplementedError

    def reinit(self, node: onnx.NodeProto, shape_of: ShapeOf, rng: np.random.Generator) -> dict[int, np.ndarray]:
        w = shape_of(node.input[1])
        if not w:
            return {}
        out = {1: he_normal(rng, w, self.fan_in(w, attrs(node)))}
        if len(node.input) > 2 and shape_of(node.input[2]):
            out[2] = np.zeros(shape_of(node.input[2]))
        return out


class ConvSpec(_ConvFamily):
    op_types = ("Conv",)
    macs_unknown = "output shape of {node} not static"

    def view_axes(self, role: str, rank: int, attrs: dict) -> Axes:
        return (0,), tuple(range(2, rank)) + (1,)

    def macs_reads(self, node: onnx.NodeProto) -> tuple[str, ...]:
        return (node.output[0],)

    def macs(self, node: onnx.NodeProto, shape_of: ShapeOf, index: int | None = None) -> int | None:
        y, w = shape_of(node.output[0]), shape_of(node.input[1])
        return prod(y) * prod(w[1:]) if known(y, w) else None

    def fan_in(self, w: tuple[int, ...], attrs: dict) -> int:
        return prod(w[1:])


class ConvTransposeSpec(_ConvFamily):
    op_types = ("ConvTranspose",)
    macs_unknown = "input shape not static"

    def view_axes(self, role: str, rank: int, attrs: dict) -> Axes:
        return (1,), tuple(range(2, rank)) + (0,)

    def macs(self, node: onnx.NodeProto, shape_of: ShapeOf, index: int | None = None) -> int | None:
        x, w = shape_of(node.input[0]), shape_of(node.input[1])
        return prod(x) * prod(w[1:]) if known(x, w) else None

    def fan_in(self, w: tuple[int, ...], attrs: dict) -> int:
        return w[0] // max(attrs.get("group", 1), 1) * prod(w[2:])


CONV = register(ConvSpec())
CONV_TRANSPOSE = register(ConvTransposeSpec())
