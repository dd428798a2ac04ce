"""A golden table for behaviour-preserving refactors: a matrix of CLI jobs and the sha256 of what each writes.

Each case runs `onnxprune ARGS` (click's runner) in a fresh folder holding copies of its inputs, named
relatively (paths end up in recipes and reports, so a row must not depend on where the checkout lies);
its row is the exit code and the sha256 of every file it wrote (models, artifacts, masks) and of each
JSON report with run times, absolute paths and timing notes taken out. `python tests/golden.py` prints the table; `--record` writes tests/golden.json,
which tests/test_golden.py compares against. Re-record only for a change that is meant to change output,
and say which rows changed and why in the commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"
GOLDEN = Path(__file__).resolve().parent / "golden.json"

MLP, CNN = "digits_mlp.onnx", "digits_cnn.onnx"  # copied from samples/ into each case's folder
CAL, EVAL = "digits_calib.npz", "digits_eval.npz"
CCAL, CEVAL = "digits_cnn_calib.npz", "digits_cnn_eval.npz"
HOOK = "finetune_hook.py:finetune"
MAGIKA = "magika.onnx"
TARGET_EMITS = {"nvidia-2to4": ["dense", "portable"], "npu-bitmask": ["dense", "portable"],
                "bsr-generic": ["dense", "portable"], "xnnpack-bsr": ["dense"], "onnx-sparse": ["sparse-initializer"]}


def _magika() -> str | None:
    import importlib.util

    spec = importlib.util.find_spec("magika")
    if spec is None:
        return None
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("models/standard_v3_3/model.onnx"))
    return str(found[0]) if found else None


def cases() -> dict[str, list[str]]:
    """Case id -> CLI arguments (outputs go to the current folder)."""
    p = ["prune", MLP, "-o", "m.onnx", "--report", "r.json", "--quiet"]
    c = ["prune", CNN, "-o", "m.onnx", "--report", "r.json", "--quiet"]
    out = {
        "mlp-unstructured-80": p + ["--sparsity", "0.8", "--masks-out", "masks.npz"],
        "mlp-global-80": p + ["--sparsity", "0.8", "--scope", "global"],
        "mlp-2:4": p + ["--pattern", "2:4"],
        "mlp-4x4": p + ["--pattern", "4x4", "--sparsity", "0.5"],
        "mlp-override-skip": p + ["--sparsity", "0.7", "--override", "fc1*=0.3", "--skip", "fc3*"],
        "mlp-gradual-hook": p + ["--sparsity", "0.8", "--steps", "3", "--hook", HOOK, "--data", CAL],
        "mlp-wanda": p + ["--criterion", "wanda", "--data", CAL],
        "mlp-sparsegpt-2:4": p + ["--criterion", "sparsegpt", "--pattern", "2:4", "--data", CAL],
        "mlp-wanda-lstsq-check": p + ["--criterion", "wanda", "--repair", "lstsq", "--data", CAL, "--check",
                                      "--eval-data", EVAL],
        "mlp-bias-sequential": p + ["--criterion", "wanda", "--repair", "bias", "--sequential", "--data", CAL],
        "mlp-channel": p + ["--pattern", "channel", "--sparsity", "0.25"],
        "mlp-channel-lstsq": p + ["--pattern", "channel", "--sparsity", "0.5", "--repair", "lstsq", "--data", CAL],
        "cnn-unstructured-check": c + ["--sparsity", "0.6", "--check", "--eval-data", CEVAL, "--data", CCAL],
        "cnn-channel-lstsq": c + ["--pattern", "channel", "--sparsity", "0.25", "--round-to", "4", "--repair",
                                  "lstsq", "--data", CCAL],
        "cnn-channel-reinit": c + ["--pattern", "channel", "--sparsity", "0.5", "--round-to", "4", "--reinit"],
        "cnn-fold-constants": c + ["--sparsity", "0.5", "--fold-constants"],
        "check-mlp": ["check", MLP, MLP, "--data", EVAL, "--report", "r.json", "--quiet"],
        "sweep-mlp": ["sweep", MLP, "--sparsities", "0.3,0.6", "--data", EVAL, "--report", "r.json"],
        "inspect-cnn": ["inspect", CNN, "--json"],
    }
    for target, emits in TARGET_EMITS.items():
        for emit in emits:
            out[f"cnn-target-{target}-{emit}"] = c + ["--target", target, "--emit", emit, "--target-out", "art"]
    for recipe in ("unstructured-gate", "gradual-hook", "npu-bitmask-50", "nvidia-2to4", "cpu-channels"):
        data = CCAL if recipe in ("nvidia-2to4", "cpu-channels") else None
        args = ["run", recipe, CNN, "-o", "m.onnx", "--set", 'output.report="r.json"', "--set",
                f'data.evaluation="{CEVAL}"']
        if data:
            args += ["--set", f'data.calibration="{data}"']
        out[f"run-{recipe}"] = args
    if _magika():
        m = ["prune", MAGIKA, "-o", "m.onnx", "--report", "r.json", "--quiet"]
        out["magika-2:4"] = m + ["--pattern", "2:4"]
        out["magika-channel"] = m + ["--pattern", "channel", "--sparsity", "0.25", "--round-to", "16"]
        out["magika-target-npu"] = m + ["--target", "npu-bitmask", "--emit", "portable", "--target-out", "art"]
    return out


_SECONDS = re.compile(r"\d+(\.\d+)? ?s\b")
_VOLATILE = {"seconds", "peak_bytes", "wall_s"}


def _normal(value, cwd: str):
    if isinstance(value, dict):
        return {k: _normal(v, cwd) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [_normal(v, cwd) for v in value]
    if isinstance(value, str):
        value = value.replace(cwd, "<cwd>").replace(str(REPO), "<repo>")
        return _SECONDS.sub("<t>", value)
    return value


def _digest(path: Path, cwd: str) -> str:
    data = path.read_bytes()
    if path.suffix == ".json":
        data = json.dumps(_normal(json.loads(data), cwd), sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def _inputs() -> dict[str, Path]:
    """Input file name -> where it lies."""
    found = {p.name: p for p in SAMPLES.iterdir() if p.suffix in (".onnx", ".npz", ".py")}
    if _magika():
        found[MAGIKA] = Path(_magika())
    return found


def run_case(args: list[str], folder: Path) -> dict:
    from click.testing import CliRunner

    from onnxprune.cli import main

    inputs = _inputs()
    for name in {a.split(":")[0] for a in args} & set(inputs):
        shutil.copyfile(inputs[name], folder / name)
    copied = {p.name for p in folder.iterdir()}
    old = os.getcwd()
    os.chdir(folder)
    try:
        result = CliRunner().invoke(main, args)
    finally:
        os.chdir(old)
    files = {str(p.relative_to(folder)): _digest(p, str(folder.resolve()))
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in copied}
    row = {"exit": result.exit_code, "files": files}
    if args[0] == "inspect":
        row["stdout"] = hashlib.sha256(json.dumps(_normal(json.loads(result.output), str(folder.resolve())),
                                                  sort_keys=True).encode()).hexdigest()[:16]
    return row


def table() -> dict[str, dict]:
    import tempfile

    rows = {}
    for name, args in cases().items():
        with tempfile.TemporaryDirectory() as tmp:
            rows[name] = run_case(args, Path(tmp))
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    rows = table()
    for name, row in rows.items():
        print(f"{name:40s} exit {row['exit']}  " + " ".join(f"{k}={v}" for k, v in row["files"].items()))
    if "--record" in sys.argv:
        GOLDEN.write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")
        print(f"recorded {len(rows)} rows in {GOLDEN}")
