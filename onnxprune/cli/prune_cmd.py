"""`onnxprune prune MODEL -o OUT ...`: magnitude (or calibration-aware) pruning, one-shot or gradual."""

from __future__ import annotations

import click

from onnxprune.cli.check_cmd import data_options, run_options, threshold_options
from onnxprune.core.atomic import atomic_write_text
from onnxprune.core.report import make_parent
from onnxprune.jobs.prune_job import PruneOptions
from onnxprune.jobs.recipe import Recipe
from onnxprune.jobs.run import run_recipe
from onnxprune.pack.targets import load_target
from onnxprune.prune.structured import DEFAULT_ROUND_TO


def prune_options(f):
    """The pruning options, shared by `prune` and `sweep`."""
    opts = [
        click.option("--pattern", default=None, help="unstructured (default), N:M (e.g. 2:4), RxC blocks (e.g. 4x4), or channel (remove whole channels: smaller, faster); with --target, the target's pattern."),
        click.option("--scope", type=click.Choice(["layer", "global"]), default="layer", show_default=True, help="layer: every weight reaches the sparsity; global: one ranking over all selected weights."),
        click.option("--criterion", type=click.Choice(["magnitude", "wanda", "sparsegpt"]), default="magnitude", show_default=True, help="Weight importance: magnitude, or calibration-aware wanda / sparsegpt (need --data)."),
        click.option("--calib-samples", type=click.IntRange(min=1), help="Calibration samples to use from --data (default: all)."),
        click.option("--sequential", is_flag=True, help="Recapture calibration statistics layer by layer from the partly pruned model."),
        click.option("--repair", type=click.Choice(["none", "lstsq", "bias", "lstsq+bias"]), default="none", show_default=True, help="Built-in repair after each pruning step from calibration data: masked least squares and/or bias correction."),
        click.option("--skip", multiple=True, metavar="GLOB", help="Leave weights (or their nodes) matching GLOB dense. Repeatable."),
        click.option("--override", multiple=True, metavar="GLOB=S", help="Per-name sparsity, e.g. 'conv1*=0.3'. Repeatable."),
        click.option("--min-params", default=1024, show_default=True, type=int, help="Weights smaller than this stay dense."),
        click.option("--nm-remainder", type=click.Choice(["skip", "pad"]), default="skip", show_default=True, help="N:M on a reduction length that is not a multiple of M: leave dense, or pad the last group."),
        click.option("--round-to", default=DEFAULT_ROUND_TO, show_default=True, type=click.IntRange(min=1), help="--pattern channel: kept channels are a multiple of this (16 suits onnxruntime's AVX-512 convolutions, as in the cpu-channels recipe)."),
        click.option("--reinit", is_flag=True, help="--pattern channel: emit the pruned architecture freshly initialised, for training from scratch."),
        click.option("--fold-constants", is_flag=True, help="Fold constant subexpressions first so weights assembled from constants become prunable."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


@click.command("prune")
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output model path (a missing folder is created).")
@click.option("--sparsity", type=float, default=None, help="Final sparsity (default: 1-N/M for N:M, else 0.5).")
@prune_options
@click.option("--steps", default=1, show_default=True, help="Gradual pruning steps (1 = one-shot).")
@click.option("--initial-sparsity", default=0.0, show_default=True, help="s_i of the cubic schedule.")
@click.option("--t0", default=0, show_default=True, help="First pruning step t0, in the hook's units.")
@click.option("--delta-t", "dt", default=1, show_default=True, help="Steps between pruning events, in the hook's units.")
@click.option("--hook", "hooks", multiple=True, metavar="MODULE:FN", help="Fine-tuning hook run after each step (module:function or file.py:function).")
@data_options
@click.option("--eval-data", type=click.Path(), help="Evaluation data for --check (default: --data; split in two halves when --data also calibrates).")
@click.option("--check", "run_gate", is_flag=True, help="Run the parity gate on the result (exit 1 if it fails).")
@threshold_options
@run_options
@click.option("--masks-in", type=click.Path(dir_okay=False), help="Start from these masks (.npz + .json manifest).")
@click.option("--masks-out", type=click.Path(dir_okay=False), help="Write the final masks (.npz + .json manifest).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the JSON report here ('-': stdout).")
@click.option("--external-data", is_flag=True, help="Store weights in OUT.<hash>.data beside the model, named by its content (automatic above 2 GiB).")
@click.option("--quiet", is_flag=True, help="No table, no progress bar.")
@click.option("--target", "target_name", metavar="NAME", help="Prune in this target's pattern (only the layers it can use), then pack for it (see onnxprune targets).")
@click.option("--emit", type=click.Choice(["dense", "sparse-initializer", "portable"]), help="With --target: the artifact's ONNX form (default: the target's).")
@click.option("--block", metavar="RxC", help="With a block target: the block shape.")
@click.option("--target-out", type=click.Path(file_okay=False), help="With --target: the artifact folder (default: OUT without .onnx + .TARGET).")
@click.option("--dump-recipe", type=click.Path(dir_okay=False), help="Write the recipe equivalent to these flags (then run it).")
def command(model_path, output, sparsity, pattern, scope, criterion, calib_samples, sequential, repair, skip, override, min_params, nm_remainder,
            round_to, reinit,
            fold_constants, steps, initial_sparsity, t0, dt, hooks, eval_data, run_gate, masks_in, masks_out,
            report_path, external_data, quiet, target_name, emit, block, target_out, dump_recipe, **data_and_gate):
    """Prune MODEL's weights and write the result to OUT (the input file is never written)."""
    if pattern is None:
        pattern = str(load_target(target_name, block=block).pattern) if target_name else "unstructured"
    opts = PruneOptions(sparsity=sparsity, pattern=pattern, scope=scope, criterion=criterion,
                        overrides=list(override), skip=list(skip), min_params=min_params, nm_remainder=nm_remainder,
                        steps=steps, initial_sparsity=initial_sparsity, t0=t0, dt=dt, hooks=list(hooks),
                        fold_constants=fold_constants, calib_samples=calib_samples, sequential=sequential,
                        repair=repair, round_to=round_to, reinit=reinit)
    g = data_and_gate
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
