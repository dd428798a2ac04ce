"""`onnxprune check ORIGINAL CANDIDATE`: the accuracy parity gate (exit 0 pass, 1 parity failed, 2 input error).

Other commands that run the gate stack the same option bundles (`data_options`, `threshold_options`,
`run_options`) and call `onnxprune.jobs.gate.run_check` with the collected option values.
"""

from __future__ import annotations

import click

from onnxprune.check.data import DEFAULT_INT_RANGE
from onnxprune.cli import is_quiet, json_option, report_target, verbosity_options
from onnxprune.jobs.gate import run_check


def _stack(*options):
    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


data_options = _stack(
    click.option("--data", type=click.Path(), help="Inputs: an .npz keyed by input name (axis 0 = samples) or a "
                 "folder of .npz/.npy files. Without it, random inputs from the model's input spec."),
    click.option("--labels", type=click.Path(dir_okay=False), help="Integer class labels (.npy), one per sample; "
                 "or a 'labels' array in the .npz files."),
    click.option("--shape", "shapes", multiple=True, metavar="NAME=D1xD2...",
                 help="Feed shape of a synthetic input, e.g. x=1x3x224x224 (dynamic dims otherwise come from the "
                 "model's hints or are guessed, and the gate then needs --allow-guessed-shapes)."),
    click.option("--int-range", "int_ranges", multiple=True, metavar="[NAME=]LO,HI",
                 help=f"Synthetic integer values, inclusive (default {DEFAULT_INT_RANGE[0]},{DEFAULT_INT_RANGE[1]}); "
                 "NAME= limits it to one input."),
    click.option("--samples", type=click.IntRange(min=1),
                 help="Use the first N samples (synthetic: generate N, default 16)."),
    click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic inputs."),
)

threshold_options = _stack(
    click.option("--min-cosine", type=float, help="Least mean cosine similarity per output (default 0.99 when "
                 "no threshold is given)."),
    click.option("--max-rel-l2", type=float, help="Largest ||cand - ref|| / ||ref|| per output."),
    click.option("--min-top1-agreement", type=float, help="Least fraction of equal argmaxes (classifier outputs)."),
    click.option("--max-accuracy-drop", type=float, help="Largest accuracy drop against the labels (0.01 = 1 point)."),
    click.option("--atol", type=float, help="Elementwise: pass iff |cand - ref| <= atol + rtol*|ref| everywhere."),
    click.option("--rtol", type=float, help="See --atol (either alone checks with the other at 0)."),
    click.option("--min-snr-db", type=float, help="Least signal-to-noise ratio in dB per output."),
    click.option("--max-abs", type=float, help="Largest |cand - ref| per output."),
    click.option("--min-exact-match", type=float, help="Least fraction of equal elements (non-float outputs)."),
    click.option("--allow-guessed-shapes", is_flag=True, default=None,
                 help="Run the gate on synthetic inputs whose dynamic dims had to be guessed (refused by default: "
                 "a pass on guessed shapes proves little)."),
    click.option("--output-threshold", "output_thresholds", multiple=True, metavar="OUTPUT:KEY=VALUE[,KEY=VALUE]",
                 help="Override thresholds for one output, e.g. 'logits:min_cosine=0.995'."),
)

run_options = _stack(
    click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Samples per run, where the data and the model's batch dim allow batching."),
    click.option("--provider", default="CPUExecutionProvider", show_default=True,
                 help="onnxruntime execution provider."),
    click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
                 help="onnxruntime intra-op threads (fixed, for repeatable results)."),
)

@click.command("check")
@click.argument("original", type=click.Path(dir_okay=False))
@click.argument("candidate", type=click.Path(dir_okay=False))
@data_options
@threshold_options
@run_options
@json_option
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the JSON report here ('-': stdout).")
@click.option("--html", "html_path", metavar="REPORT.html", type=click.Path(dir_okay=False),
              help="Write a self-contained HTML report (metrics per output, thresholds, verdict, sizes; needs matplotlib).")
@verbosity_options
def command(original: str, candidate: str, report_path: str | None, as_json: bool, html_path: str | None,
            **opts) -> None:
    """Compare CANDIDATE with ORIGINAL in onnxruntime on the same inputs; exit 1 if a threshold fails."""
    report_path = report_target(report_path, as_json)
    report = run_check(original, candidate, opts, report_path=report_path, html_path=html_path)
    click.echo(report.verdict() if is_quiet() else report.render(), err=report_path == "-")
    if not report.passed:
        click.get_current_context().exit(1)
