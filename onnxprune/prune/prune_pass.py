"""The pruning pass: decide masks for one schedule step and write the masked weights."""

from __future__ import annotations

import sys

import numpy as np
from tqdm import tqdm

from onnxprune.analyze.weights import Weight
from onnxprune.errors import OptionError
from onnxprune.pipeline import Context, Pass, PassResult
from onnxprune.prune import criteria, patterns
from onnxprune.prune.allocate import DEFAULT_MIN_PARAMS, allocate, parse_override
from onnxprune.prune.patterns import Pattern

PROGRESS_MIN_PARAMS = 5_000_000  # show a progress bar above this many prunable parameters


def _bits(a: np.ndarray) -> np.ndarray:
    """The values as unsigned integers of the same width (bit patterns: -0.0 != 0.0, NaN == same NaN)."""
    a = np.ascontiguousarray(a)
    if a.itemsize in (1, 2, 4, 8):
        return a.view(f"u{a.itemsize}")
    return a.view(np.uint8).reshape(a.shape + (a.itemsize,))


def apply_mask(weight: Weight, stored: np.ndarray, keep: np.ndarray, model) -> np.ndarray:
    """Stored values with pruned entries set to zero (or to the zero point when quantized)."""
    if weight.quant is None and stored.itemsize in (1, 2, 4, 8) and stored.dtype.kind != "O":
        # all-zero bits are 0 / +0.0 in every numeric dtype: multiplying the bit patterns by the
        # mask is exact and several times faster than np.where
        bits = _bits(stored)
        return np.multiply(bits, np.broadcast_to(keep, bits.shape), dtype=bits.dtype).view(stored.dtype)
    return np.where(keep, stored, criteria.zero_value(weight, model)).astype(stored.dtype, copy=False)


def write_masked(ctx: Context, weight: Weight, keep: np.ndarray, stored: np.ndarray | None = None) -> int:
    """Write the masked weight into the model; returns how many stored values changed."""
    if stored is None:
        stored = ctx.model.read(weight.key)
    if _maskable_in_place(weight, stored):  # a fresh array read from external data: no second copy
        stored.flags.writeable = True  # before taking the view, which inherits the flag
        bits = _bits(stored)
        nonzero = np.count_nonzero(bits)
        np.multiply(bits, keep, out=bits)
        changed = int(nonzero - np.count_nonzero(bits))  # masking only ever zeroes values
        if changed:
            ctx.model.write(weight.key, stored)
        return changed
    masked = apply_mask(weight, stored, keep, ctx.model)
    diff = _bits(masked) != _bits(stored)
    changed = int(np.count_nonzero(diff if diff.ndim == stored.ndim else diff.any(axis=-1)))
    if changed:
        ctx.model.write(weight.key, masked)
    return changed


def _maskable_in_place(weight: Weight, stored: np.ndarray) -> bool:
    return (weight.quant is None and stored.flags.owndata and stored.flags.c_contiguous
            and stored.itemsize in (1, 2, 4, 8) and stored.dtype.kind != "O")


