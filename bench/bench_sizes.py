"""Packed sizes per target and per format at 50/75/90/95% sparsity, against the information bound and gzip.

For ddddocr's common.onnx and magika (tests/realmodels.py), for every target in targets/: a fresh copy is
pruned (magnitude) in the target's pattern at each level, only in the layers the target can use
(static eligibility: op, dtype, shape), then packed and emitted (`pack_model`; targets whose default emit
is dense-with-zeros are emitted portable, so the file size shows the packing). Printed per row:

  sparsity  achieved sparsity of the packed weights
  packed    bytes of the packed arrays (the target's format), over the weights that are packed
  bound     information bound of those weights: values + mask entropy (N:M: log2 C(M,N) a group;
            RxC blocks: entropy of the block mask + whole kept blocks; unstructured: H(d) a weight)
  x bound   packed / bound; "miss" where it is above 1.05, with the reason
  gz w      zlib -9 of the same weights dense-with-zeros, and its ratio to the bound
  file      model.onnx as emitted (portable: packed inside the ONNX), and zlib -9 of the dense-with-zeros
            model file; file/gz < 1 means the emitted file beats gzip of the dense model

A second table packs the same unstructured-pruned weights (all prunable weights of MatMul/Gemm/Conv)
in every format, so formats can be compared on equal weights.

    python bench/bench_sizes.py [--models ddddocr,magika] [--levels 0.5,0.75,0.9,0.95] [--targets a,b]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from onnxprune.core.model import Model  # noqa: E402
from onnxprune.core.report import table  # noqa: E402
from onnxprune.jobs.prune_job import PruneOptions, prune_model  # noqa: E402
from onnxprune.pack import formats as F  # noqa: E402
from onnxprune.pack.eligibility import static_check  # noqa: E402
from onnxprune.pack.passes import pack_model  # noqa: E402
from onnxprune.pack.sizes import information_bound_bits  # noqa: E402
from onnxprune.pack.targets import all_targets  # noqa: E402

MODELS = {"ddddocr": ("ddddocr_common", {"input1": (1, 1, 64, 192)}), "magika": ("magika", None)}


def _why(fmt: str, params: dict, itemsize: int, sparsity: float) -> str:
    """Why a format misses 1.05x the bound at this point (the dominant overhead)."""
    if fmt == "coo":
        return "64-bit index per non-zero"
    if fmt == "bitmask":
        return f"1 mask bit a weight vs H({1 - sparsity:.2f}) bound"
    if fmt == "bsr" and (params["r"], params["c"]) == (1, 1):
        return "32-bit column index per non-zero (CSR)"
    if fmt == "bsr":
        r, c = params["r"], params["c"]
        return (f"int32 index per {r}x{c} block: +{32 / (r * c * 8 * itemsize):.1%} over the values "
                "(the bound pays H(d) bits a block)")
    if fmt == "nm":
        extra = " and the N value slots of each group (padding zeros)" if sparsity > 0.5 + 1e-3 else ""
        return f"2-bit metadata: 1 bit a weight vs log2(6)/4 = 0.646{extra}"
    return ""


def _gz(data: bytes) -> int:
    return len(zlib.compress(data, 9))


def bench_target(key, shapes, target, level):
    path = __import__("realmodels").model_path(key)
    model = Model.load(path)
    static = static_check(target, model)
    skip = [k for k, reasons in static.items() if reasons]
    fixed = target.pattern.fixed_sparsity
    opts = PruneOptions(pattern=str(target.pattern), sparsity=None if fixed is not None else level, skip=skip,
                        min_params=target.eligibility.min_params)
    ctx, _ = prune_model(model, opts, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        mode = target.default_emit  # dense-with-zeros emits measure nothing: show the portable file instead
        if mode == "dense" and "portable" in target.emit_modes:
            mode = "portable"
        _, rep = pack_model(model, target, Path(tmp) / "out", emit=mode, ctx=ctx, input_shapes=shapes)
    s = rep["sizes"]
    info = rep["packed"]
    if not info:
        return None, rep
    by_key = ctx.analysis.by_key()
    dense_w = b"".join(np.ascontiguousarray(by_key[k].matrix(model.read(k))).tobytes() for k in info)
    nnz = sum(v["nnz"] for v in info.values())
    total = sum(int(np.prod(v["matrix"])) for v in info.values())
    sparsity = 1 - nnz / total
    itemsize = np.dtype(next(iter(info.values()))["dtype"]).itemsize
    gz_w = _gz(dense_w)
    row = {
        "sparsity": sparsity, "weights": len(info), "packed": s["packed_bytes"], "bound": s["bound_bytes"],
        "x_bound": s["ratio_to_bound"], "gz_w": gz_w, "gz_x_bound": gz_w / s["bound_bytes"],
        "file": s["model_bytes"], "gz_file": s["gzip_dense_model_bytes"], "mode": mode,
        "sparse_share": rep["eligibility"]["totals"]["share_params_sparse"],
        "why": "" if s["ratio_to_bound"] <= 1.05 else _why(target.format, target.format_params, itemsize, sparsity),
    }
    return row, rep


FORMATS = [("bitmask", {}), ("coo", {}), ("bsr", {"r": 1, "c": 1}), ("bsr", {"r": 1, "c": 4}), ("bsr", {"r": 4, "c": 4})]


def bench_formats(key, level):
    """Every format on the same unstructured-pruned MatMul/Gemm/Conv weights."""
    model = Model.load(__import__("realmodels").model_path(key))
    ctx, _ = prune_model(model, PruneOptions(pattern="unstructured", sparsity=level), progress=False)
    mats = [np.ascontiguousarray(w.matrix(model.read(w.key))) for w in ctx.analysis.weights
            if w.op in ("MatMul", "Gemm", "Conv") and w.key in ctx.masks and ctx.masks.sparsity(w.key) > 0]
    bound = sum(information_bound_bits(m) / 8 for m in mats)
    out = {"dense": sum(m.nbytes for m in mats), "zlib9": sum(_gz(m.tobytes()) for m in mats)}
    for fmt, params in FORMATS:
        label = fmt + ("" if not params else f" {params['r']}x{params['c']}")
        out[label] = sum(F.encode(fmt, m, **params).nbytes for m in mats)
    return out, bound


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="ddddocr,magika")
    ap.add_argument("--levels", default="0.5,0.75,0.9,0.95")
    ap.add_argument("--targets", default="")
    ap.add_argument("--no-formats", action="store_true", help="Skip the all-formats table.")
    args = ap.parse_args(argv)
    levels = [float(x) for x in args.levels.split(",")]
    targets = [t for t in all_targets() if not args.targets or t.name in args.targets.split(",")]
    misses = []
    for name in args.models.split(","):
        key, shapes = MODELS[name]
        rows = []
        start = time.perf_counter()
        for target in targets:
            fixed = target.pattern.fixed_sparsity
            for level in ([fixed] if fixed is not None else levels):
                row, rep = bench_target(key, shapes, target, level)
                label = f"{target.name} {target.pattern}"
                if row is None:
                    reasons = ", ".join(f"{k} {v}" for k, v in rep["eligibility"]["totals"]["reasons"].items())
                    rows.append((label, f"{level:.0%}", "-", 0, "-", "-", "-", "-", "-", "-", "-",
                                 f"nothing eligible ({reasons})"))
                    continue
                if row["why"]:
                    misses.append(f"{name} {label} at {row['sparsity']:.0%}: {row['x_bound']:.3f}x ({row['why']})")
                rows.append((label, f"{level:.0%}", f"{row['sparsity']:.1%}", row["weights"],
                             f"{row['packed'] / 1e3:.1f}k", f"{row['bound'] / 1e3:.1f}k", f"{row['x_bound']:.3f}",
                             f"{row['gz_w'] / 1e3:.1f}k", f"{row['gz_x_bound']:.3f}",
                             f"{row['file'] / 1e6:.2f}M {row['mode'][:4]}", f"{row['file'] / row['gz_file']:.3f}",
                             (f"miss: {row['why']}" if row["why"] else "") + f" sparse {row['sparse_share']:.0%} of weights"))
        print(f"\n== {name} ({key}): packed weights of each target, pruned in its pattern "
              f"({time.perf_counter() - start:.0f}s)")
        print(table(["target", "level", "sparsity", "w", "packed", "bound", "x bound", "gz w", "gz/bound",
                     "file", "file/gz", "note"], rows))
        if not args.no_formats:
            frows = []
            for level in levels:
                sizes, bound = bench_formats(key, level)
                frows.append([f"{level:.0%}", f"{bound / 1e3:.1f}k"] +
                             [f"{v / 1e3:.1f}k ({v / bound:.2f}x)" for v in sizes.values()])
            print(f"\n== {name}: every format on the same unstructured-pruned MatMul/Gemm/Conv weights "
                  "(bytes, x the unstructured bound)")
            print(table(["level", "bound", *sizes.keys()], frows))
    if misses:
        print("\nwhere a target's format cannot reach 1.05x the bound, and why:")
        for m in misses:
            print("  " + m)


if __name__ == "__main__":
    main()
