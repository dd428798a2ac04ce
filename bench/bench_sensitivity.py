"""Sensitivity analysis and sensitivity-driven allocation on real models, side by side with uniform pruning.

1. Time of `onnxprune sensitivity` on paraphrase-MiniLM-L3-v2 (17M params, 18 prunable MatMul weights),
   unstructured magnitude, 5 levels, with 1 and 2 workers (no cache; the second run of each is from the cache).
2. Allocation: for ddddocr common and magika, channel pruning at the MACs of uniform 50% channel pruning
   (`--pattern channel --sparsity 0.5`, kept channels in multiples of 16 as in the cpu-channels recipe):
   uniform vs `--allocation sensitivity --budget macs=<uniform's MACs ratio>`, without and with
   `--repair lstsq` (the sensitivity curves measured with the same repair); for MiniLM-L3 50% unstructured
   magnitude uniform vs `--budget sparsity=0.5`. Parity on held-out real inputs (tests/realmodels.py; the
   curves are measured on the calibration inputs only): mean cosine and top-1 agreement per output position
   of the first output; latency pruned/original in onnxruntime (1 thread, median of interleaved runs).

    python bench/bench_sensitivity.py [--parts timing allocation] [--models ddddocr_common magika minilm_l3]
        [--repairs none lstsq] [--heatmap docs/sensitivity-example.png] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_structured import latency  # noqa: E402

from onnxprune.check.data import Dataset  # noqa: E402
from onnxprune.check.parity import compare  # noqa: E402
from onnxprune.core.model import Model  # noqa: E402
from onnxprune.jobs import sensitivity as sens  # noqa: E402
from onnxprune.jobs.plots import pyplot  # noqa: E402
from onnxprune.jobs.prune_job import PruneOptions, build_pipeline, prune_model  # noqa: E402


def data_for(key: str, tmp: str):
    import realmodels
    from bench_structured import load

    if key == "minilm_l3":
        d = {k: v for k, v in realmodels.minilm_data(key, 24).items() if k != "labels"}
        cal, ev = {k: v[:12] for k, v in d.items()}, {k: v[12:] for k, v in d.items()}  # whole pairs each side
        path = realmodels.model_path(key)
    else:
        path, cal, ev = load(key, {"ddddocr_common": 32, "magika": 128}[key], {"ddddocr_common": 32, "magika": 128}[key])
    model = Model.load(path)
    out = []
    for name, arrays in (("cal", cal), ("ev", ev)):
        p = os.path.join(tmp, f"{key}_{name}.npz")
        np.savez(p, **arrays)
        out.append(Dataset.from_source(p, model.proto))
    return str(path), out[0], out[1]


def timing(tmp: str, heatmap: str | None) -> list[dict]:
    path, cal, ev = data_for("minilm_l3", tmp)
    rows = []
    for workers in (1, 2):
        spec = sens.Spec(path, PruneOptions(), cal, cal, list(sens.DEFAULT_LEVELS), "cosine", build_pipeline,
                         latency=False)
        cache = os.path.join(tmp, f"cache{workers}")
        t, c = time.perf_counter(), os.times()
        section = sens.run_sensitivity(spec, workers=workers, cache_dir=cache)
        cold, c2 = time.perf_counter() - t, os.times()
        cpu = sum(c2[:4]) - sum(c[:4])  # user + system, this process and its (joined) workers
        t = time.perf_counter()
        sens.run_sensitivity(spec, workers=workers, cache_dir=cache)
        warm = time.perf_counter() - t
        rows.append({"workers": workers, "layers": len(section["layers"]), "levels": len(section["levels"]),
                     "seconds": round(cold, 1), "cpu_seconds": round(cpu, 1), "cached_seconds": round(warm, 2),
                     "load_average": os.getloadavg()[0]})
        print(rows[-1], flush=True)
        if heatmap and workers == 1:
            sens.plot_heatmap(section, heatmap, "paraphrase-MiniLM-L3-v2: unstructured magnitude, each layer alone "
                              "(embedding cosine)", pyplot())
    return rows


def _parity(path: str, candidate, ev: Dataset) -> dict:
    """Metrics of the first float output (MiniLM: its pooled sentence embedding, output "461")."""
    outs = compare(Model.load(path), candidate, ev).outputs
    m = next((o for o in outs if o.name == "461"), None) or next(o for o in outs if "cosine_mean" in o.metrics)
    m = m.metrics
    return {k: round(float(m[k]), 4) for k in ("cosine_mean", "top1_agreement") if k in m}


def allocation(key: str, tmp: str, reps: int, cache: str | None = None, repairs=("none", "lstsq")) -> list[dict]:
    path, cal, ev = data_for(key, tmp)
    feed = next(iter(ev.batches(1)))
    cache = cache or os.path.join(tmp, "cache")
    os.environ[sens.CACHE_ENV] = cache
    rows = []
    channel = key != "minilm_l3"
    repairs = repairs if channel else ("none",)
    for repair in repairs:
        base = (PruneOptions(pattern="channel", sparsity=0.5, round_to=16, repair=repair) if channel
                else PruneOptions(sparsity=0.5))
        t = time.perf_counter()
        m_uni = Model.load(path)
        _, rep_uni = prune_model(m_uni, base, cal, progress=False)
        t_uni = time.perf_counter() - t
        budget = (f"macs={rep_uni['structured']['macs_ratio']:.4f}" if channel else "sparsity=0.5")
        sens_opts = dataclasses.replace(base, allocation="sensitivity", budget=budget)
        t = time.perf_counter()
        m_sen = Model.load(path)
        _, rep_sen = prune_model(m_sen, sens_opts, cal, progress=False)
        t_sen = time.perf_counter() - t
        for name, model, rep, secs in (("uniform", m_uni, rep_uni, t_uni), ("sensitivity", m_sen, rep_sen, t_sen)):
            row = {"model": key, "repair": repair, "allocation": name, "budget": budget if name != "uniform" else "-",
                   **_parity(path, model, ev), "seconds": round(secs, 1)}
            if channel:
                s = rep["structured"]
                orig, pruned = latency(path, model.proto, feed, 1, reps)
                row.update(params=round(s["params_ratio"], 3), macs=round(s["macs_ratio"], 3),
                           latency=round(pruned / orig, 3))
            else:
                row.update(sparsity=round(rep["totals"]["sparsity_of_selected"], 4))
            if name == "sensitivity":
                row["levels"] = {k: round(v, 3) for k, v in rep["allocation"]["levels"].items()}
                row["sensitivity_seconds"] = rep["allocation"]["sensitivity_seconds"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="*", default=["timing", "allocation"])
    ap.add_argument("--models", nargs="*", default=["ddddocr_common", "magika", "minilm_l3"])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--repairs", nargs="*", default=["none", "lstsq"], help="channel models: with these repairs")
    ap.add_argument("--heatmap", help="write the MiniLM-L3 heatmap here (PNG)")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--cache", help="sensitivity cache folder (default: a fresh temporary one)")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    out: dict = {}
    if "timing" in args.parts:
        out["timing"] = timing(tmp, args.heatmap)
    if "allocation" in args.parts:
        out["allocation"] = [r for key in args.models for r in allocation(key, tmp, args.reps, args.cache, args.repairs)]
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
