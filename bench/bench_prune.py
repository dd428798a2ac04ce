"""Benchmark (run by hand, not a test): pruning a ~300M-parameter model with external data.

    python bench/bench_prune.py [--layers 7] [--hidden 2048] [--ffn 8192] [--repeat 1] [--workdir DIR] [--keep]

Builds a synthetic transformer-like stack (per layer: MatMul 2048x2048 attention-in and -out
projections, MatMul 2048x8192 up and 8192x2048 down projections, bias Adds, residual Adds, Relu)
of fp32 weights stored as ONNX external data. The data file is written tensor by tensor (one weight
in memory at a time); the .onnx holds only external-data references. Then, each in a fresh
subprocess whose peak RSS and CPU time come from os.wait4:

  (a) plain onnx: onnx.load (with external data) + onnx.save (external data, one file)
  (a') the same plus an fsync of the outputs (onnxprune's atomic writes fsync; a plain save does not)
  (b) onnxprune prune --pattern 2:4 --external-data
  (c) onnxprune prune --sparsity 0.8 --scope global --external-data

(`--repeat R`: the four R times, interleaved; the fastest run of each counts) and prints wall and
CPU times, the ratios (b)/(a) and (c)/(a) (target <= 1.3; against (a') too) and peak RSS / weight
bytes (target <= 1.2). Imports alone are measured too (`import onnx` / the modules `onnxprune prune`
starts with), since they are part of every run's RSS and time; onnxprune's bytecode is compiled
first, as an installed package has it. Needs about 5 x the weight bytes of free disk.
"""

from __future__ import annotations

