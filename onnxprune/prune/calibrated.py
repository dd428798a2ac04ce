"""Calibration-aware pruning: Wanda scores and SparseGPT (OBS pruning with weight updates).

- `wanda`: score |W_ij| * ||X_j||_2 (X: the op's input on calibration data, see analyze/activations.py),
  compared within each output row for unstructured sparsity (every row reaches the sparsity, as
  in Sun et al. 2023); for N:M the comparison is per group, for blocks per block mean.
- `sparsegpt`: Frantar & Alistarh 2023. Per weight (and per row group), from H = X^T X:
  damping (percdamp x mean diag), the upper Cholesky factor of H^-1, columns processed in blocks
  of `blocksize` with lazy updates; the mask is chosen per block from w^2 / [H^-1]_jj^2 over all
  rows (unstructured: the block reaches its share of the target) or per group of M columns (N:M,
  chosen when the group is reached), then every pruned weight's error is pushed onto the not yet
  processed columns of its row. Block patterns: the block mask is chosen once from the same
  saliency, then the same updates run with that mask fixed. It changes kept weights too, so it is
  a pass (`CalibratedPrunePass`), not only a score; `sparsegpt` as a plain criterion gives the OBS
  saliency w^2 / [H^-1]_jj^2 (used for global ranking).

Masks stay monotone (already pruned entries are forced into every selection) and follow the same
patterns and allocation as `PrunePass`; with global scope each weight's count comes from one
ranking of the criterion's scores over all selected weights, then each weight is pruned (and,
for SparseGPT, reconstructed) with its count. Weights without statistics (inside If/Loop
subgraphs) fall back to magnitude, weights with norms only (too many columns) and quantized
weights (no float updates) fall back from SparseGPT to Wanda; the pass result says which.
`sequential=True` recaptures statistics stage by stage from the partly pruned model.
"""

from __future__ import annotations

import numpy as np

from onnxprune.analyze.activations import LayerStats
from onnxprune.analyze.weights import Weight
from onnxprune.core.errors import OptionError
from onnxprune.core.progress import progress
from onnxprune.pipeline import ANALYSIS_FRESH, Context, PassResult
from onnxprune.pipeline.calibration import (
    CALIBRATION_DATA,
    StagedStats,
    calibration_state,
)
from onnxprune.pipeline.masking import PRUNED_ZERO, apply_mask, write_masked
from onnxprune.prune import patterns
from onnxprune.prune.criteria import (
    DEFAULT_PERCDAMP,
    effective_damp,
    hinv_upper,
    obs_saliency,
    wanda_matrix,
)
from onnxprune.prune.patterns import Pattern
from onnxprune.prune.prune_pass import PrunePass

CALIBRATED_CRITERIA = ("wanda", "sparsegpt")
DEFAULT_BLOCKSIZE = 128


# ------------------------------------------------------------------------------ mask selection

def _group_starts(cols: int, group_axis_len: int, m: int) -> np.ndarray:
    pos = np.arange(cols) % group_axis_len
    return (pos % m) == 0


def _column_blocks(cols: int, blocksize: int, starts: np.ndarray | None) -> list[tuple[int, int]]:
    out, i1 = [], 0
    while i1 < cols:
        i2 = min(i1 + blocksize, cols)
        if starts is not None:
            while i2 < cols and not starts[i2]:
                i2 += 1
        out.append((i1, i2))
        i1 = i2
    return out


