"""The parity gate as a job: option values (CLI flags or a recipe's [data]/[check]) in, a verdict out.

`run_check` builds the data and thresholds, compares in onnxruntime and writes the JSON
report; the caller prints `report.render()` and turns `not report.passed` into exit code 1."""

from __future__ import annotations

import os
from typing import Mapping

import onnx

from onnxprune.check.data import Dataset, dataset_from_options
from onnxprune.check.parity import (
    ModelSource,
    ParityReport,
    compare,
    thresholds_from_options,
)
from onnxprune.core.model import Model
from onnxprune.core.progress import Timer, stage_line
from onnxprune.core.report import make_parent

THRESHOLD_KEYS = ("min_cosine", "max_rel_l2", "min_top1_agreement", "max_accuracy_drop", "atol", "rtol",
                   "min_snr_db", "max_abs", "min_exact_match", "output_thresholds")


def _model(model: ModelSource) -> Model:
    if isinstance(model, onnx.ModelProto):
        return Model(model)
    return model if isinstance(model, Model) else Model.load(model)


def run_check(original: ModelSource, candidate: ModelSource, opts: Mapping, *, dataset: Dataset | None = None,
              report_path: str | os.PathLike | None = None) -> ParityReport:
    """The gate from option values: data (unless `dataset` is given) and thresholds, compare (a stage
    line to the `onnxprune` logger), write the JSON report. Prints nothing: the caller prints
    `report.render()` (or `report.verdict()`) and exits 1 when `not report.passed`."""
    spec_model = _model(original)
    _model(candidate)  # a missing or unreadable candidate fails here with a one-line error
    dataset = dataset_from_options(spec_model.proto, opts, spec_model.base_dir) if dataset is None else dataset
    thresholds = thresholds_from_options(**{k: opts.get(k) for k in THRESHOLD_KEYS if opts.get(k) is not None})
    with Timer() as timer:
        report = compare(original, candidate, dataset, thresholds, batch_size=opts.get("batch_size", 1),
                         providers=[opts.get("provider") or "CPUExecutionProvider"], threads=opts.get("threads", 1),
                         allow_guessed_shapes=bool(opts.get("allow_guessed_shapes")))
    stage_line(f"parity: {'PASS' if report.passed else 'FAIL'} on {len(dataset)} samples", timer.seconds)
    if report_path:
        make_parent(report_path)
        report.write(report_path)
    return report
