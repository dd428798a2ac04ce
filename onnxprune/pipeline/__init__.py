"""The pass contract and the state passes share (calibration statistics, masked writes).

`contract` holds Pass, PassResult, Context, Condition and Pipeline; they are re-exported here."""

from onnxprune.pipeline.contract import (
    ANALYSIS_FRESH,
    NO_UNUSED,
    Condition,
    Context,
    Pass,
    PassError,
    PassResult,
    Pipeline,
    options_hash,
    stamp,
)

__all__ = ["ANALYSIS_FRESH", "NO_UNUSED", "Condition", "Context", "Pass", "PassError", "PassResult", "Pipeline",
           "options_hash", "stamp"]
