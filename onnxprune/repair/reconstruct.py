"""Built-in fine-tuning hooks from calibration statistics: masked least squares and bias correction.

- lstsq: for each output row i with kept set S, the kept weights are re-fitted so the row's
  output on the calibration inputs matches the dense row's:
      w_S = argmin ||X_S w_S - X w_dense||^2 + lam ||w_S - w0_S||^2
      i.e. (H_SS + lam I) w_S = (H w_dense)_S + lam w0_S
  with H = X^T X, w0 the weights before the repair and lam = damp * mean(diag H), damp raised to
  cols / rows-of-X when the calibration gave few activation rows (auto_damp). The ridge pulls
  toward w0 rather than toward 0: a strong ridge then means "change little" instead of shrinking
  the row (with few calibration rows, e.g. one per sample after a global pooling, shrinking to 0
  made the repair worse than none on magika). Rows are solved in batches of equal |S| with
  numpy's batched solver while rows * |S|^3 / 3 stays under `exact_flops`; above it, all rows at
  once by Jacobi-preconditioned conjugate gradients restricted to each row's kept set, started at
  the current weights, for as many iterations as `cg_flops` allows (each costs 2 rows cols^2).
- bias: the op's bias absorbs the change of the output mean,
      b_i += E[X] . (w_dense_i - w_now_i)                      (local, one capture)
      b_i += E_dense[X] . w_dense_i - E_now[X] . w_now_i       (sequential, with dense means)
  for the bias the op already has: Gemm C (scaled by alpha / beta), Conv B, LSTM/GRU/RNN B (W and R
  halves), or the constant of an Add that is the only consumer of a MatMul. Without one, nothing.

The dense reference is the copy taken by `CalibrationPass` before pruning (`ctx.calibration`).
Usable as a pass (`RepairPass`, between gradual steps or after one-shot pruning) and as hooks for
`HookPass` (`onnxprune.repair.reconstruct:lstsq_repair`, `...:bias_correction`); the hooks need the
calibration state of the running pipeline (data and dense weights), which `build_pipeline` sets up.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxprune.analyze.activations import LayerStats
from onnxprune.analyze.weights import Weight, dequant_params
from onnxprune.core.errors import Opt, OptionError
from onnxprune.core.model import Model
from onnxprune.core.progress import progress
from onnxprune.ops import spec_for
from onnxprune.pipeline import ANALYSIS_FRESH, Context, Pass, PassResult
from onnxprune.pipeline.calibration import (
    CALIBRATION_DATA,
    StagedStats,
    calibration_state,
)
from onnxprune.pipeline.masking import PRUNED_ZERO, apply_mask

REPAIR_METHODS = ("none", "lstsq", "bias", "lstsq+bias")
DEFAULT_DAMP = 0.01
EXACT_FLOPS = 5e9
CG_FLOPS = 5e10
SOLVE_CHUNK_BYTES = 256 * 2**20


# ---------------------------------------------------------------------------------- least squares

def lstsq_rows(w_dense: np.ndarray, keep: np.ndarray, h: np.ndarray, damp: float = DEFAULT_DAMP, *,
               w_start: np.ndarray | None = None, exact_flops: float = EXACT_FLOPS,
               cg_flops: float = CG_FLOPS) -> tuple[np.ndarray, str]:
    """Masked ridge least squares for every row (see module doc). Returns (weights, method)."""
    w_dense = np.asarray(w_dense, dtype=np.float64)
    rows, cols = w_dense.shape
    h = np.asarray(h, dtype=np.float64)
    lam = damp * float(np.mean(np.diag(h))) or 1e-8
    start = w_dense if w_start is None else np.asarray(w_start, dtype=np.float64)
    target = w_dense @ h + lam * start  # row i: (H w_dense_i + lam w_start_i)^T
    sizes = keep.sum(axis=1)
    cost = float(np.sum(sizes.astype(np.float64) ** 3)) / 3
    out = np.zeros_like(w_dense)
    if cost <= exact_flops:
        for k in np.unique(sizes):
            if k == 0:
                continue
            rows_k = np.flatnonzero(sizes == k)
            chunk = max(1, int(SOLVE_CHUNK_BYTES // (8 * k * k)))
            for lo in range(0, len(rows_k), chunk):
                r = rows_k[lo:lo + chunk]
                idx = np.nonzero(keep[r])[1].reshape(len(r), k)  # kept columns of each row, ascending
                a = h[idx[:, :, None], idx[:, None, :]]
                a[:, np.arange(k), np.arange(k)] += lam
                b = np.take_along_axis(target[r], idx, axis=1)
                sol = np.linalg.solve(a, b[..., None])[..., 0]
                out[r[:, None], idx] = sol
        return out, "exact"
    return _masked_cg(h, lam, target, keep, start, cg_flops), "cg"


def _masked_cg(h: np.ndarray, lam: float, target: np.ndarray, keep: np.ndarray, start: np.ndarray,
               flops: float) -> np.ndarray:
    rows, cols = target.shape
    a = h + lam * np.eye(cols)
    m = keep.astype(np.float64)
    dg = np.diag(a)[None, :]
    x = np.asarray(start, dtype=np.float64) * m
    r = (target - x @ a) * m
    z = r / dg
    p = z.copy()
    rz = np.sum(r * z, axis=1)
    r0 = np.sqrt(np.sum(r * r)) or 1.0
    iters = max(5, int(flops // max(2 * rows * cols * cols, 1)))
    for _ in range(iters):
        ap = (p @ a) * m
        pap = np.sum(p * ap, axis=1)
        alpha = np.divide(rz, pap, out=np.zeros_like(rz), where=pap > 0)
        x += alpha[:, None] * p
        r -= alpha[:, None] * ap
        if np.sqrt(np.sum(r * r)) < 1e-6 * r0:
            break
        z = r / dg
        rz_new = np.sum(r * z, axis=1)
        beta = np.divide(rz_new, rz, out=np.zeros_like(rz), where=rz > 0)
        p = z + beta[:, None] * p
        rz = rz_new
    return x * m


# ------------------------------------------------------------------------------------------ bias

def bias_target(model, weight: Weight) -> tuple[str, np.ndarray, float] | str:
    """(bias key, flat bias index of each matrix row, scale) or why there is none to shift."""
    use = weight.uses[0]
    if use.graph:
        return "op inside a subgraph"
    g = model.proto.graph
    node = use.resolve(g)
    if node is None:
        return "op not found"
    rows = weight.rows
    found = spec_for(node.op_type, node.domain).bias(node, use.role, weight.op_shape, rows, g)
    if isinstance(found, str):
        return found
    name, scale, index, shape_ok = found.tensor, found.scale, found.index, found.shapes
    key = model.key_for(name)
    if key is None:
        return f"bias {name!r} is not a constant"
    ref = model.ref(key)
    shape = tuple(ref.proto.dims)
    if shape_ok is None:
        if not shape or shape[-1] != rows or int(np.prod(shape)) != rows:
            return f"Add constant of shape {list(shape)} is not one value per output unit"
    elif shape not in shape_ok:
        return f"bias of shape {list(shape)} is not one value per output unit"
    if ref.proto.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                                   onnx.TensorProto.BFLOAT16):
        return "bias is not floating point"
    users = sum(1 for n in g.node for i in n.input if i == name)
    if users > 1:
        return f"bias {name!r} is shared by {users} inputs"
    return key, (np.arange(rows) if index is None else index), scale


def bias_shift(weight: Weight, st: LayerStats, w_dense_m: np.ndarray, w_now_m: np.ndarray,
               dense_mean: np.ndarray | None) -> np.ndarray:
    """Per-row shift of the op's output mean to give back to the bias."""
    now = st.per_row(st.mean, weight.rows)
    shift = np.einsum("rc,rc->r", now, w_dense_m - w_now_m)
    if dense_mean is not None:
        dense = st.per_row(dense_mean, weight.rows)
        shift = np.einsum("rc,rc->r", dense, w_dense_m) - np.einsum("rc,rc->r", now, w_now_m)
    return shift


