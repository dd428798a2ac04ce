"""`onnxprune auto MODEL -o OUT --data CALIB [--eval-data EVAL] --budget KIND=VALUE [thresholds]`"""

from __future__ import annotations

import click
from click.core import ParameterSource

from onnxprune.cli import is_quiet, json_option, report_target, verbosity_options
from onnxprune.cli.check_cmd import data_options, run_options, threshold_options
from onnxprune.cli.prune_cmd import data_section, prune_options
from onnxprune.core.atomic import check_writable
from onnxprune.core.report import is_stdout, make_parent, table
from onnxprune.jobs.auto import (
    Budget,
    default_options,
    headline,
    run_auto,
)
from onnxprune.jobs.html_report import require_plotting, write_html
from onnxprune.jobs.prune_job import option_fields
from onnxprune.jobs.recipe import Recipe

# the search sets the level; gradual schedules and hooks are not searched; PruneOptions.budget (an
# allocation's target, where a build has it) is set per level by the search, not given as a flag
NOT_SEARCHED = ("sparsity", "steps", "initial_sparsity", "t0", "dt", "hooks", "budget")
DEFAULTED = ("criterion", "repair", "round_to")  # not given: the pattern's measured-best default


@click.command("auto")
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The chosen model (written only when a candidate passes).")
@click.option("--budget", "budget_text", required=True, metavar="KIND=VALUE", help=(
    "The most compression to try: macs=0.6 / latency=0.6 / size=0.3 (at most that fraction of the dense "
    "MACs, CPU latency or deflated bytes) or sparsity=0.5 (that fraction of the weights, or channels, removed)."))
@click.option("--max-candidates", type=click.IntRange(min=1), default=8, show_default=True,
              help="Candidates pruned, repaired and checked at most (budget probes not counted).")
@click.option("--resolution", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.01,
              show_default=True, help="Stop when the level is known to this step.")
@click.option("--latency-reps", type=click.IntRange(min=1), default=20, show_default=True,
              help="Interleaved runs per model for each latency measurement (median).")
@prune_options(exclude=NOT_SEARCHED)
@data_options
@click.option("--eval-data", type=click.Path(), help="Evaluation data (default: the other half of a seeded "
              "split of --data, disjoint from calibration).")
@threshold_options
@run_options
@json_option
@click.option("--report", "report_path", type=click.Path(dir_okay=False),
              help="Write the JSON report (chosen level, per-layer choices, search trace) here ('-': stdout).")
@click.option("--dump-recipe", "recipe_path", type=click.Path(dir_okay=False),
              help="Where the recipe that reproduces the model goes (default: OUT without .onnx + .recipe.toml).")
@click.option("--external-data", is_flag=True, help="Store weights in OUT.<hash>.data beside the model.")
@click.option("--html", "html_path", metavar="REPORT.html", type=click.Path(dir_okay=False),
              help="Write a self-contained HTML report of the search (trace, curves, chosen level; needs matplotlib).")
@verbosity_options
def command(model_path, output, budget_text, max_candidates, resolution, latency_reps, eval_data, report_path,
            recipe_path, as_json, external_data, html_path, **rest):
    """Find the most compressed model that passes the parity gate, up to --budget.

    Each candidate is pruned with calibration data (default: SparseGPT + least-squares repair; channel:
    L2 importance + least-squares refit, multiples of 16) and checked on evaluation data. Writes OUT, its
    recipe (reproduces OUT byte for byte with `onnxprune run`) and the report; exit 1 if nothing passes."""
    report_path = report_target(report_path, as_json)
    if html_path:
        require_plotting()  # before any work
        check_writable(html_path, "HTML report")
    budget = Budget.parse(budget_text)
    ctx = click.get_current_context()
    for name in DEFAULTED:
        if ctx.get_parameter_source(name) == ParameterSource.DEFAULT:
            rest[name] = None
    opts = default_options({k: rest.pop(k) for k in list(rest) if k in option_fields()})
    g = rest
    recipe = Recipe(
        prune=opts,
        input={"model": model_path},
        data=data_section(g, eval_data),
        check={"enabled": True, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}},
        output={"model": output, "external_data": external_data or None},
    )
    err = is_stdout(report_path)
    say = (lambda text: None) if is_quiet() else (lambda text: click.echo(text, err=True))
    result = run_auto(recipe, budget, max_candidates=max_candidates, resolution=resolution,
                      latency_reps=latency_reps, recipe_path=recipe_path, report_path=report_path, log=say)
    r = result.report
    if html_path:
        make_parent(html_path)
        write_html({"schema": "onnxprune.auto", **r}, html_path)
    rows = [(f"{p['level']:.4f}", f"{p['sparsity']:.3f}", f"{p['macs']:.3f}", f"{p['latency']:.3f}",
             f"{p['size']:.3f}", "PASS" if p["passed"] else "FAIL", f"{p['time_s']:.1f}") for p in r["trace"]]
    if not is_quiet():  # -q: the one-line result only
        click.echo(table(["level", "sparsity", "MACs", "latency", "size", "verdict", "time s"], rows), err=err)
        for note in r["notes"]:
            click.echo(f"note: {note}", err=err)
    if result.passed:
        c = r["chosen"]
        click.echo(f"chosen level {c['level']:g}: {headline(c)}\nwrote {output} and its recipe {r['recipe']} "
                   f"(onnxprune run {r['recipe']} reproduces it)", err=err)
        return
    failed = [p for p in r["trace"] if not p["passed"]]
    best = min(failed or r["trace"], key=lambda p: p["level"])  # the closest to passing
    empty = [p["level"] for p in r["trace"] if p["passed"]]  # passed, but removed nothing
    click.echo(f"no candidate passed (levels {best['level']:g} to {r['search']['cap_level']:g}"
               + (f"; level {max(empty):g} passed but removes nothing" if empty else "")
               + f"); nothing written as {output}. Closest, level {best['level']:g}: {headline(best)}; failed: "
               f"{'; '.join(best['failures']) or 'nothing, but it removes nothing'}", err=err)
    ctx.exit(1)
