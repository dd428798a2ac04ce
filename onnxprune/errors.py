"""One error hierarchy. Every message names the file, tensor or node and says what to do."""


class OnnxPruneError(Exception):
    """A usage or input error: the CLI prints the message on one line and exits with code 2."""

    exit_code = 2

    def __str__(self) -> str:
        # one line, even when it quotes a multi-line message (onnx's checker, onnxruntime, a path)
        return " ".join(part.strip() for part in super().__str__().splitlines() if part.strip())


class ModelLoadError(OnnxPruneError):
    """The model file cannot be read, parsed or trusted."""


class ExternalDataError(ModelLoadError):
    """An external-data reference is missing, unsafe or inconsistent."""


class AnalysisError(OnnxPruneError):
    """A weight or node cannot be analysed as asked."""


class OptionError(OnnxPruneError):
    """An option, recipe key or override is invalid."""


class DataError(OnnxPruneError):
    """Calibration or evaluation data does not match the model."""


class HookError(OnnxPruneError):
    """A fine-tuning hook returned something the pipeline cannot accept."""


class TargetError(OnnxPruneError):
    """A target description is invalid or a model cannot be packed for it."""


class OutputError(OnnxPruneError):
    """An output cannot be written where it was asked for."""
