"""Allocation (uniform vs OWL), granularity (row vs layer) and criterion x repair on real models.

Every configuration prunes a fresh copy (calibration data disjoint from evaluation data) and both
models run in onnxruntime on the evaluation set. Printed per row: the model's parity metric
(MiniLM-L3: mean cosine of the sentence embeddings; magika: top-1 agreement; ddddocr: exact-text
agreement and top-1 agreement of the per-step logits) and the achieved sparsity (of all prunable weights).

    python bench/bench_allocation.py granularity     # magnitude, no data: row vs layer at 50% / 70%
    python bench/bench_allocation.py criteria        # MiniLM-L3: wanda/sparsegpt x none/lstsq, 50% and 2:4
    python bench/bench_allocation.py owl             # uniform vs owl x pattern x model
    [--models minilm,magika,ddddocr] [--calib N] [--eval N]
"""

from __future__ import annotations

import argparse
import itertools
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

# MiniLM: more sentences than tests/realmodels.py ships (its 24 are kept first), built from templates
_WHO = ("The old farmer", "A young student", "My neighbour", "The pilot", "Our teacher", "A tired nurse",
        "The chef", "His sister")
_DID = ("repaired the broken fence", "read a long novel", "visited the city museum", "baked fresh bread",
        "wrote a letter to the mayor", "missed the last bus", "painted the kitchen blue", "fed the hungry ducks")
_WHEN = ("yesterday evening.", "before sunrise.", "during the storm.", "after lunch on Sunday.")


def minilm_sentences(n: int) -> list[str]:
    import realmodels as rm

    texts = [t for pair in rm.MINILM_PAIRS for t in pair]
    texts += [f"{a} {b} {c}" for a, b, c in itertools.product(_WHO, _DID, _WHEN)]
    rng = np.random.default_rng(0)
    extra = texts[24:]
    rng.shuffle(extra)
    return (texts[:24] + extra)[:n]


def minilm_arrays(n: int) -> dict:
    import realmodels as rm

    enc = rm._minilm_tokenizer(64).encode_batch(minilm_sentences(n))
    names = {i.name for i in rm.session("minilm_l3").get_inputs()}
    data = {"input_ids": np.array([e.ids for e in enc], np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], np.int64)}
    return {k: v for k, v in data.items() if k in names}


def setups(names):
    import realmodels as rm

    out = {}
    if "minilm" in names:
        out["minilm"] = dict(path=rm.model_path("minilm_l3"), data=lambda n, s: minilm_arrays(n), batch=16,
                             output="461", kind="cosine")
    if "magika" in names:
        out["magika"] = dict(path=rm.model_path("magika"), data=lambda n, s: rm.magika_data(n, s), batch=64,
                             output=None, kind="top1")
    if "ddddocr" in names:
        out["ddddocr"] = dict(path=rm.model_path("ddddocr_common"), data=lambda n, s: rm.ddddocr_data(n, s),
                              batch=1, output=None, kind="ocr")
    return out


def session(src, threads=1):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    src = src.SerializeToString() if isinstance(src, onnx.ModelProto) else str(src)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def outputs(sess, ds, batch, name):
    names = [o.name for o in sess.get_outputs()]
    index = names.index(name) if name else 0
    return [sess.run(None, feed)[index] for feed in ds.batches(batch)]


def metric(ref, cand, kind) -> str:
    r, c = np.concatenate([x.reshape(-1, x.shape[-1]) for x in ref]), np.concatenate([x.reshape(-1, x.shape[-1]) for x in cand])
    if kind == "cosine":
        cos = np.sum(r * c, 1) / np.maximum(np.linalg.norm(r, axis=1) * np.linalg.norm(c, axis=1), 1e-30)
        return f"cosine {cos.mean():.4f}"
    top1 = float(np.mean(r.argmax(-1) == c.argmax(-1)))
    if kind == "ocr":
        import realmodels as rm

        text = np.mean([rm.ddddocr_decode(a) == rm.ddddocr_decode(b) for a, b in zip(ref, cand)])
        return f"text {text:.3f} top1 {top1:.4f}"
    return f"top1 {top1:.4f}"


def configs(which: str, model: str):
    if which == "granularity":
        for s, g in itertools.product((0.5, 0.7), ("layer", "row")):
            yield dict(sparsity=s, granularity=g)
    elif which == "criteria":
        for pattern, crit, rep in itertools.product(("unstructured", "2:4"), ("sparsegpt", "wanda"), ("lstsq", "none")):
            yield dict(pattern=pattern, criterion=crit, repair=rep)
        yield dict(pattern="unstructured", criterion="wanda", granularity="layer")
        yield dict(pattern="unstructured", criterion="sparsegpt", granularity="row")
    elif which == "owl":
        crits = ("magnitude", "wanda")
        for (pattern, s), crit, alloc in itertools.product((("unstructured", 0.5), ("unstructured", 0.7), ("2:4", None)),
                                                          crits, ("uniform", "owl")):
            yield dict(pattern=pattern, sparsity=s, criterion=crit, allocation=alloc)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", choices=("granularity", "criteria", "owl"))
    ap.add_argument("--models", default="minilm,magika,ddddocr")
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--eval", type=int, default=64)
    ap.add_argument("--extra", default="", help="extra PruneOptions, e.g. owl_lambda=0.1")
    a = ap.parse_args(argv)
    extra = {k: float(v) for k, v in (kv.split("=") for kv in a.extra.split(",") if kv)}
    for name, s in setups(a.models.split(",")).items():
        n_calib = a.calib if name != "ddddocr" else min(a.calib, 16)
        n_eval = a.eval if name != "ddddocr" else min(a.eval, 32)
        arrays = s["data"](n_calib + n_eval, 0)
        arrays.pop("labels", None)
        with tempfile.TemporaryDirectory() as tmp:
            np.savez(Path(tmp) / "data.npz", **arrays)
            full = Dataset.from_source(Path(tmp) / "data.npz", onnx.load(str(s["path"]), load_external_data=False))
            calib, evald = full.split(n_calib, seed=0)
            ref = outputs(session(s["path"]), evald, s["batch"], s["output"])
            for cfg in configs(a.which, name):
                cfg = {**cfg, **extra}
                model = Model.load(s["path"])
                t0 = time.perf_counter()
                opts = PruneOptions(**cfg)
                _, report = prune_model(model, opts, data=calib if opts.uses_calibration() else None, progress=False)
                secs = time.perf_counter() - t0
                cand = outputs(session(model.proto), evald, s["batch"], s["output"])
                desc = " ".join(f"{k}={v}" for k, v in cfg.items() if v is not None)
                print(f"{name:8} {desc:70} {metric(ref, cand, s['kind']):28} "
                      f"sparsity {report['totals']['sparsity_of_prunable']:.3f} {secs:6.1f}s", flush=True)


if __name__ == "__main__":
    main()
