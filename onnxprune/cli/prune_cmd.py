"""`onnxprune prune MODEL -o OUT ...`: magnitude (or calibration-aware) pruning, one-shot or gradual."""

from __future__ import annotations

import dataclasses

import click

from onnxprune.cli import json_option, report_target
from onnxprune.cli.check_cmd import data_options, run_options, threshold_options
from onnxprune.core.atomic import atomic_write_text
from onnxprune.core.report import make_parent
from onnxprune.jobs.prune_job import PruneOptions, option_fields
from onnxprune.jobs.recipe import Recipe
from onnxprune.jobs.run import run_recipe
from onnxprune.pack.targets import load_target


def _flag(f: dataclasses.Field, kind: type):
    """The click option of one PruneOptions field (its flag, default, choices and help are declared there)."""
    meta = f.metadata
    kw: dict = {"help": meta["help"], "metavar": meta["metavar"]}
    if kind is bool:
        kw["is_flag"] = True
    elif kind is list:
        kw["multiple"] = True
    else:
        kw["default"] = f.default if meta["cli_default"] is dataclasses.MISSING else meta["cli_default"]
        kw["show_default"] = kw["default"] is not None
        if meta["choices"]:
            kw["type"] = click.Choice(list(meta["choices"]))
        elif meta["min"] is not None:
            kw["type"] = click.IntRange(min=meta["min"])
        else:
            kw["type"] = kind
    return click.option(meta["flag"] or "--" + f.name.replace("_", "-"), f.name, **kw)


def prune_options(exclude: tuple[str, ...] = (), only: tuple[str, ...] | None = None):
    """The pruning options as flags, one per PruneOptions field (except `exclude`; or `only` these), in field order."""
    kinds = option_fields()

    def decorate(f):
        for field in reversed(dataclasses.fields(PruneOptions)):
            if field.name not in exclude and (only is None or field.name in only):
                f = _flag(field, kinds[field.name])(f)
        return f
    return decorate


@click.command("prune")
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output model path (a missing folder is created).")
@prune_options()
@data_options
@click.option("--eval-data", type=click.Path(), help="Evaluation data for --check (default: --data; split in two halves when --data also calibrates).")
@click.option("--check", "run_gate", is_flag=True, help="Run the parity gate on the result (exit 1 if it fails).")
@threshold_options
@run_options
@click.option("--masks-in", type=click.Path(dir_okay=False), help="Start from these masks (.npz + .json manifest).")
@click.option("--masks-out", type=click.Path(dir_okay=False), help="Write the final masks (.npz + .json manifest).")
@json_option
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the JSON report here ('-': stdout).")
@click.option("--external-data", is_flag=True, help="Store weights in OUT.<hash>.data beside the model, named by its content (automatic above 2 GiB).")
@click.option("--quiet", is_flag=True, help="No table, no progress bar.")
@click.option("--target", "target_name", metavar="NAME", help="Prune in this target's pattern (only the layers it can use), then pack for it (see onnxprune targets).")
@click.option("--emit", type=click.Choice(["dense", "sparse-initializer", "portable"]), help="With --target: the artifact's ONNX form (default: the target's).")
@click.option("--block", metavar="RxC", help="With a block target: the block shape.")
@click.option("--target-out", type=click.Path(file_okay=False), help="With --target: the artifact folder (default: OUT without .onnx + .TARGET).")
@click.option("--dump-recipe", type=click.Path(dir_okay=False), help="Write the recipe equivalent to these flags (then run it).")
def command(model_path, output, eval_data, run_gate, masks_in, masks_out, report_path, as_json, external_data, quiet,
            target_name, emit, block, target_out, dump_recipe, **rest):
    """Prune MODEL's weights and write the result to OUT (the input file is never written)."""
    report_path = report_target(report_path, as_json)
    if rest["pattern"] is None:
        rest["pattern"] = str(load_target(target_name, block=block).pattern) if target_name else "unstructured"
    opts = PruneOptions.from_flags(rest)
    g = rest  # the data and gate options
    recipe = Recipe(
        prune=opts,
        input={"model": model_path},
        data={"calibration": g.pop("data"), "evaluation": eval_data, "labels": g.pop("labels"),
              "samples": g.pop("samples"), "seed": g.pop("seed"), "shapes": list(g.pop("shapes")),
              "int_ranges": list(g.pop("int_ranges"))},
        check={"enabled": run_gate or None, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}}
        if run_gate else {},
        target={"name": target_name, "emit": emit, "block": block, "out": target_out} if target_name else {},
        output={"model": output, "report": report_path, "masks": masks_out, "masks_in": masks_in,
                "external_data": external_data or None},
    )
    if dump_recipe:
        make_parent(dump_recipe)
        atomic_write_text(dump_recipe, recipe.dumps())
    result = run_recipe(recipe, quiet=quiet)
    if result.exit_code:
        click.get_current_context().exit(result.exit_code)
