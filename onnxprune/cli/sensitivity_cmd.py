"""`onnxprune sensitivity MODEL --data CALIB [--eval-data EVAL] [--levels ...] [--workers N] [--executor ...]`"""

from __future__ import annotations

import click

from onnxprune.check.data import dataset_from_options
from onnxprune.check.parity import refuse_guessed_shapes
from onnxprune.cli import is_quiet, json_option, report_target, verbosity_options
from onnxprune.cli.check_cmd import data_options
from onnxprune.cli.prune_cmd import prune_options
from onnxprune.core.atomic import check_writable
from onnxprune.core.model import Model
from onnxprune.core.report import is_stdout, make_parent, table, write_json
from onnxprune.jobs.html_report import require_plotting, write_html
from onnxprune.jobs.plots import pyplot
from onnxprune.jobs.prune_job import PruneOptions, build_pipeline
from onnxprune.jobs.sensitivity import (
    DEFAULT_LEVELS,
    METRICS,
    Spec,
    parse_executor,
    parse_levels,
    plot_heatmap,
    run_sensitivity,
)

# pruning options that do not apply: each layer is pruned alone, one-shot, at each level in turn
NOT_MEASURED = ("sparsity", "scope", "overrides", "steps", "initial_sparsity", "t0", "dt", "hooks", "fold_constants",
                "reinit", "allocation", "budget", "sensitivity")


@click.command("sensitivity")
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("--levels", default=",".join(f"{v:g}" for v in DEFAULT_LEVELS), show_default=True,
              help="Comma-separated levels each layer is pruned at alone (channel: the share of its channels).")
@click.option("--metric", type=click.Choice(list(METRICS)), default="cosine", show_default=True,
              help="Parity metric (worst output): cosine, or top-1 agreement (classifier outputs).")
@prune_options(exclude=NOT_MEASURED)
@data_options
@click.option("--eval-data", type=click.Path(), help="Evaluation data (default: the other half of --data when the "
              "criterion or repair reads it, else --data).")
@click.option("--allow-guessed-shapes", is_flag=True, help="Measure on synthetic inputs at guessed shapes.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Evaluation samples per run, where the model's batch axis allows it.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Layers measured in parallel (processes, or Ray actors).")
@click.option("--executor", default="local", show_default=True, metavar="local|ray[:ADDRESS]",
              help="Where candidates run: a local process pool, or a Ray cluster (pip install 'onnxprune[ray]').")
@click.option("--no-latency", is_flag=True, help="Channel groups: do not time candidates in onnxruntime.")
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="Results cache (default: $ONNXPRUNE_CACHE or ~/.cache/onnxprune, /sensitivity).")
@click.option("--no-cache", is_flag=True, help="Measure again even when the cache has these results.")
@json_option
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the JSON report here ('-': stdout).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write a PNG heatmap, layers x levels "
              "(needs matplotlib: pip install 'onnxprune[plot]').")
@click.option("--html", "html_path", metavar="REPORT.html", type=click.Path(dir_okay=False),
              help="Write a self-contained HTML report (heatmap, table, shares; needs matplotlib).")
@verbosity_options
def command(model_path, levels, metric, eval_data, allow_guessed_shapes, batch_size, workers, executor, no_latency,
            cache_dir, no_cache, as_json, report_path, plot_path, html_path, **rest):
    """Prune every layer (or channel group) alone at each level and measure parity against the original:
    a table and heatmap of which layers tolerate pruning, with each layer's share of params, MACs and latency."""
    report_path = report_target(report_path, as_json)
    rest["pattern"] = rest["pattern"] or "unstructured"
    opts = PruneOptions.from_flags(rest)
    level_list = parse_levels(levels)
    parse_executor(executor)  # a missing ray fails here, before any work
    plt = pyplot() if plot_path else None
    if html_path:
        require_plotting()
        check_writable(html_path, "HTML report")
    for path, what in ((report_path, "report"), (plot_path, "plot")):
        if path and not is_stdout(path):
            check_writable(path, what)
    model = Model.load(model_path)
    data_opts = {k: rest.get(k) for k in ("labels", "samples", "seed", "shapes", "int_ranges")}
    calibration = dataset_from_options(model.proto, {**data_opts, "data": rest.get("data")}, model.base_dir)
    if eval_data:
        evaluation = dataset_from_options(model.proto, {**data_opts, "data": eval_data}, model.base_dir)
    elif rest.get("data") and opts.uses_calibration():
        calibration, evaluation = calibration.split(0.5, seed=0)  # disjoint, as prune --check
    else:
        evaluation = calibration
    if opts.needs_data() and not rest.get("data"):
        raise opts.no_data_error()
    if not allow_guessed_shapes:
        refuse_guessed_shapes(evaluation)
    spec = Spec(model_path, opts, calibration if rest.get("data") else None, evaluation, level_list, metric,
                build_pipeline, latency=not no_latency and opts.pattern == "channel", batch_size=batch_size)
    quiet = is_stdout(report_path)

    def on_layer(r: dict) -> None:
        if not is_quiet():
            click.echo(f"  {r['layer']}: " + ", ".join(f"{p['level']:g} -> {p['metric']:.4f}" for p in r["points"]), err=True)

    section = run_sensitivity(spec, workers=workers, executor=executor, cache_dir=cache_dir, use_cache=not no_cache,
                              on_layer=on_layer)
    kinds = [k for k in ("params", "macs", "latency") if any(k in s for s in section["shares"].values())]
    rows = [(name[:56], *(f"{v:.4f}" for v in row), *(f"{section['shares'][name].get(k, 0):.3f}" for k in kinds))
            for name, row in zip(section["layers"], section["matrix"])]
    if not is_quiet():  # -q: the one-line result only
        click.echo(table(["layer", *(f"{v:g}" for v in section["levels"]), *(f"{k} share" for k in kinds)], rows),
                   err=quiet)
    how = "from the cache" if section.get("cached") else f"in {section['seconds']:.1f} s"
    click.echo(f"{len(section['layers'])} layers x {len(section['levels'])} levels, {metric} "
               f"({METRICS[metric]}), {how}", err=quiet)
    if report_path:
        make_parent(report_path)
        write_json(report_path, {"model": model_path, "options": opts.to_dict(), "inputs": evaluation.describe(),
                                 "sensitivity": section}, "sensitivity")
    if plot_path:
        make_parent(plot_path)
        plot_heatmap(section, plot_path, f"{model_path} ({opts.pattern}, {metric})", plt)
    if html_path:
        make_parent(html_path)
        write_html({"schema": "onnxprune.sensitivity", "model": model_path, "options": opts.to_dict(),
                    "inputs": evaluation.describe(), "sensitivity": section}, html_path)
