"""Figures for reports (the optional `plot` extra, matplotlib): the sweep curve, bar charts, heatmaps and
generic curves, as deterministic PNG bytes (no timestamp or software tag in the file)."""

from __future__ import annotations

import io
import math
from typing import Sequence

from onnxprune.core.errors import Opt, OptionError

# sweep metric -> the threshold that limits it
METRIC_THRESHOLDS = {"cosine_mean": "min_cosine", "top1_agreement": "min_top1_agreement", "rel_l2": "max_rel_l2",
                     "snr_db": "min_snr_db", "accuracy_drop": "max_accuracy_drop"}
_PASS, _FAIL, _LINE, _MARK = "#2a7d2a", "#c0392b", "#34495e", "#d68910"


def pyplot(opt: Opt = Opt("sweep.plot")):
    """matplotlib.pyplot on the Agg backend, or an OptionError naming `opt` and how to install it
    (call it before the work, so a missing plot dependency fails first)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise OptionError(opt, " needs matplotlib: pip install 'onnxprune[plot]'") from e
    return plt


def png(fig, dpi: int = 90) -> bytes:
    """The figure as PNG bytes, closed afterwards; no metadata that varies between runs."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None}, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def chosen_level(points: list[dict], max_passing: float | None) -> float | None:
    """The level a sweep recommends: the bisection's result, else the highest passing level."""
    if max_passing is not None:
        return max_passing
    passing = [p["sparsity"] for p in points if p.get("passed")]
    return max(passing) if passing else None


def sweep_figure(points: list[dict], thresholds: dict, chosen: float | None, title: str):
    """One panel per measured metric against sparsity: pass/fail markers, the threshold line where
    one is set, and the chosen level as a vertical line."""
    plt = pyplot()
    pts = sorted(points, key=lambda p: p["sparsity"])
    metrics = [m for m in METRIC_THRESHOLDS if any(_finite(p.get(m)) for p in pts)]
    metrics.sort(key=lambda m: thresholds.get(METRIC_THRESHOLDS[m]) is None)  # thresholded metrics first
    metrics = metrics[:3] or ["cosine_mean"]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(6.4, 2.3 * len(metrics) + 0.6), sharex=True, squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        xs = [p["sparsity"] for p in pts if _finite(p.get(metric))]
        ys = [p[metric] for p in pts if _finite(p.get(metric))]
        ax.plot(xs, ys, color=_LINE, lw=1.5, zorder=1)
        for p in pts:
            if _finite(p.get(metric)):
                ax.scatter([p["sparsity"]], [p[metric]], color=_PASS if p.get("passed") else _FAIL, zorder=2, s=28)
        limit = thresholds.get(METRIC_THRESHOLDS[metric])
        if _finite(limit):
            ax.axhline(limit, color=_FAIL, ls="--", lw=1, label=f"threshold {METRIC_THRESHOLDS[metric]} = {limit:g}")
        if chosen is not None:
            ax.axvline(chosen, color=_MARK, lw=1.2, label=f"chosen sparsity {chosen:g}")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    axes[-1, 0].set_xlabel("requested sparsity (green: passes the gate, red: fails)")
    axes[0, 0].set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def bar_figure(labels: Sequence[str], values: Sequence[float], xlabel: str, title: str, marks: Sequence[bool] = (),
               limit: float | None = None, marked: str = "dense"):
    """Horizontal bars, one per label (in the given order, top to bottom); `marks` greys bars out
    (e.g. layers left dense, labelled `marked` when zero); `limit` draws a reference line (the requested sparsity)."""
    plt = pyplot()
    n = len(labels)
    fig, ax = plt.subplots(figsize=(7.5, min(0.22 * n + 1.2, 40)))
    colors = ["#b0b0b0" if (marks and marks[i]) else "#2e86c1" for i in range(n)]
    ax.barh(range(n), values, color=colors)
    for i, v in enumerate(values):
        ax.text(v + 0.01, i, marked if marks and marks[i] and not v else f"{v:.1%}", va="center", fontsize=6,
                color="#566573")
    ax.set_yticks(range(n))
    ax.set_yticklabels([_short(s) for s in labels] if n <= 150 else [""] * n, fontsize=7)
    ax.invert_yaxis()
    if limit is not None:
        ax.axvline(limit, color=_MARK, ls="--", lw=1, label=f"requested {limit:g}")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlim(0, 1)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def heatmap_figure(rows: Sequence[str], cols: Sequence, matrix: Sequence[Sequence], xlabel: str, ylabel: str,
                   title: str):
    """A rows x columns matrix of numbers (None: not measured) as a heatmap with a colour bar."""
    plt = pyplot()
    import numpy as np

    data = np.array([[v if _finite(v) else np.nan for v in row] for row in matrix], dtype=float)
    fig, ax = plt.subplots(figsize=(min(1.0 + 0.7 * len(cols), 14), min(0.28 * len(rows) + 1.6, 40)))
    im = ax.imshow(data, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels([f"{c:g}" if _finite(c) else str(c) for c in cols], fontsize=8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([_short(str(r)) for r in rows] if len(rows) <= 150 else [""] * len(rows), fontsize=7)
    if data.size <= 400:
        for (i, j), v in np.ndenumerate(data):
            if math.isfinite(v):
                ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=6,
                        color="white" if v < np.nanmean(data) else "black")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    return fig


def curve_figure(x: Sequence[float], series: dict[str, Sequence], xlabel: str, title: str,
                 passed: Sequence | None = None, chosen: float | None = None, limits: dict | None = None):
    """One panel per series against x (up to four), pass/fail markers when `passed` is given, a series'
    threshold from `limits` as a dashed line and the chosen x as a vertical line."""
    plt = pyplot()
    names = list(series)[:4]
    fig, axes = plt.subplots(len(names), 1, figsize=(6.4, 2.1 * len(names) + 0.6), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        pts = [(a, b, passed[i] if passed else None) for i, (a, b) in enumerate(zip(x, series[name]))
               if _finite(a) and _finite(b)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=_LINE, lw=1.2, marker=None if passed else "o", ms=3)
        if passed:
            for a, b, ok in pts:
                ax.scatter([a], [b], color=_PASS if ok else _FAIL, s=20, zorder=2)
        if (limits or {}).get(name) is not None:
            ax.axhline(limits[name], color=_FAIL, ls="--", lw=1, label=f"threshold {limits[name]:g}")
        if chosen is not None:
            ax.axvline(chosen, color=_MARK, lw=1.2, label=f"chosen {chosen:g}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.set_ylabel(name if len(name) <= 28 else "…" + name[-27:], fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel(xlabel)
    axes[0, 0].set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def _short(text: str, width: int = 48) -> str:
    """A long node name shortened in the middle, with an ellipsis (a plot label, not the table)."""
    text = text if len(text) <= width else text[: width // 2 - 1] + "…" + text[-(width // 2):]
    return text.replace("$", r"\$")  # not mathtext
