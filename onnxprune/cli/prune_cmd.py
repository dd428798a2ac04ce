"""`onnxprune prune MODEL -o OUT ...`: magnitude (or calibration-aware) pruning, one-shot or gradual."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from onnxprune.cli import (
    SectionedCommand,
    is_quiet,
    json_option,
    print_job,
    report_target,
    verbosity_options,
)
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


SECTIONS = {
    "Pattern": ("sparsity", "pattern", "criterion", "granularity", "nm_remainder", "round_to", "channel_unit", "reinit"),
    "Scope (which weights, how much each)": ("scope", "allocation", "owl_lambda", "owl_m", "budget", "sensitivity",
                                             "overrides", "skip",
                                             "min_params", "fold_constants"),
    "Calibration data and repair": ("data", "labels", "samples", "seed", "shapes", "int_ranges", "calib_samples",
                                    "sequential", "repair"),
    "Schedule (gradual pruning, fine-tuning hooks)": ("steps", "initial_sparsity", "t0", "dt", "hooks", "masks_in"),
    "Target and quantization (prune for an accelerator, quantize, pack)": ("target_name", "emit", "block", "target_out",
                                                                            "quantize", "quantize_skip"),
    "Check (parity gate on the result)": ("run_gate", "eval_data", "min_cosine", "max_rel_l2", "min_top1_agreement",
                                          "max_accuracy_drop", "atol", "rtol", "min_snr_db", "max_abs",
                                          "min_exact_match", "allow_guessed_shapes", "output_thresholds",
                                          "batch_size", "provider", "threads"),
    "Output": ("output", "masks_out", "report_path", "as_json", "html_path", "external_data", "dump_recipe", "quiet", "verbose",
               "help"),
}

EXAMPLES = """
# 50% unstructured magnitude pruning, per layer
onnxprune prune m.onnx -o out/m.onnx --sparsity 0.5
# 2:4 for NVIDIA sparse tensor cores, SparseGPT from calibration data, gated
onnxprune prune m.onnx -o out/m.onnx --pattern 2:4 --criterion sparsegpt \\
    --data calib.npz --check
# gradual: 80% in 4 steps, your fine-tuning hook after each
onnxprune prune m.onnx -o out/m.onnx --sparsity 0.8 --steps 4 \\
    --hook tune.py:finetune --data calib.npz
# a quarter of the channels removed (faster on any CPU), refitted
onnxprune prune m.onnx -o out/m.onnx --pattern channel --sparsity 0.25 \\
    --repair lstsq --data calib.npz
# the job as a recipe, to rerun with `onnxprune run job.toml`
onnxprune prune m.onnx -o out/m.onnx --sparsity 0.6 --dump-recipe job.toml
"""


def data_section(flags: dict, eval_data: str | None) -> dict:
    """The recipe's [data] from the data flags, popped out of `flags` (what is left are the gate's)."""
    return {"calibration": flags.pop("data"), "evaluation": eval_data, "labels": flags.pop("labels"),
            "samples": flags.pop("samples"), "seed": flags.pop("seed"), "shapes": list(flags.pop("shapes")),
            "int_ranges": list(flags.pop("int_ranges"))}


@click.command("prune", cls=SectionedCommand, sections=SECTIONS, epilog=EXAMPLES)
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
@click.option("--html", "html_path", metavar="REPORT.html", type=click.Path(dir_okay=False), help="Write a self-contained HTML report (per-layer table, eligibility per target, parity, sizes, recipe; needs matplotlib).")
@click.option("--external-data", is_flag=True, help="Store weights in OUT.<hash>.data beside the model, named by its content (automatic above 2 GiB).")
@verbosity_options
@click.option("--target", "target_name", metavar="NAME", help="Prune in this target's pattern (only the layers it can use), then pack for it (see onnxprune targets).")
@click.option("--emit", type=click.Choice(["dense", "sparse-initializer", "portable"]), help="With --target: the artifact's ONNX form (default: the target's).")
@click.option("--block", metavar="RxC", help="With a block target: the block shape.")
@click.option("--target-out", type=click.Path(file_okay=False), help="With --target: the artifact folder (default: OUT without .onnx + .TARGET).")
@click.option("--dump-recipe", type=click.Path(dir_okay=False), help="Write the recipe equivalent to these flags (then run it).")
def command(model_path, output, eval_data, run_gate, masks_in, masks_out, report_path, as_json, html_path, external_data,
            target_name, emit, block, target_out, dump_recipe, **rest):
    """Prune MODEL's weights and write the result to OUT (the input file is never written)."""
    report_path = report_target(report_path, as_json)
    defaults = load_target(target_name, block=block).prune_defaults() if target_name else {"pattern": "unstructured"}
    if rest["pattern"] is None:
        rest["pattern"] = defaults["pattern"]
        if rest["sparsity"] is None:
            rest["sparsity"] = defaults.get("sparsity")
    opts = PruneOptions.from_flags(rest)
    g = rest  # the data and gate options
    recipe = Recipe(
        prune=opts,
        input={"model": model_path},
        data=data_section(g, eval_data),
        check={"enabled": run_gate or None, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}}
        if run_gate else {},
        target={"name": target_name, "emit": emit, "block": block, "out": target_out} if target_name else {},
        output={"model": output, "report": report_path, "html": html_path, "masks": masks_out, "masks_in": masks_in,
                "external_data": external_data or None},
    )
    if dump_recipe:
        make_parent(dump_recipe)
        atomic_write_text(dump_recipe, recipe.dumps(relative_to=Path(dump_recipe).parent))
    print_job(run_recipe(recipe, progress=not is_quiet(), measure=not is_quiet()), report_path)
