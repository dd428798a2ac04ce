"""Quantization as a job step: after pruning and repair, before packing and the parity gate.

`quantize_step` quantizes the pruned model with `quantize.quantize_model` on the calibration set pruning
used (evaluation data stays apart), in the QDQ layout of the target if there is one, and carries the masks
over to the quantized weights' names and layouts. `stage_table` is the per-stage report: dense fp32 ->
pruned -> pruned + quantized, each with its on-disk size (model + external data; packed bytes where a
target packs) and, when the gate runs, its parity metrics on the evaluation data."""

from __future__ import annotations

from pathlib import Path

from onnxprune.check.data import Dataset
from onnxprune.check.parity import Thresholds, compare
from onnxprune.core.errors import Opt, OptionError
from onnxprune.core.model import Model
from onnxprune.core.report import table
from onnxprune.pack.targets import Target
from onnxprune.pipeline import Context
from onnxprune.quantize.quantizer import (
    file_bytes,
    needs_calibration,
    quantize_model,
    renamed,
)

QUANTIZED_DTYPE = {"int8": "int8", "fp16": "float16"}  # --quantize mode -> the weights' dtype a target judges
STAGE_METRICS = ("cosine_mean", "rel_l2", "top1_agreement", "accuracy_drop", "exact_match")


def check_target_mode(mode: str | None, target: Target | None) -> None:
    if mode and target is not None and target.quantize_modes and mode not in target.quantize_modes:
        raise OptionError(f"target {target.name} runs ", Opt("prune.quantize", " or ".join(target.quantize_modes)),
                          f", not {mode} ({target.runtime})")


def quantize_step(ctx: Context, mode: str, calibration: Dataset | None, target: Target | None = None,
                  skip: tuple[str, ...] | list[str] = ()) -> dict:
    """Quantize `ctx.model` in place (`skip`: node / weight globs kept float); the masks, skip reasons and
    analysis follow the renamed weights."""
    check_target_mode(mode, target)
    if needs_calibration(mode) and calibration is None:
        raise OptionError(f"quantize {mode} calibrates activation ranges: give ", Opt("data.calibration", "FILE"))
    before = {w.key: w for w in ctx.analysis.weights}
    patterns = {k: ctx.masks.entries[k].pattern for k in ctx.masks.keys()}
    feeds = calibration.batches() if needs_calibration(mode) else None
    report = quantize_model(ctx.model, mode, feeds, layout=target.qdq_layout if target else "onnxruntime",
                            patterns=patterns, skip=skip)
    ctx.invalidate()
    after = ctx.analysis.by_key()
    for old, new in renamed(report).items():
        if old in ctx.masks:
            keep = before[old].matrix(ctx.masks.get(old))
            entry = ctx.masks.entries.pop(old)
            ctx.masks.set(new, after[new].unmatrix(keep), entry.pattern, entry.step)
        for reasons in (ctx.skipped, ctx.exclude):
            if old in reasons:
                reasons[new] = reasons.pop(old)
    if calibration is not None and needs_calibration(mode):
        report["calibration"] = calibration.describe()
    return report


def stage_parity(original: Model, candidate: Model, evaluation: Dataset, thresholds: Thresholds,
                 allow_guessed_shapes: bool) -> dict:
    """Per output: the parity metrics of one stage against the dense model."""
    report = compare(original, candidate, evaluation, thresholds, allow_guessed_shapes=allow_guessed_shapes)
    return {o.name: {k: v for k, v in o.metrics.items() if k in STAGE_METRICS} for o in report.outputs}


def output_bytes(path: str | Path) -> int:
    return file_bytes(Path(path))


def packed_sizes(pack_report: dict | None) -> dict:
    """The artifact's sizes for the stage table: model.onnx, packed bytes, and what the packed weights
    take dense in float32 (the prunable part of the dense model)."""
    if not pack_report:
        return {}
    s = pack_report["sizes"]
    fp32 = sum(4 * v["matrix"][0] * v["matrix"][1] for v in pack_report["packed"].values())
    return {"artifact_model_bytes": s.get("model_bytes"), "packed_bytes": s.get("packed_bytes"),
            "packed_weights_fp32_bytes": fp32,
            "packed_to_fp32": s["packed_bytes"] / fp32 if fp32 else None}


def render_stages(stages: list[dict]) -> str:
    dense = stages[0]["bytes"]
    rows = []
    for s in stages:
        metrics = "; ".join(f"{out}: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items())
                            for out, m in (s.get("parity") or {}).items())
        art = f"{s['artifact_model_bytes']:,}" if s.get("artifact_model_bytes") is not None else ""
        packed = (f"{s['packed_bytes']:,} ({s['packed_to_fp32']:.3f}x fp32)" if s.get("packed_to_fp32") is not None
                  else "")
        rows.append((s["stage"], f"{s['bytes']:,}", f"{s['bytes'] / dense:.3f}", art, packed, metrics or "-"))
    return table(["stage", "bytes on disk", "x first", "artifact model.onnx", "packed weights", "parity vs dense fp32"],
                 rows)
