"""`onnxprune auto` on real models: the level it chooses, parity, MACs, latency vs dense, time taken.

Writes each model's calibration / evaluation data as .npz (tests/realmodels.py: ddddocr captchas rendered
with different seeds, Magika features of real files of this machine split at random, MiniLM sentences),
runs the CLI as a user would, and prints one row per job from its JSON report.

    python bench/bench_auto.py [--jobs ddddocr magika minilm ddddocr-sensitivity magika-sensitivity] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import realmodels  # noqa: E402

JOBS = {  # name -> (model key, auto flags)
    "ddddocr": ("ddddocr_common", ["--pattern", "channel", "--budget", "macs=0.5", "--min-top1-agreement", "0.99"]),
    "magika": ("magika", ["--pattern", "channel", "--budget", "macs=0.5", "--min-top1-agreement", "0.99"]),
    "minilm": ("minilm_l3", ["--budget", "sparsity=0.7", "--min-cosine", "0.95"]),
    # the same with the channel groups' levels allocated from curves measured with the repair
    "ddddocr-sensitivity": ("ddddocr_common", ["--pattern", "channel", "--allocation", "sensitivity", "--budget",
                                               "macs=0.5", "--min-top1-agreement", "0.99"]),
    # int8 after pruning; auto keeps float the nodes whose int8 alone fails the gate (mixed precision)
    "magika-int8": ("magika", ["--pattern", "channel", "--budget", "macs=0.5", "--min-top1-agreement", "0.99",
                               "--quantize", "int8"]),
    "ddddocr-int8": ("ddddocr_common", ["--pattern", "channel", "--allocation", "sensitivity", "--budget", "macs=0.5",
                                        "--min-top1-agreement", "0.99", "--quantize", "int8"]),
    "magika-sensitivity": ("magika", ["--pattern", "channel", "--allocation", "sensitivity", "--budget", "macs=0.5",
                                      "--min-top1-agreement", "0.99"]),
}


def write_data(key: str, folder: Path) -> list[str]:
    """The data flags for `key`, after writing its .npz files into `folder`."""
    cal, ev = folder / f"{key}_calib.npz", folder / f"{key}_eval.npz"
    if key == "ddddocr_common":
        np.savez(cal, **realmodels.ddddocr_data(32, seed=1))
        np.savez(ev, **realmodels.ddddocr_data(64, seed=2))
    elif key == "magika":
        d = realmodels.magika_data(768)["bytes"]  # files sorted by path: split at random
        perm = np.random.default_rng(0).permutation(len(d))
        np.savez(cal, bytes=d[np.sort(perm[:256])])
        np.savez(ev, bytes=d[np.sort(perm[256:])])
    else:
        data = realmodels.minilm_data(key, 24)
        data.pop("labels")
        np.savez(cal, **data)
        return ["--data", str(cal)]  # 24 sentences: auto's seeded split gives 12 / 12
    return ["--data", str(cal), "--eval-data", str(ev)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", nargs="*", default=list(JOBS))
    ap.add_argument("--out", help="folder for data, models and reports (default: a temporary one)")
    ap.add_argument("--max-candidates", type=int, default=8)
    ap.add_argument("--extra", default="", help="more auto flags for every job, e.g. '--calib-samples 16'")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-auto-"))
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.jobs:
        key, flags = JOBS[name]
        data = write_data(key, out)
        cmd = [sys.executable, "-m", "onnxprune", "auto", str(realmodels.model_path(key)), "-o", str(out / f"{name}.onnx"),
               *data, *flags, "--max-candidates", str(args.max_candidates), *args.extra.split(), "--report", str(out / f"{name}.json")]
        print(" ".join(cmd), flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=ROOT).returncode
        seconds = time.perf_counter() - t0
        report = json.loads((out / f"{name}.json").read_text())
        c = report["chosen"] or min(report["trace"], key=lambda p: p["level"])
        parity = "; ".join(", ".join(f"{k} {v:.4f}" for k, v in m.items() if k in ("top1_agreement", "cosine_mean"))
                           for m in c["parity"].values())
        rows.append((name, " ".join(flags + args.extra.split()), rc, report["search"]["cap_level"], c["level"], parity, c["macs"],
                     c["latency"], c["latency_ms"], c["dense_latency_ms"], c["size"], len(report["trace"]), seconds))
    print("\n| model | flags | exit | cap level | chosen level | parity | MACs | latency | ms (dense ms) | size | "
          "candidates | time s |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | `{r[1]}` | {r[2]} | {r[3]:.4f} | {r[4]:.4f} | {r[5]} | {r[6]:.3f} | {r[7]:.3f} | "
              f"{r[8]:.2f} ({r[9]:.2f}) | {r[10]:.3f} | {r[11]} | {r[12]:.0f} |")


if __name__ == "__main__":
    main()
