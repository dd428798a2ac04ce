"""`onnxprune sweep MODEL --sparsities 0.3,0.5,0.7,0.9 --data D [--find-max] [thresholds]`"""

from __future__ import annotations

import dataclasses

import click

from onnxprune.check.data import dataset_from_options
from onnxprune.check.parity import refuse_guessed_shapes, thresholds_from_options
from onnxprune.cli import (
    cli_flag,
    is_quiet,
    json_option,
    report_target,
    verbosity_options,
)
from onnxprune.cli.check_cmd import data_options, run_options, threshold_options
from onnxprune.cli.prune_cmd import prune_options
from onnxprune.core.atomic import check_writable, keep_on_error
from onnxprune.core.errors import OnnxPruneError, OptionError
from onnxprune.core.model import Model
from onnxprune.core.report import is_stdout, make_parent, table, write_json
from onnxprune.jobs.gate import THRESHOLD_KEYS
from onnxprune.jobs.html_report import require_plotting, write_html
from onnxprune.jobs.plots import pyplot
from onnxprune.jobs.prune_job import PruneOptions
from onnxprune.jobs.sweep import HEADLINE, find_max, plot, sweep
from onnxprune.prune.patterns import Pattern

NOT_SWEPT = ("sparsity", "steps", "initial_sparsity", "t0", "dt", "hooks",  # one-shot, at each level in turn
             "quantize", "quantize_skip")  # the curve is pruning's: quantize the chosen level with prune --quantize


def _sparsities(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(not 0 <= v < 1 for v in values):
        raise OptionError(f"--sparsities {text!r}: give comma-separated values in [0, 1), e.g. 0.3,0.5,0.7,0.9")
    return values


def _refuse_nm(pattern: str) -> None:
    fixed = Pattern.parse(pattern).fixed_sparsity if pattern != "channel" else None
    if fixed is not None:
        raise OptionError(f"sweep --pattern {pattern}: N:M has one sparsity (1 - N/M = {fixed:g}), so there is no "
                          f"curve to sweep; check that one with `onnxprune prune MODEL -o OUT --pattern {pattern} "
                          "--check`, or sweep --pattern unstructured")


@click.command("sweep")
@verbosity_options
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("--sparsities", default="0.3,0.5,0.7,0.9", show_default=True, help="Comma-separated sparsity levels.")
@click.option("--find-max", "bisect", is_flag=True, help="Bisect for the highest sparsity that passes the thresholds.")
@prune_options(exclude=NOT_SWEPT)
@data_options
@threshold_options
@run_options
@json_option
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the JSON curve here ('-': stdout).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write a PNG of the curve (needs matplotlib).")
@click.option("--html", "html_path", metavar="REPORT.html", type=click.Path(dir_okay=False),
              help="Write a self-contained HTML report (curves with the threshold and the chosen level, the table, "
              "the recipe of the chosen level; needs matplotlib).")
def command(model_path, sparsities, bisect, report_path, as_json, plot_path, html_path, **rest):
    """Prune at each sparsity level and report the parity metric curve (not for N:M, which has one sparsity).

    Every level and the plot dependency are checked before the first run; if a level fails while
    running, the report keeps the points measured so far."""
    report_path = report_target(report_path, as_json)
    pattern = rest["pattern"] = rest["pattern"] or "unstructured"
    _refuse_nm(pattern)
    opts = PruneOptions.from_flags(rest)
    levels = None if bisect else _sparsities(sparsities)
    for s in levels or ():
        dataclasses.replace(opts, sparsity=s)  # validates the level with these options
    if plot_path:
        pyplot()
    if html_path:
        require_plotting()
    for path, what in ((report_path, "report"), (plot_path, "plot"), (html_path, "HTML report")):
        if path:
            check_writable(path, what)  # before the sweep, not after it
    model = Model.load(model_path)
    dataset = dataset_from_options(model.proto, rest, model.base_dir)
    calibration = None
    if opts.uses_calibration():
        calibration, dataset = dataset.split(0.5, seed=0)  # disjoint calibration and evaluation halves
    thresholds = thresholds_from_options(**{k: rest.get(k) for k in THRESHOLD_KEYS if rest.get(k) is not None})
    kw = {"batch_size": rest.get("batch_size", 1), "providers": [rest.get("provider") or "CPUExecutionProvider"],
          "threads": rest.get("threads", 1), "allow_guessed_shapes": bool(rest.get("allow_guessed_shapes"))}
    if not kw["allow_guessed_shapes"]:
        refuse_guessed_shapes(dataset)  # before the first level, not at it
    measured: list[dict] = []

    def on_point(p: dict) -> None:
        measured.append(p)

    def write_report(points: list[dict], best: float | None, error: str | None) -> None:
        report = {"model": model_path, "options": opts.to_dict(), "inputs": dataset.describe(),
                  "thresholds": thresholds.to_dict(), "points": points, "max_passing": best, "error": error}
        if report_path:
            make_parent(report_path)
            write_json(report_path, report, "sweep")
        if html_path:
            make_parent(html_path)
            write_html({"schema": "onnxprune.sweep", **report}, html_path)

    try:
        if bisect:
            best, points = find_max(model_path, opts, dataset, thresholds, calibration, on_point=on_point, **kw)
        else:
            best, points = None, sweep(model_path, opts, levels, dataset, thresholds, calibration,
                                         on_point=on_point, **kw)
    except OnnxPruneError as e:  # keep what was measured
        write_report(sorted(measured, key=lambda p: p["sparsity"]), None, e.render(cli_flag))
        for path in (report_path, html_path):
            if path and not is_stdout(path):
                keep_on_error(path)
        raise
    cols = [k for k in HEADLINE if any(p.get(k) is not None for p in points)]
    if not is_quiet():
        click.echo(table(["sparsity", "achieved", *cols, "verdict"],
                         [(p["sparsity"], p["achieved_sparsity"], *(p.get(k) for k in cols),
                           "PASS" if p["passed"] else "FAIL") for p in points]), err=is_stdout(report_path))
    if bisect:
        click.echo(f"highest passing sparsity: {best if best is not None else 'none (even the lowest probed fails)'}",
                   err=is_stdout(report_path))
    write_report(points, best, None)
    if plot_path:
        make_parent(plot_path)
        plot(points, plot_path, f"{model_path} ({pattern})", thresholds.to_dict(), best)
