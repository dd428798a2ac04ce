"""Sparsity sweeps: prune at several levels, run the parity gate at each, find the highest that passes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from onnxprune.check.parity import ParityReport, Thresholds, compare
from onnxprune.core.atomic import atomic_open
from onnxprune.core.model import Model
from onnxprune.core.progress import Timer, stage_line
from onnxprune.jobs.plots import chosen_level, png, sweep_figure
from onnxprune.jobs.prune_job import PruneOptions, prune_model

HEADLINE = ("top1_agreement", "cosine_mean", "rel_l2", "snr_db", "accuracy_drop")


def _point(sparsity: float, report: ParityReport, achieved: float) -> dict:
    first = report.to_dict()["outputs"][0]
    return {"sparsity": sparsity, "achieved_sparsity": achieved, "passed": report.passed,
            "output": first["name"], **{k: first["metrics"].get(k) for k in HEADLINE if k in first["metrics"]},
            "failures": report.failures()}


def prune_and_check(model_path: str | Path, opts: PruneOptions, sparsity: float, dataset, thresholds: Thresholds,
                    calibration=None, **compare_kw) -> dict:
    with Timer() as timer:
        original = Model.load(model_path)
        candidate = Model.load(model_path)
        _, summary = prune_model(candidate, dataclasses.replace(opts, sparsity=sparsity), calibration, progress=False)
        report = compare(original, candidate, dataset, thresholds, **compare_kw)
    point = _point(sparsity, report, achieved_sparsity(summary))
    shown = ", ".join(f"{k} {_metric(point[k])}" for k in HEADLINE if point.get(k) is not None)
    stage_line(f"sweep sparsity {sparsity:.3f}: {'PASS' if report.passed else 'FAIL'}"
               + (f" ({shown})" if shown else ""), timer.seconds)
    return point


def _metric(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def achieved_sparsity(summary: dict) -> float:
    """What a prune job reached: the pruned share of the selected weights, or for channel pruning
    the removed share of the channels that could be removed (frozen ones left out)."""
    if "totals" in summary:
        return summary["totals"]["sparsity_of_selected"]
    free = [r for r in summary["structured"]["groups"] if not r["frozen"]]
    removable = sum(r["channels_before"] - r["frozen_channels"] for r in free)
    return sum(r["channels_before"] - r["channels_after"] for r in free) / removable if removable else 0.0


def sweep(model_path, opts: PruneOptions, sparsities: list[float], dataset, thresholds: Thresholds,
          calibration=None, on_point: Callable[[dict], None] | None = None, **compare_kw) -> list[dict]:
    """Prune a fresh copy of the model at each sparsity and run the parity gate; one point per level
    (sparsity, achieved sparsity, headline metrics, verdict), logged as a stage line each.

    Example::

        points = sweep("model.onnx", PruneOptions(), [0.3, 0.5, 0.7], dataset, Thresholds(min_cosine=0.99))
    """
    points = []
    for s in sparsities:
        points.append(prune_and_check(model_path, opts, s, dataset, thresholds, calibration, **compare_kw))
        if on_point:
            on_point(points[-1])
    return points


def find_max(model_path, opts: PruneOptions, dataset, thresholds: Thresholds, calibration=None, lo: float = 0.0,
             hi: float = 0.99, resolution: float = 0.01, on_point=None, **compare_kw) -> tuple[float | None, list[dict]]:
    """Bisect for the highest sparsity that passes (assumes quality falls as sparsity rises).

    Example::

        best, points = find_max("model.onnx", PruneOptions(), dataset, Thresholds(min_top1_agreement=0.95))
    """
    points: list[dict] = []
    best = None

    def probe(s: float) -> bool:
        p = prune_and_check(model_path, opts, round(s, 4), dataset, thresholds, calibration, **compare_kw)
        points.append(p)
        if on_point:
            on_point(p)
        return p["passed"]

    if probe(hi):
        return hi, points
    while hi - lo > resolution:
        mid = (lo + hi) / 2
        if probe(mid):
            best, lo = round(mid, 4), mid
        else:
            hi = mid
    return best, sorted(points, key=lambda p: p["sparsity"])


def plot(points: list[dict], path: str | Path, title: str, thresholds: dict | None = None,
         max_passing: float | None = None) -> None:
    """A PNG of the metric curves with the threshold and the chosen level (needs the optional matplotlib extra)."""
    fig = sweep_figure(points, thresholds or {}, chosen_level(points, max_passing), title)
    with atomic_open(path) as f:
        f.write(png(fig, dpi=100))
