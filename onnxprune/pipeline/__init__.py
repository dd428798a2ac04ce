"""The pass contract and the state passes share (calibration statistics, masked writes).

`contract` holds Pass, PassResult, Context and Pipeline; they are re-exported here."""

from onnxprune.pipeline.contract import (
    Context,
    Pass,
    PassResult,
    Pipeline,
    options_hash,
    stamp,
)

__all__ = ["Context", "Pass", "PassResult", "Pipeline", "options_hash", "stamp"]
