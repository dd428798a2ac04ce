"""Target passes: enforce the target's pattern, assess eligibility, pack, emit; and `pack_model`.

They take an already-pruned model (from `prune_model`, or loaded from a file):

    EnforcePattern(target)    every statically eligible weight that violates the target's pattern (checked by
                              the independent validator `eligibility.check_pattern`) is re-pruned with the
                              pruner's own machinery (magnitude scores, `patterns.nm`/`patterns.blocks`, monotone
                              masks, `write_masked`); a weight that would need more than `max_increase` extra
                              sparsity is left alone and reported (prune it from the dense model instead)
    AssessEligibility(target) the per-layer report (`eligibility.assess`)
    PackWeights(target)       packs every eligible weight's matrix view in the target's format and checks
                              decode(pack(W)) == W bit for bit (TargetError otherwise)
    EmitArtifact(target, out) the artifact folder (`emit.emit_artifact`)

`TargetPipeline` composes them; `pack_model(model, target, out_dir)` runs it and returns the report.
The passes keep their state (eligibility, packed tensors, manifest) on the context as `ctx.target`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from onnxprune.core.errors import NothingToPackError, TargetError
from onnxprune.core.masks import MaskSet
from onnxprune.core.model import Model
from onnxprune.core.report import fill
from onnxprune.pack import formats
from onnxprune.pack.eligibility import (
    BLOCK_STRAY_TOLERANCE,
    EligibilityReport,
    assess,
    check_pattern,
    nonzero_map,
    render_eligibility,
    static_check,
)
from onnxprune.pack.emit import emit_artifact
from onnxprune.pack.formats.base import PackedTensor, bits_of
from onnxprune.pack.sizes import binary_entropy, information_bound_bits
from onnxprune.pack.targets import Target, load_target
from onnxprune.pipeline import ANALYSIS_FRESH, Context, Pass, PassResult, Pipeline
from onnxprune.pipeline.masking import PRUNED_ZERO, write_masked
from onnxprune.prune import criteria, patterns
from onnxprune.prune.patterns import Pattern

DEFAULT_MAX_INCREASE = 0.10  # EnforcePattern: most extra sparsity (absolute) it adds to one weight


@dataclass
class TargetState:
    eligibility: EligibilityReport | None = None
    packed: dict[str, PackedTensor] = field(default_factory=dict)
    info: dict[str, dict] = field(default_factory=dict)  # per packed weight: sizes
    manifest: dict | None = None
    out_dir: str | None = None
    emit: str | None = None


def target_state(ctx: Context) -> TargetState:
    """The target passes' shared state, kept on the context (made on first use)."""
    if ctx.target is None:
        ctx.target = TargetState()
    return ctx.target


def _target(target: Target | str) -> Target:
    return target if isinstance(target, Target) else load_target(target)


