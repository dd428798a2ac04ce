"""onnxprune vs onnxsim (0.8.1, PyPI) on the same real models, jobs and data: time, parity, sparsity.

    python bench/bench_peer.py --onnxsim-python /tmp/venv-onnxsim/bin/python [--models magika,ddddocr,minilm]
                               [--jobs all] [--timeout 300]

onnxsim runs in its own environment (it is never imported here, nor installed with onnxprune): each
of its jobs is a subprocess running bench/_peer_onnxsim.py, which times only the pruning call
(model loaded before, saved after). onnxprune runs in this process, timed the same way (prune_model
on a loaded Model; load, validation and save excluded). Both tools capture calibration activations
in onnxruntime with its default thread count; the calibrated jobs' times include that capture.
The two tools alternate which goes first from job to job (the machine is shared and noisy), and
each (model, job, tool) runs once: the ratios come from one interleaved run.

onnxsim's venv needs onnxruntime (its "onnxruntime" extra, same version as here): without it
onnxsim captures calibration activations with onnx's reference evaluator, which failed on magika
(AxisError in Squeeze) for Wanda and SparseGPT. An onnxsim job that runs past --timeout is killed
and shows as "timeout" (in the ratio list: "a tool refused or failed").

Data (tests/realmodels.py, built once per model and saved as .npz, so both tools see identical
arrays): a calibration set and a disjoint held-out set. onnxprune gets the calibration set as a
Dataset; onnxsim gets the same samples as a list of feed dicts (the same batches). Parity is
measured here, for both tools, in onnxruntime on the held-out set: mean cosine of the output rows
(magika: class scores; ddddocr: the CTC logits per time step; MiniLM: the pooled sentence
embedding), top-1 agreement where the output is class scores (magika: the file type; ddddocr: the
character per time step, and "text": the decoded string), relative L2 error.

Sparsity is counted the same way for both tools, over the weights onnxprune's analysis finds
prunable in the original model (found by storage name in the pruned file): zeros / params, and
"layers" = how many of them have at least 1% zeros. "own" is the tool's own figure (onnxprune:
sparsity of the weights it selected, i.e. without the layers it skips as too small; onnxsim:
weight_sparsity() over the layers it matches). For channel jobs the columns are the share of all
stored parameters removed. "2:4 ok" checks every weight of a 2:4 job along its reduction axis
(onnxprune's matrix view of the weight). "=mag" (calibrated jobs): layers whose mask is identical
to the same tool's magnitude mask for the same pattern (a silent fallback shows up there).
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
import onnx
import onnxruntime as ort
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from onnxprune.analyze.weights import find_weights
from onnxprune.check.data import Dataset
from onnxprune.core.model import Model
from onnxprune.jobs.prune_job import PruneOptions, prune_model

HELPER = Path(__file__).with_name("_peer_onnxsim.py")
JOBS = {  # job -> onnxprune options (the helper maps the same names to onnxsim calls)
    "magnitude 50%": {"sparsity": 0.5},
    "magnitude 2:4": {"pattern": "2:4"},
    "wanda 50%": {"sparsity": 0.5, "criterion": "wanda"},
    "sparsegpt 50%": {"sparsity": 0.5, "criterion": "sparsegpt"},
    "sparsegpt 2:4": {"pattern": "2:4", "criterion": "sparsegpt"},
    "channel 25%": {"pattern": "channel", "sparsity": 0.25},
}
MAGNITUDE_TWIN = {"wanda 50%": "magnitude 50%", "sparsegpt 50%": "magnitude 50%", "sparsegpt 2:4": "magnitude 2:4"}


def _setups(names):
    """name -> model path, data builder, calibration / held-out counts, batch, output to compare, kind."""
    import realmodels as rm

    return {
        "magika": lambda: {"path": rm.model_path("magika"), "data": lambda n: rm.magika_data(n, 0),
                               "n_calib": 32, "n_eval": 256, "batch": 16, "output": None, "kind": "class"},
        "ddddocr": lambda: {"path": rm.model_path("ddddocr_common"), "data": lambda n: rm.ddddocr_data(n, 0),
                                "n_calib": 8, "n_eval": 24, "batch": 1, "output": None, "kind": "ocr"},
        "minilm": lambda: {"path": rm.model_path("minilm_l3"), "data": lambda n: rm.minilm_data("minilm_l3", n),
                               "n_calib": 8, "n_eval": 16, "batch": 8, "output": "461", "kind": "embedding"},
    }


def _session(src, threads=2):
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.log_severity_level = 3
    return ort.InferenceSession(src.SerializeToString() if isinstance(src, onnx.ModelProto) else str(src), o,
                                providers=["CPUExecutionProvider"])


def _outputs(path, ds: Dataset, batch, output):
    sess = _session(path)
    index = 0 if output is None else [o.name for o in sess.get_outputs()].index(output)
    return [sess.run(None, feed)[index] for feed in ds.batches(batch)]


def _parity(ref, cand, kind):
    import realmodels as rm

    top, cos, text, num, den = [], [], [], 0.0, 0.0
    for r, c in zip(ref, cand):
        r64, c64 = r.astype(np.float64), c.astype(np.float64)
        num += float(np.sum((r64 - c64) ** 2))
        den += float(np.sum(r64 ** 2))
        rr, cc = r64.reshape(-1, r64.shape[-1]), c64.reshape(-1, c64.shape[-1])
        cos.append(np.sum(rr * cc, 1) / np.maximum(np.linalg.norm(rr, axis=1) * np.linalg.norm(cc, axis=1), 1e-30))
        if kind in ("class", "ocr"):
            top.append(rr.argmax(-1) == cc.argmax(-1))
        if kind == "ocr":
            text.append(rm.ddddocr_decode(r) == rm.ddddocr_decode(c))
    return {"cosine": float(np.mean(np.concatenate(cos))), "rel_l2": float(np.sqrt(num / den)),
            "top1": float(np.mean(np.concatenate(top))) if top else None,
            "text": float(np.mean(text)) if text else None}


def _constants(proto: onnx.ModelProto, read_only: bool = True) -> dict:
    """Main-graph initializers and Constant-node values by name (only those some node reads, unless
    `read_only` is False)."""
    read = {i for n in proto.graph.node for i in n.input} | {o.name for o in proto.graph.output}
    out = {t.name: t for t in proto.graph.initializer if not read_only or t.name in read}
    for n in proto.graph.node:
        if n.op_type == "Constant" and (not read_only or n.output[0] in read):
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = a.t
    return out


def _stored_params(proto: onnx.ModelProto, read_only: bool = True) -> int:
    return int(sum(np.prod(t.dims, dtype=np.int64) for t in _constants(proto, read_only).values()))


def _consumers(proto: onnx.ModelProto, weights) -> dict:
    """weight key -> (output name of the first node reading it, input index) in the original model.
    Weights are found again in a pruned file through that node, not by name: onnxsim's magnitude
    pruning writes each pruned weight under a new name (and keeps the old one, unread)."""
    out = {}
    for w in weights:
        for n in proto.graph.node:
            if w.key in n.input:
                out[w.key] = (n.output[0], list(n.input).index(w.key))
                break
    return out


def _weights_of(path, consumers) -> dict:
    """weight key (original name) -> array in the model file at `path`, found through its consumer."""
    proto = onnx.load(str(path))
    consts = _constants(proto)
    by_output = {n.output[0]: n for n in proto.graph.node if n.output}
    got = {}
    for key, (node_out, index) in consumers.items():
        node = by_output.get(node_out)
        if node is not None and index < len(node.input) and node.input[index] in consts:
            got[key] = numpy_helper.to_array(consts[node.input[index]])
    return got


def _unread(path) -> tuple[int, int]:
    """Initializers no node reads, and their bytes, in the file at `path`."""
    proto = onnx.load(str(path))
    read = {i for n in proto.graph.node for i in n.input} | {o.name for o in proto.graph.output}
    dead = [t for t in proto.graph.initializer if t.name not in read]
    return len(dead), sum(t.ByteSize() for t in dead)


def _nm_ok(w, arr, n=2, m=4) -> bool:
    mat = w.matrix(arr)
    cols = mat.shape[1] - mat.shape[1] % m
    groups = mat[:, :cols].reshape(mat.shape[0], -1, m)
    tail_ok = np.count_nonzero(mat[:, cols:], axis=1).max(initial=0) <= n
    return bool(np.count_nonzero(groups, axis=2).max(initial=0) <= n and tail_ok)


def _run_onnxprune(path, opts, calib_ds, out):
    try:
        model = Model.load(path)
        t0 = time.perf_counter()
        ctx, report = prune_model(model, PruneOptions(**opts), data=calib_ds, progress=False)
        seconds = time.perf_counter() - t0
        onnx.save_model(ctx.model.proto, str(out))
    except Exception as e:  # noqa: BLE001 -- what the tool refused is reported, not raised
        return {"seconds": None, "error": f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"}
    skipped = [w for w in report.get("weights", []) if w.get("skipped")]
    notes = []
    if skipped:
        notes.append(f"skipped {len(skipped)} weights ({skipped[0]['skipped']})")
    for p in report.get("passes", []):
        fb = {w.get("criterion") for w in p.get("weights", {}).values() if isinstance(w, dict)} - {None, opts.get("criterion", "magnitude")}
        if fb:
            notes.append(f"fallback to {','.join(sorted(fb))} on some weights")
    frozen = report.get("structured", {}).get("frozen") if opts.get("pattern") == "channel" else None
    if frozen:
        notes.append(f"froze {len(frozen)} groups")
    own = report.get("totals", {}).get("sparsity_of_selected")
    return {"seconds": seconds, "error": None, "own_sparsity": own, "notes": notes}


def _run_onnxsim(python, path, job, calib_feeds, out, timeout):
    res_path = Path(str(out) + ".json")
    try:
        proc = subprocess.run([python, str(HELPER), str(path), job, str(calib_feeds), str(out), str(res_path)],
                              capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"seconds": None, "error": f"timeout after {timeout} s (killed)"}
    if not res_path.exists():
        tail = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        return {"seconds": None, "error": f"helper exited {proc.returncode}: {tail}"}
    res = json.loads(res_path.read_text())
    res["notes"] = [f"warning: {w}" for w in res.get("warnings", [])][:2]
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnxsim-python", default="/tmp/venv-onnxsim/bin/python")
    ap.add_argument("--models", default="magika,ddddocr,minilm")
    ap.add_argument("--jobs", default="all", help="comma-separated job names, or all")
    ap.add_argument("--timeout", type=int, default=150, help="seconds per onnxsim job")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    jobs = list(JOBS) if args.jobs == "all" else args.jobs.split(",")
    ver = subprocess.run([args.onnxsim_python, "-c", "import onnxsim, onnxruntime; print(onnxsim.__version__, onnxruntime.__version__)"],
                         capture_output=True, text=True, check=False)
    print(f"onnxsim / its onnxruntime: {ver.stdout.strip() or ver.stderr.strip().splitlines()[-1]}; "
          f"onnxprune's onnxruntime: {ort.__version__}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)

    rows = []
    setups = _setups(args.models.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.models.split(","):
            try:
                s = setups[name]()
                arrays = s["data"](s["n_calib"] + s["n_eval"])
            except BaseException as e:  # pytest.skip (package missing) is a BaseException
                if isinstance(e, KeyboardInterrupt):
                    raise
                print(f"SKIP {name}: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}", flush=True)
                continue
            arrays.pop("labels", None)
            proto = onnx.load(str(s["path"]))
            np.savez(tmp / f"{name}_all.npz", **arrays)
            calib, held = Dataset.from_source(tmp / f"{name}_all.npz", proto).split(s["n_calib"], seed=0)
            calib_feeds = tmp / f"{name}_calib_feeds.npz"  # the same calibration samples, as onnxsim's feed list
            np.savez(calib_feeds, **{f"{i}|{k}": v for i, feed in enumerate(calib.batches(s["batch"]))
                                     for k, v in feed.items()})
            weights = find_weights(Model.load(s["path"])).weights
            consumers = _consumers(proto, weights)
            dead_before = _unread(s["path"])
            params_before = _stored_params(proto)
            ref = _outputs(s["path"], held, s["batch"], s["output"])
            print(f"\n{name}: {s['path'].name}, {len(calib)} calibration + {len(held)} held-out samples (disjoint), "
                  f"{len(weights)} prunable weights ({sum(w.params for w in weights):,} params) by onnxprune's analysis",
                  flush=True)
            print(HEADER, flush=True)
            files = {}
            for j, job in enumerate(jobs):
                order = ("onnxprune", "onnxsim") if j % 2 == 0 else ("onnxsim", "onnxprune")
                for tool in order:
                    out = tmp / f"{name}_{tool}_{j}.onnx"
                    if tool == "onnxprune":
                        r = _run_onnxprune(s["path"], JOBS[job], calib, out)
                    else:
                        r = _run_onnxsim(args.onnxsim_python, s["path"], job, calib_feeds, out, args.timeout)
                    row = {"model": name, "job": job, "tool": tool, **r}
                    if r["error"] is None and out.exists():
                        files[(tool, job)] = out
                        row.update(_parity(ref, _outputs(out, held, s["batch"], s["output"]), s["kind"]))
                        dead = _unread(out)
                        if dead[0] > dead_before[0]:
                            kept = f"{dead[0] - dead_before[0]} unread initializers ({(dead[1] - dead_before[1]) / 2**20:.1f} MiB)"
                            row["notes"] = [*row.get("notes", []), f"file keeps {kept}"]
                        if JOBS[job].get("pattern") == "channel":
                            removed = 1 - _stored_params(onnx.load(str(out))) / params_before
                            row.update(sparsity=removed, layers=None)
                            if abs(removed) < 1e-9:
                                row["notes"] = row.get("notes", []) + ["model unchanged"]
                        else:
                            got = _weights_of(out, consumers)
                            zeros = sum(int(np.count_nonzero(got[w.key] == 0)) for w in weights if w.key in got)
                            row["sparsity"] = zeros / sum(w.params for w in weights)
                            row["layers"] = (sum(np.mean(got[w.key] == 0) >= 0.01 for w in weights
                                                 if w.key in got), len(weights))
                            if job.endswith("2:4"):
                                bad = [w.key for w in weights if w.key in got
                                       and np.mean(got[w.key] == 0) >= 0.01 and not _nm_ok(w, got[w.key])]
                                row["nm_ok"] = "yes" if not bad else f"no ({len(bad)})"
                                if bad:
                                    ops = sorted({w.op for w in weights if w.key in bad})
                                    row["notes"] = row.get("notes", []) + [
                                        f"not 2:4 along the reduction axis: {len(bad)} weights ({','.join(ops)})"]
                            twin = files.get((tool, MAGNITUDE_TWIN.get(job)))
                            if twin is not None:
                                mag = _weights_of(twin, consumers)
                                row["same_as_mag"] = sum(np.array_equal(got[w.key] == 0, mag[w.key] == 0)
                                                         and np.mean(got[w.key] == 0) >= 0.01
                                                         for w in weights if w.key in got and w.key in mag)
                    rows.append(row)
                    print(_fmt(row), flush=True)
    _ratios(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    return rows


HEADER = (f"{'model':8} {'job':14} {'tool':9} {'time s':>7} {'cosine':>8} {'top1':>6} {'text':>5} {'rel-L2':>7} "
          f"{'sparsity':>8} {'layers':>6} {'own':>6} {'2:4 ok':>6} {'=mag':>4}  refused / notes")


def _fmt(r):
    def f(v, spec, width):
        return f"{v:{width}{spec}}" if isinstance(v, (int, float)) and not isinstance(v, bool) else f"{'-':>{width}}"

    layers = f"{r['layers'][0]}/{r['layers'][1]}" if r.get("layers") else "-"
    notes = ([r["error"]] if r.get("error") else []) + list(r.get("notes") or [])
    return (f"{r['model']:8} {r['job']:14} {r['tool']:9} {f(r.get('seconds'), '.2f', 7)} {f(r.get('cosine'), '.5f', 8)} "
            f"{f(r.get('top1'), '.3f', 6)} {f(r.get('text'), '.2f', 5)} {f(r.get('rel_l2'), '.4f', 7)} "
            f"{f(r.get('sparsity'), '.3f', 8)} {layers:>6} {f(r.get('own_sparsity'), '.3f', 6)} "
            f"{r.get('nm_ok', '-'):>6} {r.get('same_as_mag', '-'):>4}  {'; '.join(notes)}")


def _ratios(rows):
    print("\ntime ratio onnxprune / onnxsim (same model and job; < 1: onnxprune faster), with the cosine of each:")
    by = {(r["model"], r["job"], r["tool"]): r for r in rows}
    for (model, job, tool), r in by.items():
        if tool != "onnxprune":
            continue
        o = by.get((model, job, "onnxsim"))
        if o and r.get("seconds") and o.get("seconds"):
            print(f"  {model:8} {job:14} {r['seconds'] / o['seconds']:8.2f}x   cosine onnxprune {r.get('cosine', float('nan')):.5f}"
                  f" vs onnxsim {o.get('cosine', float('nan')):.5f}")
        else:
            print(f"  {model:8} {job:14}        -   (a tool refused or failed)")


if __name__ == "__main__":
    main()
