"""onnxprune: a model-compression compiler for ONNX graphs.

The public Python API (the CLI is a thin layer over the same objects)::

    import onnxprune as op
    model = op.Model.load("model.onnx")
    analysis = op.find_weights(model)                      # prunable weights, reduction axes
    ctx, report = op.prune_model(model, op.PruneOptions(sparsity=0.5, pattern="2:4"))
    model.save("out.onnx")
    parity = op.compare("model.onnx", model, op.Dataset.from_source("eval.npz", model.proto))
    ctx, packed = op.pack_model(model, "nvidia-2to4", "out/artifact", ctx=ctx)
    qreport = op.quantize_model(model, "int8", calib.batches())  # onnxruntime's tool, zeros verified per weight
    result = op.run_recipe(op.load_recipe("passes/nvidia-2to4.toml", ["input.model=\\"m.onnx\\"", "data.calibration=\\"calib.npz\\""]))

A pipeline from public names (Wanda, then least-squares repair)::

    ctx = op.Context(model, data=op.Dataset.from_arrays({"input": x}, model.proto))
    op.Pipeline([op.CalibrationPass(), op.CalibratedPrunePass(0.5, criterion="wanda"), op.RepairPass("lstsq")]).run(ctx)

Progress and stage lines go to the `onnxprune` logger (`logging.basicConfig(level=logging.INFO)`).
Names load lazily, so `import onnxprune` stays fast for the CLI.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "Model": "onnxprune.core.model",
    "load_model": "onnxprune.core.model",
    "find_weights": "onnxprune.analyze.weights",
    "fold_constants": "onnxprune.prune.fold",
    "inspect_model": "onnxprune.analyze.inspect",
    "Pass": "onnxprune.pipeline",
    "PassResult": "onnxprune.pipeline",
    "Pipeline": "onnxprune.pipeline",
    "Context": "onnxprune.pipeline",
    "PruneOptions": "onnxprune.jobs.prune_job",
    "build_pipeline": "onnxprune.jobs.prune_job",
    "prune_model": "onnxprune.jobs.prune_job",
    "PrunePass": "onnxprune.prune.prune_pass",
    "CalibratedPrunePass": "onnxprune.prune.calibrated",
    "CalibrationPass": "onnxprune.pipeline.calibration",
    "RepairPass": "onnxprune.repair.reconstruct",
    "lstsq_repair": "onnxprune.repair.reconstruct",
    "bias_correction": "onnxprune.repair.reconstruct",
    "FoldConstantsPass": "onnxprune.prune.fold",
    "MaskSet": "onnxprune.core.masks",
    "schedule": "onnxprune.prune.schedule",
    "HookPass": "onnxprune.repair.hooks",
    "HookContext": "onnxprune.repair.hooks",
    "ChannelPrunePass": "onnxprune.prune.structured",
    "prune_channels": "onnxprune.prune.structured",
    "analyze_groups": "onnxprune.analyze.groups",
    "Dataset": "onnxprune.check.data",
    "Thresholds": "onnxprune.check.parity",
    "compare": "onnxprune.check.parity",
    "sweep": "onnxprune.jobs.sweep",
    "find_max": "onnxprune.jobs.sweep",
    "load_target": "onnxprune.pack.targets",
    "pack_model": "onnxprune.pack.passes",
    "TargetPipeline": "onnxprune.pack.passes",
    "EnforcePattern": "onnxprune.pack.passes",
    "AssessEligibility": "onnxprune.pack.passes",
    "PackWeights": "onnxprune.pack.passes",
    "EmitArtifact": "onnxprune.pack.passes",
    "quantize_model": "onnxprune.quantize.quantizer",
    "Recipe": "onnxprune.jobs.recipe",
    "load_recipe": "onnxprune.jobs.recipe",
    "run_recipe": "onnxprune.jobs.run",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'onnxprune' has no attribute {name!r}")
    return getattr(import_module(module), name)