class PrunePass(Pass):
    """Prune every selected weight to `sparsity` in `pattern`, ranking by `criterion`.

    scope "layer": each weight reaches the sparsity; "global": one ranking over all selected
    weights (except N:M, which is per group by definition). Existing masks only shrink."""

    name = "prune"

    def __init__(self, sparsity: float | None = None, pattern: str = "unstructured", scope: str = "layer",
                 criterion: str = "magnitude", overrides: list[str] = (), skip: list[str] = (),
                 min_params: int = DEFAULT_MIN_PARAMS, nm_remainder: str = "skip", step: int = 1):
        self.pattern = str(Pattern.parse(pattern))
        fixed = Pattern.parse(pattern).fixed_sparsity
        self.sparsity = float(sparsity if sparsity is not None else (fixed if fixed is not None else 0.5))
        if fixed is not None and self.sparsity > fixed + 1e-9:
            raise OptionError(f"sparsity {self.sparsity:g} with pattern {self.pattern}: N:M prunes at most "
                              f"1 - N/M = {fixed:g}; leave --sparsity out, or choose a pattern such as 1:4 or 1:8")
        self.scope = scope
        self.criterion = criterion
        criteria.get(criterion)
        self.overrides = list(overrides)
        for o in self.overrides:
            parse_override(o)
        self.skip = list(skip)
        self.min_params = int(min_params)
        self.nm_remainder = nm_remainder
        self.step = int(step)

    def _plan(self, ctx: Context):
        """(pattern, score function, allocation, result listing the skipped weights) for this step."""
        pattern = Pattern.parse(self.pattern)
        alloc = allocate(ctx.analysis.weights, self.sparsity, pattern, self.scope,
                         [parse_override(o) for o in self.overrides], self.skip, self.min_params, self.nm_remainder)
        result = PassResult(self.name, False)
        for key, reason in alloc.skipped.items():
            result.weights[key] = {"skipped": reason}
        return pattern, criteria.get(self.criterion), alloc, result

    def call(self, model, ctx: Context) -> PassResult:
        pattern, score, alloc, result = self._plan(ctx)
        weights = ctx.analysis.weights
        by_key = ctx.analysis.by_key()
        total = sum(by_key[k].params for k in list(alloc.targets) + alloc.global_keys)
        bar = tqdm(total=total, desc=f"prune {self.pattern} step {self.step}", unit="w", unit_scale=True,
                   disable=not ctx.progress or total < PROGRESS_MIN_PARAMS or not sys.stderr.isatty(), leave=False)
        global_prune = self._global_counts(ctx, [by_key[k] for k in alloc.global_keys], pattern, score)
        for key in [w.key for w in weights if w.key in alloc.targets or w.key in global_prune]:
            w = by_key[key]
            stored = ctx.model.read(key)
            keep = ctx.masks.get(key) if key in ctx.masks else np.ones(w.shape, dtype=bool)
            before = 1 - keep.mean()
            scores = w.matrix(score(w, stored, ctx))
            keep_m = w.matrix(keep)
            if key in global_prune:
                new = patterns.apply(pattern, scores, keep_m, (int((~keep_m).sum()) + global_prune[key]) / w.params,
                                     w.group_axis_len)
            else:
                new = patterns.apply(pattern, scores, keep_m, alloc.targets[key], w.group_axis_len)
            keep = w.unmatrix(new)
            del scores, keep_m, new  # free the scores before the masked copy is made
            ctx.masks.set(key, keep, self.pattern, self.step)
            changed = write_masked(ctx, w, keep, stored)
            result.modified |= changed > 0
            result.weights[key] = {"pattern": self.pattern, "target": alloc.targets.get(key, "global"),
                                   "sparsity_before": float(before), "sparsity": float(1 - keep.mean()),
                                   "params": w.params, "values_zeroed": changed}
            bar.update(w.params)
        bar.close()
        # Weights left out of this step (skipped, too small) that already carry a mask (imported, or
        # from an earlier pass) keep it: pruned entries stay exactly zero (masks are monotone).
        for key in ctx.masks.keys():
            if key in by_key and key not in alloc.targets and key not in global_prune:
                changed = write_masked(ctx, by_key[key], ctx.masks.get(key))
                result.modified |= changed > 0
                if changed:
                    result.weights.setdefault(key, {})["values_zeroed_by_existing_mask"] = changed
        return result

    def _global_counts(self, ctx, weights: list[Weight], pattern: Pattern, score) -> dict[str, int]:
        """How many more entries each weight prunes so the set reaches the sparsity together."""
        if not weights:
            return {}
        total = sum(w.params for w in weights)
        # masks are unpacked one weight at a time (None = nothing pruned yet), never all at once
        masks = {w.key: (ctx.masks.get(w.key) if w.key in ctx.masks else None) for w in weights}
        already = sum(int(m.size - np.count_nonzero(m)) for m in masks.values() if m is not None)
        masks = {k: None if m is None or m.all() else m for k, m in masks.items()}
        need = int(round(self.sparsity * total)) - already
        if need <= 0:
            return {w.key: 0 for w in weights}
        if pattern.kind == "block":
            return self._global_blocks(ctx, weights, masks, pattern, score, need)
        return _global_unstructured(ctx, weights, masks, score, need)

    def _global_blocks(self, ctx, weights, masks, pattern, score, need) -> dict[str, int]:
        means, sizes, owners = [], [], []
        for i, w in enumerate(weights):
            s = w.matrix(score(w, ctx.model.read(w.key), ctx))
            keep_m = w.matrix(masks[w.key] if masks[w.key] is not None else np.ones(w.shape, dtype=bool))
            mean, size, _ = patterns.block_scores(s, keep_m, pattern.a, pattern.b)
            alive = patterns._block_view(keep_m, pattern.a, pattern.b, True).all(axis=(2, 3))
            means.append(mean[alive])
            sizes.append(size[alive])
            owners.append(np.full(int(alive.sum()), i))
        mean, size, owner = map(np.concatenate, (means, sizes, owners))
        order = np.argsort(mean, kind="stable")
        cum = np.concatenate([[0], np.cumsum(size[order])])
        n = int(np.argmin(np.abs(cum - need)))
        counts = np.bincount(owner[order[:n]], weights=size[order[:n]], minlength=len(weights))
        return {w.key: int(c) for w, c in zip(weights, counts)}