# ------------------------------------------------------------------------------------------ core

def _parse(method: str) -> tuple[bool, bool]:
    if method not in REPAIR_METHODS:
        raise OptionError(f"repair {method!r}: use one of {', '.join(REPAIR_METHODS)}")
    return "lstsq" in method, "bias" in method


def repair(ctx: Context, method: str = "lstsq", *, sequential: bool = False, damp: float = DEFAULT_DAMP,
           auto_damp: bool = True, write: bool = True, exact_flops: float = EXACT_FLOPS, cg_flops: float = CG_FLOPS) -> tuple[dict, dict, list]:
    """Repair every masked weight (graph order). Returns (updates key -> stored array, per-weight
    report, notes). With write=False nothing is written (hooks); sequential needs write=True."""
    do_lstsq, do_bias = _parse(method)
    if ctx.data is None:
        raise OptionError("repair needs calibration inputs: give ", Opt("data.calibration", "FILE"))
    if sequential and not write:
        raise OptionError("sequential repair writes as it goes; it cannot run as a hook")
    state = calibration_state(ctx)
    state.expire()
    notes: list[str] = []
    if not state.dense:
        notes.append("no dense snapshot (CalibrationPass did not run before pruning): the dense reference is "
                     "re-read from the model file where it has the weight, else it is the weights as they are now")
    model = ctx.model
    weights = [w for w in ctx.analysis.weights if w.key in ctx.masks]
    staged = StagedStats(state, weights, do_lstsq, sequential)
    updates: dict[str, np.ndarray] = {}
    report: dict[str, dict] = {}
    original = _original_model(ctx) if not state.dense else None
    for w in progress(weights, f"repair {method}", unit="weight", name=lambda w: w.key, enabled=ctx.progress):
        entry: dict = {}
        report[w.key] = entry
        st = staged.get(w)
        if st is None:
            entry["skipped"] = state.skipped.get(w.key, "no statistics")
            continue
        keep = ctx.masks.get(w.key)
        keep_m = w.matrix(keep)
        dense = _dense(state, original, w, model)
        stored = model.read(w.key)
        changed = False
        w_now_m = _real(w, stored, model)
        w_dense_m = _real(w, dense, model)
        if do_lstsq:
            if w.quant is not None:
                entry["lstsq"] = "skipped: quantized weight"
            elif st.gram is None:
                entry["lstsq"] = "skipped: no Gram matrix (" + "; ".join(st.notes) + ")"
            else:
                new_m = np.empty_like(w_now_m)
                methods = set()
                eff = max(damp, st.cols / max(st.count, 1)) if auto_damp else damp
                entry["damp"] = eff
                for g, sl in enumerate(st.row_slices(w.rows)):
                    new_m[sl], how = lstsq_rows(w_dense_m[sl], keep_m[sl], st.gram[g], eff, w_start=w_now_m[sl],
                                                exact_flops=exact_flops, cg_flops=cg_flops)
                    methods.add(how)
                values = apply_mask(w, w.unmatrix(new_m).astype(w.dtype), keep, model)
                entry["lstsq"] = "+".join(sorted(methods))
                entry["rel_change"] = float(np.linalg.norm(new_m - w_now_m) / (np.linalg.norm(w_now_m) or 1.0))
                updates[w.key] = values
                if write:
                    model.write(w.key, values)
                w_now_m = new_m
                changed = True
        if do_bias:
            where = bias_target(model, w)
            if isinstance(where, str):
                entry["bias"] = f"skipped: {where}"
            else:
                key, index, scale = where
                dm = state.dense_mean.get(w.key) if sequential else None
                shift = bias_shift(w, st, w_dense_m, w_now_m, dm) * scale
                b = np.array(updates.get(key, model.read(key)))
                flat = b.reshape(-1).astype(np.float64)
                flat[index] += shift
                b = flat.reshape(b.shape).astype(b.dtype)
                updates[key] = b
                if write:
                    model.write(key, b)
                entry["bias"] = "dense-mean" if dm is not None else "local"
                entry["bias_shift_max"] = float(np.max(np.abs(shift))) if shift.size else 0.0
                changed = True
        if changed:
            staged.modified(w.key)
    notes.append(f"repair {method}: {'sequential' if sequential else 'one capture'}, {staged.stages} capture run(s), "
                 f"{staged.seconds:.2f} s")
    return updates, report, notes


