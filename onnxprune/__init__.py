"""onnxprune: a model-compression compiler for ONNX graphs."""

__version__ = "0.1.0"
