"""Run a job (a `Recipe`): load, prune, save, then optionally check parity. The CLI's `prune`
and `run` commands and the Python API all end here."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from onnxprune.analyze.weights import find_weights
from onnxprune.check.data import Dataset, dataset_from_options
from onnxprune.check.parity import (
    ParityReport,
    refuse_guessed_shapes,
    thresholds_from_options,
)
from onnxprune.core.atomic import check_writable, data_files_beside, is_data_file_name
from onnxprune.core.errors import OptionError
from onnxprune.core.masks import MaskSet
from onnxprune.core.model import Model
from onnxprune.core.report import fill, is_stdout, make_parent, table, write_json
from onnxprune.core.shapes import parse_shape
from onnxprune.jobs.footprint import Footprint, footprint, summary_line
from onnxprune.jobs.gate import THRESHOLD_KEYS, preflight, run_check
from onnxprune.jobs.html_report import require_plotting, write_html
from onnxprune.jobs.prune_job import prune_model, summarize
from onnxprune.jobs.quantize_job import (
    QUANTIZED_DTYPE,
    STAGE_METRICS,
    check_target_mode,
    output_bytes,
    packed_sizes,
    quantize_step,
    render_stages,
    stage_parity,
)
from onnxprune.jobs.recipe import Recipe
from onnxprune.jobs.report_details import layer_details, stage_sizes
from onnxprune.pack.eligibility import static_check
from onnxprune.pack.passes import pack_model
from onnxprune.pack.passes import render_report as render_pack_report
from onnxprune.pack.targets import load_target
from onnxprune.pipeline import stamp
from onnxprune.prune.structured import render


@dataclass
class JobResult:
    """What a job did: its JSON report, the parity verdict (None when not checked), the parity report
    and the before/after footprints (None unless measured); `render()` is what the CLI prints."""

    report: dict
    passed: bool | None  # None when no parity check ran
    parity: ParityReport | None = None
    before: Footprint | None = None
    after: Footprint | None = None

    @property
    def exit_code(self) -> int:
        return 1 if self.passed is False else 0

    def render(self, quiet: bool = False) -> str:
        """The tables (pack eligibility, pruning summary, parity), then the one-line summary of the write;
        `quiet`: the parity verdict only."""
        out = []
        if not quiet:
            if "target" in self.report:
                out.append(render_pack_report(self.report["target"]))
            out.append(render_summary(self.report))
            if self.parity is not None:
                out.append(self.parity.render())
            if "stages" in self.report:
                out.append(render_stages(self.report["stages"]))
        elif self.parity is not None:
            out.append(self.parity.verdict())
        if self.before is not None and self.after is not None:
            out.append(summary_line(self.before, self.after, self.report["output"]))
        if self.passed is False:
            out.append(f"the model failed the parity gate and was kept at {self.report['output']} "
                       "for inspection (exit 1)")
        return "\n".join(out)


def render_summary(report: dict) -> str:
    if "structured" in report:

        return render(report["structured"]) + "\n" + fill(report["speed_note"])
    rows = [(r["name"], r["op"], r["params"], f"{r['sparsity']:.1%}", r["skipped"] or "") for r in report["weights"]]
    t = report["totals"]
    return "\n".join([
        table(["weight", "op", "params", "sparsity", "note"], rows),
        "\n" + fill(f"pruned {t['pruned_params']:,} of {t['prunable_params']:,} prunable params "
                    f"({t['sparsity_of_prunable']:.2%}; {t['sparsity_of_selected']:.2%} of the selected weights, "
                    f"requested {t['requested_sparsity']:.2%})"),
        fill(report["speed_note"]),
    ])


def check_output_paths(recipe: Recipe, model_path: str, output: str) -> None:
    """No output may overwrite the input model (or its data) or another output. The output model's
    data file (`OUT.<16 hex>.data`, named by its content) is not known before the save: no other
    output may be named like one (the save replaces and removes those), and the save itself refuses
    to replace a data file the input reads."""
    written = {"output model": output}
    for key, label in (("report", "report"), ("html", "HTML report"), ("masks", "masks")):
        if recipe.output.get(key) and not is_stdout(recipe.output[key]):
            written[label] = recipe.output[key]
    if recipe.output.get("masks"):
        written["masks manifest"] = recipe.output["masks"] + ".json"
    protected = {Path(model_path).resolve(), Path(model_path + ".data").resolve(),
                 *(p.resolve() for p in data_files_beside(model_path))}
    out = Path(output).resolve()
    seen: dict[Path, str] = {}
    for label, path in written.items():
        check_writable(path, label)  # fail before the work, not after it
        resolved = Path(path).resolve()
        if resolved in protected:
            raise OptionError(f"{path}: the {label} would overwrite the input model; choose another path")
        if resolved in seen:
            raise OptionError(f"{path}: used for both the {seen[resolved]} and the {label}; choose distinct paths")
        if resolved.parent == out.parent and is_data_file_name(out.name, resolved.name):
            raise OptionError(f"{path}: the {label} is named like a data file of the output model {output} "
                              "(which a save replaces or removes); choose another path")
        seen[resolved] = label


def _dataset(model: Model, recipe: Recipe, path: str | None) -> Dataset:
    d = recipe.data
    return dataset_from_options(model.proto, {"data": path, "labels": d.get("labels"), "samples": d.get("samples"),
                                              "seed": d.get("seed", 0), "shapes": d.get("shapes", []),
                                              "int_ranges": d.get("int_ranges", [])}, model.base_dir)


def job_datasets(model: Model, recipe: Recipe) -> tuple[Dataset | None, Dataset | None]:
    """The calibration and evaluation data the recipe describes: the evaluation set only when the gate
    runs (data.evaluation, or the other half of a seeded split when pruning reads the calibration data,
    so the two stay disjoint); synthetic inputs where no file is given and the job needs feeds. The
    gate's data checks run here, before any work."""
    calibration_path, evaluation_path = recipe.data.get("calibration"), recipe.data.get("evaluation")
    calib = _dataset(model, recipe, calibration_path) if calibration_path else None
    if calib is None and recipe.prune.pattern == "channel":  # shapes for the one analysis run (--shape)
        calib = _dataset(model, recipe, None)
    gate = recipe.check.get("enabled", False)
    evaluation = None
    if gate:
        if evaluation_path:
            evaluation = _dataset(model, recipe, evaluation_path)
        elif calib is not None and recipe.prune.uses_calibration():
            calib, evaluation = calib.split(0.5, seed=0)  # pruning reads the data: keep them disjoint
        else:
            evaluation = calib if calib is not None else _dataset(model, recipe, None)
        if not recipe.check.get("allow_guessed_shapes"):
            refuse_guessed_shapes(evaluation)  # before the work, not after it
        preflight(model, evaluation, recipe.check)
    return calib, evaluation


