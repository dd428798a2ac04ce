"""Example fine-tuning hook for the gradual pruning schedule, for the bundled digits models.

Use it with ``finetune(ctx)``: the pipeline calls it after each pruning step. It rebuilds the
digits MLP or CNN in numpy from the model's initializers, trains a few seeded epochs of Adam
on ``digits_train.npz`` (or ``digits_cnn_train.npz``) with the masks held fixed, and returns the
new weights and biases. The numpy networks here are also what ``make_samples.py`` trains.
"""

from pathlib import Path

import numpy as np
from onnx import numpy_helper

EPOCHS = 3
LR = 1e-3
BATCH = 32
SEED = 0
HERE = Path(__file__).resolve().parent

MLP_PARAMS = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias")
CNN_PARAMS = ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
              "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")


def _softmax_grad(z, y):
    """Mean cross-entropy loss of logits z against labels y, and its gradient wrt z."""
    e = np.exp(z - z.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    n = len(y)
    loss = -np.log(p[np.arange(n), y] + 1e-12).mean()
    p[np.arange(n), y] -= 1
    return loss, p / n


def mlp(p, x, y=None):
    """Digits MLP: MatMul+Add 64->256, Relu, Gemm(transB) 256->128, Relu, Gemm(transB) 128->10.

    Returns (logits, None) without labels, else (loss, gradients by parameter name).
    """
    h1 = x @ p["fc1.weight"] + p["fc1.bias"]
    a1 = np.maximum(h1, 0)
    h2 = a1 @ p["fc2.weight"].T + p["fc2.bias"]
    a2 = np.maximum(h2, 0)
    z = a2 @ p["fc3.weight"].T + p["fc3.bias"]
    if y is None:
        return z, None
    loss, d = _softmax_grad(z, y)
    g = {"fc3.weight": d.T @ a2, "fc3.bias": d.sum(0)}
    d = (d @ p["fc3.weight"]) * (h2 > 0)
    g["fc2.weight"], g["fc2.bias"] = d.T @ a1, d.sum(0)
    d = (d @ p["fc2.weight"]) * (h1 > 0)
    g["fc1.weight"], g["fc1.bias"] = x.T @ d, d.sum(0)
    return loss, g


def _im2col(x):
    """[N, C, 8, 8] -> [N*64, C*9] patches of a 3x3, pad 1, stride 1 convolution."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))  # [N, C, H, W, 3, 3]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(n * h * w, c * 9)


def _col2im(dcols, shape):
    """Adjoint of _im2col: scatter-add [N*64, C*9] patch gradients back to [N, C, 8, 8]."""
    n, c, h, w = shape
    d = dcols.reshape(n, h, w, c, 3, 3).transpose(0, 3, 1, 2, 4, 5)
    dxp = np.zeros((n, c, h + 2, w + 2), dcols.dtype)
    for i in range(3):
        for j in range(3):
            dxp[:, :, i:i + h, j:j + w] += d[..., i, j]
    return dxp[:, :, 1:-1, 1:-1]


def _conv(x, w, b):
    """3x3 pad-1 Conv of [N, C, H, W] with w [O, C, 3, 3]; returns output [N, O, H, W] and patches."""
    n, _, h, wd = x.shape
    cols = _im2col(x)
    y = cols @ w.reshape(len(w), -1).T + b
    return y.reshape(n, h, wd, -1).transpose(0, 3, 1, 2), cols


def _conv_grad(d, cols, w):
    """Weight, bias and patch gradients of _conv from the output gradient d [N, O, H, W]."""
    dy = d.transpose(0, 2, 3, 1).reshape(-1, len(w))
    return (dy.T @ cols).reshape(w.shape), dy.sum(0), dy @ w.reshape(len(w), -1)


def cnn(p, x, y=None):
    """Digits CNN: Conv 1->16, Relu, Conv 16->32, Relu, MaxPool 2x2, Flatten, Gemm 512->64, Relu, Gemm 64->10.

    Returns (logits, None) without labels, else (loss, gradients by parameter name).
    """
    h1, c1 = _conv(x, p["conv1.weight"], p["conv1.bias"])
    a1 = np.maximum(h1, 0)
    h2, c2 = _conv(a1, p["conv2.weight"], p["conv2.bias"])
    a2 = np.maximum(h2, 0)
    n, c, hh, ww = a2.shape
    blocks = a2.reshape(n, c, hh // 2, 2, ww // 2, 2)
    pooled = blocks.max((3, 5))
    f = pooled.reshape(n, -1)
    h3 = f @ p["fc1.weight"].T + p["fc1.bias"]
    a3 = np.maximum(h3, 0)
    z = a3 @ p["fc2.weight"].T + p["fc2.bias"]
    if y is None:
        return z, None
    loss, d = _softmax_grad(z, y)
    g = {"fc2.weight": d.T @ a3, "fc2.bias": d.sum(0)}
    d = (d @ p["fc2.weight"]) * (h3 > 0)
    g["fc1.weight"], g["fc1.bias"] = d.T @ f, d.sum(0)
    d = (d @ p["fc1.weight"]).reshape(pooled.shape)[:, :, :, None, :, None]
    d = (d * (blocks == pooled[:, :, :, None, :, None])).reshape(a2.shape) * (h2 > 0)
    g["conv2.weight"], g["conv2.bias"], dcols = _conv_grad(d, c2, p["conv2.weight"])
    d = _col2im(dcols, a1.shape) * (h1 > 0)
    g["conv1.weight"], g["conv1.bias"], _ = _conv_grad(d, c1, p["conv1.weight"])
    return loss, g


def train(net, params, x, y, epochs, lr, seed, trainable=None, masks=None):
    """Adam on mini-batches of a seeded shuffle; updates params in place and returns the last epoch's mean loss.

    Only names in ``trainable`` (default: all) change; gradients of masked weights are zeroed,
    so Adam's moments and updates stay exactly zero there and pruned weights stay at zero.
    """
    names = list(params) if trainable is None else list(trainable)
    masks = masks or {}
    for k in names:
        if k in masks:
            params[k] *= masks[k]
    m = {k: np.zeros_like(params[k]) for k in names}
    v = {k: np.zeros_like(params[k]) for k in names}
    rng = np.random.default_rng(seed)
    b1, b2, eps, t = 0.9, 0.999, 1e-8, 0
    for _ in range(epochs):
        losses = []
        for idx in np.array_split(rng.permutation(len(x)), max(1, len(x) // BATCH)):
            loss, g = net(params, x[idx], y[idx])
            losses.append(loss)
            t += 1
            for k in names:
                gk = g[k] * masks[k] if k in masks else g[k]
                m[k] = b1 * m[k] + (1 - b1) * gk
                v[k] = b2 * v[k] + (1 - b2) * gk * gk
                step = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
                params[k] -= (step * m[k] / (np.sqrt(v[k]) + eps)).astype(params[k].dtype)
    return float(np.mean(losses))


def finetune(ctx):
    """Fine-tune the digits MLP or CNN for EPOCHS epochs with ctx.masks fixed.

    Trains the prunable weights in ctx.weights and every ``*.bias``; other weights stay frozen.
    Returns the trained tensors by initializer name (float32), with zeros where masks are False.
    """
    init = {t.name: numpy_helper.to_array(t) for t in ctx.model.graph.initializer}
    cnn_model = "conv1.weight" in init
    names, net, data = (CNN_PARAMS, cnn, "digits_cnn_train.npz") if cnn_model else (MLP_PARAMS, mlp, "digits_train.npz")
    missing = [k for k in names if k not in init]
    if missing:
        raise ValueError(f"finetune_hook: model lacks initializer(s) {missing}; this hook only fits the digits samples")
    params = {k: np.array(ctx.weights.get(k, init[k]), np.float32) for k in names}
    trainable = [k for k in names if k in ctx.weights or k.endswith(".bias")]
    masks = {k: np.asarray(ctx.masks[k], np.float32) for k in trainable if k in ctx.masks}
    with np.load(HERE / data) as d:
        x, y = d["input"].astype(np.float32), d["labels"]
    train(net, params, x, y, EPOCHS, LR, SEED + ctx.step, trainable, masks)
    return {k: params[k] for k in trainable}
