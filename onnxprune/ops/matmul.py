"""MatMul and Gemm: Y = A @ B (Gemm: with optional transposes and a bias C)."""

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


def _k(a, b, a_axis: int, b_axis: int) -> int | None:
    """The reduction length: from A where known, else from B."""
    for s, axis in ((a, a_axis), (b, b_axis)):
        if s is not None and len(s) > max(axis, -axis - 1) and s[axis] is not None:
            return int(s[axis])
    return None


class MatMulSpec(OpSpec):
    op_types = ("MatMul",)
    weight_inputs = {0: "A", 1: "B"}
    macs_unknown = "output shape of {node} not static"

    def view_axes(self, role: str, rank: int, attrs: dict) -> Axes:
        lead = tuple(range(rank - 2))
        if role == "B":  # (..., K, N): rows N, reduce K
            return lead + (rank - 1,), (rank - 2,)
        return lead + (rank - 2,), (rank - 1,)  # constant A (..., M, K)

    def macs_reads(self, node: onnx.NodeProto) -> tuple[str, ...]:
        return (node.output[0],)

    def macs(self, node: onnx.NodeProto, shape_of: ShapeOf, index: int | None = None) -> int | None:
        y, b = shape_of(node.output[0]), shape_of(node.input[1])
        k = _k(shape_of(node.input[0]), b, -1, -2 if b is not None and len(b) > 1 else 0)
        return prod(y) * k if known(y) and k is not None else None

    def reinit(self, node: onnx.NodeProto, shape_of: ShapeOf, rng: np.random.Generator) -> dict[int, np.ndarray]:
        w = shape_of(node.input[1])
        return {1: he_normal(rng, w, w[-2])} if w and len(w) >= 2 else {}

    def capture(self, node: onnx.NodeProto, role: str, shape: tuple[int, ...], position: int) -> Capture:
        """A (or B^T for a constant A); one row block per leading index of a batched weight."""
        lead = tuple(shape[:-2])
        return Capture("matmul", (node.input[1 if role == "A" else 0],), prod(lead), (role == "A", lead))

    def input_channel_axis(self, node: onnx.NodeProto) -> int:
        return -1

    def bias(self, node: onnx.NodeProto, role: str, shape: tuple[int, ...], rows: int,
             graph: onnx.GraphProto) -> Bias | str:
        """The constant of an Add that is the only consumer of a MatMul with a 2-D B weight."""
        if role != "B" or len(shape) != 2:
            return super().bias(node, role, shape, rows, graph)
        consumers = [n for n in graph.node if node.output[0] in n.input]
        if len(consumers) != 1 or consumers[0].op_type != "Add" or node.output[0] in {o.name for o in graph.output}:
            return "MatMul output not consumed by a single Add"
        other = [i for i in consumers[0].input if i != node.output[0]]
        if len(other) != 1:
            return "Add of the MatMul output with itself"
        return Bias(other[0])  # (N,) or (1, ..., 1, N)

    def link_channels(self, b, n: int, node: onnx.NodeProto) -> str | None:
        """K of A to K of B; M of A and N of B to y's (a root where that operand is a 2-D constant);
        broadcast batch axes to y's."""
        ra, rb, ro = b.rank_in(n, 0), b.rank_in(n, 1), b.rank_out(n, 0)
        if ra is None or rb is None or ro is None:
            return "shape unknown"
        a_const, b_const = b.is_const(node.input[0]), b.is_const(node.input[1])
        if ra == 1 and rb == 1:
            b.link(n, b.I(n, 0, 0), b.I(n, 1, 0))
            return None
        ak = b.I(n, 0, ra - 1)
        bk = b.I(n, 1, rb - 2) if rb >= 2 else b.I(n, 1, 0)
        b.link(n, ak, bk)
        b.role(ak, "in")
        b.role(bk, "in")
        if ra >= 2:
            am, ym = b.I(n, 0, ra - 2), b.O(n, 0, ro - 2 if rb >= 2 else ro - 1)
            b.link(n, am, ym)
            b.role(am, "out")
            b.role(ym, "act", root=a_const and ra == 2)
        if rb >= 2:
            bn, yn = b.I(n, 1, rb - 1), b.O(n, 0, ro - 1)
            b.link(n, bn, yn)
            b.role(bn, "out")
            b.role(yn, "act", root=b_const and rb == 2)
        ys = b.shapes[node.output[0]]
        nb = ro - (2 if ra >= 2 and rb >= 2 else 1)
        for i, r in ((0, ra), (1, rb)):
            s = b.shape_of(node.input[i])
            for a in range(r - 2):
                o = a + nb - (r - 2)
                if o >= 0 and s[a] == ys[o]:
                    b.link(n, b.I(n, i, a), b.O(n, 0, o))
        return None

    def refit_axes(self, node: onnx.NodeProto) -> tuple[int, int]:
        return 0, 1

    def refit(self, node: onnx.NodeProto, n: int, w: np.ndarray, kept_out: np.ndarray | None,
              graph: onnx.GraphProto, constant: ConstantAt) -> Refit | str:
        """A 2-D B; the bias: the constant of an Add that is the output's only reader."""
        if w.ndim != 2:
            return "batched MatMul weight"
        wm = w[:, kept_out] if kept_out is not None else w
        users = [(m, j) for m, nd in enumerate(graph.node) for j, x in enumerate(nd.input) if x == node.output[0]]
        if len(users) == 1 and graph.node[users[0][0]].op_type == "Add":
            m, j = users[0]
            c = constant(m, 1 - j)
            if c is not None and c.size == w.shape[1] and c.shape[-1] == w.shape[1]:
                b = c.reshape(-1)[kept_out] if kept_out is not None else c.reshape(-1)
                return Refit(wm, 1, b, (m, 1 - j, c.shape[:-1]))
        return Refit(wm)

    def refit_write(self, node: onnx.NodeProto, n: int, refit: Refit, w: np.ndarray, b: np.ndarray | None,
                    current: ConstantAt) -> list[tuple[int, int, np.ndarray]]:
        if b is None:
            return [(n, 1, w)]
        m, j, lead = refit.layout
        return [(n, 1, w), (m, j, b.reshape(*lead, -1))]


