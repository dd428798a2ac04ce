"""Sensitivity-driven allocation: per-layer pruning levels from measured curves, to a global budget.

Each layer (a weight, or a channel group) has a curve measured by pruning it alone at a few levels
(`onnxprune sensitivity`): the parity metric at each level (1 = identical to the original) and
what that level saves, as a fraction of the whole model, per budget kind. `allocate_from_curves`
picks one level per layer, greedily by marginal cost (metric drop per unit of budget saved, over
jumps to any higher level, so non-convex curves are handled), until the budget is met; then it
steps back layers whose higher level is no longer needed. Drops and savings are taken as additive
over layers (the usual first-order assumption of sensitivity pruning).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from onnxprune.core.errors import Opt, OptionError

# budget kind -> does VALUE give the fraction kept (params, MACs, latency) or the sparsity reached
BUDGET_KINDS = {"sparsity": "reached", "params": "kept", "macs": "kept", "latency": "kept"}


@dataclass(frozen=True)
class Budget:
    """`kind=value`: sparsity=0.5 (the share of prunable weights, or of removable channels, pruned) or
    params / macs / latency = the fraction of the original model's kept."""

    kind: str
    value: float

    @classmethod
    def parse(cls, text: str) -> "Budget":
        kind, sep, value = str(text).partition("=")
        try:
            v = float(value)
        except ValueError:
            v = -1.0
        if not sep or kind.strip() not in BUDGET_KINDS or not 0 < v < 1:
            raise OptionError(Opt("prune.budget"), f" {text!r}: use KIND=VALUE with KIND one of "
                              f"{', '.join(BUDGET_KINDS)} and 0 < VALUE < 1 (sparsity=0.5: half the weights pruned; "
                              "macs=0.6: 60% of the MACs kept)")
        return cls(kind.strip(), v)

    @property
    def saving(self) -> float:
        """The fraction of the model's total (of this kind) the allocation must remove."""
        return self.value if BUDGET_KINDS[self.kind] == "reached" else 1.0 - self.value

    def __str__(self) -> str:
        return f"{self.kind}={self.value:g}"


@dataclass
class Curve:
    """One layer's measurements: `metric[i]` at `levels[i]` (pruned alone), and `saved[kind][i]`: the
    fraction of the model's params / MACs / latency / prunable total removed at that level."""

    levels: list[float]
    metric: list[float]
    saved: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping) -> "Curve":
        return cls([float(x) for x in d["levels"]], [float(x) for x in d["metric"]],
                   {k: [float(x) for x in v] for k, v in d.get("saved", {}).items()})


@dataclass
class Allocation:
    """The chosen level per layer (0: left alone), the estimated saving and metric drop (sums over layers)."""

    levels: dict[str, float]
    saving: float
    drop: float
    met: bool


def _curves(curves: Mapping) -> dict[str, Curve]:
    return {k: c if isinstance(c, Curve) else Curve.from_dict(c) for k, c in curves.items()}


def densify(curve: Curve, step: float) -> Curve:
    """The curve with levels every `step` between the measured ones, metric and savings interpolated
    linearly from (0: metric 1, nothing saved), so the budget is met without the overshoot of coarse levels."""
    if step <= 0 or not curve.levels:
        return curve
    xs = [0.0] + list(curve.levels)
    grid = sorted({round(float(x), 9) for x in curve.levels} | {round(float(v), 9) for v in np.arange(step, xs[-1], step)})
    metric = np.interp(grid, xs, [1.0] + list(curve.metric))
    saved = {k: list(np.interp(grid, xs, [0.0] + list(v))) for k, v in curve.saved.items()}
    return Curve(grid, [float(m) for m in metric], {k: [float(x) for x in v] for k, v in saved.items()})


def allocate(curves: Mapping, budget: Budget | str, step: float = 0.05) -> Allocation:
    """The greedy allocation with its totals (see the module docstring); `step`: level resolution
    between the measured levels (0: measured levels only)."""
    budget = budget if isinstance(budget, Budget) else Budget.parse(budget)
    cs = {k: densify(c, step) for k, c in _curves(curves).items()}
    missing = sorted(k for k, c in cs.items() if budget.kind not in c.saved)
    if missing:
        have = sorted({kind for c in cs.values() for kind in c.saved})
        raise OptionError(Opt("prune.budget"), f" {budget}: the sensitivity curves have no {budget.kind} figures "
                          f"(layer {missing[0]!r}; they have {', '.join(have) or 'none'}); "
                          + ("latency is measured for channel groups only (unstructured zeros do not change it)"
                             if budget.kind == "latency" else "re-run the sensitivity analysis"))
    drop = {k: [0.0] + [max(0.0, 1.0 - m) for m in c.metric] for k, c in cs.items()}
    save = {k: [0.0] + list(c.saved[budget.kind]) for k, c in cs.items()}
    at = {k: 0 for k in cs}  # index into [dense] + levels
    need = budget.saving - 1e-12
    total = 0.0
    while total < need:
        best = None  # (cost per unit saved, -saved, layer, index)
        for k in sorted(cs):
            i = at[k]
            for j in range(i + 1, len(save[k])):
                ds = save[k][j] - save[k][i]
                if ds <= 0:
                    continue
                cand = (max(drop[k][j] - drop[k][i], 0.0) / ds, -ds, k, j)
                if best is None or cand < best:
                    best = cand
        if best is None:
            break
        _, _, k, j = best
        total += save[k][j] - save[k][at[k]]
        at[k] = j
    # step back what the budget no longer needs: the largest drop saved first
    improved = True
    while improved and total >= need:
        improved = False
        options = []
        for k in cs:
            for j in range(at[k]):
                delta = save[k][at[k]] - save[k][j]
                if total - delta >= need:
                    options.append((-(drop[k][at[k]] - drop[k][j]), delta, k, j))
        if options:
            gain, delta, k, j = min(options)
            if gain < 0:
                total -= delta
                at[k] = j
                improved = True
    levels = {k: (0.0 if at[k] == 0 else cs[k].levels[at[k] - 1]) for k in sorted(cs)}
    return Allocation(levels, total, sum(drop[k][at[k]] for k in cs), total >= need)


def allocate_from_curves(curves: Mapping, budget: Budget | str) -> dict[str, float]:
    """Per layer, the level to prune it at (0: left alone) so the model meets `budget` at the least
    summed metric drop; `curves`: layer -> Curve (or its dict form from a sensitivity report)."""
    return allocate(curves, budget).levels