def bound_bytes(matrix: np.ndarray, pattern: Pattern) -> float:
    """Least bytes for `matrix` given its pattern: values + mask entropy (N:M, blocks or unstructured)."""
    if pattern.kind == "nm":
        return information_bound_bits(matrix, ("nm", pattern.a, pattern.b)) / 8
    if pattern.kind == "block" and (pattern.a, pattern.b) != (1, 1):
        r, c = pattern.a, pattern.b
        rows, cols = matrix.shape
        nz = bits_of(matrix) != 0
        pr, pc = (-rows) % r, (-cols) % c
        real = np.pad(np.ones_like(nz), ((0, pr), (0, pc))).reshape((rows + pr) // r, r, (cols + pc) // c, c)
        alive = np.pad(nz, ((0, pr), (0, pc))).reshape(real.shape).any(axis=(1, 3))
        entries = int(real.sum(axis=(1, 3))[alive].sum())
        d = float(alive.mean()) if alive.size else 0.0
        return (entries * 8 * matrix.dtype.itemsize + alive.size * binary_entropy(d)) / 8
    return information_bound_bits(matrix) / 8


# ------------------------------------------------------------------------------------------ passes

class EnforcePattern(Pass):
    """Re-prune weights that violate the target's pattern (magnitude within the pattern, masks monotone).

    Example::

        Pipeline([EnforcePattern(load_target("nvidia-2to4"))]).run(ctx)   # usually via TargetPipeline
    """

    name = "enforce-pattern"
    ensures = (ANALYSIS_FRESH, PRUNED_ZERO)

    def __init__(self, target: Target | str, max_increase: float = DEFAULT_MAX_INCREASE, criterion: str = "magnitude"):
        self._target = _target(target)
        self.target = self._target.name
        self.pattern = str(self._target.pattern)
        if not 0 <= max_increase <= 1:
            raise TargetError(f"max_increase {max_increase}: give a sparsity increase in [0, 1]")
        self.max_increase = float(max_increase)
        criteria.get(criterion)
        self.criterion = criterion

    def call(self, ctx: Context) -> PassResult:
        model = ctx.model
        target = self._target
        pattern = target.pattern
        result = PassResult(self.name, False)
        static = static_check(target, model, ctx.analysis)
        score = criteria.get(self.criterion)
        for w in ctx.analysis.weights:
            if static[w.key]:
                result.weights[w.key] = {"status": "skipped", "reason": static[w.key][0].text}
                continue
            stored = model.read(w.key)
            nz = nonzero_map(stored)
            exact = w.key in ctx.masks
            keep = (ctx.masks.get(w.key) & nz) if exact else nz
            before = 1 - float(keep.mean())
            if before == 0.0:
                result.weights[w.key] = {"status": "dense", "note": "not pruned; left dense (runs dense)"}
                continue
            keep_m = w.matrix(keep)
            check = check_pattern(keep_m, pattern, w.group_axis_len, 0.0 if exact else BLOCK_STRAY_TOLERANCE)
            if check.ok:
                result.weights[w.key] = {"status": "ok", "sparsity": before}
                continue
            scores = w.matrix(score(w, stored, ctx))
            if pattern.kind == "nm":
                new_m = patterns.nm(scores, keep_m, pattern.a, pattern.b, w.group_axis_len)
            else:
                new_m = patterns.blocks(scores, keep_m, pattern.a, pattern.b, before)
            again = check_pattern(new_m, pattern, w.group_axis_len, 0.0)
            if not again.ok:  # the validator and the pruner disagree: a bug, not a user error
                raise TargetError(f"{w.key}: re-pruning to {pattern} did not satisfy the pattern ({again.detail}); "
                                  "please report this")
            new_keep = w.unmatrix(new_m)
            after = 1 - float(new_keep.mean())
            if after - before > self.max_increase + 1e-12:
                result.weights[w.key] = {
                    "status": "left", "sparsity": before, "would_be": after, "violations": check.violations,
                    "reason": (f"pattern {pattern} not met ({check.detail}); enforcing it would raise sparsity from "
                               f"{before:.1%} to {after:.1%} (more than {self.max_increase:.0%} extra): prune from the "
                               f"dense model with --pattern {pattern} instead")}
                continue
            ctx.masks.set(w.key, new_keep, self.pattern, 0)
            changed = write_masked(ctx, w, new_keep)
            result.modified |= changed > 0
            result.weights[w.key] = {"status": "re-pruned", "sparsity_before": before, "sparsity": after,
                                     "violations": check.violations, "values_zeroed": changed}
        counts: dict[str, int] = {}
        for v in result.weights.values():
            counts[v["status"]] = counts.get(v["status"], 0) + 1
        result.notes.append("enforce " + ", ".join(f"{k} {n}" for k, n in sorted(counts.items())))
        return result


class AssessEligibility(Pass):
    """Per-layer eligibility for the target (never modifies the model).

    Example::

        Pipeline([AssessEligibility(load_target("nvidia-2to4"))]).run(ctx)   # usually via TargetPipeline
    """

    name = "eligibility"

    def __init__(self, target: Target | str, input_shapes: dict[str, tuple[int, ...]] | None = None):
        self._target = _target(target)
        self.target = self._target.name
        self.input_shapes = {k: tuple(v) for k, v in (input_shapes or {}).items()}

    def call(self, ctx: Context) -> PassResult:
        model = ctx.model
        rep = assess(model, self._target, ctx.analysis, ctx.masks, self.input_shapes or None)
        target_state(ctx).eligibility = rep
        result = PassResult(self.name, False, notes=list(rep.notes))
        for key, s in rep.weights.items():
            result.weights[key] = {"packed": s.packed, "sparsity": s.sparsity,
                                   "reasons": [r.text for r in s.reasons], "notes": s.notes}
        return result


class PackWeights(Pass):
    """Pack every eligible weight (matrix view) in the target's format; decode must give W bit for bit.

    Example::

        Pipeline([..., PackWeights(load_target("npu-bitmask"))]).run(ctx)   # usually via TargetPipeline
    """

    name = "pack"

    def __init__(self, target: Target | str, input_shapes: dict[str, tuple[int, ...]] | None = None):
        self._target = _target(target)
        self.target = self._target.name
        self.format = self._target.format
        self.params = dict(self._target.format_params)
        self.input_shapes = {k: tuple(v) for k, v in (input_shapes or {}).items()}

    def call(self, ctx: Context) -> PassResult:
        model = ctx.model
        target = self._target
        st = target_state(ctx)
        if st.eligibility is None or st.eligibility.target != target.name:
            st.eligibility = assess(model, target, ctx.analysis, ctx.masks, self.input_shapes or None)
        if not any(s.sparsity > 0 for s in st.eligibility.weights.values()):
            raise NothingToPackError(f"{model.path or 'the model'}: no weight is pruned, so nothing can be packed for "
                                     f"target {target.name}; prune it in the target's pattern ({target.pattern}) first")
        by_key = ctx.analysis.by_key()
        result = PassResult(self.name, False)
        st.packed, st.info = {}, {}
        for key in st.eligibility.packable():
            w = by_key[key]
            matrix = np.ascontiguousarray(w.matrix(model.read(key)))
            packed = formats.encode(target.format, matrix, name=key, **target.format_params)
            back = formats.decode(packed)
            if back.shape != matrix.shape or back.dtype != matrix.dtype or not np.array_equal(bits_of(back), bits_of(matrix)):
                diff = int(np.count_nonzero(bits_of(back) != bits_of(matrix))) if back.shape == matrix.shape else -1
                raise TargetError(f"{key}: decode(pack(W)) differs from W ({diff} entries; format {target.format} "
                                  f"{target.format_params}); the artifact would be wrong, please report this")
            bound = bound_bytes(matrix, target.pattern)
            nnz = int(np.count_nonzero(bits_of(matrix)))
            info = {"format": packed.format, "params": dict(packed.params), "matrix": list(matrix.shape),
                    "dtype": matrix.dtype.name, "nnz": nnz, "sparsity": 1 - nnz / matrix.size,
                    "dense_bytes": int(matrix.nbytes), "packed_bytes": packed.nbytes, "bound_bytes": bound,
                    "ratio_to_bound": packed.nbytes / bound if bound else math.inf,
                    "ratio_to_dense": packed.nbytes / matrix.nbytes if matrix.nbytes else 0.0,
                    "exact": True}
            st.packed[key] = packed
            st.info[key] = info
            result.weights[key] = info
        result.notes.append(f"packed {len(st.packed)} weights as {target.format}, decode verified bit for bit")
        return result


class EmitArtifact(Pass):
    """Write the artifact folder: model.onnx in the emit mode, weights.bin and manifest.json.

    Example::

        Pipeline([..., EmitArtifact(load_target("npu-bitmask"), "out/artifact")]).run(ctx)   # via TargetPipeline
    """

    name = "emit"

    def __init__(self, target: Target | str, out_dir: str, mode: str | None = None, measure_gzip: bool = True):
        self._target = _target(target)
        self.target = self._target.name
        mode = mode or self._target.default_emit
        if mode not in self._target.emit_modes:
            raise TargetError(f"target {self.target} cannot emit {mode!r}; use one of {', '.join(self._target.emit_modes)}")
        self.out_dir = str(out_dir)
        self.mode = mode
        self.measure_gzip = measure_gzip

    def call(self, ctx: Context) -> PassResult:
        model = ctx.model
        st = target_state(ctx)
        weights = ctx.analysis.by_key()
        manifest = emit_artifact(model, self._target, weights, st.packed, self.out_dir, self.mode,
                                 tensor_info=st.info,
                                 eligibility=st.eligibility.totals if st.eligibility else None,
                                 measure_gzip=self.measure_gzip)
        st.manifest, st.out_dir, st.emit = manifest, self.out_dir, self.mode
        return PassResult(self.name, False, notes=[f"wrote {self.out_dir} ({self.mode})"])


class TargetPipeline(Pipeline):
    """Enforce -> eligibility -> pack [-> emit] for one target, on an already-pruned model.

    Example::

        TargetPipeline(load_target("npu-bitmask"), "out/artifact").run(Context(model))
    """

    def __init__(self, target: Target | str, out_dir: str | None = None, emit: str | None = None, enforce: bool = True,
                 max_increase: float = DEFAULT_MAX_INCREASE, input_shapes: dict | None = None,
                 measure_gzip: bool = True):
        self.target = _target(target)
        passes: list[Pass] = [EnforcePattern(self.target, max_increase)] if enforce else []
        passes += [AssessEligibility(self.target, input_shapes), PackWeights(self.target, input_shapes)]
        if out_dir is not None:
            passes.append(EmitArtifact(self.target, out_dir, emit, measure_gzip))
        super().__init__(passes)


def pack_model(model: Model, target: Target | str, out_dir: str | None = None, *, emit: str | None = None,
               enforce: bool = True, masks: MaskSet | None = None, ctx: Context | None = None,
               input_shapes: dict | None = None, block: str | None = None,
               max_increase: float = DEFAULT_MAX_INCREASE, measure_gzip: bool = True,
               progress: bool = False) -> tuple[Context, dict]:
    """Shape, pack and (with `out_dir`) emit `model` for `target`; returns the context and the report.

    The model is changed in memory only where EnforcePattern re-prunes; the input file is never written.
    Pass the pruning context (`ctx`) or its `masks` so pattern checks use the exact masks.

    Example::

        ctx, report = pack_model(load_model("out/m24.onnx"), "nvidia-2to4", "out/artifact")
    """
    t = _target(target)
    if block is not None:
        t = t.with_block(block)
    if ctx is None:
        ctx = Context(model, masks or MaskSet(), progress=progress)
    elif masks is not None:
        raise TargetError("give either ctx or masks to pack_model, not both")
    start = len(ctx.results)
    TargetPipeline(t, out_dir, emit, enforce, max_increase, input_shapes, measure_gzip).run(ctx)
    return ctx, pack_report(ctx, t, ctx.results[start:])


def pack_report(ctx: Context, target: Target, results: list[PassResult] | None = None) -> dict:
    """The JSON report (kind "pack") of the target passes run on `ctx`."""
    st = target_state(ctx)
    results = ctx.results if results is None else results
    enforce = next((r for r in results if r.pass_name == EnforcePattern.name), None)
    info = st.info
    dense = sum(v["dense_bytes"] for v in info.values())
    packed = sum(v["packed_bytes"] for v in info.values())
    bound = sum(v["bound_bytes"] for v in info.values())
    sizes = {"packed_weights": len(info), "dense_bytes": dense, "packed_bytes": packed, "bound_bytes": bound,
             "ratio_to_bound": packed / bound if bound else None, "ratio_to_dense": packed / dense if dense else None}
    if st.manifest:
        sizes.update(st.manifest["sizes"])
    desc = target.describe()
    desc.pop("details", None)
    return {
        "target": desc,
        "input": str(ctx.model.path) if ctx.model.path else None,
        "output": st.out_dir,
        "emit": st.emit,
        "enforce": {"modified": enforce.modified, "weights": enforce.weights} if enforce else None,
        "eligibility": st.eligibility.to_dict() if st.eligibility else None,
        "packed": info,
        "sizes": sizes,
        "passes": [r.to_dict() for r in results],
        "speed_note": ("Only layers marked sparse run faster, and only on the target's runtime; everything else "
                       "runs dense. Storage-only targets make the file smaller, not the model faster."),
    }


def _mb(n: float | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def render_report(report: dict, max_rows: int | None = None) -> str:
    """Terminal text of a pack report: the enforcement changes, the eligibility table and the size summary."""
    lines = []
    t = report["target"]
    enf = report.get("enforce")
    if enf:
        changed = {k: v for k, v in enf["weights"].items() if v["status"] in ("re-pruned", "left")}
        for k, v in changed.items():
            if v["status"] == "re-pruned":
                lines.append(f"enforce {t['pattern']}: {k} re-pruned {v['sparsity_before']:.1%} -> {v['sparsity']:.1%} "
                             f"({v['violations']} violations, {v['values_zeroed']} values zeroed)")
            else:
                lines.append(f"enforce {t['pattern']}: {k} left as is: {v['reason']}")
        if not changed:
            lines.append(f"enforce {t['pattern']}: every eligible pruned weight already follows the pattern")
    if report.get("eligibility"):
        lines += ["", render_eligibility(report["eligibility"], max_rows)]
    s = report["sizes"]
    lines.append("")
    if s["packed_weights"]:
        lines.append(f"packed {s['packed_weights']} weights as {t['format']}: {_mb(s['dense_bytes'])} dense -> "
                     f"{_mb(s['packed_bytes'])} packed ({s['ratio_to_dense']:.1%} of dense; "
                     f"{s['ratio_to_bound']:.3f}x the information bound {_mb(s['bound_bytes'])}); decode verified bit for bit")
    else:
        lines.append("no weight is packed: nothing is eligible (see the reasons above)")
    if "model_bytes" in s:
        files = f"model.onnx {_mb(s['model_bytes'])} ({report['emit']})"
        if "model_data_bytes" in s:
            files += f" + data {_mb(s['model_data_bytes'])}"
        files += f", weights.bin {_mb(s['weights_bin_bytes'])}; dense model {_mb(s['dense_model_bytes'])}"
        if "gzip_dense_model_bytes" in s:
            files += f", gzip -9 of it {_mb(s['gzip_dense_model_bytes'])}"
        lines.append(f"wrote {report['output']}: {files}")
    lines.append(report["speed_note"])
    return "\n".join(line if "\n" in line else fill(line) for line in lines)
