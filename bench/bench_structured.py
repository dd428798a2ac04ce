"""Structured (channel) pruning on real models: size, MACs, onnxruntime CPU latency and parity.

For ddddocr common.onnx (CNN -> bidirectional LSTM -> Gemm, OCR), ddddocr common_det.onnx (YOLOX-style
detector) and magika (one-hot -> Dense -> Conv1d -> LayerNorm -> Dense), at 25% and 50% of the
prunable channels removed (uniform per layer, L2 importance, multiples of 16 as in the
cpu-channels recipe: onnxruntime's AVX-512 convolutions work on blocks of 16 channels):
- parameter and MAC ratios (MACs of every Conv/Gemm/MatMul/LSTM from the shapes of a run on a real input);
- latency of the original and the pruned model in onnxruntime (CPU provider, intra_op_num_threads 1
  and 2, inter_op 1), measured side by side in one process: warm-up, then interleaved repetitions
  (original, pruned, alternating which goes first), median of each; ratio = pruned / original;
- where the time goes (onnxruntime's profiler, 1 thread): pruned/original kernel time of the MAC ops
  (tracks the MACs ratio) and of the other ops (activations, normalisation, pooling: they scale with
  the activation size, i.e. linearly in channels), and the other ops' share of the original time;
- parity on real held-out inputs (different seed from the calibration inputs): cosine, relative
  L2, top-1 agreement (per output position), and for the OCR model the decoded-text agreement,
  without repair and with least-squares repair (sequential, guarded: kept only if it lowers the
  output error on the calibration data);
- frozen groups and why.

Inputs: ddddocr common: rendered captchas preprocessed as ddddocr does (tests/realmodels.py);
common_det: the same kind of captcha renderings letterboxed to 416x416 by ddddocr's own
DetectionEngine.preproc; magika: Magika's features of real files of this machine.

    python bench/bench_structured.py [--reps 30] [--calib N] [--eval N] [--json out.json] [--models ...]
"""

from __future__ import annotations

import argparse
import json
import os
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
from onnxprune.check.parity import compare  # noqa: E402
from onnxprune.core.model import Model  # noqa: E402
from onnxprune.core.runtime import median_latencies  # noqa: E402
from onnxprune.prune.structured import CPU_ROUND_TO, prune_channels  # noqa: E402

CALIB = {"ddddocr_common": 32, "ddddocr_det": 16, "magika": 128}  # repair fits on 3/4, guards on 1/4
EVAL = {"ddddocr_common": 32, "ddddocr_det": 16, "magika": 128}


def det_data(n: int, seed: int = 0) -> dict:
    """{"images": float32 [n, 1, 3, 416, 416]}: captcha renderings (tests/realmodels.py) converted to BGR
    and letterboxed with ddddocr's DetectionEngine.preproc, as ddddocr feeds common_det.onnx."""
    import realmodels
    from ddddocr.core.detection_engine import DetectionEngine

    rng = np.random.default_rng([seed, 7])
    out = []
    for text in realmodels.ddddocr_texts(n, seed):
        img = np.asarray(realmodels._render(text, int(rng.integers(120, 200)), rng))[:, :, ::-1].copy()
        im, _ = DetectionEngine.preproc(None, img, (416, 416))
        out.append(im[None])
    return {"images": np.stack(out).astype(np.float32)}


def load(key: str, n_cal: int, n_eval: int):
    import realmodels

    path = realmodels.model_path(key)
    if key == "ddddocr_common":
        cal, ev = realmodels.ddddocr_data(n_cal, seed=1), realmodels.ddddocr_data(n_eval, seed=2)
    elif key == "ddddocr_det":
        cal, ev = det_data(n_cal, seed=1), det_data(n_eval, seed=2)
    else:
        d = realmodels.magika_data(n_cal + n_eval)["bytes"]  # files sorted by path: split at random,
        perm = np.random.default_rng(0).permutation(len(d))   # else the halves hold different file types
        cal, ev = {"bytes": d[np.sort(perm[:n_cal])]}, {"bytes": d[np.sort(perm[n_cal:])]}
    return path, cal, ev


def dataset(model: Model, arrays: dict, tmp: str, name: str) -> Dataset:
    p = os.path.join(tmp, f"{name}.npz")
    np.savez(p, **arrays)
    return Dataset.from_source(p, model.proto)


def session(proto_or_path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    src = proto_or_path.SerializeToString() if isinstance(proto_or_path, onnx.ModelProto) else str(proto_or_path)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def latency(orig, pruned, feed: dict, threads: int, reps: int) -> tuple[float, float]:
    """Median seconds per run of each model, interleaved (alternating which runs first)."""
    a, b = median_latencies([session(orig, threads), session(pruned, threads)], feed, reps)
    return a, b


MAC_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN", "FusedConv", "FusedGemm",
           "FusedMatMul", "NchwcConv"}


def op_time_split(orig, pruned, feed: dict, threads: int, runs: int = 20) -> dict:
    """From onnxruntime's profiler: pruned/original kernel time of the MAC ops (Conv, Gemm, MatMul,
    LSTM, ...) and of all other ops, and the other ops' share of the original time. MACs predict
    the first; the others (activations, normalisation, pooling, reorders) scale with activation size."""
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for src in (orig, pruned):
            so = ort.SessionOptions()
            so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
            so.log_severity_level = 3
            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(tmp, "profile")
            sess = ort.InferenceSession(src.SerializeToString() if isinstance(src, onnx.ModelProto) else str(src), so,
                                        providers=["CPUExecutionProvider"])
            for _ in range(runs):
                sess.run(None, feed)
            mac = other = 0
            for e in json.loads(Path(sess.end_profiling()).read_text()):
                if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                    if e["args"].get("op_name") in MAC_OPS:
                        mac += e["dur"]
                    else:
                        other += e["dur"]
            times.append((mac, other))
    (mac_a, other_a), (mac_b, other_b) = times
    return {"mac_ops_ratio": round(mac_b / max(mac_a, 1), 3), "other_ops_ratio": round(other_b / max(other_a, 1), 3),
            "other_ops_share": round(other_a / max(mac_a + other_a, 1), 3)}


