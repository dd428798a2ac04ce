"""OWL: outlier-weighted layerwise sparsity (Yin et al., 2024), one sparsity per weight.

A layer's *outlier ratio* D is the share of its Wanda scores |W_ij|·‖X_j‖₂ (calibration
activations of the dense model) above `m` times the layer's mean score. Layers with more outliers
are pruned less: sparsity = target + λ − 2λ·(D − D_min)/(D_max − D_min), then shifted by one
constant (clipped to [0, MAX_SPARSITY]) so the parameter-weighted mean is the target again.

N:M fixes every layer's sparsity at 1 − N/M, so the choice is per layer between the pattern and
dense: layers are kept dense in decreasing order of D while the overall sparsity of the allocated
layers stays at or above target − λ (a layer too large to fit is passed over).

Weights without statistics (inside If/Loop subgraphs) keep the uniform target; skipped, too small
and overridden weights are left to the usual allocation.
"""

from __future__ import annotations

import fnmatch

import numpy as np

from onnxprune.core.errors import Opt, OptionError
from onnxprune.pipeline import ANALYSIS_FRESH, Context, Pass, PassResult
from onnxprune.pipeline.calibration import CALIBRATION_DATA, calibration_state
from onnxprune.prune.allocate import allocate, parse_override
from onnxprune.prune.criteria import wanda_matrix
from onnxprune.prune.patterns import Pattern

DEFAULT_LAMBDA = 0.08  # the paper's λ for LLaMA
DEFAULT_M = 5.0  # its outlier threshold M
MAX_SPARSITY = 0.99


def outlier_ratio(scores: np.ndarray, m: float) -> float:
    """Share of the scores above m times their mean."""
    mean = float(scores.mean())
    return float(np.count_nonzero(scores > m * mean)) / scores.size if mean > 0 else 0.0


def spread(ratios: dict[str, float], params: dict[str, int], target: float, lam: float) -> dict[str, float]:
    """Unstructured/blocks: target ± λ, the most outliers lowest, parameter-weighted mean = target."""
    keys = list(ratios)
    d = np.array([ratios[k] for k in keys])
    p = np.array([params[k] for k in keys], dtype=np.float64)
    width = d.max() - d.min() if d.size else 0.0
    base = target + lam - 2 * lam * (d - d.min()) / width if width > 0 else np.full(d.size, target)

    def mean_at(c: float) -> float:
        return float(np.clip(base + c, 0.0, MAX_SPARSITY) @ p / p.sum())

    c = target - float(base @ p / p.sum())  # exact unless a layer leaves [0, MAX_SPARSITY]
    if ((base + c) < 0).any() or ((base + c) > MAX_SPARSITY).any():
        lo, hi = -1.0, 1.0  # mean_at is monotone in the shift: bisect to the target
        for _ in range(60):
            c = (lo + hi) / 2
            lo, hi = (c, hi) if mean_at(c) < target else (lo, c)
    s = np.clip(base + c, 0.0, MAX_SPARSITY)
    return {k: float(v) for k, v in zip(keys, s)}


def dense_or_nm(ratios: dict[str, float], params: dict[str, int], fixed: float, lam: float) -> dict[str, float]:
    """N:M: each layer at `fixed` or dense (0), the most outliers dense first, overall >= fixed - λ."""
    total = sum(params[k] for k in ratios)
    pruned = fixed * total
    out = dict.fromkeys(ratios, fixed)
    for k in sorted(ratios, key=lambda k: (-ratios[k], k)):
        if ratios[k] > 0 and pruned - fixed * params[k] >= (fixed - lam) * total - 1e-9:
            out[k] = 0.0
            pruned -= fixed * params[k]
    return out


def owl_allocation(ctx: Context, sparsity: float, pattern: str, lam: float = DEFAULT_LAMBDA, m: float = DEFAULT_M,
                   overrides: list[str] = (), skip: list[str] = (), min_params: int = 0,
                   nm_remainder: str = "skip") -> tuple[dict[str, float], dict[str, float]]:
    """({weight key: sparsity}, {weight key: outlier ratio}) for the weights the uniform allocation
    would prune at `sparsity`, from the statistics of the model as it is now (dense)."""
    pat = Pattern.parse(pattern)
    uniform = allocate(ctx.analysis.weights, sparsity, pat, "layer", [parse_override(o) for o in overrides], skip,
                       min_params, nm_remainder, ctx.exclude)
    override_globs = [parse_override(o)[0] for o in overrides]
    state = calibration_state(ctx)
    ratios, params = {}, {}
    for w in ctx.analysis.weights:
        if w.key not in uniform.targets or _overridden(w, override_globs):
            continue
        ctx.at = w.key
        st = state.get(w, gram=False)
        if st is None:
            continue
        ratios[w.key] = outlier_ratio(wanda_matrix(w, ctx.model.read(w.key), ctx, st), m)
        params[w.key] = w.params
    if not ratios:
        return {}, {}
    fixed = pat.fixed_sparsity
    chosen = dense_or_nm(ratios, params, fixed, lam) if fixed is not None else spread(ratios, params, sparsity, lam)
    return chosen, ratios


def _overridden(w, globs: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(n, g) for g in globs for n in [w.key] + [u.node for u in w.uses])


class OwlAllocationPass(Pass):
    """Choose every weight's final sparsity by OWL (sets `ctx.allocation`); changes no weight."""

    name = "allocate-owl"
    requires = (ANALYSIS_FRESH, CALIBRATION_DATA)

    def __init__(self, sparsity: float, pattern: str = "unstructured", lam: float = DEFAULT_LAMBDA,
                 m: float = DEFAULT_M, overrides: list[str] = (), skip: list[str] = (), min_params: int = 0,
                 nm_remainder: str = "skip"):
        if not 0 <= lam < 1:
            raise OptionError(Opt("prune.owl_lambda"), f" {lam:g}: use 0 <= lambda < 1 (e.g. 0.08)")
        if not m > 0:
            raise OptionError(Opt("prune.owl_m"), f" {m:g}: use a threshold > 0 (e.g. 5)")
        self.sparsity, self.pattern, self.lam, self.m = float(sparsity), pattern, float(lam), float(m)
        self.overrides, self.skip, self.min_params, self.nm_remainder = list(overrides), list(skip), min_params, nm_remainder

    def call(self, ctx: Context) -> PassResult:
        chosen, ratios = owl_allocation(ctx, self.sparsity, self.pattern, self.lam, self.m, self.overrides,
                                        self.skip, self.min_params, self.nm_remainder)
        ctx.allocation = chosen
        result = PassResult(self.name, False)
        for key, s in chosen.items():
            result.weights[key] = {"outlier_ratio": ratios[key], "sparsity": s}
        if chosen:
            params = {w.key: w.params for w in ctx.analysis.weights}
            total = sum(params[k] for k in chosen)
            mean = sum(s * params[k] for k, s in chosen.items()) / total
            result.notes.append(f"owl: {len(chosen)} weights, lambda {self.lam:g}, M {self.m:g}: sparsity "
                                f"{min(chosen.values()):.3f}..{max(chosen.values()):.3f}, {mean:.4f} by params")
        else:
            result.notes.append("owl: no weight with calibration statistics; the allocation stays uniform")
        return result
