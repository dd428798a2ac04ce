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
from onnxprune.core.atomic import check_writable
from onnxprune.core.model import Model
from onnxprune.core.progress import Timer, stage_line
from onnxprune.core.report import make_parent
from onnxprune.jobs.html_report import require_plotting, write_html
from onnxprune.jobs.report_details import stage_sizes

THRESHOLD_KEYS = ("min_cosine", "max_rel_l2", "min_top1_agreement", "max_accuracy_drop", "atol", "rtol",
                   "min_snr_db", "max_abs", "min_exact_match", "output_thresholds")


def _model(model: ModelSource) -> Model:
    if isinstance(model, onnx.ModelProto):
        return Model(model)
    return model if isinstance(model, Model) else Model.load(model)


def preflight(original: ModelSource, dataset: Dataset, opts: Mapping) -> None:
    """The gate's checks of data and options that need the model's outputs (labels that fit a
    classifier output, per-output thresholds that name outputs), on the original and one sample, so a
    job fails before its work rather than after it."""
    if dataset.labels is None and not opts.get("output_thresholds"):
        return
    thresholds = thresholds_from_options(**{k: opts.get(k) for k in THRESHOLD_KEYS if opts.get(k) is not None})
    compare(original, original, dataset.subset(1), thresholds, allow_guessed_shapes=True)


def run_check(original: ModelSource, candidate: ModelSource, opts: Mapping, *, dataset: Dataset | None = None,
              report_path: str | os.PathLike | None = None,
              html_path: str | os.PathLike | None = None) -> ParityReport:
    """The gate from option values: data (unless `dataset` is given) and thresholds, compare (a stage
    line to the `onnxprune` logger), write the JSON report and the HTML page (`html_path`: the report with
    the sizes of both models). Prints nothing: the caller prints `report.render()` (or `report.verdict()`)
    and exits 1 when `not report.passed`."""
    if html_path:
        require_plotting()  # before any work
        check_writable(html_path, "HTML report")
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
    if html_path:
        models = [(stage, m) for stage, m in (("original", original), ("candidate", candidate))
                  if isinstance(m, (str, os.PathLike))]
        make_parent(html_path)
        write_html({"schema": "onnxprune.parity", **report.to_dict(), "sizes": stage_sizes(models)}, html_path)
    return report
