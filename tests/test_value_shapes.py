"""One shape source: onnx shape inference completed by onnxruntime gives, for every main-graph tensor,
the shape an onnxruntime run with every tensor exposed gives (the independent reference), and it runs
the model for fewer tensors than that."""

from __future__ import annotations

import numpy as np
import pytest
import realmodels

from onnxprune.analyze import value_shapes as V
from onnxprune.analyze.groups import sample_feed
from onnxprune.core.model import Model


@pytest.mark.real
@pytest.mark.parametrize("key", ["magika", "ddddocr_common", "paddle_det", "minilm_l3", "silero_vad_op18_ifless"])
def test_inferred_and_completed_shapes_equal_the_runtime_ones(key, monkeypatch):
    model = Model.load(realmodels.model_path(key))
    feed, _ = sample_feed(model.proto, None, str(model.base_dir))
    fetched = []
    real_run = V._run

    def counting_run(proto, feed, fetch, base_dir):
        fetched.append(len(fetch))
        return real_run(proto, feed, fetch, base_dir)

    monkeypatch.setattr(V, "_run", counting_run)
    shapes, values = V.value_shapes(model.proto, feed, str(model.base_dir))
    analysis_fetched = sum(fetched)  # 0 where inference fixed every shape and there are no integers
    reference = V.runtime_shapes(model.proto, feed, str(model.base_dir))
    assert {k: reference[k] for k in reference} == {k: shapes[k] for k in reference}
    assert analysis_fetched < fetched[-1]  # only what inference left open, and the integer tensors
    assert all(np.asarray(v).dtype.kind in "iu" for v in values.values())
