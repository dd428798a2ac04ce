"""`onnxprune prune MODEL -o OUT ...`: magnitude (or calibration-aware) pruning, one-shot or gradual."""

from __future__ import annotations

from pathlib import Path

import click

from onnxprune.analyze.weights import find_weights
from onnxprune.cli.check_cmd import data_options, dataset_from_options, run_check, run_options, threshold_options
from onnxprune.errors import OptionError
from onnxprune.model import Model
from onnxprune.prune.job import PruneOptions, prune_model
from onnxprune.prune.masks import MaskSet
from onnxprune.report import table, write_json


def render_summary(report: dict) -> str:
    rows = [(r["name"], r["op"], r["params"], f"{r['sparsity']:.1%}", r["skipped"] or "")
            for r in report["weights"]]
    t = report["totals"]
    lines = [table(["weight", "op", "params", "sparsity", "note"], rows),
             f"\npruned {t['pruned_params']:,} of {t['prunable_params']:,} prunable params "
             f"({t['sparsity_of_prunable']:.2%}; {t['sparsity_of_selected']:.2%} of the selected weights, "
             f"requested {t['requested_sparsity']:.2%})",
             report["speed_note"]]
    return "\n".join(lines)


def prune_options(f):
    """The pruning options, shared by `prune` and `sweep`."""
    opts = [
        click.option("--pattern", default="unstructured", show_default=True, help="unstructured, N:M (e.g. 2:4) or RxC blocks (e.g. 4x4)."),
        click.option("--scope", type=click.Choice(["layer", "global"]), default="layer", show_default=True, help="layer: every weight reaches the sparsity; global: one ranking over all selected weights."),
        click.option("--criterion", default="magnitude", show_default=True, help="Weight importance score."),
        click.option("--skip", multiple=True, metavar="GLOB", help="Leave weights (or their nodes) matching GLOB dense. Repeatable."),
        click.option("--override", multiple=True, metavar="GLOB=S", help="Per-name sparsity, e.g. 'conv1*=0.3'. Repeatable."),
        click.option("--min-params", default=1024, show_default=True, type=int, help="Weights smaller than this stay dense."),
        click.option("--nm-remainder", type=click.Choice(["skip", "pad"]), default="skip", show_default=True, help="N:M on a reduction length that is not a multiple of M: leave dense, or pad the last group."),
        click.option("--fold-constants", is_flag=True, help="Fold constant subexpressions first so weights assembled from constants become prunable."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


@click.command("prune")
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output model path.")
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
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the JSON report here.")
@click.option("--external-data", is_flag=True, help="Store weights in OUT.data beside the model (automatic above 2 GiB).")
@click.option("--quiet", is_flag=True, help="No table, no progress bar.")
def command(model_path, output, sparsity, pattern, scope, criterion, skip, override, min_params, nm_remainder,
            fold_constants, steps, initial_sparsity, t0, dt, hooks, eval_data, run_gate, masks_in, masks_out,
            report_path, external_data, quiet, **data_and_gate):
    """Prune MODEL's weights and write the result to OUT (the input file is never written)."""
    if Path(output).resolve() == Path(model_path).resolve():
        raise OptionError(f"{output}: the output would overwrite the input model; choose another -o path")
    opts = PruneOptions(sparsity=sparsity, pattern=pattern, scope=scope, criterion=criterion,
                        overrides=list(override), skip=list(skip), min_params=min_params, nm_remainder=nm_remainder,
                        steps=steps, initial_sparsity=initial_sparsity, t0=t0, dt=dt, hooks=list(hooks),
                        fold_constants=fold_constants)
    model = Model.load(model_path)
    calib = dataset_from_options(model.proto, data_and_gate) if data_and_gate.get("data") else None
    evaluation = None
    if run_gate:
        calib, evaluation = _calibration_and_evaluation(model, calib, eval_data, opts, data_and_gate)
    masks = None
    if masks_in:
        masks = MaskSet.load(masks_in, {w.key: w.shape for w in find_weights(model).weights})
    ctx, report = prune_model(model, opts, calib, masks, progress=not quiet)
    model.save(output, external_data=True if external_data else None)
    if masks_out:
        ctx.masks.save(masks_out)
    report.update(input=str(Path(model_path).resolve()), output=str(Path(output).resolve()))
    if not quiet:
        click.echo(render_summary(report))
    parity = None
    if run_gate:
        parity = run_check(Model.load(model_path), output, data_and_gate, dataset=evaluation, quiet=quiet)
        report["parity"] = parity.to_dict()
    if report_path:
        write_json(report_path, report, "prune")
    if parity is not None and not parity.passed:
        click.get_current_context().exit(1)


def _calibration_and_evaluation(model: Model, calib, eval_data, opts: PruneOptions, data_opts: dict):
    """(calibration, evaluation) data, disjoint when pruning itself reads the data."""
    if eval_data:
        return calib, dataset_from_options(model.proto, {**data_opts, "data": eval_data})
    if calib is not None and opts.criterion != "magnitude":
        return calib.split(0.5, seed=0)
    return calib, (calib if calib is not None else dataset_from_options(model.proto, data_opts))