def stamp_recipe(model: Model, recipe: Recipe) -> None:
    """Record the options and the recipe part that determines the model's bytes in its metadata."""
    part = recipe.model_part()
    stamp(model, recipe.prune.to_dict(), {"onnxprune.recipe": part,
                                          "onnxprune.recipe_sha256": hashlib.sha256(part.encode()).hexdigest()})


def _stages(recipe: Recipe, model_path: str, output: str, quant: dict, pruned: Model, report: dict,
            evaluation: Dataset | None) -> list[dict]:
    """Dense fp32 -> pruned -> pruned + quantized: on-disk bytes (packed bytes where a target packs) and,
    with the gate, parity metrics against the dense model on the evaluation data (the last stage's are
    the gate's own, measured on the written file)."""
    stages = [{"stage": "dense fp32", "bytes": output_bytes(model_path), "parity": None},
              {"stage": f"pruned ({recipe.prune.pattern})", "bytes": quant["bytes_before"], "parity": None},
              {"stage": f"pruned + {quant['mode']}", "bytes": output_bytes(output), "parity": None,
               **packed_sizes(report.get("target"))}]
    if evaluation is not None:
        limits = thresholds_from_options(**{k: recipe.check.get(k) for k in THRESHOLD_KEYS
                                            if recipe.check.get(k) is not None})
        stages[1]["parity"] = stage_parity(Model.load(model_path), pruned, evaluation, limits,
                                           bool(recipe.check.get("allow_guessed_shapes")))
        stages[2]["parity"] = {o["name"]: {k: v for k, v in o["metrics"].items() if k in STAGE_METRICS}
                               for o in report["parity"]["outputs"]}
    return stages


