"""Make the bundled sample models and data: ``python samples/make_samples.py``.

Splits scikit-learn's bundled digits (1797 8x8 images, pixels scaled to 0..1) into seeded,
disjoint train/calib/eval sets (1197/300/300), trains a numpy MLP and CNN with Adam
(the networks live in finetune_hook.py), exports them as fp32 ONNX (opset 17, IR 8), checks
them with onnx.checker and against the numpy forward pass in onnxruntime, and prints the
evaluation accuracies. Deterministic: the same bytes on every run on the same machine.
"""

import io
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from finetune_hook import CNN_PARAMS, MLP_PARAMS, cnn, mlp, train
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits

HERE = Path(__file__).resolve().parent
SPLIT = {"train": 1197, "calib": 300, "eval": 300}
MIN_ACCURACY = 0.95


def save_npz(path, **arrays):
    """np.savez_compressed with fixed zip timestamps, so reruns write identical bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, a in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(a), allow_pickle=False)
            z.writestr(zipfile.ZipInfo(f"{name}.npy", (1980, 1, 1, 0, 0, 0)), buf.getvalue(), zipfile.ZIP_DEFLATED)


def he(rng, shape, fan_in):
    """He-normal float32 initial weights."""
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def init(rng, spec):
    """Parameters from {name: (shape, fan_in)}; biases (fan_in None) start at zero."""
    return {k: he(rng, s, f) if f else np.zeros(s, np.float32) for k, (s, f) in spec.items()}


def export(path, nodes, params, input_shape):
    """Write an fp32 ONNX model with input "input" and output "logits", both batch-dynamic ("N")."""
    graph = helper.make_graph(
        nodes, path.stem,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *input_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(a, k) for k, a in params.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="onnxprune-samples", ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    path.write_bytes(model.SerializeToString())


def check(path, net, params, x, y):
    """Run the saved model in onnxruntime, compare with the numpy forward pass; return accuracy."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"input": x})[0]
    want = net(params, x)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"{path.name}: onnxruntime != numpy")
    assert (got.argmax(1) == want.argmax(1)).all()
    return float((got.argmax(1) == y).mean())


def gemm(name, x, out, **kw):
    """A Gemm node with transB=1 using <name>.weight (out, in) and <name>.bias."""
    return helper.make_node("Gemm", [x, f"{name}.weight", f"{name}.bias"], [out], name=name, transB=1, **kw)


def main():
    digits = load_digits()
    x_all = (digits.data / 16.0).astype(np.float32)
    y_all = digits.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(x_all))
    bounds = np.cumsum([0, *SPLIT.values()])
    split = {k: perm[a:b] for k, a, b in zip(SPLIT, bounds[:-1], bounds[1:])}
    for k, idx in split.items():
        save_npz(HERE / f"digits_{k}.npz", input=x_all[idx], labels=y_all[idx])
        save_npz(HERE / f"digits_cnn_{k}.npz", input=x_all[idx].reshape(-1, 1, 8, 8), labels=y_all[idx])
    x_tr, y_tr = x_all[split["train"]], y_all[split["train"]]
    x_ev, y_ev = x_all[split["eval"]], y_all[split["eval"]]

    p = init(np.random.default_rng(1), {
        "fc1.weight": ((64, 256), 64), "fc1.bias": ((256,), None),
        "fc2.weight": ((128, 256), 256), "fc2.bias": ((128,), None),
        "fc3.weight": ((10, 128), 128), "fc3.bias": ((10,), None)})
    train(mlp, p, x_tr, y_tr, epochs=40, lr=1e-3, seed=2)
    path = HERE / "digits_mlp.onnx"
    export(path, [
        helper.make_node("MatMul", ["input", "fc1.weight"], ["fc1.matmul"], name="fc1.matmul"),
        helper.make_node("Add", ["fc1.matmul", "fc1.bias"], ["fc1.out"], name="fc1.add"),
        helper.make_node("Relu", ["fc1.out"], ["relu1"], name="relu1"),
        gemm("fc2", "relu1", "fc2.out"),
        helper.make_node("Relu", ["fc2.out"], ["relu2"], name="relu2"),
        gemm("fc3", "relu2", "logits"),
    ], {k: p[k] for k in MLP_PARAMS}, [64])
    acc_mlp = check(path, mlp, p, x_ev, y_ev)

    p = init(np.random.default_rng(3), {
        "conv1.weight": ((16, 1, 3, 3), 9), "conv1.bias": ((16,), None),
        "conv2.weight": ((32, 16, 3, 3), 144), "conv2.bias": ((32,), None),
        "fc1.weight": ((64, 512), 512), "fc1.bias": ((64,), None),
        "fc2.weight": ((10, 64), 64), "fc2.bias": ((10,), None)})
    x_tr4, x_ev4 = x_tr.reshape(-1, 1, 8, 8), x_ev.reshape(-1, 1, 8, 8)
    train(cnn, p, x_tr4, y_tr, epochs=15, lr=1e-3, seed=4)
    path = HERE / "digits_cnn.onnx"
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    export(path, [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["conv1.out"], name="conv1", **conv),
        helper.make_node("Relu", ["conv1.out"], ["relu1"], name="relu1"),
        helper.make_node("Conv", ["relu1", "conv2.weight", "conv2.bias"], ["conv2.out"], name="conv2", **conv),
        helper.make_node("Relu", ["conv2.out"], ["relu2"], name="relu2"),
        helper.make_node("MaxPool", ["relu2"], ["pool"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten", axis=1),
        gemm("fc1", "flat", "fc1.out"),
        helper.make_node("Relu", ["fc1.out"], ["relu3"], name="relu3"),
        gemm("fc2", "relu3", "logits"),
    ], {k: p[k] for k in CNN_PARAMS}, [1, 8, 8])
    acc_cnn = check(path, cnn, p, x_ev4, y_ev)

    print(f"digits_mlp.onnx eval accuracy: {acc_mlp:.4f}")
    print(f"digits_cnn.onnx eval accuracy: {acc_cnn:.4f}")
    if min(acc_mlp, acc_cnn) < MIN_ACCURACY:
        raise SystemExit(f"accuracy below {MIN_ACCURACY}: retune make_samples.py")


if __name__ == "__main__":
    main()
