"""Tiny ONNX models built in code, one per weight-discovery rule, plus helpers to run them.

Every builder returns an `onnx.ModelProto` (opset 17, IR 8 unless noted) that passes
`onnx.checker.check_model(full_check=True)` and runs in onnxruntime's CPU provider. Weights are
seeded, so two calls give identical models. `BUILDERS` maps a name to each zero-argument builder.
"""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
F = TensorProto.FLOAT


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _w(shape, seed: int, dtype=np.float32) -> np.ndarray:
    return _rng(seed).standard_normal(shape).astype(np.float32).astype(dtype)


def _init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def _vi(name: str, shape, elem=F) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _model(nodes, inputs, outputs, inits=(), name="g", opset=OPSET) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="onnxprune-tests")
    model.ir_version = IR_VERSION
    return model


def save(model: onnx.ModelProto, path) -> Path:
    """Write `model` to `path` (weights inline) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


# ------------------------------------------------------------------------------------ MatMul / Gemm

def matmul_2d(seed: int = 0) -> onnx.ModelProto:
    """Y = X(2,8) . W(8,4)."""
    return _model([helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm")],
                  [_vi("X", [2, 8])], [_vi("Y", [2, 4])], [_init("W", _w((8, 4), seed))])


def matmul_batched(seed: int = 0) -> onnx.ModelProto:
    """Y = X(3,2,8) . W(3,8,4): a constant 3-D B."""
    return _model([helper.make_node("MatMul", ["X", "W"], ["Y"], name="bmm")],
                  [_vi("X", [3, 2, 8])], [_vi("Y", [3, 2, 4])], [_init("W", _w((3, 8, 4), seed))])


def matmul_const_a(seed: int = 0) -> onnx.ModelProto:
    """Y = W(4,8) . X(8,2): the constant is MatMul's first input."""
    return _model([helper.make_node("MatMul", ["W", "X"], ["Y"], name="mm")],
                  [_vi("X", [8, 2])], [_vi("Y", [4, 2])], [_init("W", _w((4, 8), seed))])


def gemm(trans_b: int = 0, seed: int = 0) -> onnx.ModelProto:
    """Y = X(2,8) . B + C, B (8,4) with transB=0 or (4,8) with transB=1."""
    b = _w((4, 8) if trans_b else (8, 4), seed)
    return _model([helper.make_node("Gemm", ["X", "B", "C"], ["Y"], name="gemm", transB=trans_b)],
                  [_vi("X", [2, 8])], [_vi("Y", [2, 4])], [_init("B", b), _init("C", _w((4,), seed + 1))])


# ----------------------------------------------------------------------------------- Conv family