import argparse
import glob
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def build(path: Path, layers: int, hidden: int, ffn: int, seed: int = 0) -> int:
    """Write `path` + `path.data` sequentially; returns the weight bytes."""
    import numpy as np
    from onnx import TensorProto, helper

    data_name = path.name + ".data"
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    offset = 0
    with open(path.with_name(data_name), "wb") as data:
        def add(name: str, shape: tuple[int, ...], scale: float) -> None:
            nonlocal offset
            arr = rng.standard_normal(shape, dtype=np.float32)
            arr *= scale
            pad = (-offset) % 64
            data.write(b"\0" * pad)
            offset += pad
            raw = arr.tobytes()
            data.write(raw)
            t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(len(raw)))):
                e = t.external_data.add()
                e.key, e.value = k, v
            offset += len(raw)
            inits.append(t)
            del arr, raw

        x = "x"
        for i in range(layers):
            p = f"layer{i}"
            for w, (k, n) in (("attn_in", (hidden, hidden)), ("attn_out", (hidden, hidden)),
                              ("up", (hidden, ffn)), ("down", (ffn, hidden))):
                add(f"{p}.{w}.weight", (k, n), 1 / np.sqrt(k))
                add(f"{p}.{w}.bias", (n,), 0.01)
            nodes += [
                helper.make_node("MatMul", [x, f"{p}.attn_in.weight"], [f"{p}.a0"], name=f"{p}.attn_in"),
                helper.make_node("Add", [f"{p}.a0", f"{p}.attn_in.bias"], [f"{p}.a1"], name=f"{p}.attn_in_b"),
                helper.make_node("Relu", [f"{p}.a1"], [f"{p}.a2"], name=f"{p}.act0"),
                helper.make_node("MatMul", [f"{p}.a2", f"{p}.attn_out.weight"], [f"{p}.a3"], name=f"{p}.attn_out"),
                helper.make_node("Add", [f"{p}.a3", f"{p}.attn_out.bias"], [f"{p}.a4"], name=f"{p}.attn_out_b"),
                helper.make_node("Add", [x, f"{p}.a4"], [f"{p}.r0"], name=f"{p}.res0"),
                helper.make_node("MatMul", [f"{p}.r0", f"{p}.up.weight"], [f"{p}.u0"], name=f"{p}.up"),
                helper.make_node("Add", [f"{p}.u0", f"{p}.up.bias"], [f"{p}.u1"], name=f"{p}.up_b"),
                helper.make_node("Relu", [f"{p}.u1"], [f"{p}.u2"], name=f"{p}.act1"),
                helper.make_node("MatMul", [f"{p}.u2", f"{p}.down.weight"], [f"{p}.d0"], name=f"{p}.down"),
                helper.make_node("Add", [f"{p}.d0", f"{p}.down.bias"], [f"{p}.d1"], name=f"{p}.down_b"),
                helper.make_node("Add", [f"{p}.r0", f"{p}.d1"], [f"{p}.out"], name=f"{p}.res1"),
            ]
            x = f"{p}.out"
    graph = helper.make_graph(nodes, "bench", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", hidden])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="bench_prune")
    model.ir_version = 8
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return offset  # padding included; equal to the weight bytes up to a few KiB


PLAIN = r"""
import os, sys, onnx
src, dst, fsync = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
m = onnx.load(src)  # loads the external data into raw_data
onnx.save(m, dst, save_as_external_data=True, all_tensors_to_one_file=True,
          location=os.path.basename(dst) + ".data", size_threshold=1024)
if fsync:
    for p in (dst, dst + ".data"):
        fd = os.open(p, os.O_RDONLY); os.fsync(fd); os.close(fd)
"""


def measure(argv: list[str]) -> tuple[float, int, float]:
    """(wall seconds, peak RSS bytes, CPU seconds: user + system, all threads) of one fresh subprocess."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{err}")
    return wall, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime  # ru_maxrss is KiB on Linux


def drop(path: Path) -> None:
    """Remove a model and its data file: PATH.data (onnx.save here) or PATH.<16 hex>.data (onnxprune)."""
    for p in (path, path.with_name(path.name + ".data"), *path.parent.glob(glob.escape(path.name) + ".*.data")):
        p.unlink(missing_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=7)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--ffn", type=int, default=8192)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--repeat", type=int, default=1, help="run (a), (a'), (b), (c) this many times, interleaved; "
                    "the fastest of each counts (a shared machine)")
    ap.add_argument("--onnxprune-cmd", default=None,
                    help="command that runs onnxprune (default: this python -m onnxprune), e.g. to time another "
                    "build: 'env PYTHONPATH=DIR python -P -m onnxprune' (-P: the runs' working folder, this repo, "
                    "would otherwise come first on sys.path)")
    ap.add_argument("--build-only", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build_only:  # run in a child, so this process stays small (a child's peak RSS starts at its parent's)
        print(build(args.build_only, args.layers, args.hidden, args.ffn))
        return

    work = Path(tempfile.mkdtemp(prefix="bench_prune_", dir=args.workdir))
    py = sys.executable
    try:
        src = work / "model.onnx"
        t = time.perf_counter()
        weight_bytes = int(subprocess.run(
            [py, __file__, "--build-only", str(src), "--layers", str(args.layers), "--hidden", str(args.hidden),
             "--ffn", str(args.ffn)], check=True, capture_output=True, text=True).stdout.split()[-1])
        subprocess.run(["sync"], check=True)  # no write-back of the fresh data file during the timings
        params = weight_bytes // 4
        print(f"built {src} in {time.perf_counter() - t:.1f}s: ~{params / 1e6:.0f}M fp32 params, "
              f"{weight_bytes / 2**30:.2f} GiB of weights")
        subprocess.run(["cat", str(src.with_name(src.name + ".data"))], stdout=subprocess.DEVNULL, check=True)  # warm cache

        tool = shlex.split(args.onnxprune_cmd) if args.onnxprune_cmd else [py, "-m", "onnxprune"]
        if not args.onnxprune_cmd:  # bytecode as an installed package has it (PYTHONDONTWRITEBYTECODE may be set)
            subprocess.run([py, "-m", "compileall", "-q", str(REPO / "onnxprune")], check=True)
        imports = {
            "import onnx": [py, "-c", "import onnx"],
            "import onnxprune.cli": [py, "-c", "import onnxprune.cli, onnxprune.cli.prune_cmd"],
        }
        runs = {
            "(a) onnx load+save": [py, "-c", PLAIN, str(src), str(work / "a.onnx"), "0"],
            "(a') + fsync": [py, "-c", PLAIN, str(src), str(work / "a2.onnx"), "1"],
            "(b) prune 2:4": [*tool, "prune", str(src), "-o", str(work / "b.onnx"), "--pattern", "2:4",
                              "--external-data", "--quiet"],
            "(c) global 80%": [*tool, "prune", str(src), "-o", str(work / "c.onnx"), "--sparsity", "0.8",
                               "--scope", "global", "--external-data", "--quiet"],
        }
        results: dict[str, list[tuple[float, int, float]]] = {}
        for name, argv in [*imports.items(), *[item for _ in range(args.repeat) for item in runs.items()]]:
            results.setdefault(name, []).append(measure(argv))
            wall, rss, cpu = results[name][-1]
            print(f"{name:22s} {wall:7.2f} s  cpu {cpu:6.2f} s   peak RSS {rss / 2**20:8.0f} MiB  "
                  f"({rss / weight_bytes:.2f} x weights)", flush=True)
            for out in ("a.onnx", "a2.onnx", "b.onnx", "c.onnx"):
                drop(work / out)
            subprocess.run(["sync"], check=True)

        def best(name: str, field: int) -> float:  # the least disturbed of the repeats
            return min(r[field] for r in results[name])

        a, a2 = best("(a) onnx load+save", 0), best("(a') + fsync", 0)
        a2_cpu = best("(a') + fsync", 2)
        print()
        for key in ("(b) prune 2:4", "(c) global 80%"):
            wall, cpu, rss = best(key, 0), best(key, 2), best(key, 1)
            ok_t, ok_m = wall / a <= 1.3, rss / weight_bytes <= 1.2
            print(f"{key}: time {wall / a:.2f} x (a) [{'ok' if ok_t else 'MISSED'} <= 1.3], {wall / a2:.2f} x (a'); "
                  f"cpu {cpu / a2_cpu:.2f} x (a'); peak RSS {rss / weight_bytes:.2f} x weight bytes "
                  f"[{'ok' if ok_m else 'MISSED'} <= 1.2]")
        print(f"(a) = {a:.2f} s, (a') = {a2:.2f} s (the fastest of {args.repeat} run(s) each, interleaved)")
        print(f"(a) itself: peak RSS {best('(a) onnx load+save', 1) / weight_bytes:.2f} x weight bytes")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
