"""The pruning pass: decide masks for one schedule step and write the masked weights."""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from onnxprune.analyze.weights import Weight, zero_value
from onnxprune.core.errors import Opt, OptionError
from onnxprune.core.progress import bars_enabled
from onnxprune.core.quant import bit_view
from onnxprune.pipeline import ANALYSIS_FRESH, Context, Pass, PassResult
from onnxprune.pipeline.masking import PRUNED_ZERO, write_masked
from onnxprune.prune import criteria, global_rank, patterns
from onnxprune.prune.allocate import DEFAULT_MIN_PARAMS, allocate, parse_override
from onnxprune.prune.patterns import Pattern

PROGRESS_MIN_PARAMS = 5_000_000  # show a progress bar above this many prunable parameters


class PrunePass(Pass):
    """Prune every selected weight to `sparsity` in `pattern`, ranking by `criterion`.

    scope "layer": each weight reaches the sparsity; "global": one ranking over all selected
    weights (except N:M, which is per group by definition). Existing masks only shrink.
    `granularity` (unstructured, layer scope): "row" compares scores within each output row,
    "layer" over the whole weight; "auto" is layer for magnitude (per-row measured better on one
    of three real models only, bench/bench_allocation.py) and row for Wanda (as its paper does).
    A non-uniform allocation (`ctx.allocation`: weight key -> final sparsity, e.g. OWL) replaces
    `sparsity` per weight, scaled by this step's share of the job's `final` sparsity (0 leaves the
    weight dense).

    Example::

        Pipeline([PrunePass(0.5, pattern="2:4")]).run(Context(load_model("samples/digits_mlp.onnx")))
    """

    name = "prune"
    ensures = (ANALYSIS_FRESH, PRUNED_ZERO)

    def __init__(self, sparsity: float | None = None, pattern: str = "unstructured", scope: str = "layer",
                 criterion: str = "magnitude", overrides: list[str] = (), skip: list[str] = (),
                 min_params: int = DEFAULT_MIN_PARAMS, nm_remainder: str = "skip", step: int = 1,
                 granularity: str = "auto", final: float | None = None):
        self.pattern = str(Pattern.parse(pattern))
        fixed = Pattern.parse(pattern).fixed_sparsity
        self.sparsity = float(sparsity if sparsity is not None else (fixed if fixed is not None else 0.5))
        if fixed is not None and self.sparsity > fixed + 1e-9:
            raise OptionError(f"sparsity {self.sparsity:g} with pattern {self.pattern}: N:M prunes at most "
                              f"1 - N/M = {fixed:g}; leave ", Opt("prune.sparsity"),
                              " out, or choose a pattern such as 1:4 or 1:8")
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
        if granularity not in patterns.GRANULARITIES:
            raise OptionError(Opt("prune.granularity"), f" {granularity!r}: use {' or '.join(patterns.GRANULARITIES)}")
        self.granularity = granularity
        self.final = None if final is None else float(final)  # None: this step's sparsity is the final one

    def stage(self, result: PassResult) -> str:
        pruned = sum(1 for w in result.weights.values() if "sparsity" in w)
        return (f"prune step {self.step}: sparsity {self.sparsity:.2f} ({self.criterion}, {self.pattern}), "
                f"{pruned} weights, {result.seconds:.1f} s")

    def _plan(self, ctx: Context):
        """(pattern, score function, allocation, result listing the skipped weights) for this step."""
        pattern = Pattern.parse(self.pattern)
        alloc = allocate(ctx.analysis.weights, self.sparsity, pattern, self.scope,
                         [parse_override(o) for o in self.overrides], self.skip, self.min_params, self.nm_remainder,
                         ctx.exclude, self.step_allocation(ctx))
        result = PassResult(self.name, False)
        for key, reason in alloc.skipped.items():
            result.weights[key] = {"skipped": reason}
        ctx.skipped.update(alloc.skipped)
        return pattern, criteria.get(self.criterion), alloc, result

    def resolved_granularity(self) -> str:
        return "layer" if self.granularity == "auto" else self.granularity

    def step_allocation(self, ctx: Context) -> dict[str, float]:
        """This step's per-weight sparsity under the context's allocation (empty: uniform)."""
        final = self.sparsity if self.final is None else self.final
        scale = self.sparsity / final if final > 0 else 0.0
        return {k: s * scale for k, s in (ctx.allocation or {}).items()}

    def call(self, ctx: Context) -> PassResult:
        pattern, score, alloc, result = self._plan(ctx)
        weights = ctx.analysis.weights
        by_key = ctx.analysis.by_key()
        global_keys = set(alloc.global_keys)
        glob = [w for w in weights if w.key in global_keys]
        total = sum(by_key[k].params for k in alloc.targets) + sum(w.params for w in glob)
        ranked = sum(w.params for w in glob) if pattern.kind == "unstructured" else 0  # read twice
        bar = tqdm(total=total + ranked, desc=f"prune {self.pattern} step {self.step}", unit="w", unit_scale=True,
                   disable=not ctx.progress or total < PROGRESS_MIN_PARAMS or not bars_enabled(), leave=False)
        cut = block_prune = None
        ranked_stored: dict[str, np.ndarray] = {}  # weights the global ranking read, kept for their masking
        if glob and pattern.kind == "unstructured":
            cut = self._global_cut(ctx, glob, score, bar, ranked_stored)
        elif glob:
            block_prune = dict(zip([w.key for w in glob], self._global_counts(ctx, glob, pattern, score)))
        owner = {w.key: i for i, w in enumerate(glob)}
        todo = [w for w in weights if w.key in alloc.targets or w.key in owner]
        unread = ctx.model.read_ahead([w.key for w in todo if w.key not in ranked_stored])
        for w in todo:
            key = ctx.at = w.key
            stored = ranked_stored.pop(key) if key in ranked_stored else next(unread)
            keep = ctx.masks.get(key) if key in ctx.masks else None
            before = 0.0 if keep is None else pruned_share(keep)
            if cut is not None and key in owner:
                alive = None if keep is None else keep.reshape(-1)
                score_of = criteria.entrywise(self.criterion, w)
                if score_of:  # scored chunk by chunk: no full-size scores
                    keep = cut.keep_chunks(owner[key], global_rank.entrywise_bits(stored, score_of), alive, w.params)
                else:
                    keep = cut.keep(owner[key], global_rank.score_bits(score(w, stored, ctx)), alive)
                keep = keep.reshape(w.shape)
            else:
                keep_m = w.matrix(keep if keep is not None else np.ones(w.shape, dtype=bool))
                # N:M by an entry-by-entry criterion: the kernel scores the values block by block
                score_of = criteria.entrywise(self.criterion, w) if pattern.kind == "nm" else None
                scores = w.matrix(stored if score_of else score(w, stored, ctx))
                target = ((int((~keep_m).sum()) + block_prune[key]) / w.params if key in owner
                          else alloc.targets[key])
                keep = w.unmatrix(patterns.apply(pattern, scores, keep_m, target, w.group_axis_len,
                                                 "layer" if key in owner else self.resolved_granularity(), score_of))
                del scores, keep_m  # free the scores before the masked copy is made
            ctx.masks.set(key, keep, self.pattern, self.step)
            changed = write_masked(ctx, w, keep, stored)
            result.modified |= changed > 0
            result.weights[key] = {"pattern": self.pattern, "target": alloc.targets.get(key, "global"),
                                   "sparsity_before": float(before), "sparsity": pruned_share(keep),
                                   "params": w.params, "values_zeroed": changed}
            bar.update(w.params)
        bar.close()
        for i, index in (cut.late_picks() if cut is not None else {}).items():
            w = glob[i]
            changed = _prune_entries(ctx, w, index)
            entry = result.weights[w.key]
            entry["sparsity"] += index.size / w.params
            entry["values_zeroed"] += changed
            result.modified |= changed > 0
        # Weights left out of this step (skipped, too small) that already carry a mask (imported, or
        # from an earlier pass) keep it: pruned entries stay exactly zero (masks are monotone).
        for key in ctx.masks.keys():
            if key in by_key and key not in alloc.targets and key not in owner:
                changed = write_masked(ctx, by_key[key], ctx.masks.get(key))
                result.modified |= changed > 0
                if changed:
                    result.weights.setdefault(key, {})["values_zeroed_by_existing_mask"] = changed
        return result

    def _need(self, ctx, weights: list[Weight]) -> int:
        """Entries still to prune so the set reaches the sparsity together."""
        already = sum(ctx.masks.pruned(w.key) for w in weights if w.key in ctx.masks)
        return int(round(self.sparsity * sum(w.params for w in weights))) - already

    def _global_cut(self, ctx, weights: list[Weight], score, bar, stored: dict[str, np.ndarray]) -> global_rank.GlobalCut:
        """The cut through all `weights`' scores. Each weight is read once: its values stay in
        `stored` for the masking that follows (which keeps them all in the model anyway, as written
        values), instead of being read again from the external data."""
        need = self._need(ctx, weights)
        if need <= 0:
            bar.update(sum(w.params for w in weights))
            return global_rank.GlobalCut(0, 0, 0)  # keeps every alive entry

        reads = []

        def alive_bits():  # the progress bar counts the first read (a narrowing read is rare)
            reads.append(1)
            for w in weights:
                if w.key not in stored:
                    stored[w.key] = ctx.model.read(w.key)
                alive, score_of = _alive(ctx, w), criteria.entrywise(self.criterion, w)
                # scored chunk by chunk where the criterion allows (the cut counts entries, not weights)
                chunks = (global_rank.entrywise_bits(stored[w.key], score_of) if score_of
                          else [(0, global_rank.score_bits(score(w, stored[w.key], ctx)))])
                for start, bits in chunks:
                    yield bits if alive is None else bits[alive[start:start + bits.size]]
                if len(reads) == 1:
                    bar.update(w.params)

        return global_rank.GlobalCut.plan(alive_bits, need)

    def _global_counts(self, ctx, weights: list[Weight], pattern: Pattern, score) -> list[int]:
        """How many more entries each weight prunes so the set reaches the sparsity together."""
        need = self._need(ctx, weights)
        if need <= 0:
            return [0] * len(weights)
        if pattern.kind == "block":
            def block_scores():
                for w in weights:
                    keep = _alive(ctx, w)
                    keep_m = w.matrix(np.ones(w.shape, dtype=bool) if keep is None else keep.reshape(w.shape))
                    yield global_rank.alive_block_scores(w.matrix(score(w, ctx.model.read(w.key), ctx)), keep_m,
                                                         pattern.a, pattern.b)
            return global_rank.block_counts(block_scores(), need)

        def weights_bits():
            for w in weights:
                yield global_rank.score_bits(score(w, ctx.model.read(w.key), ctx)), _alive(ctx, w)
        return global_rank.counts(weights_bits, need)


def pruned_share(keep: np.ndarray) -> float:
    """1 - keep.mean(), counted without a float conversion of every entry (the same float)."""
    return float(1 - np.count_nonzero(keep) / keep.size)


def _alive(ctx: Context, weight: Weight) -> np.ndarray | None:
    """The weight's flat keep mask, or None while nothing of it is pruned (unpacked one weight at
    a time, when it is read, never for all weights at once)."""
    keep = ctx.masks.get(weight.key).reshape(-1) if weight.key in ctx.masks else None
    return None if keep is None or keep.all() else keep


def _prune_entries(ctx: Context, weight: Weight, index: np.ndarray) -> int:
    """Prune the entries at flat `index` of a weight already written; returns how many values changed."""
    zero = np.broadcast_to(zero_value(weight, ctx.model), weight.shape)[np.unravel_index(index, weight.shape)]
    changed = int(np.count_nonzero(bit_view(ctx.model.read(weight.key).reshape(-1)[index]) != bit_view(zero)))
    if changed:
        ctx.model.set_entries(weight.key, index, zero)
    ctx.masks.prune_entries(weight.key, index)
    return changed
