"""Channel pruning of paraphrase-MiniLM-L3-v2 to about 0.75x MACs: whole heads vs head dims vs MLP only.

Each configuration prunes a fresh copy with 64 calibration sentences and least-squares repair, and is
measured on 64 other sentences: mean cosine of the sentence embeddings, MACs ratio (from the prune
report) and latency ratio (onnxruntime, 1 thread, batch 16 x 64 tokens, median of interleaved runs).

    python bench/bench_heads.py [--repeats 15] [--configs NAME[:SPARSITY],...] [--round-to 16]

NAME: heads, head-dims, mlp-only (uniform), sensitivity-heads, sensitivity (--allocation sensitivity
--budget macs=0.75; the curves take a few minutes the first time, then come from the cache).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "tests"))

from bench_allocation import minilm_arrays, outputs, session  # noqa: E402

from onnxprune.check.data import Dataset  # noqa: E402
from onnxprune.core.model import Model  # noqa: E402
from onnxprune.core.runtime import median_latencies  # noqa: E402
from onnxprune.jobs.prune_job import PruneOptions, prune_model  # noqa: E402

CONFIGS = {  # name -> PruneOptions fields (sparsities chosen for ~0.75x MACs)
    "heads": dict(channel_unit="head", sparsity=0.25),
    "head-dims": dict(channel_unit="channel", sparsity=0.25),
    "mlp-only": dict(sparsity=0.375, skip=["*attention*"]),
    # measured curves of every group (heads / head dims / MLP channels), allocated to the MACs budget
    "sensitivity-heads": dict(channel_unit="head", allocation="sensitivity", budget="macs=0.75"),
    "sensitivity": dict(allocation="sensitivity", budget="macs=0.75"),
}


def main(argv=None):
    import realmodels as rm

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--repair", default="lstsq")
    ap.add_argument("--round-to", type=int, default=16)
    a = ap.parse_args(argv)
    path = rm.model_path("minilm_l3")
    arrays = minilm_arrays(128)
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "d.npz", **arrays)
        full = Dataset.from_source(Path(tmp) / "d.npz", onnx.load(str(path)))
        calib, evald = full.split(64, seed=0)
        base = session(path)
        ref = np.concatenate(outputs(base, evald, 16, "461"))
        feed = next(iter(evald.batches(16)))
        for spec in a.configs.split(","):
            name, _, level = spec.partition(":")  # name[:sparsity]
            config = dict(CONFIGS[name], **({"sparsity": float(level)} if level else {}))
            model = Model.load(path)
            t0 = time.perf_counter()
            _, report = prune_model(model, PruneOptions(pattern="channel", round_to=a.round_to, repair=a.repair,
                                                        criterion="magnitude", **config),
                                    data=calib, progress=False)
            secs = time.perf_counter() - t0
            cand = session(model.proto)
            got = np.concatenate(outputs(cand, evald, 16, "461"))
            cos = np.sum(ref * got, 1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
            t_base, t_cand = median_latencies([base, cand], feed, a.repeats)
            st = report["structured"]
            print(f"{spec:10} repair={a.repair:5} round_to={a.round_to} cosine {cos.mean():.4f} MACs {st['macs_ratio']:.3f} "
                  f"params {st['params_ratio']:.3f} latency {t_cand / t_base:.3f} ({t_cand * 1e3:.1f} / "
                  f"{t_base * 1e3:.1f} ms) prune {secs:.0f}s", flush=True)


if __name__ == "__main__":
    main()
