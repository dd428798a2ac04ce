"""ddddocr common, channel pruning at uniform 50%'s MACs with `--repair lstsq`: uniform vs the group levels a
sensitivity allocation chose from curves measured WITHOUT repair (bench_sensitivity.py measures the curves
with repair too, which takes about as long again). Levels: a JSON dict group -> ratio (from bench_sensitivity's
output row `levels`).

    python bench/bench_sensitivity_repair.py LEVELS.json [--reps 20]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_sensitivity import _parity, data_for  # noqa: E402
from bench_structured import latency  # noqa: E402

from onnxprune.core.masks import MaskSet  # noqa: E402
from onnxprune.core.model import Model  # noqa: E402
from onnxprune.jobs.prune_job import PruneOptions, build_pipeline  # noqa: E402
from onnxprune.pipeline import Context  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("levels")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    levels = json.loads(Path(args.levels).read_text())
    path, cal, ev = data_for("ddddocr_common", tempfile.mkdtemp())
    feed = next(iter(ev.batches(1)))
    opts = PruneOptions(pattern="channel", sparsity=0.5, round_to=16, repair="lstsq")
    for name, o, groups in (("uniform", opts, None), ("sensitivity (curves without repair)",
                                                       dataclasses.replace(opts, sparsity=0.0), levels)):
        model = Model.load(path)
        ctx = Context(model, MaskSet(), cal, progress=False)
        build_pipeline(o, groups).run(ctx)
        s = ctx.channel_report
        orig, pruned = latency(path, model.proto, feed, 1, args.reps)
        print(json.dumps({"model": "ddddocr_common", "repair": "lstsq", "allocation": name, **_parity(path, model, ev),
                          "params": round(s["params_ratio"], 3), "macs": round(s["macs_ratio"], 3),
                          "latency": round(pruned / orig, 3)}), flush=True)


if __name__ == "__main__":
    main()
