"""Quantized ops with integer weights: ConvInteger / MatMulInteger (dynamic quantization) and
QLinearConv / QLinearMatMul / com.microsoft QGemm (static, operator format). Each is viewed like its
float op; the weight's zero point (and scale) are inputs of the op."""

from __future__ import annotations

from collections.abc import Mapping

import onnx

from onnxprune.ops.registry import register, spec_for
from onnxprune.ops.spec import Axes, OpSpec


class QuantizedSpec(OpSpec):
    """An integer op viewed like the float op `view_of`; zero_points: role -> (zero-point input, scale
    input or None)."""

    def __init__(self, op_type: str, weight_inputs: Mapping[int, str], zero_points: Mapping[str, tuple[int, int | None]],
                 view_of: str, domain: str = ""):
        self.op_types, self.weight_inputs, self.zero_points = (op_type,), weight_inputs, zero_points
        self.view_of, self.domain = view_of, domain

    @property
    def min_rank(self) -> int:
        return spec_for(self.view_of).min_rank

    def view_axes(self, role: str, rank: int, attrs: dict) -> Axes:
        return spec_for(self.view_of).view_axes(role, rank, attrs)

    def zero_point(self, role: str) -> tuple[int, int | None] | None:
        return self.zero_points.get(role)


register(QuantizedSpec("ConvInteger", {1: "W"}, {"W": (3, None)}, "Conv"))
register(QuantizedSpec("MatMulInteger", {0: "A", 1: "B"}, {"A": (2, None), "B": (3, None)}, "MatMul"))
register(QuantizedSpec("QLinearConv", {3: "W"}, {"W": (5, 4)}, "Conv"))
register(QuantizedSpec("QLinearMatMul", {3: "B"}, {"B": (5, 4)}, "MatMul"))
register(QuantizedSpec("QGemm", {3: "B"}, {"B": (5, 4)}, "Gemm", domain="com.microsoft"))

# com.microsoft fused ops with integer weights that no spec views (their weights are not prunable)
_UNVIEWED_QUANTIZED_OPS = {"DynamicQuantizeLSTM", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention"}


def is_quantized_layer(node: onnx.NodeProto) -> bool:
    """Whether `node` is a layer of quantized-operator format (integer weights inside the op), which
    structural rewrites leave alone: prune the float model, then quantize it."""
    return isinstance(spec_for(node.op_type, node.domain), QuantizedSpec) or node.op_type in _UNVIEWED_QUANTIZED_OPS
