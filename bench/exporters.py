"""Every command on models from different exporters: the table of issue 12.

Runs tests/exporters.py's cases (the same commands and options as tests/test_exporters.py) and
prints, per model: the exporter and the producer fields the file carries, and per command its exit
code; for the prunes the stored parameters before -> after (and the sparsity of the prunable
weights reached); for the checks the lowest mean cosine over the float outputs (synthetic inputs,
4 samples: a smoke figure, not accuracy). A refusal (exit 2) prints its one line below the table.

    python bench/exporters.py [KEY ...] [--markdown]      (keys: tests/exporters.py CASES)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import exporters as E  # noqa: E402

from onnxprune.core.report import table  # noqa: E402


def _prune_cell(run: E.CaseRun, name: str, before: int) -> str:
    r = run.results[name]
    out = run.folder / E.OUTPUTS[name]
    if r.exit_code not in (0, 1) or not out.is_file():
        return f"exit {r.exit_code}"
    cell = f"{r.exit_code}: {before:,} -> {E.params(out):,}"
    totals = (r.report or {}).get("totals")
    if totals and totals.get("prunable_params"):
        cell += f" ({totals['sparsity_of_prunable']:.0%} of {totals['prunable_params']:,})"
    structured = (r.report or {}).get("structured")
    if structured:
        cell += f" (ch {structured['channels_before']}->{structured['channels_after']})"
    return cell


def _check_cell(r: E.Result) -> str:
    cos = E.cosine(r.report)
    return f"{r.exit_code}" + (f": cos {cos:.3f}" if cos is not None and r.exit_code in (0, 1) else "")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("keys", nargs="*", default=list(E.CASES))
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = ap.parse_args(argv)
    rows, refusals, seconds = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.keys:
            case = E.CASES[key]
            start = time.perf_counter()
            run = E.run_case(case, Path(tmp) / key)
            seconds[key] = time.perf_counter() - start
            proto = onnx.load(str(run.model), load_external_data=False)
            producer = f"{proto.producer_name or '(empty)'} {proto.producer_version}".strip()
            before = E.params(run.model)
            res = run.results
            rows.append([
                key, case.exporter, producer, res["inspect"].exit_code,
                _prune_cell(run, "prune_u50", before), _prune_cell(run, "prune_2of4", before),
                _prune_cell(run, "prune_channel", before),
                _check_cell(res["check_u50"]), _check_cell(res["check_channel"]),
                f"{res['pack_npu'].exit_code}/{res['pack_npu_portable'].exit_code}", res["pack_2to4"].exit_code,
                res["sweep"].exit_code, res["run"].exit_code,
            ])
            for name, r in res.items():
                if r.exception is not None:
                    refusals.append(f"{key} {name}: EXCEPTION {type(r.exception).__name__}: {r.exception}")
                elif r.exit_code == 2:
                    refusals.append(f"{key} {name}: {(r.stderr.strip().splitlines() or [''])[-1]}")
    header = ["model", "exporter", "producer", "inspect", "prune 50% (params)", "prune 2:4 (params)",
              "prune channel 25% (params)", "check 50%", "check channel", "pack npu dense/portable", "pack 2:4",
              "sweep", "run"]
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(str(c) for c in row) + " |")
    else:
        print(table(header, rows, right_align=False))
    print("\nexit codes: 0 ok, 1 parity failed (the verdict), 2 refused with one line; check: lowest mean cosine "
          "over float outputs, 4 synthetic samples")
    for line in refusals:
        print(line)
    print("seconds per model: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