def _global_unstructured(ctx, weights, masks, score, need) -> dict[str, int]:
    """Exact global k-smallest over all alive entries in two O(weights) passes: a histogram of the
    top 16 bits of the float32 score bit patterns (monotone for scores >= 0), then an exact
    selection inside the boundary bucket (ties: weight order, then flat index)."""
    hists = []
    for w in weights:
        hists.append(_top16_histogram(_score_bits(w, ctx, score, masks[w.key])))
    cum = np.cumsum(np.sum(hists, axis=0))
    bucket = int(np.searchsorted(cum, need))  # first bucket where the cumulative count reaches need
    below = int(cum[bucket - 1]) if bucket else 0
    counts = {w.key: int(h[:bucket].sum()) for w, h in zip(weights, hists)}  # entries below the bucket
    remaining = need - below
    if remaining > 0:  # the second pass only visits weights with entries in the boundary bucket
        boundary, owners = [], []
        for i, (w, h) in enumerate(zip(weights, hists)):
            if h[bucket]:
                bits = _score_bits(w, ctx, score, masks[w.key])
                boundary.append(np.sort(bits[(bits >> 16) == bucket]))
                owners.append(np.full(len(boundary[-1]), i))
        allbits, owner = np.concatenate(boundary), np.concatenate(owners)
        order = np.lexsort((owner, allbits))[:remaining]
        for i, c in zip(*np.unique(owner[order], return_counts=True)):
            counts[weights[i].key] += int(c)
    return counts


def _top16_histogram(bits: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """Counts of the top 16 bits, in cache-sized chunks (a whole-array shift plus bincount's int64
    cast would cost 12 bytes per entry of extra memory traffic)."""
    hist = np.zeros(1 << 16, dtype=np.int64)
    for start in range(0, bits.size, chunk):
        hist += np.bincount(bits[start:start + chunk] >> 16, minlength=1 << 16)
    return hist


def _score_bits(w: Weight, ctx, score, keep: np.ndarray | None) -> np.ndarray:
    s = np.abs(score(w, ctx.model.read(w.key), ctx).astype(np.float32, copy=False)).reshape(-1)
    return (s if keep is None else s[keep.reshape(-1)]).view(np.uint32)