def run_recipe(recipe: Recipe, progress: bool = True, measure: bool = False) -> JobResult:
    """Execute the job the recipe describes; returns the report and the parity verdict. Prints nothing
    (stage lines go to the `onnxprune` logger; `progress=False` logs them at DEBUG); `measure`: also
    the footprints before and after, for `JobResult.render`'s summary line (reads every weight twice).

    Example::

        result = run_recipe(load_recipe("passes/unstructured-gate.toml", ['input.model="m.onnx"',
                                                                         'output.model="out/m.onnx"']))
        print(result.render()); raise SystemExit(result.exit_code)
    """
    model_path = recipe.input.get("model")
    output = recipe.output.get("model")
    if not model_path:
        raise OptionError(f"{recipe.source}: no input model; give MODEL on the command line or input.model")
    if not output:
        raise OptionError(f"{recipe.source}: no output path; give -o/--output or output.model")
    html_path = recipe.output.get("html")
    if html_path:
        require_plotting()  # before any work
    check_output_paths(recipe, model_path, output)
    if recipe.prune.needs_data() and not recipe.data.get("calibration"):  # not synthetic inputs: fail before any work
        raise recipe.prune.no_data_error()
    model = Model.load(model_path)
    calib, evaluation = job_datasets(model, recipe)
    gate = recipe.check.get("enabled", False)
    masks = None
    if recipe.output.get("masks_in"):
        masks = MaskSet.load(recipe.output["masks_in"], {w.key: w.shape for w in find_weights(model).weights})
    target, exclude = None, {}
    if recipe.target.get("name"):  # prune only what the target can use
        target = load_target(recipe.target["name"], block=recipe.target.get("block"))
        check_target_mode(recipe.prune.quantize, target)
        as_dtype = QUANTIZED_DTYPE.get(recipe.prune.quantize)  # the rules of the dtype deployed
        exclude = {k: f"not eligible for target {target.name}: {reasons[0].text}"
                   for k, reasons in static_check(target, model, as_dtype=as_dtype).items() if reasons}
    shapes = _mac_shapes(recipe, calib or evaluation)
    before = footprint(model, model_path, shapes) if measure else None
    ctx, report = prune_model(model, recipe.prune, calib, masks, progress=progress, exclude=exclude)
    quant, pruned = None, None
    if recipe.prune.quantize:  # after pruning and repair, on the same calibration set; before packing
        pruned = Model(model.proto, model_path)  # the pruned fp32 stage, for its parity
        quant = quantize_step(ctx, recipe.prune.quantize, calib, target, recipe.prune.quantize_skip)
        report = summarize(ctx, recipe.prune)
    stamp_recipe(model, recipe)
    report_path = recipe.output.get("report")
    if target is not None:  # packing may re-prune: it runs before the save and the check (checked = deployed)
        out_dir = recipe.target.get("out") or str(Path(output).with_suffix("")) + f".{target.name}"
        make_parent(out_dir)
        _, packed = pack_model(model, target, out_dir, ctx=ctx, emit=recipe.target.get("emit"), input_shapes=shapes,
                               enforce=recipe.target.get("enforce", True), progress=progress)
        if packed["enforce"] and packed["enforce"]["modified"]:
            report = summarize(ctx, recipe.prune)
        report["target"] = packed
    make_parent(output)
    model.save(output, external_data=True if recipe.output.get("external_data") else None)
    if recipe.output.get("masks"):
        make_parent(recipe.output["masks"])
        ctx.masks.save(recipe.output["masks"])
    report.update(input=str(Path(model_path).resolve()), output=str(Path(output).resolve()),
                  recipe=recipe.to_dict(), recipe_sha256=recipe.sha256())
    after = footprint(model, output, shapes) if measure else None
    passed = parity = None
    if gate:
        parity = run_check(Model.load(model_path), output, recipe.check, dataset=evaluation)
        report["parity"] = parity.to_dict()
        passed = parity.passed
    if quant is not None:
        report["quantize"] = quant
        report["stages"] = _stages(recipe, model_path, output, quant, pruned, report, evaluation if gate else None)
    if html_path:  # the JSON report then carries what the page shows
        report["layers"], report["eligibility_by_target"] = layer_details(
            model, report, None if recipe.prune.pattern == "channel" else ctx.masks,
            shapes)
        report["sizes"] = stage_sizes([("input", model_path), ("output", output)])
    if report_path:
        make_parent(report_path)
        write_json(report_path, report, "prune")
    if html_path:
        make_parent(html_path)
        write_html({"schema": "onnxprune.prune", **report}, html_path)
    return JobResult(report, passed, parity, before, after)


def _mac_shapes(recipe: Recipe, fed: Dataset | None) -> dict[str, tuple[int, ...]]:
    """Input shapes for MAC counts: the shapes fed (not guessed ones), else --shape; guesses are made
    (and said) where the MACs are counted."""
    if fed is not None:
        return {k: v for k, v in fed.feed_shapes.shapes.items() if k not in fed.feed_shapes.guessed}
    return dict(map(parse_shape, recipe.data.get("shapes", [])))