def text_agreement(orig_path, proto, ev: Dataset) -> float:
    import realmodels

    a, b = session(orig_path, 2), session(proto, 2)
    same = total = 0
    for feed in ev.batches(1):
        same += realmodels.ddddocr_decode(a.run(None, feed)[0]) == realmodels.ddddocr_decode(b.run(None, feed)[0])
        total += 1
    return same / max(total, 1)


def parity(model, path, proto, ev, key) -> dict:
    o = compare(model, proto, ev).outputs[0].metrics
    m = {k: round(float(o[k]), 4) for k in ("cosine_mean", "rel_l2", "top1_agreement") if k in o}
    if key == "ddddocr_common":
        m["text_agreement"] = round(text_agreement(path, proto, ev), 4)
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["ddddocr_common", "ddddocr_det", "magika"])
    ap.add_argument("--sparsities", nargs="*", type=float, default=[0.25, 0.5])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--calib", type=int, help="calibration samples (default per model: %s)" % CALIB)
    ap.add_argument("--eval", type=int, help="evaluation samples (default per model: %s)" % EVAL)
    ap.add_argument("--round-to", type=int, default=CPU_ROUND_TO)
    ap.add_argument("--json", help="write all results here")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    results = []
    for key in args.models:
        n_cal, n_eval = args.calib or CALIB[key], args.eval or EVAL[key]
        path, cal_arr, ev_arr = load(key, n_cal, n_eval)
        model = Model.load(path)
        cal, ev = dataset(model, cal_arr, tmp, f"{key}_cal"), dataset(model, ev_arr, tmp, f"{key}_ev")
        feed = next(iter(ev.batches(1)))
        for s in args.sparsities:
            t0 = time.perf_counter()
            plain = prune_channels(model, s, round_to=args.round_to, data=cal, feed=feed)
            t_plain = time.perf_counter() - t0
            t0 = time.perf_counter()
            fixed = prune_channels(model, s, round_to=args.round_to, data=cal, repair="lstsq", feed=feed,
                                   calib_samples=n_cal)
            t_rep = time.perf_counter() - t0
            rep = plain.report
            lat = {}
            for th in (1, 2):
                to, tp = latency(path, plain.proto, feed, th, args.reps)
                lat[th] = {"orig_ms": round(to * 1e3, 3), "pruned_ms": round(tp * 1e3, 3), "ratio": round(tp / to, 3)}
            row = {
                "model": key, "sparsity": s,
                "params_ratio": round(rep["params_ratio"], 3), "macs_ratio": round(rep["macs_ratio"], 3),
                "params": [rep["params_before"], rep["params_after"]], "macs": [rep["macs_before"], rep["macs_after"]],
                "channels": [rep["channels_before"], rep["channels_after"]],
                "latency": lat,
                "op_time_1T": op_time_split(path, plain.proto, feed, 1),
                "within_10pct_of_macs": {th: abs(lat[th]["ratio"] - rep["macs_ratio"]) <= 0.1 * rep["macs_ratio"] for th in lat},
                "parity_no_repair": parity(model, path, plain.proto, ev, key),
                "parity_repair": parity(model, path, fixed.proto, ev, key),
                "repair": {k: v for k, v in (fixed.report["repair_report"] or {}).items() if k != "layers"},
                "frozen_groups": plain.report["frozen_groups"],
                "input": rep["input_shapes"], "calib_samples": n_cal, "eval_samples": n_eval,
                "seconds": {"prune": round(t_plain, 2), "prune+repair": round(t_rep, 2)},
            }
            results.append(row)
            print(json.dumps(row, default=str), flush=True)
    print()
    hdr = ("model", "removed", "params", "MACs", "lat 1T (ms)", "ratio 1T", "lat 2T (ms)", "ratio 2T",
           "MAC ops / other ops (other share)", "parity (no repair)", "parity (lstsq repair)")
    print(" | ".join(hdr))
    print(" | ".join("---" for _ in hdr))
    for r in results:
        l1, l2 = r["latency"][1], r["latency"][2]

        def p(m):
            return ", ".join(f"{k.replace('_mean', '').replace('_agreement', '')} {v}" for k, v in m.items())
        print(" | ".join(str(x) for x in (
            r["model"], f"{int(r['sparsity'] * 100)}%", r["params_ratio"], r["macs_ratio"],
            f"{l1['orig_ms']} -> {l1['pruned_ms']}", l1["ratio"], f"{l2['orig_ms']} -> {l2['pruned_ms']}", l2["ratio"],
            "{mac_ops_ratio} / {other_ops_ratio} ({other_ops_share})".format(**r["op_time_1T"]),
            p(r["parity_no_repair"]), p(r["parity_repair"]) + ("" if r["repair"].get("accepted", True) else " (rejected)"))))
    print()
    for key in args.models:
        r = next(x for x in results if x["model"] == key)
        for f in r["frozen_groups"]:
            print(f"{key}: frozen group {f['name']} ({f['channels']} channels): {'; '.join(f['reasons'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
