"""Structured (channel) pruning: dependency groups, the rewrite, repair and reinit.

Every pruned model must run in onnxruntime with the original input/output signature, keep channel
counts at multiples of round_to, and, when the removed channels are exactly zero everywhere (their
weights, biases, norm parameters and the consumers' columns), give the same outputs.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.analyze.groups import analyze_groups
from onnxprune.check.data import Dataset
from onnxprune.check.parity import compare
from onnxprune.core.model import Model
from onnxprune.pipeline import Context, Pipeline
from onnxprune.prune.structured import (
    ChannelPrunePass,
    allocate,
    prune_channels,
    round_keep,
)
from onnxprune.repair.structured_repair import lstsq_repair

F = TensorProto.FLOAT


# --------------------------------------------------------------------------------------- builders

class G:
    """A tiny graph builder: weights are seeded normal, names unique."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.k = [], [], 0

    def name(self, p):
        self.k += 1
        return f"{p}{self.k}"

    def const(self, arr, p="c"):
        n = self.name(p)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), n))
        return n

    def w(self, shape, scale=0.5):
        return self.const((self.rng.standard_normal(shape) * scale).astype(np.float32), "w")

    def op(self, op, inputs, n_out=1, **attrs):
        outs = [self.name(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.name(op), **attrs))
        return outs[0] if n_out == 1 else outs

    def conv(self, x, cin, cout, k=3, group=1, bias=True):
        ins = [x, self.w((cout, cin // group, k, k))] + ([self.w((cout,), 0.1)] if bias else [])
        return self.op("Conv", ins, pads=[k // 2] * 4, group=group)

    def bn(self, x, c):
        return self.op("BatchNormalization", [x, self.const(self.rng.uniform(0.5, 1.5, c).astype(np.float32)),
                                              self.w((c,), 0.1), self.w((c,), 0.1),
                                              self.const(self.rng.uniform(0.5, 1.5, c).astype(np.float32))])

    def gemm(self, x, k, n):
        return self.op("Gemm", [x, self.w((n, k), 0.3), self.w((n,), 0.1)], transB=1)

    def model(self, inputs, outputs, opset=17):
        g = helper.make_graph(self.nodes, "g", inputs, outputs, self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = 8
        onnx.checker.check_model(m, full_check=True)
        return m


def vi(name, shape):
    return helper.make_tensor_value_info(name, F, shape)


def mlp() -> onnx.ModelProto:
    g = G(1)
    h = g.op("Relu", [g.op("Add", [g.op("MatMul", ["x", g.w((20, 32))]), g.w((32,), 0.1)])])
    h = g.op("Relu", [g.gemm(h, 32, 24)])
    h = g.op("MatMul", [h, g.w((24, 16))])
    g.op("Gemm", [h, g.w((16, 5)), g.w((5,))])
    g.nodes[-1].output[0] = "y"
    return g.model([vi("x", ["N", 20])], [vi("y", ["N", 5])])


def resnet_block() -> onnx.ModelProto:
    """Conv-BN-Relu stem, a residual block (Conv-BN-Relu-Conv-BN + identity, Relu), pooled Gemm head."""
    g = G(2)
    s = g.op("Relu", [g.bn(g.conv("x", 3, 16), 16)])
    h = g.op("Relu", [g.bn(g.conv(s, 16, 24), 24)])
    h = g.bn(g.conv(h, 24, 16), 16)
    r = g.op("Relu", [g.op("Add", [h, s])])
    p = g.op("Flatten", [g.op("GlobalAveragePool", [r])])
    g.nodes.append(helper.make_node("Gemm", [p, g.w((4, 16)), g.w((4,))], ["y"], transB=1, name="head"))
    return g.model([vi("x", [1, 3, 8, 8])], [vi("y", [1, 4])])


def concat_net() -> onnx.ModelProto:
    g = G(3)
    a = g.op("Relu", [g.conv("x", 3, 16)])
    b = g.op("Relu", [g.conv("x", 3, 24, k=1)])
    c = g.op("Concat", [a, b], axis=1)
    d = g.op("Relu", [g.conv(c, 40, 16)])
    g.nodes.append(helper.make_node("Conv", [d, g.w((2, 16, 1, 1))], ["y"], name="out"))
    return g.model([vi("x", [1, 3, 6, 6])], [vi("y", [1, 2, 6, 6])])


def depthwise_net() -> onnx.ModelProto:
    g = G(4)
    a = g.op("Clip", [g.conv("x", 3, 32, k=1), g.const(np.array(0, np.float32)), g.const(np.array(6, np.float32))])
    b = g.op("HardSwish", [g.bn(g.conv(a, 32, 32, k=3, group=32), 32)])
    c = g.conv(b, 32, 16, k=1)
    g.nodes.append(helper.make_node("Conv", [c, g.w((3, 16, 1, 1))], ["y"], name="out"))
    return g.model([vi("x", [1, 3, 8, 8])], [vi("y", [1, 3, 8, 8])])


def grouped_net() -> onnx.ModelProto:
    """ResNeXt-style grouped Conv (group 4) and a grouped ConvTranspose (group 2)."""
    g = G(12)
    a = g.op("Relu", [g.conv("x", 3, 64, k=1)])
    b = g.op("Relu", [g.bn(g.conv(a, 64, 64, k=3, group=4), 64)])
    c = g.op("Relu", [g.conv(b, 64, 32, k=1)])
    d = g.op("ConvTranspose", [c, g.w((32, 16, 2, 2)), g.w((32,), 0.1)], group=2, strides=[2, 2])
    g.nodes.append(helper.make_node("Conv", [g.op("Relu", [d]), g.w((3, 32, 1, 1))], ["y"], name="out"))
    return g.model([vi("x", [1, 3, 8, 8])], [vi("y", [1, 3, 16, 16])])


def flatten_gemm() -> onnx.ModelProto:
    g = G(5)
    a = g.op("MaxPool", [g.op("Relu", [g.conv("x", 1, 16)])], kernel_shape=[2, 2], strides=[2, 2])
    f = g.op("Flatten", [a], axis=1)  # 16 x 4 x 4 -> 256 columns, channel c -> c*16 .. c*16+15
    h = g.op("Relu", [g.gemm(f, 256, 32)])
    g.nodes.append(helper.make_node("Gemm", [h, g.w((3, 32)), g.w((3,))], ["y"], transB=1, name="out"))
    return g.model([vi("x", ["N", 1, 8, 8])], [vi("y", ["N", 3])])


def channels_last() -> onnx.ModelProto:
    """tf2onnx style: NHWC input transposed for Conv, back to NHWC for a MatMul over channels, then a
    Reshape with a constant target [N, H*W*C] into a Gemm (channel c at columns s*C + c)."""
    g = G(6)
    t = g.op("Transpose", ["x"], perm=[0, 3, 1, 2])
    c = g.op("Relu", [g.conv(t, 3, 16)])
    nhwc = g.op("Transpose", [c], perm=[0, 2, 3, 1])  # [1, 4, 4, 16]
    m = g.op("Relu", [g.op("Add", [g.op("MatMul", [nhwc, g.w((16, 24))]), g.w((24,), 0.1)])])  # [1, 4, 4, 24]
    r = g.op("Reshape", [m, g.const(np.array([1, 4 * 4 * 24], np.int64), "shape")])
    g.nodes.append(helper.make_node("Gemm", [r, g.w((2, 384), 0.1), g.w((2,))], ["y"], transB=1, name="out"))
    return g.model([vi("x", [1, 4, 4, 3])], [vi("y", [1, 2])])


def split_slice_net() -> onnx.ModelProto:
    g = G(7)
    a = g.op("Relu", [g.conv("x", 3, 32, k=1)])
    s1, s2 = g.op("Split", [a, g.const(np.array([16, 16], np.int64))], n_out=2, axis=1)
    b = g.op("Relu", [g.conv(s1, 16, 16, k=1)])
    sl = g.op("Slice", [s2, g.const(np.array([0], np.int64)), g.const(np.array([8], np.int64)),
                        g.const(np.array([1], np.int64))])
    c = g.op("Concat", [b, sl, s2], axis=1)  # 16 + 8 + 16
    g.nodes.append(helper.make_node("Conv", [c, g.w((2, 40, 1, 1))], ["y"], name="out"))
    return g.model([vi("x", [1, 3, 5, 5])], [vi("y", [1, 2, 5, 5])])


def lstm_net() -> onnx.ModelProto:
    g = G(8)
    h = 16
    x = g.op("Relu", [g.op("MatMul", ["x", g.w((6, 24))])])  # [T, B, 24]
    y, _, _ = g.op("LSTM", [x, g.w((2, 4 * h, 24), 0.2), g.w((2, 4 * h, h), 0.2), g.w((2, 8 * h), 0.1)],
                   n_out=3, hidden_size=h, direction="bidirectional")
    t = g.op("Transpose", [y], perm=[0, 2, 1, 3])  # [T, B, 2, H]
    r = g.op("Reshape", [t, g.const(np.array([0, 0, -1], np.int64))])
    g.nodes.append(helper.make_node("MatMul", [r, g.w((2 * h, 5))], ["y"], name="out"))
    return g.model([vi("x", [7, 2, 6])], [vi("y", [7, 2, 5])])


def gru_net() -> onnx.ModelProto:
    g = G(12)
    h = 24
    x = g.op("Tanh", [g.op("MatMul", ["x", g.w((6, 16))])])  # [T, B, 16]
    y, _ = g.op("GRU", [x, g.w((1, 3 * h, 16), 0.2), g.w((1, 3 * h, h), 0.2), g.w((1, 6 * h), 0.1)],
                n_out=2, hidden_size=h, linear_before_reset=1)
    s = g.op("Squeeze", [y, g.const(np.array([1], np.int64))])  # [T, B, H]
    g.nodes.append(helper.make_node("MatMul", [s, g.w((h, 3))], ["y"], name="out"))
    return g.model([vi("x", [4, 2, 6])], [vi("y", [4, 2, 3])])


def gru_expand_h0_net() -> onnx.ModelProto:
    """As torch exports a GRU: the initial state is zeros [1, 1, H] expanded to [1, batch, H] by a
    shape vector Concat([1], batch from Shape/Gather, [H]) built at run time."""
    g = G(13)
    h = 32
    x = g.op("Tanh", [g.op("MatMul", ["x", g.w((6, 16))])])  # [T, B, 16]
    batch = g.op("Unsqueeze", [g.op("Gather", [g.op("Shape", [x]), g.const(np.array(1, np.int64))], axis=0),
                               g.const(np.array([0], np.int64))])
    shape = g.op("Concat", [g.const(np.array([1], np.int64)), batch, g.const(np.array([h], np.int64))], axis=0)
    h0 = g.op("Expand", [g.const(np.zeros((1, 1, h), np.float32)), shape])
    y, _ = g.op("GRU", [x, g.w((1, 3 * h, 16), 0.2), g.w((1, 3 * h, h), 0.2), g.w((1, 6 * h), 0.1), "", h0],
                n_out=2, hidden_size=h, linear_before_reset=1)
    s = g.op("Squeeze", [y, g.const(np.array([1], np.int64))])
    g.nodes.append(helper.make_node("MatMul", [s, g.w((h, 3))], ["y"], name="out"))
    return g.model([vi("x", [4, 2, 6])], [vi("y", [4, 2, 3])])


def gemm_to_deconv_net() -> onnx.ModelProto:
    """A generator head: Gemm to 16*2*2 features, viewed as [N, 16, 2, 2] (channels, not width,
    are what the ConvTranspose can follow), then ConvTranspose upsampling."""
    g = G(16)
    h = g.op("Relu", [g.gemm("x", 8, 64)])
    v = g.op("Reshape", [h, g.const(np.array([-1, 16, 2, 2], np.int64))])
    u = g.op("Relu", [g.op("ConvTranspose", [v, g.w((16, 16, 2, 2)), g.w((16,), 0.1)], strides=[2, 2])])
    g.nodes.append(helper.make_node("Conv", [u, g.w((3, 16, 1, 1))], ["y"], name="out"))
    return g.model([vi("x", [2, 8])], [vi("y", [2, 3, 4, 4])])


def blocked_net() -> onnx.ModelProto:
    g = G(9)
    a = g.conv("x", 3, 16, k=1)
    sm = g.op("Softmax", [a], axis=1)  # normalises over the channels: the group freezes
    b = g.conv(sm, 16, 16, k=3, group=4)  # grouped conv: its input and output channels freeze
    c = g.op("Relu", [g.conv(b, 16, 16, k=1)])  # free group
    g.nodes.append(helper.make_node("Conv", [c, g.w((2, 16, 1, 1))], ["y"], name="out"))
    return g.model([vi("x", [1, 3, 4, 4])], [vi("y", [1, 2, 4, 4])])


def pad_resize_net() -> onnx.ModelProto:
    g = G(10)
    a = g.op("LeakyRelu", [g.conv("x", 3, 16)], alpha=0.1)
    p = g.op("Pad", [a, g.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))])
    r = g.op("Resize", [p, "", g.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    m = g.op("Mul", [g.op("Sigmoid", [r]), g.const(np.array(2.0, np.float32))])
    g.nodes.append(helper.make_node("Conv", [m, g.w((2, 16, 1, 1))], ["y"], name="out"))
    return g.model([vi("x", [1, 3, 4, 4])], [vi("y", [1, 2, 12, 12])])


def attention_block(d: int = 32, heads: int = 4, ff: int = 64) -> onnx.ModelProto:
    """x + MHA(x) with Q/K/V/out projections (reshape to heads x head_dim), then x + FFN(x) (MatMul,
    Gelu-like Tanh, MatMul); the residual stream comes from the graph input, so only the head dims
    and the FFN hidden units are prunable."""
    g = G(11)
    dh = d // heads
    split = g.const(np.array([0, 0, heads, dh], np.int64), "split")
    merge = g.const(np.array([0, 0, d], np.int64), "merge")

    def proj(x):
        return g.op("Add", [g.op("MatMul", [x, g.w((d, d), 0.2)]), g.w((d,), 0.1)])

    def heads_of(t, perm):
        return g.op("Transpose", [g.op("Reshape", [t, split])], perm=perm)

    q = heads_of(proj("x"), [0, 2, 1, 3])
    k = heads_of(proj("x"), [0, 2, 3, 1])
    v = heads_of(proj("x"), [0, 2, 1, 3])
    s = g.op("Softmax", [g.op("Mul", [g.op("MatMul", [q, k]), g.const(np.array(1 / np.sqrt(dh), np.float32))])], axis=-1)
    o = g.op("Reshape", [g.op("Transpose", [g.op("MatMul", [s, v])], perm=[0, 2, 1, 3]), merge])
    h = g.op("Add", ["x", proj(o)])
    f = g.op("Tanh", [g.op("MatMul", [h, g.w((d, ff), 0.2)])])
    g.nodes.append(helper.make_node("Add", [h, g.op("MatMul", [f, g.w((ff, d), 0.2)])], ["y"], name="res2"))
    return g.model([vi("x", [2, 5, d])], [vi("y", [2, 5, d])])


BUILDERS = {"mlp": mlp, "resnet": resnet_block, "concat": concat_net, "depthwise": depthwise_net,
            "flatten_gemm": flatten_gemm, "channels_last": channels_last, "split_slice": split_slice_net,
            "lstm": lstm_net, "gru": gru_net, "pad_resize": pad_resize_net, "grouped": grouped_net,
            "gru_expand_h0": gru_expand_h0_net, "gemm_to_deconv": gemm_to_deconv_net}


# ---------------------------------------------------------------------------------------- helpers

def feed_for(proto: onnx.ModelProto, n: int = 2, seed: int = 0) -> dict:
    r = np.random.default_rng(seed)
    out = {}
    for i in proto.graph.input:
        shape = [d.dim_value if d.dim_value else n for d in i.type.tensor_type.shape.dim]
        out[i.name] = r.standard_normal(shape).astype(np.float32)
    return out


def run(proto: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feed)


def signature(proto: onnx.ModelProto):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return ([(i.name, i.type, i.shape) for i in s.get_inputs()], [(o.name, o.type, o.shape) for o in s.get_outputs()])


def zero_channels(proto: onnx.ModelProto, group, channels) -> onnx.ModelProto:
    """A copy in which `channels` of `group` are exactly zero everywhere (BN var 1 so they stay finite)."""
    p = onnx.ModelProto()
    p.CopyFrom(proto)
    inits = {t.name: t for t in p.graph.initializer}
    for m in group.members:
        if m.kind != "const":
            continue
        t = inits[m.tensor]
        a = numpy_helper.to_array(t).copy()
        pos = m.positions(channels)
        idx = [slice(None)] * a.ndim
        idx[m.axis] = pos
        node = p.graph.node[m.dim[1]]
        a[tuple(idx)] = 1.0 if node.op_type == "BatchNormalization" and m.dim[2] == 4 else 0.0
        t.CopyFrom(numpy_helper.from_array(a, t.name))
    return p


def kept_counts(res) -> dict:
    return {r["group"]: r for r in res.report["groups"]}


# ------------------------------------------------------------------------------------------ tests

@pytest.mark.parametrize("name", list(BUILDERS))
def test_prune_runs_with_same_signature_and_multiples(name):
    proto = BUILDERS[name]()
    model = Model(proto)
    feed = feed_for(proto)
    res = prune_channels(model, 0.5, round_to=8, feed=feed)
    assert res.plan.removed, f"{name}: nothing was pruned"
    onnx.checker.check_model(res.proto, full_check=True)
    assert signature(res.proto) == signature(proto)
    out = run(res.proto, feed)
    assert [o.shape for o in out] == [o.shape for o in run(proto, feed)]
    for r in res.report["groups"]:
        for before, after in zip(r["segments_before"], r["segments_after"]):
            assert after == before or (after % 8 == 0 and after >= 8), (name, r)
    assert res.report["macs_after"] < res.report["macs_before"]
    assert res.report["params_after"] < res.report["params_before"]


@pytest.mark.parametrize("name", list(BUILDERS))
def test_removing_zero_channels_is_exact(name):
    proto = BUILDERS[name]()
    feed = feed_for(proto)
    analysis = analyze_groups(proto, feed)
    zeroed = proto
    expect = {}
    for g in analysis.prunable:
        for seg in g.segments:
            if len(seg) >= 16 and not g.frozen[seg].any():
                n_drop = len(seg) - round_keep(len(seg), len(seg) * 0.5, 8)  # what 50% removes after rounding
                drop = seg[1::2][:n_drop]  # every other channel
                zeroed = zero_channels(zeroed, g, drop)
                expect.setdefault(g.id, []).extend(drop.tolist())
    assert expect
    res = prune_channels(Model(zeroed), 0.5, round_to=8, feed=feed)
    for gid, chans in expect.items():
        assert sorted(res.plan.removed[gid].tolist()) == sorted(chans), (name, gid)
    for a, b in zip(run(zeroed, feed), run(res.proto, feed)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_groups_couple_residual_concat_flatten_transpose():
    a = analyze_groups(resnet_block(), feed_for(resnet_block()))
    res = [g for g in a.groups if len([p for p in g.producers]) == 2]
    assert len(res) == 1 and res[0].channels == 16  # stem conv and block's second conv, through the Add
    ops = {(m.op, m.role) for m in res[0].members if m.kind == "const"}
    assert ("BatchNormalization", "norm") in ops and ("Gemm", "in") in ops

    c = analyze_groups(concat_net(), feed_for(concat_net()))
    g = next(g for g in c.groups if g.channels == 40)
    assert sorted(len(s) for s in g.segments) == [16, 24]  # two segments: each branch keeps its own count

    f = analyze_groups(flatten_gemm(), feed_for(flatten_gemm()))
    g = next(g for g in f.groups if g.channels == 16)
    gemm_in = next(m for m in g.members if m.op == "Gemm" and m.kind == "const" and m.role == "in")
    assert gemm_in.size == 256 and (np.bincount(gemm_in.channel_of) == 16).all()
    assert (gemm_in.channel_of == np.repeat(np.arange(16), 16)).all()  # channel c -> columns c*16..c*16+15

    t = analyze_groups(channels_last(), feed_for(channels_last()))
    g = next(g for g in t.groups if g.channels == 24)
    gemm_in = next(m for m in g.members if m.op == "Gemm" and m.kind == "const")
    assert (gemm_in.channel_of == np.tile(np.arange(24), 16)).all()  # NHWC flatten: column s*24 + c


def test_depthwise_group_attribute_and_lstm_hidden_size():
    res = prune_channels(Model(depthwise_net()), 0.5, round_to=8, feed=feed_for(depthwise_net()))
    dw = next(n for n in res.proto.graph.node if n.op_type == "Conv" and
              any(a.name == "group" and a.i > 1 for a in n.attribute))
    group = next(a.i for a in dw.attribute if a.name == "group")
    w = next(t for t in res.proto.graph.initializer if t.name == dw.input[1])
    assert group == 16 and tuple(w.dims) == (16, 1, 3, 3)

    res = prune_channels(Model(lstm_net()), 0.5, round_to=8, feed=feed_for(lstm_net()))
    lstm = next(n for n in res.proto.graph.node if n.op_type == "LSTM")
    assert next(a.i for a in lstm.attribute if a.name == "hidden_size") == 8
    dims = {t.name: tuple(t.dims) for t in res.proto.graph.initializer}
    assert dims[lstm.input[1]] == (2, 32, 16) and dims[lstm.input[2]] == (2, 32, 8) and dims[lstm.input[3]] == (2, 64)


def test_reshape_constant_target_rewritten():
    proto = channels_last()
    res = prune_channels(Model(proto), 0.5, feed=feed_for(proto))
    r = next(n for n in res.proto.graph.node if n.op_type == "Reshape")
    target = next(numpy_helper.to_array(t) for t in res.proto.graph.initializer if t.name == r.input[1])
    assert target.tolist() == [1, 16 * 16]  # 24 channels -> 16, times 4x4 positions


def test_grouped_convolutions_lose_channels_evenly_per_group():
    """Position j of every group goes together: the group counts stay, each group keeps the same
    number of input and output channels, and the weights are the kept slots of every group."""
    proto = grouped_net()
    res = prune_channels(Model(proto), 0.5, round_to=4, feed=feed_for(proto))
    nodes = {n.op_type + str(next((a.i for a in n.attribute if a.name == "group"), 1)): n for n in res.proto.graph.node}
    dims = {t.name: tuple(t.dims) for t in res.proto.graph.initializer}
    conv, convt = nodes["Conv4"], nodes["ConvTranspose2"]
    assert dims[conv.input[1]] == (32, 8, 3, 3)  # 64 -> 32 outputs (8 per group), 16 -> 8 inputs per group
    assert dims[convt.input[1]] == (16, 8, 2, 2)  # 32 -> 16 inputs (8 per group), 16 -> 8 outputs per group
    before = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    w_old = before[next(n for n in proto.graph.node if n.op_type == "Conv" and
                        any(a.name == "group" and a.i == 4 for a in n.attribute)).input[1]]
    w_new = numpy_helper.to_array(next(t for t in res.proto.graph.initializer if t.name == conv.input[1]))
    kept_out = res.plan.keep[("c", [i for i, n in enumerate(proto.graph.node) if n.op_type == "Conv"][1], 1, 0)]
    kept_in = res.plan.keep[("c", [i for i, n in enumerate(proto.graph.node) if n.op_type == "Conv"][1], 1, 1)]
    assert (np.bincount(kept_out // 16, minlength=4) == 8).all()  # every output group keeps 8 of its 16
    np.testing.assert_array_equal(w_new, w_old[kept_out][:, kept_in])
    assert signature(res.proto) == signature(proto)
    assert not any("grouped" in r for f in res.report["frozen_groups"] for r in f["reasons"])


def test_frozen_groups_with_reasons():
    proto = blocked_net()
    res = prune_channels(Model(proto), 0.5, round_to=8, feed=feed_for(proto))
    frozen = res.report["frozen_groups"]
    reasons = " | ".join(r for f in frozen for r in f["reasons"])
    assert "Softmax" in reasons
    assert "graph output 'y' keeps its shape" in reasons
    free = [r for r in res.report["groups"] if not r["frozen"]]
    assert free and all(r["channels_after"] == 8 for r in free if r["channels_before"] == 16)
    grouped = next(r for r in free if r["channels_before"] == 4)  # the group-4 conv: 4 slots of 4, left whole
    assert grouped["channels_after"] == 4
    assert signature(res.proto) == signature(proto)


def test_round_keep_and_global_allocation():
    assert round_keep(64, 32, 8) == 32 and round_keep(64, 3, 8) == 8 and round_keep(8, 2, 8) == 8
    assert round_keep(20, 11, 8) == 8 and round_keep(20, 13, 8) == 16 and round_keep(64, 64, 8) == 64
    proto = resnet_block()
    model = Model(proto)
    res = prune_channels(model, 0.5, scope="global", feed=feed_for(proto))
    assert res.plan.removed
    for r in res.report["groups"]:
        for b, a in zip(r["segments_before"], r["segments_after"]):
            assert a == b or (a % 8 == 0 and a >= 8)
    a = analyze_groups(proto, feed_for(proto))
    imp = {g.id: np.arange(g.channels, dtype=float) for g in a.groups}
    rem = allocate(a, imp, 0.5, 8, "layer")
    for gid, chans in rem.items():  # the lowest-importance channels go first
        assert chans.tolist() == list(range(len(chans)))


def test_pass_in_pipeline_replaces_model_and_reports():
    proto = mlp()
    model = Model(proto)
    ctx = Pipeline([ChannelPrunePass(0.5, round_to=8)]).run(Context(model, progress=False))
    assert ctx.results[0].modified and ChannelPrunePass.structural
    assert model.proto.graph.initializer[0].dims != proto.graph.initializer[0].dims
    report = ctx.channel_report
    assert report["channels_after"] < report["channels_before"] and report["frozen_groups"]
    assert ctx.analysis.weights  # the weight analysis is rebuilt on the rewritten model
    run(model.proto, feed_for(proto))


def test_reinit_keeps_architecture_fresh_weights():
    proto = resnet_block()
    feed = feed_for(proto)
    plain = prune_channels(Model(proto), 0.5, feed=feed)
    fresh = prune_channels(Model(proto), 0.5, feed=feed, reinit=True, seed=3)
    dims = lambda p: {t.name: tuple(t.dims) for t in p.graph.initializer}  # noqa: E731
    assert dims(plain.proto) == dims(fresh.proto)
    conv = next(n for n in fresh.proto.graph.node if n.op_type == "Conv")
    w = next(numpy_helper.to_array(t) for t in fresh.proto.graph.initializer if t.name == conv.input[1])
    assert abs(w.std() - np.sqrt(2 / 27)) < 0.1  # He normal, fan_in 3*3*3
    bias = next(numpy_helper.to_array(t) for t in fresh.proto.graph.initializer if t.name == conv.input[2])
    assert not bias.any()
    assert np.isfinite(run(fresh.proto, feed)[0]).all()


def test_digits_cnn_half_channels_accuracy_with_and_without_repair():
    model = Model.load("samples/digits_cnn.onnx")
    calib = Dataset.from_source("samples/digits_cnn_calib.npz", model.proto)
    evald = Dataset.from_source("samples/digits_cnn_eval.npz", model.proto)
    plain = prune_channels(model, 0.5, data=calib, round_to=8)
    fixed = prune_channels(model, 0.5, data=calib, round_to=8, repair="lstsq", calib_samples=128, refit=lstsq_repair)
    acc_plain = compare(model, plain.proto, evald).outputs[0].metrics
    acc_fixed = compare(model, fixed.proto, evald).outputs[0].metrics
    assert acc_plain["accuracy_original"] > 0.98
    assert plain.report["macs_ratio"] < 0.3 and plain.report["params_ratio"] < 0.3
    # measured: 0.2867 without repair, 0.9467 with sequential least-squares repair (all 300 calib samples)
    assert acc_fixed["accuracy_candidate"] > 0.9 > acc_plain["accuracy_candidate"]
    assert fixed.report["repair_report"]["accepted"]


def test_activation_criterion_and_options_errors():
    model = Model.load("samples/digits_mlp.onnx")
    calib = Dataset.from_source("samples/digits_calib.npz", model.proto)
    res = prune_channels(model, 0.5, data=calib, criterion="activation")
    assert res.plan.removed
    from onnxprune.core.errors import OptionError

    with pytest.raises(OptionError):
        prune_channels(model, 0.5, repair="lstsq")  # needs data
    with pytest.raises(OptionError):
        ChannelPrunePass(1.5)
    with pytest.raises(OptionError):
        prune_channels(model, 0.5, data=calib, repair="lstsq", reinit=True)


def test_real_ocr_model_cnn_lstm_gemm():
    from realmodels import ddddocr_data, model_path

    model = Model.load(model_path("ddddocr_common"))
    feed = {"input1": ddddocr_data(1)["input1"][0]}
    res = prune_channels(model, 0.25, feed=feed)
    rows = {r["name"].split(":")[1]: r for r in res.report["groups"]}
    assert rows["LSTM_79"]["channels_after"] == 384  # hidden units 512 -> 384 in both directions
    lstm = next(n for n in res.proto.graph.node if n.op_type == "LSTM")
    assert next(a.i for a in lstm.attribute if a.name == "hidden_size") == 384
    assert rows["Gemm_97"]["frozen"]  # the classes: graph output
    assert res.report["macs_ratio"] < 0.7
    out = run(res.proto, feed)[0]
    assert out.shape == run(model.proto, feed)[0].shape


@pytest.mark.parametrize("prefer", ["inner", "outer"])
def test_attention_head_dims_or_heads_and_ffn(prefer):
    proto = attention_block()
    feed = feed_for(proto)
    res = prune_channels(Model(proto), 0.5, round_to=2, feed=feed, prefer=prefer)
    # head dims: Q+K share one group (they meet in Q.K^T), V+output projection another; heads: Q, K, V and
    # the output projection share one group of 4 heads; plus the FFN hidden units
    assert sorted(r["channels_before"] for r in res.report["groups"] if not r["frozen"]) == (
        [4, 64] if prefer == "outer" else [8, 8, 64])
    target = [numpy_helper.to_array(t).tolist() for t in res.proto.graph.initializer if t.name.startswith("split")]
    assert target and all(t == ([0, 0, 2, 8] if prefer == "outer" else [0, 0, 4, 4]) for t in target)
    assert signature(res.proto) == signature(proto)
    run(res.proto, feed)
    # exactness: zero the channels that will go, everywhere, then prune
    analysis = analyze_groups(proto, feed, prefer=prefer)
    zeroed, expect = proto, {}
    for g in analysis.prunable:
        for seg in g.segments:
            n_drop = len(seg) - round_keep(len(seg), len(seg) * 0.5, 2)
            zeroed = zero_channels(zeroed, g, seg[:n_drop])
            expect[g.id] = sorted(seg[:n_drop].tolist())
    res = prune_channels(Model(zeroed), 0.5, round_to=2, feed=feed, prefer=prefer)
    assert {k: sorted(v.tolist()) for k, v in res.plan.removed.items()} == expect
    np.testing.assert_allclose(run(zeroed, feed)[0], run(res.proto, feed)[0], rtol=1e-4, atol=1e-5)


def test_real_magika_expand_reshape_and_mean_constant():
    from realmodels import magika_data, model_path

    model = Model.load(model_path("magika"))
    feed = {"bytes": magika_data(2)["bytes"][:1]}
    res = prune_channels(model, 0.5, feed=feed)
    after = sorted((r["channels_before"], r["channels_after"]) for r in res.report["groups"])
    assert after == [(64, 32), (214, 214), (512, 256)]  # Dense_0 units, classes (output), Conv filters
    # the hand-written LayerNorm over the conv channels: ReduceSum * (1/512) now averages over 256
    inits = {t.name: numpy_helper.to_array(t) for t in res.proto.graph.initializer}
    scales = [inits[i].item() for n in res.proto.graph.node if n.op_type == "Mul" and "LayerNorm_1" in n.name
              for i in n.input if i in inits and inits[i].size == 1]
    assert scales and all(np.isclose(v, 1 / 256) for v in scales)
    assert run(res.proto, feed)[0].shape == (1, 214)


def test_layers_inside_if_branches_are_named_in_the_notes():
    """A model whose layers all sit in If branches (as silero-vad's do) is left as it is, and the
    report says why instead of silently pruning nothing."""
    import builders as B

    proto = B.if_branches()
    feed = {"cond": np.array(True), "X": np.ones((2, 8), np.float32)}
    res = prune_channels(Model(proto), 0.5, feed=feed)
    assert res.report["params_ratio"] == 1.0 and res.report["macs_ratio"] == 1.0
    assert any("If node 'if'" in n and "main graph only" in n for n in res.report["notes"])


def test_rewrite_that_fails_in_onnxruntime_freezes_the_groups_at_the_named_node(monkeypatch):
    """When the rewritten model fails to run, the groups around the node onnxruntime names are
    frozen and the rewrite redone; the others stay pruned, and the notes say what happened."""
    from onnxprune.core.errors import DataError
    from onnxprune.prune import structured as S

    proto = mlp()
    first_relu = next(n for n in proto.graph.node if n.op_type == "Relu")
    real, calls = S.runtime_shapes, []

    def fails_once(p, feed, base_dir=None):
        calls.append(1)
        if len(calls) == 1:
            raise DataError(f"... running Relu node. Name:'{first_relu.name}' Status Message: invalid shape")
        return real(p, feed, base_dir)

    monkeypatch.setattr(S, "runtime_shapes", fails_once)
    res = prune_channels(Model(proto), 0.5, round_to=8, feed=feed_for(proto))
    rows = {r["channels_before"]: r for r in res.report["groups"]}
    assert rows[32]["frozen"] and "does not run in onnxruntime" in " ".join(rows[32]["reasons"])
    assert rows[24]["channels_after"] == 16  # the other hidden layer is still pruned
    assert any("attempt 1" in n for n in res.report["notes"])


def test_repair_refits_quantized_consumers_and_requantizes(tmp_path):
    """QDQ weights (int8 behind DequantizeLinear) are refit in real units and written back as int8
    with their per-channel scales (grown where the refit values need it); the repaired model is
    closer to the original than the plainly sliced one, as in float."""
    g = G(14)

    def qconv(x, cin, cout):
        w = g.rng.standard_normal((cout, cin, 1, 1)).astype(np.float32) * 0.3
        scale = (np.abs(w).reshape(cout, -1).max(axis=1) / 127).astype(np.float32)
        q = np.round(w / scale[:, None, None, None]).astype(np.int8)
        dq = g.op("DequantizeLinear", [g.const(q, "q"), g.const(scale), g.const(np.zeros(cout, np.int8))], axis=0)
        return g.op("Conv", [x, dq])

    h = g.op("Relu", [qconv("x", 3, 32)])
    g.nodes.append(helper.make_node("Conv", [qconv(h, 32, 16), g.w((2, 16, 1, 1))], ["y"], name="out"))
    proto = g.model([vi("x", [1, 3, 4, 4])], [vi("y", [1, 2, 4, 4])], opset=13)
    x = np.random.default_rng(0).standard_normal((64, 1, 3, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    data = Dataset.from_source(str(tmp_path / "calib.npz"), proto)
    plain = prune_channels(Model(proto), 0.5, round_to=8, data=data)
    fixed = prune_channels(Model(proto), 0.5, round_to=8, data=data, repair="lstsq", calib_samples=64,
                           refit=lstsq_repair)
    rep = fixed.report["repair_report"]
    assert rep["accepted"] and len(rep["layers"]) == 2 and not rep["skipped"], rep  # the QDQ conv and "out"
    stored = {t.name: numpy_helper.to_array(t) for t in fixed.proto.graph.initializer}
    dq = next(n for n in fixed.proto.graph.node if n.op_type == "DequantizeLinear" and stored[n.input[0]].shape[1] == 16)
    assert stored[dq.input[0]].dtype == np.int8  # still quantized, now 16 input channels
    ref = np.concatenate([run(proto, {"x": xi})[0] for xi in x[:16]])
    err = [np.linalg.norm(np.concatenate([run(r.proto, {"x": xi})[0] for xi in x[:16]]) - ref) for r in (plain, fixed)]
    assert err[1] < 0.8 * err[0], err


def test_model_with_external_data_prunes_from_another_folder(tmp_path, monkeypatch):
    """The checker must not look for untouched weights' data files relative to the working folder."""
    proto = resnet_block()
    folder = tmp_path / "m"
    folder.mkdir()
    onnx.save_model(proto, str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    model = Model.load(folder / "model.onnx")
    res = prune_channels(model, 0.5, round_to=64, feed=feed_for(proto))  # large multiple: most weights untouched
    assert any(t.data_location == TensorProto.EXTERNAL for t in res.proto.graph.initializer)
    model.replace_proto(res.proto)
    out = model.save(tmp_path / "out" / "pruned.onnx")
    assert [o.shape for o in run(onnx.load(str(out)), feed_for(proto))] == [o.shape for o in run(resnet_block(), feed_for(proto))]


def test_channel_importance_of_quantized_weights_is_in_real_units():
    """Per-channel QDQ stretches every unit to about +-127 in int8: ranking the stored integers
    would be close to random. Half the hidden units are tiny in real units; those must go."""
    g = G(15)
    w1 = g.rng.standard_normal((8, 32)).astype(np.float32)
    w1[:, ::2] *= 0.01  # even hidden units barely contribute
    scale1 = (np.abs(w1).max(axis=0) / 127).astype(np.float32)
    q1 = np.round(w1 / scale1).astype(np.int8)
    w2 = g.rng.standard_normal((32, 4)).astype(np.float32)
    scale2 = (np.abs(w2).max(axis=0) / 127).astype(np.float32)
    q2 = np.round(w2 / scale2).astype(np.int8)
    d1 = g.op("DequantizeLinear", [g.const(q1, "q"), g.const(scale1), g.const(np.zeros(32, np.int8))], axis=1)
    d2 = g.op("DequantizeLinear", [g.const(q2, "q"), g.const(scale2), g.const(np.zeros(4, np.int8))], axis=1)
    h = g.op("Relu", [g.op("MatMul", ["x", d1])])
    g.nodes.append(helper.make_node("MatMul", [h, d2], ["y"], name="out"))
    proto = g.model([vi("x", ["N", 8])], [vi("y", ["N", 4])], opset=13)
    res = prune_channels(Model(proto), 0.5, round_to=8, feed=feed_for(proto))
    removed = next(iter(res.plan.removed.values()))
    assert sorted(removed.tolist()) == list(range(0, 32, 2))


def test_dynamically_quantized_layers_are_named_in_the_notes(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = tmp_path / "mlp.onnx"
    onnx.save(mlp(), str(src))
    quantize_dynamic(str(src), str(tmp_path / "q.onnx"), weight_type=QuantType.QInt8)
    proto = onnx.load(str(tmp_path / "q.onnx"))
    res = prune_channels(Model(proto), 0.5, feed=feed_for(proto))
    assert any("quantized operators (MatMulInteger" in n and "prune the float model" in n for n in res.report["notes"])


def test_reshape_into_conv_channels_links_the_channel_factor():
    res = prune_channels(Model(gemm_to_deconv_net()), 0.5, round_to=8, feed=feed_for(gemm_to_deconv_net()))
    gemm_group = next(r for r in res.report["groups"] if any("Gemm" in p for p in r["producers"]))
    assert (gemm_group["channels_before"], gemm_group["channels_after"]) == (16, 8)


@pytest.mark.parametrize("dtype,per_axis,zero", [(np.int8, True, 0), (np.int8, False, 0), (np.uint8, True, 128),
                                                  (np.uint8, False, 100), (np.uint8, True, None)])
def test_requantized_refit_holds_values_outside_the_old_range(dtype, per_axis, zero):
    """The refit may leave a channel's old range: its scale grows (symmetric) or scale and zero
    point move (asymmetric) so every value comes back within half a step, nothing clipped."""
    from onnxprune.analyze.constants import constant_array, constant_values
    from onnxprune.core.quant import dequantized
    from onnxprune.repair.structured_repair import _set_weight

    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 4)).astype(np.float32)
    n = 6 if per_axis else 1
    scale = np.full(n, 0.01, np.float32)
    inputs = ["q", "s"] + (["z"] if zero is not None else [])
    inits = [numpy_helper.from_array(np.zeros((6, 4), dtype), "q"), numpy_helper.from_array(scale if per_axis else scale[0], "s")]
    if zero is not None:
        inits.append(numpy_helper.from_array(np.full(n, zero, dtype) if per_axis else np.array(zero, dtype), "z"))
    graph = helper.make_graph([helper.make_node("DequantizeLinear", inputs, ["w"], axis=0),
                               helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [vi("x", [1, 6])], [vi("y", [1, 4])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])

    _set_weight(proto, 1, 0, w)
    consts = constant_values(proto.graph)
    got = dequantized(proto.graph.node[0], lambda name: constant_array(consts[name]))
    step = np.asarray(constant_array(consts[proto.graph.node[0].input[1]]), np.float64).reshape(-1, 1) if per_axis else \
        float(constant_array(consts[proto.graph.node[0].input[1]]))
    assert np.all(np.abs(got - w) <= step / 2 + 1e-6)


def test_quantized_weight_shared_by_two_layers_is_not_refit_for_one_of_them(tmp_path):
    g = G(3)
    h = g.op("Relu", [g.conv("x", 3, 16, k=1)])
    w = g.rng.standard_normal((8, 16, 1, 1)).astype(np.float32) * 0.3
    scale = (np.abs(w).reshape(8, -1).max(1) / 127).astype(np.float32)
    q = np.round(w / scale[:, None, None, None]).astype(np.int8)
    dq = g.op("DequantizeLinear", [g.const(q, "q"), g.const(scale, "s"), g.const(np.zeros(8, np.int8), "z")], axis=0)
    y1, y2 = g.op("Conv", [h, dq]), g.op("Conv", [g.op("Sigmoid", [h]), dq])
    g.nodes.append(helper.make_node("Concat", [y1, y2], ["y"], axis=1, name="cat"))
    proto = g.model([vi("x", [1, 3, 4, 4])], [vi("y", [1, 16, 4, 4])], opset=13)
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(0).standard_normal((64, 1, 3, 4, 4)).astype(np.float32))
    res = prune_channels(Model(proto), 0.5, round_to=8, data=Dataset.from_source(str(tmp_path / "c.npz"), proto),
                         repair="lstsq", calib_samples=64, refit=lstsq_repair)
    assert sum("shared by several layers" in s for s in res.report["repair_report"]["skipped"]) == 2


# ------------------------------------------------------- constants left unread (issue 12, item 6)

def test_constant_node_weights_are_refit_in_place_not_copied(tmp_path):
    """Weights in Constant nodes (Paddle, TF exports): `--pattern channel --sparsity 0.1 --repair
    lstsq` wrote the refit weights as new initializers beside the old Constants (1.575x the original
    parameters). Now the Constant takes the refit value: no initializer appears, nothing is left
    unread, and the model shrinks about as much as its channels."""
    import builders as B
    from click.testing import CliRunner

    from onnxprune.analyze.cleanup import unused_constants
    from onnxprune.analyze.constants import model_params
    from onnxprune.cli import main

    proto = B.conv_net_constant_nodes()
    src, out = B.save(proto, tmp_path / "m.onnx"), tmp_path / "p.onnx"
    np.savez(tmp_path / "c.npz", X=np.random.default_rng(0).standard_normal((32, 3, 16, 16)).astype(np.float32))
    r = CliRunner().invoke(main, ["prune", str(src), "-o", str(out), "--pattern", "channel", "--sparsity", "0.1",
                                  "--repair", "lstsq", "--data", str(tmp_path / "c.npz"),
                                  "--report", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    pruned = onnx.load(str(out))
    changes = __import__("json").loads((tmp_path / "r.json").read_text())["passes"][-1]["weights"]
    assert changes["conv_w_7"] == {"shape_before": [64, 64, 3, 3], "shape_after": [56, 56, 3, 3]}  # a Constant
    assert not pruned.graph.initializer and not unused_constants(pruned)
    ratio = model_params(pruned) / model_params(proto)
    assert ratio < 0.85, ratio  # 0.806; it was 1.575
    assert signature(pruned) == signature(proto)
    assert run(pruned, B.feeds(proto))[0].shape == (1, 10)


def test_repair_of_constant_node_model_refits_layers_and_reinit_reaches_constants(tmp_path):
    import builders as B

    from onnxprune.analyze.constants import model_params

    proto = B.conv_net_constant_nodes()
    np.savez(tmp_path / "c.npz", X=np.random.default_rng(0).standard_normal((32, 3, 16, 16)).astype(np.float32))
    res = prune_channels(Model(proto), 0.1, data=Dataset.from_source(str(tmp_path / "c.npz"), proto), repair="lstsq",
                         refit=lstsq_repair)
    assert set(res.report["repair_report"]["layers"]) == {"c2", "c3"}
    assert res.report["params_after"] == model_params(res.proto) < res.report["params_before"]
    fresh = prune_channels(Model(proto), 0.1, reinit=True)
    assert "reinit: 11 weight tensors" in " ".join(fresh.report["notes"])  # 3 Conv W+b, 4 BN, fc W (b: an Add)


def test_remove_unused_sweeps_dead_constants_and_keeps_outer_references():
    """One sweep: unread initializers, Constant nodes and the nodes that only feed them go; a
    constant read only by an If branch (outer reference), a graph output, an initializer that is
    also a graph input, and nodes of unknown domains stay; a branch's own unread initializer goes."""
    from onnxprune.analyze.cleanup import (
        PostconditionError,
        check_no_unused,
        remove_unused,
        unused_constants,
    )

    t = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
    then = helper.make_graph([helper.make_node("Add", ["x", "outer_w"], ["ty"], name="t_add")], "then", [],
                             [vi("ty", [2])], [t("then_unread", [1.0])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["ey"], name="e_id")], "else", [], [vi("ey", [2])])
    nodes = [helper.make_node("Constant", [], ["dead_c"], name="dead_const", value=t("v", [1.0, 2.0])),
             helper.make_node("Transpose", ["dead_c"], ["dead_t"], name="dead_transpose"),
             helper.make_node("Constant", [], ["out_c"], name="out_const", value=t("o", [3.0])),
             helper.make_node("Relu", ["unread_w"], ["custom_in"], name="feeds_custom"),
             helper.make_node("Mystery", ["custom_in"], ["custom_out"], name="custom", domain="example.custom"),
             helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then, else_branch=other)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, []), vi("x", [2]), vi("in_init", [2])],
        [vi("y", [2]), vi("out_c", [1])],
        [t("outer_w", [1.0, 1.0]), t("unread", [5.0]), t("in_init", [0.0, 0.0]), t("unread_w", [1.0])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.custom", 1)])
    assert {s.split()[-1] for s in unused_constants(proto)} == {"'unread'", "'then_unread'"}  # dead_c has a reader
    with pytest.raises(PostconditionError, match="nothing reads"):
        check_no_unused(proto, "test")
    removed = remove_unused(proto)
    assert len(removed) == 4  # dead_transpose, dead_const, unread, then_unread
    assert [n.name for n in proto.graph.node] == ["out_const", "feeds_custom", "custom", "if"]
    assert {i.name for i in proto.graph.initializer} == {"outer_w", "in_init", "unread_w"}
    branches = {a.name: a.g for a in proto.graph.node[-1].attribute}
    assert not branches["then_branch"].initializer and [n.name for n in branches["then_branch"].node] == ["t_add"]
    check_no_unused(proto, "test")
    assert remove_unused(proto) == []


def test_weight_tied_layers_are_not_untied_into_a_bigger_model():
    """Y = relu(X.W).W with one W (64x64): its two uses would keep different channels, and at 25% two
    sliced copies of W (64x48, 48x64) hold more than W. The group is frozen instead of growing the model."""
    g = G(5)
    w = g.w((64, 64), 0.2)
    g.nodes.append(helper.make_node("MatMul", [g.op("Relu", [g.op("MatMul", ["x", w])]), w], ["y"], name="mm2"))
    proto = g.model([vi("x", ["N", 64])], [vi("y", ["N", 64])])
    res = prune_channels(Model(proto), 0.25, round_to=8, feed=feed_for(proto))
    assert res.report["params_after"] == res.report["params_before"] and not res.plan.removed
    assert any("shared constant" in n and "raising the parameters" in n for n in res.report["notes"]), res.report["notes"]


def test_refit_of_a_shared_constant_node_writes_a_copy_and_a_sole_reader_writes_in_place():
    from onnxprune.repair.structured_repair import _set_const

    c = helper.make_node("Constant", [], ["w"], name="cw", value=numpy_helper.from_array(np.ones((2, 2), np.float32), "v"))
    m1, m2 = (helper.make_node("MatMul", ["x", "w"], [f"y{k}"], name=f"mm{k}") for k in (1, 2))
    proto = helper.make_model(helper.make_graph([c, m1, m2], "g", [vi("x", [1, 2])], [vi("y1", [1, 2]), vi("y2", [1, 2])]))
    _set_const(proto, 1, 1, np.full((2, 2), 2.0))  # w is shared: mm1 gets a copy
    assert proto.graph.node[1].input[1] == "y1__repaired_in1" and len(proto.graph.initializer) == 1
    _set_const(proto, 2, 1, np.full((2, 2), 3.0))  # now mm2 is w's only reader: the Constant changes
    assert proto.graph.node[2].input[1] == "w" and len(proto.graph.initializer) == 1
    assert np.all(numpy_helper.to_array(proto.graph.node[0].attribute[0].t) == 3.0)


def test_pipeline_sweeps_and_checks_after_a_structural_pass():
    """Whatever a structural pass leaves unread is removed before the next pass; a pass that
    leaves a constant unread is caught by the postcondition rather than shipped."""
    from onnxprune.pipeline import Pass, PassResult

    class LeavesDeadConstant(Pass):
        name, structural = "leaves-dead", True

        def call(self, ctx):
            model = ctx.model
            p = onnx.ModelProto()
            p.CopyFrom(model.proto)
            p.graph.node.insert(0, helper.make_node("Constant", [], ["dead"], name="dead",
                                                    value=numpy_helper.from_array(np.ones(3, np.float32), "d")))
            p.graph.initializer.append(numpy_helper.from_array(np.ones(4, np.float32), "dead_init"))
            model.replace_proto(p)
            return PassResult(self.name, True)

    model = Model(mlp())
    ctx = Pipeline([LeavesDeadConstant()]).run(Context(model))
    assert not any(n.name == "dead" for n in model.proto.graph.node)
    assert not any(t.name == "dead_init" for t in model.proto.graph.initializer)
    assert "removed 2 unread constants/nodes" in ctx.results[0].notes


def test_unnamed_output_dims_stay_unnamed_after_the_rewrite():
    """Shape inference names the dims it cannot relate ("unk__1"), and onnxruntime carried such a
    name into a graph output the exporter left unnamed (skl2onnx's labels): the signature changed."""
    g = G(7)
    h = g.op("Relu", [g.gemm("x", 20, 32)])
    flat = g.op("Reshape", [g.gemm(h, 32, 4), g.const(np.array([-1], np.int64))])
    g.nodes.append(helper.make_node("Identity", [flat], ["y"], name="out"))
    proto = g.model([vi("x", ["N", 20])], [vi("y", [None])])
    res = prune_channels(Model(proto), 0.5, round_to=8, feed=feed_for(proto))
    assert res.plan.removed
    assert signature(res.proto) == signature(proto)


def _zipmap_mlp() -> onnx.ModelProto:
    """skl2onnx's classifier layout: MLP -> Softmax -> ZipMap (a sequence of {class: probability} maps)
    and the ArgMax label."""
    g = G(8)
    h = g.op("Relu", [g.op("Add", [g.op("MatMul", ["x", g.w((20, 32))]), g.w((32,), 0.1)])])
    p = g.op("Softmax", [g.op("Add", [g.op("MatMul", [h, g.w((32, 10))]), g.w((10,), 0.1)])], axis=1)
    g.nodes.append(helper.make_node("ArgMax", [p], ["label"], axis=1, keepdims=0, name="argmax"))
    g.nodes.append(helper.make_node("ZipMap", [p], ["probabilities"], domain="ai.onnx.ml",
                                    classlabels_int64s=list(range(10)), name="zipmap"))
    seq = helper.make_sequence_type_proto(helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(F, [])))
    graph = helper.make_graph(g.nodes, "g", [vi("x", ["N", 20])],
                              [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
                               helper.make_value_info("probabilities", seq)], g.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)],
                             ir_version=8)


def test_repair_guard_reads_map_outputs(tmp_path):
    """The repair's guard compares the model outputs: it died on a ZipMap output (TypeError: float()
    argument must be ... not 'dict'); it now reads the maps as the parity gate does."""
    proto = _zipmap_mlp()
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(0).standard_normal((32, 20)).astype(np.float32))
    res = prune_channels(Model(proto), 0.5, round_to=8, data=Dataset.from_source(str(tmp_path / "c.npz"), proto),
                         repair="lstsq", refit=lstsq_repair)
    rep = res.report["repair_report"]
    assert rep["layers"] and rep["guard_rel_l2_before"] > 0, rep
    assert signature(res.proto) == signature(proto)


def test_a_prune_that_would_add_parameters_is_stopped(monkeypatch):
    """Postcondition of every pruning job: the model holds no more parameters than it did (after
    --fold-constants, which materialises weights, when that runs)."""
    import onnxprune.jobs.prune_job as job
    from onnxprune.analyze.cleanup import PostconditionError
    from onnxprune.pipeline import Pass, PassResult

    class Grows(Pass):
        name, structural = "grows", True

        def call(self, ctx):
            model = ctx.model
            model.proto.graph.initializer.append(numpy_helper.from_array(np.ones(4, np.float32), "extra"))
            model.proto.graph.input.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, [4]))  # kept
            model.replace_proto(model.proto)
            return PassResult(self.name, True)

    monkeypatch.setattr(job, "build_pipeline", lambda opts: Pipeline([Grows()]))
    with pytest.raises(PostconditionError, match="increased the parameters"):
        job.prune_model(Model(mlp()), job.PruneOptions(sparsity=0.5))