class GemmSpec(OpSpec):
    op_types = ("Gemm",)
    weight_inputs = {0: "A", 1: "B"}
    macs_unknown = "output shape of {node} not static"

    def view_axes(self, role: str, rank: int, attrs: dict) -> Axes:
        trans = attrs.get("transB" if role == "B" else "transA", 0)
        if role == "B":
            return ((0,), (1,)) if trans else ((1,), (0,))
        return ((1,), (0,)) if trans else ((0,), (1,))

    def macs_reads(self, node: onnx.NodeProto) -> tuple[str, ...]:
        return (node.output[0],)

    def macs(self, node: onnx.NodeProto, shape_of: ShapeOf, index: int | None = None) -> int | None:
        at = attrs(node)
        y = shape_of(node.output[0])
        k = _k(shape_of(node.input[0]), shape_of(node.input[1]), 0 if at.get("transA", 0) else -1,
               1 if at.get("transB", 0) else 0)
        return prod(y) * k if known(y) and k is not None else None

    def reinit(self, node: onnx.NodeProto, shape_of: ShapeOf, rng: np.random.Generator) -> dict[int, np.ndarray]:
        w = shape_of(node.input[1]) if len(node.input) > 1 else None
        if not w:
            return {}
        out = {1: he_normal(rng, w, w[1] if attrs(node).get("transB", 0) else w[0])}
        if len(node.input) > 2 and shape_of(node.input[2]):
            out[2] = np.zeros(shape_of(node.input[2]))
        return out

    def capture(self, node: onnx.NodeProto, role: str, shape: tuple[int, ...], position: int) -> Capture:
        """A (A^T with transA) for the B weight; B^T (B with transB) for an A weight."""
        at = attrs(node)
        swap = bool(at.get("transA", 0)) if role == "B" else not at.get("transB", 0)
        return Capture("matmul", (node.input[1 if role == "A" else 0],), 1, (swap, ()))

    def input_channel_axis(self, node: onnx.NodeProto) -> int:
        return 0 if attrs(node).get("transA", 0) else 1

    def bias(self, node: onnx.NodeProto, role: str, shape: tuple[int, ...], rows: int,
             graph: onnx.GraphProto) -> Bias | str:
        """C, scaled by alpha / beta."""
        if len(node.input) < 3 or not node.input[2]:
            return "Gemm without C"
        at = attrs(node)
        beta = float(at.get("beta", 1.0))
        if beta == 0:
            return "Gemm with beta 0"
        shapes = ((rows,), (1, rows)) if role == "B" else ((rows, 1),)
        return Bias(node.input[2], float(at.get("alpha", 1.0)) / beta, shapes)

    def link_channels(self, b, n: int, node: onnx.NodeProto) -> None:
        """K of A to K of B; M and N to y's (roots where A / B is constant); C's axes to y's."""
        at = attrs(node)
        ta, tb = at.get("transA", 0), at.get("transB", 0)
        a_m, a_k = (1, 0) if ta else (0, 1)
        b_k, b_n = (1, 0) if tb else (0, 1)
        a_const, b_const = b.is_const(node.input[0]), b.is_const(node.input[1])
        ak, bk = b.I(n, 0, a_k), b.I(n, 1, b_k)
        b.link(n, ak, bk)
        b.role(bk, "in")
        b.role(ak, "in")
        am, bn = b.I(n, 0, a_m), b.I(n, 1, b_n)
        ym, yn = b.O(n, 0, 0), b.O(n, 0, 1)
        b.link(n, am, ym)
        b.link(n, bn, yn)
        b.role(bn, "out")
        b.role(yn, "act", root=b_const)
        b.role(am, "out")
        b.role(ym, "act", root=a_const)
        rc = b.rank_in(n, 2)
        if rc:
            cs = b.shape_of(node.input[2])
            ys = b.shapes[node.output[0]]
            for a in range(rc):
                if cs[a] == ys[a + 2 - rc]:
                    d = b.I(n, 2, a)
                    b.link(n, d, b.O(n, 0, a + 2 - rc))
                    b.role(d, "param")
        return None

    def refit_axes(self, node: onnx.NodeProto) -> tuple[int, int]:
        return (1, 0) if attrs(node).get("transB", 0) else (0, 1)

    def refit(self, node: onnx.NodeProto, n: int, w: np.ndarray, kept_out: np.ndarray | None,
              graph: onnx.GraphProto, constant: ConstantAt) -> Refit:
        """alpha * B as (K, N); the bias beta * C (a zero C added where there is none)."""
        at = attrs(node)
        wm = w.T if at.get("transB", 0) else w  # (K, N)
        if kept_out is not None:
            wm = wm[:, kept_out]
        alpha, beta = float(at.get("alpha", 1.0)), float(at.get("beta", 1.0))
        wm = wm * alpha
        b = None
        c = constant(n, 2) if len(node.input) > 2 and node.input[2] else None
        if c is not None:
            if c.size == w.shape[0 if at.get("transB", 0) else 1] and beta != 0:
                c = c.reshape(-1)
                b = (c[kept_out] if kept_out is not None else c) * beta
        elif not (len(node.input) > 2 and node.input[2]) and beta != 0:  # beta 0 would multiply a new C away
            b = np.zeros(wm.shape[1])
        return Refit(wm, 1, b, (alpha, beta))

    def refit_columns(self, node: onnx.NodeProto, refit: Refit, x: np.ndarray, im2col) -> np.ndarray:
        return x.T if attrs(node).get("transA", 0) else x

    def refit_write(self, node: onnx.NodeProto, n: int, refit: Refit, w: np.ndarray, b: np.ndarray | None,
                    current: ConstantAt) -> list[tuple[int, int, np.ndarray]]:
        alpha, beta = refit.layout
        wm = w / alpha
        out = [(n, 1, wm.T if attrs(node).get("transB", 0) else wm)]
        return out + ([(n, 2, b / (beta or 1.0))] if b is not None else [])


MATMUL = register(MatMulSpec())
GEMM = register(GemmSpec())
