"""What each op means to the compiler: one spec per op family, registered by (domain, op type).

Importing the package registers the built-in families (matmul, conv, rnn, quantized); a custom op is
supported by registering an `OpSpec` for it."""

# registration order is the order targets list the ops in
from onnxprune.ops import matmul  # noqa: F401, I001 - registers the built-in specs
from onnxprune.ops import conv  # noqa: F401
from onnxprune.ops import rnn  # noqa: F401
from onnxprune.ops import quantized  # noqa: F401
from onnxprune.ops.registry import all_specs, register, spec_for
from onnxprune.ops.spec import OpSpec

__all__ = ["OpSpec", "all_specs", "register", "spec_for"]
