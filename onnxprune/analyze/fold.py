"""Fold constant subexpressions (e.g. LSTM weights assembled by Concat/Unsqueeze of Constants)
into stored constants, so that they become prunable. Uses onnx-graphsurgeon's folder, which
evaluates the constant subgraphs with onnxruntime, subgraphs (If/Loop/Scan) included."""

from __future__ import annotations

import logging

import onnx
import onnx_graphsurgeon as gs

from onnxprune.errors import AnalysisError
from onnxprune.model import Model
from onnxprune.pipeline import Context, Pass, PassResult


def fold_constants(model: Model) -> bool:
    """Fold in place; returns True when the model changed."""
    before = model.proto.SerializeToString()
    logging.getLogger("onnx_graphsurgeon").setLevel(logging.ERROR)
    gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR
    try:
        graph = model.graph()
        graph.fold_constants(recurse_subgraphs=True, fold_shapes=False, error_ok=True)
        graph.cleanup(recurse_subgraphs=True)
        folded = gs.export_onnx(graph, do_type_check=False)
    except Exception as e:  # the folder reports many error types
        raise AnalysisError(f"{model.path}: constant folding failed ({type(e).__name__}: {e}); run without --fold-constants") from e
    folded.ir_version = model.proto.ir_version
    del folded.metadata_props[:]
    folded.metadata_props.extend(model.proto.metadata_props)
    folded.producer_name, folded.producer_version = model.proto.producer_name, model.proto.producer_version
    onnx.checker.check_model(folded) if folded.ByteSize() < 2**31 - 1 else None
    if folded.SerializeToString() == before:
        return False
    model.replace_proto(folded)
    return True


class FoldConstantsPass(Pass):
    """Fold constant subexpressions so weights assembled from constants become prunable."""

    name = "fold-constants"
    structural = True

    def call(self, model: Model, ctx: Context) -> PassResult:
        return PassResult(self.name, fold_constants(model))
