"""`onnxprune inspect MODEL [--json] [--fold-constants]`"""

import click

from onnxprune.analyze.inspect import inspect_model, render
from onnxprune.cli import verbosity_options
from onnxprune.core.model import Model
from onnxprune.core.report import to_json
from onnxprune.prune.fold import fold_constants


@click.command("inspect")
@verbosity_options
@click.argument("model_path", metavar="MODEL", type=click.Path())  # Model.load reports a bad path in one line
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (schema onnxprune.inspect v1).")
@click.option("--fold-constants", "fold", is_flag=True, help="Fold constant subexpressions first, so weights built from constants become prunable.")
def command(model_path: str, as_json: bool, fold: bool) -> None:
    """List every prunable weight with its op, layout and reduction axis, and totals."""
    model = Model.load(model_path)
    if fold:
        fold_constants(model)
    report = inspect_model(model)
    click.echo(to_json(report, "inspect") if as_json else render(report), nl=not as_json)
