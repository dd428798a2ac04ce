"""Helper of bench/bench_peer.py: one onnxsim pruning job, run in onnxsim's own environment.

    /path/to/onnxsim-venv/bin/python bench/_peer_onnxsim.py MODEL JOB CALIB.npz OUT.onnx RESULT.json

Imports nothing from onnxprune (it runs where onnxprune is not installed). Loads MODEL, reads the
calibration feeds (CALIB.npz: keys "<index>|<input name>", one feed dict per index, the same
samples onnxprune is given), times only the onnxsim call, saves the pruned model to OUT.onnx and
writes {"seconds", "error", "own_sparsity", "warnings"} to RESULT.json.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
import warnings

import numpy as np
import onnx


def feeds(path: str) -> list[dict]:
    with np.load(path) as z:
        out: dict[int, dict] = {}
        for key in z.files:
            i, name = key.split("|", 1)
            out.setdefault(int(i), {})[name] = z[key]
    return [out[i] for i in sorted(out)]


def main(model_path: str, job: str, calib: str, out_path: str, result_path: str) -> None:
    import onnxsim

    model = onnx.load(model_path)
    data = feeds(calib)
    calls = {
        "magnitude 50%": lambda m: onnxsim.apply_magnitude_pruning(m, sparsity=0.5),
        "magnitude 2:4": lambda m: onnxsim.apply_magnitude_pruning(m, n=2, m=4),
        "wanda 50%": lambda m: onnxsim.apply_wanda_pruning(m, calibration_data=data, sparsity=0.5),
        "sparsegpt 50%": lambda m: onnxsim.apply_sparsegpt_pruning(m, calibration_data=data, sparsity=0.5),
        "sparsegpt 2:4": lambda m: onnxsim.apply_sparsegpt_pruning(m, calibration_data=data, n=2, m=4),
        "channel 25%": lambda m: onnxsim.apply_structured_pruning(m, sparsity=0.25),
    }
    result = {"seconds": None, "error": None, "own_sparsity": None, "warnings": []}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            t0 = time.perf_counter()
            pruned = calls[job](model)
            result["seconds"] = time.perf_counter() - t0
            onnx.save_model(pruned, out_path)
            result["own_sparsity"] = onnxsim.weight_sparsity(pruned)
        except Exception as e:  # noqa: BLE001 -- what the tool refused is reported, not raised
            first = (str(e).strip().splitlines() or [""])[0]
            result["error"] = f"{type(e).__name__}: {first}"
            result["traceback_tail"] = traceback.format_exc().strip().splitlines()[-3:]
    result["warnings"] = sorted({(str(w.message).strip().splitlines() or [""])[0][:200] for w in caught})
    with open(result_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:6])
