"""Conv and ConvTranspose: weights (O, C/group, k...) and (C, O/group, k...); N:M groups run along the
input channels at each kernel position."""

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
    he_normal,
    known,
    prod,
)


class _ConvFamily(OpSpec):
    weight_inputs = {1: "W"}
    min_rank = 3
    w_in, w_out = 1, 0  # the weight's input-channel and output-channel axes

    def link_channels(self, b, n: int, node: onnx.NodeProto) -> None:
        """Batch to batch; group 1: input channels to the weight's `w_in` axis, its `w_out` axis to y's
        channels; depthwise: each input channel to its multiplier's outputs (the group count a fixup);
        1 < group < channels: per-group slots; the bias to y's channels."""
        ws, xs = b.shape_of(node.input[1]), b.shape_of(node.input[0])
        g = int(attrs(node).get("group", 1))
        const = b.is_const(node.input[1])
        b.link(n, b.I(n, 0, 0), b.O(n, 0, 0))
        y = b.O(n, 0, 1)
        if g == 1:
            w_i = b.I(n, 1, self.w_in)
            b.link(n, b.I(n, 0, 1), w_i)
            b.role(w_i, "in")
            w_o = b.I(n, 1, self.w_out)
            b.link(n, w_o, y)
            b.role(w_o, "out")
            b.role(y, "act", root=const)
        elif g == xs[1] and (self.w_in == 1 or ws[1] == 1):  # depthwise (ConvTranspose: multiplier 1)
            m = ws[0] // g if self.w_in == 1 else ws[1]  # channel multiplier O / C
            b.link(n, b.I(n, 0, 1), y, np.arange(g)[:, None] * m + np.arange(m)[None, :])
            dw = b.I(n, 1, 0)
            b.link(n, dw, y)
            b.role(dw, "out")
            b.fixup("conv_group", n, [b.I(n, 0, 1)], {"group": g})
        else:
            self._grouped(b, n, y, const, g)
        db = b.I(n, 2, 0)
        b.link(n, db, y)
        b.role(db, "param")
        return None

    def _grouped(self, b, n: int, y, const: bool, g: int) -> None:
        """1 < group < channels: position j of every group is one channel, on the input and on the
        output side, so each group loses the same number and the group count stays. The weight
        axis that holds one group's share (C/g or O/g) is sliced alike for every group; where the
        weight has the full axis, a synthetic "slot" dim of the per-group size ties the groups."""
        x = b.I(n, 0, 1)
        for full, w_axis, role in ((x, self.w_in, "in"), (y, self.w_out, "out")):
            wd = b.I(n, 1, w_axis)
            if full is None:
                continue
            per = b.sizes[full] // g
            span = np.arange(per)[:, None] + per * np.arange(g)[None, :]
            if wd is not None and b.sizes[wd] == per:
                b.link(n, wd, full, span)
            else:
                b.link(n, wd, full)
                b.link(n, b.slot(n, role, per), full, span)
            b.role(wd, role)
        b.role(y, "act", root=const)

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

    def capture(self, node: onnx.NodeProto, role: str, shape: tuple[int, ...], position: int) -> Capture:
        """im2col patches of the input; one row block per group."""
        at = attrs(node)
        k = tuple(shape[2:])
        nd = len(k)
        group = int(at.get("group", 1))
        layout = (k, tuple(at.get("strides", [1] * nd)), tuple(at.get("dilations", [1] * nd)),
                  tuple(at.get("pads", [0] * 2 * nd)), at.get("auto_pad", "NOTSET"), group, shape[1])
        return Capture("conv", (node.input[0],), group, layout)

    def input_channel_axis(self, node: onnx.NodeProto) -> int:
        return 1

    def bias(self, node: onnx.NodeProto, role: str, shape: tuple[int, ...], rows: int,
             graph: onnx.GraphProto) -> Bias | str:
        if len(node.input) < 3 or not node.input[2]:
            return "Conv without bias"
        return Bias(node.input[2], shapes=((rows,),))

    def refit_axes(self, node: onnx.NodeProto) -> tuple[int, int] | None:
        return (1, 0) if attrs(node).get("group", 1) == 1 else None

    def refit(self, node: onnx.NodeProto, n: int, w: np.ndarray, kept_out: np.ndarray | None,
              graph: onnx.GraphProto, constant: ConstantAt) -> Refit:
        """Columns: im2col patches; the bias B (a zero one added where the Conv has none; a computed or
        shared B stays as it is, fixed in the fit)."""
        if kept_out is not None:
            w = w[kept_out]
        wm = w.transpose(*range(2, w.ndim), 1, 0).reshape(-1, w.shape[0])  # (k*C, O)
        b = None
        if len(node.input) > 2 and node.input[2]:
            b = constant(n, 2)
            b = b[kept_out] if b is not None and kept_out is not None else b
        else:
            b = np.zeros(wm.shape[1])
        return Refit(wm, prod(w.shape[2:]), b, tuple(w.shape[2:]))

    def refit_columns(self, node: onnx.NodeProto, refit: Refit, x: np.ndarray, im2col) -> np.ndarray:
        at, nd = attrs(node), len(refit.layout)
        return im2col(x, refit.layout, tuple(at.get("strides", [1] * nd)), tuple(at.get("dilations", [1] * nd)),
                      tuple(at.get("pads", [0] * 2 * nd)), at.get("auto_pad", "NOTSET"))

    def refit_write(self, node: onnx.NodeProto, n: int, refit: Refit, w: np.ndarray, b: np.ndarray | None,
                    current: ConstantAt) -> list[tuple[int, int, np.ndarray]]:
        k = refit.layout
        out = [(n, 1, w.reshape(*k, w.shape[0] // refit.k, w.shape[1]).transpose(len(k) + 1, len(k), *range(len(k))))]
        return out + ([(n, 2, b)] if b is not None else [])


class ConvTransposeSpec(_ConvFamily):
    op_types = ("ConvTranspose",)
    w_in, w_out = 0, 1
    macs_unknown = "input shape not static"

    def view_axes(self, role: str, rank: int, attrs: dict) -> Axes:
        return (1,), tuple(range(2, rank)) + (0,)

    def macs(self, node: onnx.NodeProto, shape_of: ShapeOf, index: int | None = None) -> int | None:
        x, w = shape_of(node.input[0]), shape_of(node.input[1])
        return prod(x) * prod(w[1:]) if known(x, w) else None

    def fan_in(self, w: tuple[int, ...], attrs: dict) -> int:
        return w[0] // max(attrs.get("group", 1), 1) * prod(w[2:])

    def capture(self, node: onnx.NodeProto, role: str, shape: tuple[int, ...], position: int) -> Capture:
        """Input-channel energies only (every kernel tap meets every input element once, borders aside)."""
        return Capture("convT", (node.input[0],), 1, (prod(shape[2:]), shape[0]),
                       note="ConvTranspose: norms approximated by input-channel energy; no Gram matrix")


CONV = register(ConvSpec())
CONV_TRANSPOSE = register(ConvTransposeSpec())
