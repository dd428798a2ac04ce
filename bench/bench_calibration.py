"""Cost of calibration: a ~20M-parameter transformer-like ONNX model (MatMul-based), 128 samples.

Builds the model in code (6 pre-LN blocks, d=512, 8 heads, FFN 2048, a 512x1024 head; 37 prunable
MatMul weights, ~19.4M parameters), writes 128 calibration samples of 128 tokens, and times:
- the capture for Wanda (norms and means only), and for SparseGPT/lstsq (Gram matrices too),
  one onnxruntime pass over the data each, with the peak of numpy/Python allocations during the
  capture (tracemalloc) and the process peak RSS;
- the whole one-shot SparseGPT job (capture + reconstruction of every weight), and the same in
  sequential mode (one capture per stage), and magnitude + lstsq repair.

    python bench/bench_calibration.py [--threads 2] [--samples 128] [--seq 128] [--jobs]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune.analyze.activations import capture
from onnxprune.analyze.weights import find_weights
from onnxprune.check.data import Dataset
from onnxprune.core.model import Model
from onnxprune.jobs.prune_job import PruneOptions, prune_model

F = TensorProto.FLOAT


def transformer(d=512, heads=8, ff=2048, layers=6, vocab=1024, seed=0) -> onnx.ModelProto:
    r = np.random.default_rng(seed)
    inits, nodes = [], []

    def w(name, shape, scale):
        inits.append(numpy_helper.from_array((r.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    dh = d // heads
    const("split_shape", np.array([0, 0, heads, dh], np.int64))
    const("merge_shape", np.array([0, 0, d], np.int64))
    const("scale", np.array(1 / np.sqrt(dh), np.float32))
    const("ones", np.ones(d, np.float32))
    const("zeros", np.zeros(d, np.float32))
    x = "x"
    for i in range(layers):
        p = f"l{i}"
        nodes.append(helper.make_node("LayerNormalization", [x, "ones", "zeros"], [f"{p}_ln1"], axis=-1))
        for t in "qkv":
            nodes.append(helper.make_node("MatMul", [f"{p}_ln1", w(f"{p}_W{t}", (d, d), d**-0.5)], [f"{p}_{t}"]))
            nodes.append(helper.make_node("Reshape", [f"{p}_{t}", "split_shape"], [f"{p}_{t}4"]))
            perm = [0, 2, 3, 1] if t == "k" else [0, 2, 1, 3]
            nodes.append(helper.make_node("Transpose", [f"{p}_{t}4"], [f"{p}_{t}h"], perm=perm))
        nodes.append(helper.make_node("MatMul", [f"{p}_qh", f"{p}_kh"], [f"{p}_s"]))
        nodes.append(helper.make_node("Mul", [f"{p}_s", "scale"], [f"{p}_ss"]))
        nodes.append(helper.make_node("Softmax", [f"{p}_ss"], [f"{p}_a"], axis=-1))
        nodes.append(helper.make_node("MatMul", [f"{p}_a", f"{p}_vh"], [f"{p}_o4"]))
        nodes.append(helper.make_node("Transpose", [f"{p}_o4"], [f"{p}_ot"], perm=[0, 2, 1, 3]))
        nodes.append(helper.make_node("Reshape", [f"{p}_ot", "merge_shape"], [f"{p}_o"]))
        nodes.append(helper.make_node("MatMul", [f"{p}_o", w(f"{p}_Wo", (d, d), d**-0.5)], [f"{p}_proj"]))
        nodes.append(helper.make_node("Add", [x, f"{p}_proj"], [f"{p}_r1"]))
        nodes.append(helper.make_node("LayerNormalization", [f"{p}_r1", "ones", "zeros"], [f"{p}_ln2"], axis=-1))
        nodes.append(helper.make_node("MatMul", [f"{p}_ln2", w(f"{p}_W1", (d, ff), d**-0.5)], [f"{p}_h"]))
        nodes.append(helper.make_node("Add", [f"{p}_h", w(f"{p}_b1", (ff,), 0.02)], [f"{p}_hb"]))
        nodes.append(helper.make_node("Relu", [f"{p}_hb"], [f"{p}_g"]))
        nodes.append(helper.make_node("MatMul", [f"{p}_g", w(f"{p}_W2", (ff, d), ff**-0.5)], [f"{p}_f"]))
        nodes.append(helper.make_node("Add", [f"{p}_f", w(f"{p}_b2", (d,), 0.02)], [f"{p}_fb"]))
        nodes.append(helper.make_node("Add", [f"{p}_r1", f"{p}_fb"], [f"{p}_out"]))
        x = f"{p}_out"
    nodes.append(helper.make_node("LayerNormalization", [x, "ones", "zeros"], ["lnf"], axis=-1))
    nodes.append(helper.make_node("MatMul", ["lnf", w("W_head", (d, vocab), d**-0.5)], ["logits"]))
    g = helper.make_graph(nodes, "transformer", [helper.make_tensor_value_info("x", F, ["b", "t", d])],
                          [helper.make_tensor_value_info("logits", F, ["b", "t", vocab])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--jobs", action="store_true", help="also time whole pruning jobs (SparseGPT, sequential, lstsq)")
    a = ap.parse_args(argv)
    proto = transformer()
    model = Model(proto)
    ws = find_weights(model).weights
    params = sum(w.params for w in ws)
    r = np.random.default_rng(1)
    mix = (r.standard_normal((64, 512)) / 8).astype(np.float32)
    x = (r.standard_normal((a.samples, a.seq, 64)).astype(np.float32) @ mix
         + 0.1 * r.standard_normal((a.samples, a.seq, 512)).astype(np.float32))
    print(f"model: {len(ws)} prunable MatMul weights, {params / 1e6:.1f}M parameters; calibration: {a.samples} samples "
          f"x {a.seq} tokens ({a.samples * a.seq} activation rows per weight), batch {a.batch}, {a.threads} threads")
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "calib.npz", x=x)
        data = Dataset.from_source(Path(tmp) / "calib.npz", proto)
        rows = []
        for label, gram in (("capture norms+means (wanda)", False), ("capture with Gram H (sparsegpt/lstsq)", True)):
            t0 = time.perf_counter()
            cap = capture(model, data, ws, gram=gram, batch_size=a.batch, threads=a.threads)
            sec = time.perf_counter() - t0
            rows.append((label, sec, cap.peak_bytes / 2**20, cap.stats_bytes / 2**20, _rss_mb(), cap.activations))
        print(f"{'pass':40} {'time s':>7} {'peak numpy MiB':>15} {'stats MiB':>10} {'max RSS MiB':>12} {'inputs':>7}")
        for label, sec, peak, stats, rss, acts in rows:
            print(f"{label:40} {sec:7.2f} {peak:15.1f} {stats:10.1f} {rss:12.1f} {acts:7d}")
        if a.jobs:
            print(f"\n{'job (50% unstructured, whole model)':40} {'time s':>7} {'max RSS MiB':>12}")
            for label, opts in (("magnitude", PruneOptions(sparsity=0.5)),
                                ("wanda", PruneOptions(sparsity=0.5, criterion="wanda")),
                                ("sparsegpt (one capture)", PruneOptions(sparsity=0.5, criterion="sparsegpt")),
                                ("sparsegpt sequential", PruneOptions(sparsity=0.5, criterion="sparsegpt", sequential=True)),
                                ("magnitude + lstsq", PruneOptions(sparsity=0.5, repair="lstsq"))):
                m = Model(onnx.ModelProto.FromString(proto.SerializeToString()))
                t0 = time.perf_counter()
                ctx, report = prune_model(m, opts, data=data, progress=False)
                sec = time.perf_counter() - t0
                caps = len(getattr(ctx, "calibration", None).captures) if hasattr(ctx, "calibration") else 0
                print(f"{label:40} {sec:7.2f} {_rss_mb():12.1f}   ({caps} capture runs)")


if __name__ == "__main__":
    main()