def conv(groups: int = 1, seed: int = 0) -> onnx.ModelProto:
    """Conv on X(1,4,6,6): groups=1 W(6,4,3,3); groups=2 W(6,2,3,3); depthwise groups=4 W(8,1,3,3)."""
    out = {1: 6, 2: 6, 4: 8}[groups]
    w = _w((out, 4 // groups, 3, 3), seed)
    return _model([helper.make_node("Conv", ["X", "W", "Bias"], ["Y"], name="conv", group=groups, pads=[1, 1, 1, 1])],
                  [_vi("X", [1, 4, 6, 6])], [_vi("Y", [1, out, 6, 6])],
                  [_init("W", w), _init("Bias", _w((out,), seed + 1))])


def conv_transpose(seed: int = 0) -> onnx.ModelProto:
    """ConvTranspose X(1,4,5,5), W(4,3,3,3) (C, O, kh, kw) -> Y(1,3,7,7)."""
    return _model([helper.make_node("ConvTranspose", ["X", "W"], ["Y"], name="deconv")],
                  [_vi("X", [1, 4, 5, 5])], [_vi("Y", [1, 3, 7, 7])], [_init("W", _w((4, 3, 3, 3), seed))])


def conv_hwio(seed: int = 0) -> onnx.ModelProto:
    """TensorFlow layout: W stored (kh=3, kw=2, C=4, O=6) -> Transpose(3,2,0,1) -> Conv W (6,4,3,2)."""
    return _model([helper.make_node("Transpose", ["W"], ["Wt"], name="tw", perm=[3, 2, 0, 1]),
                   helper.make_node("Conv", ["X", "Wt"], ["Y"], name="conv")],
                  [_vi("X", [1, 4, 6, 6])], [_vi("Y", [1, 6, 4, 5])], [_init("W", _w((3, 2, 4, 6), seed))])


# ----------------------------------------------------------------------------------- recurrent

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
SEQ, BATCH, IN, HID = 3, 2, 5, 4


def rnn(op: str = "LSTM", bidirectional: bool = False, seed: int = 0) -> onnx.ModelProto:
    """LSTM/GRU/RNN over X(3,2,5) with hidden 4: W (D, g*4, 5), R (D, g*4, 4), B (D, 2*g*4)."""
    d, g = (2 if bidirectional else 1), GATES[op]
    attrs = {"hidden_size": HID}
    if bidirectional:
        attrs["direction"] = "bidirectional"
    node = helper.make_node(op, ["X", "W", "R", "B"], ["Y", "Y_h"], name=op.lower(), **attrs)
    inits = [_init("W", _w((d, g * HID, IN), seed) * 0.5), _init("R", _w((d, g * HID, HID), seed + 1) * 0.5),
             _init("B", _w((d, 2 * g * HID), seed + 2) * 0.1)]
    return _model([node], [_vi("X", [SEQ, BATCH, IN])],
                  [_vi("Y", [SEQ, d, BATCH, HID]), _vi("Y_h", [d, BATCH, HID])], inits)


def lstm_folded_w(seed: int = 0) -> onnx.ModelProto:
    """LSTM whose W and R are assembled at run time from Constant nodes: 4 gate blocks -> Concat(axis 0)
    -> Unsqueeze(0), as PyTorch exports do. Foldable; after folding W (1,16,5) and R (1,16,4) are stored."""
    nodes = []
    for mat, cols, base in (("W", IN, 0), ("R", HID, 10)):
        parts = []
        for i in range(4):
            nodes.append(helper.make_node("Constant", [], [f"{mat}_gate{i}"], name=f"c_{mat}{i}",
                                          value=_init(f"{mat}_gate{i}_v", _w((HID, cols), seed + base + i) * 0.5)))
            parts.append(f"{mat}_gate{i}")
        nodes.append(helper.make_node("Concat", parts, [f"{mat}_cat"], name=f"cat_{mat}", axis=0))
        nodes.append(helper.make_node("Unsqueeze", [f"{mat}_cat", "axes0"], [f"{mat}_full"], name=f"unsq_{mat}"))
    nodes.append(helper.make_node("LSTM", ["X", "W_full", "R_full"], ["Y", "Y_h"], name="lstm", hidden_size=HID))
    return _model(nodes, [_vi("X", [SEQ, BATCH, IN])], [_vi("Y", [SEQ, 1, BATCH, HID]), _vi("Y_h", [1, BATCH, HID])],
                  [_init("axes0", np.array([0], np.int64))])


# -------------------------------------------------------------------------------- pass-through chains

def matmul_transposed(seed: int = 0) -> onnx.ModelProto:
    """W stored (N=4, K=8) -> Transpose -> MatMul B (8,4)."""
    return _model([helper.make_node("Transpose", ["W"], ["Wt"], name="tw", perm=[1, 0]),
                   helper.make_node("MatMul", ["X", "Wt"], ["Y"], name="mm")],
                  [_vi("X", [2, 8])], [_vi("Y", [2, 4])], [_init("W", _w((4, 8), seed))])


def matmul_cast_fp16(seed: int = 0) -> onnx.ModelProto:
    """W stored float16 (8,4) -> Cast(to float) -> MatMul."""
    return _model([helper.make_node("Cast", ["W"], ["Wf"], name="cast", to=F),
                   helper.make_node("MatMul", ["X", "Wf"], ["Y"], name="mm")],
                  [_vi("X", [2, 8])], [_vi("Y", [2, 4])], [_init("W", _w((8, 4), seed, np.float16))])


def matmul_reshape_identity(seed: int = 0) -> onnx.ModelProto:
    """W stored flat (32,) -> Reshape([8, -1]) -> Identity -> MatMul B (8,4)."""
    return _model([helper.make_node("Reshape", ["W", "shape"], ["Wr"], name="reshape"),
                   helper.make_node("Identity", ["Wr"], ["Wi"], name="ident"),
                   helper.make_node("MatMul", ["X", "Wi"], ["Y"], name="mm")],
                  [_vi("X", [2, 8])], [_vi("Y", [2, 4])],
                  [_init("W", _w((32,), seed)), _init("shape", np.array([8, -1], np.int64))])


def matmul_dequantized(per_axis: bool = False, seed: int = 0) -> onnx.ModelProto:
    """W stored int8 (8,4) -> DequantizeLinear (scale, zero point; per tensor or per output column,
    axis 1) -> MatMul."""
    rng = _rng(seed)
    q = rng.integers(-100, 100, (8, 4), dtype=np.int8)
    if per_axis:
        scale, zp, attrs = np.array([0.01, 0.02, 0.03, 0.04], np.float32), np.array([0, 3, -2, 5], np.int8), {"axis": 1}
    else:
        scale, zp, attrs = np.array(0.02, np.float32), np.array(3, np.int8), {}
    return _model([helper.make_node("DequantizeLinear", ["W", "W_scale", "W_zp"], ["Wd"], name="dq", **attrs),
                   helper.make_node("MatMul", ["X", "Wd"], ["Y"], name="mm")],
                  [_vi("X", [2, 8])], [_vi("Y", [2, 4])],
                  [_init("W", q), _init("W_scale", scale), _init("W_zp", zp)])


def matmul_constant_node(seed: int = 0) -> onnx.ModelProto:
    """W (8,4) is the value of a Constant node."""
    return _model([helper.make_node("Constant", [], ["W"], name="const_w", value=_init("W_value", _w((8, 4), seed))),
                   helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm")],
                  [_vi("X", [2, 8])], [_vi("Y", [2, 4])])


def conv_net_constant_nodes(seed: int = 0) -> onnx.ModelProto:
    """Every weight, bias and norm parameter in a Constant node (no initializers), as some Paddle and
    TensorFlow exports have them: X(1,3,16,16) -> Conv 3->64 + BatchNorm + Relu -> Conv 64->64 + Relu
    -> Conv 64->32 + Relu -> GlobalAveragePool -> Flatten -> MatMul(32x10) + Add -> Y(1,10). Channel
    counts let 10% channel pruning at multiples of 8 remove channels."""
    rng = _rng(seed)
    nodes, k = [], [0]

    def const(array, hint):
        k[0] += 1
        name = f"{hint}_{k[0]}"
        nodes.append(helper.make_node("Constant", [], [name], name=f"const_{name}",
                                      value=_init(f"{name}_value", np.asarray(array, np.float32))))
        return name

    def conv(x, cin, cout, out):
        w = const(rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (9 * cin)), "conv_w")
        b = const(rng.standard_normal(cout) * 0.1, "conv_b")
        nodes.append(helper.make_node("Conv", [x, w, b], [out], name=out, pads=[1, 1, 1, 1]))
        return out

    bn = [const(rng.uniform(0.5, 1.5, 64), "bn_scale"), const(rng.standard_normal(64) * 0.1, "bn_bias"),
          const(rng.standard_normal(64) * 0.1, "bn_mean"), const(rng.uniform(0.5, 1.5, 64), "bn_var")]
    nodes.append(helper.make_node("BatchNormalization", [conv("X", 3, 64, "c1"), *bn], ["n1"], name="bn1"))
    nodes.append(helper.make_node("Relu", ["n1"], ["r1"], name="relu1"))
    nodes.append(helper.make_node("Relu", [conv("r1", 64, 64, "c2")], ["r2"], name="relu2"))
    nodes.append(helper.make_node("Relu", [conv("r2", 64, 32, "c3")], ["r3"], name="relu3"))
    nodes.append(helper.make_node("GlobalAveragePool", ["r3"], ["p"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["p"], ["f"], name="flatten"))
    w, b = const(rng.standard_normal((32, 10)) * 0.3, "fc_w"), const(rng.standard_normal(10) * 0.1, "fc_b")
    nodes.append(helper.make_node("MatMul", ["f", w], ["h"], name="fc"))
    nodes.append(helper.make_node("Add", ["h", b], ["Y"], name="fc_bias"))
    return _model(nodes, [_vi("X", [1, 3, 16, 16])], [_vi("Y", [1, 10])])


# ------------------------------------------------------------------------------------- subgraphs

def if_branches(seed: int = 0) -> onnx.ModelProto:
    """If(cond): then Y = X.W (W 8x4), else Y = X.W (another W 8x4). Both branch initializers are named
    "W" (keys then_branch::W, else_branch::W); the branches read X from the outer scope."""
    branches = {}
    for i, name in enumerate(("then_branch", "else_branch")):
        branches[name] = helper.make_graph(
            [helper.make_node("MatMul", ["X", "W"], [f"Y_{name}"], name=f"mm_{name}")], name, [],
            [_vi(f"Y_{name}", [2, 4])], [_init("W", _w((8, 4), seed + i))])
    node = helper.make_node("If", ["cond"], ["Y"], name="if", **branches)
    return _model([node], [_vi("cond", [], TensorProto.BOOL), _vi("X", [2, 8])], [_vi("Y", [2, 4])])


def if_twice(seed: int = 0) -> onnx.ModelProto:
    """Two If nodes whose branches have the same graph names and the same initializer name "W": four
    distinct tensors (keys then_branch::W, else_branch::W, then_branch#2::W, else_branch#2::W)."""
    nodes, outputs = [], []
    for k, suffix in enumerate(("", "2")):
        branches = {}
        for i, name in enumerate(("then_branch", "else_branch")):
            out = f"Y_{name}{suffix}"
            branches[name] = helper.make_graph(
                [helper.make_node("MatMul", ["X", "W"], [out], name=f"mm_{name}{suffix}")], name, [],
                [_vi(out, [2, 4])], [_init("W", _w((8, 4), seed + 2 * k + i))])
        nodes.append(helper.make_node("If", ["cond"], [f"Y{suffix}"], name=f"if{suffix}", **branches))
        outputs.append(_vi(f"Y{suffix}", [2, 4]))
    return _model(nodes, [_vi("cond", [], TensorProto.BOOL), _vi("X", [2, 8])], outputs)


def loop_body(seed: int = 0) -> onnx.ModelProto:
    """Loop 3 times: y <- tanh(y . Wl), Wl (4,4) an initializer of the body graph."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep"),
         helper.make_node("MatMul", ["y_in", "Wl"], ["y_mm"], name="mm_body"),
         helper.make_node("Tanh", ["y_mm"], ["y_out"], name="tanh")],
        "body", [_vi("i", [], TensorProto.INT64), _vi("cond_in", [], TensorProto.BOOL), _vi("y_in", [2, 4])],
        [_vi("cond_out", [], TensorProto.BOOL), _vi("y_out", [2, 4])], [_init("Wl", _w((4, 4), seed) * 0.5)])
    node = helper.make_node("Loop", ["trip", "cond", "X"], ["Y"], name="loop", body=body)
    return _model([node], [_vi("X", [2, 4])], [_vi("Y", [2, 4])],
                  [_init("trip", np.array(3, np.int64)), _init("cond", np.array(True))])


# ------------------------------------------------------------------------------- sharing / not weights

def shared_weight(seed: int = 0) -> onnx.ModelProto:
    """One W (8,8) used by two MatMuls: Y = (X.W).W."""
    return _model([helper.make_node("MatMul", ["X", "W"], ["H"], name="mm1"),
                   helper.make_node("MatMul", ["H", "W"], ["Y"], name="mm2")],
                  [_vi("X", [2, 8])], [_vi("Y", [2, 8])], [_init("W", _w((8, 8), seed))])


def matmul_input_b() -> onnx.ModelProto:
    """MatMul whose B is the graph input "Bin"."""
    return _model([helper.make_node("MatMul", ["X", "Bin"], ["Y"], name="mm")],
                  [_vi("X", [2, 8]), _vi("Bin", [8, 4])], [_vi("Y", [2, 4])])


def matmul_runtime_b() -> onnx.ModelProto:
    """Gram matrix: Y = X . Xt with Xt = Transpose(X) computed at run time, and Z = X . Relu(Xt)."""
    return _model([helper.make_node("Transpose", ["X"], ["Xt"], name="tx", perm=[1, 0]),
                   helper.make_node("MatMul", ["X", "Xt"], ["Y"], name="gram"),
                   helper.make_node("Relu", ["Xt"], ["Xr"], name="relu"),
                   helper.make_node("MatMul", ["X", "Xr"], ["Z"], name="mm_relu")],
                  [_vi("X", [4, 8])], [_vi("Y", [4, 4]), _vi("Z", [4, 4])])


def matmul_dtype(dtype: str = "float16", seed: int = 0) -> onnx.ModelProto:
    """A weight stored in a half-precision type: float16 feeds a float16 MatMul directly; bfloat16 is
    cast to float first (onnxruntime's CPU MatMul has no bfloat16 kernel)."""
    if dtype == "float16":
        return _model([helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm")],
                      [_vi("X", [2, 8], TensorProto.FLOAT16)], [_vi("Y", [2, 4], TensorProto.FLOAT16)],
                      [_init("W", _w((8, 4), seed, np.float16))])
    assert dtype == "bfloat16", dtype
    return _model([helper.make_node("Cast", ["W"], ["Wf"], name="cast", to=F),
                   helper.make_node("MatMul", ["X", "Wf"], ["Y"], name="mm")],
                  [_vi("X", [2, 8])], [_vi("Y", [2, 4])], [_init("W", _w((8, 4), seed, ml_dtypes.bfloat16))])


def small_net(seed: int = 0) -> onnx.ModelProto:
    """Conv(1->4, 3x3) -> Relu -> Flatten -> Gemm(transB=1, 4*4*4 -> 10) -> MatMul(10x3): three weights
    of different kinds, and small tensors (biases, shape) beside them."""
    nodes = [helper.make_node("Conv", ["X", "conv.W", "conv.B"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc.W", "fc.B"], ["h"], name="fc", transB=1),
             helper.make_node("MatMul", ["h", "head.W"], ["Y"], name="head")]
    inits = [_init("conv.W", _w((4, 1, 3, 3), seed)), _init("conv.B", _w((4,), seed + 1)),
             _init("fc.W", _w((10, 64), seed + 2) * 0.2), _init("fc.B", _w((10,), seed + 3)),
             _init("head.W", _w((10, 3), seed + 4))]
    return _model(nodes, [_vi("X", [1, 1, 4, 4])], [_vi("Y", [1, 3])], inits)


def external_data_model(tmp_path, name: str = "model.onnx", seed: int = 0) -> Path:
    """`small_net` saved with every tensor in one external data file "<name>.data"; returns the .onnx path."""
    folder = Path(tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    onnx.save_model(small_net(seed), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{name}.data", size_threshold=0)
    return path


# ------------------------------------------------------------------------------------- registry

BUILDERS = {
    "matmul_2d": matmul_2d,
    "matmul_batched": matmul_batched,
    "matmul_const_a": matmul_const_a,
    "gemm_transB0": lambda: gemm(0),
    "gemm_transB1": lambda: gemm(1),
    "conv": conv,
    "conv_grouped": lambda: conv(2),
    "conv_depthwise": lambda: conv(4),
    "conv_transpose": conv_transpose,
    "conv_hwio": conv_hwio,
    "lstm": lambda: rnn("LSTM"),
    "lstm_bidirectional": lambda: rnn("LSTM", True),
    "gru": lambda: rnn("GRU"),
    "gru_bidirectional": lambda: rnn("GRU", True),
    "rnn": lambda: rnn("RNN"),
    "rnn_bidirectional": lambda: rnn("RNN", True),
    "lstm_folded_w": lstm_folded_w,
    "matmul_transposed": matmul_transposed,
    "matmul_cast_fp16": matmul_cast_fp16,
    "matmul_reshape_identity": matmul_reshape_identity,
    "matmul_dq_per_tensor": matmul_dequantized,
    "matmul_dq_per_axis": lambda: matmul_dequantized(True),
    "matmul_constant_node": matmul_constant_node,
    "conv_net_constant_nodes": conv_net_constant_nodes,
    "if_branches": if_branches,
    "if_twice": if_twice,
    "loop_body": loop_body,
    "shared_weight": shared_weight,
    "matmul_input_b": matmul_input_b,
    "matmul_runtime_b": matmul_runtime_b,
    "matmul_fp16": lambda: matmul_dtype("float16"),
    "matmul_bf16": lambda: matmul_dtype("bfloat16"),
    "small_net": small_net,
}


# --------------------------------------------------------------------------------------- running

_NP = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16, TensorProto.BOOL: np.bool_,
       TensorProto.INT64: np.int64, TensorProto.INT32: np.int32}


def feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random values for every graph input (booleans are True)."""
    rng = _rng(seed + 1000)
    out = {}
    for inp in model.graph.input:
        t = inp.type.tensor_type
        shape = [d.dim_value for d in t.shape.dim]
        dtype = _NP[t.elem_type]
        out[inp.name] = (np.ones(shape, dtype) if dtype == np.bool_ else rng.standard_normal(shape).astype(dtype))
    return out


def run(model, inputs: dict | None = None) -> list[np.ndarray]:
    """Outputs of `model` (a ModelProto or a path) in onnxruntime's CPU provider, one thread."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    src = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    sess = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    if inputs is None:
        proto = onnx.load(str(model), load_external_data=False) if isinstance(model, (str, Path)) else model
        inputs = feeds(proto)
    return sess.run(None, inputs)


def set_external_entries(path, tensor: str, **entries) -> None:
    """Overwrite keys of `tensor`'s external_data entries (location, offset, length) in the model file."""
    proto = onnx.load(str(path), load_external_data=False)
    for t in proto.graph.initializer:
        if t.name == tensor:
            info = {e.key: e.value for e in t.external_data} | entries
            del t.external_data[:]
            for k, v in info.items():
                e = t.external_data.add()
                e.key, e.value = k, v
    onnx.save_model(proto, str(path))