def _real(w: Weight, stored: np.ndarray, model) -> np.ndarray:
    if w.quant is None:
        return w.matrix(np.asarray(stored)).astype(np.float64)

    scale, zp = dequant_params(w, model)
    return w.matrix((stored.astype(np.float64) - zp.astype(np.float64)) * scale)


def _original_model(ctx: Context):

    if ctx.model.path is None:
        return None
    try:
        return Model.load(ctx.model.path)
    except Exception:  # the file may have moved; the reference is then the current weights
        return None


def _dense(state, original, w: Weight, model) -> np.ndarray:
    if w.key in state.dense:
        return state.dense[w.key]
    if original is not None:
        try:
            arr = original.read(w.key)
            if arr.shape == w.shape:
                return arr
        except Exception:
            pass
    return np.array(model.read(w.key))


class RepairPass(Pass):
    """Built-in repair after a pruning step: lstsq, bias, or lstsq+bias (see module doc).

    Example::

        Pipeline([CalibrationPass(), PrunePass(0.5), RepairPass("lstsq+bias")]).run(ctx)
    """

    name = "repair"
    ensures = (ANALYSIS_FRESH, PRUNED_ZERO)

    def __init__(self, method: str = "lstsq", sequential: bool = False, damp: float = DEFAULT_DAMP,
                 exact_flops: float = EXACT_FLOPS, cg_flops: float = CG_FLOPS, auto_damp: bool = True):
        _parse(method)
        if method != "none":
            self.requires = (ANALYSIS_FRESH, CALIBRATION_DATA)
        self.auto_damp = bool(auto_damp)
        self.method = method
        self.sequential = bool(sequential)
        self.damp = float(damp)
        self.exact_flops = float(exact_flops)
        self.cg_flops = float(cg_flops)

    def call(self, ctx: Context) -> PassResult:
        result = PassResult(self.name, False)
        if self.method == "none":
            return result
        updates, report, notes = repair(ctx, self.method, sequential=self.sequential, damp=self.damp,
                                        auto_damp=self.auto_damp,
                                        exact_flops=self.exact_flops, cg_flops=self.cg_flops)
        result.modified = bool(updates)
        result.weights = report
        for key in updates:
            if key not in report:
                result.weights[key] = {"updated_by": "bias"}
        result.notes.extend(notes)
        return result

    def stage(self, result: PassResult) -> str:
        refit = sum(1 for w in result.weights.values() if "lstsq" in w or "bias" in w)
        return f"repair {self.method}: {refit} weights refitted, {result.seconds:.1f} s"


# ------------------------------------------------------------------------------------------ hooks

def _hook(hctx, method: str) -> dict[str, np.ndarray]:
    state = hctx.calibration
    if state is None or state.ctx is None:
        raise RuntimeError(f"{method} needs the calibration state of the running pipeline (calibration data and "
                           "the dense weights): give calibration data and build the job with build_pipeline (it adds "
                           "CalibrationPass), or run RepairPass instead")
    updates, _, _ = repair(state.ctx, method, write=False)
    return updates


def lstsq_repair(hctx) -> dict[str, np.ndarray]:
    """HookPass hook: masked least-squares reconstruction of the kept weights.

    Example::

        PruneOptions(sparsity=0.8, steps=4, hooks=["onnxprune.repair.reconstruct:lstsq_repair"])
    """
    return _hook(hctx, "lstsq")


def bias_correction(hctx) -> dict[str, np.ndarray]:
    """HookPass hook: shift biases by the change of the output means.

    Example::

        PruneOptions(sparsity=0.5, hooks=["onnxprune.repair.reconstruct:bias_correction"])
    """
    return _hook(hctx, "bias")
