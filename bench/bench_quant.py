"""Prune + quantize on real models: CPU latency, parity and on-disk size, measured side by side in one run.

Part "cpu" (ddddocr common.onnx, magika): four models of each, built here from the dense fp32 model:
  dense fp32; channel-pruned fp32 (--channels, default 50% of the prunable channels, multiples of 16,
  least-squares repair, as the cpu-channels recipe); int8 (the dense model through `quantize_model`, onnxruntime layout); channel-pruned
  + int8 (one `prune --pattern channel --quantize int8` job). Latency: onnxruntime CPU provider, 1 intra-op
  thread, warm-up, then interleaved repetitions (rotating which model goes first), median of each; ratio =
  dense / model (2.0 = twice as fast). Parity against the dense model on held-out inputs (another seed than
  the calibration inputs, which pruning and quantization share).
Part "nm" (paraphrase-MiniLM-L3-v2, ddddocr common): the job `prune --target nvidia-2to4 --emit portable
  --quantize int8 --check` (SparseGPT 2:4 on the layers TensorRT can run sparse, TensorRT QDQ layout):
  per stage (dense fp32 -> 2:4 fp32 -> 2:4 + int8) the parity metrics and on-disk bytes, the packed bytes
  of the 2:4 int8 weights against their dense fp32 bytes, every quantized weight's 2:4 check, and the
  eligibility table.

    python bench/bench_quant.py [--parts cpu,nm] [--models ...] [--reps 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import realmodels  # noqa: E402

from onnxprune.check.data import Dataset  # noqa: E402
from onnxprune.check.parity import compare  # noqa: E402
from onnxprune.core.model import Model  # noqa: E402
from onnxprune.jobs.prune_job import PruneOptions  # noqa: E402
from onnxprune.jobs.quantize_job import render_stages  # noqa: E402
from onnxprune.jobs.recipe import Recipe  # noqa: E402
from onnxprune.jobs.run import run_recipe  # noqa: E402
from onnxprune.pack.eligibility import render_eligibility  # noqa: E402
from onnxprune.quantize.quantizer import file_bytes, quantize_model  # noqa: E402

CPU_DATA = {"ddddocr_common": (32, 32), "magika": (256, 256)}  # calibration / evaluation samples


def cpu_data(key: str, n: int, seed: int) -> dict:
    return realmodels.ddddocr_data(n, seed) if key == "ddddocr_common" else realmodels.magika_data(n, seed)


def nm_data(key: str) -> tuple[dict, dict]:
    if key == "minilm_l3":
        d = realmodels.minilm_data(key, 24)
        d.pop("labels")
        return {k: v[:12] for k, v in d.items()}, {k: v[12:] for k, v in d.items()}  # disjoint pairs
    return realmodels.ddddocr_data(32, 0), realmodels.ddddocr_data(32, 1)


def latency(paths: dict[str, Path], feed: dict, reps: int) -> dict[str, float]:
    """Median seconds per run of each model, interleaved, 1 intra-op thread."""
    sessions = {}
    for name, p in paths.items():
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
        sessions[name] = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
    for s in sessions.values():
        for _ in range(3):
            s.run(None, feed)
    times: dict[str, list[float]] = {n: [] for n in sessions}
    names = list(sessions)
    for r in range(reps):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            t = time.perf_counter()
            sessions[n].run(None, feed)
            times[n].append(time.perf_counter() - t)
    return {n: statistics.median(v) for n, v in times.items()}


def parity(dense: Path, cand: Path, evaluation: Dataset) -> dict:
    rep = compare(str(dense), str(cand), evaluation)
    o = rep.outputs[0]
    return {k: o.metrics[k] for k in ("cosine_mean", "rel_l2", "top1_agreement") if k in o.metrics}


def cpu_part(key: str, reps: int, tmp: Path, channels: float = 0.5) -> dict:
    dense = realmodels.model_path(key)
    n_cal, n_eval = CPU_DATA[key]
    cal, ev = cpu_data(key, n_cal, 0), cpu_data(key, n_eval, 1)
    np.savez(tmp / f"{key}_cal.npz", **cal)
    proto = Model.load(dense).proto
    np.savez(tmp / f"{key}_eval.npz", **ev)
    evaluation = Dataset.from_source(tmp / f"{key}_eval.npz", proto)
    calibration = Dataset.from_source(tmp / f"{key}_cal.npz", proto)
    paths = {"dense fp32": dense}
    t0 = time.time()
    m = Model.load(dense)
    quantize_model(m, "int8", calibration.batches())
    paths["int8"] = tmp / f"{key}_int8.onnx"
    m.save(paths["int8"])
    t_int8 = time.time() - t0
    for name, quantize in (("channel-pruned fp32", None), ("channel-pruned + int8", "int8")):
        out = tmp / f"{key}_{'chq' if quantize else 'ch'}.onnx"
        opts = PruneOptions(pattern="channel", sparsity=channels, round_to=16, repair="lstsq", quantize=quantize)
        run_recipe(Recipe(prune=opts, input={"model": str(dense)}, data={"calibration": str(tmp / f"{key}_cal.npz")},
                          output={"model": str(out)}), quiet=True)
        paths[name] = out
    feed = next(evaluation.batches())
    lat = latency(paths, feed, reps)
    rows = {}
    for name, p in paths.items():
        rows[name] = {"bytes": file_bytes(Path(p)), "latency_ms": lat[name] * 1e3,
                      "speedup": lat["dense fp32"] / lat[name],
                      "parity": None if name == "dense fp32" else parity(dense, p, evaluation)}
    return {"model": key, "rows": rows, "int8_quantize_seconds": t_int8}


def nm_part(key: str, tmp: Path) -> dict:
    dense = realmodels.model_path(key)
    cal, ev = nm_data(key)
    np.savez(tmp / f"{key}_nmcal.npz", **cal)
    np.savez(tmp / f"{key}_nmeval.npz", **ev)
    out = tmp / f"{key}_24q.onnx"
    opts = PruneOptions(pattern="2:4", criterion="sparsegpt", quantize="int8")
    t0 = time.time()
    result = run_recipe(Recipe(prune=opts, input={"model": str(dense)},
                               data={"calibration": str(tmp / f"{key}_nmcal.npz"),
                                     "evaluation": str(tmp / f"{key}_nmeval.npz")},
                               check={"enabled": True, "min_cosine": 0.9},
                               target={"name": "nvidia-2to4", "emit": "portable", "out": str(tmp / f"{key}_art")},
                               output={"model": str(out)}), quiet=True)
    r = result.report
    q = r["quantize"]["weights"]
    nm = [w for w in q if w.get("pattern") == "2:4" and w["sparsity_before"] > 0]
    return {"model": key, "seconds": time.time() - t0, "stages": r["stages"],
            "quantized_2to4_weights": len(nm), "all_keep_2to4": all(w["groups_violating"] == 0 for w in nm),
            "eligibility": r["target"]["eligibility"], "dense_input_bytes": file_bytes(dense)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="cpu,nm")
    ap.add_argument("--models", default="")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--channels", type=float, default=0.5, help="share of the prunable channels removed")
    ap.add_argument("--json")
    args = ap.parse_args()
    parts = args.parts.split(",")
    only = set(filter(None, args.models.split(",")))
    out: dict = {"cpu": [], "nm": []}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if "cpu" in parts:
            for key in ("ddddocr_common", "magika"):
                if only and key not in only:
                    continue
                res = cpu_part(key, args.reps, tmp, args.channels)
                out["cpu"].append(res)
                print(f"\n== {key}: {args.channels:.0%} of the channels removed; CPU latency (1 thread, median of {args.reps} interleaved), parity vs dense fp32")
                print(f"{'stage':<24}{'bytes':>12}{'latency ms':>12}{'speed-up':>10}  parity")
                for name, row in res["rows"].items():
                    par = ", ".join(f"{k} {v:.4f}" for k, v in (row["parity"] or {}).items()) or "-"
                    print(f"{name:<24}{row['bytes']:>12,}{row['latency_ms']:>12.2f}{row['speedup']:>9.2f}x  {par}")
                sys.stdout.flush()
        if "nm" in parts:
            for key in ("minilm_l3", "ddddocr_common"):
                if only and key not in only:
                    continue
                res = nm_part(key, tmp)
                out["nm"].append(res)
                print(f"\n== {key}: 2:4 + int8 for nvidia-2to4 (portable artifact), {res['seconds']:.0f} s")
                print(render_stages(res["stages"]))
                print(f"quantized 2:4 weights: {res['quantized_2to4_weights']}, every one keeps 2:4: "
                      f"{res['all_keep_2to4']}")
                print(render_eligibility(res["eligibility"], 40))
                sys.stdout.flush()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