def _lowest(tmp: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the k lowest entries of tmp (flat, ties: lower index first)."""
    out = np.zeros(tmp.size, dtype=bool)
    k = int(min(max(k, 0), tmp.size))
    if k:
        out[np.argsort(tmp.reshape(-1), kind="stable")[:k]] = True
    return out.reshape(tmp.shape)


def _group_ids(cols_in_block: np.ndarray, group_axis_len: int, m: int) -> np.ndarray:
    return (cols_in_block // group_axis_len) * (-(-group_axis_len // m)) + (cols_in_block % group_axis_len) // m


def sparsegpt(w: np.ndarray, h: np.ndarray, keep: np.ndarray, sparsity: float, pattern: Pattern,
              group_axis_len: int, *, fixed: np.ndarray | None = None, blocksize: int = DEFAULT_BLOCKSIZE,
              percdamp: float = DEFAULT_PERCDAMP, row_wise: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """SparseGPT on one matrix w (rows x cols) with Gram matrix h (cols x cols).

    Returns (keep, updated w) with pruned entries exactly 0. `keep` False entries stay pruned;
    `fixed` (True = prune) gives the mask instead of choosing it (reconstruction only)."""
    w = np.array(w, dtype=np.float64)
    rows, cols = w.shape
    u, _dead = hinv_upper(h, percdamp)
    forced = ~keep
    prune = np.zeros((rows, cols), dtype=bool)
    nm = pattern.kind == "nm" and fixed is None
    n_keep, m = (pattern.a, pattern.b) if pattern.kind == "nm" else (0, 0)
    full_nm = nm and sparsity >= 1 - n_keep / m - 1e-9
    starts = _group_starts(cols, group_axis_len, m) if pattern.kind == "nm" else None
    total = int(round(sparsity * rows * cols))
    done = 0
    row_total = np.diff(np.round(np.arange(rows + 1) * (total / rows)).astype(np.int64))
    row_done = np.zeros(rows, dtype=np.int64)
    for i1, i2 in _column_blocks(cols, blocksize, starts):
        cnt = i2 - i1
        w1 = w[:, i1:i2].copy()
        u1 = u[i1:i2, i1:i2]
        d = np.diag(u1)
        err1 = np.zeros((rows, cnt))
        f1 = forced[:, i1:i2]
        want = max(int(round(total * i2 / cols)) - done, int(f1.sum()))
        if fixed is not None:
            mask1 = fixed[:, i1:i2] | f1
        elif row_wise and pattern.kind == "unstructured":  # each row its share of the block
            tmp = np.where(f1, -np.inf, w1**2 / d**2)
            want_r = np.maximum(np.round(row_total * (i2 / cols)).astype(np.int64) - row_done, f1.sum(axis=1))
            order = np.argsort(tmp, axis=1, kind="stable")
            rank = np.empty_like(order)
            np.put_along_axis(rank, order, np.broadcast_to(np.arange(cnt), order.shape), axis=1)
            mask1 = rank < want_r[:, None]
        elif pattern.kind == "unstructured" or pattern.kind == "block":
            tmp = np.where(f1, -np.inf, w1**2 / d**2)
            mask1 = _lowest(tmp, want)
        elif full_nm:
            mask1 = f1.copy()
        else:  # N:M on the way to its final sparsity: the block's share, among each group's candidates
            tmp = np.where(f1, -np.inf, w1**2 / d**2)
            gid = _group_ids(np.arange(i1, i2), group_axis_len, m)
            cand = np.zeros_like(f1)
            for g in np.unique(gid):
                cols_g = np.flatnonzero(gid == g)
                order = np.argsort(-tmp[:, cols_g], axis=1, kind="stable")
                rank = np.empty_like(order)
                np.put_along_axis(rank, order, np.broadcast_to(np.arange(len(cols_g)), order.shape), axis=1)
                cand[:, cols_g] = rank >= n_keep
            mask1 = _lowest(np.where(cand, tmp, np.inf), min(want, int(cand.sum()))) & cand
            mask1 |= f1
        for i in range(cnt):
            col = i1 + i
            if full_nm and starts[col]:
                run_end = (col // group_axis_len + 1) * group_axis_len
                gl = min(m, run_end - col, cnt - i)
                n_prune = max(gl - n_keep, 0)
                if n_prune:
                    tmp = np.where(f1[:, i:i + gl], -np.inf, w1[:, i:i + gl] ** 2 / d[i:i + gl] ** 2)
                    idx = np.argsort(tmp, axis=1, kind="stable")[:, :n_prune]
                    np.put_along_axis(mask1[:, i:i + gl], idx, True, axis=1)
            col_w = w1[:, i]
            q = np.where(mask1[:, i], 0.0, col_w)
            err = (col_w - q) / u1[i, i]
            w1[:, i:] -= np.outer(err, u1[i, i:])
            w1[:, i] = q
            err1[:, i] = err
        w[:, i1:i2] = w1
        if i2 < cols:
            w[:, i2:] -= err1 @ u[i1:i2, i2:]
        prune[:, i1:i2] = mask1
        done += int(mask1.sum())
        row_done += mask1.sum(axis=1)
    w[prune] = 0.0
    return ~prune, w


# ---------------------------------------------------------------------------------------- pass

class CalibratedPrunePass(PrunePass):
    """`PrunePass` with calibration statistics: Wanda (per-row) or SparseGPT (with weight updates).

    Example::

        ctx = Context(model, data=Dataset.from_arrays({"input": x}, model.proto))
        Pipeline([CalibrationPass(), CalibratedPrunePass(0.5, criterion="sparsegpt")]).run(ctx)
    """

    name = "prune"
    requires = (ANALYSIS_FRESH, CALIBRATION_DATA)
    ensures = (ANALYSIS_FRESH, PRUNED_ZERO)

    def __init__(self, sparsity: float | None = None, pattern: str = "unstructured", scope: str = "layer",
                 criterion: str = "wanda", overrides: list[str] = (), skip: list[str] = (),
                 min_params: int | None = None, nm_remainder: str = "skip", step: int = 1,
                 sequential: bool = False, blocksize: int = DEFAULT_BLOCKSIZE, percdamp: float = DEFAULT_PERCDAMP,
                 auto_damp: bool = True, row_wise: bool = False, granularity: str = "auto", final: float | None = None):
        if criterion not in CALIBRATED_CRITERIA:
            raise OptionError(f"criterion {criterion!r} is not calibration-aware; use one of "
                              f"{', '.join(CALIBRATED_CRITERIA)} (or PrunePass for the others)")
        kwargs = {} if min_params is None else {"min_params": min_params}
        super().__init__(sparsity, pattern, scope, criterion, overrides, skip, nm_remainder=nm_remainder, step=step,
                         granularity=granularity, final=final, **kwargs)
        self.sequential = bool(sequential)
        self.blocksize = int(blocksize)
        self.percdamp = float(percdamp)
        self.auto_damp = bool(auto_damp)
        self.row_wise = bool(row_wise) or granularity == "row"  # SparseGPT: each row its share of every block
        if self.blocksize < 1 or not 0 <= self.percdamp:
            raise OptionError("sparsegpt needs blocksize >= 1 and percdamp >= 0")

    def call(self, ctx: Context) -> PassResult:
        model = ctx.model
        pattern, score, alloc, result = self._plan(ctx)
        weights = ctx.analysis.weights
        by_key = ctx.analysis.by_key()
        state = calibration_state(ctx)
        state.expire()
        glob = [by_key[k] for k in alloc.global_keys]
        global_prune = dict(zip(alloc.global_keys, self._global_counts(ctx, glob, pattern, score)))
        if global_prune:
            result.notes.append(f"global scope: one ranking of {self.criterion} scores over the selected weights "
                                "sets each weight's count; each weight is then pruned"
                                + (" and reconstructed" if self.criterion == "sparsegpt" else "") + " on its own")
        order = [w for w in weights if w.key in alloc.targets or w.key in global_prune]
        gram = self.criterion == "sparsegpt"
        staged = StagedStats(state, order, gram, self.sequential)
        for w in progress(order, f"{self.criterion} step {self.step}", unit="weight", name=lambda w: w.key,
                          enabled=ctx.progress):
            key = ctx.at = w.key
            stored = ctx.model.read(key)
            keep = ctx.masks.get(key) if key in ctx.masks else np.ones(w.shape, dtype=bool)
            before = 1 - keep.mean()
            if key in global_prune:
                target = (int((~keep).sum()) + global_prune[key]) / w.params
            else:
                target = alloc.targets[key]
            st = staged.get(w)
            new_keep, values, method = self._prune_one(ctx, w, stored, keep, target, pattern, st)
            ctx.masks.set(key, new_keep, self.pattern, self.step)
            if values is None:
                changed = write_masked(ctx, w, new_keep)
            else:
                values = apply_mask(w, values, new_keep, model)
                changed = _count_changed(stored, values)
                if changed:
                    ctx.model.write(key, values)
            if changed:
                staged.modified(key)
            result.modified |= changed > 0
            entry = {"pattern": self.pattern, "target": alloc.targets.get(key, "global"),
                     "sparsity_before": float(before), "sparsity": float(1 - new_keep.mean()),
                     "params": w.params, "values_zeroed": int(np.count_nonzero(keep & ~new_keep)),
                     "values_changed": changed, "criterion": method}
            if st is None:
                entry["calibration"] = state.skipped.get(key, "no statistics")
            elif st.notes:
                entry["calibration"] = "; ".join(st.notes)
            result.weights[key] = entry
        result.notes.append(f"calibration: {'sequential' if self.sequential else 'one capture'}, "
                            f"{staged.stages} capture run(s), {staged.seconds:.2f} s")
        result.notes.extend(state.notes)
        return result

    def resolved_granularity(self, st: LayerStats | None = None) -> str:
        """auto: Wanda compares within rows (Sun et al. 2023); the magnitude fallback over the layer."""
        if self.granularity != "auto":
            return self.granularity
        return "row" if st is not None else "layer"

    def _prune_one(self, ctx, w: Weight, stored, keep, target, pattern: Pattern, st: LayerStats | None):
        """(new keep in stored layout, updated values or None, method used)."""
        keep_m = w.matrix(keep)
        use_gpt = self.criterion == "sparsegpt" and st is not None and st.gram is not None and w.quant is None
        if self.criterion == "sparsegpt" and not use_gpt:
            why = ("quantized weight: no float updates" if w.quant is not None and st is not None
                   else "no statistics" if st is None else "no Gram matrix")
        if not use_gpt:
            scores = wanda_matrix(w, stored, ctx, st)
            new = patterns.apply(pattern, scores, keep_m, target, w.group_axis_len, self.resolved_granularity(st))
            method = "wanda" if st is not None else "magnitude"
            if self.criterion == "sparsegpt":
                method += f" ({why})"
            return w.unmatrix(new), None, method
        wm = w.matrix(stored).astype(np.float64)
        damp = effective_damp(self.percdamp, st, self.auto_damp)
        new_m = np.empty_like(keep_m)
        out = np.empty_like(wm)
        fixed = None
        if pattern.kind == "block":  # block masks are chosen once from the OBS saliency, then reconstructed
            fixed = ~patterns.blocks(obs_saliency(wm, st, damp), keep_m, pattern.a, pattern.b, target)
        slices = list(st.row_slices(w.rows))
        # each slice (a conv group, e.g. one row of a depthwise conv) gets its share of the layer's
        # count by cumulative rounding, so the layer reaches the target even when slices are short
        # (N:M keeps the layer's target: its count is fixed per group of M)
        sizes = np.array([wm[sl].size for sl in slices])
        counts = np.diff(np.round(np.concatenate([[0], np.cumsum(sizes)]) * target))
        for g, sl in enumerate(slices):
            share = counts[g] / sizes[g] if pattern.kind == "unstructured" else target
            new_m[sl], out[sl] = sparsegpt(wm[sl], st.gram[g], keep_m[sl], share, pattern, w.group_axis_len,
                                           fixed=None if fixed is None else fixed[sl], blocksize=self.blocksize,
                                           percdamp=damp, row_wise=self.row_wise)
        values = w.unmatrix(out).astype(w.dtype)
        return w.unmatrix(new_m), values, "sparsegpt"


def _count_changed(a: np.ndarray, b: np.ndarray) -> int:
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return int(np.count_nonzero(np.any(a.view(np.uint8).reshape(-1, a.itemsize) != b.view(np.uint8).reshape(-1, b.itemsize),
                                       axis=1)))
