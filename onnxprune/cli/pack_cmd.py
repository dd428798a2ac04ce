"""`onnxprune pack MODEL --target NAME -o OUT_DIR`: enforce the target's pattern, pack, emit the artifact."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from onnxprune.analyze.weights import find_weights
from onnxprune.check.data import dataset_from_options
from onnxprune.cli import is_quiet, json_option, report_target, verbosity_options
from onnxprune.cli.prune_cmd import prune_options
from onnxprune.core.errors import NothingToPackError, Opt, OptionError
from onnxprune.core.masks import MaskSet
from onnxprune.core.model import Model
from onnxprune.core.report import is_stdout, make_parent, write_json
from onnxprune.core.shapes import parse_shape
from onnxprune.jobs.footprint import footprint, summary_line
from onnxprune.jobs.quantize_job import (
    check_target_mode,
    output_bytes,
    packed_sizes,
    quantize_step,
    render_stages,
)
from onnxprune.pack.passes import DEFAULT_MAX_INCREASE, pack_model, render_report
from onnxprune.pack.targets import EMIT_MODES, load_target
from onnxprune.pipeline import Context
from onnxprune.quantize.quantizer import needs_calibration


@click.command("pack")
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("--target", "target_name", required=True, metavar="NAME",
              help="Accelerator target (`onnxprune targets` lists them) or the path of a target .toml file.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Artifact folder to write.")
@click.option("--emit", type=click.Choice(EMIT_MODES), default=None,
              help="model.onnx form: dense (with zeros), sparse-initializer (ONNX COO) or portable (packed + decoder ops). Default: the target's.")
@click.option("--block", default=None, metavar="RxC", help="Block shape for block targets (e.g. 8x1).")
@click.option("--enforce/--no-enforce", default=True, show_default=True,
              help="Re-prune weights that break the target's pattern (magnitude within the pattern, masks only shrink).")
@click.option("--max-increase", default=DEFAULT_MAX_INCREASE, show_default=True, type=float,
              help="Enforcement leaves a weight alone if it would need more extra sparsity than this.")
@click.option("--masks", "masks_in", type=click.Path(dir_okay=False), help="Masks of the pruning run (.npz + .json) for exact pattern checks.")
@click.option("--shape", "input_shapes", multiple=True, metavar="NAME=D1xD2...",
              help="Input shape for MAC counts where the model's input dims are dynamic, e.g. x=1x3x48x320. Repeatable.")
@json_option
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the JSON report (schema onnxprune.pack) here ('-': stdout).")
@click.option("--no-gzip", is_flag=True, help="Skip measuring gzip of the dense model (slow on large models).")
@click.option("--all-rows", is_flag=True, help="Print every layer (default: the first 60).")
@prune_options(only=("quantize", "quantize_skip"))
@click.option("--data", type=click.Path(), help="Calibration inputs for --quantize int8 (.npz keyed by input name, or a folder).")
@verbosity_options
def command(model_path, target_name, output, emit, block, enforce, max_increase, masks_in, input_shapes, quantize,
            quantize_skip, data,
            report_path, as_json, no_gzip, all_rows):
    """Pack a pruned MODEL for an accelerator target into OUT_DIR: model.onnx, weights.bin, manifest.json.

    Prints, per layer, whether it will run sparse on the target and if not why, the share of weights and
    MACs that run sparse, and the sizes against the information bound. The input file is never written."""
    report_path = report_target(report_path, as_json)
    quiet = is_quiet()
    target = load_target(target_name, block=block)
    check_target_mode(quantize, target)
    if quantize_skip and not quantize:
        raise OptionError(Opt("prune.quantize_skip"), " applies to ", Opt("prune.quantize", "int8"))
    shapes = dict(parse_shape(s) for s in input_shapes)
    model = Model.load(model_path)
    masks = None
    if masks_in:

        masks = MaskSet.load(masks_in, {w.key: w.shape for w in find_weights(model).weights})
    before = None if quiet else footprint(model, model_path, shapes)
    make_parent(output)
    ctx = Context(model, masks or MaskSet(), progress=not quiet)
    quant = None
    if quantize:  # the pruned model, quantized before packing: the artifact holds the quantized weights
        calib = (dataset_from_options(model.proto, {"data": data, "shapes": input_shapes}, model.base_dir)
                 if data and needs_calibration(quantize) else None)
        quant = quantize_step(ctx, quantize, calib, target, quantize_skip)
    try:
        _, report = pack_model(model, target, output, emit=emit, enforce=enforce, ctx=ctx,
                               input_shapes=shapes or None, max_increase=max_increase, measure_gzip=not no_gzip,
                               progress=not quiet)
    except NothingToPackError as e:
        raise NothingToPackError(f"{model_path}: no weight is pruned, so nothing can be packed for target "
                                 f"{target.name}; prune it first: onnxprune prune {model_path} -o OUT "
                                 f"--target {target_name}") from e
    report["output"] = str(Path(output).resolve())
    if quant is not None:
        report["quantize"] = quant
        report["stages"] = [
            {"stage": "pruned fp32 (input)", "bytes": output_bytes(model_path), "parity": None},
            {"stage": f"pruned + {quantize}", "bytes": quant["bytes_after"], "parity": None, **packed_sizes(report)}]
    if report_path:
        make_parent(report_path)
        write_json(report_path, report, "pack")
    if not quiet:
        artifact = Path(output) / "model.onnx"
        after = footprint(Model.load(artifact), artifact, shapes)
        folder = sum(f.stat().st_size for f in Path(output).iterdir() if f.is_file())
        after = dataclasses.replace(after, disk_bytes=folder)  # the whole artifact: model, weights.bin, manifest
        stages = "\n" + render_stages(report["stages"]) if quant is not None else ""
        click.echo(render_report(report, None if all_rows else 60) + stages + "\n"
                   + summary_line(before, after, f"{output}/ (all files)"), err=is_stdout(report_path))
