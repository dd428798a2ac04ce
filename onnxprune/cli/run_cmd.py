"""`onnxprune run RECIPE [MODEL] [-o OUT] [--set section.key=value ...]`"""

from __future__ import annotations

import click

from onnxprune.cli import is_quiet, print_job, verbosity_options
from onnxprune.jobs.recipe import load_recipe, shipped_recipes
from onnxprune.jobs.run import run_recipe


@click.command("run")
@click.argument("recipe_name", metavar="RECIPE")
@click.argument("model_path", metavar="[MODEL]", required=False, type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output model (overrides output.model).")
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE", help="Override a recipe key (TOML value), e.g. prune.sparsity=0.6. Repeatable.")
@verbosity_options
def command(recipe_name: str, model_path: str | None, output: str | None, sets: tuple[str, ...]) -> None:
    """Run the job a recipe file (or a shipped recipe by name) declares.

    \b
    Shipped recipes: """
    sets = list(sets)
    if model_path:
        sets.append(f"input.model={_quote(model_path)}")
    if output:
        sets.append(f"output.model={_quote(output)}")
    recipe = load_recipe(recipe_name, sets)
    print_job(run_recipe(recipe, progress=not is_quiet(), measure=not is_quiet()), recipe.output.get("report"))


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


command.help += ", ".join(shipped_recipes()) or "(none)"
