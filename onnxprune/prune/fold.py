"""Fold constant subexpressions (e.g. LSTM weights assembled by Concat/Unsqueeze of Constants)
into stored constants, so that they become prunable. Uses onnx-graphsurgeon's folder, which
evaluates the constant subgraphs with onnxruntime, subgraphs (If/Loop/Scan) included."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_graphsurgeon as gs
import onnxruntime as ort

from onnxprune.core.errors import AnalysisError, Opt
from onnxprune.core.model import Model, check_structure
from onnxprune.pipeline import ANALYSIS_FRESH, NO_UNUSED, Context, Pass, PassResult


def fold_constants(model: Model) -> bool:
    """Fold in place; returns True when the model changed.

    Example::

        model = load_model("silero_vad.onnx")
        fold_constants(model)   # LSTM weights built from constants become prunable
    """
    before = model.proto.SerializeToString()
    logging.getLogger("onnx_graphsurgeon").setLevel(logging.ERROR)
    gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR
    ort.set_default_logger_severity(3)  # the folder's own session warns about nodes it keeps
    try:
        graph = model.graph()
        _load_folded_external(graph, str(model.base_dir))
        graph.fold_constants(recurse_subgraphs=True, fold_shapes=False, error_ok=True)
        graph.cleanup(recurse_subgraphs=True)
        folded = gs.export_onnx(graph, do_type_check=False)
        _keep_signature(folded, model.proto)
        folded.ir_version = model.proto.ir_version
        del folded.metadata_props[:]
        folded.metadata_props.extend(model.proto.metadata_props)
        folded.producer_name, folded.producer_version = model.proto.producer_name, model.proto.producer_version
        if folded.ByteSize() < 2**31 - 1:
            check_structure(folded)
    except Exception as e:  # the folder reports many error types
        raise AnalysisError(f"{model.path}: constant folding failed ({type(e).__name__}: {e}); run without ",
                            Opt("prune.fold_constants")) from e
    if folded.SerializeToString() == before:
        return False
    model.replace_proto(folded)
    return True


def _keep_signature(folded: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Give the graph's inputs and outputs their declared types back. onnx-graphsurgeon knows only
    tensor types: it exported skl2onnx's ZipMap output, a sequence of maps, as a sequence of tensors
    of element type 0, a model onnxruntime refuses to load. Folding does not change the signature."""
    stored = {t.name for t in folded.graph.initializer}
    for mine, theirs in ((folded.graph.input, original.graph.input), (folded.graph.output, original.graph.output)):
        declared = {v.name: v for v in theirs}
        for v in mine:
            if v.name in declared and v.name not in stored:
                v.type.CopyFrom(declared[v.name].type)


def _is_lazy_external(c) -> bool:
    lazy = getattr(c, "_values", None)
    return (isinstance(c, gs.Constant) and isinstance(lazy, gs.ir.tensor.LazyValues)
            and not isinstance(lazy, gs.ir.tensor.SparseValues) and lazy.tensor.data_location == onnx.TensorProto.EXTERNAL)


def _load_folded_external(graph: gs.Graph, base_dir: str) -> None:
    """Load the external-data constants the folder will evaluate, relative to the model's folder.

    onnx-graphsurgeon reads external data relative to the working directory and exports lazy
    constants as they are (still external) to the onnxruntime session that folds, which then
    cannot find the data. Weights that only feed run-time nodes stay memory-mapped and untouched."""
    derived: set[int] = set()  # tensors computed from constants only

    def load(t) -> None:
        producer = t.inputs[0] if isinstance(t, gs.Variable) and t.inputs else None
        if producer is not None and producer.op == "Constant":
            t = producer.attrs.get("value")
        if _is_lazy_external(t):
            t.values = np.array(onnx.numpy_helper.to_array(t._values.tensor, base_dir=base_dir))

    def walk(g: gs.Graph) -> None:
        for node in g.nodes:  # topological order
            subs = [g for v in node.attrs.values() for g in (v if isinstance(v, list) else [v]) if isinstance(g, gs.Graph)]
            for sub in subs:
                walk(sub)
            ins = [t for t in node.inputs if t.name]
            if node.op == "Constant" or (not subs and ins and all(isinstance(t, gs.Constant) or id(t) in derived for t in ins)):
                derived.update(id(t) for t in node.outputs)
                for t in ins:
                    load(t)

    walk(graph)


class FoldConstantsPass(Pass):
    """Fold constant subexpressions so weights assembled from constants become prunable.

    Example::

        Pipeline([FoldConstantsPass(), PrunePass(0.5)]).run(Context(load_model("silero_vad.onnx")))
    """

    name = "fold-constants"
    structural = True
    ensures = (ANALYSIS_FRESH, NO_UNUSED)

    def call(self, ctx: Context) -> PassResult:
        return PassResult(self.name, fold_constants(ctx.model))
