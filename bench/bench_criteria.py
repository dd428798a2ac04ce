"""Magnitude vs Wanda vs SparseGPT (and least-squares repair) on real models, 50% unstructured and 2:4.

For each model: real inputs (tests/realmodels.py), split into disjoint calibration and evaluation
sets; every method prunes a fresh copy with the calibration set; both the original and the pruned
model run in onnxruntime on the evaluation set. Printed per row: top-1 agreement with the original
(argmax of the class axis; silero: the speech decision p > 0.5; ddddocr also the decoded text),
mean cosine of the output rows, relative L2 error of the outputs, and the wall time of the job
(capture included).

    python bench/bench_criteria.py [--models magika,ddddocr,silero] [--calib 128] [--eval 256]

silero-vad: silero_vad.onnx keeps every weight inside the two branches of an If (16 kHz / 8 kHz);
onnxruntime cannot expose tensors of a subgraph, so no statistics can be captured there (the
calibrated criteria fall back to magnitude for every weight). The bench uses
silero_vad_16k_sequence.onnx, the same network without the If (LSTM over a block of chunks).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from onnxprune.check.data import Dataset  # noqa: E402
from onnxprune.core.model import Model  # noqa: E402
from onnxprune.jobs.prune_job import PruneOptions, prune_model  # noqa: E402

METHODS = {  # name -> PruneOptions fields
    "magnitude": {"criterion": "magnitude"},
    "wanda": {"criterion": "wanda"},
    "sparsegpt": {"criterion": "sparsegpt"},
    "magnitude+lstsq": {"criterion": "magnitude", "repair": "lstsq"},
    "sparsegpt+lstsq": {"criterion": "sparsegpt", "repair": "lstsq"},
    "wanda+lstsq": {"criterion": "wanda", "repair": "lstsq"},
    "sparsegpt seq": {"criterion": "sparsegpt", "sequential": True},
}


def _session(proto_or_path, threads):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    src = proto_or_path.SerializeToString() if isinstance(proto_or_path, onnx.ModelProto) else str(proto_or_path)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def _model_setups(names):
    import realmodels as rm

    setups = {}
    if "magika" in names:
        setups["magika"] = dict(path=rm.model_path("magika"), data=lambda n, s: rm.magika_data(n, s), batch=64,
                                output=0, kind="class")
    if "ddddocr" in names:
        setups["ddddocr"] = dict(path=rm.model_path("ddddocr_common"), data=lambda n, s: rm.ddddocr_data(n, s),
                                 batch=1, output=0, kind="ocr")
    if "silero" in names:
        setups["silero"] = dict(path=rm.model_path("silero_vad_16k_sequence"),
                                data=lambda n, s: rm.silero_sequence_data(n, s), batch=1, output=0, kind="vad")
    return setups


def _outputs(sess, ds, batch, index):
    return [sess.run(None, feed)[index] for feed in ds.batches(batch)]


def _metrics(ref, cand, kind):
    top, cos, num, den, text = [], [], 0.0, 0.0, []
    for r, c in zip(ref, cand):
        r64, c64 = r.astype(np.float64), c.astype(np.float64)
        num += float(np.sum((r64 - c64) ** 2))
        den += float(np.sum(r64**2))
        if kind == "vad":
            top.append(((r64 > 0.5) == (c64 > 0.5)).reshape(-1))
            rows_r, rows_c = r64.reshape(1, -1), c64.reshape(1, -1)
        else:
            top.append((r64.argmax(-1) == c64.argmax(-1)).reshape(-1))
            rows_r, rows_c = r64.reshape(-1, r64.shape[-1]), c64.reshape(-1, c64.shape[-1])
        nr, nc = np.linalg.norm(rows_r, axis=1), np.linalg.norm(rows_c, axis=1)
        cos.append(np.sum(rows_r * rows_c, axis=1) / np.maximum(nr * nc, 1e-30))
        if kind == "ocr":
            import realmodels as rm

            text.append(rm.ddddocr_decode(r) == rm.ddddocr_decode(c))
    out = {"top1": float(np.mean(np.concatenate(top))), "cosine": float(np.mean(np.concatenate(cos))),
           "rel_l2": float(np.sqrt(num / den))}
    if text:
        out["text"] = float(np.mean(text))
    return out


def run(names, n_calib, n_eval, methods, patterns, threads, seed):
    rows = []
    for name, s in _model_setups(names).items():
        arrays = s["data"](n_calib + n_eval, seed)
        arrays.pop("labels", None)
        with tempfile.TemporaryDirectory() as tmp:
            np.savez(Path(tmp) / "data.npz", **arrays)
            proto = onnx.load(str(s["path"]))
            full = Dataset.from_source(Path(tmp) / "data.npz", proto)
            calib, evald = full.split(n_calib, seed=seed)
            ref_sess = _session(s["path"], threads)
            ref = _outputs(ref_sess, evald, s["batch"], s["output"])
            for pattern in patterns:
                for method in methods:
                    model = Model.load(s["path"])
                    opts = PruneOptions(pattern=pattern, sparsity=0.5, **METHODS[method])
                    t0 = time.perf_counter()
                    ctx, report = prune_model(model, opts, data=calib, progress=False)
                    seconds = time.perf_counter() - t0
                    cand = _outputs(_session(model.proto, threads), evald, s["batch"], s["output"])
                    m = _metrics(ref, cand, s["kind"])
                    fallbacks = sorted({w.get("criterion") for p in report["passes"] if p["pass"] == "prune"
                                        for w in p["weights"].values() if "criterion" in w} - {None, method.split()[0].split("+")[0]})
                    rows.append({"model": name, "pattern": pattern, "method": method, **m, "seconds": seconds,
                                 "sparsity": report["totals"]["sparsity_of_selected"],
                                 "fallbacks": ",".join(fallbacks)})
                    print(_fmt(rows[-1]), flush=True)
    return rows


HEADER = f"{'model':9} {'pattern':12} {'method':16} {'top1':>7} {'text':>6} {'cosine':>8} {'rel-L2':>8} {'sparsity':>8} {'time s':>7}"


def _fmt(r):
    text = f"{r['text']:.3f}" if "text" in r else "-"
    line = (f"{r['model']:9} {r['pattern']:12} {r['method']:16} {r['top1']:7.4f} {text:>6} {r['cosine']:8.5f} "
            f"{r['rel_l2']:8.4f} {r['sparsity']:8.3f} {r['seconds']:7.2f}")
    return line + (f"  (fallback: {r['fallbacks']})" if r["fallbacks"] else "")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="magika,ddddocr,silero")
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--eval", type=int, default=256)
    ap.add_argument("--methods", default="magnitude,wanda,sparsegpt,magnitude+lstsq,sparsegpt+lstsq")
    ap.add_argument("--patterns", default="unstructured,2:4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    print(HEADER)
    run(a.models.split(","), a.calib, a.eval, a.methods.split(","), a.patterns.split(","), a.threads, a.seed)


if __name__ == "__main__":
    main()
